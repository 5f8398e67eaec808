//! Moving frames: over TCP (blocking sockets, a reader thread per connection) or
//! in-process (channels of encoded frames). Both carry the same bytes, decoded by
//! the same [`shardflow_control::protocol`] code, so an in-process cluster runs the
//! code path of a distributed one.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};
use shardflow_control::protocol::{self, FrameError, FrameHeader, Message, HEADER_BYTES};

use rkyv::util::AlignedVec;

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

/// Reads one frame from `r`: header, checks, body into an aligned buffer, checked
/// decode. A read timeout is [`Received::TimedOut`]; other I/O errors count as a
/// close.
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
    let mut body = AlignedVec::<16>::with_capacity(header.len);
    body.resize(header.len, 0);
    let mut filled = 0;
    while filled < header.len {
        match r.read(&mut body[filled..]) {
            Ok(0) => return Received::Bad(FrameError::Truncated { needed: header.len - filled }),
            Ok(n) => filled += n,
            Err(e) => {
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

/// Reads frames from `r` on a thread of its own, handing each to `deliver`, until
/// the stream ends, a frame is bad (delivered, then the thread stops) or `deliver`
/// returns `false`. Fails only if the thread cannot start.
pub(crate) fn spawn_reader(
    name: String,
    mut r: impl Read + Send + 'static,
    max_frame_bytes: usize,
    deliver: impl Fn(Received) -> bool + Send + 'static,
) -> io::Result<()> {
    std::thread::Builder::new().name(name).spawn(move || loop {
        let received = read_frame(&mut r, max_frame_bytes);
        let last = !matches!(received, Received::Message(_));
        if !deliver(received) || last {
            break;
        }
    })?;
    Ok(())
}

/// The sending half of a connection.
pub(crate) trait FrameSink: Send {
    /// Sends one encoded frame; an error means the connection is gone.
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
    /// Closes the connection both ways (the peer's reader sees the end).
    fn close(&mut self);
}

/// Encodes and sends `msg`.
pub(crate) fn send_message(sink: &mut dyn FrameSink, msg: &Message) -> io::Result<()> {
    let frame = protocol::encode(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    sink.send(&frame)
}

/// The sending half of a TCP connection.
pub(crate) struct TcpSink(TcpStream);

impl TcpSink {
    /// Control frames are small and answered at once: no Nagle delay.
    pub(crate) fn new(stream: TcpStream) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        Ok(TcpSink(stream))
    }
}

impl FrameSink for TcpSink {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.0.write_all(frame)
    }
    fn close(&mut self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }
}

/// One direction of an in-process connection: frames as bytes, and `None` for the
/// end of the stream.
type PipeTx = Sender<Option<Vec<u8>>>;
type Pipe = (PipeTx, Receiver<Option<Vec<u8>>>);

/// The sending half of an in-process connection.
pub(crate) struct PipeSink {
    tx: PipeTx,
    /// The other direction, so closing ends the peer's sending too.
    back: Arc<Mutex<Option<PipeTx>>>,
}

impl FrameSink for PipeSink {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.tx.send(Some(frame.to_vec())).map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }
    fn close(&mut self) {
        let _ = self.tx.send(None);
        if let Ok(mut back) = self.back.lock() {
            if let Some(b) = back.take() {
                let _ = b.send(None);
            }
        }
    }
}

/// The receiving half of an in-process connection, readable like a socket.
pub(crate) struct PipeReader {
    rx: Receiver<Option<Vec<u8>>>,
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
            match self.rx.recv() {
                Ok(Some(bytes)) => {
                    self.pending = bytes;
                    self.at = 0;
                }
                Ok(None) | Err(_) => {
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

/// A connected pair of in-process ends.
pub(crate) fn pipe() -> (PipeEnd, PipeEnd) {
    let a: Pipe = crossbeam_channel::unbounded();
    let b: Pipe = crossbeam_channel::unbounded();
    let a_back = Arc::new(Mutex::new(Some(b.0.clone())));
    let b_back = Arc::new(Mutex::new(Some(a.0.clone())));
    let left = PipeEnd {
        sink: PipeSink { tx: a.0, back: a_back },
        reader: PipeReader { rx: b.1, pending: Vec::new(), at: 0, ended: false },
    };
    let right = PipeEnd {
        sink: PipeSink { tx: b.0, back: b_back },
        reader: PipeReader { rx: a.1, pending: Vec::new(), at: 0, ended: false },
    };
    (left, right)
}
