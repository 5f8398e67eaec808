//! Records of the user's own rkyv types read in place: after an exchange an
//! operator reads the archive in the network buffer through the user's view
//! trait (never a deserialized copy), within a chain the owned value; strings,
//! vectors, enums and nested structs all arrive intact. Tuples of up to eight
//! parts, options and vectors of numbers or strings are records as they are.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use shardflow_benches::SplitMix;
use shardflow_engine::data::{RecordRef, RecordView};
use shardflow_engine::{Dataflow, Emitter};

use crate::common::{small_engine, TIMEOUT};

#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
enum Shipping {
    Standard,
    Express { days: u8 },
}

#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Address {
    city: String,
    zip: u32,
}

/// A user's record with a string, a vector of strings, an enum and a nested struct.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Order {
    customer: String,
    items: Vec<String>,
    shipping: Shipping,
    to: Address,
    cents: u64,
}

/// The user's view of an order, for both of its forms.
trait OrderView: RecordView<Order> {
    fn customer(&self) -> &str;
    fn items(&self) -> Vec<&str>;
    fn express_days(&self) -> Option<u8>;
    fn city(&self) -> &str;
    fn zip(&self) -> u32;
    fn cents(&self) -> u64;
}

/// Every field but the customer, ordered: a total order of one customer's orders.
fn rank(o: &dyn OrderView) -> (u64, u32, String, Vec<String>, Option<u8>) {
    let items = o.items().into_iter().map(String::from).collect();
    (o.cents(), o.zip(), o.city().to_string(), items, o.express_days())
}

impl OrderView for Order {
    fn customer(&self) -> &str {
        &self.customer
    }
    fn items(&self) -> Vec<&str> {
        self.items.iter().map(String::as_str).collect()
    }
    fn express_days(&self) -> Option<u8> {
        match self.shipping {
            Shipping::Express { days } => Some(days),
            Shipping::Standard => None,
        }
    }
    fn city(&self) -> &str {
        &self.to.city
    }
    fn zip(&self) -> u32 {
        self.to.zip
    }
    fn cents(&self) -> u64 {
        self.cents
    }
}

impl OrderView for ArchivedOrder {
    fn customer(&self) -> &str {
        &self.customer
    }
    fn items(&self) -> Vec<&str> {
        self.items.iter().map(|i| i.as_str()).collect()
    }
    fn express_days(&self) -> Option<u8> {
        match self.shipping {
            ArchivedShipping::Express { days } => Some(days),
            ArchivedShipping::Standard => None,
        }
    }
    fn city(&self) -> &str {
        &self.to.city
    }
    fn zip(&self) -> u32 {
        self.to.zip.to_native()
    }
    fn cents(&self) -> u64 {
        self.cents.to_native()
    }
}

shardflow_engine::rkyv_view!(Order as dyn OrderView);

fn orders(n: u64) -> Vec<Order> {
    let mut rng = SplitMix::new(7);
    (0..n)
        .map(|i| Order {
            customer: format!("c{}", rng.range(0, 30)),
            items: (0..rng.range(0, 4)).map(|k| format!("item-{}", (i + k) % 11)).collect(),
            shipping: if rng.range(0, 2) == 0 {
                Shipping::Express { days: rng.range(1, 3) as u8 }
            } else {
                Shipping::Standard
            },
            to: Address {
                city: ["Oslo", "Lyon", "Kyoto"][rng.range(0, 2) as usize].into(),
                zip: rng.range(1000, 9999) as u32,
            },
            cents: rng.range(1, 10_000),
        })
        .collect()
}

/// Counts the records an operator saw in each form.
#[derive(Clone, Default)]
struct Forms {
    owned: Arc<AtomicU64>,
    archived: Arc<AtomicU64>,
}

impl Forms {
    fn see(&self, o: &dyn OrderView) {
        match o.record() {
            RecordRef::Owned(_) => self.owned.fetch_add(1, Ordering::Relaxed),
            RecordRef::Archived(_) => self.archived.fetch_add(1, Ordering::Relaxed),
        };
    }
    fn get(&self) -> (u64, u64) {
        (self.owned.load(Ordering::Relaxed), self.archived.load(Ordering::Relaxed))
    }
}

