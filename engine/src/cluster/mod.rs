//! Cluster mode: the coordinator process ([`CoordinatorServer`]), the worker process
//! ([`Worker`]), a client ([`ClusterClient`]) and [`MiniCluster`], which runs a
//! coordinator and workers in one process over in-process connections that carry
//! the same frames as TCP.

mod finder;
mod ha;
mod link;
mod retry_log;
mod server;
mod worker;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use shardflow_control::protocol::*;
use shardflow_control::{CoordinatorConfig, JobGraph, JobId, WorkerId};

pub use finder::LeaderFinder;
pub use ha::{HaConfig, LeaderInfo};
pub use link::{ClusterSecret, ConnectionLimits, Security, TlsConfig, MIN_SECRET_BYTES};
pub use server::{CoordinatorServer, ServerOptions};
pub(crate) use worker::{JobBoard, Outputs};
pub use worker::{Worker, WorkerOptions, WorkerStopper};

pub(crate) use link::PipeEnd;
use link::{
    open_tcp, read_frame, send_message, FrameSink, HandshakeError, Interrupter, PipeReader, Received, TcpReader,
};
use worker::Connector;

use crate::config::EngineBuilder;
use crate::error::EngineError;
use crate::registry::{JobCatalog, LiveRegistry};

/// A client on a fresh in-process connection to `server`.
pub(crate) fn pipe_client(server: &CoordinatorServer) -> ClusterClient {
    let PipeEnd { sink, reader } = server.connect_in_process();
    ClusterClient {
        sink: Box::new(sink),
        reader: ClientReader::Pipe(reader),
        answer_timeout: DEFAULT_ANSWER_TIMEOUT,
        max_frame_bytes: server.limits().max_frame_bytes,
        plain_tcp: false,
        peer: "the in-process coordinator".into(),
        leader_watch: None,
    }
}

/// A worker connector that opens each connection with `open`.
pub(crate) fn in_process_connector(open: impl Fn() -> Option<PipeEnd> + Send + Sync + 'static) -> Connector {
    Connector::InProcess(Arc::new(open))
}

/// How long a client waits for an answer beyond what it asked the coordinator to
/// wait for.
pub const DEFAULT_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of the coordinator: one request at a time, each answered by one
/// frame. After an error reply the coordinator closes the connection; connect again.
/// Over TCP a coordinator that does not answer in time is an error, not a hang.
pub struct ClusterClient {
    sink: Box<dyn FrameSink>,
    reader: ClientReader,
    answer_timeout: Duration,
    max_frame_bytes: usize,
    /// A TCP connection without TLS: a coordinator that requires TLS answers it
    /// with a TLS alert, which reads as a bad frame.
    plain_tcp: bool,
    /// The coordinator's address, for errors.
    peer: String,
    /// Under high availability: ends the connection once its coordinator no
    /// longer leads.
    leader_watch: Option<LeaderWatch>,
}

/// Watches the leader a client reached: once another leads (or none does) it
/// ends the client's connection, so that a request waiting there fails at once
/// and the caller finds the new leader. A leader that died closes its sockets
/// anyway; one paused or cut off answers nothing, and a client waiting on it
/// would otherwise wait out its whole answer timeout.
struct LeaderWatch {
    // Dropped in this order: the watch stops before its services do.
    _retrieval: Box<dyn ha::LeaderRetrieval>,
    _services: Arc<dyn ha::HighAvailabilityServices>,
    /// Who leads instead, once the connection was ended for it.
    moved: Arc<Mutex<Option<Option<LeaderInfo>>>>,
}

impl LeaderWatch {
    /// Why the connection was ended, if it was for a change of leader.
    fn moved(&self, peer: &str) -> Option<String> {
        let moved = self.moved.lock().unwrap_or_else(PoisonError::into_inner).clone()?;
        Some(match moved {
            Some(l) => format!("{peer} no longer leads the cluster: {} does (epoch {})", l.address, l.epoch),
            None => format!("{peer} no longer leads the cluster (no leader is elected yet)"),
        })
    }
}

/// Where a client reads its answers: a socket (each wait bounded) or a pipe.
enum ClientReader {
    Tcp(TcpReader),
    Pipe(PipeReader),
}

impl Read for ClientReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            ClientReader::Tcp(r) => r.read(buf),
            ClientReader::Pipe(r) => r.read(buf),
        }
    }
}

impl std::fmt::Debug for ClusterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterClient").finish_non_exhaustive()
    }
}

