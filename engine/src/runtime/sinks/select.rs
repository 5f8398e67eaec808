//! One reader of several egresses: results as they come from any of them, the
//! fullest queue's first, so a job waiting for room in one egress is never
//! left waiting while its reader waits on another.

use std::ops::Deref;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Select, TryRecvError};

use super::egress::EgressHandle;
use crate::runtime::host::hosted_here;
use crate::runtime::scheduler::Scheduler;

/// Reads any number of egresses, of any record types, from one thread: each
/// handle's results mapped into one type `E` (an enum of the reader's, say),
/// in the order they come. A job's output, its rejections and its late data
/// read by one loop, without draining one egress while the job waits for room
/// in another. (For two, [`EgressHandle::recv_either`] needs no map.)
///
/// Where several have results queued, the fullest queue's comes first. An
/// egress that has ended is passed over; `None` (or `Disconnected`) once all
/// have ended and everything was read. Holding a handle here is the only
/// reading of it: a select takes it by `&mut`. A select is `Send` (its maps
/// are): it may be made on one thread and read on another.
///
/// ```
/// use shardflow_engine::{Dataflow, EgressSelect, Emitter, Engine, OutputTag};
///
/// enum Parsed {
///     Number(u64),
///     Negative(i64),
///     Word(String),
/// }
/// let (negative, words) = (OutputTag::<i64>::new("negative"), OutputTag::<String>::new("words"));
/// let df = Dataflow::new("parse");
/// let lines = ["7", "-3", "seven", "70", "-1"].map(String::from);
/// let numbers = df.from_iter("lines", lines).flat_map({
///     let (negative, words) = (negative.clone(), words.clone());
///     move |line: &str, out: &mut Emitter<'_, u64>| match line.parse::<i64>() {
///         Ok(n) if n >= 0 => out.emit(n as u64),
///         Ok(n) => out.emit_side(&negative, n),
///         Err(_) => out.emit_side_ref(&words, line),
///     }
/// });
/// // Queues of 1: no egress can be drained first.
/// let mut negative_out = numbers.side_output(&negative).egress(1);
/// let mut word_out = numbers.side_output(&words).egress(1);
/// let mut number_out = numbers.egress(1);
/// let engine = Engine::builder().shards(1).build()?;
/// let job = engine.submit(df.build()?)?;
/// let mut parsed = EgressSelect::new()
///     .with(&mut number_out, Parsed::Number)
///     .with(&mut negative_out, Parsed::Negative)
///     .with(&mut word_out, Parsed::Word);
/// let (mut sum, mut words) = (0, Vec::new());
/// while let Some(next) = parsed.recv() {
///     match next {
///         Parsed::Number(n) => sum += n as i64,
///         Parsed::Negative(n) => sum += n,
///         Parsed::Word(w) => words.push(w),
///     }
/// }
/// job.wait()?;
/// assert_eq!((sum, words), (73, vec!["seven".to_string()]));
/// # Ok::<(), shardflow_engine::EngineError>(())
/// ```
pub struct EgressSelect<'h, E> {
    inputs: Vec<Box<dyn Input<E> + Send + 'h>>,
    /// Which inputs have ended: for ever, once their queue was found empty
    /// with every sender gone.
    ended: Vec<bool>,
}

impl<E> std::fmt::Debug for EgressSelect<'_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressSelect").field("egresses", &self.inputs.len()).field("ended", &self.ended).finish()
    }
}

impl<E> Default for EgressSelect<'_, E> {
    fn default() -> Self {
        EgressSelect { inputs: Vec::new(), ended: Vec::new() }
    }
}

impl<'h, E> EgressSelect<'h, E> {
    /// A select of no egress (it has ended): add them with
    /// [`EgressSelect::with`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `handle` too, each of its results mapped by `map`.
    pub fn with<T: Send + 'h>(mut self, handle: &'h mut EgressHandle<T>, map: impl Fn(T) -> E + Send + 'h) -> Self {
        self.inputs.push(Box::new(Mapped { handle, map }));
        self.ended.push(false);
        self
    }

    /// The next result of any egress, waiting for one (on the thread of a
    /// [`crate::HostedShard`] the shard runs meanwhile); `None` once all have
    /// ended and everything was read.
    pub fn recv(&mut self) -> Option<E> {
        recv(&self.inputs, &mut self.ended)
    }

    /// [`EgressSelect::recv`], waiting up to `timeout`: `Disconnected` once
    /// all have ended and everything was read.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<E, RecvTimeoutError> {
        recv_timeout(&self.inputs, &mut self.ended, timeout)
    }

    /// [`EgressSelect::recv_timeout`] after looking for a result without
    /// sleeping for up to `spin`, as [`EgressHandle::recv_spinning`] does: a
    /// reader with a core of its own takes a result that comes meanwhile
    /// without being woken.
    pub fn recv_spinning(&mut self, spin: Duration, timeout: Duration) -> Result<E, RecvTimeoutError> {
        super::egress::spin_then_wait(self, spin, timeout, Self::try_recv, |s, left| s.recv_timeout(left))
    }

    /// The next result if one is queued in any egress.
    pub fn try_recv(&mut self) -> Result<E, TryRecvError> {
        match try_next(&self.inputs, &mut self.ended) {
            Some(r) => Ok(r),
            None if all_ended(&self.ended) => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// [`EgressSelect::recv`], awaited (for a reader in an async runtime, or
    /// on a [`crate::HostedShard`]).
    ///
    /// # Cancel safety
    /// Cancel-safe: a result is taken only when the future completes.
    pub async fn recv_async(&mut self) -> Option<E> {
        next_async(&self.inputs, &mut self.ended).await
    }
}

/// One egress as a select reads it, its results in the reader's type.
pub(super) trait Input<E> {
    /// Results queued now.
    fn queued(&self) -> usize;
    /// The next result if one is queued.
    fn try_take(&self) -> Result<E, TryRecvError>;
    /// Waited on by `select` too.
    fn register<'s>(&'s self, select: &mut Select<'s>);
    /// `waker` is woken when a result comes or the stream ends.
    fn park(&self, waker: &Waker);
}

/// An egress handle, its results mapped by `map`.
pub(super) struct Mapped<'h, T, F> {
    pub(super) handle: &'h EgressHandle<T>,
    pub(super) map: F,
}

