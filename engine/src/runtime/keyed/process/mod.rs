//! Keyed process functions with one and two inputs, on the keyed state of
//! the parent module and processing-time timers; a keyed stream connected to
//! a broadcast stream is [`broadcast`].

mod broadcast;

pub(crate) use broadcast::KeyedBroadcastFactory;
pub use broadcast::{BroadcastContext, KeyedBroadcastProcessFunction};

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::runtime::clock;
use crate::runtime::collector::{named, unopened, FirstInput, SecondInput, Shared};
use crate::runtime::side::{OutPorts, Outputs};

/// A function over each record of a keyed stream, with keyed state and
/// processing-time timers (Flink's `KeyedProcessFunction`).
///
/// ```
/// use shardflow_engine::{
///     AggregatingState, Count, Dataflow, Emitter, Engine, KeyedContext, KeyedProcessFunction, OperatorError,
///     ReducingState, StateDeclarations, ValueState,
/// };
///
/// /// Per user: purchases counted, the largest one, and a reminder timer an
/// /// hour after the first (deleted by the time kept in state).
/// #[derive(Clone, Default)]
/// struct Purchases {
///     count: AggregatingState<(String, u64), Count>,
///     largest: ReducingState<u64>,
///     reminder: ValueState<u64>,
/// }
///
/// impl KeyedProcessFunction<String, (String, u64), String> for Purchases {
///     fn open(&mut self, states: &mut StateDeclarations<'_, String>) -> Result<(), OperatorError> {
///         self.count = states.aggregating_state("count", Count)?;
///         self.largest = states.reducing_state("largest", |a: &u64, b: &u64| *a.max(b))?;
///         self.reminder = states.value_state("reminder")?;
///         Ok(())
///     }
///     fn process(
///         &mut self,
///         purchase: &(String, u64),
///         ctx: &mut KeyedContext<'_, String>,
///         _: &mut Emitter<'_, String>,
///     ) -> Result<(), OperatorError> {
///         ctx.aggregating_add(&self.count, purchase)?;
///         ctx.reducing_add(&self.largest, &purchase.1)?;
///         if ctx.value(&self.reminder)?.is_none() {
///             let at = ctx.processing_time() + 3_600_000_000;
///             ctx.register_timer(at)?;
///             ctx.set_value(&self.reminder, at)?;
///         }
///         Ok(())
///     }
///     fn on_end_of_input(
///         &mut self,
///         ctx: &mut KeyedContext<'_, String>,
///         out: &mut Emitter<'_, String>,
///     ) -> Result<(), OperatorError> {
///         if let Some(at) = ctx.value(&self.reminder)?.copied() {
///             ctx.delete_timer(at);
///         }
///         let count = ctx.aggregating_get(&self.count)?;
///         let largest = ctx.reducing_get(&self.largest)?;
///         if let (Some((user, n)), Some(largest)) = (count, largest) {
///             out.emit(format!("{user}: {n} purchases, largest {largest}"));
///         }
///         Ok(())
///     }
/// }
///
/// let df = Dataflow::new("purchases").parallelism(2);
/// let purchases = vec![("ann".to_string(), 30), ("bob".to_string(), 5), ("ann".to_string(), 70)];
/// let summaries = df
///     .from_iter("purchases", purchases)
///     .key_by_ref::<String, _>(|p: &(String, u64)| p.0.as_str())
///     .process(Purchases::default())
///     .collect();
/// let engine = Engine::builder().shards(1).build()?;
/// engine.run(df.build()?)?;
/// let mut got = summaries.take();
/// got.sort();
/// assert_eq!(got, ["ann: 2 purchases, largest 70", "bob: 1 purchases, largest 5"]);
/// # Ok::<(), shardflow_engine::EngineError>(())
/// ```
pub trait KeyedProcessFunction<K: Key, T: Data, O: Data>: Clone + Send + Sync + 'static {
    /// Before the first record: declare the states here.
    fn open(&mut self, _states: &mut StateDeclarations<'_, K>) -> Result<(), OperatorError> {
        Ok(())
    }
    /// One record of key `ctx.key()`.
    fn process(
        &mut self,
        record: &T::Borrowed,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Emitter<'_, O>,
    ) -> Result<(), OperatorError>;
    /// A timer of key `ctx.key()` registered for `at` (processing time,
    /// microseconds since the Unix epoch) fired (never after the end of input:
    /// see [`KeyedContext::register_timer`]).
    fn on_timer(
        &mut self,
        _at: u64,
        _ctx: &mut KeyedContext<'_, K>,
        _out: &mut Emitter<'_, O>,
    ) -> Result<(), OperatorError> {
        Ok(())
    }
    /// End of input, once for each key that has state (declared state or a
    /// pending timer).
    fn on_end_of_input(
        &mut self,
        _ctx: &mut KeyedContext<'_, K>,
        _out: &mut Emitter<'_, O>,
    ) -> Result<(), OperatorError> {
        Ok(())
    }
    /// Checkpoint `checkpoint` completed: commit what waited for it.
    fn on_checkpoint_complete(&mut self, _checkpoint: u64) {}
    /// Checkpoint `checkpoint` was aborted: roll back what waited for it.
    fn on_checkpoint_aborted(&mut self, _checkpoint: u64) {}
    /// Last, on every path (as Flink's `close`): after the end of input (or the
    /// final snapshot of a job that stops with one), or when the task is
    /// cancelled or fails — then an error returned here is logged and the
    /// task's own cause stands. Release what `open` acquired.
    fn close(&mut self) -> Result<(), OperatorError> {
        Ok(())
    }
}

