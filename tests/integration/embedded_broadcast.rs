//! A keyed stream connected to a broadcast stream: every subtask holds every
//! broadcast record in its broadcast state while the keyed side keeps its
//! state per key, against a naive evaluation; stopped with a snapshot at 2
//! subtasks and restored into 3, each new subtask holds the whole broadcast
//! state and the keys' state is redistributed; a broadcast record changes
//! the keyed state of every key, once, on the subtask that holds it.

use std::collections::BTreeMap;

use shardflow_benches::SplitMix;
use shardflow_engine::{
    BroadcastContext, CollectHandle, Dataflow, Emitter, JobSnapshot, KeyedBroadcastProcessFunction, KeyedContext,
    ListState, OperatorError, OutputTag, StateDeclarations, ValueState,
};

use crate::common::{read_to_end, small_engine, TIMEOUT};

/// Per user, the amounts seen; thresholds broadcast (a threshold of 0 clears
/// them). At the end, per user: how many amounts are over the lowest
/// threshold, and how many thresholds this subtask holds.
#[derive(Clone, Default)]
struct OverThreshold {
    amounts: ListState<u64>,
}

impl KeyedBroadcastProcessFunction<String, (String, u64), u64, (String, u64, u64)> for OverThreshold {
    fn open(&mut self, states: &mut StateDeclarations<'_, String>) -> Result<(), OperatorError> {
        self.amounts = states.list_state("amounts")?;
        Ok(())
    }
    fn process_element(
        &mut self,
        payment: &(String, u64),
        _: &[u64],
        ctx: &mut KeyedContext<'_, String>,
        _: &mut Emitter<'_, (String, u64, u64)>,
    ) -> Result<(), OperatorError> {
        ctx.list_push(&self.amounts, payment.1)
    }
    fn process_broadcast(
        &mut self,
        threshold: &u64,
        ctx: &mut BroadcastContext<'_, String, u64>,
        _: &mut Emitter<'_, (String, u64, u64)>,
    ) -> Result<(), OperatorError> {
        match threshold {
            0 => ctx.broadcast().clear(),
            t => ctx.broadcast().push(*t)?,
        }
        Ok(())
    }
    fn on_end_of_input(
        &mut self,
        thresholds: &[u64],
        ctx: &mut KeyedContext<'_, String>,
        out: &mut Emitter<'_, (String, u64, u64)>,
    ) -> Result<(), OperatorError> {
        let lowest = thresholds.iter().min().copied().unwrap_or(u64::MAX);
        let over = ctx.list(&self.amounts)?.iter().filter(|a| **a > lowest).count();
        out.emit((ctx.key().to_string(), over as u64, thresholds.len() as u64));
        Ok(())
    }
}

fn payments(rng: &mut SplitMix, n: usize) -> Vec<(String, u64)> {
    (0..n).map(|_| (format!("user-{}", rng.range(0, 40)), rng.range(0, 1_000))).collect()
}

/// What naive evaluation says: per user, the amounts over the lowest of
/// `thresholds`, and how many thresholds there are.
fn naive(payments: &[(String, u64)], thresholds: &[u64]) -> Vec<(String, u64, u64)> {
    let lowest = thresholds.iter().min().copied().unwrap_or(u64::MAX);
    let mut per_user: BTreeMap<&str, u64> = BTreeMap::new();
    for (user, amount) in payments {
        *per_user.entry(user).or_default() += u64::from(*amount > lowest);
    }
    per_user.into_iter().map(|(u, n)| (u.to_string(), n, thresholds.len() as u64)).collect()
}

fn alerts(p: u32, payments: Vec<(String, u64)>, thresholds: Vec<u64>) -> (Dataflow, CollectHandle<(String, u64, u64)>) {
    let df = Dataflow::new("alerts").parallelism(p);
    // One source subtask: every subtask gets the thresholds in one order.
    let thresholds = df.from_iter("thresholds", thresholds).parallelism(1);
    let out = df
        .from_iter("payments", payments)
        .key_by_ref::<String, _>(|p: &(String, u64)| p.0.as_str())
        .connect_broadcast(&thresholds)
        .process(OverThreshold::default())
        .name("over")
        .collect();
    (df, out)
}

#[test]
fn every_subtask_holds_the_whole_broadcast_state_and_keys_keep_their_own() {
    let engine = small_engine().build().expect("engine starts");
    let mut rng = SplitMix::new(0xB0AD);
    let (payments, thresholds) = (payments(&mut rng, 2_000), vec![900, 700, 0, 650, 800]);
    let (df, out) = alerts(2, payments.clone(), thresholds);
    engine.run(df.build().expect("a valid dataflow")).expect("the job finishes");
    let mut got = out.take();
    got.sort();
    // The 0 cleared the two before it, on every subtask.
    assert_eq!(got, naive(&payments, &[650, 800]));
}

