//! A keyed ingress's handle: pushes go to the queue of their key's subtask.

use std::time::Duration;

use super::{IngressHandle, PushError};
use crate::data::Data;

/// Pushes records into a keyed ingress ([`crate::Dataflow::ingress_keyed`]):
/// each goes to the queue of the source subtask that owns its key's key group,
/// so the stream is partitioned by key from its source on, with no exchange.
/// An [`IngressHandle`] that cannot pick a queue itself (no `push_to`, no
/// `split`): records of one key from one handle stay in order.
pub struct KeyedIngressHandle<T>(IngressHandle<T>);

impl<T> Clone for KeyedIngressHandle<T> {
    fn clone(&self) -> Self {
        KeyedIngressHandle(self.0.clone())
    }
}

impl<T> std::fmt::Debug for KeyedIngressHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("KeyedIngressHandle").field(&self.0).finish()
    }
}

impl<T: Data> KeyedIngressHandle<T> {
    pub(crate) fn new(handle: IngressHandle<T>) -> Self {
        KeyedIngressHandle(handle)
    }

    /// The number of source subtasks (queues).
    pub fn subtasks(&self) -> usize {
        self.0.subtasks()
    }

    /// The source subtask `record` goes to (that of its key's key group).
    pub fn subtask_of(&self, record: &T) -> usize {
        self.0.queues.route.as_ref().map_or(0, |route| route(record))
    }

    /// The records queued now, in every queue.
    pub fn queued(&self) -> usize {
        self.0.queued()
    }

    /// The bytes queued now, as a byte bound charges them.
    pub fn queued_bytes(&self) -> usize {
        self.0.queued_bytes()
    }

    /// [`IngressHandle::push`] to the queue of `record`'s key.
    pub fn push(&mut self, record: T) -> Result<(), PushError<T>> {
        self.0.push(record)
    }

    /// [`IngressHandle::push_async`] to the queue of `record`'s key.
    ///
    /// # Cancel safety
    /// Not cancel-safe: a push cancelled while it waits drops its record.
    pub async fn push_async(&mut self, record: T) -> Result<(), PushError<T>> {
        self.0.push_async(record).await
    }

    /// [`IngressHandle::push_all`], each record to the queue of its key.
    pub fn push_all(&mut self, records: impl IntoIterator<Item = T>) -> Result<(), PushError<T>> {
        self.0.push_all(records)
    }

    /// [`IngressHandle::try_push`] to the queue of `record`'s key.
    pub fn try_push(&mut self, record: T) -> Result<(), PushError<T>> {
        self.0.try_push(record)
    }

    /// [`IngressHandle::push_timeout`] to the queue of `record`'s key.
    pub fn push_timeout(&mut self, record: T, timeout: Duration) -> Result<(), PushError<T>> {
        self.0.push_timeout(record, timeout)
    }
}