/// The shared machinery of one- and two-input keyed process operators.
pub(crate) struct KeyedCore<K: Key, O: Data> {
    name: String,
    backend: KeyedBackend<K>,
    out: Outputs<O>,
    restore: Option<Arc<JobSnapshot>>,
    task: Option<TaskInfo>,
    failure: Failure,
    /// The keys still to get their end-of-input call.
    finishing: Option<Vec<K>>,
}

impl<K: Key, O: Data> KeyedCore<K, O> {
    fn new(name: &str, out: Outputs<O>, ctx: &BuildContext<'_>) -> Self {
        KeyedCore {
            name: name.to_string(),
            backend: KeyedBackend::new(),
            out,
            restore: ctx.restore.clone(),
            task: None,
            failure: ctx.failure.clone(),
            finishing: None,
        }
    }

    /// Runs `f` with a context for `key`; a failure is kept for the task.
    #[inline(always)]
    fn with_key(
        &mut self,
        key: &K::Borrowed,
        f: impl FnOnce(&mut KeyedContext<'_, K>, &mut Emitter<'_, O>) -> Result<(), OperatorError>,
    ) {
        let Some(task) = &self.task else {
            return self.failure.set(unopened());
        };
        let mut ctx = KeyedContext { key, backend: &mut self.backend, task };
        if let Err(e) = f(&mut ctx, &mut self.out.emitter()) {
            self.failure.set(named(&self.name, e));
        }
    }