#[test]
fn user_records_are_read_in_place_after_an_exchange_and_owned_within_a_chain() {
    let engine = small_engine().build().expect("engine starts");
    let input = orders(5000);
    let n = input.len() as u64;
    let (chained, after_key_by, after_rebalance) = (Forms::default(), Forms::default(), Forms::default());
    let (c, k, r) = (chained.clone(), after_key_by.clone(), after_rebalance.clone());
    let df = Dataflow::new("orders").parallelism(2);
    let per_customer = df
        .from_iter("orders", input.clone())
        .filter(move |o: &dyn OrderView| {
            c.see(o);
            true
        })
        .key_by_ref::<String, _>(|o: &dyn OrderView| o.customer())
        .as_stream()
        // Head of a vertex: the archive, forwarded unchanged to the next exchange.
        .filter(move |o: &dyn OrderView| {
            k.see(o);
            o.cents() > 0
        })
        .rebalance()
        .flat_map(move |o: &dyn OrderView, out: &mut Emitter<'_, (String, u64)>| {
            r.see(o);
            let express = u64::from(o.express_days().unwrap_or(0));
            let key = format!("{}/{}/{}", o.customer(), o.city(), o.items().join("+"));
            out.emit((key, o.cents() * 10 + express));
        })
        .key_by_ref::<String, _>(|(k, _): &(String, u64)| k)
        .reduce_final(|a: &(String, u64), b: &(String, u64)| (a.0.clone(), a.1 + b.1))
        .collect();
    engine.submit(df.build().expect("valid")).expect("submit").wait_timeout(TIMEOUT).expect("the job finishes");

    assert_eq!(chained.get(), (n, 0), "within the source's chain every order is the owned value");
    assert_eq!(after_key_by.get(), (0, n), "after key_by every order is read in place");
    assert_eq!(after_rebalance.get(), (0, n), "a forwarded archive crosses the next exchange intact");

    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for o in &input {
        let key = format!("{}/{}/{}", o.customer, o.to.city, o.items.join("+"));
        *want.entry(key).or_default() += o.cents * 10 + u64::from(o.express_days().unwrap_or(0));
    }
    let got: BTreeMap<String, u64> = per_customer.take().into_iter().collect();
    assert_eq!(got, want);
}

#[test]
fn a_view_records_state_and_collect_hold_owned_copies() {
    let engine = small_engine().build().expect("engine starts");
    let input = orders(800);
    let df = Dataflow::new("orders-collected").parallelism(2);
    let all =
        df.from_iter("orders", input.clone()).rebalance().filter(|o: &dyn OrderView| o.cents() % 2 == 0).collect();
    let last = df
        .from_iter("again", input.clone())
        .key_by_ref::<String, _>(|o: &dyn OrderView| o.customer())
        .reduce_final(
            |a: &Order, b: &dyn OrderView| if rank(b) > rank(a) { b.record().to_owned_record() } else { a.clone() },
        )
        .collect();
    engine.submit(df.build().expect("valid")).expect("submit").wait_timeout(TIMEOUT).expect("the job finishes");

    let key = |o: &Order| (o.customer.clone(), o.cents, o.items.clone(), o.to.zip);
    let mut got: Vec<Order> = all.take();
    got.sort_by_key(key);
    let mut want: Vec<Order> = input.iter().filter(|o| o.cents % 2 == 0).cloned().collect();
    want.sort_by_key(key);
    assert_eq!(got, want, "collected orders equal their originals, field by field");

    let mut best: BTreeMap<String, Order> = BTreeMap::new();
    for o in &input {
        let e = best.entry(o.customer.clone()).or_insert_with(|| o.clone());
        if rank(o) > rank(e) {
            *e = o.clone();
        }
    }
    let got: BTreeMap<String, Order> = last.take().into_iter().map(|o| (o.customer.clone(), o)).collect();
    assert_eq!(got, best);
}

/// Plain data of 8 KiB: larger than the tests' 4 KiB segments.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
struct Frame {
    samples: [u64; 1024],
}
shardflow_engine::pod_data!(Frame);

