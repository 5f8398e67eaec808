//! A TCP connection: one socket shared by a reader thread and a writer thread
//! (one descriptor per connection), tuned with no Nagle delay, keepalive and a
//! user timeout. A frame is written by the sender itself only when nothing is
//! queued and the socket takes it whole without waiting; everything else is
//! written by the writer thread, in order, with a write timeout.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use socket2::{SockRef, TcpKeepalive};

use super::{outbox, ConnectionLimits, FrameSink, Outbox, Outgoing, SendError};

/// Sets what every control socket gets: no Nagle delay (control frames are
/// small and answered at once), keepalive, and `TCP_USER_TIMEOUT` and the write
/// timeout from `limits`.
pub(crate) fn tune(stream: &TcpStream, limits: &ConnectionLimits) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(limits.write_timeout))?;
    let sock = SockRef::from(stream);
    let keepalive = TcpKeepalive::new()
        .with_time(limits.keepalive)
        .with_interval(limits.keepalive.min(std::time::Duration::from_secs(5)))
        .with_retries(3);
    sock.set_tcp_keepalive(&keepalive)?;
    sock.set_tcp_user_timeout(Some(limits.write_timeout))?;
    Ok(())
}

/// A connection's socket, shared by its halves, and what lives exactly as long
/// as its descriptor (the server's count of open connections).
struct Socket {
    stream: TcpStream,
    /// Held by whoever writes (the writer thread, or a sender's non-blocking
    /// attempt), so frames go out whole and in order.
    writing: Mutex<()>,
    _until_closed: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl std::ops::Deref for Socket {
    type Target = TcpStream;
    fn deref(&self) -> &TcpStream {
        &self.stream
    }
}

/// The sending half of a TCP connection: a queue its writer thread drains.
pub(crate) struct TcpSink {
    outbox: Outbox,
    stream: Arc<Socket>,
    closed: Arc<AtomicBool>,
    peer: String,
}

/// Tunes `stream` and starts its writer thread; returns the sending half and
/// the reading half, for [`super::spawn_reader`]. `name` names the threads;
/// `until_closed` is dropped when the socket's descriptor is closed.
pub(crate) fn open_tcp(
    name: &str,
    stream: TcpStream,
    limits: &ConnectionLimits,
    until_closed: Option<Box<dyn std::any::Any + Send + Sync>>,
) -> io::Result<(TcpSink, TcpReader)> {
    tune(&stream, limits)?;
    let peer = stream.peer_addr().map_or_else(|_| "an unknown peer".to_string(), |a: SocketAddr| a.to_string());
    let stream = Arc::new(Socket { stream, writing: Mutex::new(()), _until_closed: until_closed });
    let closed = Arc::new(AtomicBool::new(false));
    let (outbox, queue) = outbox(limits.max_queued_bytes);
    let (w_stream, w_closed, w_peer, timeout) = (stream.clone(), closed.clone(), peer.clone(), limits.write_timeout);
    std::thread::Builder::new().name(format!("{name}-write")).spawn(move || {
        let mut out = &w_stream.stream;
        while let Some(item) = queue.recv() {
            match item {
                Outgoing::Frame(frame) => {
                    let written = {
                        let _writing = w_stream.writing.lock().unwrap_or_else(PoisonError::into_inner);
                        out.write_all(&frame)
                    };
                    queue.done(frame.len());
                    if let Err(e) = written {
                        if !w_closed.swap(true, Ordering::AcqRel) {
                            match e.kind() {
                                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => tracing::warn!(
                                    peer = %w_peer,
                                    "disconnecting {w_peer}: it took no bytes for {} ms (it stopped reading)",
                                    timeout.as_millis()
                                ),
                                _ => tracing::debug!(peer = %w_peer, "write failed: {e}"),
                            }
                        }
                        let _ = w_stream.shutdown(Shutdown::Both);
                        return;
                    }
                }
                Outgoing::Close => break,
            }
        }
        // Closed, or every sender is gone: what was queued has been written.
        w_closed.store(true, Ordering::Release);
        let _ = w_stream.shutdown(Shutdown::Both);
    })?;
    Ok((TcpSink { outbox, stream: stream.clone(), closed, peer }, TcpReader(stream)))
}

/// The socket as its reader reads it.
pub(crate) struct TcpReader(Arc<Socket>);

impl TcpReader {
    /// Bounds each read (`None`: wait as long as it takes).
    pub(crate) fn set_read_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        self.0.set_read_timeout(timeout)
    }
}

impl io::Read for TcpReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.0.stream).read(buf)
    }
}

impl TcpSink {
    /// Writes what the socket takes of `frame` now, without waiting, if nothing
    /// is queued or being written; returns what is left to queue (all of it when
    /// the socket is busy).
    fn write_now(&self, mut frame: Vec<u8>) -> Result<Option<Vec<u8>>, SendError> {
        if !self.outbox.is_idle() {
            return Ok(Some(frame));
        }
        let Ok(_writing) = self.stream.writing.try_lock() else { return Ok(Some(frame)) };
        // Under the lock, an idle outbox means no frame is queued or in the
        // writer's hands: writing now keeps the order.
        if !self.outbox.is_idle() {
            return Ok(Some(frame));
        }
        match SockRef::from(&self.stream.stream).send_with_flags(&frame, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) {
            Ok(n) if n == frame.len() => Ok(None),
            Ok(n) => {
                frame.drain(..n);
                // Queued while still holding the lock, so nothing overtakes the rest.
                self.outbox.try_send(frame)?;
                Ok(None)
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => Ok(Some(frame)),
            Err(e) => {
                tracing::debug!(peer = %self.peer, "write failed: {e}");
                self.closed.store(true, Ordering::Release);
                let _ = self.stream.shutdown(Shutdown::Both);
                Err(SendError::Closed)
            }
        }
    }
}

impl FrameSink for TcpSink {
    fn try_send(&mut self, frame: Vec<u8>) -> Result<(), SendError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        match self.write_now(frame)? {
            None => Ok(()),
            Some(rest) => self.outbox.try_send(rest),
        }
    }

    fn close(&mut self) {
        // Nothing more goes out; the writer sends what is queued, then closes.
        self.closed.store(true, Ordering::Release);
        self.outbox.close();
    }

    fn abort(&mut self) {
        self.closed.store(true, Ordering::Release);
        let _ = self.stream.shutdown(Shutdown::Both);
        self.outbox.close();
    }

    fn peer(&self) -> &str {
        &self.peer
    }
}

impl Drop for TcpSink {
    fn drop(&mut self) {
        // The writer finishes what is queued, then closes.
        self.outbox.close();
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;

    use super::*;

    /// Frames of many sizes, sent while the peer is not reading (so some go out
    /// at once, some in part, the rest through the writer thread), arrive whole
    /// and in order.
    #[test]
    fn frames_arrive_whole_and_in_order_whichever_path_they_take() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        let limits = ConnectionLimits { max_queued_bytes: 256 << 20, ..ConnectionLimits::default() };
        let (mut sink, _reader) = open_tcp("test", client, &limits, None).unwrap();
        let frames: Vec<Vec<u8>> = (0..200u32).map(|i| vec![i as u8; 16 + (i as usize * 7919) % (512 << 10)]).collect();
        for f in &frames {
            sink.try_send(f.clone()).unwrap();
        }
        sink.close();
        peer.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).expect("everything, then the end");
        assert_eq!(got, frames.concat());
    }
}
