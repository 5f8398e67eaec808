//! The timer service of keyed process functions: one timer per key and
//! instant, deletes, firing, and what pending timers are charged.

use std::time::{Duration, Instant};

use shardflow_memory::{Budget, BudgetKind};

use super::timers::{timer_bytes, TIMER_INSTANT_BYTES};
use super::*;

fn task(budget: &Budget) -> TaskInfo {
    TaskInfo {
        vertex: "timers".into(),
        subtask: 0,
        parallelism: 1,
        max_parallelism: 128,
        job_start: Instant::now(),
        core: 0,
        managed_memory: budget.clone(),
    }
}

/// A subtask and an empty keyed backend, both charged to `budget`.
fn charged_to(budget: &Budget) -> (TaskInfo, KeyedBackend<String>) {
    let mut backend = KeyedBackend::<String>::new();
    backend.memory.account_to(budget.clone()).expect("an empty state fits");
    (task(budget), backend)
}

fn with_key<R>(
    backend: &mut KeyedBackend<String>,
    task: &TaskInfo,
    key: &str,
    f: impl FnOnce(&mut KeyedContext<'_, String>) -> R,
) -> R {
    f(&mut KeyedContext { key, backend, task })
}

#[test]
fn keys_sharing_an_instant_get_one_timer_each_and_fire_once_releasing_their_memory() {
    let budget = Budget::new(BudgetKind::ManagedMemory, 1 << 20);
    let (task, mut backend) = charged_to(&budget);
    let at = Instant::now() + Duration::from_secs(3600);
    let keys: Vec<String> = (0..1000).map(|i| format!("key-{i}")).collect();
    for key in &keys {
        for _ in 0..3 {
            with_key(&mut backend, &task, key, |ctx| ctx.register_timer(at)).expect("fits the budget");
        }
    }
    assert_eq!(backend.timers.len(), 1, "one instant");
    assert_eq!(backend.timers[&at].len(), 1000, "one timer per key, however often registered");
    let charged = |keys: &mut dyn Iterator<Item = &String>| TIMER_INSTANT_BYTES + keys.map(timer_bytes).sum::<u64>();
    assert_eq!(backend.memory.used_bytes(), charged(&mut keys.iter()));
    assert!(budget.used_bytes() >= backend.memory.used_bytes(), "reserved from the slot's budget");

    // Every even key deletes its timer (and deleting one it does not have is harmless).
    for key in keys.iter().step_by(2) {
        with_key(&mut backend, &task, key, |ctx| {
            ctx.delete_timer(at);
            ctx.delete_timer(at);
            ctx.delete_timer(at + Duration::from_secs(1));
        });
    }
    let odd: Vec<&String> = keys.iter().skip(1).step_by(2).collect();
    assert_eq!(backend.memory.used_bytes(), charged(&mut odd.iter().copied()));

    assert!(backend.take_due_timers(at - Duration::from_millis(1)).is_empty(), "not due yet");
    let fired = backend.take_due_timers(at);
    assert!(fired.iter().all(|(t, _)| *t == at));
    let mut got: Vec<&String> = fired.iter().map(|(_, k)| k).collect();
    let mut expected = odd.clone();
    expected.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, expected, "each remaining key fires once");
    assert_eq!(backend.memory.used_bytes(), 0, "fired timers are no longer charged");
    assert!(backend.timers.is_empty());
}

#[test]
fn pending_timers_beyond_the_budget_are_a_typed_error_with_the_numbers() {
    let budget = Budget::new(BudgetKind::ManagedMemory, 64 << 10);
    let (task, mut backend) = charged_to(&budget);
    let at = Instant::now() + Duration::from_secs(3600);
    let refused = (0..100_000u32)
        .map(|i| with_key(&mut backend, &task, &format!("a-rather-long-key-{i}"), |ctx| ctx.register_timer(at)))
        .find_map(Result::err)
        .expect("100 000 timers do not fit in 64 KiB");
    let message = refused.to_string();
    assert!(message.contains("managed memory budget exceeded") && message.contains("65536"), "{message}");
}
