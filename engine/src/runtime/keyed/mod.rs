//! Keyed processing: per-key aggregation (count, reduce, aggregate; running or at
//! the end of input) and the keyed process function with value, list, map,
//! reducing and aggregating state (each may have a time-to-live) and
//! processing-time timers.
//!
//! State is keyed by the real key — two keys with the same hash keep separate
//! state — held in hash tables charged to the slot's managed memory, and
//! snapshotted per key group. This module has the handles, a keyed operator's
//! backend (its tables, memory and timers) and the context a function reads and
//! changes state through; `tables` the tables and their snapshot bytes,
//! `timers` the timer service, `ttl` state expiry, `aggregate` and `process`
//! the operators.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHasher;

use crate::data::{Data, Key};
use crate::error::{EngineError, OperatorError};
use crate::runtime::build::{build_port, BuildContext, Name, NodeFactory, Port};
use crate::runtime::collector::{Collector, Emitter, Failure, Lifecycle, SharedCollector, SinkOutput, TaskInfo};
use crate::runtime::output::KeySelector;
use crate::runtime::state::{
    entry_bytes, heap_of, list_bytes, JobSnapshot, KeyGroupRouter, OperatorSnapshot, StateMemory,
};
use keymap::KeyMap;
use tables::{
    items, map_bytes, put_items, restore_entries, snapshot_table, AsAny, FoldTable, ListTable, MapTable, ReduceFn,
    ReducingTable, Table, ValueTable,
};
use timers::{add_timer, TimerKeys};
use ttl::Expiry;
pub(crate) use ttl::TTL_PREFIX;

/// The hash tables of keyed state: FxHash, fast on the short keys streams use.
pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

mod aggregate;
mod keymap;
mod process;
mod tables;
mod timers;
mod ttl;

pub use aggregate::*;
pub use process::*;

// ------------------------------------------------------------ keyed state

/// A state handle: declared in `open`, used with the current key in
/// `process`. A function's field holds the [`Default`] handle, which names no
/// state, until `open` assigns it the declared one (so no `Option` is needed);
/// using it before then is a typed error that says so.
pub struct StateHandle<S> {
    index: usize,
    owner: u64,
    _s: PhantomData<fn() -> S>,
}

/// The owner of a handle no backend declared (backends count from 1).
const UNDECLARED: u64 = 0;

impl<S> Clone for StateHandle<S> {
    fn clone(&self) -> Self {
        StateHandle { index: self.index, owner: self.owner, _s: PhantomData }
    }
}

impl<S> Default for StateHandle<S> {
    fn default() -> Self {
        StateHandle { index: usize::MAX, owner: UNDECLARED, _s: PhantomData }
    }
}

impl<S> std::fmt::Debug for StateHandle<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.owner {
            UNDECLARED => f.write_str("StateHandle(undeclared)"),
            owner => f.debug_struct("StateHandle").field("index", &self.index).field("owner", &owner).finish(),
        }
    }
}

/// A value per key.
pub type ValueState<V> = StateHandle<ValueKind<V>>;
/// A list per key.
pub type ListState<V> = StateHandle<ListKind<V>>;
/// A map per key.
pub type MapState<UK, UV> = StateHandle<MapKind<UK, UV>>;
/// A value per key folded by a reduce function.
pub type ReducingState<V> = StateHandle<ReducingKind<V>>;
/// An accumulator per key that an [`Aggregator`] folds records of type `T`
/// into, read as the aggregator's result.
pub type AggregatingState<T, A> = StateHandle<AggregatingKind<T, A>>;

#[doc(hidden)]
pub struct ValueKind<V>(PhantomData<V>);
#[doc(hidden)]
pub struct ListKind<V>(PhantomData<V>);
#[doc(hidden)]
pub struct MapKind<UK, UV>(PhantomData<(UK, UV)>);
#[doc(hidden)]
pub struct ReducingKind<V>(PhantomData<V>);
#[doc(hidden)]
pub struct AggregatingKind<T, A>(PhantomData<(T, A)>);

