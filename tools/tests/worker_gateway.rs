//! The worker's gateway, driven frame by frame: a real `shardflow worker` process
//! registers with a coordinator played by this test on 127.0.0.1, which then sends
//! what a coordinator would — and what a confused or stale one would. Every read
//! waits on the worker's answer with a generous timeout; the worker process is
//! killed when the test ends.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shardflow_engine::protocol::*;
use shardflow_engine::{
    AllocationId, AttemptId, ExecutionState, ExecutionVertexId, JobId, JobMasterId, OperatorSpec, PartitionerKind,
    ResourceManagerId, ShardId, SlotId, VertexId, WorkerId,
};

const BIN: &str = env!("CARGO_BIN_EXE_shardflow");
const WAIT: Duration = Duration::from_secs(60);
const RM: ResourceManagerId = ResourceManagerId(0x77);
const ME: WorkerId = WorkerId(3);

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The test's end of the worker's control connection.
struct Conn(TcpStream);

impl Conn {
    fn send(&mut self, m: Message) {
        self.0.write_all(&encode(&m).unwrap()).unwrap();
    }

    /// The next frame, or `None` once the worker has closed the connection.
    fn next(&mut self) -> Option<Message> {
        let mut head = [0u8; HEADER_BYTES];
        match self.0.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) => panic!("no frame from the worker within {WAIT:?}: {e}"),
        }
        let h = FrameHeader::parse(&head, DEFAULT_MAX_FRAME_BYTES).unwrap();
        let mut body = vec![0u8; h.len];
        self.0.read_exact(&mut body).unwrap();
        Some(decode(&[&head[..], &body].concat(), DEFAULT_MAX_FRAME_BYTES).unwrap().0)
    }

    fn expect(&mut self) -> Message {
        self.next().expect("the worker keeps the connection open")
    }

    /// Reads state updates of `attempt` until it reaches `state`; returns that update.
    fn until_state(&mut self, attempt: AttemptId, state: ExecutionState) -> UpdateTaskExecutionState {
        loop {
            match self.expect() {
                Message::UpdateTaskExecutionState(u) if u.attempt == attempt => {
                    if u.state == state {
                        return u;
                    }
                    assert!(!u.state.is_terminal(), "{attempt} ended {} before {state}: {u:?}", u.state);
                }
                Message::UpdateTaskExecutionState(_) => {}
                other => panic!("expected state updates of {attempt}, got {other:?}"),
            }
        }
    }
}

/// Accepts the worker's next connection, waiting at most [`WAIT`].
fn accept(listener: &TcpListener) -> Conn {
    let l = listener.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(l.accept().map(|(s, _)| s));
    });
    let s = rx.recv_timeout(WAIT).expect("the worker connects").unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    Conn(s)
}

