//! The coordinator driven by hand: messages in, outputs out, time passed as an
//! argument (no sleeps, no sockets).

use std::time::Duration;

use super::*;
use crate::ids::JobMasterId;
use crate::job_graph::{JobGraph, JobVertex, OperatorSpec, PartitionerKind};
use crate::placement::PlacementStrategy;
use crate::state::ExecutionState;

struct Catalog;

impl OperatorCatalog for Catalog {
    fn contains(&self, name: &str) -> bool {
        matches!(name, "src" | "map" | "sink")
    }
    fn is_source(&self, spec: &OperatorSpec) -> bool {
        let name = spec.name.as_str();
        name == "src"
    }
    fn check(&self, spec: &OperatorSpec) -> Result<(), CatalogError> {
        if spec.config == b"panic" {
            panic!("the factory exploded");
        }
        if spec.config == b"bad" {
            Err(CatalogError::InvalidConfig { reason: "bad config".into() })
        } else {
            Ok(())
        }
    }
}

const RM: ResourceManagerId = ResourceManagerId(77);

fn config() -> CoordinatorConfig {
    CoordinatorConfig {
        heartbeat_interval: Duration::from_secs(1),
        heartbeat_timeout: Duration::from_secs(3),
        slot_wait_timeout: Duration::from_secs(2),
        submit_slot_wait: Duration::from_secs(4),
        default_placement: PlacementStrategy::Colocate,
        default_restart: "fixed-delay:attempts=1,delay=500ms".parse().unwrap(),
        retained_jobs: 1000,
        snapshots_in_process: false,
    }
}

struct Harness {
    c: Coordinator,
    t0: Instant,
}

fn at(t0: Instant, n: u64) -> Instant {
    t0 + ms(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl Harness {
    fn new() -> Self {
        Harness::with(config())
    }

    fn with(config: CoordinatorConfig) -> Self {
        let t0 = Instant::now();
        Harness { c: Coordinator::new(config, Box::new(Catalog), RM, t0), t0 }
    }

    fn register(&mut self, conn: ConnId, name: &str, cores: Vec<u32>) -> WorkerId {
        let out = self.c.on_message(self.t0, conn, register_msg(name, cores));
        match &out[..] {
            [Output::Send(c, Message::RegistrationAccepted(a))] if *c == conn => a.worker,
            other => panic!("registration: {other:?}"),
        }
    }
}

/// Worker `name` registering its `cores`, two slots on each.
fn register_msg(name: &str, cores: Vec<u32>) -> Message {
    Message::RegisterWorker(RegisterWorker {
        resource_id: name.into(),
        address: "127.0.0.1".into(),
        resources: WorkerResources {
            cores,
            slots_per_shard: 2,
            network_memory_bytes: 1 << 20,
            managed_memory_per_slot_bytes: 1 << 20,
        },
        slots: SlotReport { slots: vec![] },
    })
}

fn job(p: u32, partitioner: PartitionerKind, sink_config: &[u8]) -> JobGraph {
    let mut g = JobGraph::new("test-job");
    let v = |name: &str, op: &str, cfg: &[u8]| JobVertex {
        name: name.into(),
        chain: vec![OperatorSpec::new(op, cfg.to_vec())],
        parallelism: p,
        slot_sharing_group: "default".into(),
    };
    let a = g.add_vertex(v("source", "src", b""));
    let b = g.add_vertex(v("sink", "sink", sink_config));
    g.connect(a, b, partitioner);
    g
}

fn submit_msg(g: JobGraph) -> Message {
    Message::SubmitJob(SubmitJob { graph: g, placement: String::new(), restart: String::new() })
}

fn submit(h: &mut Harness, conn: ConnId, g: JobGraph, now: Instant) -> (JobId, Vec<Output>) {
    let mut out = h.c.on_message(now, conn, submit_msg(g));
    let id = match out.remove(0) {
        Output::Send(c, Message::JobSubmitted(s)) if c == conn => s.job,
        other => panic!("submit: {other:?} then {out:?}"),
    };
    (id, out)
}

fn submissions(out: &[Output]) -> Vec<(ConnId, TaskDeploymentDescriptor)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(c, Message::DeployTask(d)) => {
                Some((*c, d.clone().descriptor().expect("the vertex information reads back")))
            }
            _ => None,
        })
        .collect()
}

