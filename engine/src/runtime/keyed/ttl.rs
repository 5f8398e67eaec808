//! Time-to-live of keyed state (Flink's `StateTtlConfig`: by default the
//! clock restarts on each write — created, set, added to, changed — never on
//! a read; declared with `expire_after_access`, on each read too (Flink's
//! `OnReadAndWrite`); an expired state is never returned). A state declared
//! with a time-to-live keeps, per key, when it was last written (or read); a
//! key whose state is older than that reads as having none, loses it at its
//! next write, and loses it anyway when the operator sweeps: on a timer of its
//! own, every time-to-live (the shortest of the operator's), before a snapshot
//! (which so holds no expired state), before the end-of-input calls and before
//! `for_each_key`. The write times are keyed state too: charged to the slot's
//! managed memory and snapshotted (`\0ttl:<state>`), so a restored state
//! expires when it would have; a state a snapshot has no times for (it had no
//! time-to-live then) starts its clock at the restore. The clock is processing
//! time, read once per batch of records; in `on_timer` it is the timer's own
//! time, so what a timer sees of its key's state does not depend on how late
//! it fires. A clock never moves a state's time back.

use std::cell::Cell;

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::runtime::clock;

/// The snapshot name of state `<name>`'s write times is this and the name.
pub(crate) const TTL_PREFIX: &str = "\0ttl:";

/// A state's time-to-live and when each key last wrote it (or read it, where
/// reads restart the clock) (µs, the processing-time clock). A read sees the
/// state through a shared reference: its restart goes through a `Cell`.
pub(super) struct Expiry<K> {
    ttl_us: u64,
    /// Whether a read restarts the clock too (`expire_after_access`).
    on_read: bool,
    written: FxMap<K, Cell<u64>>,
}

/// Whether a state written at `at` has expired at `now`.
#[inline]
fn expired_at(at: u64, ttl_us: u64, now: u64) -> bool {
    now >= at.saturating_add(ttl_us)
}

impl<K: Key> KeyedBackend<K> {
    /// Gives table `index` a time-to-live of `ttl`, restarted by reads too if
    /// `on_read`.
    fn expire_after(&mut self, index: usize, ttl: Duration, on_read: bool) -> Result<(), OperatorError> {
        let ttl_us = u64::try_from(ttl.as_micros()).unwrap_or(u64::MAX);
        if ttl_us == 0 {
            return Err(OperatorError::User("a state's time-to-live must be at least a microsecond".into()));
        }
        match self.ttls.get_mut(index) {
            Some(slot) => *slot = Some(Expiry { ttl_us, on_read, written: FxMap::default() }),
            None => return Err(handle_mismatch()),
        }
        self.expiring = true;
        Ok(())
    }

    /// `key` writes table `index`: if its state there expired, it is gone
    /// first; its clock starts now. Costs a test of a flag where no state
    /// has a time-to-live.
    #[inline(always)]
    pub(super) fn written(&mut self, index: usize, key: &K::Borrowed) -> Result<(), OperatorError> {
        if self.expiring {
            self.written_expiring(index, key)
        } else {
            Ok(())
        }
    }

    #[inline(never)]
    fn written_expiring(&mut self, index: usize, key: &K::Borrowed) -> Result<(), OperatorError> {
        let Some(Some(expiry)) = self.ttls.get_mut(index) else { return Ok(()) };
        let now = self.now_us;
        match expiry.written.get_mut(key) {
            Some(at) => {
                if expired_at(at.get(), expiry.ttl_us, now) {
                    self.tables[index].clear_key(key, &mut self.memory);
                }
                at.set(at.get().max(now));
                Ok(())
            }
            None => {
                expiry.written.insert(K::to_owned_record(key), Cell::new(now));
                self.memory.grow(entry_bytes::<K, u64>(key))
            }
        }
    }

    /// `key` clears its state in table `index`: its clock stops.
    #[inline]
    pub(super) fn unwritten(&mut self, index: usize, key: &K::Borrowed) {
        if !self.expiring {
            return;
        }
        if let Some(Some(expiry)) = self.ttls.get_mut(index) {
            if expiry.written.remove(key).is_some() {
                self.memory.shrink(entry_bytes::<K, u64>(key));
            }
        }
    }

