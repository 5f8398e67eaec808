//! An authenticated, encrypted control plane with real processes on 127.0.0.1:
//! a coordinator with the cluster's secret (and, in the second test, TLS with
//! mutual authentication), workers and clients with the right secret, a wrong
//! one, none, and a certificate of another CA. The strangers are refused with a
//! clear error and logged with their address; the authorized ones are
//! unaffected. Every wait is on an event or a wait the coordinator answers.

mod common;

use common::{exit_within, json, run, sink_totals, worker_command, worker_with, Coordinator, TempDir};

/// A secret file of 64 hex characters, readable by its owner only.
fn secret(dir: &TempDir, name: &str, byte: u8) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.path(name);
    std::fs::write(&path, format!("{}\n", format!("{byte:02x}").repeat(32))).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A worker process that must end by itself; its exit code and stderr.
fn refused_worker(id: &str, args: &[&str], dir: &TempDir) -> (Option<i32>, String) {
    let log = dir.path(&format!("{id}.log"));
    // It exits on its own: a refusal for good ends the worker.
    let status = exit_within(worker_command(id, 0, 1, args, Some(&log)), &format!("worker {id}"));
    (status.code(), std::fs::read_to_string(&log).unwrap())
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn stderr_of(args: &[&str]) -> (Option<i32>, String) {
    let out = run(args);
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn only_holders_of_the_cluster_secret_get_through() {
    let dir = TempDir::new("secret");
    let (good, wrong) = (secret(&dir, "cluster.secret", 0x5a), secret(&dir, "other.secret", 0x17));
    let mut c = Coordinator::start("", &["--bind", "127.0.0.1:0", "--secret-file", &good]);
    let addr = c.addr.clone();
    let at = ["--coordinator", addr.as_str()];
    let _w0 = worker_with("w0", 0, 2, &[&at[..], &["--secret-file", &good]].concat(), None);
    let v =
        json(&[&["cluster", "--wait-workers", "1", "--timeout-s", "60", "--secret-file", &good][..], &at[..]].concat());
    assert_eq!(v["workers"], 1, "{v}");

    // Clients: a wrong secret, none.
    let (code, err) = stderr_of(&[&["list", "--secret-file", &wrong][..], &at[..]].concat());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("different secrets"), "{err}");
    c.wait_for_log(&["refused a connection from 127.0.0.1:", "instead of proving the secret"]);
    let (code, err) = stderr_of(&[&["list"][..], &at[..]].concat());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("requires authentication") && err.contains("--secret-file"), "{err}");
    c.wait_for_log(&["refused a connection from 127.0.0.1:", "requires authentication"]);

    // Workers: a wrong secret, none. Each ends with the reason instead of retrying.
    let (code, log) = refused_worker("w-wrong", &[&at[..], &["--secret-file", &wrong]].concat(), &dir);
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("different secrets"), "{log}");
    let (code, log) = refused_worker("w-none", &at, &dir);
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("requires authentication"), "{log}");

    // A peer that only connects and says nothing delays nobody.
    let _silent = std::net::TcpStream::connect(&addr).unwrap();

    // The authorized worker and client are unaffected: still one worker, and a job runs.
    let v = json(&[&["cluster", "--secret-file", &good][..], &at[..]].concat());
    assert_eq!(v["workers"], 1, "the strangers never registered: {v}");
    let submit = ["submit", "forward-count", "-p", "1", "--param", "records=3000", "--wait", "finished"];
    let v = json(&[&submit[..], &["--secret-file", &good], &at[..]].concat());
    assert_eq!((v["status"].as_str(), sink_totals(&v)), (Some("FINISHED"), (3000, 3000 * 3001 / 2)), "{v}");
}

