//! An in-process connection: two bounded queues of encoded frames, one each
//! way, read like a socket.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{outbox, ConnectionLimits, FrameSink, Outbox, OutboxReader, Outgoing, SendError};

/// The sending half of an in-process connection.
pub(crate) struct PipeSink {
    outbox: Outbox,
    /// Set by either end's close: both directions end.
    closed: Arc<AtomicBool>,
    /// The other direction's queue, so closing ends the peer's sending too.
    back: Outbox,
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
        self.back.close();
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
    /// peer's reader sees the end after what was queued (its thread ends), and
    /// the peer's sends fail. (The peer's own half of this direction's queue
    /// would otherwise keep it open forever.)
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

/// One end of an in-process connection.
pub(crate) struct PipeEnd {
    pub(crate) sink: PipeSink,
    pub(crate) reader: PipeReader,
}

/// A connected pair of in-process ends, each queue bounded as `limits` says.
pub(crate) fn pipe(limits: &ConnectionLimits) -> (PipeEnd, PipeEnd) {
    let (a_out, a_in) = outbox(limits.max_queued_bytes);
    let (b_out, b_in) = outbox(limits.max_queued_bytes);
    let closed = Arc::new(AtomicBool::new(false));
    let reader = |queue| PipeReader { queue, pending: Vec::new(), at: 0, ended: false };
    let left = PipeEnd {
        sink: PipeSink { outbox: a_out.clone_sender(), closed: closed.clone(), back: b_out.clone_sender() },
        reader: reader(b_in),
    };
    let right = PipeEnd { sink: PipeSink { outbox: b_out, closed, back: a_out }, reader: reader(a_in) };
    (left, right)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use shardflow_control::protocol::{ListJobs, Message};

    use super::super::{send_message, spawn_reader, Received};
    use super::*;

    #[test]
    fn dropping_one_end_ends_the_peers_reader_after_what_was_queued() {
        let limits = ConnectionLimits::default();
        let (mut left, right) = pipe(&limits);
        let PipeEnd { sink: mut right_sink, reader } = right;
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = spawn_reader("pipe-test".into(), reader, &limits, move |r, _| {
            tx.send(matches!(r, Received::Message(Message::ListJobs(_)))).is_ok()
        })
        .unwrap();
        send_message(&mut left.sink, &Message::ListJobs(ListJobs {})).unwrap();
        drop(left);
        let wait = Duration::from_secs(60);
        assert_eq!(rx.recv_timeout(wait), Ok(true), "the frame queued before the drop arrives");
        assert_eq!(rx.recv_timeout(wait), Ok(false), "then the end, not a wait for a frame that never comes");
        thread.join().expect("the reader's thread ends");
        assert!(
            matches!(send_message(&mut right_sink, &Message::ListJobs(ListJobs {})), Err(SendError::Closed)),
            "and the peer's sends fail"
        );
    }
}