#[test]
fn records_larger_than_a_segment_cross_exchanges_whole_among_small_ones() {
    // 4 KiB segments: strings up to 300 KB and orders carrying 60 KB of items
    // each travel in a buffer of their own, in order with the small records
    // around them, through key_by and then a second exchange (an archive read
    // in place and archived again).
    let engine = small_engine().build().expect("engine starts");
    let lens = [3, 5_000, 17, 300_000, 4_089, 4_090, 70_000, 0, 12];
    let texts: Vec<String> =
        (0..60).map(|i| char::from(b'a' + (i % 26) as u8).to_string().repeat(lens[i % lens.len()])).collect();
    let mut input = orders(400);
    for o in input.iter_mut().step_by(9) {
        o.items = (0..2_000).map(|k| format!("large-item-{k:>20}")).collect();
    }
    let df = Dataflow::new("large-records").parallelism(2);
    let got_texts =
        df.from_iter("texts", texts.clone()).rebalance().key_by(|s: &str| s.len() as u64 % 3).as_stream().collect();
    df.generate("frames", 300, |i| Frame { samples: std::array::from_fn(|k| i * 10_000 + k as u64) })
        .key_by(|f: &Frame| f.samples[0] % 7)
        .as_stream()
        .map(|f: &Frame| u64::from(f.samples.iter().enumerate().all(|(k, s)| *s == f.samples[0] + k as u64)))
        .count_and_sum(|whole: &u64| *whole);
    let got_orders = df
        .from_iter("orders", input.clone())
        .key_by_ref::<String, _>(|o: &dyn OrderView| o.customer())
        .as_stream()
        .rebalance()
        .collect();
    let result =
        engine.submit(df.build().expect("valid")).expect("submit").wait_timeout(TIMEOUT).expect("the job finishes");

    assert_eq!(result.count(), (300, 300), "every 8 KiB plain record, whole (the job's one count sink)");
    let (mut got, mut want) = (got_texts.take(), texts);
    got.sort();
    want.sort();
    assert_eq!(got, want, "every string, whole");
    let key = |o: &Order| (o.customer.clone(), o.cents, o.items.clone(), o.to.zip);
    let (mut got, mut want): (Vec<Order>, _) = (got_orders.take(), input);
    got.sort_by_key(key);
    want.sort_by_key(key);
    assert!(want.iter().any(|o| o.items.len() == 2_000), "some orders are larger than a segment");
    assert_eq!(got, want, "every order, field by field");
    for pool in engine.memory() {
        assert_eq!(pool.free_segments, pool.segments, "every segment came home");
    }
}

#[test]
fn tuples_options_and_vectors_are_records_through_an_exchange_and_in_state() {
    let engine = small_engine().build().expect("engine starts");
    let df = Dataflow::new("built-in-shapes").parallelism(2);
    // (id, tag, scores, nickname): a four-part tuple of a number, a string, a
    // vector and an option.
    type Row = (u64, String, Vec<u64>, Option<String>);
    let rows: Vec<Row> = (0..500u64)
        .map(|i| (i, format!("tag-{}", i % 7), (0..i % 5).collect(), (i % 3 == 0).then(|| format!("nick-{i}"))))
        .collect();
    let by_tag = df
        .from_iter("rows", rows.clone())
        .key_by_ref::<String, _>(|r: &Row| r.1.as_str())
        .reduce_final(|acc: &Row, r: &Row| {
            let mut scores = acc.2.clone();
            scores.extend(&r.2);
            (acc.0 + r.0, acc.1.clone(), scores, acc.3.clone().or_else(|| r.3.clone()))
        })
        .collect();
    let nicknames = df
        .from_iter("nicks", rows.iter().map(|r| r.3.clone()).collect::<Vec<Option<String>>>())
        .rebalance()
        .filter(|n: &Option<String>| n.is_some())
        .collect();
    let words = df
        .from_iter("words", vec![vec!["a".to_string(), "b".to_string()], vec!["c".to_string()]])
        .rebalance()
        .map(|w: &Vec<String>| w.len() as u64)
        .collect();
    engine.submit(df.build().unwrap()).unwrap().wait_timeout(TIMEOUT).expect("the job finishes");

    let mut want: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for r in &rows {
        let e = want.entry(r.1.clone()).or_default();
        *e = (e.0 + r.0, e.1 + r.2.iter().sum::<u64>());
    }
    let got: BTreeMap<String, (u64, u64)> =
        by_tag.take().into_iter().map(|(ids, tag, scores, _)| (tag, (ids, scores.iter().sum()))).collect();
    assert_eq!(got, want, "each tag's ids and scores, through an exchange and keyed state");
    let nicknames = nicknames.take();
    assert_eq!(nicknames.len(), rows.iter().filter(|r| r.3.is_some()).count());
    assert!(nicknames.iter().all(|n| n.as_deref().is_some_and(|n| n.starts_with("nick-"))));
    let mut words = words.take();
    words.sort_unstable();
    assert_eq!(words, vec![1, 2]);
}
