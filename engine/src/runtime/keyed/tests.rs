//! Keyed state as a process function uses it — reducing and aggregating
//! state, map entries — and the timer service: one timer per key and time,
//! deletes, firing, and what pending timers are charged.

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

/// The mean of a key's values (an aggregator whose accumulator is not its output).
#[derive(Clone)]
struct Mean;

impl Aggregator<String, u64> for Mean {
    type Acc = (u64, u64);
    type Out = f64;
    fn first(&self, v: &u64) -> (u64, u64) {
        (*v, 1)
    }
    fn add(&self, acc: &mut (u64, u64), v: &u64) {
        *acc = (acc.0 + v, acc.1 + 1);
    }
    fn result(&self, _: &str, acc: &(u64, u64)) -> f64 {
        acc.0 as f64 / acc.1 as f64
    }
}

#[test]
fn reducing_and_aggregating_state_fold_per_key_survive_a_snapshot_and_give_back_their_memory() {
    let budget = Budget::new(BudgetKind::ManagedMemory, 1 << 20);
    let declare = |backend: &mut KeyedBackend<String>, task: &TaskInfo| {
        let mut states = StateDeclarations { backend, task };
        // A closure: the handle's type does not name it.
        let longest = states
            .reducing_state("longest", |a: &String, b: &str| if b.len() > a.len() { b.into() } else { a.clone() });
        (longest.expect("declared"), states.aggregating_state("mean", Mean).expect("declared"))
    };
    let (task, mut backend) = charged_to(&budget);
    let (longest, mean) = declare(&mut backend, &task);
    for (key, word, n) in [("a", "x", 1), ("b", "yyy", 10), ("a", "zzzz", 2), ("a", "ww", 6), ("b", "v", 20)] {
        with_key(&mut backend, &task, key, |ctx| {
            ctx.reducing_add(&longest, word).expect("fits");
            ctx.aggregating_add(&mean, &n).expect("fits");
        });
    }
    let read = |backend: &mut KeyedBackend<String>, task: &TaskInfo, key: &str| {
        with_key(backend, task, key, |ctx| {
            // Reads borrow the state together: the longest word is still borrowed here.
            let longest = ctx.reducing_get(&longest).expect("a reducing state");
            let mean = ctx.aggregating_get(&mean).expect("an aggregating state");
            (longest.cloned(), mean)
        })
    };
    assert_eq!(read(&mut backend, &task, "a"), (Some("zzzz".to_string()), Some(3.0)));
    assert_eq!(read(&mut backend, &task, "b"), (Some("yyy".to_string()), Some(15.0)));
    assert_eq!(read(&mut backend, &task, "c"), (None, None), "a key without records has no state");

    let mut snapshot = JobSnapshot::default();
    snapshot.add(backend.snapshot("words", &task).expect("a snapshot"));
    let (task, mut restored) = charged_to(&budget);
    let (longest_restored, mean_restored) = declare(&mut restored, &task);
    restored.restore("words", &snapshot, &task).expect("restores");
    assert_eq!(restored.memory.used_bytes(), backend.memory.used_bytes(), "the same state, charged the same");
    with_key(&mut restored, &task, "a", |ctx| {
        ctx.reducing_add(&longest_restored, "uuuuuu").expect("fits");
        ctx.aggregating_add(&mean_restored, &11).expect("fits");
        assert_eq!(ctx.reducing_get(&longest_restored).expect("declared").map(String::as_str), Some("uuuuuu"));
        assert_eq!(ctx.aggregating_get(&mean_restored).expect("declared"), Some(5.0), "(1 + 2 + 6 + 11) / 4");
    });
    for key in ["a", "b"] {
        with_key(&mut restored, &task, key, |ctx| {
            ctx.reducing_clear(&longest_restored).expect("declared");
            ctx.aggregating_clear(&mean_restored).expect("declared");
        });
    }
    assert!(restored.keys().is_empty(), "cleared keys have no state");
    assert_eq!(restored.memory.used_bytes(), 0, "cleared state is no longer charged");
}

#[test]
fn a_key_whose_map_loses_its_last_entry_has_no_state_left() {
    let budget = Budget::new(BudgetKind::ManagedMemory, 1 << 20);
    let (task, mut backend) = charged_to(&budget);
    let pages: MapState<String, u64> =
        StateDeclarations { backend: &mut backend, task: &task }.map_state("pages").expect("declared");
    for key in ["alice", "bob"] {
        with_key(&mut backend, &task, key, |ctx| {
            ctx.map_insert(&pages, "/home".into(), 1).expect("fits");
            ctx.map_insert(&pages, "/cart".into(), 2).expect("fits");
        });
    }
    with_key(&mut backend, &task, "alice", |ctx| {
        let mut entries: Vec<(String, u64)> =
            ctx.map_iter(&pages).expect("declared").map(|(p, n)| (p.clone(), *n)).collect();
        entries.sort_unstable();
        assert_eq!(entries, [("/cart".to_string(), 2), ("/home".to_string(), 1)]);
        assert_eq!(ctx.map_len(&pages).expect("declared"), 2);
        assert_eq!(ctx.map_remove(&pages, "/home").expect("declared"), Some(1));
        assert_eq!(ctx.map_remove(&pages, "/nowhere").expect("declared"), None);
        assert_eq!(ctx.map_remove(&pages, "/cart").expect("declared"), Some(2));
    });
    with_key(&mut backend, &task, "carol", |ctx| {
        assert_eq!(ctx.map_remove(&pages, "/home").expect("declared"), None, "no state, nothing removed");
        assert_eq!((ctx.map_len(&pages).expect("declared"), ctx.map_iter(&pages).expect("declared").count()), (0, 0));
    });
    assert_eq!(backend.keys(), vec!["bob".to_string()], "an emptied map leaves its key without state");
    with_key(&mut backend, &task, "bob", |ctx| ctx.map_clear(&pages)).expect("declared");
    assert!(backend.keys().is_empty());
    assert_eq!(backend.memory.used_bytes(), 0, "no map entry is charged any more");
}

