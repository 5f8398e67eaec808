//! Per-key aggregation: count, reduce and user aggregators, running or at the
//! end of input.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Folds the records of each key into an accumulator, and turns it into output.
/// `first` starts a key's accumulator from its first record; `add` folds each
/// later one. (`count`, `reduce` and averages are aggregators.)
pub trait Aggregator<K: Key, T: Data>: Clone + Send + Sync + 'static {
    /// The per-key accumulator (kept in keyed state, so snapshotted).
    type Acc: Data;
    /// What is emitted.
    type Out: Data;
    /// A key's accumulator from its first record.
    fn first(&self, record: &T::Borrowed) -> Self::Acc;
    /// Folds a later record in.
    fn add(&self, acc: &mut Self::Acc, record: &T::Borrowed);
    /// The output for `key`.
    fn result(&self, key: &K::Borrowed, acc: &Self::Acc) -> Self::Out;
}

/// Counts each key's records: emits `(key, count)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Count;

impl<K: Key, T: Data> Aggregator<K, T> for Count
where
    (K, u64): Data,
{
    type Acc = u64;
    type Out = (K, u64);
    #[inline(always)]
    fn first(&self, _: &T::Borrowed) -> u64 {
        1
    }
    #[inline(always)]
    fn add(&self, acc: &mut u64, _: &T::Borrowed) {
        *acc += 1;
    }
    fn result(&self, key: &K::Borrowed, acc: &u64) -> (K, u64) {
        (K::to_owned_record(key), *acc)
    }
}

/// Reduces each key's records with a function of two records: emits the
/// reduced record.
pub struct Reduce<F: ?Sized>(pub(crate) Arc<F>);

impl<F: ?Sized> Clone for Reduce<F> {
    fn clone(&self) -> Self {
        Reduce(self.0.clone())
    }
}

impl<K: Key, T: Data, F> Aggregator<K, T> for Reduce<F>
where
    F: ?Sized + Fn(&T, &T::Borrowed) -> T + Send + Sync + 'static,
{
    type Acc = T;
    type Out = T;
    fn first(&self, record: &T::Borrowed) -> T {
        T::to_owned_record(record)
    }
    fn add(&self, acc: &mut T, record: &T::Borrowed) {
        *acc = (self.0)(acc, record);
    }
    fn result(&self, _: &K::Borrowed, acc: &T) -> T {
        acc.clone()
    }
}

/// The accumulators of an aggregation, by key.
pub(crate) struct AggregateOp<K: Key, T: Data, S, A: Aggregator<K, T>> {
    name: String,
    selector: Arc<S>,
    agg: A,
    running: bool,
    /// The accumulators, by key (snapshotted as one value state).
    table: ValueTable<K, A::Acc>,
    memory: StateMemory,
    next: Box<dyn Collector<A::Out>>,
    restore: Option<Arc<JobSnapshot>>,
    task: Option<TaskInfo>,
    failure: Failure,
    /// The entries left to emit at the end of input.
    finishing: Option<hashbrown::hash_table::IntoIter<(K, A::Acc)>>,
    _t: PhantomData<fn(&T)>,
}

/// Entries emitted per step at the end of input, so the task can wait for its
/// outputs between steps.
pub(super) const FINISH_STEP: usize = 1024;

/// The name an aggregation's state has in snapshots.
const TABLE: &str = "table";

impl<K: Key, T: Data, S: KeySelector<K, T>, A: Aggregator<K, T>> AggregateOp<K, T, S, A> {
    /// Folds `record` into its key's accumulator and, if `running` (the
    /// operator's own flag, passed as a constant where a batch is folded),
    /// emits the key's new result.
    /// `hash`: its key's, where [`Self::prefetch`] worked it out already.
    #[inline(always)]
    fn one(&mut self, record: &T::Borrowed, running: bool, hash: Option<u64>) {
        let AggregateOp { selector, agg, table, memory, next, failure, .. } = self;
        let fresh = selector.with_key(record, |key| match table.map.get_mut_hashed(key, hash) {
            Some(acc) => {
                // Free for plain data: both sides are the constant 0.
                let before = heap_of(acc);
                agg.add(acc, record);
                let after = heap_of(acc);
                if after != before {
                    if let Err(e) = memory.resize(before, after) {
                        failure.set(e);
                    }
                }
                if running {
                    next.collect(agg.result(key, acc).borrow());
                }
                false
            }
            None => true,
        });
        if fresh {
            self.first(record);
        }
    }

    /// Starts loading the table slot of `record`'s key; its hash.
    #[inline(always)]
    fn prefetch(&self, record: &T::Borrowed) -> u64 {
        self.selector.with_key(record, |key| self.table.map.prefetch(key))
    }