    /// Whether `key`'s state in table `index` has expired (a read sees none);
    /// one that has not and whose reads restart its clock restarts it.
    #[inline(always)]
    pub(super) fn expired(&self, index: usize, key: &K::Borrowed) -> bool {
        self.expiring && self.expired_now(index, key)
    }

    #[inline(never)]
    fn expired_now(&self, index: usize, key: &K::Borrowed) -> bool {
        let Some(Some(e)) = self.ttls.get(index) else { return false };
        let Some(at) = e.written.get(key) else { return false };
        if expired_at(at.get(), e.ttl_us, self.now_us) {
            return true;
        }
        if e.on_read {
            at.set(at.get().max(self.now_us));
        }
        false
    }

    /// Reads the clock that writes and reads of states with a time-to-live
    /// go by, once per batch of records (a clock read per access would cost
    /// as much as the access).
    #[inline]
    pub(super) fn clock_in(&mut self) {
        if self.expiring {
            self.now_us = clock::now_us();
        }
    }

    /// Sets that clock to `now`: the time timers due then fire at.
    pub(super) fn clock_at(&mut self, now: u64) {
        self.now_us = now;
    }

    /// Removes every state expired at the clock's reading.
    pub(super) fn sweep(&mut self) {
        if !self.expiring {
            return;
        }
        let KeyedBackend { tables, memory, ttls, swept_at, now_us, .. } = self;
        for (table, expiry) in tables.iter_mut().zip(ttls.iter_mut()) {
            let Some(Expiry { ttl_us, written, .. }) = expiry else { continue };
            written.retain(|key, at| {
                let keep = !expired_at(at.get(), *ttl_us, *now_us);
                if !keep {
                    table.clear_key(key.borrow(), memory);
                    memory.shrink(entry_bytes::<K, u64>(key.borrow()));
                }
                keep
            });
        }
        *swept_at = *now_us;
    }

    /// Reads the clock and sweeps (at the end of input, before a snapshot).
    pub(super) fn sweep_now(&mut self) {
        self.clock_in();
        self.sweep();
    }

    /// When the next sweep is due: a time-to-live after the last, the
    /// shortest of the states that have keys.
    pub(super) fn next_sweep(&self) -> Option<u64> {
        if !self.expiring {
            return None;
        }
        let shortest = self.ttls.iter().flatten().filter(|e| !e.written.is_empty()).map(|e| e.ttl_us).min()?;
        Some(self.swept_at.saturating_add(shortest))
    }

    /// Sweeps if a sweep is due at the clock's reading.
    pub(super) fn sweep_if_due(&mut self) {
        if self.next_sweep().is_some_and(|at| at <= self.now_us) {
            self.sweep();
        }
    }

    /// Appends each state's write times, per key group, to `groups`.
    pub(super) fn snapshot_written(
        &self,
        router: &KeyGroupRouter,
        groups: &mut BTreeMap<u32, Vec<u8>>,
    ) -> Result<(), OperatorError> {
        for (table, expiry) in self.tables.iter().zip(&self.ttls) {
            let Some(e) = expiry.as_ref().filter(|e| !e.written.is_empty()) else { continue };
            let name = format!("{TTL_PREFIX}{}", table.name());
            snapshot_table(&name, e.written.iter(), |at| Ok(at.get().to_le_bytes().to_vec()), router, groups)?;
        }
        Ok(())
    }

    /// Starts now the clocks of restored states the snapshot had no write
    /// time for.
    pub(super) fn start_unwritten_clocks(&mut self) -> Result<(), OperatorError> {
        let now = clock::now_us();
        let KeyedBackend { tables, memory, ttls, .. } = self;
        for (table, expiry) in tables.iter().zip(ttls.iter_mut()) {
            let Some(e) = expiry else { continue };
            for key in table.keys() {
                if !e.written.contains_key(key.borrow()) {
                    memory.grow(entry_bytes::<K, u64>(key.borrow()))?;
                    e.written.insert(key, Cell::new(now));
                }
            }
        }
        Ok(())
    }
}

