//! High availability with real processes and a real etcd on loopback ports:
//! two `shardflow coordinator`s campaigning in etcd, two workers and the
//! client commands finding the leader there (`--ha-etcd`, no `--coordinator`).
//! The leader is SIGKILLed, SIGSTOPped and resumed, stopped with SIGTERM; etcd
//! itself is killed and started again. Every wait is on an event (a log line, or a wait the
//! coordinator answers), with a generous timeout; everything a test starts is
//! killed when it ends.

mod common;

use std::process::Command;

use common::{json, run, sink_totals, worker_with, Coordinator, Etcd, Proc, TempDir};
use serde_json::Value;

/// A coordinator of cluster `cluster_id` on `etcd` with a 1 s lease.
fn coordinator(etcd: &Etcd, cluster_id: &str, extra: &[&str]) -> Coordinator {
    leased_coordinator(etcd, cluster_id, "1000", extra)
}

/// A coordinator of cluster `cluster_id` on `etcd` with a lease of `ttl_ms`.
fn leased_coordinator(etcd: &Etcd, cluster_id: &str, ttl_ms: &str, extra: &[&str]) -> Coordinator {
    let ha = ["--ha-etcd", etcd.endpoint.as_str(), "--cluster-id", cluster_id];
    Coordinator::start("", &[&["--bind", "127.0.0.1:0", "--lease-ttl-ms", ttl_ms], &ha[..], extra].concat())
}

/// Everything of one HA cluster.
struct Ha {
    etcd: Etcd,
    cluster_id: String,
    leader: Coordinator,
    standby: Coordinator,
    _workers: Vec<Proc>,
    logs: TempDir,
}

impl Ha {
    /// etcd, two coordinators (the first leads, the second is a standby) with a
    /// 1 s lease, and two workers of two slots, all registered.
    fn start(name: &str, coordinator_flags: &[&str]) -> Self {
        Self::start_leased(name, "1000", coordinator_flags)
    }

    /// [`Ha::start`] with coordinators' leases of `ttl_ms`.
    fn start_leased(name: &str, ttl_ms: &str, coordinator_flags: &[&str]) -> Self {
        let etcd = Etcd::start();
        let cluster_id = name.to_string();
        let ha = ["--ha-etcd", etcd.endpoint.as_str(), "--cluster-id", name];
        let mut leader = leased_coordinator(&etcd, name, ttl_ms, coordinator_flags);
        leader.wait_for_log(&["leading the cluster"]);
        let mut standby = leased_coordinator(&etcd, name, ttl_ms, coordinator_flags);
        standby.wait_for_log(&["a standby campaigning"]);
        let logs = TempDir::new("ha-logs");
        let workers = (0..2)
            .map(|i| worker_with(&format!("w{i}"), i % cores(), 2, &ha, Some(&logs.path(&format!("w{i}.log")))))
            .collect();
        let h = Ha { etcd, cluster_id, leader, standby, _workers: workers, logs };
        let v = h.json(&["cluster", "--wait-workers", "2", "--timeout-s", "60"]);
        assert_eq!(v["workers"], 2, "{v}");
        assert_eq!(v["leader"]["address"], h.leader.addr.as_str(), "the first coordinator leads: {v}");
        h
    }

    /// The flags that find this cluster's leader.
    fn ha(&self) -> [&str; 4] {
        ["--ha-etcd", self.etcd.endpoint.as_str(), "--cluster-id", self.cluster_id.as_str()]
    }

    fn json(&self, args: &[&str]) -> Value {
        json(&[args, &self.ha()[..]].concat())
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        run(&[args, &self.ha()[..]].concat())
    }

    /// Submits a job that runs ten minutes (unless cancelled), waits until it
    /// runs; its id.
    fn submit_endless(&self) -> String {
        let args = ["submit", "forward-count", "--param", "rate=1000", "--param", "duration_ms=600000"];
        let v = self.json(&[&args[..], &["--wait", "running"]].concat());
        assert_eq!(v["status"], "RUNNING", "{v}");
        v["job"].as_str().unwrap().to_string()
    }

    /// A worker's log so far.
    fn worker_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.logs.path(&format!("w{i}.log"))).unwrap_or_default()
    }
}

fn cores() -> usize {
    shardflow_engine::online_cores().len().max(1)
}

fn signal(p: &Proc, sig: &str) {
    let status = Command::new("kill").args([sig, &p.0.id().to_string()]).status().unwrap();
    assert!(status.success(), "kill {sig}");
}

