//! Bad input is refused with a typed error naming the problem: by the engine before anything
//! runs, or by the worker that cannot deploy a task (the job then fails with the numbers).

use shardflow_engine::{
    ops, ControlError, Cores, Engine, EngineError, Job, JobBuilder, JobGraph, JobVertex, OperatorSpec, PartitionerKind,
    VertexId,
};

use shardflow_engine::protocol::ErrorCode;

use crate::common::{small_engine, TIMEOUT};

fn vertex(name: &str, chain: Vec<OperatorSpec>, parallelism: u32) -> JobVertex {
    JobVertex { name: name.into(), chain, parallelism, slot_sharing_group: "default".into() }
}

fn source() -> OperatorSpec {
    ops::generator(10, ops::KeyGen::Index, ops::ValueGen::Index)
}

#[test]
fn invalid_job_graphs_are_refused_by_name() {
    let engine = small_engine().build().expect("engine starts");
    let slots = engine.free_slots().unwrap();

    // a cycle
    let mut g = JobGraph::new("cycle");
    let a = g.add_vertex(vertex("a", vec![ops::map_add(1)], 1));
    let b = g.add_vertex(vertex("b", vec![ops::map_add(1)], 1));
    g.connect(a, b, PartitionerKind::Hash);
    g.connect(b, a, PartitionerKind::Hash);
    assert!(matches!(engine.submit(Job::from_graph(g)), Err(EngineError::Control(ControlError::Cycle { .. }))));

    // zero parallelism
    let mut g = JobGraph::new("zero");
    g.add_vertex(vertex("src", vec![source()], 0));
    let err = engine.submit(Job::from_graph(g)).unwrap_err();
    assert_eq!(err, EngineError::Control(ControlError::ZeroParallelism { vertex: "src".into() }));
    assert_eq!(err.to_string(), "invalid job graph: vertex 'src' has parallelism 0 (must be at least 1)");

    // unknown operator
    let mut g = JobGraph::new("unknown");
    g.add_vertex(vertex("src", vec![source(), OperatorSpec::new("no-such-op", vec![])], 1));
    assert_eq!(
        engine.submit(Job::from_graph(g)).unwrap_err(),
        EngineError::Control(ControlError::UnknownOperator { vertex: "src".into(), operator: "no-such-op".into() })
    );

    // an edge to a missing vertex
    let mut g = JobGraph::new("dangling");
    let a = g.add_vertex(vertex("src", vec![source()], 1));
    g.connect(a, VertexId(7), PartitionerKind::Hash);
    assert_eq!(
        engine.submit(Job::from_graph(g)).unwrap_err(),
        EngineError::Control(ControlError::EdgeToMissingVertex { edge: 0, missing: 7 })
    );

    // bad operator configuration
    let mut g = JobGraph::new("bad-config");
    g.add_vertex(vertex("src", vec![OperatorSpec::new("generator", b"records=ten".to_vec())], 1));
    assert!(matches!(
        engine.submit(Job::from_graph(g)),
        Err(EngineError::InvalidOperatorConfig { operator, .. }) if operator == "generator"
    ));

    // a repeat count that would blow up a batch's output
    let mut g = JobGraph::new("huge-repeat");
    g.add_vertex(vertex("src", vec![source(), ops::flat_map_repeat(1 << 40), ops::count_sink()], 1));
    match engine.submit(Job::from_graph(g)) {
        Err(EngineError::InvalidOperatorConfig { operator, reason }) => {
            assert_eq!(operator, "flat_map.repeat");
            assert!(reason.contains("at most 1024"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // a vertex without inputs that does not start with a source
    let mut g = JobGraph::new("no-source");
    g.add_vertex(vertex("lonely", vec![ops::count_sink()], 1));
    assert!(matches!(
        engine.submit(Job::from_graph(g)),
        Err(EngineError::Control(ControlError::InvalidOperator { vertex, .. })) if vertex == "lonely"
    ));

    // more parallelism than slots
    let job = JobBuilder::new("too-wide")
        .source("src", source(), 64)
        .connect(PartitionerKind::Hash, "sink", 1)
        .then(ops::count_sink())
        .build();
    match engine.submit(job) {
        Err(EngineError::Remote { code: ErrorCode::NotEnoughSlots, message }) => {
            assert!(message.contains("64"), "the refusal says how many slots it needs: {message}")
        }
        other => panic!("expected a not-enough-slots refusal, got {other:?}"),
    }

    // Nothing of the above took a slot, and the engine still runs jobs.
    assert_eq!(engine.free_slots().unwrap(), slots);
    let ok = JobBuilder::new("fine")
        .source("src", source(), 1)
        .connect(PartitionerKind::Hash, "sink", 1)
        .then(ops::count_sink())
        .build();
    assert_eq!(engine.submit(ok).unwrap().wait_timeout(TIMEOUT).unwrap().count().0, 10);
}

#[test]
fn a_core_that_does_not_exist_is_refused() {
    let err = Engine::builder().cores(Cores::List(vec![100_000])).build().unwrap_err();
    assert!(matches!(err, EngineError::UnknownCore { core: 100_000, .. }), "{err}");
    let online = shardflow_engine::online_cores();
    let err = Engine::builder().cores(Cores::List(vec![online[0], online[0]])).build().unwrap_err();
    assert_eq!(err, EngineError::DuplicateCore { core: online[0] });
    let err = Engine::builder().segment_bytes(3000).build().unwrap_err();
    assert!(matches!(err, EngineError::InvalidConfig { field: "segment_bytes", .. }), "{err}");
}

#[test]
fn a_task_too_big_for_its_shards_network_budget_is_refused_and_fails_the_job_with_the_numbers() {
    // 16 segments of 4 KiB per shard; a 4 x 4 all-to-all job needs far more.
    let engine = small_engine().network_memory_bytes(16 * 4096).build().expect("engine starts");
    let slots = engine.free_slots().unwrap();
    let job = JobBuilder::new("greedy")
        .source("src", source(), 4)
        .connect(PartitionerKind::Hash, "sink", 4)
        .then(ops::count_sink())
        .build();
    // The worker refuses the deployment that does not fit; the job fails with the numbers.
    match engine.submit(job).expect("the graph is valid").wait_timeout(TIMEOUT) {
        Err(EngineError::JobFailed { cause, .. }) => {
            assert!(cause.contains("network buffers budget exceeded: requested"), "{cause}");
            assert!(cause.contains("of 65536 bytes available"), "{cause}");
        }
        other => panic!("expected the deployment to be refused, got {other:?}"),
    }
    assert_eq!(engine.free_slots().unwrap(), slots, "a refused job holds no slot");
    for pool in engine.memory() {
        assert_eq!(pool.free_segments, pool.segments);
    }
}

#[test]
fn keyed_state_beyond_the_slot_budget_fails_the_job_with_the_numbers() {
    let engine = small_engine().managed_memory_per_slot_bytes(256 << 10).build().expect("engine starts");
    let keyed = |keys: u64| {
        JobBuilder::new("keyed")
            .source(
                "src",
                ops::generator(200_000, ops::KeyGen::MulMod { mul: 2_654_435_761, modulus: keys }, ops::ValueGen::One),
                1,
            )
            .connect(PartitionerKind::Hash, "count", 1)
            .then(ops::keyed_count())
            .then(ops::count_sink())
            .build()
    };
    // 100 000 keys need a 2 MiB table: far over a 256 KiB slot.
    match engine.submit(keyed(100_000)).unwrap().wait_timeout(TIMEOUT) {
        Err(EngineError::JobFailed { cause, .. }) => {
            assert!(cause.contains("managed memory budget exceeded: requested"), "{cause}");
            assert!(cause.contains("of 262144 bytes available"), "{cause}");
        }
        other => panic!("expected the job to fail on its memory budget, got {other:?}"),
    }
    // The failed job's reservations are gone: a job that fits runs in the same slot.
    let result = engine.submit(keyed(1_000)).unwrap().wait_timeout(TIMEOUT).expect("fits the budget");
    assert_eq!(result.count(), (1_000, 200_000));
}

#[test]
fn a_panicking_operator_factory_is_a_typed_refusal_and_the_engine_keeps_running() {
    let engine = small_engine()
        .register(|r| r.register_operator("explodes", |_, _| panic!("factory bug")))
        .build()
        .expect("engine starts");
    let slots = engine.free_slots().unwrap();
    let job = JobBuilder::new("boom")
        .source("source", source(), 1)
        .connect(PartitionerKind::Forward, "sink", 1)
        .then(OperatorSpec::new("explodes", vec![]))
        .build();
    match engine.submit(job) {
        Err(EngineError::OperatorPanicked { operator, message }) => {
            assert_eq!(operator, "explodes");
            assert_eq!(message, "factory bug");
        }
        other => panic!("expected a typed refusal, got {other:?}"),
    }
    assert_eq!(engine.free_slots().unwrap(), slots, "nothing was placed");
    let ok = JobBuilder::new("fine")
        .source("source", source(), 1)
        .connect(PartitionerKind::Forward, "sink", 1)
        .then(ops::count_sink())
        .build();
    assert_eq!(engine.submit(ok).unwrap().wait_timeout(TIMEOUT).unwrap().count().0, 10);
}
