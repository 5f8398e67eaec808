//! Upgrading a running service without losing state: a thread pushes requests
//! into a job keeping each user's running total; half-way the job is stopped
//! with a snapshot (its ingress closes: the request refused comes back to the
//! service), the snapshot goes to a file and back, and the new version —
//! restored from it, at another parallelism — takes the requests from there.
//! The totals at the end are those of one uninterrupted run.
//!
//! `cargo run --release -p shardflow-engine --example upgrade`

use std::collections::HashMap;

use shardflow_engine::{Dataflow, EgressHandle, Engine, EngineError, IngressHandle, Job, JobSnapshot, PushError};

/// A version of the service's job: the job, where requests `(user, amount)`
/// go in, and where each user's running total `(user, total)` comes out.
type Version = (Job, IngressHandle<(u64, u64)>, EgressHandle<(u64, u64)>);

/// The service's job: each user's running total.
fn totals(parallelism: u32, restore: Option<JobSnapshot>) -> Result<Version, EngineError> {
    let mut df = Dataflow::new("totals").parallelism(parallelism);
    if let Some(snapshot) = restore {
        df = df.restore(snapshot);
    }
    let (requests, ingress) = df.ingress::<(u64, u64)>("requests", 1024);
    let answers = requests
        .key_by(|r: &(u64, u64)| r.0)
        .reduce(|total: &(u64, u64), r: &(u64, u64)| (r.0, total.1 + r.1))
        .name("per-user")
        .egress(1024);
    Ok((df.build()?, ingress, answers))
}

fn main() -> Result<(), EngineError> {
    let engine = Engine::builder().build()?;
    let n = 200_000u64;
    let request = |i: u64| (i % 1_000, i % 7);

    // The service pushes every request; when a version stops, it hands the
    // refused request and the rest to the next one.
    let (versions, next_version) = crossbeam_channel::bounded::<IngressHandle<(u64, u64)>>(1);
    let (job, ingress, answers) = totals(1, None)?;
    let job = engine.submit(job)?;
    let service = std::thread::spawn(move || {
        let mut ingress = ingress;
        let mut i = 0;
        while i < n {
            match ingress.push(request(i)) {
                Ok(()) => i += 1,
                Err(PushError::Closed(_)) => match next_version.recv() {
                    Ok(newer) => ingress = newer,
                    Err(_) => return i,
                },
                Err(e) => panic!("a blocking push waits for room: {e}"),
            }
        }
        n
    });

    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut read = 0u64;
    while let Some((user, total)) = answers.recv() {
        last.insert(user, total);
        read += 1;
        if read == n / 2 {
            job.stop_with_snapshot()?; // the answers before the stop still come
        }
    }
    let snapshot = job.wait()?.snapshot.expect("a stopped job hands back its snapshot");
    let path = std::env::temp_dir().join(format!("shardflow-upgrade-{}.snapshot", std::process::id()));
    snapshot.save(&path)?;
    let held: Vec<&str> = snapshot.operators.keys().map(String::as_str).collect();
    println!("version 1 stopped after {read} requests; snapshot of {} saved", held.join(", "));

    let restored = JobSnapshot::load(&path)?;
    std::fs::remove_file(&path).ok();
    let parallelism = engine.shards().len() as u32;
    let (job, ingress, answers) = totals(parallelism, Some(restored))?;
    let job = engine.submit(job)?;
    versions.send(ingress).expect("the service waits for the new version");
    drop(versions);
    // The service drops its handle when it has pushed everything: the input ends.
    while let Some((user, total)) = answers.recv() {
        last.insert(user, total);
        read += 1;
    }
    let pushed = service.join().expect("the service thread");
    job.wait()?;

    let mut want: HashMap<u64, u64> = HashMap::new();
    (0..n).map(request).for_each(|(user, amount)| *want.entry(user).or_default() += amount);
    assert_eq!(pushed, n);
    assert_eq!(last, want, "the totals of one uninterrupted run");
    println!(
        "version 2 (parallelism {parallelism}) took the rest: {read} requests, {} users' totals exact",
        last.len()
    );
    Ok(())
}
