//! The consumer side: an input gate reads the input channels of one consumer subtask,
//! hands out buffers read in place, and returns their credits when they are dropped.

use std::cell::RefCell;
use std::future::poll_fn;
use std::ops::Deref;
use std::rc::Rc;
use std::task::{Context, Poll};

use crate::buffer::Buffer;
use crate::channel::{ChannelReceiver, Envelope};
use crate::credit::{CreditLedger, Recycle};
use crate::error::NetError;
use crate::event::Event;

/// One item read from a gate.
#[derive(Debug)]
pub enum GateItem {
    /// A buffer of records; its credit goes back when it is dropped.
    Data(InputBuffer),
    /// An in-band event (including each channel's [`Event::EndOfPartition`]).
    Event(Event),
}

struct GateInner {
    channels: Vec<ChannelReceiver>,
    ended: Vec<bool>,
    live: usize,
    ledger: CreditLedger,
}

impl GateInner {
    /// Gives floating credits to channels whose sender announces a backlog.
    fn distribute_floating(&mut self) {
        if self.ledger.floating_free() == 0 {
            return;
        }
        for (c, ch) in self.channels.iter().enumerate() {
            let backlog = ch.backlog();
            if backlog > 0 && !self.ended[c] {
                let g = self.ledger.grant_floating(c, backlog, ch.credits());
                ch.grant(g);
                if self.ledger.floating_free() == 0 {
                    return;
                }
            }
        }
    }

    fn recycle(&mut self, channel: usize) {
        let ch = &self.channels[channel];
        match self.ledger.on_consumed(channel, ch.backlog()) {
            Recycle::ToChannel => ch.grant(1),
            Recycle::ToPool => self.distribute_floating(),
        }
    }
}

/// The input gate of one consumer subtask. `!Send`: it lives on the consumer's shard.
pub struct InputGate {
    inner: Rc<RefCell<GateInner>>,
    next_channel: usize,
}

impl InputGate {
    /// A gate over `receivers`, with the credit ledger they were created for.
    pub fn new(receivers: Vec<ChannelReceiver>, ledger: CreditLedger) -> Self {
        let n = receivers.len();
        InputGate {
            inner: Rc::new(RefCell::new(GateInner { channels: receivers, ended: vec![false; n], live: n, ledger })),
            next_channel: 0,
        }
    }

    /// Number of input channels.
    pub fn num_channels(&self) -> usize {
        self.inner.borrow().channels.len()
    }

    /// Whether every channel has delivered end of partition.
    pub fn is_finished(&self) -> bool {
        self.inner.borrow().live == 0
    }

    /// The next item if one is ready: `Ok(Some(None))` means "all channels ended",
    /// `Ok(None)` means "nothing right now".
    fn scan(&mut self) -> Result<Option<Option<(usize, GateItem)>>, NetError> {
        let mut inner = self.inner.borrow_mut();
        let n = inner.channels.len();
        if inner.live == 0 {
            return Ok(Some(None));
        }
        for k in 0..n {
            let c = (self.next_channel + k) % n;
            if inner.ended[c] {
                continue;
            }
            let ch = &inner.channels[c];
            let env = match ch.try_recv() {
                Some(env) => env,
                None => {
                    if ch.is_sender_closed() {
                        // EndOfPartition is pushed before the flag is set: look again.
                        match ch.try_recv() {
                            Some(env) => env,
                            None => return Err(NetError::ProducerLost { channel: c, end: ch.producer_end() }),
                        }
                    } else {
                        // Floating credits go to a backlogged channel once its ring is
                        // empty: then credits, not this consumer, hold the sender back.
                        // Granting while buffers still queue would only deepen the queue
                        // (measured: P1 needed ~1.3 instead of ~0.9 CPU-seconds, in-flight
                        // buffers no longer fitting in L2).
                        if ch.backlog() > 0 && ch.credits() == 0 {
                            inner.distribute_floating();
                        }
                        continue;
                    }
                }
            };
            self.next_channel = c + 1;
            return Ok(Some(Some(match env {
                Envelope::Data(buffer) => {
                    (c, GateItem::Data(InputBuffer { buffer: Some(buffer), channel: c, gate: self.inner.clone() }))
                }
                Envelope::Event(event) => {
                    if event == Event::EndOfPartition {
                        inner.ended[c] = true;
                        inner.live -= 1;
                    }
                    (c, GateItem::Event(event))
                }
            })));
        }
        Ok(None)
    }

