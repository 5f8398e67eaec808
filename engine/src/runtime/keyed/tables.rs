//! The tables keyed state lives in, type-erased behind [`Table`] — one per
//! declared state: a value, a list or a map per key, or an accumulator folded
//! by an aggregator (reducing and aggregating state) — and the bytes a table's
//! entries are snapshotted to and restored from, bucketed by key group.

use std::any::Any;
use std::collections::BTreeMap;
use std::marker::PhantomData;

use super::keymap::KeyMap;
use super::{Aggregator, FxMap, Reduce};
use crate::data::{key_hash, Data, Key};
use crate::error::OperatorError;
use crate::runtime::collector::TaskInfo;
use crate::runtime::state::{
    entry_bytes, heap_of, list_bytes, undecodable, GroupWriter, JobSnapshot, KeyGroupRouter, SnapshotReader,
    StateMemory,
};

/// Snapshot entries of one key group: key and value bytes.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// The reduce function of a reducing state, as declared.
pub(super) type ReduceFn<V> = dyn Fn(&V, &<V as Data>::Borrowed) -> V + Send + Sync;
/// A reducing state's table: its reduce function as an aggregator.
pub(super) type ReducingTable<K, V> = FoldTable<K, V, Reduce<ReduceFn<V>>>;

/// A value seen as `Any`, to downcast a type-erased table to its own type
/// (every `'static` type is one).
pub(super) trait AsAny: Any {
    fn as_any(&mut self) -> &mut dyn Any;
    fn as_any_ref(&self) -> &dyn Any;
}

impl<T: Any> AsAny for T {
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
    fn as_any_ref(&self) -> &dyn Any {
        self
    }
}

/// One declared state of a keyed operator, type-erased.
pub(super) trait Table<K: Key>: AsAny {
    fn name(&self) -> &str;
    /// Appends this table's entries of each key group to `groups`.
    fn snapshot(&self, router: &KeyGroupRouter, groups: &mut BTreeMap<u32, Vec<u8>>) -> Result<(), OperatorError>;
    /// Restores one entry.
    fn restore(&mut self, key: K, value: &[u8], memory: &mut StateMemory) -> Result<(), OperatorError>;
    /// Every key with state here.
    fn keys(&self) -> Vec<K>;
    /// Removes `key`'s state here, giving its bytes back to `memory`.
    fn clear_key(&mut self, key: &K::Borrowed, memory: &mut StateMemory);
}

/// Writes one table's entries, bucketed by key group.
pub(super) fn snapshot_table<'e, K: Key + 'e, V: 'e>(
    name: &str,
    entries: impl Iterator<Item = (&'e K, &'e V)>,
    value_bytes: impl Fn(&V) -> Result<Vec<u8>, OperatorError>,
    router: &KeyGroupRouter,
    groups: &mut BTreeMap<u32, Vec<u8>>,
) -> Result<(), OperatorError> {
    let mut buckets: BTreeMap<u32, Entries> = BTreeMap::new();
    for (k, v) in entries {
        let g = router.key_group(key_hash(k.borrow()));
        buckets.entry(g).or_default().push((K::to_bytes(k.borrow())?, value_bytes(v)?));
    }
    for (g, entries) in buckets {
        let out = groups.entry(g).or_default();
        let mut w = GroupWriter::new(out, name);
        for (k, v) in &entries {
            w.entry(k, v);
        }
    }
    Ok(())
}

/// Calls `each(state, key, value)` for every entry of the key groups of
/// `operator` in `snapshot` that `task` owns.
pub(super) fn restore_entries(
    snapshot: &JobSnapshot,
    operator: &str,
    task: &TaskInfo,
    mut each: impl FnMut(&str, &[u8], &[u8]) -> Result<(), OperatorError>,
) -> Result<(), OperatorError> {
    for group in snapshot.key_groups_for(operator, task)?.into_iter().flatten() {
        let mut r = SnapshotReader::new(group);
        while !r.is_empty() {
            let (name, entries) = r.state()?;
            for _ in 0..entries {
                let (k, v) = r.entry()?;
                each(name, k, v).map_err(|e| match e {
                    OperatorError::Net(e) => undecodable(name, e),
                    other => other,
                })?;
            }
        }
    }
    Ok(())
}

/// A length-prefixed list of byte strings (a list or map value in a snapshot).
pub(super) fn put_items(items: impl Iterator<Item = Result<Vec<u8>, OperatorError>>) -> Result<Vec<u8>, OperatorError> {
    let mut out = Vec::new();
    for item in items {
        let item = item?;
        out.extend_from_slice(&(item.len() as u32).to_le_bytes());
        out.extend_from_slice(&item);
    }
    Ok(out)
}

pub(super) fn items(mut bytes: &[u8]) -> Result<Vec<&[u8]>, OperatorError> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = bytes.first_chunk::<4>().map(|l| u32::from_le_bytes(*l) as usize);
        let item = len.and_then(|l| bytes.get(4..4 + l));
        let Some(item) = item else {
            return Err(OperatorError::User("malformed state snapshot: a list item runs past its value".into()));
        };
        out.push(item);
        bytes = &bytes[4 + item.len()..];
    }
    Ok(out)
}

pub(super) struct ValueTable<K, V> {
    pub(super) name: String,
    pub(super) map: KeyMap<K, V>,
}

