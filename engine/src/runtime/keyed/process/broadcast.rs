//! A keyed stream connected to a broadcast stream (Flink's
//! `KeyedBroadcastProcessFunction`): the keyed input's records reach the
//! subtask of their key, with its keyed state and timers; every record of the
//! broadcast input reaches every subtask, which keeps them in a broadcast state
//! the keyed side reads — rules applied to events, a model to requests.
//!
//! Every subtask sees the same broadcast records, so a function that changes
//! its broadcast state only from them holds the same copy on each: the state
//! is snapshotted whole per subtask (`operator/broadcast`) and, at any
//! parallelism, every new subtask restores one old subtask's copy. Records of
//! one upstream subtask arrive in their order; those of several interleave
//! differently on each subtask, so state that depends on the order (a record
//! that clears the ones before it) wants a broadcast source of parallelism 1.
//! How the two inputs interleave is not fixed either: read the broadcast state
//! where its being complete does not matter, or at the end of input.

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::runtime::collector::{named, unopened};
use crate::runtime::ops::{list_items, restored_list, ListRef};

/// The snapshot entry of a keyed-broadcast operator's broadcast state.
fn broadcast_entry(operator: &str) -> String {
    format!("{operator}/broadcast")
}

/// A function over a keyed stream connected to a broadcast stream, with keyed
/// state and timers for the keyed side and a broadcast state of `B` records
/// that every subtask holds (Flink's `KeyedBroadcastProcessFunction`).
///
/// ```
/// use shardflow_engine::{
///     BroadcastContext, Dataflow, Emitter, Engine, KeyedBroadcastProcessFunction, KeyedContext, OperatorError,
///     StateDeclarations, ValueState,
/// };
///
/// /// Per account, its largest payment; at the end, the accounts whose largest
/// /// is over the lowest threshold broadcast.
/// #[derive(Clone, Default)]
/// struct Alerts {
///     largest: ValueState<u64>,
/// }
///
/// impl KeyedBroadcastProcessFunction<String, (String, u64), u64, String> for Alerts {
///     fn open(&mut self, states: &mut StateDeclarations<'_, String>) -> Result<(), OperatorError> {
///         self.largest = states.value_state("largest")?;
///         Ok(())
///     }
///     fn process_element(
///         &mut self,
///         payment: &(String, u64),
///         _thresholds: &[u64],
///         ctx: &mut KeyedContext<'_, String>,
///         _: &mut Emitter<'_, String>,
///     ) -> Result<(), OperatorError> {
///         let now = ctx.value(&self.largest)?.copied().unwrap_or(0).max(payment.1);
///         ctx.set_value(&self.largest, now)
///     }
///     fn process_broadcast(
///         &mut self,
///         threshold: &u64,
///         ctx: &mut BroadcastContext<'_, String, u64>,
///         _: &mut Emitter<'_, String>,
///     ) -> Result<(), OperatorError> {
///         ctx.broadcast().push(*threshold)
///     }
///     fn on_end_of_input(
///         &mut self,
///         thresholds: &[u64],
///         ctx: &mut KeyedContext<'_, String>,
///         out: &mut Emitter<'_, String>,
///     ) -> Result<(), OperatorError> {
///         let largest = ctx.value(&self.largest)?.copied().unwrap_or(0);
///         if thresholds.iter().min().is_some_and(|t| largest > *t) {
///             out.emit(format!("{}: {largest}", ctx.key()));
///         }
///         Ok(())
///     }
/// }
///
/// let df = Dataflow::new("alerts").parallelism(2);
/// let thresholds = df.from_iter("thresholds", vec![500u64, 100]);
/// let payments = vec![("ann".to_string(), 250), ("bob".to_string(), 40), ("ann".to_string(), 20)];
/// let alerts = df
///     .from_iter("payments", payments)
///     .key_by_ref::<String, _>(|p: &(String, u64)| p.0.as_str())
///     .connect_broadcast(&thresholds)
///     .process(Alerts::default())
///     .collect();
/// let engine = Engine::builder().shards(1).build()?;
/// engine.run(df.build()?)?;
/// assert_eq!(alerts.take(), ["ann: 250"]);
/// # Ok::<(), shardflow_engine::EngineError>(())
/// ```
pub trait KeyedBroadcastProcessFunction<K: Key, A: Data, B: Data, O: Data>: Clone + Send + Sync + 'static {
    /// Before the first record: declare the keyed states here.
    fn open(&mut self, _states: &mut StateDeclarations<'_, K>) -> Result<(), OperatorError> {
        Ok(())
    }
    /// One record of the keyed input, of key `ctx.key()`; `broadcast` is the
    /// broadcast state, to read.
    fn process_element(
        &mut self,
        record: &A::Borrowed,
        broadcast: &[B],
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Emitter<'_, O>,
    ) -> Result<(), OperatorError>;
    /// One record of the broadcast input (every subtask gets each): change the
    /// broadcast state from it alone, so that every subtask holds the same
    /// (`ctx.broadcast()`, charged to the slot's managed memory), and the
    /// keyed state of every key this subtask has (`ctx.for_each_key`).
    fn process_broadcast(
        &mut self,
        record: &B::Borrowed,
        ctx: &mut BroadcastContext<'_, K, B>,
        out: &mut Emitter<'_, O>,
    ) -> Result<(), OperatorError>;
    /// A timer of key `ctx.key()` registered for `at` fired (never after the
    /// end of both inputs).
    fn on_timer(
        &mut self,
        _at: u64,
        _broadcast: &[B],
        _ctx: &mut KeyedContext<'_, K>,
        _out: &mut Emitter<'_, O>,
    ) -> Result<(), OperatorError> {
        Ok(())
    }
    /// End of both inputs, once for each key that has keyed state (declared
    /// state or a pending timer).
    fn on_end_of_input(
        &mut self,
        _broadcast: &[B],
        _ctx: &mut KeyedContext<'_, K>,
        _out: &mut Emitter<'_, O>,
    ) -> Result<(), OperatorError> {
        Ok(())
    }
    /// Checkpoint `checkpoint` completed: commit what waited for it.
    fn on_checkpoint_complete(&mut self, _checkpoint: u64) {}
    /// Checkpoint `checkpoint` was aborted: roll back what waited for it.
    fn on_checkpoint_aborted(&mut self, _checkpoint: u64) {}
    /// Last, on every path (as [`KeyedProcessFunction::close`]).
    fn close(&mut self) -> Result<(), OperatorError> {
        Ok(())
    }
}

