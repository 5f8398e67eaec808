//! The partition writer and input gate together, through the public API: routing,
//! flushing rules, in-band event order, floating credits.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use shardflow_memory::{SegmentPool, SegmentPoolBuilder};
use shardflow_netstack::{channel, hash_route, CreditLedger, Event, GateItem, InputGate, PartitionWriter, Partitioner};

fn pool(segments: usize) -> Rc<SegmentPool> {
    Rc::new(SegmentPoolBuilder::new(0, segments).segment_bytes(4096).build().expect("pool"))
}

/// One writer with `subs` subpartitions, each feeding its own single-channel gate.
fn wire(
    pool: &Rc<SegmentPool>,
    subs: usize,
    partitioner: Partitioner,
    exclusive: u32,
    floating: u32,
) -> (PartitionWriter<[u64; 2]>, Vec<InputGate>) {
    let mut txs = Vec::new();
    let mut gates = Vec::new();
    for _ in 0..subs {
        let ledger = CreditLedger::new(1, exclusive, floating);
        let (tx, rx) = channel(ledger.initial_credits(), ledger.max_in_flight_per_channel(), 4);
        txs.push(tx);
        gates.push(InputGate::new(vec![rx], ledger));
    }
    (PartitionWriter::new(pool.clone(), txs, partitioner).expect("writer"), gates)
}

/// Everything ready in a gate now: (records, events).
fn drain(gate: &mut InputGate) -> (Vec<[u64; 2]>, Vec<Event>) {
    let (mut recs, mut events) = (Vec::new(), Vec::new());
    while let Some((_, item)) = gate.try_next().expect("gate") {
        match item {
            GateItem::Data(buf) => recs.extend_from_slice(buf.pod::<[u64; 2]>().unwrap()),
            GateItem::Event(e) => events.push(e),
        }
    }
    (recs, events)
}

#[test]
fn hash_partitioning_routes_every_record_to_its_subpartition() {
    let p = pool(64);
    let (mut w, mut gates) = wire(&p, 3, Partitioner::Hash, 8, 0);
    let records: Vec<[u64; 2]> = (0..1000u64).map(|i| [i * 7919, i]).collect();
    block_on(async {
        w.emit(&records).await.unwrap();
        w.finish().await.unwrap();
    });
    let mut total = 0;
    for (sp, gate) in gates.iter_mut().enumerate() {
        let (recs, events) = drain(gate);
        assert!(recs.iter().all(|r| hash_route(r[0], 3) == sp));
        assert_eq!(events, vec![Event::EndOfPartition]);
        total += recs.len();
    }
    assert_eq!(total, 1000);
}

#[test]
fn a_partial_buffer_waits_for_a_flush_and_an_event_flushes_first() {
    let p = pool(16);
    let (mut w, mut gates) = wire(&p, 1, Partitioner::Forward, 4, 0);
    block_on(w.emit(&[[1, 1], [2, 2]])).unwrap();
    assert_eq!(drain(&mut gates[0]), (vec![], vec![]), "a partial buffer stays until flushed");

    block_on(w.broadcast_event(Event::Watermark(42))).unwrap();
    let (recs, events) = drain(&mut gates[0]);
    assert_eq!(recs, vec![[1, 1], [2, 2]], "data before the event");
    assert_eq!(events, vec![Event::Watermark(42)]);
}

#[test]
fn the_flush_timeout_sends_a_partial_buffer_once_due() {
    let p = pool(16);
    let (mut w, mut gates) = wire(&p, 1, Partitioner::Forward, 4, 0);
    w.set_flush_timeout(Some(Duration::from_secs(3600)));
    block_on(w.emit(&[[7, 7]])).unwrap();
    let now = Instant::now();
    block_on(w.flush_if_due(now)).unwrap();
    assert!(drain(&mut gates[0]).0.is_empty(), "not due yet");
    block_on(w.flush_if_due(now + Duration::from_secs(3601))).unwrap();
    assert_eq!(drain(&mut gates[0]).0, vec![[7, 7]], "sent once the timeout passed");
}

#[test]
fn broadcast_copies_and_rebalance_alternates() {
    let p = pool(64);
    let (mut w, mut gates) = wire(&p, 2, Partitioner::Broadcast, 4, 0);
    block_on(async {
        w.emit(&[[1, 1], [2, 2], [3, 3]]).await.unwrap();
        w.finish().await.unwrap();
    });
    for g in &mut gates {
        assert_eq!(drain(g).0, vec![[1, 1], [2, 2], [3, 3]]);
    }
    let (mut w, mut gates) = wire(&p, 2, Partitioner::Rebalance, 4, 0);
    block_on(async {
        w.emit(&[[1, 1], [2, 2], [3, 3], [4, 4]]).await.unwrap();
        w.finish().await.unwrap();
    });
    assert_eq!(drain(&mut gates[0]).0, vec![[1, 1], [3, 3]]);
    assert_eq!(drain(&mut gates[1]).0, vec![[2, 2], [4, 4]]);
}

#[test]
fn floating_credits_let_a_backlogged_channel_send_beyond_its_exclusive_ones() {
    // 4 KiB segments of 16-byte records: 256 records per buffer; 3 full buffers.
    let p = pool(32);
    let ledger = CreditLedger::new(1, 1, 2);
    let (tx, rx) = channel(ledger.initial_credits(), ledger.max_in_flight_per_channel(), 4);
    let mut w = PartitionWriter::<[u64; 2]>::new(p.clone(), vec![tx], Partitioner::Forward).unwrap();
    let mut gate = InputGate::new(vec![rx], ledger);
    let records: Vec<[u64; 2]> = (0..256 * 3).map(|i| [i, i]).collect();
    let mut emit = Box::pin(w.emit(&records));
    // Hold every buffer received: no exclusive credit ever comes back, so only the
    // gate's floating credits, granted on the sender's backlog announcements, can let
    // the writer finish.
    let mut held = Vec::new();
    let mut done = false;
    for _ in 0..10 {
        if block_on(futures_lite::future::poll_once(emit.as_mut())).is_some() {
            done = true;
            break;
        }
        while let Some((_, GateItem::Data(buf))) = gate.try_next().unwrap() {
            held.push(buf);
        }
    }
    assert!(done, "floating credits unblocked the writer");
    drop(emit);
    while let Some((_, GateItem::Data(buf))) = gate.try_next().unwrap() {
        held.push(buf);
    }
    assert_eq!(held.len(), 3, "three buffers in flight on a channel with one exclusive credit");
    assert!(p.monitor().peak_in_use() <= 1 + 1 + 2, "one being filled plus exclusive plus floating");
    drop(held);
    drop(w);
    assert_eq!(p.monitor().free_segments(), 32);
}
