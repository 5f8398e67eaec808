//! What engines leave behind once shut down or dropped: none of their own file
//! descriptors (sockets, pipes, io_uring rings, memory maps), and only the one
//! eventfd per shard that glommio 0.9 keeps of every executor that has ended
//! (upstream: DataDog/glommio#448). A test binary of its own, so no other
//! test opens or closes descriptors meanwhile.

use std::collections::BTreeMap;

use shardflow_engine::{online_cores, Cores, Dataflow, Engine, EngineBuilder};

/// Open descriptors of this process by kind: a path, or the kind of an
/// anonymous one (`anon_inode:[eventfd]`, `socket`, `pipe`, …).
fn descriptors() -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
        let Ok(target) = std::fs::read_link(entry.expect("an entry").path()) else { continue };
        let target = target.display().to_string();
        let kind = match target.split_once(":[") {
            Some((kind, _)) if kind != "anon_inode" => kind.to_string(),
            _ => target,
        };
        *kinds.entry(kind).or_insert(0) += 1;
    }
    // The directory listing itself.
    kinds.retain(|k, _| !k.starts_with("/proc/"));
    kinds
}

fn small_engine(shards: usize) -> EngineBuilder {
    Engine::builder().cores(Cores::Count(shards)).segment_bytes(4096).network_memory_bytes(16 << 20).prefault(false)
}

/// A keyed job across every shard, to its end.
fn run_a_job(engine: &Engine, shards: u32) {
    let df = Dataflow::new("descriptors").parallelism(shards);
    let counts = df.generate("numbers", 10_000, |r| r).key_by(|r: &u64| r % 7).count_final().collect();
    engine.run(df.build().expect("a valid dataflow")).expect("the job finishes");
    let counts = counts.take();
    assert_eq!((counts.len(), counts.iter().map(|(_, n)| n).sum::<u64>()), (7, 10_000), "{counts:?}");
}

const EVENTFD: &str = "anon_inode:[eventfd]";

#[test]
fn engines_that_come_and_go_leave_only_glommios_eventfd_per_shard() {
    let shards = online_cores().len().min(2);
    // One engine first: what the process opens once (lazy statics) stays.
    let engine = small_engine(shards).build().expect("engine starts");
    run_a_job(&engine, shards as u32);
    engine.shutdown();
    let before = descriptors();

    let rounds = 10;
    for round in 0..rounds {
        if round == rounds - 1 {
            let (engine, shard) = small_engine(shards).build_hosted().expect("a hosted engine starts");
            drop(shard);
            engine.shutdown();
        } else {
            let engine = small_engine(shards).build().expect("engine starts");
            run_a_job(&engine, shards as u32);
            if round % 2 == 0 {
                engine.shutdown();
            } else {
                drop(engine);
            }
        }
    }

    let after = descriptors();
    let without_eventfds = |m: &BTreeMap<String, usize>| {
        m.iter().filter(|(k, _)| k.as_str() != EVENTFD).map(|(k, n)| (k.clone(), *n)).collect::<BTreeMap<_, _>>()
    };
    assert_eq!(without_eventfds(&after), without_eventfds(&before), "the engines' own descriptors are all closed");
    let grew = after.get(EVENTFD).copied().unwrap_or(0) - before.get(EVENTFD).copied().unwrap_or(0);
    assert!(grew <= rounds * shards, "eventfds grew by {grew}, beyond glommio's one per shard started: {after:?}");
}
