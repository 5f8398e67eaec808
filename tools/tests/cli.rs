//! The `shardflow` binary end to end: the bench's machine-readable last line,
//! bad input refused with one clear line and a non-zero exit, and a snapshot
//! file shown (how many of its entries expire, too).

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

/// Runs `shardflow bench args…`, which must succeed and verify, and returns its
/// last line after checking that it starts with `prefix`.
fn bench_line(args: &[&str], prefix: &str) -> String {
    let out = shardflow(&[&["bench"], args].concat());
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let line = last_line(&out);
    assert!(line.starts_with(prefix), "{line}");
    assert_eq!(field(&line, "verify"), "OK", "{line}");
    line
}

#[test]
fn bench_exchange_prints_the_machine_readable_last_line() {
    let line = bench_line(
        &["exchange", "--records", "200_000", "--segment-bytes", "4096"],
        "shardflow exchange N=200000 records_per_s=",
    );
    assert!(field(&line, "records_per_s").parse::<f64>().unwrap() > 0.0);
    assert!(field(&line, "wall_s").parse::<f64>().unwrap() > 0.0);
    field(&line, "startup_s").parse::<f64>().unwrap();
    field(&line, "cpu_s").parse::<f64>().unwrap();
}

/// The records in of `vertex`'s subtasks in the table `--show-tasks` prints
/// on stderr, after checking its header.
fn records_in_of(out: &Output, vertex: &str) -> Vec<u64> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let header = stderr.lines().find(|l| l.starts_with("subtask")).unwrap_or_else(|| panic!("no table: {stderr}"));
    let columns: Vec<&str> = header.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
    let want = ["subtask", "core", "records in", "records out", "busy ms", "idle ms", "backpr ms", "busy %"];
    assert_eq!(columns, want, "{header}");
    let prefix = format!("{vertex}[");
    stderr
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(|l| l.split_whitespace().nth(2).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{l}")))
        .collect()
}

