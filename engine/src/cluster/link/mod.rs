//! Moving frames: over TCP (a reader and a writer thread per connection) or
//! in-process (encoded frames handed to the coordinator's loop on the sending
//! thread, and a queue of them back). Both carry the same bytes, decoded by the
//! same [`shardflow_control::protocol`] code, so an in-process cluster runs the
//! code path of a distributed one.
//!
//! No peer can stall the process it talks to:
//!
//! - **Sending never blocks the caller.** [`FrameSink::try_send`] writes the
//!   frame at once only if nothing is queued and the socket takes all of it
//!   without waiting (a non-blocking send: no thread hop on the common path);
//!   otherwise it queues the frame (or the rest of it) for the connection's
//!   writer thread, which writes with a write timeout.
//!   The queue is bounded ([`ConnectionLimits::max_queued_bytes`]): a peer that
//!   stops reading fills it, and the connection is dropped instead of waited
//!   for ([`SendError::Full`]); a write that makes no progress within the write
//!   timeout closes the connection too.
//! - **Reading is bounded.** A reader thread hands each frame on with a
//!   [`Permit`]; while [`ConnectionLimits::max_unhandled_frames`] of its frames
//!   are not yet handled, it stops reading, so a flooding peer meets TCP
//!   back-pressure instead of growing a queue. A frame's body is read into a
//!   buffer that grows as its bytes arrive, never allocated whole from the
//!   length a peer announces. An in-process peer hands its frames on itself,
//!   each with a [`Permit`] for its bytes: beyond
//!   [`ConnectionLimits::max_queued_bytes`] not yet handled, its send is
//!   [`SendError::Full`], as a full queue's would be.
//! - TCP connections have no Nagle delay and keepalive on, with
//!   `TCP_USER_TIMEOUT` set to the write timeout.

mod handshake;
mod pipe;
mod security;
mod tcp;

use std::io::{self, Read};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use rkyv::util::AlignedVec;
use shardflow_control::protocol::{self, FrameError, FrameHeader, Message, DEFAULT_MAX_FRAME_BYTES, HEADER_BYTES};

pub(crate) use handshake::{accept, connect, HandshakeError};
pub(crate) use pipe::{direct_pipe, PipeEnd, PipeReader};
pub use security::{ClusterSecret, Security, TlsConfig, MIN_SECRET_BYTES};
pub(crate) use tcp::{open_tcp, Interrupter, TcpReader};

/// How a connection guards its process against its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Largest frame accepted (archive bytes). Default 16 MiB.
    pub max_frame_bytes: usize,
    /// A write that makes no progress for this long ends the connection (the peer
    /// stopped reading); also TCP's user timeout. Default 10 s.
    pub write_timeout: Duration,
    /// Frames queued for a peer beyond this many bytes end the connection
    /// (one frame is always accepted into an empty queue). Default 8 MiB.
    pub max_queued_bytes: usize,
    /// Frames read from a peer and not yet handled, beyond which its reader
    /// stops reading. Default 64.
    pub max_unhandled_frames: usize,
    /// Idle time before TCP keepalive probes start. Default 10 s.
    pub keepalive: Duration,
    /// How long a new connection may take to set up (TLS, the secret's proof)
    /// before it is dropped. Default 5 s.
    pub handshake_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            write_timeout: Duration::from_secs(10),
            max_queued_bytes: 8 << 20,
            max_unhandled_frames: 64,
            keepalive: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

/// What reading one frame gave.
#[derive(Debug)]
pub(crate) enum Received {
    /// A decoded message.
    Message(Message),
    /// Bytes that are not a frame: the connection must be closed.
    Bad(FrameError),
    /// The peer closed the connection between frames.
    Closed,
    /// No (whole) frame within the stream's read timeout, where one is set.
    TimedOut,
}

/// Bytes read per `read` call of a frame body at most: the body buffer grows by
/// what arrives, so a peer announcing a large frame and sending little costs
/// little.
const READ_CHUNK: usize = 64 << 10;

