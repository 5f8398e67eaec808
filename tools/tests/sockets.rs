//! Sockets that cannot stall the coordinator, tried with real processes on
//! 127.0.0.1: a client that floods requests and never reads its replies, and
//! connection floods past the connection cap and past the process's descriptor
//! limit. Every wait is on an event (a reply, a log line, a closed socket) with
//! a generous timeout; every process started is killed when the test ends.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::mpsc;

use common::{frame, try_read_one, worker, Coordinator, WAIT};
use shardflow_engine::protocol::{self, ErrorCode, Message};

#[test]
fn a_client_that_floods_requests_and_never_reads_is_dropped_and_delays_nobody() {
    // A long heartbeat timeout: a machine stall must not pass for a lost worker.
    let args = ["--bind", "127.0.0.1:0", "--heartbeat-timeout-ms", "60000", "--write-timeout-ms", "600000"];
    let mut c = Coordinator::start("", &args);
    let cores = shardflow_engine::online_cores();
    let _w0 = worker(&c.addr, "w0", cores[0], 2);
    let _w1 = worker(&c.addr, "w1", cores[cores.len() - 1], 2);
    assert_eq!(c.json(&["cluster", "--wait-workers", "2", "--timeout-s", "60"])["workers"], 2);
    let job = c.json(&["submit", "forward-count", "--param", "rate=1000", "--param", "duration_ms=600000"]);
    let job = job["job"].as_str().unwrap().to_string();
    assert_eq!(c.json(&["status", &job, "--wait", "running", "--timeout-s", "60"])["status"], "RUNNING");

    // The flood: requests, written in batches, replies never read. The write
    // timeout is the coordinator's 600 s, so only the bounded outbox can end it.
    let mut flood = TcpStream::connect(&c.addr).unwrap();
    flood.set_write_timeout(Some(WAIT)).unwrap();
    let flood_addr = flood.local_addr().unwrap().to_string();
    let batch: Vec<u8> =
        std::iter::repeat_n(frame(&Message::ListJobs(protocol::ListJobs {})), 4096).flatten().collect();
    let (sent_tx, sent) = mpsc::channel();
    let flooder = std::thread::spawn(move || {
        let mut total = 0usize;
        loop {
            if let Err(e) = flood.write_all(&batch) {
                return (total, e.kind());
            }
            total += batch.len();
            let _ = sent_tx.send(total);
        }
    });
    // Past 256 KB of requests (what froze the coordinator before), others are
    // still answered at once.
    while sent.recv_timeout(WAIT).expect("the flood keeps being read") < 256 << 10 {}
    let v = c.json(&["cluster"]);
    assert_eq!(v["workers"], 2, "{v}");

    let line = c.wait_for_log(&["disconnecting", &flood_addr, "not reading"]);
    let (total, kind) = flooder.join().unwrap();
    assert!(
        matches!(kind, std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset),
        "the flood ends because it was disconnected, not by its own timeout: {kind:?} after {total} bytes ({line})"
    );
    let v = c.json(&["status", &job]);
    assert_eq!((v["status"].as_str(), v["restarts"].as_u64()), (Some("RUNNING"), Some(0)), "{v}");
    let v = c.json(&["cluster"]);
    assert_eq!(v["workers"], 2, "no worker was lost: {v}");
    assert!(!c.log.seen.iter().any(|l| l.contains("worker lost")), "{}", c.log.seen.join("\n"));
}

/// Opens `n` idle connections; returns those the coordinator kept open and the
/// messages of the refusals the others got. A connection that got neither
/// fails the test with the coordinator's log.
fn connection_flood(c: &mut Coordinator, n: usize) -> (Vec<TcpStream>, Vec<String>) {
    let mut kept = Vec::new();
    let mut refusals = Vec::new();
    let mut streams: Vec<TcpStream> = (0..n).map(|_| TcpStream::connect(&c.addr).unwrap()).collect();
    // A refused connection gets its error reply at once; a kept one answers a request.
    for (i, mut s) in streams.drain(..).enumerate() {
        s.write_all(&frame(&Message::RequestResourceOverview(protocol::RequestResourceOverview {}))).unwrap();
        let reply = try_read_one(&mut s).unwrap_or_else(|e| {
            panic!(
                "connection {i} of {n} ({} kept, {} refused before it): no reply ({e}); the coordinator's log:\n{}",
                kept.len(),
                refusals.len(),
                c.log.all()
            )
        });
        match reply {
            Message::ErrorReply(e) => {
                assert_eq!(e.code, ErrorCode::Internal);
                assert!(e.retryable, "{}", e.message);
                refusals.push(e.message);
            }
            Message::ResourceOverview(_) => kept.push(s),
            other => panic!("{other:?}"),
        }
    }
    (kept, refusals)
}

#[test]
fn connections_past_the_cap_are_refused_clearly_and_the_coordinator_answers_after() {
    let mut c = Coordinator::start("", &["--bind", "127.0.0.1:0", "--max-connections", "8"]);
    let (kept, refusals) = connection_flood(&mut c, 12);
    assert_eq!((kept.len(), refusals.len()), (8, 4), "{refusals:?}");
    assert!(refusals.iter().all(|m| m.contains("too many connections") && m.contains("at most 8")), "{refusals:?}");
    c.wait_for_log(&["refused a connection from 127.0.0.1:", "too many connections"]);
    let out = c.run(&["cluster"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("too many connections"));
    drop(kept);
    c.wait_for_log(&["ended; 0 open"]);
    let out = c.run(&["cluster", "--json"]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), c.log.seen.join("\n"));
}

#[test]
fn a_connection_flood_past_the_descriptor_limit_is_refused_and_the_coordinator_answers_after() {
    // 40 descriptors, a cap far above: accept itself fails for want of descriptors.
    let mut c = Coordinator::start("ulimit -n 40 &&", &["--bind", "127.0.0.1:0"]);
    c.wait_for_log(&["open-file limit is 40"]);
    let (kept, refusals) = connection_flood(&mut c, 60);
    assert!(!kept.is_empty() && !refusals.is_empty(), "{} kept, {refusals:?}", kept.len());
    assert!(refusals.iter().all(|m| m.contains("out of file descriptors")), "{refusals:?}");
    c.wait_for_log(&["refused a connection from 127.0.0.1:", "out of file descriptors"]);
    // Nobody waits now and every descriptor is taken: accept fails at once, and
    // the acceptor backs off instead of spinning on it.
    c.wait_for_log(&["accept failed", "Too many open files", "retrying in"]);
    drop(kept);
    c.wait_for_log(&["ended; 0 open"]);
    let out = c.run(&["cluster", "--json"]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), c.log.seen.join("\n"));
}
