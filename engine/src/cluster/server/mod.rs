//! The coordinator process's I/O edge: accepts TCP (or in-process) connections,
//! feeds their frames to the sans-I/O [`Coordinator`] and carries out its outputs,
//! with its timers driven by the coordinator's own next deadline.
//!
//! The event loop never touches a socket: each connection's reader thread hands
//! it frames, and its outputs are queued on the connection's bounded outbox,
//! written by the connection's writer thread (see [`super::link`]). A peer whose
//! outbox is full is dropped, so one peer that stops reading delays nobody. The
//! acceptor caps the connections ([`ServerOptions::max_connections`]), refusing
//! more with a clear error reply, and backs off when `accept` fails (out of
//! descriptors) instead of spinning. Each accepted connection is set up (TLS, the
//! cluster secret's proof) on a thread of its own before its first frame reaches
//! the loop.
//!
//! With [`ServerOptions::ha`] the process campaigns for the leadership and is a
//! standby until it wins (`driver.rs` draws the states and the output gate).

mod driver;
mod refusals;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;
use shardflow_control::protocol::{self, ErrorCode, ErrorReply, FrameError, Message};
use shardflow_control::{ConnId, Coordinator, CoordinatorConfig, ResourceManagerId};

pub(crate) use driver::OnJobEnd;
use driver::{Driver, Ha};
use refusals::RefusalLog;

use super::ha::{self as ha_services, HaConfig, LeadershipEvent};
use super::link::{self, open_tcp, ConnectionLimits, FrameSink, Permit, PipeEnd, Received, Security};
use crate::error::EngineError;
use crate::registry::catalog::RegistryCatalog;
use crate::registry::{JobCatalog, LiveRegistry};

/// How a coordinator process serves its connections.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// What each connection may cost (frame size, queue, write timeout).
    pub limits: ConnectionLimits,
    /// TCP connections served at once; more are refused with an error reply.
    /// Default 512.
    pub max_connections: usize,
    /// What a TCP connection must prove before its frames reach the
    /// coordinator (the cluster's secret, TLS). Default: nothing.
    pub security: Security,
    /// High availability: campaign for the leadership in etcd, keep jobs in its
    /// job store. Default: none (standalone, today's behaviour).
    pub ha: Option<HaConfig>,
    /// The address workers and clients reach this coordinator at, as the leader
    /// key names it. Default: the address it listens on (which must then not be
    /// a wildcard like 0.0.0.0 under high availability).
    pub advertise: Option<String>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            limits: ConnectionLimits::default(),
            max_connections: 512,
            security: Security::none(),
            ha: None,
            advertise: None,
        }
    }
}

pub(crate) enum Event {
    Open(ConnId, Box<dyn FrameSink>),
    Frame(ConnId, Message, Permit),
    Bad(ConnId, FrameError, Permit),
    Closed(ConnId),
    Leadership(LeadershipEvent),
    Shutdown,
}

/// A running coordinator: Dispatcher, ResourceManager and JobMasters behind a TCP
/// listener. Dropping it stops it.
pub struct CoordinatorServer {
    addr: Option<SocketAddr>,
    events: Sender<Event>,
    next_conn: Arc<AtomicU64>,
    stopping: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    options: ServerOptions,
    /// The in-process connections whose peer's end is open.
    in_process: Arc<ConnectionCount>,
}

/// Open connections: counted while their [`Counted`] guard lives (a TCP
/// connection's reader thread holds it, an in-process one's peer end), and
/// waited on.
#[derive(Debug, Default)]
pub(crate) struct ConnectionCount {
    open: std::sync::Mutex<usize>,
    changed: std::sync::Condvar,
}

impl ConnectionCount {
    /// How many are open.
    fn now(&self) -> usize {
        *self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one more, until the returned guard is dropped; a TCP `peer`'s
    /// end is logged.
    fn opened(self: &Arc<Self>, peer: Option<SocketAddr>) -> Counted {
        *self.open.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        Counted { count: self.clone(), peer }
    }

    /// Waits up to `timeout` for at most `n` to be open; returns how many are.
    #[cfg(test)]
    pub(crate) fn wait_for_at_most(&self, n: usize, timeout: Duration) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (open, _) =
            self.changed.wait_timeout_while(open, timeout, |open| *open > n).unwrap_or_else(PoisonError::into_inner);
        *open
    }
}

/// One counted connection.
struct Counted {
    count: Arc<ConnectionCount>,
    peer: Option<SocketAddr>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let open = {
            let mut open = self.count.open.lock().unwrap_or_else(PoisonError::into_inner);
            *open -= 1;
            *open
        };
        self.count.changed.notify_all();
        if let Some(peer) = self.peer {
            tracing::info!(%peer, "connection from {peer} ended; {open} open");
        }
    }
}

