//! The coordinator process's I/O edge: accepts TCP (or in-process) connections,
//! feeds their frames to the sans-I/O [`Coordinator`] and carries out its outputs,
//! with its timers driven by the coordinator's own next deadline.

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use shardflow_control::protocol::{FrameError, Message};
use shardflow_control::{ConnId, Coordinator, CoordinatorConfig, Output, ResourceManagerId};

use super::link::{self, send_message, FrameSink, PipeEnd, Received, TcpSink};
use crate::error::EngineError;
use crate::registry::catalog::RegistryCatalog;
use crate::registry::{LiveRegistry, OperatorRegistry};

pub(crate) enum Event {
    Open(ConnId, Box<dyn FrameSink>),
    Frame(ConnId, Message),
    Bad(ConnId, FrameError),
    Closed(ConnId),
    Shutdown,
}

/// A running coordinator: Dispatcher, ResourceManager and JobMasters behind a TCP
/// listener. Dropping it stops it.
pub struct CoordinatorServer {
    addr: Option<SocketAddr>,
    events: Sender<Event>,
    next_conn: Arc<std::sync::atomic::AtomicU64>,
    stopping: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    max_frame_bytes: usize,
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
        registry: OperatorRegistry,
        max_frame_bytes: usize,
    ) -> Result<Self, EngineError> {
        let listener = TcpListener::bind(bind)
            .map_err(|e| EngineError::Io { what: format!("binding {bind}"), reason: e.to_string() })?;
        let addr = listener.local_addr().ok();
        let mut server = Self::start(config, registry, max_frame_bytes)?;
        server.addr = addr;
        let (events, next_conn, stopping) = (server.events.clone(), server.next_conn.clone(), server.stopping.clone());
        let acceptor = std::thread::Builder::new()
            .name("coordinator-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let conn = next_conn.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = serve_tcp(conn, stream, &events, max_frame_bytes) {
                        tracing::warn!(conn, "connection setup failed: {e}");
                    }
                }
            })
            .map_err(|e| EngineError::Io { what: "starting the accept thread".into(), reason: e.to_string() })?;
        server.threads.push(acceptor);
        Ok(server)
    }

    /// Starts the coordinator without a listener (in-process connections only).
    pub(crate) fn start(
        config: CoordinatorConfig,
        registry: OperatorRegistry,
        max_frame_bytes: usize,
    ) -> Result<Self, EngineError> {
        Self::start_live(config, Arc::new(LiveRegistry::new(registry)), max_frame_bytes)
    }

    /// Starts serving in-process connections only, checking jobs against `live`.
    pub(crate) fn start_live(
        config: CoordinatorConfig,
        live: Arc<LiveRegistry>,
        max_frame_bytes: usize,
    ) -> Result<Self, EngineError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let coordinator = Coordinator::new(config, Box::new(RegistryCatalog::new(live)), fresh_token(), Instant::now());
        let looper = std::thread::Builder::new()
            .name("coordinator".into())
            .spawn(move || event_loop(coordinator, rx))
            .map_err(|e| EngineError::Io { what: "starting the coordinator thread".into(), reason: e.to_string() })?;
        Ok(CoordinatorServer {
            addr: None,
            events: tx,
            next_conn: Arc::new(std::sync::atomic::AtomicU64::new(1)),
            stopping: Arc::new(AtomicBool::new(false)),
            threads: vec![looper],
            max_frame_bytes,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Connects an in-process peer (a worker or client of this process).
    pub(crate) fn connect_in_process(&self, end: PipeEnd) {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let PipeEnd { sink, reader } = end;
        let _ = self.events.send(Event::Open(conn, Box::new(sink)));
        if let Err(e) = spawn_reader(conn, reader, self.events.clone(), self.max_frame_bytes) {
            tracing::error!(conn, "cannot start a reader thread: {e}");
            let _ = self.events.send(Event::Closed(conn));
        }
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
            let _ = t.join();
        }
    }
}

impl Drop for CoordinatorServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve_tcp(conn: ConnId, stream: TcpStream, events: &Sender<Event>, max: usize) -> std::io::Result<()> {
    let writer = TcpSink::new(stream.try_clone()?)?;
    // Open goes first so the loop knows the connection before its first frame.
    let _ = events.send(Event::Open(conn, Box::new(writer)));
    spawn_reader(conn, stream, events.clone(), max).inspect_err(|_| {
        let _ = events.send(Event::Closed(conn));
    })
}

fn spawn_reader(conn: ConnId, r: impl Read + Send + 'static, events: Sender<Event>, max: usize) -> std::io::Result<()> {
    link::spawn_reader(format!("conn-{conn}"), r, max, move |received| {
        let event = match received {
            Received::Message(m) => Event::Frame(conn, m),
            Received::Bad(e) => Event::Bad(conn, e),
            Received::Closed | Received::TimedOut => Event::Closed(conn),
        };
        events.send(event).is_ok()
    })
}

fn event_loop(mut c: Coordinator, rx: Receiver<Event>) {
    let mut sinks: HashMap<ConnId, Box<dyn FrameSink>> = HashMap::new();
    loop {
        let deadline = c.next_deadline();
        let event = match rx.recv_deadline(deadline) {
            Ok(e) => Some(e),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let now = Instant::now();
        let mut outputs = match event {
            None => c.on_tick(now),
            Some(Event::Open(conn, sink)) => {
                sinks.insert(conn, sink);
                Vec::new()
            }
            Some(Event::Frame(conn, m)) if sinks.contains_key(&conn) => c.on_message(now, conn, m),
            Some(Event::Bad(conn, e)) if sinks.contains_key(&conn) => c.on_frame_error(now, conn, &e),
            Some(Event::Closed(conn)) => match sinks.remove(&conn) {
                Some(mut s) => {
                    s.close();
                    c.on_disconnect(now, conn)
                }
                None => Vec::new(),
            },
            Some(Event::Frame(..) | Event::Bad(..)) => Vec::new(),
            Some(Event::Shutdown) => break,
        };
        if now >= c.next_deadline() {
            outputs.extend(c.on_tick(now));
        }
        // Outputs can produce more outputs (closing a worker's connection fails its jobs over).
        while !outputs.is_empty() {
            let mut more = Vec::new();
            for o in outputs {
                match o {
                    Output::Send(conn, msg) => {
                        let failed = match sinks.get_mut(&conn) {
                            Some(s) => send_message(s.as_mut(), &msg).is_err(),
                            None => false,
                        };
                        if failed {
                            if let Some(mut s) = sinks.remove(&conn) {
                                s.close();
                                more.extend(c.on_disconnect(now, conn));
                            }
                        }
                    }
                    Output::Close(conn) => {
                        if let Some(mut s) = sinks.remove(&conn) {
                            s.close();
                            more.extend(c.on_disconnect(now, conn));
                        }
                    }
                }
            }
            outputs = more;
        }
    }
    for (_, mut s) in sinks {
        s.close();
    }
}
