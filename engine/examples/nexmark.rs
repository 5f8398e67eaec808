//! Two Nexmark queries over an online auction's three streams: people
//! (variable-size records through rkyv, with their names and addresses),
//! auctions and bids (plain fixed-size records, read in place). Each query
//! joins two streams by a key in a keyed co-process function: whichever
//! side of a key comes first waits in keyed state for the other, since the
//! streams' sources run in parallel and nothing orders one after the other.
//!
//! - Q3, local item suggestion: who sells in category 10 from Oregon, Idaho
//!   or California, with the auctions' ids (persons ⋈ auctions on seller).
//! - Q4, average closing price per category: each auction closes (here, at
//!   the end of input) at its highest bid if that reaches the reserve
//!   (auctions ⋈ bids on auction id), then an aggregate per category.
//!
//! Both are checked against a naive evaluation of the same events.
//!
//! `cargo run --release -p shardflow-engine --example nexmark`

use std::collections::{BTreeMap, HashMap};

use bytemuck::{Pod, Zeroable};
use shardflow_engine::{
    Aggregator, Dataflow, Emitter, Engine, EngineError, KeyedCoProcessFunction, KeyedContext, ListState, OperatorError,
    StateDeclarations, ValueState,
};

const PERSONS: u64 = 20_000;
const AUCTIONS: u64 = 60_000;
const BIDS: u64 = 300_000;
const CATEGORIES: u64 = 20;
const STATES: [&str; 6] = ["OR", "ID", "CA", "WA", "NV", "AZ"];
const CITIES: [&str; 5] = ["Portland", "Boise", "San Francisco", "Seattle", "Reno"];

/// A person who may sell and bid.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Person {
    id: u64,
    name: String,
    city: String,
    state: String,
}
shardflow_engine::rkyv_data!(Person);

/// An item for sale by `seller`, sold only at `reserve` or above.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Auction {
    id: u64,
    seller: u64,
    category: u64,
    reserve: u64,
}
shardflow_engine::pod_data!(Auction);

/// An offer of `price` for `auction`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Bid {
    auction: u64,
    bidder: u64,
    price: u64,
}
shardflow_engine::pod_data!(Bid);