impl std::fmt::Debug for CoordinatorServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorServer").field("addr", &self.addr).finish()
    }
}

/// A fresh fencing token per coordinator start.
fn fresh_token() -> ResourceManagerId {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    // RandomState is seeded randomly per process; time and pid separate restarts.
    let seed = std::collections::hash_map::RandomState::new();
    ResourceManagerId(std::hash::BuildHasher::hash_one(&seed, (nanos, std::process::id())))
}

impl CoordinatorServer {
    /// Binds `bind` (port 0 picks one) and starts serving.
    pub fn bind(
        bind: SocketAddr,
        config: CoordinatorConfig,
        registry: JobCatalog,
        options: ServerOptions,
    ) -> Result<Self, EngineError> {
        let listener = TcpListener::bind(bind)
            .map_err(|e| EngineError::Io { what: format!("binding {bind}"), reason: e.to_string() })?;
        let addr = listener.local_addr().ok();
        let advertised = match (&options.advertise, addr) {
            (Some(a), _) => {
                check_advertised(a)?;
                a.clone()
            }
            (None, Some(a)) if options.ha.is_some() && a.ip().is_unspecified() => {
                return Err(EngineError::InvalidConfig {
                    field: "advertise",
                    value: a.to_string(),
                    reason: "under high availability the leader key must name an address others can reach: \
                             give --advertise HOST:PORT"
                        .into(),
                })
            }
            (None, Some(a)) => a.to_string(),
            (None, None) => bind.to_string(),
        };
        let mut server = Self::launch(config, Arc::new(LiveRegistry::new(registry)), options, advertised, None)?;
        server.addr = addr;
        let acceptor = Acceptor {
            listener,
            events: server.events.clone(),
            next_conn: server.next_conn.clone(),
            stopping: server.stopping.clone(),
            open: Arc::default(),
            options: server.options.clone(),
            refusals: Arc::default(),
        };
        let thread = std::thread::Builder::new()
            .name("coordinator-accept".into())
            .spawn(move || acceptor.run())
            .map_err(|e| EngineError::Io { what: "starting the accept thread".into(), reason: e.to_string() })?;
        server.threads.push(thread);
        Ok(server)
    }

    /// Starts the coordinator without a listener (in-process connections only).
    pub(crate) fn start(
        config: CoordinatorConfig,
        registry: JobCatalog,
        options: ServerOptions,
    ) -> Result<Self, EngineError> {
        Self::start_live(config, Arc::new(LiveRegistry::new(registry)), options, None)
    }

    /// Starts serving in-process connections only, checking jobs against
    /// `live`, telling `on_job_end` of each job's end.
    pub(crate) fn start_live(
        config: CoordinatorConfig,
        live: Arc<LiveRegistry>,
        options: ServerOptions,
        on_job_end: Option<OnJobEnd>,
    ) -> Result<Self, EngineError> {
        Self::launch(config, live, options, "in-process".into(), on_job_end)
    }