impl<T, E, F: Fn(T) -> E> Input<E> for Mapped<'_, T, F> {
    #[inline]
    fn queued(&self) -> usize {
        self.handle.len()
    }
    #[inline]
    fn try_take(&self) -> Result<E, TryRecvError> {
        self.handle.try_recv().map(&self.map)
    }
    fn register<'s>(&'s self, select: &mut Select<'s>) {
        self.handle.register(select);
    }
    fn park(&self, waker: &Waker) {
        self.handle.park(waker);
    }
}

/// Whether every input has ended.
fn all_ended(ended: &[bool]) -> bool {
    ended.iter().all(|&e| e)
}

/// A result of an input that has one queued, the fullest queue's first (the
/// job may be waiting for room in it); `None` if none has, with the inputs
/// found ended marked so.
fn try_next<E, I>(inputs: &[I], ended: &mut [bool]) -> Option<E>
where
    I: Deref,
    I::Target: Input<E>,
{
    let open = || (0..inputs.len()).filter(|&i| !ended[i]);
    // Of equal queues, the first added.
    let fullest = open().rev().max_by_key(|&i| inputs[i].queued())?;
    for i in std::iter::once(fullest).chain((0..inputs.len()).filter(|&i| i != fullest)) {
        if ended[i] {
            continue;
        }
        match inputs[i].try_take() {
            Ok(r) => return Some(r),
            Err(TryRecvError::Disconnected) => ended[i] = true,
            Err(TryRecvError::Empty) => {}
        }
    }
    None
}

/// The next result of any input, waiting for one; `None` once all have ended.
pub(super) fn recv<E, I>(inputs: &[I], ended: &mut [bool]) -> Option<E>
where
    I: Deref,
    I::Target: Input<E>,
{
    if let Some(sched) = hosted_here() {
        return sched.block_on(next_async(inputs, ended));
    }
    wait(inputs, ended, None).ok()
}

/// [`recv`], waiting up to `timeout`.
pub(super) fn recv_timeout<E, I>(inputs: &[I], ended: &mut [bool], timeout: Duration) -> Result<E, RecvTimeoutError>
where
    I: Deref,
    I::Target: Input<E>,
{
    if let Some(sched) = hosted_here() {
        return hosted_timeout(&sched, next_async(inputs, ended), timeout);
    }
    wait(inputs, ended, Instant::now().checked_add(timeout))
}

/// `next` (a result, `None` at the end) awaited on a host's thread for at most
/// `timeout`, its shard running meanwhile.
pub(super) fn hosted_timeout<T>(
    sched: &Scheduler,
    next: impl std::future::Future<Output = Option<T>>,
    timeout: Duration,
) -> Result<T, RecvTimeoutError> {
    match sched.block_on_timeout(next, timeout) {
        Some(Some(r)) => Ok(r),
        Some(None) => Err(RecvTimeoutError::Disconnected),
        None => Err(RecvTimeoutError::Timeout),
    }
}

/// The next result of any input, awaited through every open input's reader
/// waker; `None` once all have ended.
pub(super) fn next_async<'a, E, I>(
    inputs: &'a [I],
    ended: &'a mut [bool],
) -> impl std::future::Future<Output = Option<E>> + 'a
where
    I: Deref,
    I::Target: Input<E>,
{
    std::future::poll_fn(move |cx| {
        for attempt in 0..2 {
            if let Some(r) = try_next(inputs, ended) {
                return Poll::Ready(Some(r));
            }
            if all_ended(ended) {
                return Poll::Ready(None);
            }
            // Park on each, then look once more (`ParkedWaker`).
            if attempt == 0 {
                for (input, _) in inputs.iter().zip(ended.iter()).filter(|(_, &e)| !e) {
                    input.park(cx.waker());
                }
            }
        }
        Poll::Pending
    })
}

/// The next result of any input, blocking a thread that hosts no shard until
/// one comes, all end, or `deadline` (`None`: no deadline) passes.
fn wait<E, I>(inputs: &[I], ended: &mut [bool], deadline: Option<Instant>) -> Result<E, RecvTimeoutError>
where
    I: Deref,
    I::Target: Input<E>,
{
    loop {
        if let Some(r) = try_next(inputs, ended) {
            return Ok(r);
        }
        if all_ended(ended) {
            return Err(RecvTimeoutError::Disconnected);
        }
        // Set up only once a look found nothing: most find a result queued.
        // An ended input is ready for ever: only the open ones are waited on.
        let mut select = Select::new();
        for (input, _) in inputs.iter().zip(ended.iter()).filter(|(_, &e)| !e) {
            input.register(&mut select);
        }
        // Ready may be a moment early; the deadline holds all the same.
        match deadline {
            Some(d) if Instant::now() >= d => return Err(RecvTimeoutError::Timeout),
            Some(d) => drop(select.ready_deadline(d)),
            None => drop(select.ready()),
        }
    }
}
