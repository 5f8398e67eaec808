//! The result partition and input gate together, through the public API: records
//! reach the subpartition their caller picked, flushing rules, in-band event order,
//! the overdraft and readiness under back-pressure, floating credits, framing of
//! variable-size records.

use std::future::poll_fn;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future::{block_on, poll_once};
use shardflow_memory::{Budget, BudgetKind, SegmentPool, SegmentPoolBuilder};
use shardflow_netstack::{
    channel, CreditLedger, Event, GateItem, InputGate, NetError, ProducerEnd, ResultPartition, VarRecords,
};

fn pool(segments: usize) -> Rc<SegmentPool> {
    Rc::new(SegmentPoolBuilder::new(0, segments).segment_bytes(4096).build().expect("pool"))
}

/// One partition with `subs` subpartitions, each feeding its own single-channel gate.
fn wire(
    pool: &Rc<SegmentPool>,
    subs: usize,
    exclusive: u32,
    floating: u32,
    overdraft: usize,
) -> (ResultPartition, Vec<InputGate>) {
    let mut txs = Vec::new();
    let mut gates = Vec::new();
    for _ in 0..subs {
        let ledger = CreditLedger::new(1, exclusive, floating);
        let (tx, rx) = channel(ledger.initial_credits(), ledger.max_in_flight_per_channel(), 4);
        txs.push(tx);
        gates.push(InputGate::new(vec![rx], ledger));
    }
    (ResultPartition::new(pool.clone(), txs, overdraft), gates)
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

/// Writes `[i, i]` for i = 0, 1, … in one step (never looking at readiness)
/// until a write is refused: how many were taken, and the refusal.
fn write_until_refused(w: &mut ResultPartition) -> (u64, NetError) {
    let mut i = 0u64;
    loop {
        match w.write_pod(0, &[i, i]) {
            Ok(()) => i += 1,
            Err(e) => return (i, e),
        }
    }
}

/// Lets the consumer `read` the gate until the partition is ready again, then
/// once more.
fn read_until_ready(w: &mut ResultPartition, gate: &mut InputGate, mut read: impl FnMut(&mut InputGate)) {
    loop {
        read(gate);
        if let Some(r) = block_on(poll_once(poll_fn(|cx| w.poll_ready(cx)))) {
            r.unwrap();
            break;
        }
    }
    read(gate);
}

fn ready(w: &mut ResultPartition) -> Result<(), NetError> {
    block_on(poll_fn(|cx| w.poll_ready(cx)))
}

#[test]
fn records_reach_the_subpartition_their_caller_picked() {
    let p = pool(64);
    let (mut w, mut gates) = wire(&p, 3, 8, 0, 4);
    for i in 0..1000u64 {
        w.write_pod((i % 3) as usize, &[i, i]).unwrap();
    }
    w.finish().unwrap();
    ready(&mut w).unwrap();
    for (sp, gate) in gates.iter_mut().enumerate() {
        let (recs, events) = drain(gate);
        assert!(recs.iter().all(|r| r[0] % 3 == sp as u64));
        assert_eq!(recs.len(), if sp == 0 { 334 } else { 333 });
        assert_eq!(events, vec![Event::EndOfPartition]);
    }
    assert_eq!(w.records_out(), 1000);
    assert_eq!(w.write_pod(0, &[1u64, 1]), Err(NetError::PartitionClosed), "finished: closed");
}

/// A route for record `i`: mostly one subpartition, now and then every one.
fn route(i: u64, subs: usize) -> Option<usize> {
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    (h % 11 != 0).then_some((h % subs as u64) as usize)
}

#[test]
fn batches_routed_in_one_call_land_as_record_by_record_writes_do() {
    // Batches of odd sizes across segment boundaries (a 4 KiB segment holds 256
    // records), with broadcasts among them, against the same records written one
    // by one: to few subpartitions, to more, and to more than the tight loops
    // take (record by record).
    for subs in [1, 2, 3, 8, 9, 64, 65] {
        let p = pool(1024);
        let (mut batched, mut batched_gates) = wire(&p, subs, 64, 0, 64);
        let (mut single, mut single_gates) = wire(&p, subs, 64, 0, 64);
        let records: Vec<[u64; 2]> = (0..5000u64).map(|i| [i, i * 7]).collect();
        let mut calls = 0;
        for batch in records.chunks(173) {
            batched
                .write_pod_routed(batch, |r| {
                    calls += 1;
                    route(r[0], subs)
                })
                .unwrap();
        }
        assert_eq!(calls, records.len(), "the route is asked once per record");
        for r in &records {
            match route(r[0], subs) {
                Some(sp) => single.write_pod(sp, r).unwrap(),
                None => (0..subs).for_each(|sp| single.write_pod(sp, r).unwrap()),
            }
        }
        assert_eq!(batched.records_out(), single.records_out());
        for w in [&mut batched, &mut single] {
            w.finish().unwrap();
            ready(w).unwrap();
        }
        for (b, s) in batched_gates.iter_mut().zip(&mut single_gates) {
            let (got, want) = (drain(b), drain(s));
            assert!(!want.0.is_empty());
            assert_eq!(got, want, "{subs} subpartitions: same records, same order");
        }
    }
}

#[test]
fn a_route_to_a_subpartition_that_does_not_exist_is_a_typed_error() {
    let p = pool(16);
    let (mut w, _gates) = wire(&p, 2, 8, 0, 4);
    let records = [[1u64, 1], [2, 2], [3, 3]];
    let e = w.write_pod_routed(&records, |r| Some(if r[0] == 3 { 5 } else { 0 })).unwrap_err();
    assert_eq!(e, NetError::NoSuchSubpartition { subpartition: 5, subpartitions: 2 });
    assert_eq!(w.records_out(), 2, "the records before it are written");
}

#[test]
fn a_partial_buffer_waits_for_a_flush_and_an_event_flushes_first() {
    let p = pool(16);
    let (mut w, mut gates) = wire(&p, 1, 4, 0, 4);
    w.write_pod(0, &[1u64, 1]).unwrap();
    w.write_pod(0, &[2u64, 2]).unwrap();
    assert_eq!(drain(&mut gates[0]), (vec![], vec![]), "a partial buffer stays until flushed");

    w.broadcast_event(Event::Watermark(42)).unwrap();
    ready(&mut w).unwrap();
    let (recs, events) = drain(&mut gates[0]);
    assert_eq!(recs, vec![[1, 1], [2, 2]], "data before the event");
    assert_eq!(events, vec![Event::Watermark(42)]);
}

#[test]
fn the_flush_timeout_sends_a_partial_buffer_once_due() {
    let p = pool(16);
    let (mut w, mut gates) = wire(&p, 1, 4, 0, 4);
    let timeout = Duration::from_secs(3600);
    w.set_flush_timeout(Some(timeout));
    assert!(!w.awaits_flush(), "nothing written, nothing to look at");
    w.write_pod(0, &[7u64, 7]).unwrap();
    assert!(w.awaits_flush());
    // The wait counts from the first look that finds the buffer.
    let first_look = Instant::now() + Duration::from_secs(60);
    w.flush_if_due(first_look);
    w.flush_if_due(first_look + timeout - Duration::from_nanos(1));
    assert!(drain(&mut gates[0]).0.is_empty(), "not due yet");
    w.flush_if_due(first_look + timeout);
    assert_eq!(drain(&mut gates[0]).0, vec![[7, 7]], "sent once the timeout passed");
    assert!(!w.awaits_flush(), "flushed: nothing waits");

    // A later buffer's wait starts afresh at its own first look.
    w.write_pod(0, &[8u64, 8]).unwrap();
    let again = first_look + 3 * timeout;
    w.flush_if_due(again);
    assert!(drain(&mut gates[0]).0.is_empty(), "an earlier buffer's wait does not carry over");
    w.flush_if_due(again + timeout);
    assert_eq!(drain(&mut gates[0]).0, vec![[8, 8]]);
}

#[test]
fn without_a_flush_timeout_nothing_awaits_a_timed_flush() {
    let p = pool(16);
    let (mut w, mut gates) = wire(&p, 1, 4, 0, 4);
    w.write_pod(0, &[7u64, 7]).unwrap();
    assert!(!w.awaits_flush());
    w.flush_if_due(Instant::now() + Duration::from_secs(1 << 20));
    assert!(drain(&mut gates[0]).0.is_empty(), "no timeout: the buffer waits for a flush");
    w.flush();
    assert_eq!(drain(&mut gates[0]).0, vec![[7, 7]]);
}

#[test]
fn without_credit_writes_go_on_into_the_overdraft_and_readiness_waits_for_the_consumer() {
    // 4 KiB segments of 16-byte records: 256 records per buffer. One exclusive
    // credit, no floating ones, an overdraft of 2 buffers.
    let p = pool(16);
    let (mut w, mut gates) = wire(&p, 1, 1, 0, 2);
    let mut i = 0u64;
    while !w.overdrawn() {
        w.write_pod(0, &[i, i]).unwrap();
        i += 1;
    }
    // One buffer went out on the credit; three wait: one more than the overdraft.
    assert_eq!(i, 256 * 4 + 1, "writing never waited");
    assert!(block_on(poll_once(poll_fn(|cx| w.poll_ready(cx)))).is_none(), "not ready: no credit");
    let mut got = Vec::new();
    // Each buffer drained (and dropped) returns its credit.
    read_until_ready(&mut w, &mut gates[0], |g| got.extend(drain(g).0));
    assert!(!w.overdrawn());
    w.finish().unwrap();
    loop {
        let (recs, events) = drain(&mut gates[0]);
        got.extend(recs);
        if events == vec![Event::EndOfPartition] {
            break;
        }
        if let Some(r) = block_on(poll_once(poll_fn(|cx| w.poll_ready(cx)))) {
            r.unwrap();
        }
    }
    let want: Vec<[u64; 2]> = (0..i).map(|k| [k, k]).collect();
    assert_eq!(got, want, "nothing lost, in order");
    drop(w);
    drop(gates);
    assert_eq!(p.monitor().free_segments(), 16, "every segment came home");
}

#[test]
fn segments_beyond_the_reservation_are_charged_to_the_network_memory_and_refused_once_it_is_spent() {
    // One subpartition of 4 KiB segments (256 records each), one exclusive credit,
    // an overdraft of 2: a buffer being filled, one in flight, one a step may
    // complete past the overdraft, and the overdraft: 5 segments reserved.
    let seg = 4096u64;
    assert_eq!(ResultPartition::reserved_segments(1, 1, 2), 5);
    let p = pool(16);
    let (mut w, mut gates) = wire(&p, 1, 1, 0, 2);
    // The shard's network memory: this task's reservation and 3 segments more.
    let network = Budget::new(BudgetKind::NetworkBuffers, 8 * seg);
    let reservation = network.reserve(5 * seg).unwrap();
    w.charge_overdraft_to(network.clone());

    // One step that never lets the task look: 1 buffer goes out on the credit,
    // 4 wait within the reservation, 3 more are charged, the next is refused.
    let (i, err) = write_until_refused(&mut w);
    assert_eq!(i, 8 * 256, "8 full buffers written");
    assert_eq!(network.available_bytes(), 0, "3 segments charged beyond the reservation");
    match &err {
        NetError::OverdraftExhausted { pending: 7, overdraft: 2, source } => {
            assert!(source.to_string().contains("0 of 32768 bytes available"), "{source}");
        }
        other => panic!("expected the overdraft to be exhausted, got {other:?}"),
    }
    assert_eq!(p.monitor().free_segments(), 8, "the other half of the pool stays for other tasks");

    // The consumer drains: each charged buffer gives its charge back as it drops.
    let mut got = Vec::new();
    read_until_ready(&mut w, &mut gates[0], |g| got.extend(drain(g).0));
    assert_eq!(network.used_bytes(), 5 * seg, "only the reservation is held");
    // Nothing written was lost, and the partition writes on.
    w.write_pod(0, &[i, i]).expect("within the reservation again");
    w.finish().unwrap();
    ready(&mut w).unwrap();
    got.extend(drain(&mut gates[0]).0);
    let want: Vec<[u64; 2]> = (0..=i).map(|k| [k, k]).collect();
    assert_eq!(got, want, "nothing lost, in order");
    drop((w, gates, reservation));
    assert_eq!(network.used_bytes(), 0);
    assert_eq!(p.monitor().free_segments(), 16, "every segment came home");
}

#[test]
fn past_the_network_memory_buffers_spill_to_the_heap_and_read_as_segments_do() {
    // As above: 5 segments reserved, and no network memory to spare at all.
    let seg = 4096u64;
    let p = pool(16);
    let (mut w, mut gates) = wire(&p, 1, 1, 0, 2);
    let network = Budget::new(BudgetKind::NetworkBuffers, 5 * seg);
    let reservation = network.reserve(5 * seg).unwrap();
    let managed = Budget::new(BudgetKind::ManagedMemory, 3 * seg);
    w.charge_overdraft_to(network.clone());
    w.spill_to(managed.clone());

    // One step: 1 buffer out on the credit, 4 waiting within the reservation,
    // then 3 on the heap, charged to the managed memory; the next is refused.
    let (i, err) = write_until_refused(&mut w);
    assert_eq!(i, 8 * 256);
    assert_eq!(managed.available_bytes(), 0, "3 buffers spilled");
    assert_eq!(p.monitor().free_segments(), 11, "the pool gave no more than the reservation");
    match &err {
        NetError::OverdraftExhausted { pending: 7, source, .. } => {
            assert!(source.to_string().starts_with("managed memory budget exceeded"), "{source}");
        }
        other => panic!("expected the overdraft to be exhausted, got {other:?}"),
    }

    // The consumer reads every buffer in order, spilled or not.
    let (mut got, mut spilled) = (Vec::new(), 0);
    read_until_ready(&mut w, &mut gates[0], |gate| {
        while let Some((_, item)) = gate.try_next().expect("gate") {
            if let GateItem::Data(buf) = item {
                spilled += usize::from(buf.is_spilled());
                got.extend_from_slice(buf.pod::<[u64; 2]>().unwrap());
            }
        }
    });
    assert_eq!(spilled, 3);
    assert_eq!(got, (0..i).map(|k| [k, k]).collect::<Vec<_>>(), "nothing lost, in order");
    assert_eq!(managed.used_bytes(), 0, "the spill is given back as its buffers drop");
    drop((w, gates, reservation));
    assert_eq!(p.monitor().free_segments(), 16, "every segment came home");
}

#[test]
fn floating_credits_let_a_backlogged_channel_send_beyond_its_exclusive_ones() {
    let p = pool(32);
    let (mut w, mut gates) = wire(&p, 1, 1, 2, 8);
    for i in 0..256 * 3 {
        w.write_pod(0, &[i as u64, 0]).unwrap();
    }
    w.flush();
    // Hold every buffer received: no exclusive credit ever comes back, so only the
    // gate's floating credits, granted on the sender's backlog announcements, can
    // let the partition drain.
    let mut held = Vec::new();
    let mut done = false;
    for _ in 0..10 {
        if let Some(r) = block_on(poll_once(poll_fn(|cx| w.poll_ready(cx)))) {
            r.unwrap();
            done = true;
            break;
        }
        while let Some((_, GateItem::Data(buf))) = gates[0].try_next().unwrap() {
            held.push(buf);
        }
    }
    assert!(done, "floating credits drained the partition");
    while let Some((_, GateItem::Data(buf))) = gates[0].try_next().unwrap() {
        held.push(buf);
    }
    assert_eq!(held.len(), 3, "three buffers in flight on a channel with one exclusive credit");
    drop(held);
    drop(w);
    assert_eq!(p.monitor().free_segments(), 32);
}

#[test]
fn variable_size_records_are_framed_aligned_and_a_too_large_one_is_typed() {
    let p = pool(8);
    let (mut w, mut gates) = wire(&p, 1, 8, 0, 4);
    let words: Vec<String> = (0..500).map(|i| format!("word-{i}").repeat(1 + i % 5)).collect();
    for word in &words {
        write_bytes(&mut w, word.as_bytes()).unwrap();
    }
    let too_large = write_bytes(&mut w, &[7u8; 5000]);
    assert_eq!(
        too_large,
        Err(NetError::RecordTooLarge { record_bytes: 5000, segment_bytes: 4096 }),
        "no managed memory for a buffer of its own: refused with its measured size"
    );
    w.finish().unwrap();
    ready(&mut w).unwrap();
    let mut got = Vec::new();
    while let Some((_, item)) = gates[0].try_next().unwrap() {
        if let GateItem::Data(buf) = item {
            let mut n = 0;
            for rec in VarRecords::new(&buf, 8) {
                let bytes = rec.unwrap();
                assert_eq!(bytes.as_ptr() as usize % 8, 0, "each record starts aligned");
                got.push(String::from_utf8(bytes.to_vec()).unwrap());
                n += 1;
            }
            assert_eq!(n, buf.records());
        }
    }
    assert_eq!(got, words);
}

/// Writes `bytes` as one variable-size record aligned to 8 (into a buffer of
/// its own where no segment holds it).
fn write_bytes(w: &mut ResultPartition, bytes: &[u8]) -> Result<(), NetError> {
    let encode = |room: &mut [u8]| {
        (bytes.len() <= room.len()).then(|| {
            room[..bytes.len()].copy_from_slice(bytes);
            bytes.len()
        })
    };
    w.write_var(0, 8, encode, || Some(bytes.len()))
}

/// Every record of the buffers ready in `gate`, and how many buffers held them.
fn var_records(gate: &mut InputGate) -> (Vec<Vec<u8>>, usize) {
    let (mut got, mut buffers) = (Vec::new(), 0);
    while let Some((_, item)) = gate.try_next().unwrap() {
        if let GateItem::Data(buf) = item {
            buffers += 1;
            let records: Vec<Vec<u8>> = VarRecords::new(&buf, 8).map(|r| r.unwrap().to_vec()).collect();
            assert_eq!(records.len(), buf.records());
            got.extend(records);
        }
    }
    (got, buffers)
}

#[test]
fn a_record_larger_than_a_segment_travels_whole_in_order_charged_to_managed_memory() {
    let p = pool(8);
    let (mut w, mut gates) = wire(&p, 1, 8, 0, 4);
    let managed = Budget::new(BudgetKind::ManagedMemory, 64 << 10);
    let records: Vec<Vec<u8>> = vec![vec![1; 100], vec![2; 5000], vec![3; 100], vec![4; 40_000], vec![5; 4000]];
    assert_eq!(
        write_bytes(&mut w, &records[1]),
        Err(NetError::RecordTooLarge { record_bytes: 5000, segment_bytes: 4096 }),
        "no managed memory to put it in: refused with the sizes"
    );
    w.spill_to(managed.clone());
    for r in &records {
        write_bytes(&mut w, r).unwrap();
    }
    assert_eq!(managed.used_bytes(), (8 << 10) + (40 << 10), "each large record's pages, while it is in flight");
    // Over what the task's managed memory has left: refused, with the numbers.
    match write_bytes(&mut w, &vec![6; 20_000]) {
        Err(e @ NetError::RecordOverBudget { record_bytes: 20_000, .. }) => {
            assert!(e.to_string().contains("20000 bytes") && e.to_string().contains("16384"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    w.finish().unwrap();
    ready(&mut w).unwrap();
    let (got, buffers) = var_records(&mut gates[0]);
    assert_eq!(got, records, "whole, in the order written");
    assert_eq!(buffers, 5, "small records share a segment; each large one has a buffer of its own");
    assert_eq!(managed.used_bytes(), 0, "read and dropped: the memory is back");
    assert_eq!(w.records_out(), 5);
}

#[test]
fn a_plain_record_larger_than_a_segment_travels_alone_charged_to_managed_memory() {
    // 8 KiB records in 4 KiB segments, one by one and in routed batches.
    type Big = [u64; 1024];
    let p = pool(8);
    let (mut w, mut gates) = wire(&p, 2, 16, 0, 4);
    let big = |i: u64| -> Big { std::array::from_fn(|k| i * 10_000 + k as u64) };
    assert_eq!(
        w.write_pod(0, &big(0)),
        Err(NetError::RecordTooLarge { record_bytes: 8192, segment_bytes: 4096 }),
        "no managed memory to put it in"
    );
    let managed = Budget::new(BudgetKind::ManagedMemory, 1 << 20);
    w.spill_to(managed.clone());
    w.write_pod(1, &big(1)).unwrap();
    let batch: Vec<Big> = (2..8).map(big).collect();
    w.write_pod_routed(&batch, |r| Some((r[0] / 10_000 % 2) as usize)).unwrap();
    assert_eq!(managed.used_bytes(), 7 * 8192, "each record's pages while it is in flight");
    w.finish().unwrap();
    ready(&mut w).unwrap();
    for (sp, gate) in gates.iter_mut().enumerate() {
        let mut got = Vec::new();
        while let Some((_, item)) = gate.try_next().unwrap() {
            if let GateItem::Data(buf) = item {
                got.extend(buf.pod::<Big>().unwrap().iter().map(|r| r[0] / 10_000));
                assert!(buf.pod::<Big>().unwrap().iter().all(|r| r[1023] == r[0] + 1023), "whole");
            }
        }
        let want: Vec<u64> = (1..8).filter(|i| *i as usize % 2 == sp).collect();
        assert_eq!(got, want, "subpartition {sp}: in order");
    }
    assert_eq!(managed.used_bytes(), 0, "read and dropped: the memory is back");
}

#[test]
fn a_producer_that_fails_or_is_cancelled_says_so_to_the_consumer_and_one_merely_gone_does_not() {
    let p = pool(8);
    let (w, mut gates) = wire(&p, 2, 2, 0, 4);
    w.end(&ProducerEnd::Failed("operator panicked: record 7 is poison".into()));
    drop(w);
    for (i, gate) in gates.iter_mut().enumerate() {
        let e = gate.try_next().expect_err("the producer is gone before end of partition");
        let end = ProducerEnd::Failed("operator panicked: record 7 is poison".into());
        assert_eq!(e, NetError::ProducerLost { channel: 0, end: Some(end) });
        assert_eq!(e.to_string(), "input channel 0: its producer failed: operator panicked: record 7 is poison", "{i}");
    }
    let (w, mut gates) = wire(&p, 1, 2, 0, 4);
    w.end(&ProducerEnd::Cancelled("the job was cancelled".into()));
    drop(w);
    let e = gates[0].try_next().expect_err("cancelled");
    assert_eq!(e.to_string(), "input channel 0: its producer was cancelled: the job was cancelled");
    let (w, mut gates) = wire(&p, 1, 2, 0, 4);
    drop(w);
    let e = gates[0].try_next().expect_err("gone");
    assert_eq!(e.to_string(), "input channel 0: the producer went away before end of partition");
}
