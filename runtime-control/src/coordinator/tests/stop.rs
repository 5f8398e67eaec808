//! Stopping a running job with a snapshot: refused where the workers hand no
//! snapshot back in process; elsewhere each running source subtask is told to
//! stop after a barrier once every subtask runs, and an ended or unknown job
//! is refused.

use super::*;

fn stop_msg(job: JobId) -> Message {
    Message::StopWithSavepoint(StopWithSavepoint { job, directory: String::new() })
}

fn refusal(out: &[Output], conn: ConnId) -> (ErrorCode, String) {
    match out {
        [Output::Send(c, Message::ErrorReply(e)), Output::Close(d)] if *c == conn && *d == conn => {
            (e.code, e.message.clone())
        }
        other => panic!("a refusal on connection {conn}: {other:?}"),
    }
}

#[test]
fn a_stop_with_a_snapshot_tells_each_running_source_subtask_to_stop_after_a_barrier() {
    // A cluster's coordinator refuses: its savepoints come with checkpointing.
    let (mut h, id, _) = one_running_job();
    let out = h.c.on_message(at(h.t0, 3), 10, stop_msg(id));
    assert_eq!(refusal(&out, 10).0, ErrorCode::Unsupported);

    // Where the workers hand snapshots to a client in their process: one
    // stopping trigger per source subtask, none to the sinks.
    let mut h = Harness::with(CoordinatorConfig { snapshots_in_process: true, ..config() });
    let t0 = h.t0;
    h.register(1, "a", vec![0, 1]);
    let (id, out) = submit(&mut h, 10, job(2, PartitionerKind::Hash, b""), at(t0, 0));
    let subs = submissions(&out);
    // Asked while it deploys: acknowledged, and done once every subtask runs.
    let out = h.c.on_message(at(t0, 1), 11, stop_msg(id));
    assert_eq!(out, vec![Output::Send(11, Message::Ack(Ack {}))]);
    let mut out = Vec::new();
    for (c, d) in &subs {
        update(&mut h, *c, d, ExecutionState::Initializing, at(t0, 2));
    }
    for (c, d) in &subs {
        assert!(triggers(&out, id).is_empty(), "not before every subtask runs: {out:?}");
        out = update(&mut h, *c, d, ExecutionState::Running, at(t0, 2));
    }
    assert_eq!(triggers(&out, id), vec![(0, 0, 1, true), (0, 1, 1, true)], "{out:?}");
    assert_eq!(h.c.job_status(id), Some(JobStatus::Running), "the job runs on to the end of its input");
    // Asked again: the sources were told already.
    let out = h.c.on_message(at(t0, 3), 12, stop_msg(id));
    assert_eq!(out, vec![Output::Send(12, Message::Ack(Ack {}))]);

    let (code, _) = refusal(&h.c.on_message(at(t0, 4), 13, stop_msg(JobId(999))), 13);
    assert_eq!(code, ErrorCode::UnknownJob);
    for (c, d) in &subs {
        update(&mut h, *c, d, ExecutionState::Finished, at(t0, 5));
    }
    let (code, why) = refusal(&h.c.on_message(at(t0, 6), 14, stop_msg(id)), 14);
    assert_eq!(code, ErrorCode::Unexpected);
    assert!(why.contains("has already ended (FINISHED)"), "{why}");
}

/// The stopping triggers of `job` in `out`: vertex, subtask, checkpoint, stop.
fn triggers(out: &[Output], job: JobId) -> Vec<(u32, u32, u64, bool)> {
    let mut triggered: Vec<(u32, u32, u64, bool)> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send(1, Message::TriggerCheckpoint(t)) if t.job == job => {
                Some((t.attempt.execution_vertex.vertex.0, t.attempt.execution_vertex.subtask, t.checkpoint.0, t.stop))
            }
            _ => None,
        })
        .collect();
    triggered.sort();
    triggered
}