    fn open(
        &mut self,
        task: &TaskInfo,
        declare: impl FnOnce(&mut StateDeclarations<'_, K>) -> Result<(), OperatorError>,
    ) -> Result<(), OperatorError> {
        self.backend.memory.account_to(task.managed_memory.clone())?;
        declare(&mut StateDeclarations { backend: &mut self.backend, task })?;
        if let Some(s) = self.restore.take() {
            self.backend.restore(&self.name, &s, task)?;
        }
        self.task = Some(task.clone());
        Ok(())
    }

    /// When the task loop should wake for the earliest timer.
    fn next_timer(&self) -> Option<Instant> {
        let timer = self.backend.timers.keys().next().copied();
        [timer, self.backend.next_sweep()].into_iter().flatten().min().and_then(clock::instant_at)
    }

    /// Removes and returns the timers due at `now`, after sweeping expired
    /// state if that is due at the first one's time (each timer then sees
    /// its key's state as at its own time: see [`Self::at_timer`]).
    fn due_timers(&mut self, now: Instant) -> Vec<(u64, K)> {
        let now = clock::us_at(now);
        let due = self.backend.take_due_timers(now);
        self.backend.clock_at(due.first().map_or(now, |(at, _)| *at));
        self.backend.sweep_if_due();
        due
    }

    /// Sets the clock state's time-to-live goes by to a timer's time `at`,
    /// before its `on_timer` call: how late it fires does not change what it
    /// sees.
    fn at_timer(&mut self, at: u64) {
        self.backend.clock_at(at);
    }

    /// Calls `each` for the next keys with state at the end of input; `true`
    /// once every key had its call.
    fn finish_step(&mut self, mut each: impl FnMut(&K::Borrowed, &mut Self)) -> Result<bool, OperatorError> {
        let mut keys = match self.finishing.take() {
            Some(keys) => keys,
            None => {
                self.backend.sweep_now();
                self.backend.keys()
            }
        };
        // This step's keys: the last ones (`keys` keeps the rest).
        let step = keys.split_off(keys.len().saturating_sub(FINISH_STEP));
        for key in &step {
            each(key.borrow(), self);
        }
        let done = keys.is_empty();
        self.finishing = Some(keys);
        Ok(done)
    }

    fn snapshot(&mut self) -> Result<Vec<OperatorSnapshot>, OperatorError> {
        self.backend.sweep_now();
        match &self.task {
            Some(task) => Ok(vec![self.backend.snapshot(&self.name, task)?]),
            None => Ok(Vec::new()),
        }
    }
}

/// What a keyed operator calls back besides its records: open, timers, the end
/// of input (a one- or two-input keyed process function).
pub(crate) trait KeyedCallbacks<K: Key, O: Data> {
    fn open(&mut self, states: &mut StateDeclarations<'_, K>) -> Result<(), OperatorError>;
    fn on_timer(
        &mut self,
        at: u64,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Emitter<'_, O>,
    ) -> Result<(), OperatorError>;
    fn on_end_of_input(&mut self, ctx: &mut KeyedContext<'_, K>, out: &mut Emitter<'_, O>)
        -> Result<(), OperatorError>;
    fn on_checkpoint_complete(&mut self, checkpoint: u64);
    fn on_checkpoint_aborted(&mut self, checkpoint: u64);
    fn close(&mut self) -> Result<(), OperatorError>;
    /// Restores what it keeps besides keyed state (a broadcast state) from
    /// `snapshot`, charging it to `memory`.
    fn restore_lists(
        &mut self,
        _operator: &str,
        _snapshot: &JobSnapshot,
        _task: &TaskInfo,
        _memory: &mut StateMemory,
    ) -> Result<(), OperatorError> {
        Ok(())
    }
    /// Snapshots what it keeps besides keyed state.
    fn snapshot_lists(&self, _operator: &str, _task: &TaskInfo) -> Result<Vec<OperatorSnapshot>, OperatorError> {
        Ok(Vec::new())
    }
}

/// A keyed operator: its state, timers and callbacks `C`.
pub(crate) struct KeyedOp<K: Key, O: Data, C> {
    core: KeyedCore<K, O>,
    callbacks: C,
}

impl<K: Key, O: Data, C> KeyedOp<K, O, C> {
    /// Runs `f`, which hands the shared operator a batch of records (or
    /// one), with the operator borrowed once and its clock read once.
    #[inline(always)]
    fn clocked<R>(op: &Shared<Self>, f: impl FnOnce(&mut Self) -> R) -> R {
        let mut op = op.borrow_mut();
        op.core.backend.clock_in();
        f(&mut op)
    }

