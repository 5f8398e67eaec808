//! The `shardflow` binary end to end: the bench's machine-readable last line, and
//! bad input refused with one clear line and a non-zero exit.

use std::process::{Command, Output};

fn shardflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardflow")).args(args).output().expect("the binary runs")
}

fn last_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string()
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

#[test]
fn bench_exchange_prints_the_machine_readable_last_line() {
    let out = shardflow(&["bench", "exchange", "--records", "200_000", "--segment-bytes", "4096"]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let line = last_line(&out);
    assert!(line.starts_with("shardflow exchange N=200000 records_per_s="), "{line}");
    assert_eq!(field(&line, "verify"), "OK");
    assert!(field(&line, "records_per_s").parse::<f64>().unwrap() > 0.0);
    assert!(field(&line, "wall_s").parse::<f64>().unwrap() > 0.0);
    field(&line, "startup_s").parse::<f64>().unwrap();
    field(&line, "cpu_s").parse::<f64>().unwrap();
}

#[test]
fn bench_keyed_sum_and_latency_verify() {
    let out = shardflow(&["bench", "keyed-sum", "--records", "300000", "--segment-bytes", "4096"]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let line = last_line(&out);
    assert!(line.starts_with("shardflow keyed-sum N=300000 "), "{line}");
    assert_eq!(field(&line, "verify"), "OK");

    let out = shardflow(&["bench", "latency", "--rate", "20000", "--duration", "0.3", "--segment-bytes", "4096"]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let line = last_line(&out);
    assert!(line.starts_with("shardflow latency N=6000 "), "{line}");
    assert_eq!(field(&line, "verify"), "OK");
    for key in ["p50_us", "p99_us", "p999_us", "max_us", "cpu_s"] {
        field(&line, key).parse::<f64>().unwrap();
    }
}

#[test]
fn bad_input_is_one_clear_line_and_a_non_zero_exit() {
    for (args, expect) in [
        (&["bench", "exchange", "--cores", "4096"][..], "error: core 4096 does not exist on this machine"),
        (&["bench", "exchange", "--placement", "nonsense"][..], "error: --placement"),
        (
            &["bench", "exchange", "--segment-bytes", "1000"][..],
            "error: invalid engine configuration: segment_bytes = 1000",
        ),
        (&["bench", "latency", "--rate", "0"][..], "error: --rate 0"),
        (
            &["bench", "exchange", "--placement", "source=0"][..],
            "error: explicit placement: vertex 'sink' is not in the map",
        ),
    ] {
        let out = shardflow(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line, got {stderr}");
        assert!(lines[0].starts_with(expect), "{args:?}: {}", lines[0]);
        assert!(!stderr.contains("panicked"));
    }
}

#[test]
fn help_documents_every_flag() {
    let out = shardflow(&["bench", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--records", "--shards", "--cores", "--rate", "--duration", "--placement", "--idle", "--min-park-us"] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}