#[test]
fn a_list_set_anew_is_charged_for_what_it_holds_and_an_empty_one_leaves_no_state() {
    let budget = Budget::new(BudgetKind::ManagedMemory, 1 << 20);
    let (task, mut backend) = charged_to(&budget);
    let events: ListState<String> =
        StateDeclarations { backend: &mut backend, task: &task }.list_state("events").expect("declared");
    with_key(&mut backend, &task, "alice", |ctx| {
        for e in ["login", "view", "cart", "logout"] {
            ctx.list_push(&events, e.to_string()).expect("fits");
        }
    });
    let four = backend.memory.used_bytes();
    with_key(&mut backend, &task, "alice", |ctx| {
        let kept: Vec<String> = ctx.list(&events).expect("declared").iter().filter(|e| e.len() == 4).cloned().collect();
        ctx.list_set(&events, kept).expect("fits");
        assert_eq!(ctx.list(&events).expect("declared"), ["view", "cart"]);
    });
    let two = backend.memory.used_bytes();
    assert!(two < four, "two items are charged less than four: {two} vs {four}");
    with_key(&mut backend, &task, "alice", |ctx| ctx.list_set(&events, Vec::new())).expect("declared");
    assert!(backend.keys().is_empty(), "an empty list is no state");
    assert_eq!(backend.memory.used_bytes(), 0);
}

#[test]
fn a_list_taken_leaves_no_state_and_gives_back_its_memory_unless_it_expired() {
    let budget = Budget::new(BudgetKind::ManagedMemory, 1 << 20);
    let (task, mut backend) = charged_to(&budget);
    let mut states = StateDeclarations { backend: &mut backend, task: &task };
    let held: ListState<String> = states.list_state("held").expect("declared");
    let short: ListState<u64> = states.list_state("short").expect("declared");
    states.expire_after(&short, std::time::Duration::from_micros(10)).expect("a time-to-live");
    backend.clock_at(1_000);
    with_key(&mut backend, &task, "alice", |ctx| {
        for e in ["view", "cart"] {
            ctx.list_push(&held, e.to_string()).expect("fits");
        }
        ctx.list_push(&short, 7).expect("fits");
    });
    with_key(&mut backend, &task, "bob", |ctx| ctx.list_push(&held, "login".to_string())).expect("fits");
    let with_bob = backend.memory.used_bytes();
    with_key(&mut backend, &task, "alice", |ctx| {
        assert_eq!(ctx.list_take(&held).expect("declared"), ["view", "cart"]);
        assert!(ctx.list(&held).expect("declared").is_empty(), "taken");
        assert!(ctx.list_take(&held).expect("declared").is_empty(), "nothing left to take");
        assert_eq!(ctx.list_take(&short).expect("declared"), [7], "within its time-to-live");
        ctx.list_push(&short, 8).expect("fits");
    });
    assert!(backend.memory.used_bytes() < with_bob, "alice's lists gave their memory back");
    backend.clock_at(1_011);
    with_key(&mut backend, &task, "alice", |ctx| {
        assert!(ctx.list_take(&short).expect("declared").is_empty(), "expired: nothing to take");
    });
    with_key(&mut backend, &task, "bob", |ctx| assert_eq!(ctx.list_take(&held).expect("declared"), ["login"]));
    assert!(backend.keys().is_empty(), "no key has state left");
    assert_eq!(backend.memory.used_bytes(), 0, "and none is charged");
}

#[test]
fn a_handle_of_another_operator_or_of_none_yet_is_a_typed_error_saying_which() {
    let budget = Budget::new(BudgetKind::ManagedMemory, 1 << 20);
    let (task, mut mine) = charged_to(&budget);
    let (_, mut theirs) = charged_to(&budget);
    let _own: ValueState<u64> =
        StateDeclarations { backend: &mut mine, task: &task }.value_state("n").expect("declared");
    let foreign: ValueState<u64> =
        StateDeclarations { backend: &mut theirs, task: &task }.value_state("n").expect("declared");
    let error = |h: &ValueState<u64>, backend: &mut KeyedBackend<String>| {
        with_key(backend, &task, "k", |ctx| ctx.set_value(h, 1)).expect_err("not this operator's").to_string()
    };
    assert!(error(&foreign, &mut mine).contains("used with another operator's state"));
    assert!(error(&ValueState::default(), &mut mine).contains("used before `open` declared it"));
    assert!(mine.keys().is_empty(), "nothing was written");
}