    /// A key's first record: its state is created (and charged to memory).
    #[cold]
    #[inline(never)]
    fn first(&mut self, record: &T::Borrowed) {
        let AggregateOp { selector, agg, running, table, memory, next, failure, .. } = self;
        selector.with_key(record, |key| {
            let acc = agg.first(record);
            if let Err(e) = memory.grow(entry_bytes::<K, A::Acc>(key) + heap_of(&acc)) {
                return failure.set(e);
            }
            let acc = table.map.insert_new(K::to_owned_record(key), acc);
            if *running {
                next.collect(agg.result(key, acc).borrow());
            }
        });
    }
}

impl<K: Key, T: Data, S: KeySelector<K, T>, A: Aggregator<K, T>> Collector<T>
    for SharedCollector<AggregateOp<K, T, S, A>>
{
    #[inline]
    fn collect(&mut self, record: &T::Borrowed) {
        let mut op = self.0.borrow_mut();
        let running = op.running;
        op.one(record, running, None);
    }

    fn collect_batch(&mut self, records: &[T]) {
        let mut op = self.0.borrow_mut();
        // One loop per value of the flag: the flag is not read per record.
        if op.running {
            records.iter().for_each(|r| op.one(r.borrow(), true, None));
        } else {
            records.iter().for_each(|r| op.one(r.borrow(), false, None));
        }
    }

    fn prefetches(&self) -> bool {
        S::CHEAP && std::cell::RefCell::borrow(&self.0).table.map.outgrows_cache()
    }

    #[inline]
    fn prefetch(&mut self, record: &T::Borrowed) -> u64 {
        std::cell::RefCell::borrow(&self.0).prefetch(record)
    }

    #[inline]
    fn collect_prefetched(&mut self, record: &T::Borrowed, hash: u64) {
        let mut op = self.0.borrow_mut();
        let running = op.running;
        op.one(record, running, Some(hash));
    }
}

impl<K: Key, T: Data, S: KeySelector<K, T>, A: Aggregator<K, T>> Lifecycle for AggregateOp<K, T, S, A> {
    fn name(&self) -> &str {
        &self.name
    }

    fn open(&mut self, task: &TaskInfo) -> Result<(), OperatorError> {
        self.memory.account_to(task.managed_memory.clone())?;
        if let Some(snapshot) = self.restore.take() {
            let AggregateOp { table, memory, .. } = self;
            restore_entries(&snapshot, &self.name, task, |_, k, v| table.restore(K::from_bytes(k)?, v, memory))?;
        }
        self.task = Some(task.clone());
        Ok(())
    }

    fn snapshot(&mut self, _id: u64) -> Result<Vec<OperatorSnapshot>, OperatorError> {
        let Some(task) = &self.task else { return Ok(Vec::new()) };
        let router = KeyGroupRouter::new(task.parallelism, task.max_parallelism);
        let mut key_groups = BTreeMap::new();
        self.table.snapshot(&router, &mut key_groups)?;
        Ok(vec![OperatorSnapshot {
            operator: self.name.clone(),
            max_parallelism: task.max_parallelism,
            key_groups,
            operator_state: Vec::new(),
        }])
    }

    fn finish(&mut self) -> Result<bool, OperatorError> {
        if self.running {
            return Ok(true);
        }
        if self.finishing.is_none() {
            let table = std::mem::take(&mut self.table.map);
            self.memory.shrink(self.memory.used_bytes());
            self.finishing = Some(table.into_iter());
        }
        let AggregateOp { agg, next, finishing, .. } = self;
        let Some(entries) = finishing else { return Ok(true) };
        for (k, acc) in entries.by_ref().take(FINISH_STEP) {
            let out = agg.result(k.borrow(), &acc);
            next.collect(out.borrow());
        }
        Ok(entries.len() == 0)
    }
}

pub(crate) struct AggregateFactory<K, T, S, A: Aggregator<K, T>, O = <A as Aggregator<K, T>>::Out>
where
    K: Key,
    T: Data,
    O: Data,
{
    pub(crate) name: Name,
    pub(crate) selector: Arc<S>,
    pub(crate) agg: A,
    pub(crate) running: bool,
    pub(crate) next: Port<O>,
    pub(crate) _t: PhantomData<fn(&K, &T)>,
}

impl<K: Key, T: Data, S: KeySelector<K, T>, A: Aggregator<K, T>> NodeFactory<T> for AggregateFactory<K, T, S, A> {
    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Box<dyn Collector<T>>, EngineError> {
        let next = build_port(&self.next, ctx)?;
        let name = self.name.get();
        let op = AggregateOp {
            name: name.clone(),
            selector: self.selector.clone(),
            agg: self.agg.clone(),
            running: self.running,
            table: ValueTable { name: TABLE.to_string(), map: KeyMap::default() },
            memory: StateMemory::new(),
            next,
            restore: ctx.restore.clone(),
            task: None,
            failure: ctx.failure.clone(),
            finishing: None,
            _t: PhantomData,
        };
        Ok(ctx.stateful(&name, op))
    }
}
