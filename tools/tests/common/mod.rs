//! What the real-process tests share: children killed on drop, and a
//! coordinator whose log lines arrive on a channel, so a test can wait for
//! what the coordinator did (an event) instead of for time to pass.

#![allow(dead_code, reason = "each test binary uses its own part of the helpers")]

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;
use shardflow_engine::protocol::{self, Message, DEFAULT_MAX_FRAME_BYTES, HEADER_BYTES};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_shardflow");
/// Generous bound of every wait.
pub(crate) const WAIT: Duration = Duration::from_secs(60);

/// A child process killed on drop.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child's log (its stderr), line by line on a channel, drained for the
/// child's whole life (a full pipe would stall it).
pub(crate) struct Log {
    rx: Receiver<String>,
    /// Every line read so far.
    pub(crate) seen: Vec<String>,
}

impl Log {
    pub(crate) fn of(stderr: std::process::ChildStderr) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Log { rx, seen: Vec::new() }
    }

    /// Every line read so far, with those that came since the last look
    /// (without waiting): for a failure's message.
    pub(crate) fn all(&mut self) -> String {
        self.seen.extend(self.rx.try_iter());
        self.seen.join("\n")
    }

    /// Waits for a line containing every one of `parts`; returns it.
    pub(crate) fn wait_for(&mut self, parts: &[&str]) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!("no log line with {parts:?} within {WAIT:?}; seen:\n{}", self.seen.join("\n"))
            });
            self.seen.push(line.clone());
            if parts.iter().all(|p| line.contains(p)) {
                return line;
            }
        }
    }
}

/// A `shardflow coordinator` logging at info, its log lines on a channel.
pub(crate) struct Coordinator {
    pub(crate) proc: Proc,
    pub(crate) addr: String,
    pub(crate) log: Log,
}

impl Coordinator {
    /// `shardflow coordinator args…`, run by `sh` after `shell_prefix` (say,
    /// `ulimit -n 64 &&`); waits until it says where it listens.
    pub(crate) fn start(shell_prefix: &str, args: &[&str]) -> Self {
        let script = format!("{shell_prefix} exec \"$0\" coordinator \"$@\"");
        let mut child = Command::new("sh")
            .args(["-c", &script, BIN])
            .args(args)
            .env("SHARDFLOW_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("coordinator starts");
        let log = Log::of(child.stderr.take().unwrap());
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().rsplit(' ').next().unwrap().to_string();
        assert!(addr.starts_with("127.0.0.1:"), "coordinator said: {line}");
        Coordinator { proc: Proc(child), addr, log }
    }

    /// Waits for a log line containing every one of `parts`; returns it.
    pub(crate) fn wait_for_log(&mut self, parts: &[&str]) -> String {
        self.log.wait_for(parts)
    }

    /// `shardflow args… --coordinator ADDR`.
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN).args(args).args(["--coordinator", &self.addr]).output().unwrap()
    }

    /// `shardflow args… --json`, which must succeed; its JSON.
    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let out = self.run(&[args, &["--json"]].concat());
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    }
}