/// What a keyed-broadcast function sees of its subtask while it processes a
/// broadcast record: the broadcast state to change, and the keyed state of
/// every key the subtask has.
pub struct BroadcastContext<'a, K: Key, B> {
    broadcast: &'a mut Vec<B>,
    backend: &'a mut KeyedBackend<K>,
    task: &'a TaskInfo,
}

impl<K: Key, B: Data> BroadcastContext<'_, K, B> {
    /// The broadcast state, to read and change.
    pub fn broadcast(&mut self) -> ListRef<'_, B> {
        ListRef::new(self.broadcast, &mut self.backend.memory)
    }

    /// The subtask.
    pub fn task(&self) -> &TaskInfo {
        self.task
    }

    /// The processing time now (as [`KeyedContext::processing_time`]).
    pub fn processing_time(&self) -> u64 {
        clock::now_us()
    }

    /// Calls `f` with the broadcast state and a context for each key this
    /// subtask has keyed state for (a declared state or a pending timer), as
    /// Flink's `applyToKeyedState`: a new rule re-judges every key, an
    /// expired one clears what it kept. `f` reads and changes the key's state
    /// and timers; the keys are those there were when the call began. Costs a
    /// pass over every key, so it suits records that come seldom. The first
    /// error ends the pass and is returned.
    ///
    /// ```
    /// use shardflow_engine::{
    ///     BroadcastContext, Dataflow, Emitter, Engine, KeyedBroadcastProcessFunction, KeyedContext,
    ///     OperatorError, StateDeclarations, ValueState,
    /// };
    ///
    /// /// Per account, its balance; a broadcast fee is taken from every
    /// /// account there is, and the balances emitted at the end.
    /// #[derive(Clone, Default)]
    /// struct Fees {
    ///     balance: ValueState<i64>,
    /// }
    ///
    /// impl KeyedBroadcastProcessFunction<String, (String, i64), i64, (String, i64)> for Fees {
    ///     fn open(&mut self, states: &mut StateDeclarations<'_, String>) -> Result<(), OperatorError> {
    ///         self.balance = states.value_state("balance")?;
    ///         Ok(())
    ///     }
    ///     fn process_element(
    ///         &mut self,
    ///         deposit: &(String, i64),
    ///         _: &[i64],
    ///         ctx: &mut KeyedContext<'_, String>,
    ///         _: &mut Emitter<'_, (String, i64)>,
    ///     ) -> Result<(), OperatorError> {
    ///         let now = ctx.value(&self.balance)?.copied().unwrap_or(0) + deposit.1;
    ///         ctx.set_value(&self.balance, now)
    ///     }
    ///     fn process_broadcast(
    ///         &mut self,
    ///         fee: &i64,
    ///         ctx: &mut BroadcastContext<'_, String, i64>,
    ///         _: &mut Emitter<'_, (String, i64)>,
    ///     ) -> Result<(), OperatorError> {
    ///         ctx.for_each_key(|_, account| account.update_value(&self.balance, |b| *b -= fee).map(drop))
    ///     }
    ///     fn on_end_of_input(
    ///         &mut self,
    ///         _: &[i64],
    ///         ctx: &mut KeyedContext<'_, String>,
    ///         out: &mut Emitter<'_, (String, i64)>,
    ///     ) -> Result<(), OperatorError> {
    ///         let balance = ctx.value(&self.balance)?.copied().unwrap_or(0);
    ///         out.emit((ctx.key().to_string(), balance));
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let engine = Engine::builder().shards(1).build()?;
    /// let df = Dataflow::new("fees");
    /// let deposits = df.from_iter("deposits", vec![("ann".to_string(), 100), ("bob".to_string(), 40)]);
    /// let fees = df.from_iter("fees", vec![5i64]);
    /// let balances = deposits
    ///     .key_by_ref::<String, _>(|d: &(String, i64)| d.0.as_str())
    ///     .connect_broadcast(&fees)
    ///     .process(Fees::default())
    ///     .collect();
    /// engine.run(df.build()?)?;
    /// // The fee reached the accounts there were when it came (how the two
    /// // inputs interleave is not fixed).
    /// let mut got = balances.take();
    /// got.sort();
    /// assert!(matches!(got[0], (ref a, 100 | 95) if a == "ann") && matches!(got[1], (ref b, 40 | 35) if b == "bob"));
    /// # Ok::<(), shardflow_engine::EngineError>(())
    /// ```
    pub fn for_each_key(
        &mut self,
        mut f: impl FnMut(&[B], &mut KeyedContext<'_, K>) -> Result<(), OperatorError>,
    ) -> Result<(), OperatorError> {
        // The clock was read for the broadcast record.
        self.backend.sweep();
        for key in self.backend.keys() {
            f(self.broadcast, &mut KeyedContext { key: key.borrow(), backend: self.backend, task: self.task })?;
        }
        Ok(())
    }
}