#[test]
fn show_tasks_prints_each_subtasks_records_and_times() {
    let out = shardflow(&["bench", "exchange", "--records", "200_000", "--segment-bytes", "4096", "--show-tasks"]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(records_in_of(&out, "source"), vec![100_000, 100_000], "each source's share");
    let sinks = records_in_of(&out, "sink");
    assert_eq!((sinks.len(), sinks.iter().sum::<u64>()), (2, 200_000), "every record into a sink");
    // The roundtrip pipeline drives its job from the bench's thread: its table too.
    let args = ["roundtrip", "--records", "2000", "--segment-bytes", "4096", "--keyed-ingress", "--show-tasks"];
    let out = shardflow(&[&["bench"][..], &args].concat());
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(records_in_of(&out, "requests").iter().sum::<u64>(), 2000, "every request");
}

#[test]
fn bench_keyed_sum_and_latency_verify() {
    // By its number in BENCHMARKS.md.
    bench_line(&["p2", "--records", "300000", "--segment-bytes", "4096"], "shardflow keyed-sum N=300000 ");
    let line = bench_line(
        &["latency", "--rate", "20000", "--duration", "0.3", "--segment-bytes", "4096"],
        "shardflow latency N=6000 ",
    );
    for key in ["p50_us", "p99_us", "p999_us", "max_us", "cpu_s"] {
        field(&line, key).parse::<f64>().unwrap();
    }
    assert_eq!(field(&line, "placement"), "pack", "a paced pipeline packs by default: {line}");
    let spread = bench_line(
        &["latency", "--rate", "20000", "--duration", "0.1", "--segment-bytes", "4096", "--placement", "spread"],
        "shardflow latency N=2000 ",
    );
    assert_eq!(field(&spread, "placement"), "spread");
}

#[test]
fn bench_roundtrip_answers_every_request_and_reports_its_quantiles() {
    let line = bench_line(
        &["roundtrip", "--records", "2000", "--segment-bytes", "4096"],
        "shardflow roundtrip N=2000 requests_per_s=",
    );
    assert_eq!(field(&line, "idle"), "park");
    for key in ["p50_us", "p99_us", "p999_us", "max_us", "cpu_s"] {
        field(&line, key).parse::<f64>().unwrap();
    }
    // Pushed to each request's key's subtask: no key_by, the same answers.
    let line = bench_line(
        &["roundtrip", "--records", "2000", "--segment-bytes", "4096", "--keyed-ingress"],
        "shardflow roundtrip N=2000 requests_per_s=",
    );
    assert_eq!(field(&line, "keyed_ingress"), "true", "{line}");
    // Its reader looks for each answer before it sleeps: the same answers.
    let line = bench_line(
        &["roundtrip", "--records", "2000", "--segment-bytes", "4096", "--keyed-ingress", "--reader-spin-us", "50"],
        "shardflow roundtrip N=2000 requests_per_s=",
    );
    assert_eq!(field(&line, "reader_spin_us"), "50", "{line}");
}

#[test]
fn bench_hosted_runs_shard_0_on_the_benchs_own_thread() {
    // Every subtask on shard 0, the bench's thread: answered without a thread hop.
    let line = bench_line(
        &["roundtrip", "--records", "2000", "-p", "1", "--placement", "pack", "--hosted"],
        "shardflow roundtrip N=2000 requests_per_s=",
    );
    assert_eq!(field(&line, "hosted"), "true", "{line}");
    // A throughput pipeline: the bench's thread runs shard 0 while it waits.
    let line = bench_line(&["keyed-sum", "--records", "200_000", "--hosted"], "shardflow keyed-sum N=200000 ");
    assert_eq!(field(&line, "hosted"), "true", "{line}");
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
        (&["bench", "exchange", "--keyed-ingress"][..], "error: --keyed-ingress: only the roundtrip pipeline"),
        (&["bench", "latency", "--reader-spin-us", "5"][..], "error: --reader-spin-us: only the roundtrip pipeline"),
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
    for flag in [
        "--records",
        "--shards",
        "--cores",
        "--rate",
        "--duration",
        "--placement",
        "--idle",
        "--min-park-us",
        "--show-tasks",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

/// `shardflow args…` run by `sh` after `shell_prefix` (say, `ulimit -S -l 64 &&`).
fn shardflow_under(shell_prefix: &str, args: &[&str]) -> Output {
    let script = format!("{shell_prefix} exec \"$0\" \"$@\"");
    Command::new("sh").args(["-c", &script, env!("CARGO_BIN_EXE_shardflow")]).args(args).output().unwrap()
}

#[test]
fn a_low_locked_memory_soft_limit_is_raised_and_the_engine_starts() {
    // 64 KiB is a common default for users; glommio needs 512 KiB per shard.
    let out =
        shardflow_under("ulimit -S -l 64 &&", &["bench", "exchange", "--records", "100000", "--segment-bytes", "4096"]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(field(&last_line(&out), "verify"), "OK");
}

#[test]
fn the_config_files_worker_table_sets_the_bench_engine_and_flags_win() {
    let core = shardflow_engine::online_cores()[0];
    let path = std::env::temp_dir().join(format!("shardflow-bench-{}.toml", std::process::id()));
    let worker = format!("[worker]\ncores = [{core}]\nsegment_bytes = 4096\nprefault = false\n");
    std::fs::write(&path, format!("{worker}exclusive_credits = 2\nfloating_credits = 4\n")).unwrap();
    let cfg = path.to_str().unwrap();
    let out = shardflow(&["--config", cfg, "bench", "exchange", "--records", "100000"]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(field(&last_line(&out), "shards"), "1", "one core from [worker] cores");
    let out = shardflow(&["--config", cfg, "bench", "exchange", "--records", "100000", "--segment-bytes", "1000"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("segment_bytes = 1000"), "the flag wins");
    // The network buffers' credits reach the engine: out of range, refused by name.
    std::fs::write(&path, format!("{worker}exclusive_credits = 0\n")).unwrap();
    let out = shardflow(&["--config", cfg, "bench", "exchange", "--records", "100000"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exclusive_credits = 0"), "{out:?}");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn the_named_jobs_list_as_json_and_ignored_parameters_are_refused() {
    let out = shardflow(&["submit", "--list-jobs", "--json"]);
    assert!(out.status.success());
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON, not the table");
    let names: Vec<&str> = jobs.as_array().unwrap().iter().map(|j| j["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["exchange", "forward-count", "keyed-sum", "latency", "local-count", "wordcount"]);
    // Refused before any connection is tried (port 9 on loopback is never served).
    for (params, why) in [
        (&["--param", "rate=1000"][..], "give both"),
        (&["--param", "duration_ms=1000"][..], "give both"),
        (&["--param", "records=5", "--param", "rate=1000", "--param", "duration_ms=9"][..], "not both"),
        (&["--param", "records=5", "--param", "records=6"][..], "given twice"),
    ] {
        let out = shardflow(&[&["submit", "forward-count", "--coordinator", "127.0.0.1:9"][..], params].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{params:?}: {err}");
        assert!(err.contains(why), "{params:?}: {err}");
    }
}

#[test]
fn a_peer_that_speaks_another_protocol_is_named_as_such() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = listener.accept().unwrap();
        let mut request = [0u8; 16];
        let _ = s.read(&mut request);
        s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n").unwrap();
    });
    let out = shardflow(&["list", "--coordinator", &addr]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("does not speak the shardflow protocol") && err.contains("HTTP/1.1 400"), "{err}");
    server.join().unwrap();
}

#[test]
fn a_latency_bench_whose_source_cannot_keep_the_pace_says_so() {
    let out = shardflow(&["bench", "latency", "--rate", "1000000000", "--duration", "0.03", "--segment-bytes", "4096"]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning: the source could not pace 1000000000 records/s"), "{err}");
}

#[test]
fn ctrl_c_cancels_a_bench_and_prints_what_was_done() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardflow"))
        .args(["bench", "exchange", "--records", "18446744073709551615", "--segment-bytes", "4096"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Not at a terminal, it says at once that it runs and how to stop it.
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.contains("Ctrl-C cancels"), "{line}");
    let killed = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("interrupted after") && stdout.contains("the job was cancelled"), "{stdout}");
}

#[test]
fn help_texts_do_not_repeat_their_defaults() {
    for cmd in ["bench", "coordinator", "worker", "submit", "list", "status", "cancel", "cluster", "dump"] {
        let out = shardflow(&[cmd, "--help"]);
        let help = String::from_utf8_lossy(&out.stdout);
        for line in help.lines() {
            assert!(!(line.contains("Default") && line.contains("[default:")), "{cmd}: {line}");
        }
    }
    let help = String::from_utf8_lossy(&shardflow(&["status", "--help"]).stdout).to_string();
    assert!(help.contains("3    a wait timed out"), "exit statuses are documented: {help}");
}

#[test]
fn a_snapshot_file_is_shown_operator_by_operator_and_a_damaged_one_refused() {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use shardflow_engine::{Dataflow, Engine};

    // An endless job over 50 keys, stopped once every key has a count: its
    // snapshot holds 50 keyed entries and each source subtask's position.
    let engine = Engine::builder().shards(1).build().expect("engine starts");
    let df = Dataflow::new("counts").parallelism(2);
    let counts = df.generate("numbers", u64::MAX, |r| r).key_by(|r: &u64| r % 50).count().name("per-key").egress(64);
    let job = engine.submit(df.build().expect("a valid dataflow")).expect("submitted");
    let mut keys = BTreeSet::new();
    while keys.len() < 50 {
        let (key, _) = counts.recv_timeout(Duration::from_secs(60)).expect("counts flow");
        keys.insert(key);
    }
    job.stop_with_snapshot().expect("a running job stops");
    while counts.recv().is_some() {}
    let snapshot = job.wait_timeout(Duration::from_secs(60)).expect("it stops").snapshot.expect("with a snapshot");
    engine.shutdown();
    let path = std::env::temp_dir().join(format!("shardflow-cli-{}.snapshot", std::process::id()));
    snapshot.save(&path).expect("saved");

    let out = shardflow(&["snapshot", path.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON array");
    let operator = |name: &str| {
        shown.as_array().unwrap().iter().find(|o| o["operator"] == name).cloned().unwrap_or_else(|| panic!("{name}"))
    };
    let per_key = operator("per-key");
    assert_eq!(per_key["keyed_states"]["table"], 50, "{per_key}");
    assert_eq!(per_key["max_parallelism"], 128, "{per_key}");
    assert!(per_key["key_groups"].as_u64().unwrap() <= 50, "{per_key}");
    let position = operator("numbers/position");
    assert_eq!(position["lists"], 2, "each source subtask's position: {position}");
    assert_eq!(position["list_items"], 2, "{position}");

    let table = shardflow(&["snapshot", path.to_str().unwrap()]);
    assert!(table.status.success());
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.lines().any(|l| l.starts_with("per-key") && l.contains("table 50")), "{table}");

    // One byte changed: refused with the reason, status 2.
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(&path, &bytes).unwrap();
    let out = shardflow(&["snapshot", path.to_str().unwrap()]);
    std::fs::remove_file(&path).ok();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("checksum"), "{stderr}");
}

#[test]
fn a_snapshot_shows_how_many_entries_expire() {
    use std::time::Duration;

    use shardflow_engine::{
        Dataflow, Emitter, Engine, KeyedContext, KeyedProcessFunction, OperatorError, StateDeclarations, ValueState,
    };

    /// Each key's last record, kept an hour.
    #[derive(Clone, Default)]
    struct Last {
        last: ValueState<u64>,
    }
    impl KeyedProcessFunction<u64, u64, u64> for Last {
        fn open(&mut self, states: &mut StateDeclarations<'_, u64>) -> Result<(), OperatorError> {
            let last = states.value_state("last")?;
            states.expire_after(&last, Duration::from_secs(3_600))?;
            self.last = last;
            Ok(())
        }
        fn process(
            &mut self,
            r: &u64,
            ctx: &mut KeyedContext<'_, u64>,
            _: &mut Emitter<'_, u64>,
        ) -> Result<(), OperatorError> {
            ctx.set_value(&self.last, *r)
        }
    }

    let engine = Engine::builder().shards(1).build().expect("engine starts");
    let df = Dataflow::new("last").stop_with_snapshot();
    df.from_iter("numbers", 0..100u64).key_by(|r: &u64| r % 20).process(Last::default()).name("last").discard();
    let snapshot = engine.run(df.build().expect("a valid dataflow")).expect("it stops").snapshot.expect("a snapshot");
    engine.shutdown();
    let path = std::env::temp_dir().join(format!("shardflow-cli-ttl-{}.snapshot", std::process::id()));
    snapshot.save(&path).expect("saved");
    let json = shardflow(&["snapshot", path.to_str().unwrap(), "--json"]);
    let table = shardflow(&["snapshot", path.to_str().unwrap()]);
    std::fs::remove_file(&path).ok();
    let shown: serde_json::Value = serde_json::from_slice(&json.stdout).expect("one JSON array");
    let last = shown.as_array().unwrap().iter().find(|o| o["operator"] == "last").cloned().expect("the operator");
    assert_eq!((&last["keyed_states"]["last"], &last["expiring"]), (&20.into(), &20.into()), "{last}");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.lines().any(|l| l.starts_with("last") && l.contains("last 20 (20 with a TTL)")), "{table}");
}