#[test]
fn a_broadcast_state_is_restored_whole_into_every_subtask_at_another_parallelism() {
    let engine = small_engine().build().expect("engine starts");
    let mut rng = SplitMix::new(0xB0AE);
    let (first, second) = (payments(&mut rng, 1_500), payments(&mut rng, 1_500));
    let (df, out) = alerts(2, first.clone(), vec![900, 750]);
    let result = engine.run(df.stop_with_snapshot().build().expect("a valid dataflow")).expect("the job stops");
    assert!(out.take().is_empty(), "a job stopped with a snapshot does not finish its operators");
    let snapshot = result.snapshot.expect("a snapshot");
    let held = &snapshot.operators["over/broadcast"].operator_state;
    assert_eq!(held, &vec![vec![900u64.to_le_bytes().to_vec(), 750u64.to_le_bytes().to_vec()]; 2], "a copy each");
    let snapshot = JobSnapshot::from_bytes(&snapshot.to_bytes().expect("to bytes")).expect("back");

    let (df, out) = alerts(3, second.clone(), vec![600]);
    engine.run(df.restore(snapshot).build().expect("a valid dataflow")).expect("the restored job finishes");
    let mut got = out.take();
    got.sort();
    let all: Vec<(String, u64)> = first.into_iter().chain(second).collect();
    assert_eq!(got, naive(&all, &[900, 750, 600]), "each of 3 subtasks holds the 2 restored and the new threshold");
}

/// Per user, a balance; every deposit acknowledged to side output `acks`.
/// Broadcast commands reach every key the subtask has: `("fee", f)` takes
/// `f` from each balance, `("drop-below", b)` clears each balance under `b`.
/// At the end, each balance there is.
#[derive(Clone)]
struct Ledger {
    balance: ValueState<u64>,
    acks: OutputTag<String>,
}

impl KeyedBroadcastProcessFunction<String, (String, u64), (String, u64), (String, u64)> for Ledger {
    fn open(&mut self, states: &mut StateDeclarations<'_, String>) -> Result<(), OperatorError> {
        self.balance = states.value_state("balance")?;
        Ok(())
    }
    fn process_element(
        &mut self,
        deposit: &(String, u64),
        _: &[(String, u64)],
        ctx: &mut KeyedContext<'_, String>,
        out: &mut Emitter<'_, (String, u64)>,
    ) -> Result<(), OperatorError> {
        let balance = &self.balance;
        let now = ctx.value(balance)?.copied().unwrap_or(0) + deposit.1;
        ctx.set_value(balance, now)?;
        out.emit_side_ref(&self.acks, ctx.key());
        Ok(())
    }
    fn process_broadcast(
        &mut self,
        command: &(String, u64),
        ctx: &mut BroadcastContext<'_, String, (String, u64)>,
        _: &mut Emitter<'_, (String, u64)>,
    ) -> Result<(), OperatorError> {
        let balance = &self.balance;
        let &(ref what, n) = command;
        ctx.broadcast().push(command.clone())?;
        ctx.for_each_key(|_, account| match what.as_str() {
            "fee" => account.update_value(balance, |b| *b = b.saturating_sub(n)).map(drop),
            _ if account.value(balance)?.is_some_and(|b| *b < n) => account.clear_value(balance),
            _ => Ok(()),
        })
    }
    fn on_end_of_input(
        &mut self,
        commands: &[(String, u64)],
        ctx: &mut KeyedContext<'_, String>,
        out: &mut Emitter<'_, (String, u64)>,
    ) -> Result<(), OperatorError> {
        assert_eq!(commands.len(), 3, "every subtask holds every command");
        if let Some(b) = ctx.value(&self.balance)? {
            out.emit((ctx.key().to_string(), *b));
        }
        Ok(())
    }
}

#[test]
fn a_broadcast_record_reaches_the_keyed_state_of_every_key_once() {
    let engine = small_engine().build().expect("engine starts");
    let mut rng = SplitMix::new(0xFEE5);
    let deposits = payments(&mut rng, 1_000);
    let df = Dataflow::new("ledger").parallelism(2);
    let (commands, mut push) = df.ingress::<(String, u64)>("commands", 4);
    let acks = OutputTag::<String>::new("acks");
    let ledger = df
        .from_iter("deposits", deposits.clone())
        .key_by_ref::<String, _>(|d: &(String, u64)| d.0.as_str())
        .connect_broadcast(&commands)
        .process(Ledger { balance: Default::default(), acks: acks.clone() });
    let balances = ledger.collect();
    let acked = ledger.side_output(&acks).egress(16);
    let job = engine.submit(df.build().expect("a valid dataflow")).expect("submit");

    // Every deposit applied before the commands are sent: their effect is fixed.
    for i in 0..deposits.len() {
        acked.recv_timeout(TIMEOUT).unwrap_or_else(|e| panic!("deposit {i} not acknowledged: {e}"));
    }
    for command in [("fee", 30), ("drop-below", 10_000), ("fee", 7)] {
        push.push((command.0.to_string(), command.1)).expect("the job takes the command");
    }
    drop(push);
    assert!(read_to_end(&acked).is_empty(), "no more acknowledgements");
    job.wait_timeout(TIMEOUT).expect("the job finishes");

    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for (user, amount) in &deposits {
        *want.entry(user.clone()).or_default() += amount;
    }
    let want: Vec<(String, u64)> = want
        .into_iter()
        .map(|(u, b)| (u, b.saturating_sub(30)))
        .filter(|(_, b)| *b >= 10_000)
        .map(|(u, b)| (u, b - 7))
        .collect();
    assert!(!want.is_empty() && want.len() < 41, "some accounts dropped, some kept: {want:?}");
    let mut got = balances.take();
    got.sort();
    assert_eq!(got, want, "each fee taken once from each account, on whichever subtask holds it");
}
