//! Control-plane frames: encoding a deployment frame into a reused buffer, then
//! receiving it: header checks, rkyv's checked access (validation), and the full
//! decode into owned values. The deployment is a 4-way keyed job's subtask, as the
//! coordinator sends it (`DeployTask`: the vertex's information archived once per
//! vertex and carried as bytes) and sent whole (`SubmitTask`); plus reading the
//! vertex information, which a worker does once per vertex.

#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use rkyv::rancor::Error;
use rkyv::util::AlignedVec;
use shardflow_engine::protocol::{self, *};
use shardflow_engine::Data;
use shardflow_engine::{
    AllocationId, AttemptId, ExecutionVertexId, JobId, JobMasterId, OperatorSpec, PartitionerKind, ShardId, SlotId,
    VertexId, WorkerId,
};

/// A descriptor as a 4-way keyed job deploys it: a typed job's vertex, one input gate
/// and one output partition of 4 channels each.
fn descriptor() -> TaskDeploymentDescriptor {
    let loc = |i: u32| ChannelLocation { peer_subtask: i, subpartition: i, worker: WorkerId(i % 2) };
    TaskDeploymentDescriptor {
        job: JobId(7),
        job_name: "keyed-sum".into(),
        job_master: JobMasterId(0x5eed),
        allocation: AllocationId(42),
        slot: SlotId { worker: WorkerId(1), shard: ShardId(0), index: 1 },
        attempt: AttemptId { execution_vertex: ExecutionVertexId { vertex: VertexId(1), subtask: 3 }, attempt: 0 },
        vertex_name: "keyed-count".into(),
        parallelism: 4,
        max_parallelism: 128,
        chain: vec![OperatorSpec::new("job:keyed-sum", b"parallelism=4;records=100000000;vertex=1".to_vec())],
        input_formats: vec![shardflow_engine::jobs::KeyValue::format()],
        output_formats: vec![shardflow_engine::jobs::KeyValue::format()],
        inputs: vec![GateDeployment { edge: 0, producers: (0..4).map(loc).collect() }],
        outputs: vec![PartitionDeployment {
            edge: 1,
            partitioner: PartitionerKind::Hash,
            consumers: (0..4).map(loc).collect(),
        }],
    }
}

/// Encodes `msg` into `buf`, checks the header and validates the archive.
fn round_trip<T>(msg: &Message, buf: &mut AlignedVec<16>) -> usize
where
    T: rkyv::Archive,
    T::Archived: rkyv::Portable + for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, Error>>,
{
    protocol::encode_into(std::hint::black_box(msg), buf).unwrap();
    let head: &[u8; HEADER_BYTES] = buf[..HEADER_BYTES].try_into().unwrap();
    let h = FrameHeader::parse(head, DEFAULT_MAX_FRAME_BYTES).unwrap();
    let body = &buf[HEADER_BYTES..HEADER_BYTES + h.len];
    let archived = rkyv::access::<T::Archived, Error>(body).unwrap();
    std::hint::black_box(archived);
    h.len
}

fn frames(c: &mut Criterion) {
    let deploy = Message::DeployTask(DeployTask::from_descriptor(descriptor()).unwrap());
    let whole = Message::SubmitTask(SubmitTask { descriptor: descriptor() });
    let mut buf = AlignedVec::<16>::new();
    protocol::encode_into(&deploy, &mut buf).unwrap();
    let mut g = c.benchmark_group(format!("control_frame/deploy_task_{}B", buf.len()));
    g.bench_function("encode", |b| b.iter(|| protocol::encode_into(std::hint::black_box(&deploy), &mut buf).unwrap()));
    g.bench_function("encode+checked_access", |b| b.iter(|| round_trip::<DeployTask>(&deploy, &mut buf)));
    let mut body = AlignedVec::<16>::new();
    g.bench_function("encode+checked_decode_owned", |b| {
        b.iter(|| {
            protocol::encode_into(std::hint::black_box(&deploy), &mut buf).unwrap();
            let head: &[u8; HEADER_BYTES] = buf[..HEADER_BYTES].try_into().unwrap();
            let h = FrameHeader::parse(head, DEFAULT_MAX_FRAME_BYTES).unwrap();
            body.clear();
            body.extend_from_slice(&buf[HEADER_BYTES..HEADER_BYTES + h.len]);
            std::hint::black_box(protocol::decode_body(h, &body).unwrap());
        })
    });
    let Message::DeployTask(d) = &deploy else { unreachable!() };
    let info = d.task_information.clone();
    g.bench_function("vertex_information_read (once per vertex)", |b| {
        b.iter(|| std::hint::black_box(TaskInformation::from_archive(std::hint::black_box(&info)).unwrap()))
    });
    g.finish();

    protocol::encode_into(&whole, &mut buf).unwrap();
    let mut g = c.benchmark_group(format!("control_frame/submit_task_{}B", buf.len()));
    g.bench_function("encode+checked_access", |b| b.iter(|| round_trip::<SubmitTask>(&whole, &mut buf)));
    g.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