/// A keyed-broadcast function, its keyed input's key selector and its
/// broadcast state.
pub(crate) struct BroadcastInputs<A, B, SA, P> {
    selector: Arc<SA>,
    f: P,
    broadcast: Vec<B>,
    _t: PhantomData<fn(&A)>,
}

impl<K: Key, A: Data, B: Data, O: Data, SA, P> KeyedCallbacks<K, O> for BroadcastInputs<A, B, SA, P>
where
    P: KeyedBroadcastProcessFunction<K, A, B, O>,
{
    fn open(&mut self, states: &mut StateDeclarations<'_, K>) -> Result<(), OperatorError> {
        self.f.open(states)
    }
    fn on_timer(
        &mut self,
        at: u64,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Emitter<'_, O>,
    ) -> Result<(), OperatorError> {
        self.f.on_timer(at, &self.broadcast, ctx, out)
    }
    fn on_end_of_input(
        &mut self,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Emitter<'_, O>,
    ) -> Result<(), OperatorError> {
        self.f.on_end_of_input(&self.broadcast, ctx, out)
    }
    fn on_checkpoint_complete(&mut self, checkpoint: u64) {
        self.f.on_checkpoint_complete(checkpoint);
    }
    fn on_checkpoint_aborted(&mut self, checkpoint: u64) {
        self.f.on_checkpoint_aborted(checkpoint);
    }
    fn close(&mut self) -> Result<(), OperatorError> {
        self.f.close()
    }
    fn restore_lists(
        &mut self,
        operator: &str,
        snapshot: &JobSnapshot,
        task: &TaskInfo,
        memory: &mut StateMemory,
    ) -> Result<(), OperatorError> {
        let items = snapshot.operator_copy_for(&broadcast_entry(operator), task.subtask);
        self.broadcast = restored_list(items, "broadcast", memory)?;
        Ok(())
    }
    fn snapshot_lists(&self, operator: &str, task: &TaskInfo) -> Result<Vec<OperatorSnapshot>, OperatorError> {
        let items = list_items(&self.broadcast)?;
        Ok(vec![OperatorSnapshot::of_list(broadcast_entry(operator), task.max_parallelism, items)])
    }
}

