use proptest::prelude::*;

use super::*;
use crate::ids::{
    AllocationId, AttemptId, ExecutionVertexId, JobId, JobMasterId, ResourceManagerId, ShardId, SlotId, VertexId,
    WorkerId,
};
use crate::job_graph::{JobGraph, JobVertex, OperatorSpec, PartitionerKind, RecordEncoding, RecordFormat};
use crate::state::ExecutionState;

fn attempt(v: u32, s: u32, a: u32) -> AttemptId {
    AttemptId { execution_vertex: ExecutionVertexId { vertex: VertexId(v), subtask: s }, attempt: a }
}

fn slot(w: u32, s: u32, i: u32) -> SlotId {
    SlotId { worker: WorkerId(w), shard: ShardId(s), index: i }
}

/// A descriptor of the size a real deployment has: a 3-operator chain, one input
/// gate and one output partition of 4 channels each.
pub(crate) fn sample_descriptor() -> TaskDeploymentDescriptor {
    let loc = |i: u32| ChannelLocation { peer_subtask: i, subpartition: i, worker: WorkerId(i % 2) };
    TaskDeploymentDescriptor {
        job: JobId(7),
        job_name: "keyed-sum".into(),
        job_master: JobMasterId(0x5eed_f00d),
        allocation: AllocationId(42),
        slot: slot(1, 0, 1),
        attempt: attempt(1, 3, 0),
        vertex_name: "count".into(),
        parallelism: 4,
        max_parallelism: 128,
        input_formats: vec![RecordFormat {
            type_name: "shardflow::Rec".into(),
            encoding: RecordEncoding::Pod { size: 16, align: 8 },
        }],
        output_formats: vec![RecordFormat {
            type_name: "alloc::string::String".into(),
            encoding: RecordEncoding::Rkyv { archived_size: 8, align: 4 },
        }],
        chain: vec![
            OperatorSpec::new("keyed_count", b"".to_vec()),
            OperatorSpec::new("map.add", b"delta=1".to_vec()),
            OperatorSpec::new("sink.count", vec![]),
        ],
        inputs: vec![GateDeployment { edge: 0, producers: (0..4).map(loc).collect() }],
        outputs: vec![PartitionDeployment {
            edge: 1,
            partitioner: PartitionerKind::Hash,
            consumers: (0..4).map(loc).collect(),
        }],
    }
}

/// The sample descriptor as a coordinator deploys it.
pub(crate) fn sample_deploy() -> DeployTask {
    DeployTask::from_descriptor(sample_descriptor()).unwrap()
}

