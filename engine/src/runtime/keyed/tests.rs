//! The timer service of keyed process functions: one timer per key and
//! time, deletes, firing, and what pending timers are charged.

use std::time::Instant;

use shardflow_memory::{Budget, BudgetKind};

use super::timers::{timer_bytes, TIMER_TIME_BYTES};
use super::*;
use crate::runtime::clock;

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
fn keys_sharing_a_time_get_one_timer_each_and_fire_once_releasing_their_memory() {
    let budget = Budget::new(BudgetKind::ManagedMemory, 1 << 20);
    let (task, mut backend) = charged_to(&budget);
    let at = clock::now_us() + 3_600_000_000;
    let keys: Vec<String> = (0..1000).map(|i| format!("key-{i}")).collect();
    for key in &keys {
        for _ in 0..3 {
            with_key(&mut backend, &task, key, |ctx| ctx.register_timer(at)).expect("fits the budget");
        }
    }
    assert_eq!(backend.timers.len(), 1, "one time");
    assert_eq!(backend.timers[&at].len(), 1000, "one timer per key, however often registered");
    let charged = |keys: &mut dyn Iterator<Item = &String>| TIMER_TIME_BYTES + keys.map(timer_bytes).sum::<u64>();
    assert_eq!(backend.memory.used_bytes(), charged(&mut keys.iter()));
    assert!(budget.used_bytes() >= backend.memory.used_bytes(), "reserved from the slot's budget");

    // Every even key deletes its timer (and deleting one it does not have is harmless).
    for key in keys.iter().step_by(2) {
        with_key(&mut backend, &task, key, |ctx| {
            ctx.delete_timer(at);
            ctx.delete_timer(at);
            ctx.delete_timer(at + 1);
        });
    }
    let odd: Vec<&String> = keys.iter().skip(1).step_by(2).collect();
    assert_eq!(backend.memory.used_bytes(), charged(&mut odd.iter().copied()));

    assert!(backend.take_due_timers(at - 1).is_empty(), "not due yet");
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
    let at = clock::now_us() + 3_600_000_000;
    let refused = (0..100_000u32)
        .map(|i| with_key(&mut backend, &task, &format!("a-rather-long-key-{i}"), |ctx| ctx.register_timer(at)))
        .find_map(Result::err)
        .expect("100 000 timers do not fit in 64 KiB");
    let message = refused.to_string();
    assert!(message.contains("managed memory budget exceeded") && message.contains("65536"), "{message}");
}

#[test]
fn a_timer_restored_from_a_snapshot_keeps_its_time_so_the_time_kept_in_state_deletes_it() {
    let budget = Budget::new(BudgetKind::ManagedMemory, 1 << 20);
    let (task, mut backend) = charged_to(&budget);
    // An odd time, to the microsecond, as a function would keep in its state.
    let at = clock::now_us() + 3_600_000_001;
    with_key(&mut backend, &task, "session", |ctx| ctx.register_timer(at)).expect("fits");
    let mut snapshot = JobSnapshot::default();
    snapshot.add(backend.snapshot("sessions", &task).expect("a snapshot"));

    let (task, mut restored) = charged_to(&budget);
    restored.restore("sessions", &snapshot, &task).expect("restores");
    assert_eq!(restored.timers.keys().copied().collect::<Vec<u64>>(), vec![at], "the same time, exactly");
    with_key(&mut restored, &task, "session", |ctx| ctx.delete_timer(at));
    assert!(restored.timers.is_empty(), "deleted by the time the function kept");
    assert_eq!(restored.memory.used_bytes(), 0);
}
