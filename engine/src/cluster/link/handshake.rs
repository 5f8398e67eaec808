//! Setting a TCP control connection up before it carries frames: TLS first,
//! where configured, then the secret's challenge–response, where configured
//! (the protocol is drawn in [`super::security`]). Both sides bound every
//! step by the handshake timeout, so a peer that connects and says nothing
//! costs one thread for that long and delays nobody else.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};

use rustls::pki_types::ServerName;
use shardflow_control::protocol::{
    self, AuthAccepted, AuthChallenge, AuthHello, AuthResponse, ErrorCode, FrameError, Message,
};

use super::security::{nonce, Security};
use super::{read_frame, ConnectionLimits, Received};

/// Label of the coordinator's proof.
const SERVER_LABEL: &[u8] = b"shardflow-auth-v1/server";
/// Label of the client's proof.
const CLIENT_LABEL: &[u8] = b"shardflow-auth-v1/client";
/// Largest frame read while a connection is set up: its frames (nonces,
/// proofs, a role, a refusal's reason) are far smaller, and a peer that has
/// not proved the secret must not make the coordinator hold the megabytes a
/// frame of a proven peer may have.
const MAX_HANDSHAKE_FRAME_BYTES: usize = 4 << 10;

/// A connection that is set up: its socket, and its TLS session if it has one.
pub(crate) struct Established {
    pub(crate) stream: TcpStream,
    pub(crate) tls: Option<rustls::Connection>,
}

impl Established {
    /// A connection with nothing to set up.
    #[cfg(test)]
    pub(crate) fn plain(stream: TcpStream) -> Self {
        Established { stream, tls: None }
    }
}

/// Why a connection could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HandshakeError {
    /// The TLS handshake failed (a certificate of another CA, a peer without
    /// TLS, …).
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// The peer refused us, and said why.
    #[error("{0}")]
    Refused(String),
    /// The peer did not prove it holds the cluster's secret.
    #[error("{0}")]
    Unauthenticated(String),
    /// The connection failed or went silent during set-up.
    #[error("{0}")]
    Io(String),
}

/// The connection during set-up, read and written in plain or through TLS.
struct SetUp<'a> {
    stream: &'a mut TcpStream,
    tls: Option<&'a mut rustls::Connection>,
    /// What TLS said went wrong, where it did (an alert from the peer).
    tls_failure: Option<String>,
}

impl Read for SetUp<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(c) = self.tls.as_deref_mut() else { return self.stream.read(buf) };
        loop {
            match c.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if c.read_tls(self.stream)? == 0 {
                return Ok(0);
            }
            if let Err(e) = c.process_new_packets() {
                let _ = c.write_tls(self.stream);
                self.tls_failure = Some(e.to_string());
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }
}

impl Write for SetUp<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(c) = self.tls.as_deref_mut() else { return self.stream.write(buf) };
        let n = c.writer().write(buf)?;
        while c.wants_write() {
            c.write_tls(self.stream)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl SetUp<'_> {
    fn send(&mut self, msg: &Message) -> Result<(), HandshakeError> {
        let frame = protocol::encode(msg).map_err(|e| HandshakeError::Io(e.to_string()))?;
        self.write_all(&frame).map_err(|e| io_error("sending", msg.kind_name(), &e))
    }

    fn receive(&mut self, limits: &ConnectionLimits) -> Received {
        read_frame(self, limits.max_frame_bytes.min(MAX_HANDSHAKE_FRAME_BYTES))
    }

    /// What not receiving the `waiting_for` means, TLS's own account first.
    fn missing(&mut self, r: Received, waiting_for: &str, timeout_ms: u128) -> HandshakeError {
        if let Some(why) = self.tls_failure.take() {
            return HandshakeError::Tls(why);
        }
        let e = not_received(r, waiting_for, timeout_ms);
        match e {
            // Bytes that are not frames, on a connection without TLS: likely TLS.
            HandshakeError::Unauthenticated(why) if self.tls.is_none() && why.starts_with("a bad frame") => {
                HandshakeError::Unauthenticated(format!("{why} (does the other side require TLS?)"))
            }
            other => other,
        }
    }

    /// Tells the peer it is refused, then gives the error.
    fn refuse(&mut self, why: String) -> HandshakeError {
        let _ = self.send(&Message::error(ErrorCode::Unauthenticated, why.clone()));
        HandshakeError::Unauthenticated(why)
    }
}

fn io_error(doing: &str, what: &str, e: &io::Error) -> HandshakeError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            HandshakeError::Io(format!("timed out {doing} {what} while setting the connection up"))
        }
        io::ErrorKind::InvalidData => HandshakeError::Tls(e.to_string()),
        _ => HandshakeError::Io(format!("{doing} {what}: {e}")),
    }
}

