//! Cluster mode with real processes on 127.0.0.1: a `shardflow coordinator`, two
//! `shardflow worker`s, and the client commands. Workers are SIGKILLed (and
//! stopped with SIGTERM) for real; bad bytes go to the coordinator's port raw.
//! Every process a test starts is killed when the test ends (also on failure),
//! and every wait is on an event: the coordinator's own waits (`--wait`,
//! `--wait-workers`) or a line of its log, with a generous timeout.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Command, Output};
use std::time::Duration;

use common::{frame, read_one, Coordinator, Proc, BIN};
use serde_json::Value;
use shardflow_engine::protocol::{self, ErrorCode, Message, DEFAULT_MAX_FRAME_BYTES, HEADER_BYTES, PROTOCOL_VERSION};

struct Cluster {
    addr: String,
    coordinator: Coordinator,
    workers: Vec<Proc>,
}

fn online_cores() -> Vec<usize> {
    shardflow_engine::online_cores()
}

/// A coordinator on a free port plus one worker per entry of `slots` (worker i on
/// core i mod online cores, with that many slots), all registered.
fn cluster(coordinator_flags: &[&str], slots: &[u32]) -> Cluster {
    let coordinator = Coordinator::start("", &[&["--bind", "127.0.0.1:0"], coordinator_flags].concat());
    let addr = coordinator.addr.clone();
    let cores = online_cores();
    let workers = slots
        .iter()
        .enumerate()
        .map(|(i, &k)| common::worker(&addr, &format!("w{i}"), cores[i % cores.len()], k))
        .collect();
    let c = Cluster { addr, coordinator, workers };
    let v = c.json(&["cluster", "--wait-workers", &slots.len().to_string(), "--timeout-s", "60"]);
    assert_eq!(v["workers"], slots.len(), "{v}");
    c
}