/// The tasks a worker's dump lists, over its shards, each as "job attempt
/// vertex state".
fn tasks_of(dump: &Value) -> Vec<String> {
    let field = |t: &Value, k: &str| t[k].as_str().unwrap_or_else(|| panic!("no {k} in {t}")).to_string();
    dump["shards"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["tasks"].as_array().unwrap().iter())
        .map(|t| ["job", "attempt", "vertex", "state"].map(|k| field(t, k)).join(" "))
        .collect()
}

/// How many workers a job's subtasks run on.
fn workers_of(job: &Value) -> usize {
    let workers: std::collections::BTreeSet<u64> =
        job["subtasks"].as_array().unwrap().iter().map(|t| t["worker"].as_u64().unwrap()).collect();
    workers.len()
}

fn attempts(job: &Value) -> Vec<u64> {
    job["subtasks"].as_array().unwrap().iter().map(|t| t["attempt"].as_u64().unwrap()).collect()
}

#[test]
fn a_sigkilled_leader_is_replaced_and_its_running_job_completes_under_the_new_one() {
    let mut h = Ha::start("kill", &[]);
    // 10 000 records at 1 000/s: still running when the leader dies.
    let submitted = h.json(&[
        "submit",
        "forward-count",
        "--param",
        "rate=1000",
        "--param",
        "duration_ms=10000",
        "--wait",
        "running",
    ]);
    let id = submitted["job"].as_str().unwrap().to_string();
    assert_eq!(submitted["status"], "RUNNING", "{submitted}");
    assert_eq!(attempts(&submitted), vec![0; 4]);
    assert_eq!(workers_of(&submitted), 2, "placed on both workers: {submitted}");

    // A client already waiting for the end when the leader dies: it follows the
    // leadership to the standby and keeps waiting there, no restart.
    let waiting = Command::new(common::BIN)
        .args(["status", &id, "--wait", "finished", "--timeout-s", "120", "--json"])
        .args(h.ha())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut waiting = Proc(waiting);
    h.leader.proc.0.kill().unwrap();
    h.leader.proc.0.wait().unwrap();
    h.standby.wait_for_log(&["won the leadership"]);
    h.standby.wait_for_log(&["job recovered from the job store", &format!("job={id}")]);

    // The client finds the new leader in etcd and waits there for the end.
    let v = h.json(&["status", &id, "--wait", "running", "--timeout-s", "60"]);
    assert_eq!(workers_of(&v), 2, "the new leader waited for both workers and placed it alike: {v}");
    let v = h.json(&["status", &id, "--wait", "finished", "--timeout-s", "120"]);
    assert_eq!(v["status"], "FINISHED", "{v}");
    assert_eq!(sink_totals(&v), (10_000, 10_000 * 10_001 / 2), "every record once, from the rerun: {v}");
    assert!(attempts(&v).iter().all(|&a| a >= 1), "the new leader ran it again (attempt 1 and on): {v}");
    let mut told = String::new();
    std::io::Read::read_to_string(&mut waiting.0.stdout.take().unwrap(), &mut told).unwrap();
    let status = waiting.0.wait().unwrap();
    let told: Value = serde_json::from_str(&told).unwrap_or_else(|e| panic!("{e}: {told}"));
    assert!(status.success() && told["status"] == "FINISHED", "the waiting client saw the end: {told}");
    let cluster = h.json(&["cluster"]);
    assert_eq!(cluster["leader"]["address"], h.standby.addr.as_str(), "{cluster}");
    assert_eq!(cluster["workers"], 2, "both workers registered with the new leader: {cluster}");
    let list = h.json(&["list"]);
    let jobs: Vec<(&str, &str)> =
        list.as_array().unwrap().iter().map(|j| (j["job"].as_str().unwrap(), j["status"].as_str().unwrap())).collect();
    assert_eq!(jobs, vec![(id.as_str(), "FINISHED")], "the new leader lists the job");
    for i in 0..2 {
        assert!(h.worker_log(i).contains("leader is elected"), "worker {i} followed: {}", h.worker_log(i));
    }
}