/// Reads one frame from `r`: header, checks, body into an aligned buffer grown
/// as bytes arrive, checked decode. A read timeout is [`Received::TimedOut`];
/// other I/O errors count as a close.
pub(crate) fn read_frame(r: &mut impl Read, max_frame_bytes: usize) -> Received {
    let mut head = [0u8; HEADER_BYTES];
    let mut got = 0;
    while got < HEADER_BYTES {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Received::Closed,
            Ok(0) => return Received::Bad(FrameError::Truncated { needed: HEADER_BYTES - got }),
            Ok(n) => got += n,
            Err(e) => {
                if let Some(end) = failed_read(&e) {
                    return end;
                }
            }
        }
    }
    let header = match FrameHeader::parse(&head, max_frame_bytes) {
        Ok(h) => h,
        Err(e) => return Received::Bad(e),
    };
    let mut body = AlignedVec::<16>::new();
    while body.len() < header.len {
        let at = body.len();
        body.resize(at + (header.len - at).min(READ_CHUNK), 0);
        match r.read(&mut body[at..]) {
            Ok(0) => return Received::Bad(FrameError::Truncated { needed: header.len - at }),
            Ok(n) => body.resize(at + n, 0),
            Err(e) => {
                body.resize(at, 0);
                if let Some(end) = failed_read(&e) {
                    return end;
                }
            }
        }
    }
    match protocol::decode_body(header, &body) {
        Ok(m) => Received::Message(m),
        Err(e) => Received::Bad(e),
    }
}

/// What a failed read means: nothing (interrupted: read again), a timeout, or a
/// lost connection.
fn failed_read(e: &io::Error) -> Option<Received> {
    match e.kind() {
        io::ErrorKind::Interrupted => None,
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Some(Received::TimedOut),
        _ => Some(Received::Closed),
    }
}

/// A frame read from a peer and not yet handled. The reader that read it counts
/// it against [`ConnectionLimits::max_unhandled_frames`] (an in-process peer's
/// sink, its bytes against [`ConnectionLimits::max_queued_bytes`]) until it is
/// dropped.
#[derive(Debug)]
pub(crate) struct Permit(Held);

#[derive(Debug)]
enum Held {
    /// One of a reader's frame slots.
    Slot(Receiver<()>),
    /// `.1` bytes of an in-process sink's unhandled ones.
    Bytes(std::sync::Arc<std::sync::atomic::AtomicUsize>, usize),
}

#[cfg(test)]
impl Permit {
    /// A permit that counts against nothing.
    pub(crate) fn unbounded() -> Self {
        Permit(Held::Bytes(std::sync::Arc::default(), 0))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        match &self.0 {
            Held::Slot(slots) => {
                let _ = slots.try_recv();
            }
            Held::Bytes(unhandled, n) => {
                unhandled.fetch_sub(*n, std::sync::atomic::Ordering::AcqRel);
            }
        }
    }
}

/// Reads frames from `r` on a thread of its own, handing each to `deliver` with
/// its [`Permit`], until the stream ends, a frame is bad (delivered, then the
/// thread stops) or `deliver` returns `false`. While `max_unhandled` permits are
/// held, the thread waits before reading on. Fails only if the thread cannot
/// start.
pub(crate) fn spawn_reader(
    name: String,
    r: impl Read + Send + 'static,
    limits: &ConnectionLimits,
    deliver: impl FnMut(Received, Permit) -> bool + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    let limits = *limits;
    std::thread::Builder::new().name(name).spawn(move || read_frames(r, &limits, deliver))
}

/// The body of [`spawn_reader`], on the calling thread.
pub(crate) fn read_frames(
    mut r: impl Read,
    limits: &ConnectionLimits,
    mut deliver: impl FnMut(Received, Permit) -> bool,
) {
    let (held, permits): (Sender<()>, Receiver<()>) = crossbeam_channel::bounded(limits.max_unhandled_frames.max(1));
    loop {
        // Waits while the consumer is behind: the peer's sends then wait in TCP.
        if held.send(()).is_err() {
            break;
        }
        let received = read_frame(&mut r, limits.max_frame_bytes);
        let last = !matches!(received, Received::Message(_));
        if !deliver(received, Permit(Held::Slot(permits.clone()))) || last {
            break;
        }
    }
}