impl Cluster {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN).args(args).args(["--coordinator", &self.addr]).output().unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(&[args, &["--json"]].concat());
        assert!(out.status.success() || !out.stdout.is_empty(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// Submits `forward-count` over `n` records with `flags`, waits for its end and
    /// checks it FINISHED with every record counted once; returns its status.
    fn count_to_the_end(&self, n: u64, flags: &[&str]) -> Value {
        let records = format!("records={n}");
        let submit = ["submit", "forward-count", "--param", &records, "--wait", "finished", "--timeout-s", "120"];
        let submitted = std::time::Instant::now();
        let v = self.json(&[&submit[..], flags].concat());
        assert_eq!(v["status"], "FINISHED", "{v}");
        // Each finished subtask's times, from its result: within the run.
        for t in v["subtasks"].as_array().unwrap() {
            let ms = |k: &str| t[k].as_u64().unwrap_or_else(|| panic!("{k}: {t}"));
            let spent = ms("busy_ms") + ms("idle_ms") + ms("back_pressured_ms");
            assert!(spent <= submitted.elapsed().as_millis() as u64, "{spent} ms: {t}");
        }
        assert_eq!(sink_totals(&v), (n, n * (n + 1) / 2), "{v}");
        let records = |vertex: &str, key: &str| -> u64 {
            let of = |t: &&Value| t["vertex"] == vertex;
            v["subtasks"].as_array().unwrap().iter().filter(of).map(|t| t[key].as_u64().unwrap()).sum()
        };
        assert_eq!((records("source", "records_out"), records("count", "records_in")), (n, n), "{v}");
        v
    }

    fn submit(&self, args: &[&str]) -> String {
        let v = self.json(&[&["submit"], args].concat());
        v["job"].as_str().unwrap().to_string()
    }
}

fn sink_totals(job: &Value) -> (u64, u64) {
    job["subtasks"].as_array().unwrap().iter().fold((0, 0), |(r, s), t| {
        (r + t["sink_records"].as_u64().unwrap_or(0), s.wrapping_add(t["sink_value_sum"].as_u64().unwrap_or(0)))
    })
}

fn workers_of(job: &Value) -> std::collections::BTreeSet<u64> {
    job["subtasks"].as_array().unwrap().iter().map(|t| t["worker"].as_u64().unwrap()).collect()
}

#[test]
fn two_workers_run_a_forward_job_and_list_status_cancel_work() {
    let c = cluster(&[], &[2, 2]);
    let v = c.count_to_the_end(2_000_000, &[]);
    assert_eq!(workers_of(&v).len(), 2, "data stays inside each of the two workers: {v}");
    assert!(v["subtasks"].as_array().unwrap().iter().all(|t| t["state"] == "FINISHED"));
    let first = v["job"].as_str().unwrap().to_string();
    // the table shows what the sinks counted, not just how many records they saw
    let table = String::from_utf8_lossy(&c.run(&["status", &first]).stdout).to_string();
    assert!(table.contains(" sum="), "{table}");
    // an ended job is not cancelled again: said so, and not 0
    let out = c.run(&["cancel", &first]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has already ended (FINISHED)"));
    let o = c.json(&["cluster"]);
    let addresses: Vec<&str> =
        o["worker_list"].as_array().unwrap().iter().map(|w| w["address"].as_str().unwrap()).collect();
    assert!(addresses.iter().all(|a| a.starts_with("127.0.0.1:")), "where each worker connects from: {addresses:?}");

    // a long-running job: every subtask RUNNING with a location, then cancelled
    let id = c.submit(&["forward-count", "--param", "rate=1000", "--param", "duration_ms=600000"]);
    let v = c.json(&["status", &id, "--wait", "running", "--timeout-s", "60"]);
    assert_eq!(v["status"], "RUNNING", "{v}");
    for t in v["subtasks"].as_array().unwrap() {
        assert_eq!(t["state"], "RUNNING", "{v}");
        assert!(t["worker"].is_u64() && t["shard"].is_u64() && t["core"].is_u64(), "{t}");
    }
    let list = c.json(&["list"]);
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|j| j["job"].as_str().unwrap()).collect();
    assert_eq!(names, vec![first.as_str(), id.as_str()]);
    // a wait that times out says so and exits 3, not 0
    let out = c.run(&["status", &id, "--wait", "finished", "--timeout-s", "1"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("timed out after 1 s waiting for"));
    let out = c.run(&["cancel", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // a wait met by a cancelled job exits 1
    let out = c.run(&["status", &id, "--wait", "finished", "--timeout-s", "60", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "CANCELED", "{v}");
    let o = c.json(&["cluster"]);
    assert_eq!((o["total_slots"].as_u64(), o["free_slots"].as_u64()), (Some(4), Some(4)), "{o}");
}

#[test]
fn waiting_for_workers_also_waits_for_a_coordinator_still_starting() {
    use std::process::Stdio;
    let addr = format!("127.0.0.1:{}", common::free_port());
    // The client first, as a script that starts a cluster may run it: nothing
    // listens at `addr` yet.
    let mut waiting = Proc(
        Command::new(BIN)
            .args(["cluster", "--wait-workers", "1", "--timeout-s", "60", "--json", "--coordinator", &addr])
            .env("SHARDFLOW_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("client starts"),
    );
    let mut log = common::Log::of(waiting.0.stderr.take().unwrap());
    log.wait_for(&["waiting for the coordinator at", &addr, "to listen"]);
    let _coordinator = Coordinator::start("", &["--bind", &addr]);
    let _worker = common::worker(&addr, "w0", online_cores()[0], 1);
    let mut out = String::new();
    waiting.0.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let status = waiting.0.wait().unwrap();
    assert!(status.success(), "{status}: {out}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["workers"], 1, "{v}");

    // Nobody ever listening: a clear error once its time is up.
    let nobody = format!("127.0.0.1:{}", common::free_port());
    let out = Command::new(BIN)
        .args(["cluster", "--wait-workers", "1", "--timeout-s", "1", "--coordinator", &nobody])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("no coordinator at {nobody} within 1 s")), "{err}");
}

#[test]
fn a_job_submitted_before_any_worker_waits_created_and_runs_once_one_registers() {
    let mut c = cluster(&[], &[]);
    let v = c.json(&["submit", "forward-count", "--param", "records=1000", "-p", "2"]);
    assert_eq!(v["status"], "CREATED", "accepted, waiting for slots: {v}");
    let job = v["job"].as_str().expect("a job id").to_string();
    c.workers.push(common::worker(&c.addr, "w0", online_cores()[0], 2));
    let done = c.json(&["status", &job, "--wait", "finished", "--timeout-s", "120"]);
    assert_eq!(done["status"], "FINISHED", "{done}");
    assert_eq!(sink_totals(&done), (1000, 1000 * 1001 / 2), "{done}");
}

#[test]
fn a_worker_without_its_coordinator_warns_once_and_retries_quietly() {
    use std::process::Stdio;
    let nobody = format!("127.0.0.1:{}", common::free_port());
    let mut worker = Proc(
        Command::new(BIN)
            .args(["worker", "--coordinator", &nobody, "--cores", &online_cores()[0].to_string()])
            .args(["--network-memory-bytes", "8388608", "--segment-bytes", "4096"])
            .env("SHARDFLOW_LOG", "warn,shardflow_engine::cluster::worker=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("worker starts"),
    );
    let mut log = common::Log::of(worker.0.stderr.take().unwrap());
    let first = log.wait_for(&["coordinator lost", "Connection refused"]);
    assert!(first.contains("WARN"), "{first}");
    // The same failure three more times: at debug, within the minute.
    for _ in 0..3 {
        let again = log.wait_for(&["coordinator lost", "Connection refused"]);
        assert!(again.contains("DEBUG"), "{again}");
    }
    let warned = log.seen.iter().filter(|l| l.contains("WARN") && l.contains("coordinator lost")).count();
    assert_eq!(warned, 1, "{}", log.seen.join("\n"));
}

#[test]
fn a_worker_dump_shows_each_shard_with_its_core_and_tasks() {
    let c = cluster(&[], &[2, 2]);
    let submitted = std::time::Instant::now();
    let id = c.submit(&["forward-count", "--param", "rate=1000", "--param", "duration_ms=600000"]);
    let job = c.json(&["status", &id, "--wait", "running", "--timeout-s", "60"]);
    let cores = online_cores();
    for (i, resource_id) in ["w0", "w1"].into_iter().enumerate() {
        let v = c.json(&["dump", resource_id]);
        let shards = v["shards"].as_array().unwrap();
        assert_eq!(shards.len(), 1, "{v}");
        assert_eq!(shards[0]["core"], cores[i % cores.len()], "{v}");
        assert!(shards[0]["cpu_ms"].as_u64().is_some(), "the shard thread's CPU time: {v}");
        let tasks = shards[0]["tasks"].as_array().unwrap();
        let worker: u64 = v["worker"].as_str().unwrap().trim_start_matches("worker-").parse().unwrap();
        let here = job["subtasks"].as_array().unwrap().iter().filter(|t| t["worker"] == worker).count();
        assert_eq!(tasks.len(), here, "every subtask placed on {resource_id} and nothing else: {v} vs {job}");
        for t in tasks {
            assert!(t["job"] == id.as_str() && t["state"] == "RUNNING", "{t}");
            // Paced at 1000 records/s for ten minutes: counted so far, not the whole.
            assert!(t["records_in"].as_u64().is_some_and(|n| n < 600_000), "{t}");
            assert!(t["records_out"].as_u64().is_some_and(|n| n < 600_000), "{t}");
            // Where its time went so far: no more than the job has run.
            let ms = |k: &str| t[k].as_u64().unwrap_or_else(|| panic!("{k}: {t}"));
            let spent = ms("busy_ms") + ms("idle_ms") + ms("back_pressured_ms");
            assert!(spent <= submitted.elapsed().as_millis() as u64, "{spent} ms: {t}");
        }
    }
    // Over a window: what each shard and task did between two dumps.
    let v = c.json(&["dump", "w0", "--over-s", "0.3"]);
    assert!(v["over_s"].as_f64().is_some_and(|s| s >= 0.3), "{v}");
    let shard = &v["shards"][0];
    assert!(shard["cpu_percent"].as_f64().is_some_and(|p| p >= 0.0), "{v}");
    for t in shard["tasks"].as_array().unwrap() {
        assert!(t["job"] == id.as_str(), "{t}");
        assert!(t["records_in_per_s"].as_f64().is_some_and(|r| r >= 0.0), "{t}");
        // A running task spent the window somewhere: its shares make it whole.
        let shares: f64 = ["busy_percent", "idle_percent", "back_pressured_percent"]
            .iter()
            .map(|k| t[k].as_f64().unwrap_or_else(|| panic!("{k}: {t}")))
            .sum();
        assert!((shares - 100.0).abs() < 1e-6, "{shares}: {t}");
    }
    let out = c.run(&["dump", "worker-99"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no worker worker-99"));
    let out = c.run(&["dump", "w0", "--over-s", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--over-s 0: give a number of seconds"), "{out:?}");
}

/// A job on both workers; worker w1 is ended by `end`, and the coordinator
/// logs `lost` of it: the job fails over and restarts on the other worker's
/// slots, a new attempt everywhere.
fn the_job_restarts_on_the_worker_left(end: impl FnOnce(&mut Proc), lost: &[&str]) {
    let mut c = cluster(&["--restart", "fixed-delay:attempts=2,delay=100ms"], &[2, 2]);
    let id = c.submit(&["forward-count", "--param", "rate=1000", "--param", "duration_ms=600000"]);
    let v = c.json(&["status", &id, "--wait", "running", "--timeout-s", "60"]);
    assert_eq!(workers_of(&v).len(), 2, "{v}");
    end(&mut c.workers[1]);
    c.coordinator.wait_for_log(lost);
    c.coordinator.wait_for_log(&["job restarts", &format!("job={id}")]);
    let v = c.json(&["status", &id, "--wait", "running", "--timeout-s", "60"]);
    assert_eq!(v["status"], "RUNNING", "{v}");
    assert_eq!(v["restarts"], 1, "{v}");
    assert!(v["failure"].as_str().unwrap().contains("lost"), "{v}");
    assert_eq!(workers_of(&v).len(), 1, "the restarted job runs on the surviving worker: {v}");
    assert!(v["subtasks"].as_array().unwrap().iter().all(|t| t["attempt"] == 1 && t["state"] == "RUNNING"), "{v}");
    let o = c.json(&["cluster"]);
    assert_eq!(o["workers"], 1, "{o}");
    assert!(c.run(&["cancel", &id]).status.success());
    assert_eq!(c.json(&["status", &id, "--wait", "finished", "--timeout-s", "60"])["status"], "CANCELED");
}

#[test]
fn a_sigkilled_worker_makes_the_job_restart_on_the_remaining_slots() {
    // The kill closes the worker's connection.
    let kill = |w: &mut Proc| {
        w.0.kill().unwrap();
        w.0.wait().unwrap();
    };
    the_job_restarts_on_the_worker_left(kill, &["worker lost", "w1"]);
}

#[test]
fn a_worker_stopped_by_sigterm_says_goodbye_and_its_job_restarts_elsewhere() {
    let term = |w: &mut Proc| {
        assert!(Command::new("kill").args(["-TERM", &w.0.id().to_string()]).status().unwrap().success());
        let status = w.0.wait().unwrap();
        assert!(status.success(), "a stop asked for is a clean exit: {status}");
    };
    // It said goodbye (a killed worker's connection just closes).
    the_job_restarts_on_the_worker_left(term, &["worker disconnects: worker shutting down"]);
}

#[test]
fn a_sigkilled_worker_fails_the_job_clearly_when_too_few_slots_remain() {
    let mut c = cluster(&["--slot-wait-timeout-ms", "300", "--restart", "fixed-delay:attempts=2,delay=10ms"], &[1, 1]);
    let id = c.submit(&["forward-count", "--param", "rate=1000", "--param", "duration_ms=600000"]);
    c.json(&["status", &id, "--wait", "running", "--timeout-s", "60"]);
    c.workers[0].0.kill().unwrap();
    c.workers[0].0.wait().unwrap();
    let v = c.json(&["status", &id, "--wait", "finished", "--timeout-s", "60"]);
    assert_eq!(v["status"], "FAILED", "{v}");
    let failure = v["failure"].as_str().unwrap();
    assert!(failure.contains("cannot restart") && failure.contains("not enough task slots"), "{failure}");
    assert!(failure.contains("lost"), "{failure}");
    assert_eq!(c.run(&["status", &id, "--wait", "finished"]).status.code(), Some(1), "a wait met by a failed job");
}

#[test]
fn workers_register_again_with_a_restarted_coordinator_and_run_its_jobs() {
    let mut c = cluster(&[], &[2, 2]);
    let id = c.submit(&["forward-count", "--param", "rate=1000", "--param", "duration_ms=600000"]);
    c.json(&["status", &id, "--wait", "running", "--timeout-s", "60"]);

    c.coordinator.proc.0.kill().unwrap();
    c.coordinator.proc.0.wait().unwrap();
    // The same address, so the workers' reconnect loop finds it; they back off
    // (at most 2 s between tries) until it listens again.
    let coordinator = Coordinator::start("", &["--bind", &c.addr]);
    assert_eq!(coordinator.addr, c.addr);
    c.coordinator = coordinator;
    let v = c.json(&["cluster", "--wait-workers", "2", "--timeout-s", "60"]);
    assert_eq!((v["workers"].as_u64(), v["total_slots"].as_u64()), (Some(2), Some(4)), "{v}");
    assert_eq!(c.json(&["list"]), serde_json::json!([]), "the new coordinator knows no jobs");

    // The old job's tasks were cancelled with the session; all four slots serve the new one.
    let v = c.count_to_the_end(1_000_000, &["--parallelism", "4"]);
    assert_eq!(workers_of(&v).len(), 2, "{v}");
}

/// A config file in the temp directory, removed on drop.
struct ConfigFile(std::path::PathBuf);

impl ConfigFile {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("shardflow-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        ConfigFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Subtasks per vertex (every vertex alike).
fn parallelism(job: &Value) -> usize {
    let subtasks = job["subtasks"].as_array().unwrap();
    let per_vertex = subtasks.iter().filter(|t| t["vertex"] == subtasks[0]["vertex"]).count();
    assert_eq!(subtasks.len() % per_vertex, 0, "{job}");
    per_vertex
}

/// `shardflow --config FILE args...` with no other flags.
fn with_config(config: &ConfigFile, args: &[&str]) -> Output {
    Command::new(BIN).args(["--config", config.path()]).args(args).output().unwrap()
}

#[test]
fn every_role_takes_its_settings_from_the_config_file() {
    let coordinator_cfg = ConfigFile::new("coordinator", "[coordinator]\nbind = \"127.0.0.1:0\"\nretained_jobs = 5\n");
    let coordinator = Coordinator::start("", &["--config", coordinator_cfg.path()]);
    let addr = coordinator.addr.clone();
    let core = online_cores()[0];
    let cfg = ConfigFile::new(
        "cluster",
        &format!(
            "[worker]\ncoordinator = \"{addr}\"\ncores = [{core}]\nslots_per_shard = 3\nresource_id = \"from-config\"\n\
             network_memory_bytes = 8388608\nsegment_bytes = 4096\nidle = \"park\"\n\n\
             [client]\ncoordinator = \"{addr}\"\n\n[submit]\nparallelism = 3\ntimeout_s = 120\n"
        ),
    );
    let _worker = Proc(
        Command::new(BIN)
            .args(["--config", cfg.path(), "worker"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("worker starts"),
    );
    let out = with_config(&cfg, &["cluster", "--wait-workers", "1", "--timeout-s", "60", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["total_slots"], 3, "slots_per_shard from [worker]: {v}");
    assert_eq!(v["worker_list"][0]["resource_id"], "from-config", "{v}");
    assert_eq!(v["worker_list"][0]["cores"], serde_json::json!([core]), "{v}");

    let n = 300_000u64;
    let out = with_config(
        &cfg,
        &["submit", "forward-count", "--param", &format!("records={n}"), "--wait", "finished", "--json"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "FINISHED", "{v}");
    assert_eq!(parallelism(&v), 3, "parallelism from [submit]: {v}");
    assert_eq!(sink_totals(&v), (n, n * (n + 1) / 2));

    // A flag wins over the file.
    let out = with_config(&cfg, &["submit", "forward-count", "-p", "1", "--wait", "finished", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(parallelism(&v), 1, "{v}");
}

#[test]
fn a_config_file_with_an_unknown_key_or_a_wrong_type_is_refused_by_name() {
    for (text, names) in [
        ("[client]\ncoordinatr = \"127.0.0.1:1\"\n", "unknown field `coordinatr`"),
        ("[worker]\nslots_per_shard = \"three\"\n", "slots_per_shard"),
        ("[worker]\nidle = \"spinny\"\n", "unknown variant `spinny`, expected `park` or `spin`"),
        ("[scheduler]\n", "unknown field `scheduler`"),
    ] {
        let cfg = ConfigFile::new("bad", text);
        let out = with_config(&cfg, &["list"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(err.starts_with(&format!("error: config file {}", cfg.path())), "{err}");
        assert!(err.contains(names), "{text}: {err}");
    }
}

// ------------------------------------------------------------------ bad input

/// Sends `bytes` on a fresh connection (then half-closes it), and returns the
/// frame the coordinator answers with; asserts the coordinator then closes the
/// connection and still serves others.
fn send_raw(c: &Cluster, bytes: &[u8]) -> Message {
    let mut s = TcpStream::connect(&c.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(bytes).unwrap();
    let _ = s.shutdown(Shutdown::Write);
    answer_then_closed(c, s)
}

fn answer_then_closed(c: &Cluster, mut s: TcpStream) -> Message {
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("the coordinator answers, then closes");
    let (msg, used) = protocol::decode(&got, DEFAULT_MAX_FRAME_BYTES).expect("the answer is one frame");
    assert_eq!(used, got.len(), "nothing after the error reply");
    let o = c.json(&["cluster"]);
    assert!(o["workers"].is_u64(), "the coordinator still serves: {o}");
    msg
}

fn assert_error(m: &Message, code: ErrorCode) {
    match m {
        Message::ErrorReply(e) => assert_eq!(e.code, code, "{}", e.message),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

fn header(len: u32, version: u16, kind: u16) -> Vec<u8> {
    let mut h = vec![0u8; HEADER_BYTES];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4..6].copy_from_slice(&version.to_le_bytes());
    h[6..8].copy_from_slice(&kind.to_le_bytes());
    h
}

/// A worker's registration, as a raw client would send it.
fn registration(resource_id: String) -> Message {
    Message::RegisterWorker(protocol::RegisterWorker {
        resource_id,
        address: "test".into(),
        resources: protocol::WorkerResources {
            cores: vec![0],
            slots_per_shard: 1,
            network_memory_bytes: 1 << 20,
            managed_memory_per_slot_bytes: 1 << 20,
        },
        slots: protocol::SlotReport { slots: vec![] },
    })
}

#[test]
fn bad_input_truncated_frame() {
    let c = cluster(&[], &[]);
    let full = frame(&Message::ListJobs(protocol::ListJobs {}));
    let mut bytes = header(64, PROTOCOL_VERSION, 66);
    bytes.extend_from_slice(&[0u8; 10]);
    assert_eq!(full.len(), HEADER_BYTES);
    assert_error(&send_raw(&c, &bytes), ErrorCode::Truncated);
}

#[test]
fn bad_input_garbage_bytes() {
    let c = cluster(&[], &[]);
    let body: Vec<u8> = (0..96u32).map(|i| (i * 151 + 7) as u8).collect();
    let mut bytes = header(body.len() as u32, PROTOCOL_VERSION, 64);
    bytes.extend_from_slice(&body);
    assert_error(&send_raw(&c, &bytes), ErrorCode::Malformed);
}

#[test]
fn bad_input_length_over_the_maximum() {
    let c = cluster(&[], &[]);
    assert_error(&send_raw(&c, &header(u32::MAX, PROTOCOL_VERSION, 66)), ErrorCode::FrameTooLarge);
}

#[test]
fn bad_input_unknown_version() {
    let c = cluster(&[], &[]);
    assert_error(&send_raw(&c, &header(0, PROTOCOL_VERSION + 1, 66)), ErrorCode::UnsupportedVersion);
}

#[test]
fn bad_input_unknown_kind() {
    let c = cluster(&[], &[]);
    assert_error(&send_raw(&c, &header(0, PROTOCOL_VERSION, 999)), ErrorCode::UnknownKind);
}

#[test]
fn bad_input_stale_fencing_token() {
    let c = cluster(&[], &[]);
    let mut s = TcpStream::connect(&c.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let register = registration("impostor".into());
    s.write_all(&frame(&register)).unwrap();
    let accepted = match read_one(&mut s) {
        Message::RegistrationAccepted(a) => a,
        other => panic!("{other:?}"),
    };
    let stale = shardflow_engine::protocol::HeartbeatFromWorker {
        resource_manager: shardflow_engine::ResourceManagerId(accepted.resource_manager.0 ^ 1),
        worker: accepted.worker,
        seq: 1,
        report: protocol::SlotReport { slots: vec![] },
        tasks: vec![],
    };
    s.write_all(&frame(&Message::HeartbeatFromWorker(stale))).unwrap();
    let m = answer_then_closed(&c, s);
    assert_error(&m, ErrorCode::StaleToken);
}

#[test]
fn bad_input_duplicate_registration() {
    let c = cluster(&[], &[1]);
    let v = c.json(&["cluster"]);
    let id = v["worker_list"][0]["resource_id"].as_str().unwrap().to_string();
    let register = registration(id.clone());
    assert_error(&send_raw(&c, &frame(&register)), ErrorCode::DuplicateRegistration);
    assert_eq!(c.json(&["cluster"])["workers"], 1, "the registered worker is untouched");

    // a worker process under the same name exits with the reason instead of retrying
    let core = online_cores()[0].to_string();
    let mut twin = Command::new(BIN)
        .args(["worker", "--coordinator", &c.addr, "--resource-id", &id, "--cores", &core])
        .args(["--network-memory-bytes", "8388608", "--segment-bytes", "4096"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = twin.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::BufReader::new(stderr).read_to_string(&mut text);
        let _ = tx.send(text);
    });
    let twin = Proc(twin);
    let text = rx.recv_timeout(common::WAIT).expect("the twin worker exits within the wait");
    assert!(text.contains("already registered"), "{text}");
    let mut child = twin;
    assert_eq!(child.0.wait().unwrap().code(), Some(2), "{text}");
    assert_eq!(c.json(&["cluster"])["workers"], 1);
}

#[test]
fn an_explicit_placement_on_a_busy_core_says_the_core_is_full() {
    let c = cluster(&[], &[1]);
    let core = online_cores()[0];
    c.submit(&["forward-count", "-p", "1", "--param", "rate=1000", "--param", "duration_ms=600000"]);
    let map = format!("source={core};count={core}");
    let out = c.run(&["submit", "forward-count", "-p", "1", "--placement", &map]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("core {core} has no free slot left")), "{err}");
    assert!(!err.contains("no shard runs on that core"), "{err}");
}

#[test]
fn bad_input_unknown_job_id() {
    let c = cluster(&[], &[]);
    let m = Message::CancelJob(protocol::CancelJob { job: shardflow_engine::JobId(4242) });
    assert_error(&send_raw(&c, &frame(&m)), ErrorCode::UnknownJob);
    let out = c.run(&["status", "job-4242"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no job job-4242"));
}