/// What not receiving a frame during set-up means.
fn not_received(r: Received, waiting_for: &str, timeout_ms: u128) -> HandshakeError {
    match r {
        Received::TimedOut => HandshakeError::Io(format!("no {waiting_for} within {timeout_ms} ms")),
        Received::Closed => HandshakeError::Io(format!("the connection closed before the {waiting_for}")),
        Received::Bad(e) => HandshakeError::Unauthenticated(format!("a bad frame instead of the {waiting_for}: {e}")),
        Received::Message(m) => {
            HandshakeError::Unauthenticated(format!("{} instead of the {waiting_for}", m.kind_name()))
        }
    }
}

fn with_timeouts(stream: &TcpStream, limits: &ConnectionLimits) -> Result<(), HandshakeError> {
    let t = Some(limits.handshake_timeout.max(std::time::Duration::from_millis(1)));
    stream
        .set_read_timeout(t)
        .and_then(|()| stream.set_write_timeout(t))
        .map_err(|e| HandshakeError::Io(format!("setting the handshake timeout: {e}")))
}

/// Drives a TLS handshake to its end.
fn finish_tls(conn: &mut rustls::Connection, stream: &mut TcpStream) -> Result<(), HandshakeError> {
    while conn.is_handshaking() {
        conn.complete_io(stream).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData if e.to_string().contains("InvalidContentType") => {
                HandshakeError::Tls(format!("{e} (does the other side speak TLS?)"))
            }
            io::ErrorKind::InvalidData => HandshakeError::Tls(e.to_string()),
            io::ErrorKind::UnexpectedEof => {
                HandshakeError::Tls("the peer closed the connection (does it speak TLS?)".into())
            }
            _ => io_error("during", "the TLS handshake", &e),
        })?;
    }
    Ok(())
}

/// The coordinator's side: sets up a connection a peer opened, or says why the
/// peer is refused (it has been told, where it could be).
pub(crate) fn accept(
    mut stream: TcpStream,
    security: &Security,
    limits: &ConnectionLimits,
) -> Result<Established, HandshakeError> {
    if security.tls.is_none() && security.secret.is_none() {
        return Ok(Established { stream, tls: None });
    }
    with_timeouts(&stream, limits)?;
    let timeout_ms = limits.handshake_timeout.as_millis();
    let mut tls = match &security.tls {
        Some(t) => {
            let conn =
                rustls::ServerConnection::new(t.server.clone()).map_err(|e| HandshakeError::Tls(e.to_string()))?;
            let mut conn = rustls::Connection::Server(conn);
            finish_tls(&mut conn, &mut stream)?;
            Some(conn)
        }
        None => None,
    };
    if let Some(secret) = &security.secret {
        let mut io = SetUp { stream: &mut stream, tls: tls.as_mut(), tls_failure: None };
        let hello = match io.receive(limits) {
            Received::Message(Message::AuthHello(h)) => h,
            Received::Message(other) => {
                return Err(io.refuse(format!(
                    "this cluster requires authentication: the first frame must prove the cluster's secret \
                     (give this process the cluster's --secret-file), not {}",
                    other.kind_name()
                )))
            }
            Received::Bad(FrameError::TooLarge { len, max }) => {
                return Err(io.refuse(format!(
                    "this cluster requires authentication: the first frame must prove the cluster's secret \
                     (give this process the cluster's --secret-file), not a frame of {len} bytes (an \
                     authentication frame has at most {max})"
                )))
            }
            Received::Bad(e) => {
                let _ = io.send(&e.reply());
                return Err(io.missing(Received::Bad(e), "authentication", timeout_ms));
            }
            r => return Err(io.missing(r, "authentication", timeout_ms)),
        };
        let server_nonce = fresh_nonce()?;
        let server_proof = secret.prove(SERVER_LABEL, &hello.client_nonce, &server_nonce);
        io.send(&Message::AuthChallenge(AuthChallenge { server_nonce, server_proof }))?;
        match io.receive(limits) {
            Received::Message(Message::AuthResponse(r)) => {
                if !secret.verify(CLIENT_LABEL, &server_nonce, &hello.client_nonce, &r.client_proof) {
                    return Err(io.refuse(format!("wrong cluster secret (a {} connecting)", printable(&hello.role))));
                }
            }
            Received::Message(other) => {
                return Err(io.refuse(format!("{} instead of the authentication response", other.kind_name())))
            }
            Received::Closed => {
                return Err(HandshakeError::Unauthenticated(
                    "it closed the connection instead of proving the secret (it holds another secret?)".into(),
                ))
            }
            r => return Err(io.missing(r, "authentication response", timeout_ms)),
        }
        io.send(&Message::AuthAccepted(AuthAccepted {}))?;
    }
    Ok(Established { stream, tls })
}

/// A nonce for this handshake, or the error that ends it.
fn fresh_nonce() -> Result<[u8; 32], HandshakeError> {
    nonce().ok_or_else(|| HandshakeError::Io("the system's random source failed: no nonce for the handshake".into()))
}

/// The role a peer gave, safe to log.
fn printable(role: &str) -> String {
    role.chars().filter(|c| c.is_ascii_graphic()).take(32).collect()
}