fn samples() -> Vec<Message> {
    let report = SlotReport {
        slots: vec![
            SlotStatus { slot: slot(0, 0, 0), core: 0, allocated: None },
            SlotStatus {
                slot: slot(0, 0, 1),
                core: 0,
                allocated: Some(SlotAllocation { allocation: AllocationId(3), job: JobId(2) }),
            },
        ],
    };
    let mut g = JobGraph::new("j");
    let v = |n: &str| JobVertex {
        name: n.into(),
        chain: vec![OperatorSpec::new("x", vec![1, 2])],
        parallelism: 2,
        slot_sharing_group: "default".into(),
    };
    let a = g.add_vertex(v("a"));
    let b = g.add_vertex(v("b"));
    g.connect(a, b, PartitionerKind::Forward);
    vec![
        Message::RequestSlot(RequestSlot {
            resource_manager: ResourceManagerId(9),
            slot: slot(1, 1, 0),
            allocation: AllocationId(5),
            job: JobId(1),
            job_master: JobMasterId(11),
        }),
        Message::SlotRequestReply(SlotRequestReply {
            slot: slot(1, 1, 0),
            allocation: AllocationId(5),
            outcome: SlotRequestOutcome::Occupied(SlotAllocation { allocation: AllocationId(4), job: JobId(3) }),
        }),
        Message::SubmitTask(SubmitTask { descriptor: sample_descriptor() }),
        Message::DeployTask(sample_deploy()),
        Message::RegisterWorker(RegisterWorker {
            resource_id: "host-1234".into(),
            address: "127.0.0.1:5000".into(),
            resources: WorkerResources {
                cores: vec![0, 1],
                slots_per_shard: 2,
                network_memory_bytes: 64 << 20,
                managed_memory_per_slot_bytes: 1 << 30,
            },
            slots: report.clone(),
        }),
        Message::HeartbeatFromWorker(HeartbeatFromWorker {
            resource_manager: ResourceManagerId(9),
            worker: WorkerId(1),
            seq: 77,
            report,
            tasks: vec![TaskProgress {
                job: JobId(1),
                attempt: attempt(1, 0, 2),
                records_in: 5,
                records_out: 4,
                times: TaskTimes { busy_ms: 900, idle_ms: 50, back_pressured_ms: 250 },
            }],
        }),
        Message::RequestJobGraph(RequestJobGraph { job: JobId(3) }),
        Message::JobGraphReply(JobGraphReply { job: JobId(3), graph: g.clone() }),
        Message::SubmitJob(SubmitJob { graph: g, placement: "colocate".into(), restart: "none".into() }),
        Message::UpdateTaskExecutionState(UpdateTaskExecutionState {
            job_master: JobMasterId(11),
            job: JobId(1),
            attempt: attempt(0, 1, 2),
            state: ExecutionState::Finished,
            failure: None,
            result: Some(TaskResultInfo {
                records_in: 10,
                records_out: 0,
                times: TaskTimes { busy_ms: 12, idle_ms: 3, back_pressured_ms: 0 },
                sinks: vec![SinkResult { records: 10, value_sum: 45, latency_ns: Some([1, 2, 3, 4]) }],
            }),
        }),
        Message::WaitJob(WaitJob { job: JobId(3), until: WaitCondition::AllRunning, timeout_ms: 1000 }),
        Message::RequestWorkerDump(RequestWorkerDump { worker: WorkerId(2), timeout_ms: 5000 }),
        Message::RequestJobProgress(RequestJobProgress { job: JobId(3) }),
        Message::TriggerCheckpoint(TriggerCheckpoint {
            job_master: JobMasterId(9),
            job: JobId(3),
            attempt: AttemptId { execution_vertex: ExecutionVertexId { vertex: VertexId(0), subtask: 1 }, attempt: 2 },
            checkpoint: crate::ids::CheckpointId(1),
            timestamp_ms: 0,
            stop: true,
        }),
        Message::StopWithSavepoint(StopWithSavepoint { job: JobId(3), directory: String::new() }),
        Message::JobProgress(JobProgress {
            job: JobId(3),
            subtasks: vec![SubtaskProgress {
                vertex: "map".into(),
                subtask: 1,
                attempt: 0,
                records_in: 7,
                records_out: 7,
                times: TaskTimes { busy_ms: 400, idle_ms: 1_200, back_pressured_ms: 31 },
            }],
        }),
        Message::ShardDump(ShardDump {
            worker: WorkerId(2),
            shards: vec![ShardDumpEntry {
                shard: 1,
                core: 1,
                cpu_ms: Some(2_340),
                tasks: vec![TaskDumpEntry {
                    job: JobId(1),
                    attempt: attempt(0, 1, 0),
                    vertex: "map".into(),
                    state: ExecutionState::Running,
                    records_in: 1000,
                    records_out: 999,
                    times: TaskTimes { busy_ms: 70, idle_ms: 5, back_pressured_ms: 4 },
                }],
            }],
        }),
        Message::ListJobs(ListJobs {}),
        Message::Ack(Ack {}),
        Message::error(ErrorCode::StaleToken, "stale"),
        Message::ResourceOverview(ResourceOverview {
            workers: 2,
            total_slots: 4,
            free_slots: 1,
            running_jobs: 1,
            leader: "127.0.0.1:6123".into(),
            leader_epoch: 41,
        }),
        Message::AuthHello(AuthHello { client_nonce: [7; 32], role: "worker".into() }),
        Message::AuthChallenge(AuthChallenge { server_nonce: [1; 32], server_proof: [2; 32] }),
        Message::AuthResponse(AuthResponse { client_proof: [3; 32] }),
        Message::AuthAccepted(AuthAccepted {}),
    ]
}

#[test]
fn every_sample_round_trips() {
    for m in samples() {
        let bytes = encode(&m).unwrap();
        let (back, used) = decode(&bytes, DEFAULT_MAX_FRAME_BYTES).unwrap();
        assert_eq!(used, bytes.len(), "{}", m.kind_name());
        assert_eq!(back, m);
    }
}

#[test]
fn a_deployment_carries_the_whole_descriptor() {
    let d = sample_deploy();
    assert_eq!(d.clone().descriptor().unwrap(), sample_descriptor());
    let whole = encode(&Message::SubmitTask(SubmitTask { descriptor: sample_descriptor() })).unwrap();
    let deploy = encode(&Message::DeployTask(d)).unwrap();
    assert!(deploy.len() <= whole.len() + 32, "{} vs {} bytes", deploy.len(), whole.len());
}