/// A well-spread number from `i` and a stream's `salt` (the generator's dice).
fn mix(i: u64, salt: u64) -> u64 {
    let x = (i ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x ^ (x >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9) ^ (x >> 32)
}

fn person(i: u64) -> Person {
    let m = mix(i, 1);
    Person {
        id: i,
        name: format!("person-{i}"),
        city: CITIES[(m % 5) as usize].to_string(),
        state: STATES[(m / 5 % 6) as usize].to_string(),
    }
}

fn auction(i: u64) -> Auction {
    let m = mix(i, 2);
    Auction { id: i, seller: m % PERSONS, category: (m >> 20) % CATEGORIES, reserve: 100 + (m >> 40) % 1_400 }
}

fn bid(i: u64) -> Bid {
    let m = mix(i, 3);
    Bid { auction: m % AUCTIONS, bidder: (m >> 20) % PERSONS, price: 10 + (m >> 36) % 1_500 }
}

/// Q3: a seller's auctions of category 10, named once the seller is known.
#[derive(Clone, Default)]
struct LocalItems {
    seller: ValueState<(String, String, String)>,
    waiting: ListState<u64>,
}

type Suggestion = (String, String, String, u64);

impl KeyedCoProcessFunction<u64, Auction, Person, Suggestion> for LocalItems {
    fn open(&mut self, states: &mut StateDeclarations<'_, u64>) -> Result<(), OperatorError> {
        self.seller = states.value_state("seller")?;
        self.waiting = states.list_state("waiting")?;
        Ok(())
    }

    fn process_first(
        &mut self,
        a: &Auction,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Emitter<'_, Suggestion>,
    ) -> Result<(), OperatorError> {
        match ctx.value(&self.seller)? {
            Some((name, city, state)) => out.emit((name.clone(), city.clone(), state.clone(), a.id)),
            None => ctx.list_push(&self.waiting, a.id)?,
        }
        Ok(())
    }

    fn process_second(
        &mut self,
        p: &Person,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Emitter<'_, Suggestion>,
    ) -> Result<(), OperatorError> {
        for id in ctx.list_take(&self.waiting)? {
            out.emit((p.name.clone(), p.city.clone(), p.state.clone(), id));
        }
        ctx.set_value(&self.seller, (p.name.clone(), p.city.clone(), p.state.clone()))
    }
}

/// Q4's first half: an auction's category and reserve, and its highest bid
/// so far; at the close, `(category, price)` if the auction sold.
#[derive(Clone, Default)]
struct Winning {
    auction: ValueState<(u64, u64)>,
    highest: ValueState<u64>,
}

impl KeyedCoProcessFunction<u64, Auction, Bid, (u64, u64)> for Winning {
    fn open(&mut self, states: &mut StateDeclarations<'_, u64>) -> Result<(), OperatorError> {
        self.auction = states.value_state("auction")?;
        self.highest = states.value_state("highest")?;
        Ok(())
    }

    fn process_first(
        &mut self,
        a: &Auction,
        ctx: &mut KeyedContext<'_, u64>,
        _: &mut Emitter<'_, (u64, u64)>,
    ) -> Result<(), OperatorError> {
        ctx.set_value(&self.auction, (a.category, a.reserve))
    }

    fn process_second(
        &mut self,
        b: &Bid,
        ctx: &mut KeyedContext<'_, u64>,
        _: &mut Emitter<'_, (u64, u64)>,
    ) -> Result<(), OperatorError> {
        let highest = ctx.value(&self.highest)?.copied().unwrap_or(0).max(b.price);
        ctx.set_value(&self.highest, highest)
    }

    fn on_end_of_input(
        &mut self,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Emitter<'_, (u64, u64)>,
    ) -> Result<(), OperatorError> {
        let auction = ctx.value(&self.auction)?.copied();
        let highest = ctx.value(&self.highest)?.copied();
        if let (Some((category, reserve)), Some(price)) = (auction, highest) {
            if price >= reserve {
                out.emit((category, price));
            }
        }
        Ok(())
    }
}

/// Q4's second half: `(category, sales, average price)`, the average rounded
/// down to a whole unit.
#[derive(Clone)]
struct Average;

impl Aggregator<u64, (u64, u64)> for Average {
    type Acc = (u64, u64);
    type Out = (u64, u64, u64);
    fn first(&self, &(_, price): &(u64, u64)) -> (u64, u64) {
        (1, price)
    }
    fn add(&self, (sales, total): &mut (u64, u64), &(_, price): &(u64, u64)) {
        *sales += 1;
        *total += price;
    }
    fn result(&self, category: &u64, &(sales, total): &(u64, u64)) -> (u64, u64, u64) {
        (*category, sales, total / sales)
    }
}

fn main() -> Result<(), EngineError> {
    let engine = Engine::builder().build()?;
    let df = Dataflow::new("nexmark").parallelism(engine.shards().len() as u32);
    let persons = df.generate("persons", PERSONS, person);
    let auctions = df.generate("auctions", AUCTIONS, auction);
    let bids = df.generate("bids", BIDS, bid);

    let local = ["OR", "ID", "CA"];
    let q3 = auctions
        .filter(|a: &Auction| a.category == 10)
        .key_by(|a: &Auction| a.seller)
        .connect(&persons.filter(move |p: &Person| local.contains(&p.state.as_str())).key_by(|p: &Person| p.id))
        .process(LocalItems::default())
        .name("q3-local-items")
        .collect();
    let q4 = auctions
        .key_by(|a: &Auction| a.id)
        .connect(&bids.key_by(|b: &Bid| b.auction))
        .process(Winning::default())
        .name("q4-winning-bids")
        .key_by(|&(category, _): &(u64, u64)| category)
        .aggregate_final(Average)
        .name("q4-average-price")
        .collect();
    let result = engine.run(df.build()?)?;

    // The naive evaluation of the same events.
    let people: HashMap<u64, Person> = (0..PERSONS).map(|i| (i, person(i))).collect();
    let mut want_q3: Vec<Suggestion> = (0..AUCTIONS)
        .map(auction)
        .filter(|a| a.category == 10)
        .map(|a| (&people[&a.seller], a.id))
        .filter(|(p, _)| local.contains(&p.state.as_str()))
        .map(|(p, id)| (p.name.clone(), p.city.clone(), p.state.clone(), id))
        .collect();
    let mut highest = HashMap::<u64, u64>::new();
    for b in (0..BIDS).map(bid) {
        let h = highest.entry(b.auction).or_default();
        *h = (*h).max(b.price);
    }
    let mut sold = BTreeMap::<u64, (u64, u64)>::new();
    for a in (0..AUCTIONS).map(auction) {
        if let Some(&price) = highest.get(&a.id).filter(|&&p| p >= a.reserve) {
            let (sales, total) = sold.entry(a.category).or_default();
            *sales += 1;
            *total += price;
        }
    }
    let want_q4: Vec<(u64, u64, u64)> = sold.into_iter().map(|(c, (n, total))| (c, n, total / n)).collect();

    let (mut got_q3, mut got_q4) = (q3.take(), q4.take());
    got_q3.sort();
    want_q3.sort();
    got_q4.sort();
    assert_eq!(got_q3, want_q3, "Q3 finds every local seller's auctions, once");
    assert_eq!(got_q4, want_q4, "Q4 averages every sold auction's price, per category");
    let (sales, cheapest, dearest) = (
        got_q4.iter().map(|(_, n, _)| n).sum::<u64>(),
        got_q4.iter().min_by_key(|(_, _, avg)| avg).expect("a category sold"),
        got_q4.iter().max_by_key(|(_, _, avg)| avg).expect("a category sold"),
    );
    println!(
        "{PERSONS} persons, {AUCTIONS} auctions, {BIDS} bids in {:.1} ms: Q3 {} local items; Q4 {sales} auctions sold, \
         average price from {} (category {}) to {} (category {})",
        result.duration().as_secs_f64() * 1e3,
        got_q3.len(),
        cheapest.2,
        cheapest.0,
        dearest.2,
        dearest.0
    );
    Ok(())
}
