//! An in-process connection to the coordinator. The peer's frames go straight
//! into the coordinator's loop, decoded on the sending thread (no reader
//! thread, no hop between); the coordinator's come back through a bounded
//! queue of encoded frames the peer reads like a socket.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use super::{outbox, read_frame, ConnectionLimits, FrameSink, Held, Outbox, OutboxReader, Outgoing, Permit};
use super::{Received, SendError};

/// The coordinator's sending half of an in-process connection: a bounded queue
/// the peer reads ([`PipeReader`]).
pub(crate) struct PipeSink {
    outbox: Outbox,
    /// Set by either end's close: both directions end.
    closed: Arc<AtomicBool>,
}

impl FrameSink for PipeSink {
    fn try_send(&mut self, frame: Vec<u8>) -> Result<(), SendError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        self.outbox.try_send(frame)
    }

    fn close(&mut self) {
        self.closed.store(true, Ordering::Release);
        self.outbox.close();
    }

    fn abort(&mut self) {
        self.close();
    }

    fn peer(&self) -> &str {
        "in-process"
    }
}

impl Drop for PipeSink {
    /// A dropped end closes the connection, as a dropped socket does: the
    /// peer's reader sees the end after what was queued, and the peer's sends
    /// fail.
    fn drop(&mut self) {
        self.close();
    }
}

/// What the coordinator does with a peer's frame (its loop's `deliver`):
/// `false` once it takes no more.
type Deliver = Box<dyn FnMut(Received, Permit) -> bool + Send>;

/// The peer's sending half of an in-process connection: each frame is decoded
/// and handed to the coordinator's `deliver` on the calling thread. Like a
/// queue, it lets at most [`ConnectionLimits::max_queued_bytes`] of frames wait
/// unhandled (each held by its [`Permit`]); beyond, a send is
/// [`SendError::Full`]. Nothing here blocks.
pub(crate) struct DeliverSink {
    deliver: Deliver,
    unhandled: Arc<AtomicUsize>,
    limits: ConnectionLimits,
    /// Set by either end's close.
    closed: Arc<AtomicBool>,
    /// The coordinator's queue to the peer: closed with this end, so the
    /// peer's reader ends too.
    back: Outbox,
    /// The coordinator has been told of the end.
    ended: bool,
}

impl FrameSink for DeliverSink {
    fn try_send(&mut self, frame: Vec<u8>) -> Result<(), SendError> {
        if self.ended || self.closed.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        let (n, max_bytes) = (frame.len(), self.limits.max_queued_bytes);
        let queued = self.unhandled.load(Ordering::Acquire);
        if queued > 0 && queued.saturating_add(n) > max_bytes {
            return Err(SendError::Full { queued_bytes: queued, max_bytes });
        }
        self.unhandled.fetch_add(n, Ordering::AcqRel);
        let received = read_frame(&mut frame.as_slice(), self.limits.max_frame_bytes);
        let bad = !matches!(received, Received::Message(_));
        let permit = Permit(Held::Bytes(self.unhandled.clone(), n));
        if !(self.deliver)(received, permit) {
            self.end();
            return Err(SendError::Closed);
        }
        if bad {
            // As a reader does after a bad frame: the coordinator closes it.
            self.end();
        }
        Ok(())
    }

    fn close(&mut self) {
        self.closed.store(true, Ordering::Release);
        self.back.close();
        self.end();
    }

    fn abort(&mut self) {
        self.close();
    }

    fn peer(&self) -> &str {
        "in-process"
    }
}

impl DeliverSink {
    /// Tells the coordinator the connection ended (once).
    fn end(&mut self) {
        if !std::mem::replace(&mut self.ended, true) {
            (self.deliver)(Received::Closed, Permit(Held::Bytes(self.unhandled.clone(), 0)));
        }
    }
}

impl Drop for DeliverSink {
    /// A dropped end closes the connection, as a dropped socket does.
    fn drop(&mut self) {
        self.close();
    }
}

