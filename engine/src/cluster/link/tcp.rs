//! A TCP connection: one socket shared by a reader thread and a writer thread
//! (one descriptor per connection), tuned with no Nagle delay, keepalive and a
//! user timeout, and set up by [`super::handshake`] (TLS, the secret's proof)
//! before it gets here. A frame is written by the sender itself only when
//! nothing is queued and the socket takes it whole without waiting; everything
//! else is written by the writer thread, in order, with a write timeout.
//!
//! Over TLS, both threads share the rustls connection behind a lock: a frame is
//! sealed into TLS records and those are written under the `writing` lock, so
//! records reach the wire in the order they were sealed; the reader feeds the
//! socket's bytes to rustls and reads the plaintext out, and never holds the
//! lock while it waits on the socket.

use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use socket2::{SockRef, TcpKeepalive};

use super::handshake::Established;
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
    /// The TLS session, where the connection has one.
    tls: Option<Mutex<rustls::Connection>>,
    /// Held by whoever writes (the writer thread, or a sender's non-blocking
    /// attempt), so frames go out whole and in order.
    writing: Mutex<()>,
    _until_closed: Option<Box<dyn std::any::Any + Send + Sync>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Socket {
    /// The bytes that go on the wire for `frame`: the frame itself, or its TLS
    /// records. The caller holds `writing`, and writes them before releasing it.
    fn seal<'a>(&self, frame: &'a [u8]) -> io::Result<Cow<'a, [u8]>> {
        let Some(tls) = &self.tls else { return Ok(Cow::Borrowed(frame)) };
        let mut c = locked(tls);
        c.writer().write_all(frame)?;
        let mut wire = Vec::with_capacity(frame.len() + frame.len() / 512 + 64);
        while c.wants_write() {
            c.write_tls(&mut wire)?;
        }
        Ok(Cow::Owned(wire))
    }

    /// Writes what the TLS session has to send of its own accord (an alert, a
    /// key update, a close notification).
    fn flush_tls(&self) -> io::Result<()> {
        let Some(tls) = &self.tls else { return Ok(()) };
        let _writing = locked(&self.writing);
        let mut wire = Vec::new();
        {
            let mut c = locked(tls);
            while c.wants_write() {
                c.write_tls(&mut wire)?;
            }
        }
        (&self.stream).write_all(&wire)
    }

    /// Tells a TLS peer the session ends (a clean end, not a truncation).
    fn close_tls(&self) {
        if let Some(tls) = &self.tls {
            locked(tls).send_close_notify();
            let _ = self.flush_tls();
        }
    }
}

/// The sending half of a TCP connection: a queue its writer thread drains.
pub(crate) struct TcpSink {
    outbox: Outbox,
    stream: Arc<Socket>,
    closed: Arc<AtomicBool>,
    peer: String,
}

