//! Submissions that find too few free slots: they wait CREATED, deploy when a
//! worker registers or a job ends, fail after the wait with the numbers, and
//! are refused at once where the coordinator waits for no slots.

use super::*;

#[test]
fn a_submission_finding_too_few_slots_waits_created_and_deploys_once_a_worker_registers() {
    let mut h = Harness::new();
    let t0 = h.t0;
    h.register(1, "a", vec![0]);
    // Four subtask indices, two slots: accepted, CREATED, nothing deployed.
    let (id, out) = submit(&mut h, 10, job(4, PartitionerKind::Forward, b""), at(t0, 1));
    assert!(submissions(&out).is_empty(), "{out:?}");
    assert_eq!(h.c.job_status(id), Some(JobStatus::Created));
    assert!(submissions(&h.c.on_tick(at(t0, 2000))).is_empty(), "still too few");
    // A second worker brings two more slots: it deploys there and then.
    let out = h.c.on_message(at(t0, 2500), 2, register_msg("b", vec![1]));
    assert!(matches!(&out[0], Output::Send(2, Message::RegistrationAccepted(_))), "{out:?}");
    assert_eq!(submissions(&out).len(), 8, "two vertices of four subtasks: {out:?}");
    assert_eq!(h.c.job_status(id), Some(JobStatus::Running));
}

#[test]
fn a_waiting_submission_fails_after_the_wait_saying_how_many_slots_it_needed() {
    let mut h = Harness::new();
    let t0 = h.t0;
    let (id, _) = submit(&mut h, 10, job(3, PartitionerKind::Forward, b""), at(t0, 1));
    assert!(h.c.on_tick(at(t0, 3999)).is_empty(), "waits");
    assert_eq!(h.c.job_status(id), Some(JobStatus::Created));
    h.c.on_tick(at(t0, 4001));
    let d = details(&mut h, id, at(t0, 4002));
    assert_eq!(d.status, JobStatus::Failed);
    let failure = d.failure.expect("why it failed");
    assert!(failure.contains("not enough task slots") && failure.contains("4000 ms"), "{failure}");
}

#[test]
fn a_waiting_submission_takes_the_slots_of_a_job_that_ends_at_once() {
    let mut h = Harness::new();
    let t0 = h.t0;
    h.register(1, "a", vec![0]);
    let (first, out) = submit(&mut h, 10, job(2, PartitionerKind::Forward, b""), at(t0, 1));
    let subs = submissions(&out);
    run_all(&mut h, &subs, at(t0, 2));
    let (second, out) = submit(&mut h, 11, job(2, PartitionerKind::Forward, b""), at(t0, 3));
    assert!(submissions(&out).is_empty(), "both slots are the first job's");
    let mut last = Vec::new();
    for (c, d) in &subs {
        last = update(&mut h, *c, d, ExecutionState::Finished, at(t0, 4));
    }
    assert_eq!(h.c.job_status(first), Some(JobStatus::Finished));
    let deployed = submissions(&last);
    assert_eq!(deployed.len(), 4, "the second job deploys as the first ends, no tick needed: {last:?}");
    assert!(deployed.iter().all(|(_, d)| d.job == second));
}

#[test]
fn a_waiting_submission_cancelled_ends_cancelled_and_never_deploys() {
    let mut h = Harness::new();
    let t0 = h.t0;
    let (id, _) = submit(&mut h, 10, job(2, PartitionerKind::Forward, b""), at(t0, 1));
    let out = h.c.on_message(at(t0, 2), 11, Message::CancelJob(CancelJob { job: id }));
    assert!(submissions(&out).is_empty(), "{out:?}");
    assert_eq!(details(&mut h, id, at(t0, 3)).status, JobStatus::Canceled);
    let out = h.c.on_message(at(t0, 4), 2, register_msg("late", vec![0, 1]));
    assert!(submissions(&out).is_empty(), "a cancelled job is not deployed when slots come: {out:?}");
}

#[test]
fn with_no_wait_for_slots_a_submission_that_does_not_fit_is_refused_at_once() {
    let t0 = Instant::now();
    let config = CoordinatorConfig { submit_slot_wait: Duration::ZERO, ..config() };
    let mut h = Harness { c: Coordinator::new(config, Box::new(Catalog), RM, t0), t0 };
    h.register(1, "a", vec![0]);
    let out = h.c.on_message(at(t0, 1), 10, submit_msg(job(3, PartitionerKind::Forward, b"")));
    match &out[..] {
        [Output::Send(10, Message::ErrorReply(e)), Output::Close(10)] => {
            assert_eq!(e.code, ErrorCode::NotEnoughSlots);
            assert!(e.retryable && e.message.contains('3'), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
}
