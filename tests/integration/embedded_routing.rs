//! Routing between vertices: broadcast reaches every subtask, a custom
//! partitioner sends each record where it says, rebalance spreads round robin,
//! and a chained operator given its own parallelism moves to a vertex of its own.

use shardflow_engine::{Dataflow, Emitter, OperatorContext, OperatorError, ProcessFunction};

use crate::common::{small_engine, TIMEOUT};

/// Tags each record with the subtask it reached.
#[derive(Clone)]
struct Here;

impl ProcessFunction<u64, (u64, u32)> for Here {
    fn process(
        &mut self,
        r: &u64,
        ctx: &mut OperatorContext<'_>,
        out: &mut Emitter<'_, (u64, u32)>,
    ) -> Result<(), OperatorError> {
        out.emit((*r, ctx.task().subtask));
        Ok(())
    }
}

#[test]
fn broadcast_custom_and_rebalance_route_as_they_say() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("routing").parallelism(2);
    let numbers = df.generate("numbers", 1_000, |r| r).parallelism(1);
    let everywhere = numbers.broadcast().process(Here).name("everywhere").collect();
    let by_parity = numbers.partition_custom(|r: &u64, n| (*r % 2) as usize % n).process(Here).name("parity").collect();
    let spread = numbers.rebalance().process(Here).name("spread").collect();
    let result = engine.submit(df.build().unwrap()).unwrap().wait_timeout(TIMEOUT).expect("the job finishes");
    assert_eq!(result.subtasks.iter().filter(|s| s.vertex == "numbers").count(), 1);

    let everywhere = everywhere.take();
    assert_eq!(everywhere.len(), 2_000, "every record on both subtasks");
    for subtask in 0..2 {
        let mut got: Vec<u64> = everywhere.iter().filter(|(_, s)| *s == subtask).map(|(r, _)| *r).collect();
        got.sort_unstable();
        assert_eq!(got, (0..1_000).collect::<Vec<_>>(), "subtask {subtask} got all");
    }
    let by_parity = by_parity.take();
    assert_eq!(by_parity.len(), 1_000);
    assert!(by_parity.iter().all(|(r, s)| u64::from(*s) == r % 2), "the partitioner decides");
    let spread = spread.take();
    let on_zero = spread.iter().filter(|(_, s)| *s == 0).count();
    assert_eq!((spread.len(), on_zero), (1_000, 500), "round robin halves the records");
}

#[test]
fn a_chained_operator_with_another_parallelism_gets_a_vertex_of_its_own() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("rehome").parallelism(2);
    let out = df
        .generate("numbers", 300, |r| r)
        .map(|r: &u64| r * 2)
        .name("double")
        .parallelism(1)
        .process(Here)
        .name("tag")
        .collect();
    let job = df.build().unwrap();
    let names: Vec<&str> = job.graph().vertices.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["numbers", "double"], "map moved out of the source's vertex");
    assert_eq!(job.graph().vertices[1].parallelism, 1);
    engine.run(job).unwrap();
    let mut got = out.take();
    got.sort_unstable();
    assert_eq!(got, (0..300).map(|r| (r * 2, 0)).collect::<Vec<_>>(), "tag is chained to double: one subtask");
}