/// Starts a worker with two slots on one shard and plays its coordinator up to an
/// accepted registration.
fn registered_worker() -> (Proc, TcpListener, Conn) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let core = shardflow_engine::online_cores()[0].to_string();
    let worker = Proc(
        Command::new(BIN)
            .args(["worker", "--coordinator", &addr, "--cores", &core, "--resource-id", "gw"])
            .args(["--slots-per-shard", "2", "--network-memory-bytes", "8388608", "--segment-bytes", "4096"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("worker starts"),
    );
    let mut conn = accept(&listener);
    register(&mut conn);
    (worker, listener, conn)
}

/// Reads a registration and accepts it; returns the slots it reported.
fn register(conn: &mut Conn) -> SlotReport {
    let reg = match conn.expect() {
        Message::RegisterWorker(r) => r,
        other => panic!("expected a registration, got {other:?}"),
    };
    assert_eq!(reg.resource_id, "gw");
    assert_eq!(reg.resources.slots_per_shard, 2);
    conn.send(Message::RegistrationAccepted(RegistrationAccepted {
        worker: ME,
        resource_manager: RM,
        heartbeat_interval_ms: 1_000,
        heartbeat_timeout_ms: 600_000,
    }));
    reg.slots
}

fn slot(index: u32) -> SlotId {
    SlotId { worker: ME, shard: ShardId(0), index }
}

fn request_slot(conn: &mut Conn, index: u32, allocation: u64, job: u64, job_master: u64) -> SlotRequestOutcome {
    conn.send(Message::RequestSlot(RequestSlot {
        resource_manager: RM,
        slot: slot(index),
        allocation: AllocationId(allocation),
        job: JobId(job),
        job_master: JobMasterId(job_master),
    }));
    match conn.expect() {
        Message::SlotRequestReply(r) => {
            assert_eq!((r.slot, r.allocation), (slot(index), AllocationId(allocation)));
            r.outcome
        }
        other => panic!("expected a slot request reply, got {other:?}"),
    }
}

fn attempt(subtask: u32) -> AttemptId {
    AttemptId { execution_vertex: ExecutionVertexId { vertex: VertexId(0), subtask }, attempt: 0 }
}

/// The graph of named job `name` with `params`.
fn graph(name: &str, params: &[(&str, &str)], parallelism: u32) -> shardflow_engine::JobGraph {
    let params = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    shardflow_engine::jobs::catalog().build(name, &params, parallelism).unwrap().graph().clone()
}

/// `local-count` (source, map +1, count sink in one vertex) at parallelism 2.
fn local_count(params: &[(&str, &str)]) -> OperatorSpec {
    graph("local-count", params, 2).vertices[0].chain[0].clone()
}

fn generator() -> OperatorSpec {
    local_count(&[("records", "1000")])
}

/// Job master `job_master` cancels subtask `subtask` of job 1.
fn cancel(job_master: u64, subtask: u32) -> Message {
    let reason = "the job was cancelled".to_string();
    Message::CancelTask(CancelTask {
        job_master: JobMasterId(job_master),
        job: JobId(1),
        attempt: attempt(subtask),
        reason,
    })
}

fn paced() -> OperatorSpec {
    local_count(&[("rate", "1000"), ("duration_ms", "600000")])
}

/// A one-vertex task (source, map +1, count sink) in slot `index`, as a
/// coordinator deploys it.
fn task(index: u32, allocation: u64, job_master: u64, subtask: u32, spec: OperatorSpec) -> Message {
    let info = TaskInformation {
        job_name: "gateway".into(),
        vertex_name: "source".into(),
        parallelism: 2,
        max_parallelism: 128,
        chain: vec![spec],
        input_formats: vec![],
        output_formats: vec![],
    };
    deploy(index, allocation, job_master, subtask, info.archive().unwrap())
}

fn deploy(index: u32, allocation: u64, job_master: u64, subtask: u32, task_information: Vec<u8>) -> Message {
    Message::DeployTask(DeployTask {
        job: JobId(1),
        job_master: JobMasterId(job_master),
        allocation: AllocationId(allocation),
        slot: slot(index),
        attempt: attempt(subtask),
        task_information,
        inputs: vec![],
        outputs: vec![],
    })
}

fn refused(m: Message) -> ErrorReply {
    match m {
        Message::TaskRefused(r) => r.error,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_slot_held_by_another_allocation_answers_occupied_with_its_owner() {
    let (_w, _l, mut conn) = registered_worker();
    assert_eq!(request_slot(&mut conn, 0, 1, 1, 11), SlotRequestOutcome::Allocated);
    // the same allocation asking again is answered the same (a retried request)
    assert_eq!(request_slot(&mut conn, 0, 1, 1, 11), SlotRequestOutcome::Allocated);
    let owner = SlotAllocation { allocation: AllocationId(1), job: JobId(1) };
    assert_eq!(request_slot(&mut conn, 0, 2, 2, 22), SlotRequestOutcome::Occupied(owner));
    assert_eq!(request_slot(&mut conn, 9, 3, 2, 22), SlotRequestOutcome::UnknownSlot);
    conn.send(Message::RequestSlotReport(RequestSlotReport { resource_manager: RM }));
    let report = match conn.expect() {
        Message::SlotReportMessage(r) => r.report,
        other => panic!("expected a slot report, got {other:?}"),
    };
    let held: Vec<_> = report.slots.iter().map(|s| (s.slot, s.allocated)).collect();
    assert_eq!(held, vec![(slot(0), Some(owner)), (slot(1), None)]);
}

#[test]
fn a_task_without_its_slot_or_with_another_job_masters_token_is_refused() {
    let (_w, _l, mut conn) = registered_worker();
    assert_eq!(request_slot(&mut conn, 0, 1, 1, 11), SlotRequestOutcome::Allocated);
    let source = generator;

    conn.send(task(1, 1, 11, 0, source()));
    assert_eq!(refused(conn.expect()).code, ErrorCode::NoSlotAllocated, "slot 1 was never allocated");
    conn.send(task(0, 5, 11, 0, source()));
    assert_eq!(refused(conn.expect()).code, ErrorCode::NoSlotAllocated, "slot 0 belongs to allocation 1");
    conn.send(task(0, 1, 99, 0, source()));
    assert_eq!(refused(conn.expect()).code, ErrorCode::StaleToken, "job master 99 does not own slot 0");
    conn.send(deploy(0, 1, 11, 0, b"not an archive of task information".to_vec()));
    assert_eq!(refused(conn.expect()).code, ErrorCode::Malformed, "the vertex information is checked");

    // the right allocation and token: the task runs to the end and reports its result
    conn.send(task(0, 1, 11, 0, source()));
    let done = conn.until_state(attempt(0), ExecutionState::Finished);
    assert_eq!(done.job_master, JobMasterId(11));
    let result = done.result.expect("a finished task reports its result");
    assert_eq!(result.records_out, 0);
    let sinks: Vec<(u64, u64)> = result.sinks.iter().map(|s| (s.records, s.value_sum)).collect();
    // subtask 0 of 2 produces the first half of the generator's records
    assert_eq!(sinks, vec![(500, 500 * 501 / 2)]);

    // a descriptor sent whole (kind SubmitTask, not DeployTask) is deployed the same way
    let Message::DeployTask(d) = task(0, 1, 11, 1, source()) else { unreachable!() };
    conn.send(Message::SubmitTask(SubmitTask { descriptor: d.descriptor().unwrap() }));
    let done = conn.until_state(attempt(1), ExecutionState::Finished);
    let sinks: Vec<(u64, u64)> = done.result.unwrap().sinks.iter().map(|s| (s.records, s.value_sum)).collect();
    assert_eq!(sinks, vec![(500, (501..=1_000).sum::<u64>())], "subtask 1 produces the second half");
}

#[test]
fn cancel_is_prompt_and_needs_the_owners_token() {
    let (_w, _l, mut conn) = registered_worker();
    assert_eq!(request_slot(&mut conn, 0, 1, 1, 11), SlotRequestOutcome::Allocated);
    conn.send(task(0, 1, 11, 0, paced()));
    conn.until_state(attempt(0), ExecutionState::Running);
    // the same attempt again is refused; the running one is untouched
    conn.send(task(0, 1, 11, 0, paced()));
    assert_eq!(refused(conn.expect()).code, ErrorCode::Unexpected, "attempt 0 already runs");

    conn.send(cancel(11, 0));
    // a ten-minute source ends within the read timeout: cancel does not wait for it
    let canceled = conn.until_state(attempt(0), ExecutionState::Canceled);
    assert!(canceled.failure.is_none(), "{canceled:?}");

    // a second task, then a cancel carrying another job master's token
    conn.send(task(0, 1, 11, 1, paced()));
    conn.until_state(attempt(1), ExecutionState::Running);
    conn.send(cancel(12, 1));
    match conn.expect() {
        Message::ErrorReply(e) => assert_eq!(e.code, ErrorCode::StaleToken, "{}", e.message),
        other => panic!("expected a stale-token error, got {other:?}"),
    }
}

#[test]
fn a_stale_coordinator_token_closes_the_connection_and_the_worker_registers_again() {
    let (_w, listener, mut conn) = registered_worker();
    assert_eq!(request_slot(&mut conn, 0, 1, 1, 11), SlotRequestOutcome::Allocated);
    conn.send(Message::RequestSlot(RequestSlot {
        resource_manager: ResourceManagerId(RM.0 + 1),
        slot: slot(1),
        allocation: AllocationId(2),
        job: JobId(2),
        job_master: JobMasterId(22),
    }));
    match conn.expect() {
        Message::ErrorReply(e) => assert_eq!(e.code, ErrorCode::StaleToken, "{}", e.message),
        other => panic!("expected a stale-token error, got {other:?}"),
    }
    assert!(conn.next().is_none(), "the worker closes the connection after the error");

    // it comes back on its own, with every slot free again
    let mut again = accept(&listener);
    let slots = register(&mut again);
    assert_eq!(slots.slots.len(), 2);
    assert!(slots.slots.iter().all(|s| s.allocated.is_none()), "{slots:?}");
    assert_eq!(request_slot(&mut again, 1, 2, 2, 22), SlotRequestOutcome::Allocated);
}

#[test]
fn a_consumer_deployed_after_its_producer_finished_still_gets_the_records() {
    // The producer's channel end waits in the worker for the consumer, however long
    // the consumer takes to come: here it comes only after the producer has ended.
    let (_w, _l, mut conn) = registered_worker();
    assert_eq!(request_slot(&mut conn, 0, 1, 1, 11), SlotRequestOutcome::Allocated);
    let here = |peer_subtask| ChannelLocation { peer_subtask, subpartition: 0, worker: ME };
    let vertex =
        |v: u32| AttemptId { execution_vertex: ExecutionVertexId { vertex: VertexId(v), subtask: 0 }, attempt: 0 };
    let g = graph("forward-count", &[("records", "10")], 1);
    let format = g.edges[0].format.clone();
    let descriptor = |v: u32, name: &str| TaskDeploymentDescriptor {
        job: JobId(1),
        job_name: "late-consumer".into(),
        job_master: JobMasterId(11),
        allocation: AllocationId(1),
        slot: slot(0),
        attempt: vertex(v),
        vertex_name: name.into(),
        parallelism: 1,
        max_parallelism: 128,
        chain: g.vertices[v as usize].chain.clone(),
        input_formats: vec![],
        output_formats: vec![],
        inputs: vec![],
        outputs: vec![],
    };
    let producer = TaskDeploymentDescriptor {
        outputs: vec![PartitionDeployment { edge: 0, partitioner: PartitionerKind::Forward, consumers: vec![here(0)] }],
        output_formats: vec![format.clone()],
        ..descriptor(0, "source")
    };
    conn.send(Message::DeployTask(DeployTask::from_descriptor(producer).unwrap()));
    conn.until_state(vertex(0), ExecutionState::Finished);

    let consumer = TaskDeploymentDescriptor {
        inputs: vec![GateDeployment { edge: 0, producers: vec![here(0)] }],
        input_formats: vec![format.clone()],
        ..descriptor(1, "sink")
    };
    conn.send(Message::DeployTask(DeployTask::from_descriptor(consumer).unwrap()));
    let done = conn.until_state(vertex(1), ExecutionState::Finished);
    let sinks: Vec<(u64, u64)> = done.result.unwrap().sinks.iter().map(|s| (s.records, s.value_sum)).collect();
    assert_eq!(sinks, vec![(10, 55)]);
}

#[test]
fn malformed_deployments_are_refused_and_the_worker_serves_on() {
    let (_w, _l, mut conn) = registered_worker();
    assert_eq!(request_slot(&mut conn, 0, 1, 1, 11), SlotRequestOutcome::Allocated);
    let source = generator;
    let Message::DeployTask(good) = task(0, 1, 11, 0, source()) else { unreachable!() };
    let d = good.clone().descriptor().unwrap();

    // parallelism 0: the task would divide by it
    let zero = TaskDeploymentDescriptor { parallelism: 0, ..d.clone() };
    conn.send(Message::DeployTask(DeployTask::from_descriptor(zero).unwrap()));
    let e = refused(conn.expect());
    assert_eq!(e.code, ErrorCode::Malformed, "{}", e.message);
    assert!(e.message.contains("parallelism 0"), "{}", e.message);

    // an output nobody consumes: the task would index an empty subpartition list
    let orphan = TaskDeploymentDescriptor {
        outputs: vec![PartitionDeployment { edge: 0, partitioner: PartitionerKind::Hash, consumers: vec![] }],
        output_formats: vec![shardflow_engine::RecordFormat::untyped()],
        ..d
    };
    conn.send(Message::DeployTask(DeployTask::from_descriptor(orphan).unwrap()));
    let e = refused(conn.expect());
    assert_eq!(e.code, ErrorCode::Malformed, "{}", e.message);
    assert!(e.message.contains("no consumers"), "{}", e.message);

    conn.send(Message::DeployTask(good));
    let done = conn.until_state(attempt(0), ExecutionState::Finished);
    assert_eq!(done.result.unwrap().sinks[0].records, 500, "the worker still runs what is well formed");
}