/// The declared states of one keyed operator, their memory and its timers.
pub(crate) struct KeyedBackend<K: Key> {
    owner: u64,
    tables: Vec<Box<dyn Table<K>>>,
    /// What the tables and the timers hold, charged to the slot's managed memory.
    memory: StateMemory,
    /// Processing-time timers: when, and for which keys.
    timers: BTreeMap<u64, TimerKeys<K>>,
    /// Each table's time-to-live, if it has one (by table index).
    ttls: Vec<Option<Expiry<K>>>,
    /// Whether any table has a time-to-live.
    expiring: bool,
    /// When expired state was last swept away.
    swept_at: u64,
    /// The processing time the current batch of records (or round of
    /// timers) goes by, for time-to-live ([`Self::clock_in`]).
    now_us: u64,
}

/// The name a keyed operator's timers have in its snapshot (no declared state
/// can have it: names starting with NUL are refused).
pub(crate) const TIMERS: &str = "\0timers";

/// Why a handle of `owner` cannot be used here: it names no state yet, or
/// another operator's.
#[cold]
fn foreign_handle(owner: u64) -> OperatorError {
    OperatorError::User(match owner {
        UNDECLARED => {
            "a state handle was used before `open` declared it (assign it the handle `StateDeclarations` gives)".into()
        }
        _ => "a state handle was used with another operator's state".into(),
    })
}

fn handle_mismatch() -> OperatorError {
    OperatorError::User("a state handle does not match its state".into())
}