/// Why a frame was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SendError {
    /// The peer is not taking what was queued for it.
    #[error("the peer is not reading: {queued_bytes} bytes are queued for it (limit {max_bytes})")]
    Full {
        /// Bytes waiting.
        queued_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// The connection is gone.
    #[error("the connection is closed")]
    Closed,
    /// The message could not be encoded.
    #[error("{0}")]
    Encode(FrameError),
}

/// The sending half of a connection. Nothing here blocks.
pub(crate) trait FrameSink: Send {
    /// Queues one encoded frame.
    fn try_send(&mut self, frame: Vec<u8>) -> Result<(), SendError>;
    /// Closes the connection once what is queued has been sent (or the write
    /// timeout passed); the peer's reader then sees the end.
    fn close(&mut self);
    /// Drops the connection now, queued frames and all.
    fn abort(&mut self);
    /// The peer, for logs: its address, or "in-process".
    fn peer(&self) -> &str;
}

/// Encodes and queues `msg`.
pub(crate) fn send_message(sink: &mut dyn FrameSink, msg: &Message) -> Result<(), SendError> {
    let frame = protocol::encode(msg).map_err(SendError::Encode)?;
    sink.try_send(frame.into_vec())
}

/// An item of a connection's outgoing queue.
enum Outgoing {
    /// A frame, to be sealed (over TLS) and written.
    Frame(Vec<u8>),
    /// Bytes as they go on the wire (the sealed rest of a frame the sender began).
    Wire(Vec<u8>),
    Close,
}

/// A connection's outgoing queue, bounded by bytes: the sending end. The
/// receiving end ([`OutboxReader`]) is a TCP writer thread or an in-process
/// reader.
struct Outbox {
    tx: Sender<Outgoing>,
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    max_bytes: usize,
}

/// The receiving end of an [`Outbox`].
struct OutboxReader {
    rx: Receiver<Outgoing>,
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn outbox(max_bytes: usize) -> (Outbox, OutboxReader) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let queued = std::sync::Arc::default();
    (Outbox { tx, queued: std::sync::Arc::clone(&queued), max_bytes }, OutboxReader { rx, queued })
}

impl Outbox {
    fn try_send(&self, frame: Vec<u8>) -> Result<(), SendError> {
        use std::sync::atomic::Ordering;
        let queued = self.queued.load(Ordering::Acquire);
        if queued > 0 && queued.saturating_add(frame.len()) > self.max_bytes {
            return Err(SendError::Full { queued_bytes: queued, max_bytes: self.max_bytes });
        }
        self.queued.fetch_add(frame.len(), Ordering::AcqRel);
        self.tx.send(Outgoing::Frame(frame)).map_err(|_| SendError::Closed)
    }

    /// Queues bytes that go on the wire as they are (already sealed).
    fn try_send_wire(&self, wire: Vec<u8>) -> Result<(), SendError> {
        use std::sync::atomic::Ordering;
        let queued = self.queued.load(Ordering::Acquire);
        if queued > 0 && queued.saturating_add(wire.len()) > self.max_bytes {
            return Err(SendError::Full { queued_bytes: queued, max_bytes: self.max_bytes });
        }
        self.queued.fetch_add(wire.len(), Ordering::AcqRel);
        self.tx.send(Outgoing::Wire(wire)).map_err(|_| SendError::Closed)
    }

    fn close(&self) {
        let _ = self.tx.send(Outgoing::Close);
    }

    /// Whether no frame is queued or being written.
    fn is_idle(&self) -> bool {
        self.queued.load(std::sync::atomic::Ordering::Acquire) == 0
    }

    /// Another sending end of the same queue.
    fn clone_sender(&self) -> Outbox {
        Outbox { tx: self.tx.clone(), queued: std::sync::Arc::clone(&self.queued), max_bytes: self.max_bytes }
    }
}