    /// The next item without waiting: `Ok(None)` when nothing is ready now or every
    /// channel has ended (see [`InputGate::is_finished`]).
    pub fn try_next(&mut self) -> Result<Option<(usize, GateItem)>, NetError> {
        Ok(self.scan()?.flatten())
    }

    /// The next item, or `Pending` with the waker registered on every live
    /// channel; `Ok(None)` once every channel has ended.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<(usize, GateItem)>, NetError>> {
        if let Some(item) = self.scan()? {
            return Poll::Ready(Ok(item));
        }
        {
            let inner = self.inner.borrow();
            for (c, ch) in inner.channels.iter().enumerate() {
                if !inner.ended[c] {
                    ch.register(cx.waker());
                }
            }
        }
        // A send may have landed between the scan and the registration.
        match self.scan()? {
            Some(item) => Poll::Ready(Ok(item)),
            None => Poll::Pending,
        }
    }

    /// The next item, waiting for one; `None` once every channel has ended.
    ///
    /// # Cancel safety
    /// Cancel-safe: an item is only taken from a channel when the future completes.
    pub async fn next(&mut self) -> Result<Option<(usize, GateItem)>, NetError> {
        poll_fn(|cx| self.poll_next(cx)).await
    }
}

/// A buffer read from a gate. Derefs to [`Buffer`]; when dropped, the segment goes
/// home first and then the credit goes back to the sender.
pub struct InputBuffer {
    buffer: Option<Buffer>,
    channel: usize,
    gate: Rc<RefCell<GateInner>>,
}

impl InputBuffer {
    /// The channel it came from.
    pub fn channel(&self) -> usize {
        self.channel
    }
}

impl Deref for InputBuffer {
    type Target = Buffer;
    fn deref(&self) -> &Buffer {
        // Present from construction until drop.
        self.buffer.as_ref().expect("buffer present until drop")
    }
}

impl std::fmt::Debug for InputBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputBuffer").field("channel", &self.channel).field("buffer", &self.buffer).finish()
    }
}

impl Drop for InputBuffer {
    fn drop(&mut self) {
        drop(self.buffer.take());
        self.gate.borrow_mut().recycle(self.channel);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::channel::channel;
    use loom::future::block_on;

    /// Two producers send and end their channels while the gate's task waits on
    /// both:
    /// the gate registers its waker on every channel and scans again, so a send
    /// landing between its scan and its registration is never missed (a lost
    /// wake-up leaves `block_on` waiting for ever, which loom reports).
    #[test]
    fn a_waiting_gate_sees_every_channel_end() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(|| {
            let (tx0, rx0) = channel(1, 1, 1);
            let (tx1, rx1) = channel(1, 1, 1);
            let p0 = loom::thread::spawn(move || block_on(tx0.send_event(Event::EndOfPartition)).unwrap());
            let p1 = loom::thread::spawn(move || {
                block_on(tx1.send_event(Event::Watermark(7))).unwrap();
                block_on(tx1.send_event(Event::EndOfPartition)).unwrap();
            });
            let mut gate = InputGate::new(vec![rx0, rx1], CreditLedger::new(2, 1, 0));
            let mut seen = Vec::new();
            loop {
                match block_on(gate.next()) {
                    Ok(Some((c, GateItem::Event(e)))) => seen.push((c, e)),
                    Ok(None) => break,
                    other => panic!("{other:?}"),
                }
            }
            seen.sort_by_key(|(c, _)| *c);
            let expected = vec![(0, Event::EndOfPartition), (1, Event::Watermark(7)), (1, Event::EndOfPartition)];
            assert_eq!(seen, expected, "in order per channel, nothing lost");
            p0.join().unwrap();
            p1.join().unwrap();
        });
    }
}
