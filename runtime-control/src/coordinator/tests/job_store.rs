//! The coordinator with a job store (high availability): submissions answered
//! once their record is written, records rewritten as jobs move on, and a new
//! leader recovering the jobs that had not ended.

use super::*;

/// The records a set of outputs asks to write, with their `ack` flags.
fn stores(out: &[Output]) -> Vec<(JobRecord, bool)> {
    out.iter()
        .filter_map(|o| match o {
            Output::StoreJob { record, ack } => Some(((**record).clone(), *ack)),
            _ => None,
        })
        .collect()
}

fn ha_harness(records: Vec<JobRecord>) -> Harness {
    let t0 = Instant::now();
    let c = Coordinator::new(config(), Box::new(Catalog), RM, t0)
        .with_address("127.0.0.1:7000")
        .with_job_store(t0, records);
    Harness { c, t0 }
}

#[test]
fn with_a_job_store_a_submission_is_answered_only_once_its_record_is_written() {
    let mut h = ha_harness(vec![]);
    let t0 = h.t0;
    h.register(1, "a", vec![0, 1]);
    let out = h.c.on_message(at(t0, 1), 10, submit_msg(job(2, PartitionerKind::Forward, b"")));
    let written = stores(&out);
    assert_eq!(written.len(), 1, "{out:?}");
    let (record, ack) = &written[0];
    assert!(ack, "the coordinator waits for this write");
    assert_eq!((record.job, record.epoch, record.restarts, record.status), (JobId(1), 0, 0, JobStatus::Created));
    assert_eq!(record.placement, "colocate", "the strategy it resolved, so a new leader places it alike");
    assert!(!out.iter().any(|o| matches!(o, Output::Send(..))), "no answer, no deployment yet: {out:?}");
    let out = h.c.on_job_stored(at(t0, 2), JobId(1), Ok(()));
    assert!(matches!(&out[0], Output::Send(10, Message::JobSubmitted(s)) if s.job == JobId(1)), "{out:?}");
    assert_eq!(submissions(&out).len(), 4, "deployed after the answer");
    let written = stores(&out);
    assert_eq!(written.len(), 1, "the deployment's workers are written: {out:?}");
    assert_eq!((written[0].0.workers.clone(), written[0].1), (vec!["a".to_string()], false));

    // a write that fails: the client hears why (retryable), and the job does not exist
    let out = h.c.on_message(at(t0, 3), 11, submit_msg(job(1, PartitionerKind::Forward, b"")));
    let id = stores(&out)[0].0.job;
    assert_eq!(id, JobId(2));
    let out = h.c.on_job_stored(at(t0, 4), id, Err("etcd is unavailable".into()));
    match &out[..] {
        [Output::Send(11, Message::ErrorReply(e)), Output::Close(11)] => {
            assert_eq!(e.code, ErrorCode::Internal);
            assert!(e.retryable && e.message.contains("etcd is unavailable"), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.c.job_status(id), None);
}

#[test]
fn restarts_and_the_end_of_a_job_rewrite_its_record() {
    let mut h = ha_harness(vec![]);
    let t0 = h.t0;
    h.register(1, "a", vec![0, 1]);
    h.c.on_message(t0, 10, submit_msg(job(1, PartitionerKind::Forward, b"")));
    let out = h.c.on_job_stored(t0, JobId(1), Ok(()));
    let subs = submissions(&out);
    run_all(&mut h, &subs, at(t0, 1));
    let out = update(&mut h, subs[0].0, &subs[0].1, ExecutionState::Failed, at(t0, 2));
    let restarting = stores(&out);
    assert_eq!(restarting.len(), 1, "the restart count changed: {out:?}");
    assert_eq!((restarting[0].0.restarts, restarting[0].0.epoch, restarting[0].1), (1, 0, false));
    let out = update(&mut h, subs[1].0, &subs[1].1, ExecutionState::Canceled, at(t0, 3));
    assert!(stores(&out).is_empty(), "{out:?}");
    let out = h.c.on_tick(at(t0, 600));
    let again = submissions(&out);
    assert_eq!(stores(&out).iter().map(|(r, _)| r.epoch).collect::<Vec<_>>(), vec![1], "the new epoch: {out:?}");
    run_all(&mut h, &again, at(t0, 700));
    let mut out = Vec::new();
    for (c, d) in &again {
        out = update(&mut h, *c, d, ExecutionState::Finished, at(t0, 800));
    }
    let ended = stores(&out);
    assert_eq!(ended.len(), 1, "{out:?}");
    let r = &ended[0].0;
    assert_eq!(r.status, JobStatus::Finished);
    let d = r.details.as_ref().expect("an ended job's record carries its final details");
    assert!(d.subtasks.iter().all(|s| s.state == ExecutionState::Finished && s.result.is_some()), "{d:?}");
}

fn recorded(id: u64, status: JobStatus, epoch: u32) -> JobRecord {
    let mut r = JobRecord {
        job: JobId(id),
        graph: job(1, PartitionerKind::Forward, b""),
        placement: "colocate".into(),
        restart: "fixed-delay:attempts=1,delay=500ms".into(),
        epoch,
        restarts: 1,
        status,
        details: None,
        latest_checkpoint: None,
        workers: Vec::new(),
    };
    if status.is_globally_terminal() {
        r.details = Some(r.details());
    }
    r
}

#[test]
fn a_new_leader_recovers_unended_jobs_and_lists_ended_ones() {
    let bad = JobRecord { graph: job(1, PartitionerKind::Forward, b"bad"), ..recorded(5, JobStatus::Running, 0) };
    let mut h = ha_harness(vec![recorded(3, JobStatus::Finished, 0), recorded(4, JobStatus::Running, 2), bad]);
    let t0 = h.t0;
    // The record it cannot run fails its job, and that is written.
    let out = h.c.on_tick(at(t0, 1));
    let written = stores(&out);
    let failed = written.iter().find(|(r, _)| r.job == JobId(5)).expect("the unrunnable job's record");
    let bumped = written.iter().find(|(r, _)| r.job == JobId(4)).expect("the recovered job's record");
    assert_eq!((bumped.0.epoch, bumped.0.status), (3, JobStatus::Created), "its next epoch, written before it deploys");
    assert_eq!(failed.0.status, JobStatus::Failed);
    assert!(failed.0.details().failure.unwrap().contains("bad config"), "{failed:?}");
    let list = match &h.c.on_message(at(t0, 2), 20, Message::ListJobs(ListJobs {}))[..] {
        [Output::Send(20, Message::JobList(l))] => l.jobs.clone(),
        other => panic!("{other:?}"),
    };
    let statuses: Vec<(u64, JobStatus)> = list.iter().map(|j| (j.job.0, j.status)).collect();
    assert_eq!(statuses, vec![(3, JobStatus::Finished), (4, JobStatus::Created), (5, JobStatus::Failed)]);
    assert_eq!(details(&mut h, JobId(3), at(t0, 3)).status, JobStatus::Finished);
    // Once a worker offers slots, the job deploys from the start, its attempts after the old epoch.
    let register = RegisterWorker {
        resource_id: "a".into(),
        address: "127.0.0.1".into(),
        resources: WorkerResources {
            cores: vec![0, 1],
            slots_per_shard: 2,
            network_memory_bytes: 1 << 20,
            managed_memory_per_slot_bytes: 1 << 20,
        },
        slots: SlotReport { slots: vec![] },
    };
    let out = h.c.on_message(at(t0, 4), 1, Message::RegisterWorker(register));
    assert!(matches!(&out[0], Output::Send(1, Message::RegistrationAccepted(_))), "{out:?}");
    let subs = submissions(&out);
    assert_eq!(subs.len(), 2, "{out:?}");
    assert!(subs.iter().all(|(_, d)| d.attempt.attempt == 3 && d.job == JobId(4)), "{subs:?}");
    run_all(&mut h, &subs, at(t0, 5));
    assert_eq!(h.c.job_status(JobId(4)), Some(JobStatus::Running));
    assert_eq!(details(&mut h, JobId(4), at(t0, 6)).restarts, 1, "restarts count on");
    // New jobs take ids after the recorded ones; the overview names this leader and its epoch.
    let out = h.c.on_message(at(t0, 7), 21, submit_msg(job(1, PartitionerKind::Forward, b"")));
    assert_eq!(stores(&out)[0].0.job, JobId(6));
    match &h.c.on_message(at(t0, 8), 22, Message::RequestResourceOverview(RequestResourceOverview {}))[..] {
        [Output::Send(22, Message::ResourceOverview(o))] => {
            assert_eq!((o.leader.as_str(), o.leader_epoch), ("127.0.0.1:7000", RM.0))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_recovered_job_without_slots_fails_after_the_wait_with_the_reason() {
    let mut h = ha_harness(vec![recorded(1, JobStatus::Running, 0)]);
    let t0 = h.t0;
    assert!(h.c.next_deadline() <= at(t0, 2000));
    let out = h.c.on_tick(at(t0, 2000));
    let r = stores(&out).into_iter().map(|(r, _)| r).find(|r| r.status == JobStatus::Failed).expect("written failed");
    let failure = r.details().failure.unwrap();
    assert!(failure.contains("cannot recover") && failure.contains("not enough task slots"), "{failure}");
    // The standalone coordinator writes nothing and reports epoch 0.
    let mut plain = Harness::new();
    plain.register(1, "a", vec![0]);
    let t = plain.t0;
    let (_, out) = submit(&mut plain, 10, job(1, PartitionerKind::Forward, b""), t);
    assert!(stores(&out).is_empty());
    match &plain.c.on_message(plain.t0, 22, Message::RequestResourceOverview(RequestResourceOverview {}))[..] {
        [Output::Send(22, Message::ResourceOverview(o))] => assert_eq!(o.leader_epoch, 0),
        other => panic!("{other:?}"),
    }
}

/// Registers worker `name` (one core, two slots) on connection `conn` at `now`;
/// what the coordinator does then.
fn register_at(h: &mut Harness, conn: ConnId, name: &str, now: Instant) -> Vec<Output> {
    let out = h.c.on_message(now, conn, register_msg(name, vec![0]));
    assert!(matches!(&out[0], Output::Send(c, Message::RegistrationAccepted(_)) if *c == conn), "{out:?}");
    out
}

#[test]
fn a_recovered_job_waits_for_the_workers_it_ran_on_but_not_past_the_settle_time() {
    let ran_on_a_and_b = || JobRecord { workers: vec!["a".into(), "b".into()], ..recorded(1, JobStatus::Running, 0) };

    // Both come back: it deploys once the second has registered, not before.
    let mut h = ha_harness(vec![ran_on_a_and_b()]);
    let t0 = h.t0;
    h.c.on_tick(at(t0, 1));
    let out = register_at(&mut h, 1, "a", at(t0, 2));
    assert!(submissions(&out).is_empty(), "a alone has the slots, but b ran it too: {out:?}");
    let out = register_at(&mut h, 2, "b", at(t0, 3));
    assert_eq!(submissions(&out).len(), 2, "{out:?}");
    let written = stores(&out);
    assert_eq!(written.len(), 1, "{out:?}");
    assert!(!written[0].0.workers.is_empty(), "the new deployment's workers are recorded: {written:?}");

    // Only a comes back: at the settle time (here the slot wait, the earlier) it deploys there.
    let mut h = ha_harness(vec![ran_on_a_and_b()]);
    let t0 = h.t0;
    h.c.on_tick(at(t0, 1));
    let out = register_at(&mut h, 1, "a", at(t0, 2));
    assert!(submissions(&out).is_empty(), "{out:?}");
    assert!(h.c.next_deadline() <= at(t0, 2000), "it looks again at the settle time");
    let out = h.c.on_tick(at(t0, 2000));
    assert_eq!(submissions(&out).len(), 2, "{out:?}");
    assert_eq!(h.c.job_status(JobId(1)), Some(JobStatus::Running));
    let written = stores(&out);
    assert_eq!(written.iter().map(|(r, _)| r.workers.clone()).collect::<Vec<_>>(), vec![vec!["a".to_string()]]);

    // A record without workers (never deployed) waits for no one.
    let mut h = ha_harness(vec![recorded(1, JobStatus::Running, 0)]);
    let t0 = h.t0;
    h.c.on_tick(at(t0, 1));
    let out = register_at(&mut h, 1, "a", at(t0, 2));
    assert_eq!(submissions(&out).len(), 2, "{out:?}");
}