/// A keyed-broadcast operator.
type BroadcastOp<K, A, B, O, SA, P> = KeyedOp<K, O, BroadcastInputs<A, B, SA, P>>;

impl<K: Key, A: Data, B: Data, O: Data, SA: KeySelector<K, A>, P> BroadcastOp<K, A, B, O, SA, P>
where
    P: KeyedBroadcastProcessFunction<K, A, B, O>,
{
    #[inline(always)]
    fn element(&mut self, record: &A::Borrowed) {
        let KeyedOp { core, callbacks: BroadcastInputs { selector, f, broadcast, .. } } = self;
        selector.with_key(record, |key| core.with_key(key, |ctx, out| f.process_element(record, broadcast, ctx, out)));
    }

    fn broadcast(&mut self, record: &B::Borrowed) {
        let KeyedOp { core, callbacks: BroadcastInputs { f, broadcast, .. } } = self;
        let KeyedCore { name, backend, out, failure, task, .. } = core;
        let Some(task) = task.as_ref() else {
            return failure.set(unopened());
        };
        let mut ctx = BroadcastContext { broadcast, backend, task };
        if let Err(e) = f.process_broadcast(record, &mut ctx, &mut out.emitter()) {
            failure.set(named(name, e));
        }
    }
}

impl<K: Key, A: Data, B: Data, O: Data, SA: KeySelector<K, A>, P> Collector<A>
    for FirstInput<BroadcastOp<K, A, B, O, SA, P>>
where
    P: KeyedBroadcastProcessFunction<K, A, B, O>,
{
    fn collect(&mut self, record: &A::Borrowed) {
        KeyedOp::clocked(&self.0, |op| op.element(record));
    }

    fn collect_batch(&mut self, records: &[A]) {
        KeyedOp::clocked_batch(&self.0, records, |op, r| op.element(r));
    }
}

impl<K: Key, A: Data, B: Data, O: Data, SA: KeySelector<K, A>, P> Collector<B>
    for SecondInput<BroadcastOp<K, A, B, O, SA, P>>
where
    P: KeyedBroadcastProcessFunction<K, A, B, O>,
{
    fn collect(&mut self, record: &B::Borrowed) {
        KeyedOp::clocked(&self.0, |op| op.broadcast(record));
    }
}

pub(crate) struct KeyedBroadcastFactory<K, A, B, O: Data, SA, P> {
    pub(crate) name: Name,
    pub(crate) selector: Arc<SA>,
    pub(crate) f: P,
    pub(crate) out: OutPorts<O>,
    pub(crate) _t: PhantomData<fn(&K, &A, &B)>,
}

impl<K: Key, A: Data, B: Data, O: Data, SA: KeySelector<K, A>, P> TwoInputFactory<A, B>
    for KeyedBroadcastFactory<K, A, B, O, SA, P>
where
    P: KeyedBroadcastProcessFunction<K, A, B, O>,
{
    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<(Box<dyn Collector<A>>, Box<dyn Collector<B>>), EngineError> {
        let out = self.out.build(ctx)?;
        let name = self.name.get();
        let op = KeyedOp {
            core: KeyedCore::new(&name, out, ctx),
            callbacks: BroadcastInputs {
                selector: self.selector.clone(),
                f: self.f.clone(),
                broadcast: Vec::new(),
                _t: PhantomData,
            },
        };
        Ok(ctx.stateful_two_inputs(&name, op))
    }
}