macro_rules! expect {
    ($reply:expr, $variant:ident) => {
        match $reply {
            Message::$variant(m) => Ok(m),
            other => Err(EngineError::UnexpectedReply { expected: stringify!($variant), got: other.kind_name() }),
        }
    };
}

impl ClusterClient {
    /// Connects to the coordinator at `addr`.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, EngineError> {
        Self::connect_with(addr, timeout, &Security::none())
    }

    /// Connects to the coordinator at `addr`, proving what `security` holds (the
    /// cluster's secret, a certificate of its CA) within `timeout`.
    pub fn connect_with(addr: SocketAddr, timeout: Duration, security: &Security) -> Result<Self, EngineError> {
        let io = |e: std::io::Error| EngineError::Io {
            what: format!("connecting to the coordinator at {addr}"),
            reason: e.to_string(),
        };
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
        let limits = ConnectionLimits { handshake_timeout: timeout, ..ConnectionLimits::default() };
        let established =
            link::connect(stream, security, addr, "client", &limits).map_err(|e| handshake_error(addr, e))?;
        let (sink, reader) = open_tcp("client", established, &limits, None).map_err(io)?;
        Ok(ClusterClient {
            sink: Box::new(sink),
            reader: ClientReader::Tcp(reader),
            answer_timeout: DEFAULT_ANSWER_TIMEOUT,
            max_frame_bytes: limits.max_frame_bytes,
            plain_tcp: !security.has_tls(),
            peer: addr.to_string(),
            leader_watch: None,
        })
    }

    /// Connects to the leader of the highly available cluster `ha`, waiting up
    /// to `timeout` for one to be elected and reached, proving what `security`
    /// holds. Returns the client and the leader it reached. While the client
    /// lives it watches the leadership: once its coordinator no longer leads, a
    /// request (also one waiting for its answer) fails at once with
    /// [`EngineError::Io`] naming who leads now — connect again (a
    /// [`LeaderFinder`] does, waking at the change of leader).
    pub fn connect_leader(
        ha: &HaConfig,
        timeout: Duration,
        security: &Security,
    ) -> Result<(Self, LeaderInfo), EngineError> {
        LeaderFinder::new(ha)?.connect(timeout, security, std::time::Instant::now() + timeout)
    }

    /// Connects to `leader` (as `services` name it) within `timeout`, and
    /// watches the leadership for the client's lifetime.
    fn attach(
        services: Arc<dyn ha::HighAvailabilityServices>,
        leader: LeaderInfo,
        timeout: Duration,
        security: &Security,
    ) -> Result<Self, EngineError> {
        let addr = std::net::ToSocketAddrs::to_socket_addrs(leader.address.as_str())
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| EngineError::Io {
                what: "connecting to the cluster's leader".into(),
                reason: format!("its address '{}' does not resolve", leader.address),
            })?;
        let mut client = Self::connect_with(addr, timeout, security)?;
        if let ClientReader::Tcp(reader) = &client.reader {
            let moved = Arc::new(Mutex::new(None));
            let on_change = watch_leader(leader, reader.interrupter(), moved.clone());
            let retrieval = services.follow(on_change)?;
            client.leader_watch = Some(LeaderWatch { _retrieval: retrieval, _services: services, moved });
        }
        Ok(client)
    }

    /// How long to wait for an answer (beyond a wait the request itself asks for).
    /// Default [`DEFAULT_ANSWER_TIMEOUT`].
    pub fn with_answer_timeout(mut self, timeout: Duration) -> Self {
        self.answer_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Sends `msg` and returns the answer; an error reply becomes
    /// [`EngineError::Remote`], no answer within the answer timeout
    /// [`EngineError::Io`].
    pub fn request(&mut self, msg: &Message) -> Result<Message, EngineError> {
        self.request_within(msg, Duration::ZERO)
    }

    /// [`Self::request`] for a request the coordinator may hold for up to `waits`.
    fn request_within(&mut self, msg: &Message, waits: Duration) -> Result<Message, EngineError> {
        let within = waits.saturating_add(self.answer_timeout);
        let waiting = || format!("waiting for the answer to {}", msg.kind_name());
        // Nothing sent yet: as good as an answer from a coordinator not leading.
        if let Some(why) = self.leader_watch.as_ref().and_then(|w| w.moved(&self.peer)) {
            return Err(EngineError::Remote { code: ErrorCode::NotLeader, message: why });
        }
        if let ClientReader::Tcp(r) = &self.reader {
            r.set_read_timeout(Some(within)).map_err(|e| EngineError::Io { what: waiting(), reason: e.to_string() })?;
        }
        send_message(self.sink.as_mut(), msg)
            .map_err(|e| EngineError::Io { what: format!("sending {}", msg.kind_name()), reason: e.to_string() })?;
        let received = read_frame(&mut self.reader, self.max_frame_bytes);
        // An answer that came stands (a submission it acknowledges was taken);
        // no answer, after the watch ended the connection, is the leader's move.
        if !matches!(received, Received::Message(_)) {
            if let Some(why) = self.leader_watch.as_ref().and_then(|w| w.moved(&self.peer)) {
                return Err(EngineError::Io { what: waiting(), reason: why });
            }
        }
        match received {
            Received::Message(Message::ErrorReply(e)) => Err(EngineError::Remote { code: e.code, message: e.message }),
            Received::Message(m) => Ok(m),
            // Not a coordinator that went away but one this client cannot speak
            // to: asking again (or the same leader again) cannot help.
            Received::Bad(e) if self.plain_tcp => Err(EngineError::ConnectionRefused {
                peer: self.peer.clone(),
                reason: format!(
                    "{e}: it answered {} with bytes that are not a frame (does it require TLS?)",
                    msg.kind_name()
                ),
            }),
            Received::Bad(e) => Err(EngineError::Frame(e)),
            Received::TimedOut => Err(EngineError::Io {
                what: waiting(),
                reason: format!("the coordinator did not answer within {} ms", within.as_millis()),
            }),
            Received::Closed => {
                Err(EngineError::Io { what: waiting(), reason: "the coordinator closed the connection".into() })
            }
        }
    }

    /// Submits a job graph; empty strings pick the cluster's default placement and
    /// restart strategy.
    pub fn submit(&mut self, graph: JobGraph, placement: &str, restart: &str) -> Result<JobId, EngineError> {
        let m = Message::SubmitJob(SubmitJob { graph, placement: placement.into(), restart: restart.into() });
        Ok(expect!(self.request(&m)?, JobSubmitted)?.job)
    }

    /// Every job.
    pub fn list(&mut self) -> Result<Vec<JobSummary>, EngineError> {
        Ok(expect!(self.request(&Message::ListJobs(ListJobs {}))?, JobList)?.jobs)
    }

    /// One job's status, subtasks and their locations.
    pub fn job(&mut self, job: JobId) -> Result<JobDetails, EngineError> {
        expect!(self.request(&Message::RequestJob(RequestJob { job }))?, JobDetails)
    }

    /// `job`'s graph as it was submitted (running or ended).
    pub fn job_graph(&mut self, job: JobId) -> Result<JobGraph, EngineError> {
        Ok(expect!(self.request(&Message::RequestJobGraph(RequestJobGraph { job }))?, JobGraphReply)?.graph)
    }

    /// Each subtask of `job` with its record counts so far (see [`JobProgress`]).
    pub fn job_progress(&mut self, job: JobId) -> Result<JobProgress, EngineError> {
        expect!(self.request(&Message::RequestJobProgress(RequestJobProgress { job }))?, JobProgress)
    }

    /// Waits (in the coordinator) until `job` meets `until` or `timeout` passes, and
    /// returns the job as it is then.
    pub fn wait(&mut self, job: JobId, until: WaitCondition, timeout: Duration) -> Result<JobDetails, EngineError> {
        let m = Message::WaitJob(WaitJob { job, until, timeout_ms: timeout.as_millis() as u64 });
        expect!(self.request_within(&m, timeout)?, JobDetails)
    }

    /// Cancels a job.
    pub fn cancel(&mut self, job: JobId) -> Result<(), EngineError> {
        expect!(self.request(&Message::CancelJob(CancelJob { job }))?, Ack).map(|_| ())
    }

    /// Stops a running job with a snapshot (where the coordinator takes one:
    /// the embedded engine's).
    pub fn stop_with_snapshot(&mut self, job: JobId) -> Result<(), EngineError> {
        let m = Message::StopWithSavepoint(StopWithSavepoint { job, directory: String::new() });
        expect!(self.request(&m)?, Ack).map(|_| ())
    }

    /// The cluster's totals.
    pub fn overview(&mut self) -> Result<ResourceOverview, EngineError> {
        expect!(self.request(&Message::RequestResourceOverview(RequestResourceOverview {}))?, ResourceOverview)
    }

    /// Waits (in the coordinator) until at least `n` workers are registered or
    /// `timeout` passes; returns the cluster's totals then.
    pub fn wait_for_workers(&mut self, n: u32, timeout: Duration) -> Result<ResourceOverview, EngineError> {
        let m = Message::WaitForWorkers(WaitForWorkers { workers: n, timeout_ms: timeout.as_millis() as u64 });
        expect!(self.request_within(&m, timeout)?, ResourceOverview)
    }

    /// Every worker.
    pub fn workers(&mut self) -> Result<Vec<WorkerInfo>, EngineError> {
        Ok(expect!(self.request(&Message::RequestWorkerInfo(RequestWorkerInfo {}))?, WorkerInfoList)?.workers)
    }

    /// What `worker` runs, shard by shard (its answer to the coordinator's
    /// [`RequestShardDump`]), waiting at most
    /// `timeout` for it.
    pub fn shard_dump(&mut self, worker: WorkerId, timeout: Duration) -> Result<ShardDump, EngineError> {
        let m = Message::RequestWorkerDump(RequestWorkerDump { worker, timeout_ms: timeout.as_millis() as u64 });
        expect!(self.request_within(&m, timeout)?, ShardDump)
    }
}