#[test]
fn kinds_are_unique_and_named() {
    let mut seen = std::collections::HashSet::new();
    for &k in KINDS {
        assert!(seen.insert(k), "kind {k} twice");
        assert!(kind_name(k).is_some());
    }
    assert_eq!(kind_name(0), None);
    assert_eq!(kind_name(126), None);
    assert_eq!(kind_name(132), None);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Pins the wire format. If one of these changes, the layout of a payload changed:
/// that needs a new kind or a new protocol version (see the compatibility rule).
#[test]
fn golden_bytes() {
    let ack = encode(&Message::Ack(Ack {})).unwrap();
    assert_eq!(hex(&ack), "00000000080047000000000000000000");
    let hb = encode(&Message::HeartbeatFromCoordinator(HeartbeatFromCoordinator {
        resource_manager: ResourceManagerId(0x0102030405060708),
        seq: 3,
    }))
    .unwrap();
    assert_eq!(hex(&hb), "1000000008000c00000000000000000008070605040302010300000000000000");
    let req = encode(&Message::RequestSlot(RequestSlot {
        resource_manager: ResourceManagerId(1),
        slot: slot(2, 3, 4),
        allocation: AllocationId(5),
        job: JobId(6),
        job_master: JobMasterId(7),
    }))
    .unwrap();
    assert_eq!(
        hex(&req),
        "30000000080001000000000000000000\
         0100000000000000020000000300000004000000000000000500000000000000\
         06000000000000000700000000000000"
    );
    let info = TaskInformation {
        job_name: "j".into(),
        vertex_name: "v".into(),
        parallelism: 2,
        max_parallelism: 128,
        chain: vec![OperatorSpec::new("x", vec![1])],
        input_formats: vec![],
        output_formats: vec![RecordFormat {
            type_name: "u64".into(),
            encoding: RecordEncoding::Pod { size: 8, align: 8 },
        }],
    };
    assert_eq!(
        hex(&info.archive().unwrap()),
        "0100000078fffffffffffffff4ffffff01000000753634ffffffffff0000000008000000080000006affffffffffffff76ffffffffffffff0200000080000000c4ffffff01000000ccffffff00000000c4ffffff01000000"
    );
    let err = encode(&Message::error(ErrorCode::StaleToken, "stale")).unwrap();
    assert_eq!(hex(&err), "1000000008007f000000000000000000060000007374616c65ffffff00000000");
}

#[test]
fn header_checks_come_before_the_body() {
    let good = encode(&Message::Ack(Ack {})).unwrap();
    let mut h: [u8; HEADER_BYTES] = good[..HEADER_BYTES].try_into().unwrap();
    h[4] = 9;
    assert_eq!(FrameHeader::parse(&h, 1024), Err(FrameError::UnsupportedVersion { got: 9 }));
    h[4] = PROTOCOL_VERSION as u8;
    h[6] = 200;
    assert_eq!(FrameHeader::parse(&h, 1024), Err(FrameError::UnknownKind { kind: 200 }));
    h[6] = 71;
    h[12] = 1;
    assert_eq!(FrameHeader::parse(&h, 1024), Err(FrameError::BadHeader));
    h[12] = 0;
    h[0..4].copy_from_slice(&2048u32.to_le_bytes());
    assert_eq!(FrameHeader::parse(&h, 1024), Err(FrameError::TooLarge { len: 2048, max: 1024 }));
}

#[test]
fn truncated_and_garbage_frames_are_typed_errors() {
    let full = encode(&Message::SubmitTask(SubmitTask { descriptor: sample_descriptor() })).unwrap();
    for cut in [0, 5, HEADER_BYTES, full.len() - 1] {
        assert!(matches!(decode(&full[..cut], 1 << 20), Err(FrameError::Truncated { .. })), "cut at {cut}");
    }
    let mut garbage = full.to_vec();
    for (i, b) in garbage[HEADER_BYTES..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(151).wrapping_add(7);
    }
    match decode(&garbage, 1 << 20) {
        Err(FrameError::Malformed { kind_name: "SubmitTask", reason }) => {
            // rkyv's own account of what was wrong, in every build profile.
            assert!(!reason.contains("without error information"), "{reason}");
            assert!(!reason.contains("enable debug assertions"), "{reason}");
            assert!(!reason.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(FrameError::BadHeader.code(), ErrorCode::BadHeader);
}

/// The fuzz target's seeds, checked in under `fuzz/seeds/frame_decode`: every
/// message kind's sample frame, and bad frames of every typed error.
fn seed_frames() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<(String, Vec<u8>)> = samples()
        .iter()
        .map(|m| (format!("kind-{:03}-{}", m.kind(), m.kind_name()), encode(m).unwrap().to_vec()))
        .collect();
    let deploy = encode(&Message::DeployTask(sample_deploy())).unwrap().to_vec();
    seeds.push(("bad-truncated".into(), deploy[..deploy.len() / 2].to_vec()));
    let mut garbage = deploy.clone();
    for (i, b) in garbage[HEADER_BYTES..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(151).wrapping_add(7);
    }
    seeds.push(("bad-garbage-body".into(), garbage));
    seeds.push(("bad-http-reply".into(), b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec()));
    seeds.push(("task-information".into(), sample_deploy().task_information));
    seeds
}

#[test]
fn the_fuzz_seeds_are_current_and_keep_the_decoder_contract() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/frame_decode");
    if std::env::var_os("SHARDFLOW_WRITE_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seed_frames() {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let mut checked = 0;
    for (name, bytes) in seed_frames() {
        let on_disk = std::fs::read(dir.join(&name))
            .unwrap_or_else(|e| panic!("seed {name}: {e} (write them with SHARDFLOW_WRITE_SEEDS=1)"));
        assert_eq!(on_disk, bytes, "seed {name} is stale: write the seeds again with SHARDFLOW_WRITE_SEEDS=1");
    }
    for entry in std::fs::read_dir(&dir).unwrap() {
        check_decoder(&std::fs::read(entry.unwrap().path()).unwrap());
        checked += 1;
    }
    assert_eq!(checked, seed_frames().len(), "no stray files among the seeds");
}

#[test]
fn another_protocol_is_named_as_such_and_a_near_version_as_a_version() {
    let http: [u8; HEADER_BYTES] = *b"HTTP/1.1 400 Bad";
    match FrameHeader::parse(&http, 1024) {
        Err(e @ FrameError::NotShardflow { .. }) => {
            assert_eq!(
                e.to_string(),
                r#"the peer does not speak the shardflow protocol (its first bytes: "HTTP/1.1 400 Bad")"#
            );
            assert_eq!(e.code(), ErrorCode::UnsupportedVersion);
        }
        other => panic!("{other:?}"),
    }
    let mut h = [0u8; HEADER_BYTES];
    h[4] = 9;
    assert_eq!(FrameHeader::parse(&h, 1024), Err(FrameError::UnsupportedVersion { got: 9 }));
    h[4] = 7;
    assert_eq!(FrameHeader::parse(&h, 1024), Err(FrameError::UnsupportedVersion { got: 7 }), "the last version");
    h[4] = 0;
    assert!(matches!(FrameHeader::parse(&h, 1024), Err(FrameError::NotShardflow { .. })), "version 0 was never used");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Any byte string decodes to a frame or a typed error, never a panic.
    #[test]
    fn any_bytes_decode_or_fail_typed(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes, 4096);
    }

    /// A valid header over arbitrary body bytes: still no panic, and a successful
    /// decode consumed exactly the announced frame.
    #[test]
    fn valid_header_over_random_body(kind_index in 0..KINDS.len(), body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut bytes = vec![0u8; HEADER_BYTES];
        bytes[0..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
        bytes[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        bytes[6..8].copy_from_slice(&KINDS[kind_index].to_le_bytes());
        bytes.extend_from_slice(&body);
        if let Ok((msg, used)) = decode(&bytes, 4096) {
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(msg.kind(), KINDS[kind_index]);
        }
    }

    /// Any bytes as a deployment's vertex information: read or a typed error.
    #[test]
    fn any_task_information_reads_or_fails_typed(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Err(e) = TaskInformation::from_archive(&bytes) {
            let typed = matches!(e, FrameError::Malformed { kind_name: "TaskInformation", .. });
            prop_assert!(typed, "{e:?}");
        }
    }

    /// Flipping any byte of a valid frame gives a frame or a typed error.
    #[test]
    fn mutated_frames_never_panic(index in 0usize..10_000, value in any::<u8>(), which in 0usize..12) {
        let mut bytes = encode(&samples()[which]).unwrap().to_vec();
        let i = index % bytes.len();
        bytes[i] = value;
        let _ = decode(&bytes, 1 << 20);
    }
}