    /// Starts the event loop: standalone, or a standby campaigning as `advertised`.
    fn launch(
        config: CoordinatorConfig,
        live: Arc<LiveRegistry>,
        options: ServerOptions,
        advertised: String,
        on_job_end: Option<OnJobEnd>,
    ) -> Result<Self, EngineError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let driver = match &options.ha {
            None => {
                let c = Coordinator::new(config, Box::new(RegistryCatalog::new(live)), fresh_token(), Instant::now())
                    .with_address(advertised);
                Driver::standalone(rx, c)
            }
            Some(ha) => {
                let services = ha_services::services(ha)?;
                let events = tx.clone();
                let election = services.elect(
                    advertised.clone(),
                    Box::new(move |ev| {
                        let _ = events.send(Event::Leadership(ev));
                    }),
                )?;
                let make: driver::MakeCoordinator = Box::new(move |token, now| {
                    Coordinator::new(config.clone(), Box::new(RegistryCatalog::new(live.clone())), token, now)
                        .with_address(advertised.clone())
                });
                Driver::highly_available(rx, Ha { election, make, _services: services })
            }
        }
        .on_job_end(on_job_end);
        let looper = std::thread::Builder::new()
            .name("coordinator".into())
            .spawn(move || driver.run())
            .map_err(|e| EngineError::Io { what: "starting the coordinator thread".into(), reason: e.to_string() })?;
        Ok(CoordinatorServer {
            addr: None,
            events: tx,
            next_conn: Arc::new(AtomicU64::new(1)),
            stopping: Arc::new(AtomicBool::new(false)),
            threads: vec![looper],
            options,
            in_process: Arc::default(),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The limits of its connections.
    pub(crate) fn limits(&self) -> &ConnectionLimits {
        &self.options.limits
    }

    /// A new in-process connection (for a worker or client of this process):
    /// the peer's end. Its frames reach the loop on the peer's own thread.
    pub(crate) fn connect_in_process(&self) -> PipeEnd {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (counted, mut deliver) = (self.in_process.opened(None), deliver(conn, self.events.clone()));
        // The count falls when the peer's end is dropped, with the closure.
        let (mine, theirs) = link::direct_pipe(&self.options.limits, move |r, p| {
            let _counted = &counted;
            deliver(r, p)
        });
        let _ = self.events.send(Event::Open(conn, Box::new(mine)));
        theirs
    }

    /// Its in-process connections whose peer's end is open.
    #[cfg(test)]
    pub(crate) fn in_process_connections(&self) -> &ConnectionCount {
        &self.in_process
    }

    /// How many connections (TCP or in-process) it has been offered.
    #[cfg(test)]
    pub(crate) fn connections_offered(&self) -> u64 {
        self.next_conn.load(Ordering::Relaxed) - 1
    }

    /// Stops serving and waits for the threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        let _ = self.events.send(Event::Shutdown);
        if let Some(addr) = self.addr {
            // Wakes the acceptor so it sees the flag.
            let _ = TcpStream::connect(addr);
        }
        for t in self.threads.drain(..) {
            let name = t.thread().name().unwrap_or("unnamed").to_string();
            if t.join().is_err() {
                tracing::error!("its thread {name:?} panicked while the coordinator stopped");
            }
        }
    }
}

impl Drop for CoordinatorServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An address to announce (`--advertise`): `HOST:PORT`, a host others can
/// reach (no wildcard address) and a port that is not 0. Whether the host
/// resolves is left to those who look it up: it may resolve only where they are.
fn check_advertised(address: &str) -> Result<(), EngineError> {
    let bad = |reason: &str| {
        Err(EngineError::InvalidConfig { field: "advertise", value: address.to_string(), reason: reason.into() })
    };
    let Some((host, port)) = address.rsplit_once(':') else {
        return bad("give HOST:PORT, the address workers and clients reach this coordinator at");
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("the host must be a name or an IP address, without spaces");
    }
    if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
        return bad("the port must be a number from 1 to 65535");
    }
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    if ip.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
        return bad("a wildcard address names no host others can reach");
    }
    Ok(())
}

/// How a connection's reader thread hands its frames to the event loop.
fn deliver(conn: ConnId, events: Sender<Event>) -> impl FnMut(Received, Permit) -> bool + Send + 'static {
    move |received, permit| {
        let event = match received {
            Received::Message(m) => Event::Frame(conn, m, permit),
            Received::Bad(e) => Event::Bad(conn, e, permit),
            Received::Closed | Received::TimedOut => Event::Closed(conn),
        };
        events.send(event).is_ok()
    }
}

/// Shortest and longest pause after a failed `accept`.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

/// The acceptor's pause after failures in a row: 5 ms, doubling to 1 s; the
/// first failure and those at the longest pause are logged.
struct Backoff {
    pause: Duration,
    failures: u64,
}

impl Backoff {
    /// No failure yet: the shortest pause next.
    const FRESH: Backoff = Backoff { pause: ACCEPT_BACKOFF.0, failures: 0 };

    /// Logs `why` (where due) and pauses.
    fn failed(&mut self, why: std::fmt::Arguments<'_>) {
        self.failures += 1;
        if self.failures == 1 || self.pause == ACCEPT_BACKOFF.1 {
            tracing::warn!("{why}; retrying in {} ms", self.pause.as_millis());
        }
        std::thread::sleep(self.pause);
        self.pause = (self.pause * 2).min(ACCEPT_BACKOFF.1);
    }

    /// A connection was accepted: the next failure starts over.
    fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!("accepting connections again after {} failed accepts", self.failures);
        }
        *self = Backoff::FRESH;
    }
}

/// The accept loop: counts the open TCP connections against the cap, refuses
/// the ones beyond it, and backs off when `accept` fails.
struct Acceptor {
    listener: TcpListener,
    events: Sender<Event>,
    next_conn: Arc<AtomicU64>,
    stopping: Arc<AtomicBool>,
    /// TCP connections whose reader still runs.
    open: Arc<ConnectionCount>,
    options: ServerOptions,
    /// Where refused connections are logged, within a budget.
    refusals: Arc<RefusalLog>,
}

