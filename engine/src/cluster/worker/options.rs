//! What a worker is started with beyond its engine configuration: its options,
//! and how it reaches its coordinator (the connector).

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::super::ha::{HighAvailabilityServices, LeaderInfo, LeaderRetrieval};

use super::super::link::{self, ConnectionLimits, FrameSink, HandshakeError, Permit, PipeEnd, Received, Security};

/// Settings of the worker beyond its engine configuration.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The name it registers under; default: host-pid-start time.
    pub resource_id: Option<String>,
    /// First wait before reconnecting. Default 50 ms.
    pub reconnect_min: Duration,
    /// Longest wait before reconnecting. Default 2 s.
    pub reconnect_max: Duration,
    /// How long it waits for the coordinator to accept its registration. Default 10 s.
    pub registration_timeout: Duration,
    /// What its connection to the coordinator may cost (frame size, queue,
    /// write timeout).
    pub limits: ConnectionLimits,
    /// What its connection proves (the cluster's secret, TLS). Default: nothing.
    pub security: Security,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            resource_id: None,
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(2),
            registration_timeout: Duration::from_secs(10),
            limits: ConnectionLimits::default(),
            security: Security::none(),
        }
    }
}

/// Why a worker has no connection.
pub(crate) struct ConnectFailure {
    /// Why, for the log.
    pub(crate) reason: String,
    /// Whether trying again can help (not after a refused TLS handshake or
    /// secret: the settings are wrong).
    pub(crate) retry: bool,
}

impl From<String> for ConnectFailure {
    fn from(reason: String) -> Self {
        ConnectFailure { reason, retry: true }
    }
}

/// A worker's way to the leader of a highly available cluster: it follows the
/// leader key and connects to whoever holds it.
pub(crate) struct HaConnector {
    pub(crate) services: Arc<dyn HighAvailabilityServices>,
    /// The running watch of the leader (started with the worker's thread).
    pub(crate) retrieval: Mutex<Option<Box<dyn LeaderRetrieval>>>,
}

impl HaConnector {
    /// The leader now: as last seen, else as etcd says within a moment.
    fn leader(&self) -> Result<LeaderInfo, String> {
        let seen = self.retrieval.lock().unwrap_or_else(PoisonError::into_inner).as_ref().and_then(|r| r.current());
        match seen {
            Some(l) => Ok(l),
            None => self.services.leader(Duration::from_secs(2)).map_err(|e| e.to_string()),
        }
    }
}

/// How a worker reaches its coordinator.
#[derive(Clone)]
pub(crate) enum Connector {
    /// Over TCP.
    Tcp(SocketAddr),
    /// Over TCP to whichever coordinator leads.
    Ha(Arc<HaConnector>),
    /// In-process: each call yields a fresh pipe whose other end the coordinator
    /// serves.
    InProcess(Arc<dyn Fn() -> Option<PipeEnd> + Send + Sync>),
}

/// A connection to a coordinator, and the epoch of the leadership it was made
/// to (under high availability).
pub(crate) struct Connected {
    pub(crate) sink: Box<dyn FrameSink>,
    pub(crate) epoch: Option<u64>,
    /// The coordinator's address (`None` in-process).
    pub(crate) peer: Option<SocketAddr>,
}

impl Connector {
    /// A new connection whose frames go to `deliver` from a reader thread, or why
    /// there is none.
    pub(super) fn connect(
        &self,
        options: &WorkerOptions,
        deliver: impl FnMut(Received, Permit) -> bool + Send + 'static,
    ) -> Result<Connected, ConnectFailure> {
        let limits = &options.limits;
        match self {
            Connector::Tcp(addr) => {
                let sink = tcp(*addr, options, deliver)?;
                Ok(Connected { sink, epoch: None, peer: Some(*addr) })
            }
            Connector::Ha(ha) => {
                let leader = ha.leader().map_err(|e| format!("no leader: {e}"))?;
                let addr = leader
                    .address
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| format!("the leader's address '{}' does not resolve", leader.address))?;
                let sink = tcp(addr, options, deliver)?;
                Ok(Connected { sink, epoch: Some(leader.epoch), peer: Some(addr) })
            }
            Connector::InProcess(open) => {
                let PipeEnd { sink, reader } =
                    open().ok_or_else(|| "the in-process coordinator has stopped".to_string())?;
                link::spawn_reader("worker-conn-read".into(), reader, limits, deliver).map_err(|e| e.to_string())?;
                Ok(Connected { sink: Box::new(sink), epoch: None, peer: None })
            }
        }
    }
}

/// A TCP connection to the coordinator at `addr`, set up as `options` say.
fn tcp(
    addr: SocketAddr,
    options: &WorkerOptions,
    deliver: impl FnMut(Received, Permit) -> bool + Send + 'static,
) -> Result<Box<dyn FrameSink>, ConnectFailure> {
    let limits = &options.limits;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("{addr}: {e}"))?;
    let established = link::connect(stream, &options.security, addr, "worker", limits).map_err(|e| match e {
        HandshakeError::Io(why) => ConnectFailure { reason: format!("{addr}: {why}"), retry: true },
        refused => ConnectFailure {
            reason: format!("the coordinator at {addr} refused the connection: {refused}"),
            retry: false,
        },
    })?;
    let (sink, reader) = link::open_tcp("worker-conn", established, limits, None).map_err(|e| e.to_string())?;
    link::spawn_reader("worker-conn-read".into(), reader, limits, deliver).map_err(|e| e.to_string())?;
    Ok(Box::new(sink))
}

impl Connector {
    /// Starts following the leader (under high availability), telling `events`
    /// of each change.
    pub(super) fn follow(&self, on_change: impl Fn(Option<LeaderInfo>) + Send + Sync + 'static) -> Result<(), String> {
        let Connector::Ha(ha) = self else { return Ok(()) };
        let retrieval = ha.services.follow(Box::new(on_change)).map_err(|e| e.to_string())?;
        *ha.retrieval.lock().unwrap_or_else(PoisonError::into_inner) = Some(retrieval);
        Ok(())
    }
}