fn update(
    h: &mut Harness,
    conn: ConnId,
    d: &TaskDeploymentDescriptor,
    state: ExecutionState,
    now: Instant,
) -> Vec<Output> {
    let result = (state == ExecutionState::Finished).then(|| TaskResultInfo {
        records_in: 5,
        records_out: 5,
        times: TaskTimes { busy_ms: 9, idle_ms: 1, back_pressured_ms: 3 },
        sinks: vec![],
    });
    let failure = (state == ExecutionState::Failed).then(|| TaskFailureInfo { cause: "boom".into(), secondary: false });
    h.c.on_message(
        now,
        conn,
        Message::UpdateTaskExecutionState(UpdateTaskExecutionState {
            job_master: d.job_master,
            job: d.job,
            attempt: d.attempt,
            state,
            failure,
            result,
        }),
    )
}

fn run_all(h: &mut Harness, subs: &[(ConnId, TaskDeploymentDescriptor)], now: Instant) {
    for (c, d) in subs {
        update(h, *c, d, ExecutionState::Initializing, now);
        update(h, *c, d, ExecutionState::Running, now);
    }
}

fn details(h: &mut Harness, job: JobId, now: Instant) -> JobDetails {
    match &h.c.on_message(now, 99, Message::RequestJob(RequestJob { job }))[..] {
        [Output::Send(99, Message::JobDetails(d))] => d.clone(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_forward_job_is_deployed_across_workers_runs_and_frees_its_slots() {
    let mut h = Harness::new();
    let t0 = h.t0;
    let w0 = h.register(1, "a", vec![0]);
    let w1 = h.register(2, "b", vec![1]);
    let (id, out) = submit(&mut h, 10, job(2, PartitionerKind::Forward, b""), at(t0, 1));
    let requests = out
        .iter()
        .filter(|o| matches!(o, Output::Send(_, Message::RequestSlot(r)) if r.resource_manager == RM))
        .count();
    assert_eq!(requests, 2, "one slot per subtask index (colocate)");
    let subs = submissions(&out);
    assert_eq!(subs.len(), 4);
    for (conn, d) in &subs {
        let worker = if *conn == 1 { w0 } else { w1 };
        assert_eq!(d.slot.worker, worker, "descriptor goes to the slot's worker");
        for g in &d.inputs {
            assert!(g.producers.iter().all(|p| p.worker == worker), "forward data stays inside the worker");
        }
    }
    // a waiter for all-running is answered once the last subtask runs
    assert!(h
        .c
        .on_message(
            at(t0, 2),
            11,
            Message::WaitJob(WaitJob { job: id, until: WaitCondition::AllRunning, timeout_ms: 5000 })
        )
        .is_empty());
    run_all(&mut h, &subs[..3], at(t0, 3));
    let (c, d) = &subs[3];
    update(&mut h, *c, d, ExecutionState::Initializing, at(t0, 4));
    let out = update(&mut h, *c, d, ExecutionState::Running, at(t0, 5));
    match &out[..] {
        [Output::Send(11, Message::JobDetails(d))] => {
            assert!(d.subtasks.iter().all(|s| s.state == ExecutionState::Running));
            assert_eq!(d.submit_to_running_us, Some(4000));
        }
        other => panic!("{other:?}"),
    }
    // a waiter for the end hears of it after the driver (JobEnded), only at the last update
    let terminal = WaitJob { job: id, until: WaitCondition::Terminal, timeout_ms: 5000 };
    assert!(h.c.on_message(at(t0, 5), 12, Message::WaitJob(terminal)).is_empty());
    let mut last = vec![];
    for (c, d) in &subs {
        assert!(!last.iter().any(|o| matches!(o, Output::JobEnded(_))), "ended before its last task: {last:?}");
        last = update(&mut h, *c, d, ExecutionState::Finished, at(t0, 6));
    }
    let ended = last.iter().position(|o| *o == Output::JobEnded(id)).expect("the job's end is an output");
    let answered = last.iter().position(|o| matches!(o, Output::Send(12, Message::JobDetails(_))));
    assert!(answered.is_some_and(|a| a > ended), "{last:?}");
    assert_eq!(last.iter().filter(|o| matches!(o, Output::JobEnded(_))).count(), 1);
    let frees = last.iter().filter(|o| matches!(o, Output::Send(_, Message::FreeSlot(_)))).count();
    assert_eq!(frees, 2);
    let d = details(&mut h, id, at(t0, 7));
    assert_eq!(d.status, JobStatus::Finished);
    assert!(d.subtasks.iter().all(|s| s.result.as_ref().is_some_and(|r| r.records_in == 5)));
    assert_eq!(h.c.slot_manager().totals(), (4, 4));
}

#[test]
fn a_lost_worker_fails_its_jobs_over_to_the_remaining_slots() {
    let mut h = Harness::new();
    let t0 = h.t0;
    h.register(1, "a", vec![0, 1]);
    h.register(2, "b", vec![0, 1]);
    let (id, out) = submit(&mut h, 10, job(2, PartitionerKind::Forward, b""), at(t0, 0));
    let subs = submissions(&out);
    run_all(&mut h, &subs, at(t0, 1));
    // worker 2 is killed: its connection closes
    let out = h.c.on_disconnect(at(t0, 100), 2);
    let cancels: Vec<_> = out.iter().filter(|o| matches!(o, Output::Send(1, Message::CancelTask(_)))).collect();
    assert_eq!(cancels.len(), 2, "the surviving tasks are cancelled: {out:?}");
    assert_eq!(h.c.job_status(id), Some(JobStatus::Restarting));
    for (c, d) in subs.iter().filter(|(c, _)| *c == 1) {
        update(&mut h, *c, d, ExecutionState::Canceled, at(t0, 150));
    }
    // not before the restart delay
    assert!(submissions(&h.c.on_tick(at(t0, 400))).is_empty());
    assert!(h.c.next_deadline() <= at(t0, 600));
    let out = h.c.on_tick(at(t0, 600));
    let again = submissions(&out);
    assert_eq!(again.len(), 4, "{out:?}");
    assert!(again.iter().all(|(c, d)| *c == 1 && d.attempt.attempt == 1));
    run_all(&mut h, &again, at(t0, 700));
    for (c, d) in &again {
        update(&mut h, *c, d, ExecutionState::Finished, at(t0, 800));
    }
    let d = details(&mut h, id, at(t0, 900));
    assert_eq!((d.status, d.restarts), (JobStatus::Finished, 1));
    // old attempts' late reports change nothing
    update(&mut h, 1, &subs[0].1, ExecutionState::Failed, at(t0, 901));
    assert_eq!(h.c.job_status(id), Some(JobStatus::Finished));
}

#[test]
fn a_silent_worker_expires_and_a_job_without_slots_fails_with_the_reason() {
    let mut h = Harness::new();
    let t0 = h.t0;
    h.register(1, "a", vec![0]);
    h.register(2, "b", vec![1]);
    let (id, out) = submit(&mut h, 10, job(2, PartitionerKind::Forward, b""), at(t0, 0));
    let subs = submissions(&out);
    run_all(&mut h, &subs, at(t0, 1));
    // worker 1 keeps answering heartbeats, worker 2 is silent
    for t in [1000, 2000, 3000] {
        let out = h.c.on_tick(at(t0, t));
        assert!(out.iter().any(|o| matches!(o, Output::Send(1, Message::HeartbeatFromCoordinator(_)))));
        let w = WorkerId(0);
        h.c.on_message(
            at(t0, t),
            1,
            Message::HeartbeatFromWorker(HeartbeatFromWorker {
                resource_manager: RM,
                worker: w,
                seq: 0,
                report: SlotReport { slots: vec![] },
                tasks: vec![],
            }),
        );
    }
    assert_eq!(h.c.job_status(id), Some(JobStatus::Running));
    let out = h.c.on_tick(at(t0, 3002));
    assert!(out.contains(&Output::Close(2)), "{out:?}");
    assert_eq!(h.c.job_status(id), Some(JobStatus::Restarting));
    for (c, d) in subs.iter().filter(|(c, _)| *c == 1) {
        update(&mut h, *c, d, ExecutionState::Canceled, at(t0, 3002));
    }
    // one worker with 2 slots is enough for colocated p=2
    let out = h.c.on_tick(at(t0, 3600));
    let again = submissions(&out);
    assert_eq!(again.len(), 4);
    // now that worker dies too: no slots remain, the job waits, then fails
    h.c.on_disconnect(at(t0, 3700), 1);
    assert_eq!(h.c.job_status(id), Some(JobStatus::Failed), "the restart strategy allowed one restart only");
    let d = details(&mut h, id, at(t0, 3800));
    assert!(d.failure.unwrap().contains("lost"));
}

#[test]
fn too_few_slots_after_a_failure_fail_the_job_after_the_wait() {
    let mut h = Harness::new();
    let t0 = h.t0;
    h.register(1, "a", vec![0]);
    h.register(2, "b", vec![1]);
    let g = job(3, PartitionerKind::Forward, b"");
    let (id, out) = submit(&mut h, 10, g, at(t0, 0));
    let subs = submissions(&out);
    run_all(&mut h, &subs, at(t0, 1));
    h.c.on_disconnect(at(t0, 10), 2);
    for (c, d) in subs.iter().filter(|(c, _)| *c == 1) {
        update(&mut h, *c, d, ExecutionState::Canceled, at(t0, 11));
    }
    assert!(submissions(&h.c.on_tick(at(t0, 600))).is_empty());
    assert_eq!(h.c.job_status(id), Some(JobStatus::Restarting));
    h.c.on_tick(at(t0, 2601));
    assert_eq!(h.c.job_status(id), Some(JobStatus::Failed));
    let f = details(&mut h, id, at(t0, 2700)).failure.unwrap();
    assert!(f.contains("cannot restart") && f.contains("not enough task slots"), "{f}");
}

#[test]
fn stale_tokens_duplicates_and_unknown_jobs_are_rejected_and_closed() {
    let mut h = Harness::new();
    let t0 = h.t0;
    let w = h.register(1, "a", vec![0]);
    let dup = RegisterWorker {
        resource_id: "a".into(),
        address: String::new(),
        resources: WorkerResources {
            cores: vec![0],
            slots_per_shard: 1,
            network_memory_bytes: 0,
            managed_memory_per_slot_bytes: 0,
        },
        slots: SlotReport { slots: vec![] },
    };
    let out = h.c.on_message(at(t0, 1), 2, Message::RegisterWorker(dup));
    assert!(
        matches!(&out[..], [Output::Send(2, Message::ErrorReply(e)), Output::Close(2)] if e.code == ErrorCode::DuplicateRegistration),
        "{out:?}"
    );
    let out = h.c.on_message(
        at(t0, 1),
        1,
        Message::HeartbeatFromWorker(HeartbeatFromWorker {
            resource_manager: ResourceManagerId(1),
            worker: w,
            seq: 1,
            report: SlotReport { slots: vec![] },
            tasks: vec![],
        }),
    );
    assert!(
        matches!(&out[..], [Output::Send(1, Message::ErrorReply(e)), Output::Close(1)] if e.code == ErrorCode::StaleToken),
        "{out:?}"
    );
    let out = h.c.on_message(at(t0, 1), 3, Message::CancelJob(CancelJob { job: JobId(42) }));
    assert!(
        matches!(&out[..], [Output::Send(3, Message::ErrorReply(e)), Output::Close(3)] if e.code == ErrorCode::UnknownJob)
    );
    let out = h.c.on_message(
        at(t0, 1),
        4,
        Message::SubmitJob(SubmitJob {
            graph: job(1, PartitionerKind::Forward, b"bad"),
            placement: String::new(),
            restart: String::new(),
        }),
    );
    assert!(
        matches!(&out[..], [Output::Send(4, Message::ErrorReply(e)), Output::Close(4)] if e.code == ErrorCode::InvalidJob && e.message.contains("bad config")),
        "{out:?}"
    );
}

#[test]
fn a_stale_job_master_token_is_rejected_and_cancel_ends_the_job() {
    let mut h = Harness::new();
    let t0 = h.t0;
    h.register(1, "a", vec![0, 1]);
    let (id, out) = submit(&mut h, 10, job(2, PartitionerKind::Hash, b""), at(t0, 0));
    let subs = submissions(&out);
    run_all(&mut h, &subs, at(t0, 1));
    let mut forged = subs[0].1.clone();
    forged.job_master = JobMasterId(forged.job_master.0 ^ 1);
    let out = update(&mut h, 1, &forged, ExecutionState::Failed, at(t0, 2));
    assert!(
        matches!(&out[..], [Output::Send(1, Message::ErrorReply(e)), Output::Close(1)] if e.code == ErrorCode::StaleToken),
        "{out:?}"
    );
    assert_eq!(h.c.job_status(id), Some(JobStatus::Running), "a forged update changes nothing");
    let out = h.c.on_message(at(t0, 3), 10, Message::CancelJob(CancelJob { job: id }));
    assert_eq!(out.iter().filter(|o| matches!(o, Output::Send(1, Message::CancelTask(_)))).count(), 4);
    for (c, d) in &subs {
        update(&mut h, *c, d, ExecutionState::Canceled, at(t0, 4));
    }
    assert_eq!(h.c.job_status(id), Some(JobStatus::Canceled));
    assert_eq!(h.c.slot_manager().totals(), (4, 4));
    let out = h.c.on_message(at(t0, 5), 11, Message::CancelJob(CancelJob { job: id }));
    match &out[..] {
        [Output::Send(11, Message::ErrorReply(e)), Output::Close(11)] => {
            assert_eq!(e.code, ErrorCode::Unexpected);
            assert!(e.message.contains("has already ended (CANCELED)"), "{}", e.message);
        }
        other => panic!("cancelling an ended job is refused: {other:?}"),
    }
}

#[test]
fn a_worker_is_listed_with_the_address_its_connection_comes_from() {
    let mut h = Harness::new();
    h.c.on_connect(1, "10.1.2.3:4567");
    h.register(1, "a", vec![0]);
    let out = h.c.on_message(h.t0, 9, Message::RequestWorkerInfo(RequestWorkerInfo {}));
    match &out[..] {
        [Output::Send(9, Message::WorkerInfoList(l))] => assert_eq!(l.workers[0].address, "10.1.2.3:4567"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn only_the_configured_number_of_ended_jobs_is_kept() {
    let t0 = Instant::now();
    let config = CoordinatorConfig { retained_jobs: 2, ..config() };
    let mut h = Harness { c: Coordinator::new(config, Box::new(Catalog), RM, t0), t0 };
    h.register(1, "a", vec![0]);
    let mut ids = Vec::new();
    for i in 0..3 {
        let (id, out) = submit(&mut h, 10, job(1, PartitionerKind::Forward, b""), at(t0, 10 * i));
        let subs = submissions(&out);
        run_all(&mut h, &subs, at(t0, 10 * i + 1));
        for (c, d) in &subs {
            update(&mut h, *c, d, ExecutionState::Finished, at(t0, 10 * i + 2));
        }
        assert_eq!(details(&mut h, id, at(t0, 10 * i + 3)).status, JobStatus::Finished);
        ids.push(id);
    }
    // the longest-ended job is forgotten; the two latest answer
    match &h.c.on_message(at(t0, 40), 99, Message::RequestJob(RequestJob { job: ids[0] }))[..] {
        [Output::Send(99, Message::ErrorReply(e)), Output::Close(99)] => assert_eq!(e.code, ErrorCode::UnknownJob),
        other => panic!("{other:?}"),
    }
    let listed = match &h.c.on_message(at(t0, 41), 98, Message::ListJobs(ListJobs {}))[..] {
        [Output::Send(98, Message::JobList(l))] => l.jobs.iter().map(|j| j.job).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(listed, ids[1..]);
}

fn one_running_job() -> (Harness, JobId, Vec<(ConnId, TaskDeploymentDescriptor)>) {
    let mut h = Harness::new();
    let t0 = h.t0;
    h.register(1, "a", vec![0]);
    let (id, out) = submit(&mut h, 10, job(1, PartitionerKind::Forward, b""), at(t0, 1));
    let subs = submissions(&out);
    run_all(&mut h, &subs, at(t0, 2));
    (h, id, subs)
}

mod dumps;
mod failures;
mod job_store;
mod progress;
mod slots;
mod stop;