/// A worker of `slots` slots on one shard on `core`, registering as `id`.
pub(crate) fn worker(addr: &str, id: &str, core: usize, slots: u32) -> Proc {
    let (core, slots) = (core.to_string(), slots.to_string());
    Proc(
        Command::new(BIN)
            .args(["worker", "--coordinator", addr, "--cores", &core, "--resource-id", id])
            .args(["--slots-per-shard", &slots, "--network-memory-bytes", "8388608", "--segment-bytes", "4096"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("worker starts"),
    )
}

/// `m` as a frame's bytes.
pub(crate) fn frame(m: &Message) -> Vec<u8> {
    protocol::encode(m).unwrap().into_vec()
}

/// Reads one frame from `s`, waiting at most [`WAIT`].
pub(crate) fn read_one(s: &mut TcpStream) -> Message {
    try_read_one(s).expect("a frame within the timeout")
}

/// Reads one frame from `s`, waiting at most [`WAIT`]: the error where none
/// came whole.
pub(crate) fn try_read_one(s: &mut TcpStream) -> std::io::Result<Message> {
    s.set_read_timeout(Some(WAIT))?;
    let mut head = [0u8; HEADER_BYTES];
    s.read_exact(&mut head)?;
    let h = protocol::FrameHeader::parse(&head, DEFAULT_MAX_FRAME_BYTES).unwrap();
    let mut body = vec![0u8; h.len];
    s.read_exact(&mut body)?;
    Ok(protocol::decode(&[&head[..], &body].concat(), DEFAULT_MAX_FRAME_BYTES).unwrap().0)
}

/// A free TCP port on 127.0.0.1 (bound, then released for the caller).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A directory of its own for a test, removed on drop.
pub(crate) struct TempDir(pub(crate) std::path::PathBuf);

impl TempDir {
    pub(crate) fn new(what: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("shardflow-test-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// `name` inside it, as a string.
    pub(crate) fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A single-member etcd on loopback ports of its own, with short raft timings
/// (so that a 1 s lease is granted as asked), killed on drop. `.ci/run`
/// installs etcd where it is missing.
pub(crate) struct Etcd {
    proc: Option<Proc>,
    /// host:port of its client API.
    pub(crate) endpoint: String,
    peer: String,
    dir: TempDir,
}

impl Etcd {
    pub(crate) fn start() -> Self {
        let dir = TempDir::new("etcd");
        let endpoint = format!("127.0.0.1:{}", free_port());
        let peer = format!("127.0.0.1:{}", free_port());
        let mut e = Etcd { proc: None, endpoint, peer, dir };
        e.spawn();
        e
    }

    /// Starts it (again, on the same data and ports) and waits until it serves.
    pub(crate) fn spawn(&mut self) {
        let bin = std::env::var("ETCD").unwrap_or_else(|_| "etcd".into());
        let (client, peer) = (format!("http://{}", self.endpoint), format!("http://{}", self.peer));
        let mut child = Command::new(&bin)
            .args(["--name", "test", "--data-dir", &self.dir.path("data")])
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {bin}: {e}: the HA tests need etcd (.ci/run installs it: apt-get install etcd-server)"
                )
            });
        let stderr = child.stderr.take().unwrap();
        let (tx, ready) = mpsc::channel();
        std::thread::spawn(move || {
            let mut told = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !told && line.contains("ready to serve client requests") {
                    told = tx.send(()).is_ok();
                }
            }
        });
        self.proc = Some(Proc(child));
        ready.recv_timeout(WAIT).unwrap_or_else(|_| panic!("etcd did not get ready within {WAIT:?}"));
    }

    /// Kills it (SIGKILL); its data stays for [`Self::spawn`].
    pub(crate) fn kill(&mut self) {
        self.proc.take();
    }
}

/// `shardflow worker args…` with one shard on `core`, `slots` slots and small
/// buffers, registering as `id`; its log (info) goes to `log`, if given.
pub(crate) fn worker_with(id: &str, core: usize, slots: u32, args: &[&str], log: Option<&str>) -> Proc {
    Proc(worker_command(id, core, slots, args, log).spawn().expect("worker starts"))
}

/// The command [`worker_with`] spawns.
pub(crate) fn worker_command(id: &str, core: usize, slots: u32, args: &[&str], log: Option<&str>) -> Command {
    let (core, slots) = (core.to_string(), slots.to_string());
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
        None => Stdio::null(),
    };
    let mut cmd = Command::new(BIN);
    cmd.args(["worker", "--cores", &core, "--resource-id", id])
        .args(["--slots-per-shard", &slots, "--network-memory-bytes", "8388608", "--segment-bytes", "4096"])
        .args(args)
        .env("SHARDFLOW_LOG", "info")
        .stdout(Stdio::null())
        .stderr(stderr);
    cmd
}

/// Runs `cmd`, which must end by itself within [`WAIT`]: its exit status.
/// One still running then is killed and fails the test.
pub(crate) fn exit_within(mut cmd: Command, what: &str) -> std::process::ExitStatus {
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what} starts: {e}"));
    let pid = child.id().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(WAIT) {
        Ok(status) => status.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid]).status();
            panic!("{what} did not end by itself within {WAIT:?}");
        }
    }
}

/// `shardflow args…`; its output.
pub(crate) fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// `shardflow args… --json`, which must print JSON (succeed, or end with a job's
/// failure status, as a wait met by a cancelled job does); its JSON.
pub(crate) fn json(args: &[&str]) -> Value {
    let out = run(&[args, &["--json"]].concat());
    let answered = out.status.success() || (out.status.code() == Some(1) && !out.stdout.is_empty());
    assert!(answered, "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The sinks' (records, value sum) over a job's subtasks.
pub(crate) fn sink_totals(job: &Value) -> (u64, u64) {
    job["subtasks"].as_array().unwrap().iter().fold((0, 0), |(r, s), t| {
        (r + t["sink_records"].as_u64().unwrap_or(0), s.wrapping_add(t["sink_value_sum"].as_u64().unwrap_or(0)))
    })
}