/// Distinguishes the backends of a process so a handle is used only with its own.
static NEXT_BACKEND: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl<K: Key> KeyedBackend<K> {
    fn new() -> Self {
        KeyedBackend {
            owner: NEXT_BACKEND.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            tables: Vec::new(),
            memory: StateMemory::new(),
            timers: BTreeMap::new(),
            ttls: Vec::new(),
            expiring: false,
            swept_at: 0,
            now_us: 0,
        }
    }

    fn declare<S>(&mut self, name: &str, table: Box<dyn Table<K>>) -> Result<StateHandle<S>, OperatorError> {
        if name.starts_with('\0') {
            return Err(OperatorError::User(format!(
                "state name {name:?} starts with NUL (kept for the engine's own)"
            )));
        }
        if self.tables.iter().any(|t| t.name() == name) {
            return Err(OperatorError::User(format!("state '{name}' is declared twice")));
        }
        self.tables.push(table);
        self.ttls.push(None);
        Ok(StateHandle { index: self.tables.len() - 1, owner: self.owner, _s: PhantomData })
    }

    /// The table of handle `h`, to change `key`'s state in: a state with a
    /// time-to-live that expired is gone first, and the write restarts its
    /// clock.
    #[inline]
    fn table<S, T: 'static>(&mut self, h: &StateHandle<S>, key: &K::Borrowed) -> Result<&mut T, OperatorError> {
        let index = self.index_of(h)?;
        self.written(index, key)?;
        // Called on the table itself (`**t`), not on its `Box`, which is `Any` too.
        self.tables.get_mut(index).and_then(|t| AsAny::as_any(&mut **t).downcast_mut::<T>()).ok_or_else(handle_mismatch)
    }

    /// The table of handle `h`, to clear `key`'s state in (its time-to-live
    /// clock, if it has one, stops).
    #[inline]
    fn table_clearing<S, T: 'static>(
        &mut self,
        h: &StateHandle<S>,
        key: &K::Borrowed,
    ) -> Result<&mut T, OperatorError> {
        let index = self.index_of(h)?;
        self.unwritten(index, key);
        self.tables.get_mut(index).and_then(|t| AsAny::as_any(&mut **t).downcast_mut::<T>()).ok_or_else(handle_mismatch)
    }

    /// The table of handle `h`, to read `key`'s state in; `None` if that state
    /// expired.
    #[inline]
    fn table_ref<S, T: 'static>(&self, h: &StateHandle<S>, key: &K::Borrowed) -> Result<Option<&T>, OperatorError> {
        let index = self.index_of(h)?;
        let table = self.tables.get(index).and_then(|t| AsAny::as_any_ref(&**t).downcast_ref::<T>());
        let table = table.ok_or_else(handle_mismatch)?;
        Ok((!self.expired(index, key)).then_some(table))
    }

    /// Where `h`'s table is, if `h` is this backend's.
    #[inline]
    fn index_of<S>(&self, h: &StateHandle<S>) -> Result<usize, OperatorError> {
        if h.owner != self.owner {
            return Err(foreign_handle(h.owner));
        }
        Ok(h.index)
    }

    fn restore(&mut self, operator: &str, snapshot: &JobSnapshot, task: &TaskInfo) -> Result<(), OperatorError> {
        let KeyedBackend { tables, memory, timers, ttls, .. } = self;
        restore_entries(snapshot, operator, task, |name, k, v| {
            if let Some(state) = name.strip_prefix(TTL_PREFIX) {
                let index = tables.iter().position(|t| t.name() == state);
                return ttl::restore_written(index.and_then(|i| ttls[i].as_mut()), k, v, memory);
            }
            if name == TIMERS {
                let key = K::from_bytes(k)?;
                for at in items(v)? {
                    let at = <[u8; 8]>::try_from(at).map(u64::from_le_bytes).map_err(|_| {
                        OperatorError::User(format!("malformed state snapshot: a timer of '{operator}' is not a time"))
                    })?;
                    add_timer(timers, memory, at, key.borrow())?;
                }
                return Ok(());
            }
            let Some(table) = tables.iter_mut().find(|t| t.name() == name) else {
                return Err(OperatorError::User(format!(
                    "the snapshot of '{operator}' has state '{name}', which the operator no longer declares"
                )));
            };
            table.restore(K::from_bytes(k)?, v, memory)
        })?;
        self.start_unwritten_clocks()
    }

    fn snapshot(&self, operator: &str, task: &TaskInfo) -> Result<OperatorSnapshot, OperatorError> {
        let router = KeyGroupRouter::new(task.parallelism, task.max_parallelism);
        let mut key_groups = BTreeMap::new();
        for t in &self.tables {
            t.snapshot(&router, &mut key_groups)?;
        }
        if !self.timers.is_empty() {
            let mut per_key: FxMap<&K, Vec<u64>> = FxMap::default();
            for (&at, keys) in &self.timers {
                keys.iter().for_each(|k| per_key.entry(k).or_default().push(at));
            }
            let to_bytes = |times: &Vec<u64>| put_items(times.iter().map(|t| Ok(t.to_le_bytes().to_vec())));
            snapshot_table(TIMERS, per_key.iter().map(|(k, v)| (*k, v)), to_bytes, &router, &mut key_groups)?;
        }
        self.snapshot_written(&router, &mut key_groups)?;
        Ok(OperatorSnapshot {
            operator: operator.to_string(),
            max_parallelism: task.max_parallelism,
            key_groups,
            operator_state: Vec::new(),
        })
    }

    /// Every key with state: in a table, or a pending timer (whose function
    /// may keep nothing else, and is called at the end of input instead).
    fn keys(&self) -> Vec<K> {
        let mut seen: FxMap<K, ()> = FxMap::default();
        for t in &self.tables {
            for k in t.keys() {
                seen.insert(k, ());
            }
        }
        for keys in self.timers.values() {
            for k in keys {
                seen.insert(k.clone(), ());
            }
        }
        seen.into_keys().collect()
    }
}

/// Runs `f` on `value`; returns its result and the value's heap bytes before
/// and after.
#[inline(always)]
fn update_measured<V: Data, R>(value: &mut V, f: impl FnOnce(&mut V) -> R) -> (R, u64, u64) {
    let before = heap_of(value);
    let r = f(value);
    (r, before, heap_of(value))
}

/// Declares the states of a keyed process function (in its `open`).
pub struct StateDeclarations<'a, K: Key> {
    backend: &'a mut KeyedBackend<K>,
    task: &'a TaskInfo,
}