/// What a [`LeaderWatch`] does on each change of leader: anyone but `reached`
/// leading (or nobody) ends the connection `interrupter` ends, recording who
/// leads in `moved`.
fn watch_leader(
    reached: LeaderInfo,
    interrupter: Interrupter,
    moved: Arc<Mutex<Option<Option<LeaderInfo>>>>,
) -> ha::LeaderSink {
    Box::new(move |now: Option<LeaderInfo>| {
        if now.as_ref() != Some(&reached) {
            *moved.lock().unwrap_or_else(PoisonError::into_inner) = Some(now);
            interrupter.interrupt();
        }
    })
}

/// The leader of the highly available cluster `ha` as etcd names it, waiting up
/// to `timeout` for one to be elected.
pub fn current_leader(ha: &HaConfig, timeout: Duration) -> Result<LeaderInfo, EngineError> {
    ha::services(ha)?.leader(timeout)
}

/// A failed set-up of a connection to `addr` as the caller sees it: refused for
/// good (TLS, the secret) or an I/O failure worth another try.
pub(crate) fn handshake_error(addr: SocketAddr, e: HandshakeError) -> EngineError {
    match e {
        HandshakeError::Io(reason) => {
            EngineError::Io { what: format!("connecting to the coordinator at {addr}"), reason }
        }
        other => EngineError::ConnectionRefused { peer: addr.to_string(), reason: other.to_string() },
    }
}