/// Restores one write time of a state: into `expiry` if the state (still)
/// has a time-to-live, else nowhere (the state no longer expires).
pub(super) fn restore_written<K: Key>(
    expiry: Option<&mut Expiry<K>>,
    key: &[u8],
    at: &[u8],
    memory: &mut StateMemory,
) -> Result<(), OperatorError> {
    let Some(e) = expiry else { return Ok(()) };
    let key = K::from_bytes(key)?;
    let at = <[u8; 8]>::try_from(at)
        .map(u64::from_le_bytes)
        .map_err(|_| OperatorError::User("malformed state snapshot: a write time is not a time".into()))?;
    memory.grow(entry_bytes::<K, u64>(key.borrow()))?;
    e.written.insert(key, Cell::new(at));
    Ok(())
}

impl<K: Key> StateDeclarations<'_, K> {
    /// Gives state `handle` a time-to-live (Flink's `StateTtlConfig`): a
    /// key's state there that was not written for `ttl` (set, added to,
    /// changed; reads do not count) reads as none and is removed, freeing
    /// its managed memory — the state of keys that come and go stays bounded
    /// without a timer per key. The time is processing time.
    ///
    /// ```
    /// use std::time::Duration;
    /// use shardflow_engine::{Emitter, KeyedContext, KeyedProcessFunction, OperatorError, StateDeclarations, ValueState};
    ///
    /// /// A session's last page per user, forgotten after 30 idle minutes.
    /// #[derive(Clone, Default)]
    /// struct LastPage {
    ///     page: ValueState<String>,
    /// }
    ///
    /// impl KeyedProcessFunction<String, (String, String), (String, String)> for LastPage {
    ///     fn open(&mut self, states: &mut StateDeclarations<'_, String>) -> Result<(), OperatorError> {
    ///         let page = states.value_state("page")?;
    ///         states.expire_after(&page, Duration::from_secs(30 * 60))?;
    ///         self.page = page;
    ///         Ok(())
    ///     }
    ///     fn process(
    ///         &mut self,
    ///         visit: &(String, String),
    ///         ctx: &mut KeyedContext<'_, String>,
    ///         out: &mut Emitter<'_, (String, String)>,
    ///     ) -> Result<(), OperatorError> {
    ///         if let Some(previous) = ctx.value(&self.page)? {
    ///             out.emit((previous.clone(), visit.1.clone()));
    ///         }
    ///         ctx.set_value(&self.page, visit.1.clone())
    ///     }
    /// }
    /// ```
    pub fn expire_after<S>(&mut self, handle: &StateHandle<S>, ttl: Duration) -> Result<(), OperatorError> {
        let index = self.backend.index_of(handle)?;
        self.backend.expire_after(index, ttl, false)
    }

    /// As [`Self::expire_after`], but a read restarts the clock too (Flink's
    /// `UpdateType.OnReadAndWrite`): a key's state there that was neither
    /// read nor written for `ttl` expires — a cache entry kept while it is
    /// used. A read of state that has expired does not revive it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use shardflow_engine::{Emitter, KeyedContext, KeyedProcessFunction, OperatorError, StateDeclarations, ValueState};
    ///
    /// /// A user's profile, looked up per request and kept while requests come.
    /// #[derive(Clone, Default)]
    /// struct Profiles {
    ///     profile: ValueState<String>,
    /// }
    ///
    /// impl KeyedProcessFunction<String, String, String> for Profiles {
    ///     fn open(&mut self, states: &mut StateDeclarations<'_, String>) -> Result<(), OperatorError> {
    ///         let profile = states.value_state("profile")?;
    ///         states.expire_after_access(&profile, Duration::from_secs(10 * 60))?;
    ///         self.profile = profile;
    ///         Ok(())
    ///     }
    ///     fn process(
    ///         &mut self,
    ///         request: &str,
    ///         ctx: &mut KeyedContext<'_, String>,
    ///         out: &mut Emitter<'_, String>,
    ///     ) -> Result<(), OperatorError> {
    ///         match ctx.value(&self.profile)? {
    ///             Some(p) => out.emit(format!("{p}: {request}")), // read: kept 10 more minutes
    ///             None => ctx.set_value(&self.profile, format!("profile of {}", ctx.key()))?,
    ///         }
    ///         Ok(())
    ///     }
    /// }
    /// ```
    pub fn expire_after_access<S>(&mut self, handle: &StateHandle<S>, ttl: Duration) -> Result<(), OperatorError> {
        let index = self.backend.index_of(handle)?;
        self.backend.expire_after(index, ttl, true)
    }
}