impl<K: Key> StateDeclarations<'_, K> {
    /// The subtask.
    pub fn task(&self) -> &TaskInfo {
        self.task
    }

    /// A value per key.
    pub fn value_state<V: Data>(&mut self, name: &str) -> Result<ValueState<V>, OperatorError> {
        self.backend.declare(name, Box::new(ValueTable::<K, V> { name: name.into(), map: KeyMap::default() }))
    }

    /// A list per key.
    pub fn list_state<V: Data>(&mut self, name: &str) -> Result<ListState<V>, OperatorError> {
        self.backend.declare(name, Box::new(ListTable::<K, V> { name: name.into(), map: FxMap::default() }))
    }

    /// A map per key.
    pub fn map_state<UK: Key, UV: Data>(&mut self, name: &str) -> Result<MapState<UK, UV>, OperatorError> {
        self.backend.declare(name, Box::new(MapTable::<K, UK, UV> { name: name.into(), map: FxMap::default() }))
    }

    /// A value per key that each `add` folds with `f`.
    pub fn reducing_state<V: Data, F>(&mut self, name: &str, f: F) -> Result<ReducingState<V>, OperatorError>
    where
        F: Fn(&V, &V::Borrowed) -> V + Send + Sync + 'static,
    {
        let f: Arc<ReduceFn<V>> = Arc::new(f);
        self.fold_state(name, Reduce(f))
    }

    /// An accumulator per key that each `add` folds a record into with `agg`
    /// (its `first` starts a key's accumulator), read as `agg`'s result — the
    /// [`Aggregator`] of [`KeyedStream::aggregate`](crate::KeyedStream::aggregate).
    pub fn aggregating_state<T: Data, A: Aggregator<K, T>>(
        &mut self,
        name: &str,
        agg: A,
    ) -> Result<AggregatingState<T, A>, OperatorError> {
        self.fold_state(name, agg)
    }

    fn fold_state<T: Data, A: Aggregator<K, T>, S>(
        &mut self,
        name: &str,
        agg: A,
    ) -> Result<StateHandle<S>, OperatorError> {
        let values = ValueTable::<K, A::Acc> { name: name.into(), map: KeyMap::default() };
        self.backend.declare(name, Box::new(FoldTable { values, agg, _t: PhantomData }))
    }
}

/// The current key, its state, and the timer service, in a keyed process
/// function's calls.
pub struct KeyedContext<'a, K: Key> {
    key: &'a K::Borrowed,
    backend: &'a mut KeyedBackend<K>,
    task: &'a TaskInfo,
}

