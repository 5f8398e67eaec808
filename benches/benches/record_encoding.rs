//! Record encoding: isolates writing records into segments and reading them back in
//! place — fixed-size plain-data records copied once through the partition writer's
//! hash routing, versus variable-size records archived with rkyv and read with
//! checked access.

#![allow(missing_docs)]

use std::rc::Rc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_lite::future::block_on;
use rkyv::{Archive, Serialize};
use shardflow_benches::exchange_records;
use shardflow_engine::Record;
use shardflow_memory::SegmentPoolBuilder;
use shardflow_netstack::{
    channel, rkyv_records, CreditLedger, GateItem, InputGate, PartitionWriter, Partitioner, RkyvWriter,
};

#[derive(Archive, Serialize)]
struct Event {
    user: u64,
    page: String,
    millis: u64,
}

fn pod_hash_partitioned(c: &mut Criterion) {
    let records = exchange_records(64 * 1024);
    let pool = Rc::new(SegmentPoolBuilder::new(0, 256).build().expect("pool"));
    let mut g = c.benchmark_group("record_encoding");
    g.throughput(Throughput::Elements(records.len() as u64));
    g.bench_function("pod_24b_hash_to_2_subpartitions_and_read", |b| {
        b.iter(|| {
            let ledgers: Vec<CreditLedger> = (0..2).map(|_| CreditLedger::new(1, 64, 0)).collect();
            let (txs, rxs): (Vec<_>, Vec<_>) =
                ledgers.iter().map(|l| channel(l.initial_credits(), l.max_in_flight_per_channel(), 2)).unzip();
            let mut w = PartitionWriter::<Record>::new(pool.clone(), txs, Partitioner::Hash).expect("writer");
            let mut gates: Vec<InputGate> =
                rxs.into_iter().zip(ledgers).map(|(rx, l)| InputGate::new(vec![rx], l)).collect();
            block_on(async {
                w.emit(&records).await.expect("emit");
                w.finish().await.expect("finish");
                let mut sum = 0u64;
                for g in &mut gates {
                    while let Some((_, item)) = g.try_next().expect("gate") {
                        if let GateItem::Data(buf) = item {
                            sum = buf
                                .pod::<Record>()
                                .expect("pod buffer")
                                .iter()
                                .fold(sum, |s, r| s.wrapping_add(r.value));
                        }
                    }
                }
                std::hint::black_box(sum)
            })
        })
    });
    let events: Vec<Event> =
        (0..4096u64).map(|i| Event { user: i, page: format!("/article/{}", i % 97), millis: i * 3 }).collect();
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("rkyv_event_archive_and_checked_read", |b| {
        b.iter(|| {
            let mut total = 0u64;
            let mut w = RkyvWriter::<Event>::new(pool.allocate().expect("segment"));
            let mut flush = |w: RkyvWriter<Event>| {
                let buf = w.finish().expect("fits");
                for e in rkyv_records::<ArchivedEvent>(&buf) {
                    total = total.wrapping_add(e.expect("valid").user.to_native());
                }
            };
            for e in &events {
                if !w.try_push(e).expect("fits a segment") {
                    flush(std::mem::replace(&mut w, RkyvWriter::new(pool.allocate().expect("segment"))));
                    assert!(w.try_push(e).expect("fits"));
                }
            }
            flush(w);
            std::hint::black_box(total)
        })
    });
    g.finish();
}

criterion_group!(benches, pod_hash_partitioned);
criterion_main!(benches);