/// A leader stopped by SIGTERM resigns: with a lease of five minutes, far
/// beyond every wait here, only its resignation can make the standby lead
/// (and recover the job) within the wait.
#[test]
fn a_leader_stopped_by_sigterm_resigns_and_the_standby_leads_at_once() {
    let mut h = Ha::start_leased("term", "300000", &[]);
    let id = h.submit_endless();

    signal(&h.leader.proc, "-TERM");
    let line = h.leader.wait_for_log(&["stopping: resigning"]);
    assert!(line.contains("SIGTERM"), "{line}");
    h.leader.wait_for_log(&["coordinator stopped"]);
    let status = h.leader.proc.0.wait().unwrap();
    assert!(status.success(), "a stop asked for is a clean exit: {status}");
    assert!(!h.leader.log.seen.iter().any(|l| l.contains("panicked")), "{:?}", h.leader.log.seen);

    h.standby.wait_for_log(&["won the leadership"]);
    h.standby.wait_for_log(&["job recovered from the job store", &format!("job={id}")]);
    let v = h.json(&["status", &id, "--wait", "running", "--timeout-s", "60"]);
    assert_eq!(v["status"], "RUNNING", "{v}");
    let cluster = h.json(&["cluster", "--wait-workers", "2", "--timeout-s", "60"]);
    assert_eq!(cluster["leader"]["address"], h.standby.addr.as_str(), "{cluster}");
    assert!(h.run(&["cancel", &id]).status.success());
    assert_eq!(h.json(&["status", &id, "--wait", "finished", "--timeout-s", "60"])["status"], "CANCELED");
}

#[test]
fn a_paused_leader_resumed_after_a_takeover_acts_on_nothing_and_steps_down() {
    let mut h = Ha::start("pause", &[]);
    let id = h.submit_endless();

    signal(&h.leader.proc, "-STOP");
    // Past its 1 s lease the standby wins; the workers follow it.
    h.standby.wait_for_log(&["leading the cluster"]);
    let v = h.json(&["status", &id, "--wait", "running", "--timeout-s", "60"]);
    assert_eq!(v["status"], "RUNNING", "{v}");
    assert_eq!(attempts(&v), vec![1; 4], "the new leader runs it again: {v}");
    let cluster = h.json(&["cluster", "--wait-workers", "2", "--timeout-s", "60"]);
    assert_eq!(cluster["leader"]["address"], h.standby.addr.as_str(), "{cluster}");
    let new_epoch = cluster["leader"]["epoch"].as_u64().unwrap();

    signal(&h.leader.proc, "-CONT");
    // Resumed, it finds its lease gone: everything it would have done (its
    // workers vanished, so its job would fail over) is dropped, and it steps down.
    let line = h.leader.wait_for_log(&["stepping down to standby"]);
    assert!(line.contains("held actions dropped"), "{line}");
    // It serves nobody: a client sent to it is told who leads.
    let out = run(&["list", "--coordinator", &h.leader.addr]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("standby") && err.contains(&h.standby.addr), "{err}");
    let out = run(&["cancel", &id, "--coordinator", &h.leader.addr]);
    assert_eq!(out.status.code(), Some(2), "a cancel at the deposed leader is refused");
    // Nothing it did reached the workers: the job runs on under the new leader, same attempt.
    let v = h.json(&["status", &id]);
    assert_eq!((v["status"].as_str(), attempts(&v)), (Some("RUNNING"), vec![1; 4]), "{v}");
    let cluster = h.json(&["cluster"]);
    assert_eq!(cluster["leader"]["epoch"].as_u64(), Some(new_epoch), "{cluster}");
    let tasks: Vec<String> = ["w0", "w1"].iter().flat_map(|w| tasks_of(&h.json(&["dump", w]))).collect();
    assert_eq!(tasks.len(), 4, "the workers run the job's four subtasks and nothing else: {tasks:?}");
    assert!(tasks.iter().all(|t| t.starts_with(&format!("{id} ")) && t.ends_with(" RUNNING")), "{tasks:?}");
    assert!(h.run(&["cancel", &id]).status.success());
    assert_eq!(h.json(&["status", &id, "--wait", "finished", "--timeout-s", "60"])["status"], "CANCELED");
}