impl<K: Key, V: Data> Table<K> for ValueTable<K, V> {
    fn name(&self) -> &str {
        &self.name
    }
    fn snapshot(&self, router: &KeyGroupRouter, groups: &mut BTreeMap<u32, Vec<u8>>) -> Result<(), OperatorError> {
        snapshot_table(&self.name, self.map.iter(), |v| Ok(V::to_bytes(v.borrow())?), router, groups)
    }
    fn restore(&mut self, key: K, value: &[u8], memory: &mut StateMemory) -> Result<(), OperatorError> {
        let value = V::from_bytes(value)?;
        memory.grow(entry_bytes::<K, V>(key.borrow()) + heap_of(&value))?;
        self.map.insert(key, value);
        Ok(())
    }
    fn keys(&self) -> Vec<K> {
        self.map.keys().cloned().collect()
    }
    fn clear_key(&mut self, key: &K::Borrowed, memory: &mut StateMemory) {
        if let Some(v) = self.map.remove(key) {
            memory.shrink(entry_bytes::<K, V>(key) + heap_of(&v));
        }
    }
}

pub(super) struct ListTable<K, V> {
    pub(super) name: String,
    pub(super) map: FxMap<K, Vec<V>>,
}

impl<K: Key, V: Data> Table<K> for ListTable<K, V> {
    fn name(&self) -> &str {
        &self.name
    }
    fn snapshot(&self, router: &KeyGroupRouter, groups: &mut BTreeMap<u32, Vec<u8>>) -> Result<(), OperatorError> {
        snapshot_table(
            &self.name,
            self.map.iter(),
            |l| put_items(l.iter().map(|v| Ok(V::to_bytes(v.borrow())?))),
            router,
            groups,
        )
    }
    fn restore(&mut self, key: K, value: &[u8], memory: &mut StateMemory) -> Result<(), OperatorError> {
        let list = items(value)?.into_iter().map(V::from_bytes).collect::<Result<Vec<_>, _>>()?;
        memory.grow(entry_bytes::<K, Vec<V>>(key.borrow()) + list_bytes(&list))?;
        self.map.insert(key, list);
        Ok(())
    }
    fn keys(&self) -> Vec<K> {
        self.map.keys().cloned().collect()
    }
    fn clear_key(&mut self, key: &K::Borrowed, memory: &mut StateMemory) {
        if let Some(l) = self.map.remove(key) {
            memory.shrink(entry_bytes::<K, Vec<V>>(key) + list_bytes(&l));
        }
    }
}

pub(super) struct MapTable<K, UK, UV> {
    pub(super) name: String,
    pub(super) map: FxMap<K, FxMap<UK, UV>>,
}

impl<K: Key, UK: Key, UV: Data> Table<K> for MapTable<K, UK, UV> {
    fn name(&self) -> &str {
        &self.name
    }
    fn snapshot(&self, router: &KeyGroupRouter, groups: &mut BTreeMap<u32, Vec<u8>>) -> Result<(), OperatorError> {
        snapshot_table(
            &self.name,
            self.map.iter(),
            |m| {
                put_items(m.iter().flat_map(|(uk, uv)| {
                    [
                        UK::to_bytes(uk.borrow()).map_err(OperatorError::from),
                        UV::to_bytes(uv.borrow()).map_err(OperatorError::from),
                    ]
                }))
            },
            router,
            groups,
        )
    }
    fn restore(&mut self, key: K, value: &[u8], memory: &mut StateMemory) -> Result<(), OperatorError> {
        let parts = items(value)?;
        if parts.len() % 2 != 0 {
            return Err(OperatorError::User("malformed state snapshot: a map entry lacks its value".into()));
        }
        let mut m = FxMap::default();
        for pair in parts.chunks(2) {
            let (uk, uv) = (UK::from_bytes(pair[0])?, UV::from_bytes(pair[1])?);
            memory.grow(entry_bytes::<UK, UV>(uk.borrow()) + heap_of(&uv))?;
            m.insert(uk, uv);
        }
        memory.grow(entry_bytes::<K, FxMap<UK, UV>>(key.borrow()))?;
        self.map.insert(key, m);
        Ok(())
    }
    fn keys(&self) -> Vec<K> {
        self.map.keys().cloned().collect()
    }
    fn clear_key(&mut self, key: &K::Borrowed, memory: &mut StateMemory) {
        if let Some(m) = self.map.remove(key) {
            memory.shrink(map_bytes::<K, UK, UV>(key, &m));
        }
    }
}

/// What a key's map takes: its entry in the table and each of its own.
pub(super) fn map_bytes<K: Key, UK: Key, UV: Data>(key: &K::Borrowed, m: &FxMap<UK, UV>) -> u64 {
    let entries: u64 = m.iter().map(|(uk, uv)| entry_bytes::<UK, UV>(uk.borrow()) + heap_of(uv)).sum();
    entry_bytes::<K, FxMap<UK, UV>>(key) + entries
}

/// Reducing and aggregating state: an accumulator per key, folded by `agg`.
pub(super) struct FoldTable<K: Key, T: Data, A: Aggregator<K, T>> {
    pub(super) values: ValueTable<K, A::Acc>,
    pub(super) agg: A,
    pub(super) _t: PhantomData<fn(&T)>,
}

impl<K: Key, T: Data, A: Aggregator<K, T>> Table<K> for FoldTable<K, T, A> {
    fn name(&self) -> &str {
        self.values.name()
    }
    fn snapshot(&self, router: &KeyGroupRouter, groups: &mut BTreeMap<u32, Vec<u8>>) -> Result<(), OperatorError> {
        self.values.snapshot(router, groups)
    }
    fn restore(&mut self, key: K, value: &[u8], memory: &mut StateMemory) -> Result<(), OperatorError> {
        self.values.restore(key, value, memory)
    }
    fn keys(&self) -> Vec<K> {
        self.values.keys()
    }
    fn clear_key(&mut self, key: &K::Borrowed, memory: &mut StateMemory) {
        self.values.clear_key(key, memory);
    }
}
