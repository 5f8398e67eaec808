//! Shard dumps: asked of the worker once and handed to every client waiting;
//! an unknown, silent or lost worker's refused clearly.

use super::*;

fn dump_of(worker: WorkerId) -> ShardDump {
    ShardDump { worker, shards: vec![ShardDumpEntry { shard: 0, core: 3, cpu_ms: Some(120), tasks: vec![] }] }
}

fn request_dump(h: &mut Harness, client: ConnId, worker: WorkerId, timeout_ms: u64, now: Instant) -> Vec<Output> {
    h.c.on_message(now, client, Message::RequestWorkerDump(RequestWorkerDump { worker, timeout_ms }))
}

#[test]
fn a_shard_dump_is_asked_of_the_worker_once_and_handed_to_every_client_waiting() {
    let mut h = Harness::new();
    let t0 = h.t0;
    let w = h.register(1, "w1", vec![3]);
    let _another = h.register(2, "w2", vec![4]);
    let out = request_dump(&mut h, 10, w, 5000, at(t0, 1));
    match &out[..] {
        [Output::Send(1, Message::RequestShardDump(r))] => assert_eq!(r.resource_manager, RM),
        other => panic!("{other:?}"),
    }
    assert!(request_dump(&mut h, 11, w, 5000, at(t0, 2)).is_empty(), "the request in flight serves both");
    assert!(h.c.next_deadline() <= at(t0, 5001));

    // Only the worker itself may answer for itself.
    let out = h.c.on_message(at(t0, 3), 2, Message::ShardDump(dump_of(w)));
    assert!(matches!(&out[..], [Output::Send(2, Message::ErrorReply(_)), Output::Close(2)]), "{out:?}");

    let out = h.c.on_message(at(t0, 4), 1, Message::ShardDump(dump_of(w)));
    let mut to: Vec<ConnId> = out
        .iter()
        .map(|o| match o {
            Output::Send(c, Message::ShardDump(d)) => {
                assert_eq!(*d, dump_of(w));
                *c
            }
            other => panic!("{other:?}"),
        })
        .collect();
    to.sort();
    assert_eq!(to, vec![10, 11]);
    assert!(h.c.on_message(at(t0, 5), 1, Message::ShardDump(dump_of(w))).is_empty(), "a late answer goes nowhere");
}

#[test]
fn a_shard_dump_request_fails_clearly_for_an_unknown_a_silent_or_a_lost_worker() {
    let mut h = Harness::new();
    let t0 = h.t0;
    let error = |out: &[Output], conn: ConnId| match out {
        [Output::Send(c, Message::ErrorReply(e)), Output::Close(d)] if *c == conn && *d == conn => e.clone(),
        other => panic!("{other:?}"),
    };
    let e = error(&request_dump(&mut h, 10, WorkerId(9), 1000, t0), 10);
    assert_eq!(e.code, ErrorCode::UnknownWorker);

    let w = h.register(1, "w1", vec![3]);
    request_dump(&mut h, 11, w, 1000, at(t0, 10));
    assert!(h.c.on_tick(at(t0, 500)).iter().all(|o| !matches!(o, Output::Send(11, _))));
    let out: Vec<Output> = h.c.on_tick(at(t0, 1010)).into_iter().filter(|o| !matches!(o, Output::Send(1, _))).collect();
    let e = error(&out, 11);
    assert_eq!(e.code, ErrorCode::Internal);
    assert!(e.message.contains("did not answer"), "{}", e.message);

    request_dump(&mut h, 12, w, 60_000, at(t0, 1100));
    let out: Vec<Output> =
        h.c.on_disconnect(at(t0, 1200), 1).into_iter().filter(|o| !matches!(o, Output::Close(1))).collect();
    let e = error(&out, 12);
    assert_eq!(e.code, ErrorCode::UnknownWorker);
    assert!(e.message.contains("lost"), "{}", e.message);
}