impl Acceptor {
    fn run(self) {
        // A descriptor held in reserve: when `accept` fails for want of
        // descriptors, releasing it lets the waiting peer be accepted and told why.
        let mut reserve = None;
        let mut backoff = Backoff::FRESH;
        while !self.stopping.load(Ordering::Acquire) {
            // Nothing is accepted unless the reserve is held: a descriptor
            // freed while it was missing (another thread's, held for a moment
            // just as the reserve was released) goes to the reserve, never to
            // a connection, or every peer past the limit would wait unheard.
            if reserve.is_none() {
                match std::fs::File::open("/dev/null") {
                    Ok(spare) => reserve = Some(spare),
                    Err(e) => {
                        backoff.failed(format_args!("no descriptor to hold in reserve ({e}): accepting nothing"));
                        continue;
                    }
                }
            }
            let accepted = self.listener.accept();
            if self.stopping.load(Ordering::Acquire) {
                break;
            }
            match accepted {
                Ok((stream, peer)) => {
                    backoff.succeeded();
                    self.serve(stream, peer);
                }
                Err(e) => {
                    // Out of descriptors, `accept` fails at once, whether a peer
                    // waits or not: the reserve lets a waiting peer be told why;
                    // with nobody waiting, back off instead of spinning.
                    let mut refused = false;
                    if is_out_of_descriptors(&e) {
                        if let Some(spare) = reserve.take() {
                            drop(spare);
                            refused = self.refuse_one_waiting(&e);
                        }
                    }
                    if !refused {
                        backoff.failed(format_args!("accept failed: {e}"));
                    }
                }
            }
        }
    }

    /// With a descriptor freed, accepts a peer that is waiting, if one is, and
    /// refuses it with `error`'s reason. Returns whether one was.
    fn refuse_one_waiting(&self, error: &std::io::Error) -> bool {
        if self.listener.set_nonblocking(true).is_err() {
            return false;
        }
        let waiting = self.listener.accept();
        let _ = self.listener.set_nonblocking(false);
        match waiting {
            Ok((stream, peer)) => {
                let _ = stream.set_nonblocking(false);
                let why = format!("the coordinator is out of file descriptors ({error}); try again later");
                self.refusals.refused(peer, &why);
                refuse(stream, why);
                true
            }
            Err(_) => false,
        }
    }

    fn serve(&self, stream: TcpStream, peer: SocketAddr) {
        // Only this thread adds to the count, so it cannot pass the cap between
        // the check and the add.
        if self.open.now() >= self.options.max_connections {
            let why = format!(
                "too many connections: the coordinator serves at most {} (max_connections); try again later",
                self.options.max_connections
            );
            self.refusals.refused(peer, &why);
            return refuse(stream, why);
        }
        // Counted until the socket's descriptor is closed.
        let counted = Box::new(self.open.opened(Some(peer)));
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (options, events, refusals) = (self.options.clone(), self.events.clone(), self.refusals.clone());
        // The connection's own thread sets it up (TLS, the secret's proof), so a
        // slow or silent peer delays nobody, then reads its frames.
        let started = std::thread::Builder::new().name(format!("conn-{conn}-read")).spawn(move || {
            let established = match link::accept(stream, &options.security, &options.limits) {
                Ok(e) => e,
                Err(e) => return refusals.refused(peer, &e),
            };
            let (sink, reader) = match open_tcp(&format!("conn-{conn}"), established, &options.limits, Some(counted)) {
                Ok(halves) => halves,
                Err(e) => return tracing::warn!(%peer, conn, "connection setup failed: {e}"),
            };
            // Open goes first so the loop knows the connection before its first frame.
            if events.send(Event::Open(conn, Box::new(sink))).is_ok() {
                link::read_frames(reader, &options.limits, deliver(conn, events));
            }
        });
        if let Err(e) = started {
            tracing::warn!(%peer, conn, "cannot start a connection thread: {e}");
        }
    }
}

fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Tells a peer we will not serve it, and closes. A fresh connection's send
/// buffer is empty, so this small write does not block.
fn refuse(mut stream: TcpStream, why: String) {
    let reply = Message::ErrorReply(ErrorReply { code: ErrorCode::Internal, message: why, retryable: true });
    if let Ok(frame) = protocol::encode(&reply) {
        let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
        let _ = stream.write_all(&frame);
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::check_advertised;

    #[test]
    fn an_advertised_address_is_host_and_port() {
        for good in ["127.0.0.1:6123", "coordinator.example:6123", "[::1]:6123", "node-7:1"] {
            assert!(check_advertised(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("not an address", "HOST:PORT"),
            ("host:", "port"),
            (":6123", "host"),
            ("host:0", "port"),
            ("host:70000", "port"),
            ("my host:6123", "spaces"),
            ("0.0.0.0:6123", "wildcard"),
            ("[::]:6123", "wildcard"),
        ] {
            let e = check_advertised(bad).expect_err(bad).to_string();
            assert!(e.contains("advertise") && e.contains(why), "{bad}: {e}");
        }
    }
}
