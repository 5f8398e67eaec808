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