    /// [`Self::clocked`] for each of a batch of records: the plain records
    /// the function emits go on in batches.
    fn clocked_batch<T: Data>(op: &Shared<Self>, records: &[T], mut each: impl FnMut(&mut Self, &T::Borrowed)) {
        Self::clocked(op, |op| {
            op.core.out.gather();
            records.iter().for_each(|r| each(op, r.borrow()));
            op.core.out.hand_on();
        })
    }
}

impl<K: Key, O: Data, C: KeyedCallbacks<K, O>> Lifecycle for KeyedOp<K, O, C> {
    fn name(&self) -> &str {
        &self.core.name
    }
    fn open(&mut self, task: &TaskInfo) -> Result<(), OperatorError> {
        let restore = self.core.restore.clone();
        let c = &mut self.callbacks;
        self.core.open(task, |d| c.open(d))?;
        match restore {
            Some(s) => self.callbacks.restore_lists(&self.core.name, &s, task, &mut self.core.backend.memory),
            None => Ok(()),
        }
    }
    fn next_timer(&self) -> Option<Instant> {
        self.core.next_timer()
    }
    fn fire_timers(&mut self, now: Instant) -> Result<(), OperatorError> {
        for (at, key) in self.core.due_timers(now) {
            self.core.at_timer(at);
            let c = &mut self.callbacks;
            self.core.with_key(key.borrow(), |ctx, out| c.on_timer(at, ctx, out));
        }
        Ok(())
    }
    fn snapshot(&mut self, _id: u64) -> Result<Vec<OperatorSnapshot>, OperatorError> {
        let mut parts = self.core.snapshot()?;
        if let Some(task) = &self.core.task {
            parts.extend(self.callbacks.snapshot_lists(&self.core.name, task)?);
        }
        Ok(parts)
    }
    fn notify_checkpoint_complete(&mut self, id: u64) {
        self.callbacks.on_checkpoint_complete(id);
    }
    fn notify_checkpoint_aborted(&mut self, id: u64) {
        self.callbacks.on_checkpoint_aborted(id);
    }
    fn close(&mut self) -> Result<SinkOutput, OperatorError> {
        self.callbacks.close().map(|()| SinkOutput::None)
    }
    fn finish(&mut self) -> Result<bool, OperatorError> {
        let c = &mut self.callbacks;
        self.core.finish_step(|key, core| core.with_key(key, |ctx, out| c.on_end_of_input(ctx, out)))
    }
}

/// A one-input keyed process function and its key selector.
pub(crate) struct OneInput<T, S, P> {
    selector: Arc<S>,
    f: P,
    _t: PhantomData<fn(&T)>,
}

impl<K: Key, T: Data, O: Data, S, P: KeyedProcessFunction<K, T, O>> KeyedCallbacks<K, O> for OneInput<T, S, P> {
    fn open(&mut self, states: &mut StateDeclarations<'_, K>) -> Result<(), OperatorError> {
        self.f.open(states)
    }
    fn on_timer(
        &mut self,
        at: u64,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Emitter<'_, O>,
    ) -> Result<(), OperatorError> {
        self.f.on_timer(at, ctx, out)
    }
    fn on_end_of_input(
        &mut self,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Emitter<'_, O>,
    ) -> Result<(), OperatorError> {
        self.f.on_end_of_input(ctx, out)
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
}

impl<K: Key, T: Data, O: Data, S: KeySelector<K, T>, P: KeyedProcessFunction<K, T, O>> Collector<T>
    for SharedCollector<KeyedOp<K, O, OneInput<T, S, P>>>
{
    fn collect(&mut self, record: &T::Borrowed) {
        KeyedOp::clocked(&self.0, |op| op.one(record));
    }

    fn collect_batch(&mut self, records: &[T]) {
        KeyedOp::clocked_batch(&self.0, records, |op, r| op.one(r));
    }
}

impl<K: Key, T: Data, O: Data, S: KeySelector<K, T>, P: KeyedProcessFunction<K, T, O>>
    KeyedOp<K, O, OneInput<T, S, P>>
{
    #[inline(always)]
    fn one(&mut self, record: &T::Borrowed) {
        let KeyedOp { core, callbacks: OneInput { selector, f, .. } } = self;
        selector.with_key(record, |key| core.with_key(key, |ctx, out| f.process(record, ctx, out)));
    }
}

pub(crate) struct KeyedProcessFactory<K, T, O: Data, S, P> {
    pub(crate) name: Name,
    pub(crate) selector: Arc<S>,
    pub(crate) f: P,
    pub(crate) out: OutPorts<O>,
    pub(crate) _t: PhantomData<fn(&K, &T)>,
}

impl<K: Key, T: Data, O: Data, S: KeySelector<K, T>, P: KeyedProcessFunction<K, T, O>> NodeFactory<T>
    for KeyedProcessFactory<K, T, O, S, P>
{
    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<Box<dyn Collector<T>>, EngineError> {
        let out = self.out.build(ctx)?;
        let name = self.name.get();
        let op = KeyedOp {
            core: KeyedCore::new(&name, out, ctx),
            callbacks: OneInput { selector: self.selector.clone(), f: self.f.clone(), _t: PhantomData },
        };
        Ok(ctx.stateful(&name, op))
    }
}

// ------------------------------------------------------- two keyed inputs

/// A function over the records of two keyed streams with one key type, sharing
/// keyed state (Flink's `KeyedCoProcessFunction`).
///
/// ```
/// use shardflow_engine::{
///     Dataflow, Emitter, Engine, KeyedCoProcessFunction, KeyedContext, ListState, OperatorError,
///     StateDeclarations, ValueState,
/// };
///
/// /// Joins each payment `(order, amount)` to its order `(order, customer)`:
/// /// a payment that comes before its order waits in state until it does.
/// #[derive(Clone, Default)]
/// struct PaidBy {
///     customer: ValueState<String>,
///     early: ListState<u64>,
/// }
///
/// impl KeyedCoProcessFunction<u64, (u64, String), (u64, u64), (String, u64)> for PaidBy {
///     fn open(&mut self, states: &mut StateDeclarations<'_, u64>) -> Result<(), OperatorError> {
///         self.customer = states.value_state("customer")?;
///         self.early = states.list_state("early")?;
///         Ok(())
///     }
///     fn process_first(
///         &mut self,
///         order: &(u64, String),
///         ctx: &mut KeyedContext<'_, u64>,
///         out: &mut Emitter<'_, (String, u64)>,
///     ) -> Result<(), OperatorError> {
///         for amount in ctx.list_take(&self.early)? {
///             out.emit((order.1.clone(), amount));
///         }
///         ctx.set_value(&self.customer, order.1.clone())
///     }
///     fn process_second(
///         &mut self,
///         payment: &(u64, u64),
///         ctx: &mut KeyedContext<'_, u64>,
///         out: &mut Emitter<'_, (String, u64)>,
///     ) -> Result<(), OperatorError> {
///         match ctx.value(&self.customer)? {
///             Some(customer) => out.emit((customer.clone(), payment.1)),
///             None => ctx.list_push(&self.early, payment.1)?,
///         }
///         Ok(())
///     }
/// }
///
/// let df = Dataflow::new("paid-by").parallelism(2);
/// let orders = df.from_iter("orders", [(1, "ann".to_string()), (2, "bob".to_string())]);
/// let payments = df.from_iter("payments", [(2, 30), (1, 10), (1, 5)]);
/// let paid = orders
///     .key_by(|o: &(u64, String)| o.0)
///     .connect(&payments.key_by(|p: &(u64, u64)| p.0))
///     .process(PaidBy::default())
///     .collect();
/// Engine::builder().shards(1).build()?.run(df.build()?)?;
/// let mut got = paid.take();
/// got.sort();
/// assert_eq!(got, [("ann".to_string(), 5), ("ann".to_string(), 10), ("bob".to_string(), 30)]);
/// # Ok::<(), shardflow_engine::EngineError>(())
/// ```
pub trait KeyedCoProcessFunction<K: Key, A: Data, B: Data, O: Data>: Clone + Send + Sync + 'static {
    /// Before the first record: declare the states here.
    fn open(&mut self, _states: &mut StateDeclarations<'_, K>) -> Result<(), OperatorError> {
        Ok(())
    }
    /// A record of the first input.
    fn process_first(
        &mut self,
        record: &A::Borrowed,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Emitter<'_, O>,
    ) -> Result<(), OperatorError>;
    /// A record of the second input.
    fn process_second(
        &mut self,
        record: &B::Borrowed,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Emitter<'_, O>,
    ) -> Result<(), OperatorError>;
    /// A timer of key `ctx.key()` registered for `at` (processing time,
    /// microseconds since the Unix epoch) fired (never after the end of both
    /// inputs).
    fn on_timer(
        &mut self,
        _at: u64,
        _ctx: &mut KeyedContext<'_, K>,
        _out: &mut Emitter<'_, O>,
    ) -> Result<(), OperatorError> {
        Ok(())
    }
    /// End of both inputs, once for each key that has state (declared state or
    /// a pending timer).
    fn on_end_of_input(
        &mut self,
        _ctx: &mut KeyedContext<'_, K>,
        _out: &mut Emitter<'_, O>,
    ) -> Result<(), OperatorError> {
        Ok(())
    }
    /// Checkpoint `checkpoint` completed: commit what waited for it.
    fn on_checkpoint_complete(&mut self, _checkpoint: u64) {}
    /// Checkpoint `checkpoint` was aborted: roll back what waited for it.
    fn on_checkpoint_aborted(&mut self, _checkpoint: u64) {}
    /// Last, on every path (as Flink's `close`): after the end of input (or the
    /// final snapshot of a job that stops with one), or when the task is
    /// cancelled or fails — then an error returned here is logged and the
    /// task's own cause stands. Release what `open` acquired.
    fn close(&mut self) -> Result<(), OperatorError> {
        Ok(())
    }
}

/// A keyed co-process function and the key selectors of its two inputs.
pub(crate) struct TwoInputs<A, B, SA, SB, P> {
    first: Arc<SA>,
    second: Arc<SB>,
    f: P,
    _t: PhantomData<fn(&A, &B)>,
}

impl<K: Key, A: Data, B: Data, O: Data, SA, SB, P> KeyedCallbacks<K, O> for TwoInputs<A, B, SA, SB, P>
where
    P: KeyedCoProcessFunction<K, A, B, O>,
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
        self.f.on_timer(at, ctx, out)
    }
    fn on_end_of_input(
        &mut self,
        ctx: &mut KeyedContext<'_, K>,
        out: &mut Emitter<'_, O>,
    ) -> Result<(), OperatorError> {
        self.f.on_end_of_input(ctx, out)
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
}

/// A keyed two-input operator.
type CoOp<K, A, B, O, SA, SB, P> = KeyedOp<K, O, TwoInputs<A, B, SA, SB, P>>;

impl<K: Key, A: Data, B: Data, O: Data, SA: KeySelector<K, A>, SB: KeySelector<K, B>, P> Collector<A>
    for FirstInput<CoOp<K, A, B, O, SA, SB, P>>
where
    P: KeyedCoProcessFunction<K, A, B, O>,
{
    fn collect(&mut self, record: &A::Borrowed) {
        KeyedOp::clocked(&self.0, |op| op.first(record));
    }

    fn collect_batch(&mut self, records: &[A]) {
        KeyedOp::clocked_batch(&self.0, records, |op, r| op.first(r));
    }
}

impl<K: Key, A: Data, B: Data, O: Data, SA: KeySelector<K, A>, SB: KeySelector<K, B>, P> Collector<B>
    for SecondInput<CoOp<K, A, B, O, SA, SB, P>>
where
    P: KeyedCoProcessFunction<K, A, B, O>,
{
    fn collect(&mut self, record: &B::Borrowed) {
        KeyedOp::clocked(&self.0, |op| op.second(record));
    }

    fn collect_batch(&mut self, records: &[B]) {
        KeyedOp::clocked_batch(&self.0, records, |op, r| op.second(r));
    }
}

impl<K: Key, A: Data, B: Data, O: Data, SA: KeySelector<K, A>, SB: KeySelector<K, B>, P> CoOp<K, A, B, O, SA, SB, P>
where
    P: KeyedCoProcessFunction<K, A, B, O>,
{
    #[inline(always)]
    fn first(&mut self, record: &A::Borrowed) {
        let KeyedOp { core, callbacks: TwoInputs { first, f, .. } } = self;
        first.with_key(record, |key| core.with_key(key, |ctx, out| f.process_first(record, ctx, out)));
    }

    #[inline(always)]
    fn second(&mut self, record: &B::Borrowed) {
        let KeyedOp { core, callbacks: TwoInputs { second, f, .. } } = self;
        second.with_key(record, |key| core.with_key(key, |ctx, out| f.process_second(record, ctx, out)));
    }
}

/// Builds both input paths of a two-input operator for a subtask.
pub(crate) trait TwoInputFactory<A: Data, B: Data>: Send + Sync {
    #[allow(clippy::type_complexity)]
    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<(Box<dyn Collector<A>>, Box<dyn Collector<B>>), EngineError>;
}

pub(crate) struct KeyedCoProcessFactory<K, A, B, O: Data, SA, SB, P> {
    pub(crate) name: Name,
    pub(crate) first: Arc<SA>,
    pub(crate) second: Arc<SB>,
    pub(crate) f: P,
    pub(crate) out: OutPorts<O>,
    pub(crate) _t: PhantomData<fn(&K, &A, &B)>,
}

impl<K: Key, A: Data, B: Data, O: Data, SA: KeySelector<K, A>, SB: KeySelector<K, B>, P> TwoInputFactory<A, B>
    for KeyedCoProcessFactory<K, A, B, O, SA, SB, P>
where
    P: KeyedCoProcessFunction<K, A, B, O>,
{
    fn build(&self, ctx: &mut BuildContext<'_>) -> Result<(Box<dyn Collector<A>>, Box<dyn Collector<B>>), EngineError> {
        let out = self.out.build(ctx)?;
        let name = self.name.get();
        let op = KeyedOp {
            core: KeyedCore::new(&name, out, ctx),
            callbacks: TwoInputs {
                first: self.first.clone(),
                second: self.second.clone(),
                f: self.f.clone(),
                _t: PhantomData,
            },
        };
        Ok(ctx.stateful_two_inputs(&name, op))
    }
}