/// A paused leader answers nothing and closes nothing: a client waiting on it
/// learns of the takeover from etcd, ends that connection and follows.
#[test]
fn a_client_waiting_on_a_paused_leader_follows_the_takeover_at_once() {
    let mut h = Ha::start("paused-client", &[]);
    let id = h.submit_endless();
    // Its wait (ten minutes) and its answer timeout are far beyond every wait here.
    let mut waiting = Proc(
        Command::new(common::BIN)
            .args(["status", &id, "--wait", "finished", "--timeout-s", "600", "--json"])
            .args(h.ha())
            .env("SHARDFLOW_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut log = common::Log::of(waiting.0.stderr.take().unwrap());
    log.wait_for(&["reached the leader", &h.leader.addr]);

    signal(&h.leader.proc, "-STOP");
    h.standby.wait_for_log(&["leading the cluster"]);
    // Its lease lapsed (no leader yet) or the standby leads already.
    log.wait_for(&[&format!("{} no longer leads the cluster", h.leader.addr), "finding the leader again"]);
    log.wait_for(&["reached the leader", &h.standby.addr]);
    // It waits at the new leader now: the end it waits for comes from there.
    assert!(h.run(&["cancel", &id]).status.success());
    let mut told = String::new();
    std::io::Read::read_to_string(&mut waiting.0.stdout.take().unwrap(), &mut told).unwrap();
    let status = waiting.0.wait().unwrap();
    let told: Value = serde_json::from_str(&told).unwrap_or_else(|e| panic!("{e}: {told}"));
    assert_eq!((status.code(), told["status"].as_str()), (Some(1), Some("CANCELED")), "{told}");
    signal(&h.leader.proc, "-CONT");
}

#[test]
fn with_etcd_gone_for_a_while_the_leader_keeps_its_jobs_holds_its_actions_and_recovers() {
    let mut h = Ha::start("outage", &[]);
    let id = h.submit_endless();
    let leader_addr = h.leader.addr.clone();
    let direct = ["--coordinator", leader_addr.as_str()];
    let epoch = h.json(&["cluster"])["leader"]["epoch"].as_u64();

    h.etcd.kill();
    h.leader.wait_for_log(&["the leadership is unconfirmed"]);
    // Informing answers still flow: the job runs.
    let v = json(&[&["status", &id][..], &direct[..]].concat());
    assert_eq!((v["status"].as_str(), attempts(&v)), (Some("RUNNING"), vec![0; 4]), "{v}");
    // A cancel is taken but held: the workers' tasks keep running meanwhile.
    let mut cancel = Proc(
        Command::new(common::BIN)
            .args(["cancel", &id])
            .args(direct)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    h.leader.wait_for_log(&["cancel requested", &format!("job={id}")]);
    let v = json(&[&["status", &id][..], &direct[..]].concat());
    assert_eq!(v["status"], "CANCELLING", "the coordinator took the cancel: {v}");
    let tasks: Vec<String> =
        ["w0", "w1"].iter().flat_map(|w| tasks_of(&json(&[&["dump", w][..], &direct[..]].concat()))).collect();
    assert_eq!(tasks.len(), 4, "{tasks:?}");
    assert!(tasks.iter().all(|t| t.ends_with(" RUNNING")), "no cancel reached the workers without etcd: {tasks:?}");

    h.etcd.spawn();
    h.leader.wait_for_log(&["the leadership is confirmed again"]);
    let status = cancel.0.wait().unwrap();
    assert!(status.success(), "the held cancel is carried out once etcd is back");
    let v = h.json(&["status", &id, "--wait", "finished", "--timeout-s", "60"]);
    assert_eq!(v["status"], "CANCELED", "{v}");
    assert_eq!(v["restarts"], 0, "the job never restarted: {v}");
    let cluster = h.json(&["cluster"]);
    assert_eq!(cluster["leader"]["address"], leader_addr.as_str(), "the same leader throughout: {cluster}");
    assert_eq!(cluster["leader"]["epoch"].as_u64(), epoch, "the same leadership throughout: {cluster}");
    // And it still takes new work.
    let v = h.json(&["submit", "forward-count", "--param", "records=5000", "--wait", "finished"]);
    assert_eq!((v["status"].as_str(), sink_totals(&v)), (Some("FINISHED"), (5000, 5000 * 5001 / 2)), "{v}");
}

/// Not a check but a measurement (issue 11's target: ≤ 3 s with a 1 s lease):
/// ten times, SIGKILL the leader while a job runs and time until a standby
/// leads, both workers are registered with it and every subtask runs again
/// (a new attempt). The killed coordinator comes back as the next standby.
/// The times include starting the client processes that wait (a few ms each).
///
/// `cargo test --release -p shardflow-tools --test ha -- --ignored --nocapture failover_time`
#[test]
#[ignore = "a measurement: run it by name, in release"]
fn failover_time_over_ten_kills() {
    let mut h = Ha::start("failover", &[]);
    let v = h.json(&["submit", "forward-count", "--param", "rate=1000", "--param", "duration_ms=3600000"]);
    let id = v["job"].as_str().unwrap().to_string();
    let v = h.json(&["status", &id, "--wait", "running", "--timeout-s", "60"]);
    let mut attempt = attempts(&v).into_iter().max().unwrap();
    let mut times = Vec::new();
    for kill in 1..=10 {
        let killed_at = std::time::Instant::now();
        h.leader.proc.0.kill().unwrap();
        h.leader.proc.0.wait().unwrap();
        let v = h.json(&["status", &id, "--wait", "running", "--timeout-s", "60"]);
        assert!(attempts(&v).iter().all(|&a| a > attempt), "every subtask runs a new attempt: {v}");
        let cluster = h.json(&["cluster", "--wait-workers", "2", "--timeout-s", "60"]);
        let took = killed_at.elapsed();
        assert_eq!(cluster["leader"]["address"], h.standby.addr.as_str(), "the standby leads: {cluster}");
        attempt = attempts(&v).into_iter().max().unwrap();
        println!("kill {kill}: running again under the new leader after {} ms", took.as_millis());
        times.push(took);
        // The killed coordinator's place: a new standby.
        let mut fresh = coordinator(&h.etcd, &h.cluster_id, &[]);
        fresh.wait_for_log(&["a standby campaigning"]);
        h.leader = std::mem::replace(&mut h.standby, fresh);
    }
    times.sort();
    let ms = |d: std::time::Duration| d.as_millis();
    println!(
        "failover kills=10 lease_ttl_ms=1000 median_ms={} max_ms={} all_ms={:?}",
        ms(times[4] + (times[5] - times[4]) / 2),
        ms(times[9]),
        times.iter().map(|&d| ms(d)).collect::<Vec<_>>()
    );
    assert!(times[9] <= std::time::Duration::from_secs(3), "the target is ≤ 3 s: {times:?}");
}

/// The names scripts rely on, through a config file alone: `[ha] kind,
/// endpoints, lease_ttl_ms, cluster_id` and `[security] secret_file, tls_cert,
/// tls_key, tls_ca` configure a coordinator, a worker and the client commands
/// (no `--coordinator`, no `--ha-etcd`). A client whose file lacks the secret
/// is refused, and so is one that lacks TLS too (it finds the leader and is
/// refused for good, not asking it again until its deadline); a kind shardflow
/// does not know is refused by name.
#[test]
fn the_config_files_ha_and_security_tables_configure_every_role() {
    use std::os::unix::fs::PermissionsExt;
    let etcd = Etcd::start();
    let dir = TempDir::new("ha-config");
    let secret = dir.path("cluster.secret");
    std::fs::write(&secret, format!("{}\n", "7e".repeat(32))).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ha = format!(
        "[ha]\nkind = \"etcd\"\nendpoints = [\"{}\"]\nlease_ttl_ms = 1000\ncluster_id = \"from-config\"\n",
        etcd.endpoint
    );
    let out = run(&["make-certs", "--dir", &dir.path("certs")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tls = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\ntls_ca = \"{}\"\n",
        dir.path("certs/node.pem"),
        dir.path("certs/node.key"),
        dir.path("certs/ca.pem")
    );
    let config = dir.path("cluster.toml");
    std::fs::write(&config, format!("{ha}\n[security]\nsecret_file = \"{secret}\"\n{tls}")).unwrap();
    let no_secret = dir.path("no-secret.toml");
    std::fs::write(&no_secret, format!("{ha}\n[security]\n{tls}")).unwrap();
    let bare = dir.path("bare.toml");
    std::fs::write(&bare, &ha).unwrap();
    let unknown_kind = dir.path("zookeeper.toml");
    std::fs::write(&unknown_kind, "[ha]\nkind = \"zookeeper\"\nendpoints = [\"127.0.0.1:2181\"]\n").unwrap();

    let mut c = Coordinator::start("", &["--bind", "127.0.0.1:0", "--config", &config]);
    c.wait_for_log(&["leading the cluster"]);
    let _w = worker_with("w0", 0, 2, &["--config", &config], None);
    let v = json(&["cluster", "--wait-workers", "1", "--timeout-s", "60", "--config", &config]);
    assert_eq!((v["workers"].as_u64(), v["leader"]["address"].as_str()), (Some(1), Some(c.addr.as_str())), "{v}");
    let submit = ["submit", "forward-count", "-p", "1", "--param", "records=2000", "--wait", "finished"];
    let v = json(&[&submit[..], &["--config", &config]].concat());
    assert_eq!((v["status"].as_str(), sink_totals(&v)), (Some("FINISHED"), (2000, 2000 * 2001 / 2)), "{v}");

    let out = run(&["list", "--config", &no_secret]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("requires authentication"), "found the leader through [ha], refused for the secret: {err}");
    // Refused for good, not taken for a leader gone away (which is asked again
    // until the client's deadline, and ends in a timeout's or a closed
    // connection's error).
    let out = run(&["list", "--config", &bare]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("was refused") && err.contains("does it require TLS?"), "{err}");
    c.wait_for_log(&["refused a connection from 127.0.0.1:", "speak TLS?"]);
    let out = run(&["list", "--config", &unknown_kind]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("zookeeper") && err.contains("etcd"), "{err}");
}