/// The client's side (a worker, the CLI): sets up a connection to the
/// coordinator at `server` (whose certificate must name it), or says why not.
pub(crate) fn connect(
    mut stream: TcpStream,
    security: &Security,
    server: SocketAddr,
    role: &str,
    limits: &ConnectionLimits,
) -> Result<Established, HandshakeError> {
    if security.tls.is_none() && security.secret.is_none() {
        return Ok(Established { stream, tls: None });
    }
    with_timeouts(&stream, limits)?;
    let timeout_ms = limits.handshake_timeout.as_millis();
    let mut tls = match &security.tls {
        Some(t) => {
            let name = ServerName::IpAddress(server.ip().into());
            let conn = rustls::ClientConnection::new(t.client.clone(), name)
                .map_err(|e| HandshakeError::Tls(e.to_string()))?;
            let mut conn = rustls::Connection::Client(conn);
            finish_tls(&mut conn, &mut stream)?;
            Some(conn)
        }
        None => None,
    };
    if let Some(secret) = &security.secret {
        let mut io = SetUp { stream: &mut stream, tls: tls.as_mut(), tls_failure: None };
        let client_nonce = fresh_nonce()?;
        io.send(&Message::AuthHello(AuthHello { client_nonce, role: role.to_string() }))?;
        let challenge = match io.receive(limits) {
            Received::Message(Message::AuthChallenge(c)) => c,
            Received::Message(Message::ErrorReply(e)) => return Err(HandshakeError::Refused(e.message)),
            Received::Message(other) => {
                return Err(HandshakeError::Unauthenticated(format!(
                    "the coordinator answered {} instead of an authentication challenge",
                    other.kind_name()
                )))
            }
            r => return Err(io.missing(r, "authentication challenge", timeout_ms)),
        };
        if !secret.verify(SERVER_LABEL, &client_nonce, &challenge.server_nonce, &challenge.server_proof) {
            return Err(HandshakeError::Unauthenticated(format!(
                "the coordinator at {server} proved a secret other than this process's: the two hold different \
                 secrets (or it is not the cluster's coordinator)"
            )));
        }
        let client_proof = secret.prove(CLIENT_LABEL, &challenge.server_nonce, &client_nonce);
        io.send(&Message::AuthResponse(AuthResponse { client_proof }))?;
        match io.receive(limits) {
            Received::Message(Message::AuthAccepted(_)) => {}
            Received::Message(Message::ErrorReply(e)) => return Err(HandshakeError::Refused(e.message)),
            Received::Message(other) => {
                return Err(HandshakeError::Unauthenticated(format!(
                    "the coordinator answered {} instead of accepting the authentication",
                    other.kind_name()
                )))
            }
            r => return Err(io.missing(r, "authentication answer", timeout_ms)),
        }
    }
    Ok(Established { stream, tls })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    use shardflow_control::protocol::{self, AuthHello, ErrorCode, Message, HEADER_BYTES};

    use super::*;
    use crate::cluster::link::{read_frame, ClusterSecret, ConnectionLimits, Received, Security};

    /// A stranger announcing a first frame of a megabyte is refused as soon
    /// as its header is read, and told why: the coordinator neither waits for
    /// nor holds the body.
    #[test]
    fn a_first_frame_larger_than_any_authentication_frame_is_refused_at_its_header() {
        let security = Security::none().with_secret(ClusterSecret::new(b"0123456789abcdef0123456789abcdef").unwrap());
        // Long enough that a server waiting for the body would fail the test
        // by the reason it gives, short enough not to hold the suite up.
        let limits = ConnectionLimits { handshake_timeout: Duration::from_secs(30), ..ConnectionLimits::default() };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            accept(stream, &security, &limits).map(|_| ())
        });
        let mut stranger = TcpStream::connect(addr).unwrap();
        let hello = Message::AuthHello(AuthHello { client_nonce: [7; 32], role: "stranger".into() });
        let mut header: [u8; HEADER_BYTES] = protocol::encode(&hello).unwrap()[..HEADER_BYTES].try_into().unwrap();
        header[..4].copy_from_slice(&(1u32 << 20).to_le_bytes());
        stranger.write_all(&header).unwrap();
        stranger.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        match read_frame(&mut stranger, 1 << 20) {
            Received::Message(Message::ErrorReply(e)) => {
                assert_eq!(e.code, ErrorCode::Unauthenticated);
                assert!(e.message.contains("a frame of 1048576 bytes"), "{}", e.message);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        match server.join().unwrap() {
            Err(HandshakeError::Unauthenticated(why)) => {
                assert!(why.contains(&format!("at most {MAX_HANDSHAKE_FRAME_BYTES}")), "{why}")
            }
            other => panic!("expected the stranger refused, got {other:?}"),
        }
        let mut rest = Vec::new();
        stranger.read_to_end(&mut rest).expect("the coordinator closes the connection");
        assert!(rest.is_empty());
    }
}
