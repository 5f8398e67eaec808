//! The hash table a keyed value lives in, by its real key: hashbrown's
//! `HashTable` with FxHash, and one thing a `HashMap` cannot do — fetch a key's
//! slot into the cache ahead of its use ([`KeyMap::prefetch`]), so a batch of
//! records waits for memory once, not once per record.

use std::hash::{BuildHasher, Hash};

use hashbrown::hash_table::{self, HashTable};
use rustc_hash::FxBuildHasher;

use crate::data::Key;

/// The size of a table's slots from which lookups are announced ahead: half
/// a core's L2 cache on the machines we measure on (1.25 MiB).
const PREFETCH_FROM_BYTES: usize = 640 << 10;

/// Values by key, hashed with FxHash.
pub(crate) struct KeyMap<K, V> {
    table: HashTable<(K, V)>,
}

impl<K, V> Default for KeyMap<K, V> {
    fn default() -> Self {
        KeyMap { table: HashTable::new() }
    }
}

#[inline(always)]
fn hash<Q: Hash + ?Sized>(key: &Q) -> u64 {
    FxBuildHasher.hash_one(key)
}

impl<K: Key, V> KeyMap<K, V> {
    /// Whether the table has outgrown what a core keeps in its cache, so that
    /// looking a key up waits for memory and [`Self::prefetch`] pays for itself
    /// (a table that fits is read faster without the hint's second lookup).
    pub(crate) fn outgrows_cache(&self) -> bool {
        self.table.num_buckets() * std::mem::size_of::<(K, V)>() > PREFETCH_FROM_BYTES
    }

    /// `key`'s value.
    #[inline(always)]
    pub(crate) fn get(&self, key: &K::Borrowed) -> Option<&V> {
        self.table.find(hash(key), |(k, _)| k.borrow() == key).map(|(_, v)| v)
    }

    /// `key`'s value, to change.
    #[inline(always)]
    pub(crate) fn get_mut(&mut self, key: &K::Borrowed) -> Option<&mut V> {
        self.get_mut_hashed(key, None)
    }

    /// `key`'s value, to change, by its hash where [`Self::prefetch`] gave it.
    #[inline(always)]
    pub(crate) fn get_mut_hashed(&mut self, key: &K::Borrowed, known: Option<u64>) -> Option<&mut V> {
        let h = known.unwrap_or_else(|| hash(key));
        self.table.find_mut(h, |(k, _)| k.borrow() == key).map(|(_, v)| v)
    }

    /// Sets `key`'s value; the value it had, if any.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let h = hash(key.borrow());
        match self.table.entry(h, |(k, _)| k == &key, |(k, _)| hash(k.borrow())) {
            hash_table::Entry::Occupied(mut e) => Some(std::mem::replace(&mut e.get_mut().1, value)),
            hash_table::Entry::Vacant(e) => {
                e.insert((key, value));
                None
            }
        }
    }

    /// Gives a key that has no value yet its first; the value, to change.
    /// (The caller has just looked the key up: a second entry for it would
    /// split its state.)
    pub(crate) fn insert_new(&mut self, key: K, value: V) -> &mut V {
        debug_assert!(self.get(key.borrow()).is_none(), "insert_new of a key that has a value");
        let h = hash(key.borrow());
        &mut self.table.insert_unique(h, (key, value), |(k, _)| hash(k.borrow())).into_mut().1
    }

    /// Takes `key`'s value out.
    pub(crate) fn remove(&mut self, key: &K::Borrowed) -> Option<V> {
        match self.table.find_entry(hash(key), |(k, _)| k.borrow() == key) {
            Ok(e) => Some(e.remove().0 .1),
            Err(_) => None,
        }
    }

    /// Every key and its value.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.table.iter().map(|(k, v)| (k, v))
    }

    /// Every key.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.table.iter().map(|(k, _)| k)
    }

    /// Asks the processor to bring `key`'s entry into the cache, without
    /// waiting for it: a hint, right or wrong it changes nothing but time. Only
    /// the table's control bytes are read: the slot is the first on the key's
    /// probe whose 7-bit tag matches its hash, rarely another key's. Returns
    /// the key's hash, for [`Self::get_mut_hashed`].
    #[inline(always)]
    pub(crate) fn prefetch(&self, key: &K::Borrowed) -> u64 {
        let h = hash(key);
        let slot = self.table.iter_hash_buckets(h).next();
        if let Some((k, v)) = slot.and_then(|i| self.table.get_bucket(i)) {
            // Both ends: an entry may straddle two cache lines.
            shardflow_memory::prefetch(k);
            shardflow_memory::prefetch(v);
        }
        h
    }
}

impl<K, V> IntoIterator for KeyMap<K, V> {
    type Item = (K, V);
    type IntoIter = hash_table::IntoIter<(K, V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.table.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_changed_and_removed_by_their_borrowed_form() {
        let mut map = KeyMap::<String, u64>::default();
        assert_eq!(map.get("a"), None);
        map.prefetch("a"); // an empty table: nothing to load, nothing changes
        assert_eq!(map.insert("a".into(), 1), None);
        *map.insert_new("b".into(), 2) += 10;
        assert_eq!(map.insert("a".into(), 3), Some(1), "the old value comes back");
        if let Some(v) = map.get_mut("a") {
            *v += 1;
        }
        // An announced key is found again by the hash its announcement gave.
        let a = map.prefetch("a");
        let missing = map.prefetch("missing");
        if let Some(v) = map.get_mut_hashed("a", Some(a)) {
            *v += 1;
        }
        assert_eq!(map.get_mut_hashed("missing", Some(missing)), None);
        assert_eq!(map.get_mut_hashed("b", None), Some(&mut 12), "without one, worked out");
        assert_eq!((map.get("a"), map.get("b"), map.get("c")), (Some(&5), Some(&12), None));
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(map.remove("a"), Some(5));
        assert_eq!(map.remove("a"), None);
        let all: Vec<(String, u64)> = map.into_iter().collect();
        assert_eq!(all, [("b".to_string(), 12)]);
    }

    #[test]
    fn a_table_outgrows_the_cache_past_640_kib_of_slots() {
        let mut map = KeyMap::<String, u64>::default();
        // String key and count: 32 bytes a slot; 14 336 keys fill 16 384 slots (512 KiB).
        for i in 0..14_336 {
            map.insert_new(format!("k{i}"), 1);
        }
        assert!(!map.outgrows_cache(), "{} slots", map.table.num_buckets());
        map.insert_new("one more".into(), 1);
        assert!(map.outgrows_cache(), "{} slots", map.table.num_buckets());
        // Announcing every key ahead changes nothing.
        for i in 0..14_336 {
            map.prefetch(&format!("k{i}"));
        }
        assert!((0..14_336).all(|i| map.get(&format!("k{i}")) == Some(&1)));
        let mut small = KeyMap::<u64, u64>::default();
        for i in 0..28_672 {
            small.insert_new(i, i);
        }
        assert!(!small.outgrows_cache(), "16-byte slots: 32 768 of them are 512 KiB");
        small.insert_new(u64::MAX, 0);
        assert!(small.outgrows_cache(), "{} slots", small.table.num_buckets());
    }
}
