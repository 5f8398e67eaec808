//! Segment pool: isolates allocating and releasing segments (local free list and the
//! cross-thread return path) and filling a segment with fixed-size records through
//! `SegmentWriter`. No channels, no tasks.

#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shardflow_memory::{SegmentPoolBuilder, SegmentWriter};

fn pool(c: &mut Criterion) {
    let pool = SegmentPoolBuilder::new(0, 1024).build().expect("pool");
    let mut g = c.benchmark_group("segment_pool");
    g.throughput(Throughput::Elements(1));
    g.bench_function("allocate_release_same_thread", |b| {
        b.iter(|| drop(std::hint::black_box(pool.allocate().expect("free segment"))))
    });
    g.throughput(Throughput::Elements(256));
    g.bench_function("release_256_on_another_thread", |b| {
        b.iter_batched(
            || (0..256).map(|_| pool.allocate().expect("free segment")).collect::<Vec<_>>(),
            |segs| std::thread::spawn(move || drop(segs)).join().expect("thread"),
            BatchSize::PerIteration,
        )
    });
    let records = 32 * 1024 / 24;
    g.throughput(Throughput::Bytes((records * 24) as u64));
    g.bench_function("fill_32k_with_24b_records", |b| {
        b.iter(|| {
            let mut w = SegmentWriter::<[u64; 3]>::new(pool.allocate().expect("free segment"));
            let mut i = 0u64;
            while w.push([i, i, i]) {
                i += 1;
            }
            std::hint::black_box(w.finish())
        })
    });
    g.finish();
}

criterion_group!(benches, pool);
criterion_main!(benches);
