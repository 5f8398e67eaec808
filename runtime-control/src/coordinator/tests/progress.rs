//! A job's progress: its workers' last heartbeats, then its results.

use super::*;

fn heartbeat_with(worker: WorkerId, tasks: Vec<TaskProgress>) -> Message {
    Message::HeartbeatFromWorker(HeartbeatFromWorker {
        resource_manager: RM,
        worker,
        seq: 0,
        report: SlotReport { slots: vec![] },
        tasks,
    })
}

fn progress_of(h: &mut Harness, job: JobId, now: Instant) -> Vec<(String, u64, u64, TaskTimes)> {
    match &h.c.on_message(now, 99, Message::RequestJobProgress(RequestJobProgress { job }))[..] {
        [Output::Send(99, Message::JobProgress(p))] => p
            .subtasks
            .iter()
            .map(|s| {
                let name = format!("{}/{}#{}", s.vertex, s.subtask, s.attempt);
                (name, s.records_in, s.records_out, s.times)
            })
            .collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_jobs_progress_is_its_workers_last_heartbeat_then_its_results() {
    let (mut h, id, subs) = one_running_job();
    let t0 = h.t0;
    assert!(progress_of(&mut h, id, at(t0, 3)).is_empty(), "no heartbeat yet");
    let (source, sink) = (&subs[0].1, &subs[1].1);
    // The source waited 12 ms on its full output, the sink never; the sink
    // waited 30 ms for input.
    let times = |busy_ms, idle_ms, back_pressured_ms| TaskTimes { busy_ms, idle_ms, back_pressured_ms };
    let (source_times, sink_times) = (times(40, 0, 12), times(22, 30, 0));
    let counts = |d: &TaskDeploymentDescriptor, n: u64, out: u64| TaskProgress {
        job: id,
        attempt: d.attempt,
        records_in: n,
        records_out: out,
        times: if out > 0 { source_times } else { sink_times },
    };
    let worker = source.slot.worker;
    h.c.on_message(at(t0, 4), 1, heartbeat_with(worker, vec![counts(source, 70, 70), counts(sink, 60, 0)]));
    let both = vec![("source/0#0".to_string(), 70, 70, source_times), ("sink/0#0".to_string(), 60, 0, sink_times)];
    assert_eq!(progress_of(&mut h, id, at(t0, 5)), both);
    // An old attempt's counts, or another worker's, do not count.
    let mut stale = counts(source, 999, 999);
    stale.attempt.attempt += 1;
    h.c.on_message(at(t0, 6), 1, heartbeat_with(worker, vec![stale]));
    let other = h.register(2, "b", vec![1]);
    h.c.on_message(at(t0, 7), 2, heartbeat_with(other, vec![counts(sink, 999, 999)]));
    assert_eq!(progress_of(&mut h, id, at(t0, 8)), both);
    // A finished subtask's counts are its result's.
    update(&mut h, 1, source, ExecutionState::Finished, at(t0, 9));
    assert_eq!(
        progress_of(&mut h, id, at(t0, 10)),
        vec![("source/0#0".to_string(), 5, 5, times(9, 1, 3)), both[1].clone()]
    );
    let out = h.c.on_message(at(t0, 11), 99, Message::RequestJobProgress(RequestJobProgress { job: JobId(77) }));
    assert!(matches!(&out[0], Output::Send(99, Message::ErrorReply(e)) if e.code == ErrorCode::UnknownJob), "{out:?}");
}

fn graph_of(h: &mut Harness, job: JobId, now: Instant) -> Result<JobGraph, ErrorCode> {
    match &h.c.on_message(now, 99, Message::RequestJobGraph(RequestJobGraph { job }))[..] {
        [Output::Send(99, Message::JobGraphReply(r))] if r.job == job => Ok(r.graph.clone()),
        [Output::Send(99, Message::ErrorReply(e)), ..] => Err(e.code),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_jobs_graph_is_given_as_submitted_while_it_runs_and_after_it_ends() {
    let (mut h, id, subs) = one_running_job();
    let t0 = h.t0;
    let submitted = job(1, PartitionerKind::Forward, b"");
    assert_eq!(graph_of(&mut h, id, at(t0, 3)), Ok(submitted.clone()), "running");
    for (conn, d) in &subs {
        update(&mut h, *conn, d, ExecutionState::Finished, at(t0, 4));
    }
    assert_eq!(details(&mut h, id, at(t0, 5)).status, JobStatus::Finished);
    assert_eq!(graph_of(&mut h, id, at(t0, 6)), Ok(submitted), "ended: from the job's record");
    assert_eq!(graph_of(&mut h, JobId(77), at(t0, 7)), Err(ErrorCode::UnknownJob));
}