/// Tunes the set-up connection `conn` and starts its writer thread; returns the
/// sending half and the reading half, for [`super::spawn_reader`]. `name` names
/// the threads; `until_closed` is dropped when the socket's descriptor is closed.
pub(crate) fn open_tcp(
    name: &str,
    conn: Established,
    limits: &ConnectionLimits,
    until_closed: Option<Box<dyn std::any::Any + Send + Sync>>,
) -> io::Result<(TcpSink, TcpReader)> {
    let Established { stream, tls } = conn;
    tune(&stream, limits)?;
    stream.set_read_timeout(None)?;
    let peer = stream.peer_addr().map_or_else(|_| "an unknown peer".to_string(), |a: SocketAddr| a.to_string());
    let tls = tls.map(|mut c| {
        // Sealed records go to the socket at once: no limit on what rustls holds.
        c.set_buffer_limit(None);
        Mutex::new(c)
    });
    let stream = Arc::new(Socket { stream, tls, writing: Mutex::new(()), _until_closed: until_closed });
    let closed = Arc::new(AtomicBool::new(false));
    let (outbox, queue) = outbox(limits.max_queued_bytes);
    let (w_stream, w_closed, w_peer, timeout) = (stream.clone(), closed.clone(), peer.clone(), limits.write_timeout);
    std::thread::Builder::new().name(format!("{name}-write")).spawn(move || {
        let mut out = &w_stream.stream;
        while let Some(item) = queue.recv() {
            let (bytes, written) = match item {
                Outgoing::Frame(frame) => {
                    let _writing = locked(&w_stream.writing);
                    let written = w_stream.seal(&frame).and_then(|wire| out.write_all(&wire));
                    (frame.len(), written)
                }
                Outgoing::Wire(wire) => {
                    let _writing = locked(&w_stream.writing);
                    (wire.len(), out.write_all(&wire))
                }
                Outgoing::Close => break,
            };
            queue.done(bytes);
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
        // Closed, or every sender is gone: what was queued has been written.
        w_closed.store(true, Ordering::Release);
        w_stream.close_tls();
        let _ = w_stream.shutdown(Shutdown::Both);
    })?;
    Ok((TcpSink { outbox, stream: stream.clone(), closed, peer }, TcpReader::new(stream)))
}

impl std::ops::Deref for Socket {
    type Target = TcpStream;
    fn deref(&self) -> &TcpStream {
        &self.stream
    }
}

/// Ends a connection from another thread (see [`TcpReader::interrupter`]).
pub(crate) struct Interrupter(Arc<Socket>);

impl Interrupter {
    /// Shuts the socket down both ways.
    pub(crate) fn interrupt(&self) {
        let _ = self.0.stream.shutdown(Shutdown::Both);
    }
}

/// The socket as its reader reads it (decrypting, over TLS).
pub(crate) struct TcpReader {
    socket: Arc<Socket>,
    /// Bytes read from the socket that rustls has not taken yet (TLS only).
    raw: Vec<u8>,
    raw_at: usize,
}

/// Bytes read from a TLS socket at a time.
const RAW_CHUNK: usize = 32 << 10;

impl TcpReader {
    fn new(socket: Arc<Socket>) -> Self {
        TcpReader { socket, raw: Vec::new(), raw_at: 0 }
    }

    /// Bounds each read (`None`: wait as long as it takes).
    pub(crate) fn set_read_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        self.socket.set_read_timeout(timeout)
    }

    /// A way to end this connection from another thread: a read blocked on it
    /// returns at once.
    pub(crate) fn interrupter(&self) -> Interrupter {
        Interrupter(self.socket.clone())
    }

    /// Reads plaintext from the TLS session `tls`, feeding it the socket's bytes
    /// as they come. `Ok(0)` is the end of the session (a close notification, or
    /// the connection closed).
    fn read_tls(&mut self, tls: &Mutex<rustls::Connection>, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut wants_write = false;
            {
                let mut c = locked(tls);
                match c.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // The peer closed TCP without ending the session: an end all the same.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) => return Err(e),
                }
                if self.raw_at < self.raw.len() {
                    let mut pending = &self.raw[self.raw_at..];
                    let before = pending.len();
                    c.read_tls(&mut pending)?;
                    self.raw_at += before - pending.len();
                    if let Err(e) = c.process_new_packets() {
                        // The alert rustls queued goes out before the error ends the connection.
                        drop(c);
                        let _ = self.socket.flush_tls();
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                    wants_write = c.wants_write();
                } else {
                    drop(c);
                    self.raw.resize(RAW_CHUNK, 0);
                    self.raw_at = 0;
                    match (&self.socket.stream).read(&mut self.raw) {
                        Ok(n) => {
                            self.raw.truncate(n);
                            if n == 0 {
                                return Ok(0);
                            }
                        }
                        Err(e) => {
                            self.raw.clear();
                            return Err(e);
                        }
                    }
                }
            }
            if wants_write {
                self.socket.flush_tls()?;
            }
        }
    }
}

impl io::Read for TcpReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let socket = self.socket.clone();
        match &socket.tls {
            None => (&socket.stream).read(buf),
            Some(tls) => self.read_tls(tls, buf),
        }
    }
}

