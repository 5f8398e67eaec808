//! A keyed stream connected to a broadcast stream: every subtask holds every
//! broadcast record in its broadcast state while the keyed side keeps its
//! state per key, against a naive evaluation; stopped with a snapshot at 2
//! subtasks and restored into 3, each new subtask holds the whole broadcast
//! state and the keys' state is redistributed.

use std::collections::BTreeMap;

use shardflow_benches::SplitMix;
use shardflow_engine::{
    CollectHandle, Dataflow, Emitter, JobSnapshot, KeyedBroadcastProcessFunction, KeyedContext, ListRef, ListState,
    OperatorError, StateDeclarations,
};

use crate::common::small_engine;

/// Per user, the amounts seen; thresholds broadcast (a threshold of 0 clears
/// them). At the end, per user: how many amounts are over the lowest
/// threshold, and how many thresholds this subtask holds.
#[derive(Clone, Default)]
struct OverThreshold {
    amounts: Option<ListState<u64>>,
}

impl KeyedBroadcastProcessFunction<String, (String, u64), u64, (String, u64, u64)> for OverThreshold {
    fn open(&mut self, states: &mut StateDeclarations<'_, String>) -> Result<(), OperatorError> {
        self.amounts = Some(states.list_state("amounts")?);
        Ok(())
    }
    fn process_element(
        &mut self,
        payment: &(String, u64),
        _: &[u64],
        ctx: &mut KeyedContext<'_, String>,
        _: &mut Emitter<'_, (String, u64, u64)>,
    ) -> Result<(), OperatorError> {
        ctx.list_push(self.amounts.as_ref().expect("opened"), payment.1)
    }
    fn process_broadcast(
        &mut self,
        threshold: &u64,
        thresholds: &mut ListRef<'_, u64>,
        _: &mut Emitter<'_, (String, u64, u64)>,
    ) -> Result<(), OperatorError> {
        match threshold {
            0 => thresholds.clear(),
            t => thresholds.push(*t)?,
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
        let over = ctx.list(self.amounts.as_ref().expect("opened"))?.iter().filter(|a| **a > lowest).count();
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
