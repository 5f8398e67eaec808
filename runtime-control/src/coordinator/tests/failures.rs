//! Failures and cancels: a root cause named over a peer's secondary failure,
//! a task cancelled on its worker unasked, a user's cancel, and a panicking
//! catalog check refused with a type while the coordinator lives.

use super::*;

fn fail(h: &mut Harness, conn: ConnId, d: &TaskDeploymentDescriptor, cause: &str, secondary: bool, now: Instant) {
    let failure = Some(TaskFailureInfo { cause: cause.into(), secondary });
    let m = UpdateTaskExecutionState {
        job_master: d.job_master,
        job: d.job,
        attempt: d.attempt,
        state: ExecutionState::Failed,
        failure,
        result: None,
    };
    h.c.on_message(now, conn, Message::UpdateTaskExecutionState(m));
}

/// One worker (connection 1, one slot) running a source → sink job submitted
/// on connection 10, at `t0 + 2 ms`: the harness, the job and its two tasks.
#[test]
fn a_root_cause_reported_after_a_peers_secondary_failure_names_the_job_failure() {
    let (mut h, id, subs) = one_running_job();
    let t0 = h.t0;
    let (source, sink) = (&subs[0], &subs[1]);
    assert_eq!(source.1.vertex_name, "source");
    // The sink fails; its source notices first that its consumer went away.
    fail(&mut h, source.0, &source.1, "the consumer closed the channel", true, at(t0, 3));
    fail(&mut h, sink.0, &sink.1, "managed memory budget exceeded", false, at(t0, 4));
    let d = details(&mut h, id, at(t0, 5));
    let failure = d.failure.unwrap();
    assert!(failure.contains("sink") && failure.contains("managed memory budget exceeded"), "{failure}");
    // A later root cause does not replace the first one.
    fail(&mut h, sink.0, &sink.1, "something after", false, at(t0, 6));
    assert!(details(&mut h, id, at(t0, 7)).failure.unwrap().contains("managed memory"));
}

/// The reasons of the cancels among `out`.
fn cancel_reasons(out: &[Output]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(_, Message::CancelTask(c)) => Some(c.reason.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_task_cancelled_on_its_worker_unasked_fails_the_attempt_and_cancels_say_why() {
    let (mut h, id, subs) = one_running_job();
    let t0 = h.t0;
    // Its worker cancelled the sink (say, its shard stopped): not ignored, a failure.
    let out = update(&mut h, subs[1].0, &subs[1].1, ExecutionState::Canceled, at(t0, 3));
    let d = details(&mut h, id, at(t0, 4));
    assert_ne!(d.status, JobStatus::Running, "the job moved on: {d:?}");
    let failure = d.failure.expect("a failure");
    assert!(failure.contains("cancelled on its worker, not by its job master"), "{failure}");
    // The cancel of the other task says why.
    let reasons = cancel_reasons(&out);
    assert_eq!(reasons.len(), 1, "{out:?}");
    assert!(reasons[0].starts_with("the job ") && reasons[0].contains("cancelled on its worker"), "{reasons:?}");
}

#[test]
fn a_users_cancel_tells_the_tasks_the_job_was_cancelled() {
    let (mut h, id, _) = one_running_job();
    let t0 = h.t0;
    let out = h.c.on_message(at(t0, 3), 10, Message::CancelJob(CancelJob { job: id }));
    assert_eq!(cancel_reasons(&out), vec!["the job was cancelled"; 2], "{out:?}");
}

#[test]
fn a_panicking_catalog_check_is_a_typed_refusal_and_the_coordinator_lives() {
    let mut h = Harness::new();
    let t0 = h.t0;
    h.register(1, "a", vec![0, 1]);
    let out = h.c.on_message(
        at(t0, 1),
        5,
        Message::SubmitJob(SubmitJob {
            graph: job(2, PartitionerKind::Hash, b"panic"),
            placement: String::new(),
            restart: String::new(),
        }),
    );
    match &out[..] {
        [Output::Send(5, Message::ErrorReply(e)), Output::Close(5)] => {
            assert_eq!(e.code, ErrorCode::InvalidJob);
            assert!(e.message.contains("panicked") && e.message.contains("the factory exploded"), "{}", e.message);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    h.c.on_disconnect(at(t0, 2), 5);
    let (id, out) = submit(&mut h, 6, job(2, PartitionerKind::Hash, b""), at(t0, 3));
    assert_eq!(submissions(&out).len(), 4, "the next submission is deployed as usual");
    assert_eq!(h.c.job_status(id), Some(JobStatus::Running));
}