/// A coordinator and workers in one process, joined by in-process connections that
/// carry the same frames as TCP: the cluster's code path without sockets.
pub struct MiniCluster {
    workers: Vec<Worker>,
    server: Arc<CoordinatorServer>,
}

impl std::fmt::Debug for MiniCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniCluster").field("workers", &self.workers.len()).finish()
    }
}

impl MiniCluster {
    /// Starts a coordinator with `config` and one worker per engine builder,
    /// all knowing the named jobs of `jobs`.
    pub fn start(
        config: CoordinatorConfig,
        jobs: &JobCatalog,
        workers: Vec<EngineBuilder>,
    ) -> Result<Self, EngineError> {
        let server = Arc::new(CoordinatorServer::start(config, jobs.clone(), ServerOptions::default())?);
        let mut started = Vec::new();
        for (i, engine) in workers.into_iter().enumerate() {
            let weak = Arc::downgrade(&server);
            let connector = in_process_connector(move || Some(weak.upgrade()?.connect_in_process()));
            let options = WorkerOptions { resource_id: Some(format!("mini-worker-{i}")), ..WorkerOptions::default() };
            let (config, registry) = engine.jobs(jobs).into_parts()?;
            let live = Arc::new(LiveRegistry::new(registry));
            started.push(Worker::start_with(connector, config, live, Arc::default(), options, false)?.0);
        }
        Ok(MiniCluster { workers: started, server })
    }

    /// A client on an in-process connection.
    pub fn client(&self) -> ClusterClient {
        pipe_client(&self.server)
    }

    /// The workers.
    pub fn workers(&self) -> &[Worker] {
        &self.workers
    }

    /// Stops the workers, then the coordinator.
    pub fn shutdown(mut self) {
        for w in self.workers.drain(..) {
            w.shutdown();
        }
    }
}
