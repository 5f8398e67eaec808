//! Record encoding through a result partition: fixed-size plain data copied once
//! and read in place as a slice, versus variable-size records archived with rkyv
//! (a struct with a string, and bare words) and read with checked access — the
//! struct deserialized per record (`rkyv_data!`) or read in place through its
//! view (`rkyv_view!`) — the engine's encodings, as a task writes and reads them;
//! and strings larger than a segment, each in a buffer of its own.

#![allow(missing_docs)]

use std::rc::Rc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardflow_benches::exchange_records;
use shardflow_engine::data::{Buffer, ResultPartition};
use shardflow_engine::jobs::KeyValue;
use shardflow_engine::{key_hash, Data};
use shardflow_memory::{Budget, BudgetKind, SegmentPool, SegmentPoolBuilder};
use shardflow_netstack::{channel, CreditLedger, GateItem, InputGate};

#[derive(Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Event {
    user: u64,
    page: String,
    millis: u64,
}
shardflow_engine::rkyv_data!(Event);

/// `Event`'s twin, read in place through a view.
#[derive(Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Visit {
    user: u64,
    page: String,
    millis: u64,
}

trait VisitView: shardflow_engine::data::RecordView<Visit> {
    fn user(&self) -> u64;
    fn page(&self) -> &str;
    fn millis(&self) -> u64;
}

impl VisitView for Visit {
    fn user(&self) -> u64 {
        self.user
    }
    fn page(&self) -> &str {
        &self.page
    }
    fn millis(&self) -> u64 {
        self.millis
    }
}

impl VisitView for ArchivedVisit {
    fn user(&self) -> u64 {
        self.user.to_native()
    }
    fn page(&self) -> &str {
        &self.page
    }
    fn millis(&self) -> u64 {
        self.millis.to_native()
    }
}
shardflow_engine::rkyv_view!(Visit as dyn VisitView);

/// Writes records with `write` into a partition of two subpartitions, then
/// reads every buffer back, calling `read` on each.
fn through_partition(pool: &Rc<SegmentPool>, write: impl FnOnce(&mut ResultPartition), mut read: impl FnMut(&Buffer)) {
    let ledgers: Vec<CreditLedger> = (0..2).map(|_| CreditLedger::new(1, 512, 0)).collect();
    let (txs, rxs): (Vec<_>, Vec<_>) =
        ledgers.iter().map(|l| channel(l.initial_credits(), l.max_in_flight_per_channel(), 2)).unzip();
    let mut partition = ResultPartition::new(pool.clone(), txs, 512);
    // Where records larger than a segment go (a task's managed memory).
    partition.spill_to(Budget::new(BudgetKind::ManagedMemory, 1 << 30));
    write(&mut partition);
    partition.finish().expect("finish");
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    assert!(partition.poll_ready(&mut cx).is_ready(), "credits cover the bench's buffers");
    for (rx, l) in rxs.into_iter().zip(ledgers) {
        let mut gate = InputGate::new(vec![rx], l);
        while let Some((_, item)) = gate.try_next().expect("gate") {
            if let GateItem::Data(buf) = item {
                read(&buf);
            }
        }
    }
}

/// Writes `records` one call per record, routed by the hash of `key`.
fn one_by_one<'a, T: Data>(
    records: &'a [T],
    key: impl Fn(&T::Borrowed) -> u64 + 'a,
) -> impl FnOnce(&mut ResultPartition) + 'a {
    move |partition| {
        for r in records {
            let b = std::borrow::Borrow::borrow(r);
            T::write(b, partition, (key_hash(&key(b)) & 1) as usize).expect("write");
        }
    }
}

/// Sums the values of a buffer of `KeyValue`s into `sum`.
fn sum_values(sum: &mut u64) -> impl FnMut(&Buffer) + '_ {
    |buf| {
        let slice = KeyValue::slice(buf).expect("pod").unwrap_or(&[]);
        *sum = slice.iter().fold(*sum, |s, r| s.wrapping_add(r.value));
    }
}

fn record_encoding(c: &mut Criterion) {
    let pool = Rc::new(SegmentPoolBuilder::new(0, 1024).build().expect("pool"));
    let mut g = c.benchmark_group("record_encoding");

    let records = exchange_records(64 * 1024);
    g.throughput(Throughput::Elements(records.len() as u64));
    g.bench_function("pod_16b_write_route_read_slice", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            through_partition(&pool, one_by_one(&records, |r| r.key), sum_values(&mut sum));
            std::hint::black_box(sum)
        })
    });
    // As a task's writer does: batches of 256, each routed and copied in one call.
    g.bench_function("pod_16b_write_routed_batches_read_slice", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            let write = |partition: &mut ResultPartition| {
                for batch in records.chunks(256) {
                    KeyValue::write_routed(batch, partition, |r| Some((key_hash(&r.key) & 1) as usize)).expect("write");
                }
            };
            through_partition(&pool, write, sum_values(&mut sum));
            std::hint::black_box(sum)
        })
    });

    let events: Vec<Event> =
        (0..16 * 1024u64).map(|i| Event { user: i, page: format!("/article/{}", i % 97), millis: i * 3 }).collect();
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("rkyv_event_write_route_checked_read", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            through_partition(&pool, one_by_one(&events, |e| e.user), |buf| {
                let mut cursor = 0;
                Event::each(buf, &mut cursor, &mut |e| {
                    sum = sum.wrapping_add(e.millis + e.page.len() as u64);
                    true
                })
                .expect("valid");
            });
            std::hint::black_box(sum)
        })
    });

    let visits: Vec<Visit> =
        events.iter().map(|e| Visit { user: e.user, page: e.page.clone(), millis: e.millis }).collect();
    g.bench_function("rkyv_event_view_write_route_checked_read_in_place", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            through_partition(&pool, one_by_one(&visits, |v| v.user()), |buf| {
                let mut cursor = 0;
                Visit::each(buf, &mut cursor, &mut |v| {
                    sum = sum.wrapping_add(v.millis() + v.page().len() as u64);
                    true
                })
                .expect("valid");
            });
            std::hint::black_box(sum)
        })
    });

    let words: Vec<String> = (0..64 * 1024u64).map(|i| format!("w{}", i % 100_000)).collect();
    g.throughput(Throughput::Elements(words.len() as u64));
    g.bench_function("rkyv_word_write_route_checked_read_in_place", |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            through_partition(&pool, one_by_one(&words, |w| w.len() as u64), |buf| {
                let mut cursor = 0;
                String::each(buf, &mut cursor, &mut |w: &str| {
                    bytes += w.len();
                    true
                })
                .expect("valid");
            });
            std::hint::black_box(bytes)
        })
    });

    // 100 KB strings: larger than a 32 KiB segment, each archived on the heap
    // and sent in a buffer of its own.
    let large: Vec<String> = (0..64u8).map(|i| char::from(b'a' + i % 26).to_string().repeat(100_000)).collect();
    g.throughput(Throughput::Bytes(large.iter().map(|s| s.len() as u64).sum()));
    g.bench_function("rkyv_100kb_string_write_route_checked_read_in_place", |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            through_partition(&pool, one_by_one(&large, |s| s.len() as u64), |buf| {
                let mut cursor = 0;
                String::each(buf, &mut cursor, &mut |s: &str| {
                    bytes += s.len();
                    true
                })
                .expect("valid");
            });
            assert_eq!(bytes, 6_400_000, "every string, whole");
            std::hint::black_box(bytes)
        })
    });
    g.finish();
}

criterion_group!(benches, record_encoding);
criterion_main!(benches);
