//! A multi-producer mailbox that any thread can post to and one shard awaits:
//! a crossbeam channel plus an atomic waker (the shard's scheduler takes a wake-up
//! from another thread onto its ready queue).

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam_channel::{Receiver, Sender, TryRecvError};

/// Sending end; `Send + Clone`.
pub(crate) struct MailboxSender<T> {
    tx: Sender<T>,
    waker: Arc<AtomicWaker>,
}

impl<T> Clone for MailboxSender<T> {
    fn clone(&self) -> Self {
        MailboxSender { tx: self.tx.clone(), waker: self.waker.clone() }
    }
}

/// Receiving end, awaited on the owning shard.
pub(crate) struct Mailbox<T> {
    rx: Receiver<T>,
    waker: Arc<AtomicWaker>,
}

pub(crate) fn mailbox<T>() -> (MailboxSender<T>, Mailbox<T>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let waker = Arc::new(AtomicWaker::new());
    (MailboxSender { tx, waker: waker.clone() }, Mailbox { rx, waker })
}

impl<T> MailboxSender<T> {
    /// Posts `msg`; hands it back if the mailbox is gone.
    pub(crate) fn send(&self, msg: T) -> Result<(), T> {
        self.tx.send(msg).map_err(|e| e.0)?;
        self.waker.wake();
        Ok(())
    }
}

impl<T> Mailbox<T> {
    /// The next message; `None` once every sender is gone.
    ///
    /// # Cancel safety
    /// Cancel-safe: a message is taken only when the future completes.
    pub(crate) async fn recv(&self) -> Option<T> {
        poll_fn(|cx| {
            for attempt in 0..2 {
                match self.rx.try_recv() {
                    Ok(m) => return Poll::Ready(Some(m)),
                    Err(TryRecvError::Disconnected) => return Poll::Ready(None),
                    Err(TryRecvError::Empty) if attempt == 0 => self.waker.register(cx.waker()),
                    Err(TryRecvError::Empty) => {}
                }
            }
            Poll::Pending
        })
        .await
    }
}
