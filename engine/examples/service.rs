//! An embedded service: a thread pushes requests into a running job through an
//! ingress handle and reads the answers from an egress handle, with
//! back-pressure both ways; the requests the job rejects come back through a
//! side output to an egress of their own, read by a thread of its own (a
//! reader that drained one egress before the other could wait forever on a
//! job waiting for room in the other).
//!
//! `cargo run --release -p shardflow-engine --example service`

use std::time::Instant;

use shardflow_engine::{Dataflow, Emitter, Engine, EngineError, OutputTag};

/// A request a service receives.
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Request {
    id: u64,
    user: String,
    amount: u64,
}
shardflow_engine::rkyv_data!(Request);

fn main() -> Result<(), EngineError> {
    let engine = Engine::builder().build()?;
    let shards = engine.shards().len() as u32;

    // Requests in; those of no amount rejected, with the reason; each user's
    // running total out.
    let df = Dataflow::new("running-totals").parallelism(shards);
    let (requests, mut ingress) = df.ingress::<Request>("requests", 1024);
    let rejected = OutputTag::<String>::new("rejected");
    let tag = rejected.clone();
    let valid = requests
        .flat_map(move |r: &Request, out: &mut Emitter<'_, Request>| match r.amount {
            0 => out.emit_side(&tag, format!("request {} of {}: no amount", r.id, r.user)),
            _ => out.emit_ref(r),
        })
        .name("validate");
    let rejections = valid.side_output(&rejected).egress(1024);
    let answers = valid
        .key_by_ref::<String, _>(|r: &Request| &r.user)
        .reduce(|total: &Request, r: &Request| Request {
            id: r.id,
            user: total.user.clone(),
            amount: total.amount + r.amount,
        })
        .name("totals")
        .egress(1024);
    let job = engine.submit(df.build()?)?;

    let n = 100_000u64;
    let service = std::thread::spawn(move || {
        for id in 0..n {
            let request = Request { id, user: format!("user-{}", id % 100), amount: id % 7 };
            if ingress.push(request).is_err() {
                break; // the job is gone
            }
        }
        // Dropping the handle ends the job's input.
    });

    let rejections = std::thread::spawn(move || {
        let (mut n, mut one) = (0u64, None);
        for why in rejections.iter() {
            n += 1;
            one.get_or_insert(why);
        }
        (n, one)
    });

    let start = Instant::now();
    let mut answered = 0u64;
    let mut last = None;
    for answer in answers.iter() {
        answered += 1;
        last = Some(answer);
    }
    let elapsed = start.elapsed();
    if let Some(why) = answers.stopped() {
        eprintln!("the answers were cut short: {why}");
    }
    service.join().expect("the service thread");
    let (rejected, one_rejected) = rejections.join().expect("the rejections' reader");
    job.wait()?;
    println!(
        "{answered} requests answered in {:.1} ms ({:.0} per second); last answer: {last:?}",
        elapsed.as_secs_f64() * 1e3,
        answered as f64 / elapsed.as_secs_f64()
    );
    println!("{rejected} rejected, such as: {}", one_rejected.unwrap_or_default());
    Ok(())
}