impl TcpSink {
    /// Writes what the socket takes of `frame` now, without waiting, if nothing
    /// is queued or being written; returns what is left to queue (all of it when
    /// the socket is busy).
    fn write_now(&self, frame: Vec<u8>) -> Result<Option<Vec<u8>>, SendError> {
        if !self.outbox.is_idle() {
            return Ok(Some(frame));
        }
        let Ok(_writing) = self.stream.writing.try_lock() else { return Ok(Some(frame)) };
        // Under the lock, an idle outbox means no frame is queued or in the
        // writer's hands: writing now keeps the order.
        if !self.outbox.is_idle() {
            return Ok(Some(frame));
        }
        let wire = match self.stream.seal(&frame) {
            Ok(w) => w,
            Err(e) => return Err(self.failed(e)),
        };
        match SockRef::from(&self.stream.stream).send_with_flags(&wire, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) {
            Ok(n) if n == wire.len() => Ok(None),
            // Sealed bytes cannot be sealed again: what is left goes as it is,
            // queued while still holding the lock, so nothing overtakes it.
            Ok(n) => self.outbox.try_send_wire(wire[n..].to_vec()).map(|()| None),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => match wire {
                Cow::Borrowed(_) => Ok(Some(frame)),
                Cow::Owned(sealed) => self.outbox.try_send_wire(sealed).map(|()| None),
            },
            Err(e) => Err(self.failed(e)),
        }
    }

    fn failed(&self, e: io::Error) -> SendError {
        tracing::debug!(peer = %self.peer, "write failed: {e}");
        self.closed.store(true, Ordering::Release);
        let _ = self.stream.shutdown(Shutdown::Both);
        SendError::Closed
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
        let (mut sink, _reader) = open_tcp("test", Established::plain(client), &limits, None).unwrap();
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

    /// A test CA and a certificate for 127.0.0.1 it signed, as PEM: (chain, key, CA).
    fn test_pki() -> (String, String, String) {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem(), ca.pem())
    }

    /// Over TLS with the cluster secret: frames of many sizes, both ways, each
    /// sent while the other side is not reading, arrive whole and in order.
    #[test]
    fn over_tls_frames_arrive_whole_and_in_order_both_ways() {
        use crate::cluster::link::{accept, connect, ClusterSecret, Security, TlsConfig};
        let (chain, key, ca) = test_pki();
        let security = Security::none()
            .with_secret(ClusterSecret::new(b"0123456789abcdef0123456789abcdef").unwrap())
            .with_tls(TlsConfig::from_pem(chain.as_bytes(), key.as_bytes(), ca.as_bytes()).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ConnectionLimits { max_queued_bytes: 256 << 20, ..ConnectionLimits::default() };
        let server_security = security.clone();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            accept(stream, &server_security, &limits).unwrap()
        });
        let client = connect(TcpStream::connect(addr).unwrap(), &security, addr, "test", &limits).unwrap();
        let server = server.join().unwrap();
        assert!(client.tls.is_some() && server.tls.is_some());
        let (mut a, mut a_reader) = open_tcp("a", client, &limits, None).unwrap();
        let (mut b, mut b_reader) = open_tcp("b", server, &limits, None).unwrap();
        let frames: Vec<Vec<u8>> = (0..120u32).map(|i| vec![i as u8; 16 + (i as usize * 7919) % (300 << 10)]).collect();
        let total: usize = frames.iter().map(Vec::len).sum();
        for f in &frames {
            a.try_send(f.clone()).unwrap();
            b.try_send(f.clone()).unwrap();
        }
        let read_all = |r: &mut TcpReader| {
            r.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
            let mut got = vec![0u8; total];
            r.read_exact(&mut got).expect("every byte within the timeout");
            got
        };
        assert_eq!(read_all(&mut b_reader), frames.concat(), "a to b");
        assert_eq!(read_all(&mut a_reader), frames.concat(), "b to a");
        a.close();
        let mut rest = Vec::new();
        b_reader.read_to_end(&mut rest).expect("a clean end");
        assert!(rest.is_empty());
    }
}
