//! Time in records: every task of a job counts record times from one origin, so a
//! sink's `now - record time` is the record's real age.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use shardflow_engine::{Dataflow, Emitter, OperatorContext, OperatorError, ProcessFunction};

use crate::common::{shard_count, small_engine};

/// Records its task's clock origin when opened, and passes records through.
#[derive(Clone)]
struct ClockProbe(Arc<Mutex<Sender<(String, u32, std::time::Instant)>>>);

impl ProcessFunction<u64, u64> for ClockProbe {
    fn open(&mut self, ctx: &mut OperatorContext<'_>) -> Result<(), OperatorError> {
        let t = ctx.task();
        let _ = self.0.lock().unwrap().send((t.vertex.clone(), t.subtask, t.job_start));
        Ok(())
    }
    fn process(
        &mut self,
        r: &u64,
        _: &mut OperatorContext<'_>,
        out: &mut Emitter<'_, u64>,
    ) -> Result<(), OperatorError> {
        out.emit(*r);
        Ok(())
    }
}

#[test]
fn every_task_of_a_job_counts_record_times_from_one_origin() {
    // Latency is `now - record time`, the time stamped by a source and read by a
    // sink in another task: both must count from the same instant.
    let (tx, rx) = std::sync::mpsc::channel();
    let probe = ClockProbe(Arc::new(Mutex::new(tx)));
    let engine = small_engine().build().expect("engine starts");
    let p = shard_count() as u32;
    let df = Dataflow::new("one-clock").parallelism(p);
    df.generate("source", 10_000, |r| r)
        .process(probe.clone())
        .name("probe-1")
        .key_by(|r: &u64| *r)
        .as_stream()
        .process(probe)
        .name("probe-2")
        .count();
    let result = engine.run(df.build().unwrap()).expect("job finishes");
    assert_eq!(result.count().0, 10_000);
    let seen: Vec<_> = rx.try_iter().collect();
    assert_eq!(seen.len(), 2 * p as usize, "every task opened its probe: {seen:?}");
    assert!(seen.iter().all(|s| s.2 == seen[0].2), "one clock origin for the whole job: {seen:?}");
}
