//! A user's own binary (`bin/own_jobs.rs`: its jobs in a catalog, handed to
//! `shardflow_tools::main_with`) is a whole cluster: coordinator, worker and
//! client processes of that one binary run its job over its own record type.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

const OWN: &str = env!("CARGO_BIN_EXE_own-jobs");

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn own(args: &[&str]) -> Output {
    Command::new(OWN).args(args).output().expect("own-jobs runs")
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = own(&[args, &["--json"]].concat());
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

#[test]
fn a_users_own_binary_runs_its_own_jobs_as_a_cluster() {
    let mut coordinator = Command::new(OWN)
        .args(["coordinator", "--bind", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("coordinator starts");
    let mut line = String::new();
    BufReader::new(coordinator.stdout.take().expect("piped")).read_line(&mut line).expect("it says where it listens");
    let _coordinator = Proc(coordinator);
    let addr = line.trim().rsplit(' ').next().unwrap_or_default().to_string();
    assert!(addr.starts_with("127.0.0.1:"), "coordinator said: {line}");
    let at = ["--coordinator", addr.as_str()];
    // A job with core hints and no worker to place it over is refused, not
    // placed without them.
    let out = own(&["submit", "visit-time", "--param", "pin=0", "--coordinator", addr.as_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("core hints (visits)") && err.contains("no worker"), "{err}");
    let _worker = Proc(
        Command::new(OWN)
            .args(["worker", "--cores", "0", "--resource-id", "w0", "--slots-per-shard", "2"])
            .args(["--network-memory-bytes", "8388608", "--segment-bytes", "4096"])
            .args(at)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("worker starts"),
    );
    let v = json(&[&["cluster", "--wait-workers", "1", "--timeout-s", "60"][..], &at[..]].concat());
    assert_eq!(v["workers"], 1, "{v}");

    // Its catalog is its own: its job is listed, the shipped benchmarks are not.
    let out = own(&["submit", "--list-jobs"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && listed.contains("visit-time"), "{listed}");
    assert!(!listed.contains("keyed-sum"), "{listed}");
    let out = own(&[&["submit", "keyed-sum", "--wait", "finished"][..], &at[..]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no such job") && err.contains("visit-time"), "{err}");

    // Its job: 20 000 visits of 50 users, keyed by the user's name, summed;
    // the home page's visits through a side output to a sink of their own.
    let submit = ["submit", "visit-time", "-p", "2", "--param", "visits=20000", "--param", "users=50"];
    let v = json(&[&submit[..], &["--wait", "finished"], &at[..]].concat());
    assert_eq!(v["status"], "FINISHED", "{v}");
    let (records, sum) = v["subtasks"].as_array().expect("subtasks").iter().fold((0, 0), |(r, s), t| {
        (r + t["sink_records"].as_u64().unwrap_or(0), s + t["sink_value_sum"].as_u64().unwrap_or(0))
    });
    // One total per user, and each visit of /page/0 (r % 7 == 0) through the
    // side output: every visit's time once.
    let home = (0..20_000u64).filter(|r| r % 7 == 0).count() as u64;
    assert_eq!((records, sum), (50 + home, 20_000 * 19_999 / 2), "per user, and the home page's visits: {v}");

    // A core hint of its job places it: on the worker's core it runs, on a
    // core no worker has it is refused, naming the vertex and the core.
    let pinned = json(&[&submit[..], &["--param", "pin=0", "--wait", "finished"], &at[..]].concat());
    assert_eq!(pinned["status"], "FINISHED", "{pinned}");
    let out = own(&[&submit[..], &["--param", "pin=7"], &at[..]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("'visits'") && err.contains("core 7"), "{err}");
    // Its plan, asked of the binary without submitting: the side output's sink
    // chained where the split runs, the keyed sum behind a hash edge; the
    // vertices are those the cluster ran.
    let plan = json(&[&submit[..], &["--plan"]].concat());
    let chains: Vec<(&str, &str)> = plan["vertices"]
        .as_array()
        .expect("vertices")
        .iter()
        .map(|v| (v["name"].as_str().unwrap_or_default(), v["chain"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(
        chains,
        [
            ("visits", "visits [source] -> split [flat_map] -> side_output-2 -> home [count]"),
            ("reduce-4", "reduce-4 (keyed state) -> per-user [count]"),
        ],
        "{plan}"
    );
    let edge = &plan["edges"][0];
    assert_eq!((&edge["from_operator"], &edge["partitioner"]), (&"split".into(), &"Hash".into()), "{plan}");
    let ran: BTreeSet<&str> =
        v["subtasks"].as_array().expect("subtasks").iter().filter_map(|t| t["vertex"].as_str()).collect();
    assert_eq!(ran, chains.iter().map(|c| c.0).collect(), "{v}");
    // The plan of the job that ran, asked of the cluster: its graph as
    // submitted, built again by the binary's catalog, with its status.
    let job = v["job"].as_str().expect("job id");
    let status = json(&[&["status", job, "--plan"][..], &at[..]].concat());
    assert_eq!(status["plan"], plan, "{status}");
    assert_eq!((&status["status"]["job"], &status["status"]["status"]), (&v["job"], &"FINISHED".into()), "{status}");
    let out = own(&[&["status", job, "--plan"][..], &at[..]].concat());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.starts_with("job visit-time: 2 vertices"), "{text}");
    assert!(text.contains(&format!("{job} visit-time FINISHED")), "the status follows the plan: {text}");
}