/// The receiving half of an in-process connection, readable like a socket.
pub(crate) struct PipeReader {
    queue: OutboxReader,
    pending: Vec<u8>,
    at: usize,
    ended: bool,
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.pending.len() {
            if self.ended {
                return Ok(0);
            }
            match self.queue.recv() {
                Some(Outgoing::Frame(bytes) | Outgoing::Wire(bytes)) => {
                    self.queue.done(bytes.len());
                    self.pending = bytes;
                    self.at = 0;
                }
                Some(Outgoing::Close) | None => {
                    self.ended = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.pending.len() - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The peer's end of an in-process connection.
pub(crate) struct PipeEnd {
    pub(crate) sink: DeliverSink,
    pub(crate) reader: PipeReader,
}

/// An in-process connection whose peer's frames go to `deliver`: the
/// coordinator's sink to the peer, and the peer's end. The queue to the peer
/// is bounded as `limits` say.
pub(crate) fn direct_pipe(
    limits: &ConnectionLimits,
    deliver: impl FnMut(Received, Permit) -> bool + Send + 'static,
) -> (PipeSink, PipeEnd) {
    let (to_peer, queue) = outbox(limits.max_queued_bytes);
    let closed = Arc::new(AtomicBool::new(false));
    let sink = DeliverSink {
        deliver: Box::new(deliver),
        unhandled: Arc::default(),
        limits: *limits,
        closed: closed.clone(),
        back: to_peer.clone_sender(),
        ended: false,
    };
    let reader = PipeReader { queue, pending: Vec::new(), at: 0, ended: false };
    (PipeSink { outbox: to_peer, closed }, PipeEnd { sink, reader })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use shardflow_control::protocol::{ListJobs, Message};

    use super::super::send_message;
    use super::*;

    fn list() -> Message {
        Message::ListJobs(ListJobs {})
    }

    #[test]
    fn dropping_the_coordinators_end_ends_the_peers_reader_after_what_was_queued() {
        let limits = ConnectionLimits::default();
        let (mut mine, theirs) = direct_pipe(&limits, |_, _| true);
        let PipeEnd { sink: mut their_sink, mut reader } = theirs;
        send_message(&mut mine, &list()).unwrap();
        drop(mine);
        let first = read_frame(&mut reader, limits.max_frame_bytes);
        assert!(
            matches!(first, Received::Message(Message::ListJobs(_))),
            "the frame queued before the drop: {first:?}"
        );
        let then = read_frame(&mut reader, limits.max_frame_bytes);
        assert!(matches!(then, Received::Closed), "then the end, not a wait for a frame that never comes: {then:?}");
        assert!(matches!(send_message(&mut their_sink, &list()), Err(SendError::Closed)), "and the peer's sends fail");
    }

    #[test]
    fn the_peers_frames_reach_the_coordinator_at_once_and_its_drop_says_the_end() {
        let limits = ConnectionLimits::default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let (mut mine, theirs) = direct_pipe(&limits, move |r, _| {
            s.lock().unwrap().push(format!("{r:?}"));
            true
        });
        let PipeEnd { sink: mut their_sink, mut reader } = theirs;
        send_message(&mut their_sink, &list()).unwrap();
        assert_eq!(seen.lock().unwrap().len(), 1, "handed over on the sending thread");
        assert!(seen.lock().unwrap()[0].contains("ListJobs"), "{:?}", seen.lock().unwrap());
        drop(their_sink);
        assert_eq!(seen.lock().unwrap().last().map(String::as_str), Some("Closed"), "the end, once");
        assert_eq!(seen.lock().unwrap().len(), 2);
        assert!(matches!(send_message(&mut mine, &list()), Err(SendError::Closed)), "the coordinator's sends fail");
        assert!(matches!(read_frame(&mut reader, limits.max_frame_bytes), Received::Closed), "the reader ends");
    }

    #[test]
    fn frames_the_coordinator_has_not_handled_are_bounded_by_bytes() {
        let frame = shardflow_control::protocol::encode(&list()).unwrap().len();
        let limits = ConnectionLimits { max_queued_bytes: frame + 1, ..ConnectionLimits::default() };
        let held = Arc::new(Mutex::new(Vec::new()));
        let h = held.clone();
        let (_mine, theirs) = direct_pipe(&limits, move |_, permit| {
            h.lock().unwrap().push(permit);
            true
        });
        let mut sink = theirs.sink;
        send_message(&mut sink, &list()).expect("one frame always fits");
        assert!(
            matches!(send_message(&mut sink, &list()), Err(SendError::Full { queued_bytes, .. }) if queued_bytes == frame),
            "a second one waits on the first"
        );
        held.lock().unwrap().clear();
        send_message(&mut sink, &list()).expect("fits once the first was handled");
    }
}