impl OutboxReader {
    /// The next item, waiting for one; `None` once the sending end is gone. A
    /// frame counts as queued until [`Self::done`] says it was written.
    fn recv(&self) -> Option<Outgoing> {
        self.rx.recv().ok()
    }

    /// A frame of `bytes` taken by [`Self::recv`] has been written (or dropped).
    fn done(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, std::sync::atomic::Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardflow_control::protocol::{encode, ListJobs, PROTOCOL_VERSION};

    /// A reader that hands out what it has a few bytes at a time and then ends.
    struct Trickle(Vec<u8>, usize);
    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(3).min(self.0.len() - self.1);
            buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }

    #[test]
    fn a_frame_arriving_in_pieces_is_read_whole() {
        let frame = encode(&Message::ListJobs(ListJobs {})).unwrap().into_vec();
        let mut r = Trickle([frame.clone(), frame].concat(), 0);
        assert!(matches!(read_frame(&mut r, 1 << 20), Received::Message(Message::ListJobs(_))));
        assert!(matches!(read_frame(&mut r, 1 << 20), Received::Message(Message::ListJobs(_))));
        assert!(matches!(read_frame(&mut r, 1 << 20), Received::Closed));
    }

    #[test]
    fn a_large_announced_body_that_never_comes_is_truncated_without_allocating_it() {
        let mut head = vec![0u8; HEADER_BYTES];
        head[0..4].copy_from_slice(&(15u32 << 20).to_le_bytes());
        head[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        head[6..8].copy_from_slice(&66u16.to_le_bytes());
        let mut r = Trickle([head, vec![1u8; 100]].concat(), 0);
        match read_frame(&mut r, 16 << 20) {
            Received::Bad(FrameError::Truncated { needed }) => assert_eq!(needed, (15 << 20) - 100),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_outbox_refuses_past_its_bound_but_always_takes_one_frame() {
        let (out, rd) = outbox(100);
        out.try_send(vec![0; 150]).expect("an empty queue takes any frame");
        assert_eq!(out.try_send(vec![0; 1]), Err(SendError::Full { queued_bytes: 150, max_bytes: 100 }));
        assert!(matches!(rd.recv(), Some(Outgoing::Frame(f)) if f.len() == 150));
        assert!(!out.is_idle(), "taken, not yet written");
        rd.done(150);
        assert!(out.is_idle());
        out.try_send(vec![0; 60]).unwrap();
        out.try_send(vec![0; 40]).unwrap();
        assert!(matches!(out.try_send(vec![0; 1]), Err(SendError::Full { queued_bytes: 100, .. })));
        drop(rd);
        assert!(matches!(out.try_send(vec![0; 1]), Err(SendError::Full { .. })), "still full: nothing took it");
    }

    #[test]
    fn a_reader_stops_reading_while_its_frames_are_unhandled() {
        let frame = encode(&Message::ListJobs(ListJobs {})).unwrap().into_vec();
        let input: Vec<u8> = std::iter::repeat_n(frame, 10).flatten().collect();
        let limits = ConnectionLimits { max_unhandled_frames: 3, ..ConnectionLimits::default() };
        let (tx, rx) = crossbeam_channel::unbounded();
        let reader = spawn_reader("test-reader".into(), Trickle(input, 0), &limits, move |r, p| {
            tx.send((matches!(r, Received::Message(_)), p)).is_ok()
        })
        .unwrap();
        let wait = Duration::from_secs(60);
        let held: Vec<_> = (0..3).map(|_| rx.recv_timeout(wait).expect("three frames come")).collect();
        // The reader now waits for a permit: a fourth frame comes only after one
        // of the three is handled (dropped).
        assert!(rx.is_empty());
        let mut rest = Vec::new();
        drop(held);
        while let Ok((is_message, p)) = rx.recv_timeout(wait) {
            drop(p);
            rest.push(is_message);
            if !is_message {
                break;
            }
        }
        assert_eq!(rest, [vec![true; 7], vec![false]].concat(), "seven more frames, then the end");
        reader.join().unwrap();
    }
}
