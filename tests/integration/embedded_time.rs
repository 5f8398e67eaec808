//! Time in records: every task of a job counts record times from one origin, so a
//! sink's `now - record.time` is the record's real age.

use shardflow_engine::{ops, JobBuilder, OperatorSpec, PartitionerKind};

use crate::common::{shard_count, small_engine};

/// Records its task's clock origin when opened, and passes records through.
struct ClockProbe(std::sync::mpsc::Sender<(String, u32, std::time::Instant)>);

impl shardflow_engine::Operator for ClockProbe {
    fn open(&mut self, info: &shardflow_engine::TaskInfo) -> Result<(), shardflow_engine::OperatorError> {
        let _ = self.0.send((info.vertex.clone(), info.subtask, info.job_start));
        Ok(())
    }
    fn process_batch(
        &mut self,
        input: &[shardflow_engine::Record],
        out: &mut Vec<shardflow_engine::Record>,
    ) -> Result<(), shardflow_engine::OperatorError> {
        out.extend_from_slice(input);
        Ok(())
    }
}

#[test]
fn every_task_of_a_job_counts_record_times_from_one_origin() {
    // Latency is `now - record.time`, the time stamped by a source and read by a sink
    // in another task: both must count from the same instant.
    let (tx, rx) = std::sync::mpsc::channel();
    let engine = small_engine()
        .register(move |r| {
            let tx = tx.clone();
            r.register_operator("probe", move |_, _| Ok(Box::new(ClockProbe(tx.clone()))));
        })
        .build()
        .expect("engine starts");
    let p = shard_count() as u32;
    let job = JobBuilder::new("one-clock")
        .source("source", ops::generator(10_000, ops::KeyGen::Golden, ops::ValueGen::Index), p)
        .then(OperatorSpec::new("probe", Vec::new()))
        .connect(PartitionerKind::Hash, "sink", p)
        .then(OperatorSpec::new("probe", Vec::new()))
        .then(ops::count_sink())
        .build();
    let result = engine.run(job).expect("job finishes");
    assert_eq!(result.count().0, 10_000);
    let seen: Vec<_> = rx.try_iter().collect();
    assert_eq!(seen.len(), 2 * p as usize, "every task opened its probe: {seen:?}");
    assert!(seen.iter().all(|s| s.2 == seen[0].2), "one clock origin for the whole job: {seen:?}");
}
