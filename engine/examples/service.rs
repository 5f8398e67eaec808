//! An embedded service: a thread pushes requests, in batches, into a running
//! job through a keyed ingress handle (each request straight to the subtask
//! that keeps its user's state, queues bounded by count and bytes) and reads
//! the answers from an egress handle, with back-pressure both ways; a keyed
//! process function keeps each user's running total, and the requests it
//! rejects come back through a side output to an egress of their own. One
//! thread reads both with `recv_either` (a reader that drained one egress
//! before the other could wait forever on a job waiting for room in the other).
//!
//! `cargo run --release -p shardflow-engine --example service`

use std::time::Instant;

use shardflow_engine::{
    Dataflow, Either, Emitter, Engine, EngineError, KeyedContext, KeyedProcessFunction, OperatorError, OutputTag,
    QueueBound, StateDeclarations, ValueState,
};

/// A request a service receives.
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Request {
    id: u64,
    user: String,
    amount: u64,
}
shardflow_engine::rkyv_data!(Request);

/// Each user's running total: a request of no amount is rejected, with the
/// reason, through a side output; any other adds to its user's total, which
/// is the answer.
#[derive(Clone)]
struct Totals {
    total: ValueState<u64>,
    rejected: OutputTag<String>,
}

impl KeyedProcessFunction<String, Request, Request> for Totals {
    fn open(&mut self, states: &mut StateDeclarations<'_, String>) -> Result<(), OperatorError> {
        self.total = states.value_state("total")?;
        Ok(())
    }

    fn process(
        &mut self,
        r: &Request,
        ctx: &mut KeyedContext<'_, String>,
        out: &mut Emitter<'_, Request>,
    ) -> Result<(), OperatorError> {
        if r.amount == 0 {
            out.emit_side(&self.rejected, format!("request {} of {}: no amount", r.id, r.user));
            return Ok(());
        }
        let amount = ctx.value(&self.total)?.copied().unwrap_or(0) + r.amount;
        ctx.set_value(&self.total, amount)?;
        out.emit(Request { id: r.id, user: r.user.clone(), amount });
        Ok(())
    }
}

fn main() -> Result<(), EngineError> {
    let engine = Engine::builder().build()?;
    let shards = engine.shards().len() as u32;

    // Requests in, each pushed to the subtask that owns its user's key group
    // (at most 1024 queued per subtask, and at most 1 MiB of them); those of
    // no amount rejected, with the reason; each user's running total out. The
    // process function runs chained in the ingress's subtasks: no exchange.
    let df = Dataflow::new("running-totals").parallelism(shards);
    let bound = QueueBound::records(1024).and_bytes(1 << 20);
    let (requests, mut ingress) =
        df.ingress_keyed::<String, Request, _>("requests", bound, |r: &Request| r.user.clone());
    let rejected = OutputTag::<String>::new("rejected");
    let totals = requests.process(Totals { total: Default::default(), rejected: rejected.clone() }).name("totals");
    let mut rejections = totals.side_output(&rejected).egress(1024);
    let mut answers = totals.egress(1024);
    let job = engine.submit(df.build()?)?;

    let n = 100_000u64;
    let service = std::thread::spawn(move || {
        // Requests as a service reads them, up to 64 at a time: `push_all`
        // wakes each subtask once per batch. (A job that keeps up with the
        // pushes is parked when the next one comes: pushed one by one, each
        // would wake a shard, and those wake-ups would bound the throughput.)
        let mut batch = Vec::with_capacity(64);
        for id in 0..n {
            batch.push(Request { id, user: format!("user-{}", id % 100), amount: id % 7 });
            let full = batch.len() == 64 || id + 1 == n;
            if full && ingress.push_all(batch.drain(..)).is_err() {
                break; // the job is gone
            }
        }
        // Dropping the handle ends the job's input.
    });

    // Answers and rejections, as they come, until both streams end.
    let start = Instant::now();
    let (mut answered, mut last) = (0u64, None);
    let (mut rejected, mut one_rejected) = (0u64, None);
    while let Some(next) = answers.recv_either(&mut rejections) {
        match next {
            Either::Left(answer) => (answered, last) = (answered + 1, Some(answer)),
            Either::Right(why) => {
                rejected += 1;
                one_rejected.get_or_insert(why);
            }
        }
    }
    let elapsed = start.elapsed();
    if let Some(why) = answers.stopped().or(rejections.stopped()) {
        eprintln!("the streams were cut short: {why}");
    }
    service.join().expect("the service thread");
    job.wait()?;
    println!(
        "{answered} requests answered in {:.1} ms ({:.0} per second); last answer: {last:?}",
        elapsed.as_secs_f64() * 1e3,
        answered as f64 / elapsed.as_secs_f64()
    );
    println!("{rejected} rejected, such as: {}", one_rejected.unwrap_or_default());
    Ok(())
}
