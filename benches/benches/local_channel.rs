//! Cross-shard channel: isolates moving filled segments from a producer thread to a
//! consumer thread through a credit-based channel and input gate (handles move, bytes
//! do not), including credit return and wake-ups. Compared with the same traffic on
//! one thread. Executor-agnostic: each side runs on `futures_lite::block_on`.

#![allow(missing_docs)]

use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_lite::future::block_on;
use shardflow_memory::SegmentPoolBuilder;
use shardflow_netstack::{channel, Buffer, CreditLedger, GateItem, InputGate};

const BUFFERS: u64 = 20_000;

/// Sends `n` full 32 KiB buffers from a producer thread to a consumer thread that
/// reads every byte; returns the elapsed time.
fn cross_thread(n: u64) -> Duration {
    let ledger = CreditLedger::new(1, 4, 4);
    let (tx, rx) = channel(ledger.initial_credits(), ledger.max_in_flight_per_channel(), 4);
    let consumer = std::thread::spawn(move || {
        let mut gate = InputGate::new(vec![rx], ledger);
        let mut sum = 0u64;
        block_on(async {
            while let Some((_, item)) = gate.next().await.expect("gate") {
                if let GateItem::Data(buf) = item {
                    sum = bytemuck::cast_slice::<u8, u64>(buf.as_bytes()).iter().fold(sum, |s, &w| s.wrapping_add(w));
                }
            }
        });
        sum
    });
    let start = Instant::now();
    let pool = SegmentPoolBuilder::new(0, 64).build().expect("pool");
    block_on(async {
        for i in 0..n {
            let mut seg = pool.allocate().expect("credits bound the pool");
            seg.as_bytes_mut().fill(i as u8);
            let len = seg.capacity_bytes();
            tx.send_data(Buffer::new(seg, 1, len).expect("fits")).await.expect("send");
        }
        tx.send_event(shardflow_netstack::Event::EndOfPartition).await.expect("eop");
    });
    std::hint::black_box(consumer.join().expect("consumer"));
    start.elapsed()
}

fn same_thread(n: u64) -> Duration {
    let pool = Rc::new(SegmentPoolBuilder::new(0, 64).build().expect("pool"));
    let ledger = CreditLedger::new(1, 4, 4);
    let (tx, rx) = channel(ledger.initial_credits(), ledger.max_in_flight_per_channel(), 4);
    let mut gate = InputGate::new(vec![rx], ledger);
    let start = Instant::now();
    block_on(async {
        let mut sum = 0u64;
        for i in 0..n {
            let mut seg = pool.allocate().expect("free");
            seg.as_bytes_mut().fill(i as u8);
            let len = seg.capacity_bytes();
            tx.send_data(Buffer::new(seg, 1, len).expect("fits")).await.expect("send");
            if let Some((_, GateItem::Data(buf))) = gate.try_next().expect("gate") {
                sum = bytemuck::cast_slice::<u8, u64>(buf.as_bytes()).iter().fold(sum, |s, &w| s.wrapping_add(w));
            }
        }
        std::hint::black_box(sum)
    });
    start.elapsed()
}

fn channels(c: &mut Criterion) {
    let mut g = c.benchmark_group("channel_32k_buffers");
    g.throughput(Throughput::Bytes(BUFFERS * 32 * 1024));
    g.sample_size(10);
    g.bench_function("cross_thread", |b| b.iter_custom(|iters| (0..iters).map(|_| cross_thread(BUFFERS)).sum()));
    g.bench_function("same_thread", |b| b.iter_custom(|iters| (0..iters).map(|_| same_thread(BUFFERS)).sum()));
    g.finish();
}

criterion_group!(benches, channels);
criterion_main!(benches);