impl<K: Key> KeyedContext<'_, K> {
    /// The current key.
    #[inline]
    pub fn key(&self) -> &K::Borrowed {
        self.key
    }

    /// The subtask.
    #[inline]
    pub fn task(&self) -> &TaskInfo {
        self.task
    }

    /// The current key's value, if it has one. To change it in place, see
    /// [`Self::update_value`].
    #[inline]
    pub fn value<V: Data>(&self, h: &ValueState<V>) -> Result<Option<&V>, OperatorError> {
        let key = self.key;
        Ok(self.backend.table_ref::<_, ValueTable<K, V>>(h, key)?.and_then(|t| t.map.get(key)))
    }

    /// Changes the current key's value in place with `f`, if it has one, and
    /// returns what `f` returned. What the change adds to the value's heap (a
    /// longer string, a grown vector) is charged to managed memory; for plain
    /// data this costs nothing.
    #[inline]
    pub fn update_value<V: Data, R>(
        &mut self,
        h: &ValueState<V>,
        f: impl FnOnce(&mut V) -> R,
    ) -> Result<Option<R>, OperatorError> {
        let key = self.key;
        let Some(v) = self.backend.table::<_, ValueTable<K, V>>(h, key)?.map.get_mut(key) else { return Ok(None) };
        let (r, before, after) = update_measured(v, f);
        self.backend.memory.resize(before, after)?;
        Ok(Some(r))
    }

    /// Sets the current key's value.
    #[inline]
    pub fn set_value<V: Data>(&mut self, h: &ValueState<V>, value: V) -> Result<(), OperatorError> {
        let key = self.key;
        let new = heap_of(&value);
        let table = self.backend.table::<_, ValueTable<K, V>>(h, key)?;
        match table.map.get_mut(key) {
            Some(v) => {
                let old = heap_of(v);
                *v = value;
                self.backend.memory.resize(old, new)
            }
            None => {
                table.map.insert(K::to_owned_record(key), value);
                self.backend.memory.grow(entry_bytes::<K, V>(key) + new)
            }
        }
    }

    /// Clears the current key's value.
    #[inline]
    pub fn clear_value<V: Data>(&mut self, h: &ValueState<V>) -> Result<(), OperatorError> {
        let key = self.key;
        if let Some(v) = self.backend.table_clearing::<_, ValueTable<K, V>>(h, key)?.map.remove(key) {
            self.backend.memory.shrink(entry_bytes::<K, V>(key) + heap_of(&v));
        }
        Ok(())
    }

    /// Appends to the current key's list.
    #[inline]
    pub fn list_push<V: Data>(&mut self, h: &ListState<V>, value: V) -> Result<(), OperatorError> {
        let key = self.key;
        let mut grow = std::mem::size_of::<V>() as u64 + heap_of(&value);
        let table = self.backend.table::<_, ListTable<K, V>>(h, key)?;
        match table.map.get_mut(key) {
            Some(l) => l.push(value),
            None => {
                grow += entry_bytes::<K, Vec<V>>(key);
                table.map.insert(K::to_owned_record(key), vec![value]);
            }
        }
        self.backend.memory.grow(grow)
    }

    /// The current key's list (empty if it has none).
    #[inline]
    pub fn list<V: Data>(&self, h: &ListState<V>) -> Result<&[V], OperatorError> {
        let key = self.key;
        Ok(self
            .backend
            .table_ref::<_, ListTable<K, V>>(h, key)?
            .and_then(|t| t.map.get(key))
            .map_or(&[], Vec::as_slice))
    }

    /// Replaces the current key's list with `items` (Flink's `ListState.update`):
    /// to keep some of a list, read it, filter, and set what stays. An empty
    /// list leaves the key without this state.
    #[inline]
    pub fn list_set<V: Data>(&mut self, h: &ListState<V>, items: Vec<V>) -> Result<(), OperatorError> {
        self.list_clear(h)?;
        if items.is_empty() {
            return Ok(());
        }
        let key = self.key;
        let grow = entry_bytes::<K, Vec<V>>(key) + list_bytes(&items);
        self.backend.table::<_, ListTable<K, V>>(h, key)?.map.insert(K::to_owned_record(key), items);
        self.backend.memory.grow(grow)
    }

    /// Clears the current key's list.
    #[inline]
    pub fn list_clear<V: Data>(&mut self, h: &ListState<V>) -> Result<(), OperatorError> {
        self.list_take(h).map(drop)
    }

    /// Takes the current key's list out of its state, which it leaves empty
    /// (an empty list if it had none, or if it expired): to hand on records
    /// held until something came, with no copy and no borrow of the context
    /// left open while the function emits or changes state.
    #[inline]
    pub fn list_take<V: Data>(&mut self, h: &ListState<V>) -> Result<Vec<V>, OperatorError> {
        let key = self.key;
        let expired = self.backend.expired(self.backend.index_of(h)?, key);
        let Some(list) = self.backend.table_clearing::<_, ListTable<K, V>>(h, key)?.map.remove(key) else {
            return Ok(Vec::new());
        };
        self.backend.memory.shrink(entry_bytes::<K, Vec<V>>(key) + list_bytes(&list));
        Ok(if expired { Vec::new() } else { list })
    }

    /// The current key's map entry for `user_key`. To change it in place, see
    /// [`Self::map_update`].
    #[inline]
    pub fn map_get<UK: Key, UV: Data>(
        &self,
        h: &MapState<UK, UV>,
        user_key: &UK::Borrowed,
    ) -> Result<Option<&UV>, OperatorError> {
        let key = self.key;
        let table = self.backend.table_ref::<_, MapTable<K, UK, UV>>(h, key)?;
        Ok(table.and_then(|t| t.map.get(key)).and_then(|m| m.get(user_key)))
    }

    /// Changes the current key's map entry for `user_key` in place with `f`, if
    /// there is one, and returns what `f` returned; the change is charged as
    /// in [`Self::update_value`].
    #[inline]
    pub fn map_update<UK: Key, UV: Data, R>(
        &mut self,
        h: &MapState<UK, UV>,
        user_key: &UK::Borrowed,
        f: impl FnOnce(&mut UV) -> R,
    ) -> Result<Option<R>, OperatorError> {
        let key = self.key;
        let table = self.backend.table::<_, MapTable<K, UK, UV>>(h, key)?;
        let Some(v) = table.map.get_mut(key).and_then(|m| m.get_mut(user_key)) else { return Ok(None) };
        let (r, before, after) = update_measured(v, f);
        self.backend.memory.resize(before, after)?;
        Ok(Some(r))
    }

    /// Puts `user_key → value` into the current key's map.
    #[inline]
    pub fn map_insert<UK: Key, UV: Data>(
        &mut self,
        h: &MapState<UK, UV>,
        user_key: UK,
        value: UV,
    ) -> Result<(), OperatorError> {
        let key = self.key;
        let new = heap_of(&value);
        let mut grow = entry_bytes::<UK, UV>(user_key.borrow()) + new;
        let table = self.backend.table::<_, MapTable<K, UK, UV>>(h, key)?;
        let map = match table.map.get_mut(key) {
            Some(m) => m,
            None => {
                grow += entry_bytes::<K, FxMap<UK, UV>>(key);
                table.map.entry(K::to_owned_record(key)).or_default()
            }
        };
        match map.insert(user_key, value) {
            Some(old) => self.backend.memory.resize(heap_of(&old), new),
            None => self.backend.memory.grow(grow),
        }
    }

    /// Removes `user_key` from the current key's map.
    #[inline]
    pub fn map_remove<UK: Key, UV: Data>(
        &mut self,
        h: &MapState<UK, UV>,
        user_key: &UK::Borrowed,
    ) -> Result<Option<UV>, OperatorError> {
        let key = self.key;
        let table = self.backend.table::<_, MapTable<K, UK, UV>>(h, key)?;
        let Some(map) = table.map.get_mut(key) else { return Ok(None) };
        let removed = map.remove(user_key);
        let mut freed = removed.as_ref().map_or(0, |v| entry_bytes::<UK, UV>(user_key) + heap_of(v));
        // A key whose map is empty has no state: it keeps no entry (nor an end-of-input call).
        if map.is_empty() {
            table.map.remove(key);
            freed += entry_bytes::<K, FxMap<UK, UV>>(key);
        }
        self.backend.memory.shrink(freed);
        Ok(removed)
    }

    /// Clears the current key's map.
    #[inline]
    pub fn map_clear<UK: Key, UV: Data>(&mut self, h: &MapState<UK, UV>) -> Result<(), OperatorError> {
        let key = self.key;
        if let Some(m) = self.backend.table_clearing::<_, MapTable<K, UK, UV>>(h, key)?.map.remove(key) {
            self.backend.memory.shrink(map_bytes::<K, UK, UV>(key, &m));
        }
        Ok(())
    }

    /// The current key's map entries, borrowed, in no particular order (see
    /// [`Self::map_entries`] for owned copies).
    #[inline]
    pub fn map_iter<UK: Key, UV: Data>(
        &self,
        h: &MapState<UK, UV>,
    ) -> Result<impl Iterator<Item = (&UK, &UV)> + '_, OperatorError> {
        let key = self.key;
        let table = self.backend.table_ref::<_, MapTable<K, UK, UV>>(h, key)?;
        Ok(table.and_then(|t| t.map.get(key)).into_iter().flat_map(|m| m.iter()))
    }

    /// How many entries the current key's map has.
    #[inline]
    pub fn map_len<UK: Key, UV: Data>(&self, h: &MapState<UK, UV>) -> Result<usize, OperatorError> {
        let key = self.key;
        Ok(self
            .backend
            .table_ref::<_, MapTable<K, UK, UV>>(h, key)?
            .and_then(|t| t.map.get(key))
            .map_or(0, |m| m.len()))
    }

    /// The current key's map entries, copied, in no particular order.
    #[inline]
    pub fn map_entries<UK: Key, UV: Data>(&self, h: &MapState<UK, UV>) -> Result<Vec<(UK, UV)>, OperatorError> {
        Ok(self.map_iter(h)?.map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    /// Folds `value` into the current key's reducing state with the reduce
    /// function it was declared with (the first value is kept as it is).
    #[inline]
    pub fn reducing_add<V: Data>(&mut self, h: &ReducingState<V>, value: &V::Borrowed) -> Result<(), OperatorError> {
        self.fold::<V, Reduce<ReduceFn<V>>, _>(h, value)
    }

    /// The current key's reduced value, if any.
    #[inline]
    pub fn reducing_get<V: Data>(&self, h: &ReducingState<V>) -> Result<Option<&V>, OperatorError> {
        let key = self.key;
        Ok(self.backend.table_ref::<_, ReducingTable<K, V>>(h, key)?.and_then(|t| t.values.map.get(key)))
    }

    /// Clears the current key's reduced value.
    #[inline]
    pub fn reducing_clear<V: Data>(&mut self, h: &ReducingState<V>) -> Result<(), OperatorError> {
        self.fold_clear::<V, Reduce<ReduceFn<V>>, _>(h)
    }

    /// Folds `record` into the current key's accumulator.
    #[inline]
    pub fn aggregating_add<T: Data, A: Aggregator<K, T>>(
        &mut self,
        h: &AggregatingState<T, A>,
        record: &T::Borrowed,
    ) -> Result<(), OperatorError> {
        self.fold::<T, A, _>(h, record)
    }

    /// The aggregator's result for the current key, if it has an accumulator.
    #[inline]
    pub fn aggregating_get<T: Data, A: Aggregator<K, T>>(
        &self,
        h: &AggregatingState<T, A>,
    ) -> Result<Option<A::Out>, OperatorError> {
        let key = self.key;
        let Some(table) = self.backend.table_ref::<_, FoldTable<K, T, A>>(h, key)? else { return Ok(None) };
        Ok(table.values.map.get(key).map(|acc| table.agg.result(key, acc)))
    }

    /// Clears the current key's accumulator.
    #[inline]
    pub fn aggregating_clear<T: Data, A: Aggregator<K, T>>(
        &mut self,
        h: &AggregatingState<T, A>,
    ) -> Result<(), OperatorError> {
        self.fold_clear::<T, A, _>(h)
    }

    #[inline]
    fn fold<T: Data, A: Aggregator<K, T>, S>(
        &mut self,
        h: &StateHandle<S>,
        record: &T::Borrowed,
    ) -> Result<(), OperatorError> {
        let key = self.key;
        let table = self.backend.table::<_, FoldTable<K, T, A>>(h, key)?;
        match table.values.map.get_mut(key) {
            Some(acc) => {
                let ((), before, after) = update_measured(acc, |acc| table.agg.add(acc, record));
                self.backend.memory.resize(before, after)
            }
            None => {
                let first = table.agg.first(record);
                let grow = entry_bytes::<K, A::Acc>(key) + heap_of(&first);
                table.values.map.insert(K::to_owned_record(key), first);
                self.backend.memory.grow(grow)
            }
        }
    }

    #[inline]
    fn fold_clear<T: Data, A: Aggregator<K, T>, S>(&mut self, h: &StateHandle<S>) -> Result<(), OperatorError> {
        let key = self.key;
        if let Some(acc) = self.backend.table_clearing::<_, FoldTable<K, T, A>>(h, key)?.values.map.remove(key) {
            self.backend.memory.shrink(entry_bytes::<K, A::Acc>(key) + heap_of(&acc));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
