//! The gateway driven by hand: frames, task reports and the time in, actions
//! out. No shards, no sockets, no sleeps: `now` is an argument.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shardflow_control::protocol::*;
use shardflow_control::{
    AllocationId, AttemptId, ExecutionState, ExecutionVertexId, JobId, JobMasterId, PartitionerKind, ResourceManagerId,
    ShardId, SlotId, VertexId, WorkerId,
};
use shardflow_memory::{Budget, BudgetKind};

use super::{Action, Gateway, ShardSlots};
use crate::api::Dataflow;
use crate::cluster::worker::board::JobBoard;
use crate::config::EngineConfig;
use crate::registry::{JobCatalog, LiveRegistry};
use crate::runtime::task::{TaskOutput, Wait};
use crate::shard::{ShardCommand, TaskReport};

const RM: ResourceManagerId = ResourceManagerId(0x77);
const ME: WorkerId = WorkerId(3);
const NETWORK_BYTES: u64 = 8 << 20;

/// A catalog with one job: numbers `0..records` forward to a counting vertex.
fn catalog() -> JobCatalog {
    let mut jobs = JobCatalog::new();
    jobs.register("numbers", "records=N", |p| {
        let df = Dataflow::new("numbers").parallelism(p.parallelism());
        df.generate("source", p.u64_or("records", 100)?, |r| r).forward().count();
        df.build()
    });
    jobs
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

struct Harness {
    g: Gateway,
    board: Arc<JobBoard>,
    network: Budget,
    t0: Instant,
}

impl Harness {
    /// A gateway of one shard (core 5) with two slots, not yet connected.
    fn new() -> Self {
        let board = Arc::new(JobBoard::embedded());
        let network = Budget::new(BudgetKind::NetworkBuffers, NETWORK_BYTES);
        let config = EngineConfig { slots_per_shard: 2, segment_bytes: 4096, ..EngineConfig::default() };
        // The test's thread stands in for the shard's (for its CPU time).
        let thread_id = crate::cpu::current_thread_id();
        let shards = vec![ShardSlots { id: 0, core: 5, thread_id, network: network.clone() }];
        let live = Arc::new(LiveRegistry::new(catalog()));
        let g = Gateway::new(config, live, board.clone(), shards, "gw".into(), ms(10_000));
        Harness { g, board, network, t0: Instant::now() }
    }

    fn at(&self, n: u64) -> Instant {
        self.t0 + ms(n)
    }

    /// Connected and registered at t0 with a heartbeat timeout of 5 s.
    fn registered() -> Self {
        let mut h = Harness::new();
        let out = h.g.connected(h.t0, None);
        assert!(matches!(&out[..], [Action::Send(Message::RegisterWorker(r))] if r.resource_id == "gw"), "{out:?}");
        let accepted = RegistrationAccepted {
            worker: ME,
            resource_manager: RM,
            heartbeat_interval_ms: 1_000,
            heartbeat_timeout_ms: 5_000,
        };
        assert!(h.g.on_message(h.t0, Message::RegistrationAccepted(accepted)).is_empty());
        assert!(h.g.is_registered());
        h
    }

    fn send(&mut self, t: u64, m: Message) -> Vec<Action> {
        let now = self.at(t);
        self.g.on_message(now, m)
    }

    fn allocate(&mut self, index: u32, allocation: u64, job_master: u64) {
        let out = self.send(
            1,
            Message::RequestSlot(RequestSlot {
                resource_manager: RM,
                slot: slot(index),
                allocation: AllocationId(allocation),
                job: JobId(1),
                job_master: JobMasterId(job_master),
            }),
        );
        assert!(
            matches!(&out[..], [Action::Send(Message::SlotRequestReply(r))] if r.outcome == SlotRequestOutcome::Allocated),
            "{out:?}"
        );
    }
}

fn slot(index: u32) -> SlotId {
    SlotId { worker: ME, shard: ShardId(0), index }
}

fn attempt(vertex: u32, subtask: u32) -> AttemptId {
    AttemptId { execution_vertex: ExecutionVertexId { vertex: VertexId(vertex), subtask }, attempt: 0 }
}

/// Subtask `subtask` of a two-subtask source vertex in slot 0 (allocation 1, job
/// master 11), writing forward to the consumer subtask of the same index.
fn descriptor(subtask: u32) -> TaskDeploymentDescriptor {
    let params = [("records".to_string(), "100".to_string())].into();
    let job = catalog().build("numbers", &params, 2).unwrap();
    TaskDeploymentDescriptor {
        job: JobId(1),
        job_name: "gateway".into(),
        job_master: JobMasterId(11),
        allocation: AllocationId(1),
        slot: slot(0),
        attempt: attempt(0, subtask),
        vertex_name: "source".into(),
        parallelism: 2,
        max_parallelism: 128,
        chain: job.graph.vertices[0].chain.clone(),
        input_formats: vec![],
        output_formats: vec![job.graph.edges[0].format.clone()],
        inputs: vec![],
        outputs: vec![PartitionDeployment {
            edge: 0,
            partitioner: PartitionerKind::Forward,
            consumers: vec![ChannelLocation { peer_subtask: subtask, subpartition: 0, worker: ME }],
        }],
    }
}

fn deploy(d: TaskDeploymentDescriptor) -> Message {
    Message::DeployTask(DeployTask::from_descriptor(d).unwrap())
}

fn refusal(out: &[Action]) -> &ErrorReply {
    match out {
        [Action::Send(Message::TaskRefused(r))] => &r.error,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn deployed(out: &[Action]) -> usize {
    out.iter()
        .map(|a| match a {
            Action::Shard(0, ShardCommand::Deploy(ds)) => ds.len(),
            _ => 0,
        })
        .sum()
}

fn report(a: AttemptId, state: ExecutionState, output: Option<TaskOutput>) -> TaskReport {
    TaskReport { job: JobId(1), attempt: a, state, failure: None, output }
}

#[test]
fn a_silent_coordinator_is_lost_after_the_heartbeat_timeout_and_every_frame_resets_the_clock() {
    let mut h = Harness::registered();
    assert_eq!(h.g.next_deadline(), Some(h.at(5_000)));
    assert!(h.g.on_tick(h.at(4_999)).is_empty());
    let hb = Message::HeartbeatFromCoordinator(HeartbeatFromCoordinator { resource_manager: RM, seq: 1 });
    let out = h.send(4_000, hb);
    assert!(matches!(&out[..], [Action::Send(Message::HeartbeatFromWorker(r))] if r.seq == 1 && r.worker == ME));
    assert!(h.g.on_tick(h.at(8_999)).is_empty(), "heard at 4 s: lost at 9 s, not before");
    match &h.g.on_tick(h.at(9_000))[..] {
        [Action::End { reason, retry: true }] => assert!(reason.contains("no word from the coordinator for 5000 ms")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_unanswered_registration_ends_the_session_and_a_duplicate_name_ends_the_worker() {
    let mut h = Harness::new();
    h.g.connected(h.t0, None);
    assert!(h.g.on_tick(h.at(9_999)).is_empty());
    assert!(matches!(&h.g.on_tick(h.at(10_000))[..], [Action::End { retry: true, .. }]));

    let mut h = Harness::new();
    h.g.connected(h.t0, None);
    let refused =
        Message::error(ErrorCode::DuplicateRegistration, "a worker with resource id 'gw' is already registered");
    match &h.send(1, refused)[..] {
        [Action::End { reason, retry: false }] => assert!(reason.contains("already registered"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(!h.g.is_registered());
}

#[test]
fn malformed_deployments_are_refused_with_a_typed_error_and_hold_nothing() {
    let mut h = Harness::registered();
    h.allocate(0, 1, 11);
    let cases: Vec<(TaskDeploymentDescriptor, &str)> = vec![
        (TaskDeploymentDescriptor { parallelism: 0, ..descriptor(0) }, "parallelism 0"),
        (descriptor(2), "subtask 2 of a vertex with parallelism 2"),
        (
            TaskDeploymentDescriptor {
                outputs: vec![PartitionDeployment { edge: 4, partitioner: PartitionerKind::Hash, consumers: vec![] }],
                ..descriptor(0)
            },
            "output on edge 4 has no consumers",
        ),
        (
            TaskDeploymentDescriptor { inputs: vec![GateDeployment { edge: 3, producers: vec![] }], ..descriptor(0) },
            "input on edge 3 has no producers",
        ),
        (TaskDeploymentDescriptor { chain: vec![], ..descriptor(0) }, "empty operator chain"),
    ];
    for (d, why) in cases {
        let out = h.send(2, deploy(d));
        let e = refusal(&out);
        assert_eq!(e.code, ErrorCode::Malformed, "{why}: {}", e.message);
        assert!(e.message.contains(why), "{why}: {}", e.message);
        assert!(!e.retryable);
    }
    assert_eq!(deployed(&h.g.flush()), 0, "nothing reached a shard");
    assert_eq!(h.network.available_bytes(), NETWORK_BYTES, "no network memory is held");
}

#[test]
fn a_deployment_goes_to_its_shard_and_its_states_flow_back() {
    let mut h = Harness::registered();
    h.allocate(0, 1, 11);
    assert!(h.send(2, deploy(descriptor(0))).is_empty());
    assert!(h.send(2, deploy(descriptor(1))).is_empty());
    assert!(h.network.available_bytes() < NETWORK_BYTES, "each task holds its channels' memory");
    assert_eq!(deployed(&h.g.flush()), 2, "deployments that arrive together go to the shard in one message");

    let a = attempt(0, 0);
    let out = h.g.on_task(report(a, ExecutionState::Running, None));
    assert!(matches!(&out[..], [Action::Send(Message::UpdateTaskExecutionState(u))]
        if u.attempt == a && u.state == ExecutionState::Running && u.job_master == JobMasterId(11)));
    let output = TaskOutput {
        sinks: vec![],
        records_in: 50,
        records_out: 50,
        times: TaskTimes { busy_ms: 30, idle_ms: 2, back_pressured_ms: 7 },
        snapshot: vec![],
        stopped: false,
        position: None,
    };
    let out = h.g.on_task(report(a, ExecutionState::Finished, Some(output)));
    assert!(matches!(&out[..], [Action::Send(Message::UpdateTaskExecutionState(u))]
        if u.state == ExecutionState::Finished
            && u.result.as_ref().is_some_and(|r| (r.records_out, r.times.back_pressured_ms) == (50, 7))));
    assert_eq!(h.board.take(JobId(1)).len(), 1, "the embedding engine gets the full output");

    // the same attempt again is refused while the other one still runs
    let out = h.send(3, deploy(descriptor(1)));
    assert_eq!(refusal(&out).code, ErrorCode::Unexpected);
}

fn trigger(job_master: u64, stop: bool) -> Message {
    Message::TriggerCheckpoint(TriggerCheckpoint {
        job_master: JobMasterId(job_master),
        job: JobId(1),
        attempt: attempt(0, 0),
        checkpoint: shardflow_control::CheckpointId(1),
        timestamp_ms: 0,
        stop,
    })
}

#[test]
fn checkpoint_messages_are_answered_unsupported() {
    let mut h = Harness::registered();
    match &h.send(1, trigger(11, false))[..] {
        [Action::Send(Message::ErrorReply(e)), Action::End { .. }] => {
            assert_eq!(e.code, ErrorCode::Unsupported);
            assert!(e.message.contains("checkpoints"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_stop_with_a_snapshot_goes_to_the_source_tasks_shard_from_its_job_master_only() {
    let mut h = Harness::registered();
    h.allocate(0, 1, 11);
    h.send(2, deploy(descriptor(0)));
    h.g.flush();
    let out = h.send(3, trigger(11, true));
    assert!(
        matches!(&out[..], [Action::Shard(0, ShardCommand::StopAttempt(JobId(1), a, b))]
            if *a == attempt(0, 0) && b.stop && b.checkpoint_id == 1),
        "{out:?}"
    );
    let out = h.send(4, trigger(12, true));
    assert!(
        matches!(&out[..], [Action::Send(Message::ErrorReply(e)), ..] if e.code == ErrorCode::StaleToken),
        "{out:?}"
    );
}

#[test]
fn a_stale_fencing_token_is_an_error_that_ends_the_session() {
    let mut h = Harness::registered();
    let stale =
        Message::HeartbeatFromCoordinator(HeartbeatFromCoordinator { resource_manager: ResourceManagerId(1), seq: 1 });
    assert!(matches!(&h.send(1, stale)[..],
        [Action::Send(Message::ErrorReply(e)), Action::End { retry: true, .. }] if e.code == ErrorCode::StaleToken));
}

#[test]
fn losing_the_coordinator_cancels_the_tasks_which_keep_their_memory_until_they_end() {
    let mut h = Harness::registered();
    h.allocate(0, 1, 11);
    h.send(2, deploy(descriptor(0)));
    h.g.flush();
    let held = NETWORK_BYTES - h.network.available_bytes();
    assert!(held > 0);
    let out = h.g.disconnected("the worker lost its coordinator");
    assert!(
        matches!(&out[..], [Action::Shard(0, ShardCommand::Cancel(JobId(1), why))] if why.contains("lost its coordinator")),
        "{out:?}"
    );
    assert_eq!(NETWORK_BYTES - h.network.available_bytes(), held, "the cancelled task is still draining");
    assert!(h.g.on_task(report(attempt(0, 0), ExecutionState::Canceled, None)).is_empty(), "nobody to tell");
    assert_eq!(h.network.available_bytes(), NETWORK_BYTES, "its end releases its memory");

    // registered again: every slot free, the managed-memory budgets kept
    let out = h.g.connected(h.at(10), None);
    match &out[..] {
        [Action::Send(Message::RegisterWorker(r))] => {
            assert_eq!(r.slots.slots.len(), 2);
            assert!(r.slots.slots.iter().all(|s| s.allocated.is_none() && s.core == 5));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_slot_keeps_its_managed_memory_budget_when_the_worker_registers_again() {
    let first = super::slot_table(WorkerId(1), &[(0, 3), (1, 5)], 2, 1000, Default::default());
    assert_eq!(first.len(), 4);
    let slot = SlotId { worker: WorkerId(1), shard: ShardId(1), index: 1 };
    let held = first[&slot].managed.reserve(600).unwrap();

    let second = super::slot_table(WorkerId(2), &[(0, 3), (1, 5)], 2, 1000, first);
    let again = SlotId { worker: WorkerId(2), shard: ShardId(1), index: 1 };
    assert_eq!(second[&again].status.core, 5);
    assert!(second.values().all(|s| s.status.allocated.is_none() && s.job_master.is_none()));
    assert_eq!(second[&again].managed.available_bytes(), 400, "the cancelled task still holds its share");
    assert!(second[&again].managed.reserve(500).is_err());
    drop(held);
    assert_eq!(second[&again].managed.available_bytes(), 1000);
    let other = SlotId { worker: WorkerId(2), shard: ShardId(0), index: 0 };
    assert_eq!(second[&other].managed.available_bytes(), 1000);
}

#[test]
fn a_deployment_whose_edge_format_differs_from_this_build_is_refused() {
    let mut h = Harness::registered();
    h.allocate(0, 1, 11);
    let mut d = descriptor(0);
    d.output_formats[0].type_name = "some::OtherType".into();
    let out = h.send(2, deploy(d));
    let e = refusal(&out);
    assert_eq!(e.code, ErrorCode::InvalidJob, "{e:?}");
    assert!(e.message.contains("some::OtherType"), "{}", e.message);
    assert_eq!(h.network.used_bytes(), 0, "nothing reserved");
}

#[test]
fn under_high_availability_only_the_elected_leaders_token_is_accepted() {
    let accepted = |rm| {
        Message::RegistrationAccepted(RegistrationAccepted {
            worker: ME,
            resource_manager: rm,
            heartbeat_interval_ms: 1_000,
            heartbeat_timeout_ms: 5_000,
        })
    };
    // Connected to the leader of epoch 9 (as etcd named it): a coordinator that
    // registers us under another token (a deposed leader's) is refused.
    let mut h = Harness::new();
    h.g.connected(h.t0, Some(ResourceManagerId(9)));
    let out = h.g.on_message(h.t0, accepted(ResourceManagerId(8)));
    match &out[..] {
        [Action::Send(Message::ErrorReply(e)), Action::End { reason, retry: true }] => {
            assert_eq!(e.code, ErrorCode::StaleToken);
            assert!(reason.contains("does not lead"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!h.g.is_registered());
    // The elected one's token is taken.
    let out = h.g.connected(h.at(1), Some(ResourceManagerId(9)));
    assert_eq!(out.len(), 1);
    assert!(h.g.on_message(h.at(1), accepted(ResourceManagerId(9))).is_empty());
    assert!(h.g.is_registered());
    // A coordinator that wants a secret we lack refuses us for good.
    let mut h = Harness::new();
    h.g.connected(h.t0, None);
    let out = h.g.on_message(h.t0, Message::error(ErrorCode::Unauthenticated, "this cluster requires authentication"));
    assert!(matches!(&out[..], [Action::End { retry: false, .. }]), "{out:?}");
}

#[test]
fn a_dump_and_a_heartbeat_carry_the_counts_each_task_published() {
    let mut h = Harness::registered();
    h.allocate(0, 1, 11);
    h.send(2, deploy(descriptor(0)));
    let out = h.g.flush();
    let counters = match &out[..] {
        [Action::Shard(0, ShardCommand::Deploy(ds))] => ds[0].counters.clone(),
        other => panic!("{other:?}"),
    };
    counters.publish(70, 69);
    // 100 ms from its start to its end: 42.5 on a full output, 10.3 for input.
    counters.began(1_000_000);
    counters.wait_ended(Wait::Output, 42_500);
    counters.wait_ended(Wait::Input, 10_300);
    counters.ended(1_100_000);
    let times = TaskTimes { busy_ms: 48, idle_ms: 10, back_pressured_ms: 42 };
    let out = h.send(3, Message::RequestShardDump(RequestShardDump { resource_manager: RM }));
    let dump = match &out[..] {
        [Action::Send(Message::ShardDump(d))] => d,
        other => panic!("{other:?}"),
    };
    assert_eq!(dump.worker, ME);
    let task = TaskDumpEntry {
        job: JobId(1),
        attempt: attempt(0, 0),
        vertex: "source".into(),
        state: ExecutionState::Deploying,
        records_in: 70,
        records_out: 69,
        times,
    };
    assert_eq!(dump.shards[0].tasks, vec![task], "{dump:?}");
    assert!(dump.shards[0].cpu_ms.is_some(), "its thread's CPU time: {dump:?}");
    assert!(dump.shards[1..].iter().all(|s| s.tasks.is_empty()), "{dump:?}");
    // The heartbeat carries the same counts to the coordinator.
    let out = h.send(4, Message::HeartbeatFromCoordinator(HeartbeatFromCoordinator { resource_manager: RM, seq: 9 }));
    match &out[..] {
        [Action::Send(Message::HeartbeatFromWorker(hb))] => {
            let counts = TaskProgress { job: JobId(1), attempt: attempt(0, 0), records_in: 70, records_out: 69, times };
            assert_eq!((hb.seq, &hb.tasks[..]), (9, &[counts][..]), "{hb:?}");
        }
        other => panic!("{other:?}"),
    }
}