#[test]
fn with_tls_a_certificate_of_another_ca_is_refused() {
    let dir = TempDir::new("tls");
    for ca in ["ca1", "ca2"] {
        let out = run(&["make-certs", "--dir", &dir.path(ca)]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let tls = |ca: &str, cert_of: &str| {
        vec![
            "--tls-cert".to_string(),
            dir.path(&format!("{cert_of}/node.pem")),
            "--tls-key".to_string(),
            dir.path(&format!("{cert_of}/node.key")),
            "--tls-ca".to_string(),
            dir.path(&format!("{ca}/ca.pem")),
        ]
    };
    let good = secret(&dir, "cluster.secret", 0x42);
    let ours = tls("ca1", "ca1");
    let ours = strs(&ours);
    let mut c =
        Coordinator::start("", &[&["--bind", "127.0.0.1:0", "--secret-file", good.as_str()][..], &ours[..]].concat());
    let addr = c.addr.clone();
    let at = ["--coordinator", addr.as_str()];
    let authorized = [&at[..], &["--secret-file", good.as_str()], &ours[..]].concat();
    let _w0 = worker_with("w0", 0, 2, &authorized, None);
    let v = json(&[&["cluster", "--wait-workers", "1", "--timeout-s", "60"][..], &authorized[..]].concat());
    assert_eq!(v["workers"], 1, "{v}");

    // A client whose certificate another CA signed (trusting our CA, so it
    // accepts the coordinator): the coordinator refuses it.
    let foreign = tls("ca1", "ca2");
    let foreign = strs(&foreign);
    let (code, err) = stderr_of(&[&["list", "--secret-file", good.as_str()][..], &foreign[..], &at[..]].concat());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("TLS handshake failed"), "{err}");
    let line = c.wait_for_log(&["refused a connection from 127.0.0.1:", "TLS handshake failed"]);
    assert!(line.contains("certificate"), "{line}");
    // A client that trusts only the other CA refuses the coordinator.
    let other = tls("ca2", "ca2");
    let other = strs(&other);
    let (code, err) = stderr_of(&[&["list", "--secret-file", good.as_str()][..], &other[..], &at[..]].concat());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("TLS handshake failed") && err.contains("certificate"), "{err}");
    // A client without TLS, with the secret or without it: told what to check.
    let (code, err) = stderr_of(&[&["list", "--secret-file", good.as_str()][..], &at[..]].concat());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("TLS"), "{err}");
    let (code, err) = stderr_of(&[&["list"][..], &at[..]].concat());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("was refused") && err.contains("does it require TLS?"), "{err}");
    c.wait_for_log(&["refused a connection from 127.0.0.1:", "does the other side speak TLS?"]);
    // So is a worker with neither: it ends with the reason instead of retrying.
    let (code, log) = refused_worker("w-plain", &at, &dir);
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains(&format!("at {addr} ")) && log.contains("does it require TLS?"), "{log}");
    assert!(log.contains("--tls-cert"), "{log}");
    // A worker with the other CA's certificate ends with the reason.
    let (code, log) =
        refused_worker("w-foreign", &[&at[..], &["--secret-file", good.as_str()], &other[..]].concat(), &dir);
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("TLS"), "{log}");

    // The authorized ones are unaffected.
    let v = json(&[&["cluster"][..], &authorized[..]].concat());
    assert_eq!(v["workers"], 1, "{v}");
    let submit = ["submit", "forward-count", "-p", "1", "--param", "records=3000", "--wait", "finished"];
    let v = json(&[&submit[..], &authorized[..]].concat());
    assert_eq!((v["status"].as_str(), sink_totals(&v)), (Some("FINISHED"), (3000, 3000 * 3001 / 2)), "{v}");
}

/// Not a check but a measurement (issue 11: TLS's cost on submit → RUNNING):
/// a plain cluster and one with the secret and TLS (coordinator and two
/// workers each) up at once; a 2 × 2 `forward-count` submitted to each in
/// turn, 15 rounds, and each job's `submit_to_running_us` (the coordinator's
/// own clock, from the submission to every subtask RUNNING) printed.
///
/// `cargo test --release -p shardflow-tools --test security -- --ignored --nocapture submit_to_running`
#[test]
#[ignore = "a measurement: run it by name, in release"]
fn submit_to_running_with_and_without_tls() {
    let dir = TempDir::new("tls-cost");
    let out = run(&["make-certs", "--dir", &dir.path("ca")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let good = secret(&dir, "cluster.secret", 0x42);
    let secure: Vec<String> = [
        "--secret-file",
        &good,
        "--tls-cert",
        &dir.path("ca/node.pem"),
        "--tls-key",
        &dir.path("ca/node.key"),
        "--tls-ca",
        &dir.path("ca/ca.pem"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let clusters: Vec<(&str, Vec<String>)> = vec![("plain", vec![]), ("secret+tls", secure)];
    let mut up = Vec::new();
    for (name, flags) in &clusters {
        let c = Coordinator::start("", &[&["--bind", "127.0.0.1:0"][..], &strs(flags)[..]].concat());
        let access = [&["--coordinator", c.addr.as_str()][..], &strs(flags)[..]].concat();
        let access: Vec<String> = access.iter().map(|s| s.to_string()).collect();
        let workers: Vec<_> = (0..2)
            .map(|i| {
                worker_with(
                    &format!("{name}-w{i}"),
                    i % shardflow_engine::online_cores().len().max(1),
                    2,
                    &strs(&access),
                    None,
                )
            })
            .collect();
        let v = json(&[&["cluster", "--wait-workers", "2", "--timeout-s", "60"][..], &strs(&access)[..]].concat());
        assert_eq!(v["workers"], 2, "{v}");
        up.push((name, c, access, workers));
    }
    let mut times: Vec<Vec<u64>> = vec![Vec::new(); up.len()];
    for _ in 0..15 {
        for (i, (_, _, access, _)) in up.iter().enumerate() {
            let submit = ["submit", "forward-count", "-p", "2", "--param", "records=1000", "--wait", "finished"];
            let v = json(&[&submit[..], &strs(access)[..]].concat());
            assert_eq!(v["status"], "FINISHED", "{v}");
            times[i].push(v["submit_to_running_us"].as_u64().expect("a job that ran says when it was running"));
        }
    }
    for ((name, ..), mut t) in up.iter().zip(times) {
        t.sort_unstable();
        println!("submit_to_running cluster={name} rounds=15 median_us={} all_us={t:?}", t[7]);
    }
}

#[test]
fn make_certs_keeps_an_earlier_ca_unless_forced() {
    let dir = TempDir::new("make-certs");
    let certs = dir.path("certs");
    let out = run(&["make-certs", "--dir", &certs]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ca = std::fs::read(format!("{certs}/ca.pem")).unwrap();
    // Again into the same directory: refused, the CA untouched.
    let (code, err) = stderr_of(&["make-certs", "--dir", &certs]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("ca.pem exists already") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(format!("{certs}/ca.pem")).unwrap(), ca, "the earlier CA is kept");
    // With --force: a new CA.
    let out = run(&["make-certs", "--dir", &certs, "--force"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_ne!(std::fs::read(format!("{certs}/ca.pem")).unwrap(), ca, "replaced");
}
