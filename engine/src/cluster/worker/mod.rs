//! The worker (Flink's TaskExecutor): one process's shards, offered as slots to a
//! coordinator. Its parts:
//!
//! - `options.rs`: [`WorkerOptions`] and the connector (TCP or in-process);
//! - `wiring.rs`: how a task's channels meet their peers' in a per-job table;
//! - `gateway.rs`: the TaskExecutor gateway, a sans-I/O state machine (frames,
//!   shard reports and the time in; frames, shard commands and session ends out),
//!   unit-tested with paused time;
//! - `session.rs`: the I/O edge that drives it, reconnecting with backoff;
//! - `board.rs`: the embedded engine's result board.
//!
//! If the coordinator goes away (connection closed, or silent past the heartbeat
//! timeout) the worker cancels its tasks, frees its slots and registers again,
//! backing off between attempts. A coordinator that refuses it for good (another
//! live worker has its resource id) ends it: [`Worker::wait`] returns the reason.

mod board;
mod gateway;
mod options;
mod session;
mod wiring;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub(crate) use board::{JobBoard, Outputs};
pub(crate) use options::Connector;
use options::HaConnector;
pub use options::WorkerOptions;

use gateway::{Gateway, ShardSlots};
use session::{Event, Session};

use super::ha::{services as ha_services, HaConfig};
use crate::config::{EngineBuilder, EngineConfig};
use crate::error::EngineError;
use crate::registry::LiveRegistry;
use crate::shard::{start_shards, HostedShard, ReportSink};
use shardflow_memory::PoolMonitor;

/// A shard of a worker: its index, core and segment pool.
#[derive(Debug, Clone)]
pub(crate) struct WorkerShard {
    pub(crate) id: u32,
    pub(crate) core: usize,
    pub(crate) pool: PoolMonitor,
}

/// A running worker. Dropping it cancels its tasks and stops its shards.
pub struct Worker {
    shards: Vec<WorkerShard>,
    events: crossbeam_channel::Sender<Event>,
    registered: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Worker {
    /// Starts the shards of `engine` and a worker serving the coordinator at
    /// `coordinator` (registering, and re-registering after losing it).
    pub fn start(coordinator: SocketAddr, engine: EngineBuilder, options: WorkerOptions) -> Result<Self, EngineError> {
        let (config, registry) = engine.into_parts()?;
        let live = Arc::new(LiveRegistry::new(registry));
        Ok(Self::start_with(Connector::Tcp(coordinator), config, live, Arc::default(), options, false)?.0)
    }

    /// Starts the shards of `engine` and a worker serving whichever coordinator
    /// leads the highly available cluster `ha` (following every change of
    /// leader, registering with each new one).
    pub fn start_ha(ha: &HaConfig, engine: EngineBuilder, options: WorkerOptions) -> Result<Self, EngineError> {
        let services = ha_services(ha)?;
        let (config, registry) = engine.into_parts()?;
        let live = Arc::new(LiveRegistry::new(registry));
        let connector = Connector::Ha(Arc::new(HaConnector { services, retrieval: Mutex::new(None) }));
        Ok(Self::start_with(connector, config, live, Arc::default(), options, false)?.0)
    }

    /// Starts the shards (with `host`, shard 0 is the calling thread's,
    /// returned) and the worker's thread.
    pub(crate) fn start_with(
        connector: Connector,
        config: EngineConfig,
        live: Arc<LiveRegistry>,
        board: Arc<JobBoard>,
        options: WorkerOptions,
        host: bool,
    ) -> Result<(Self, Option<HostedShard>), EngineError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let events = tx.clone();
        let reports: ReportSink = Arc::new(move |r| {
            let _ = events.send(Event::Task(r));
        });
        let leaders = tx.clone();
        connector
            .follow(move |l| {
                let _ = leaders.send(Event::LeaderChanged(l));
            })
            .map_err(|reason| EngineError::Io { what: "following the cluster's leader".into(), reason })?;
        let (shards, hosted) = start_shards(&config, reports, host)?;
        let shard_list = shards.iter().map(|s| WorkerShard { id: s.id, core: s.core, pool: s.pool.clone() }).collect();
        let slots = shards
            .iter()
            .map(|s| ShardSlots { id: s.id, core: s.core, thread_id: s.thread_id, network: s.network_budget() })
            .collect();
        let resource_id = options.resource_id.clone().unwrap_or_else(default_resource_id);
        let gateway = Gateway::new(config, live, board, slots, resource_id, options.registration_timeout);
        let registered = Arc::new(AtomicU64::new(0));
        let session = Session {
            gateway,
            shards,
            connector,
            options,
            events: tx.clone(),
            inbox: rx,
            registered: registered.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("worker".into())
            .spawn(move || session.run())
            .map_err(|e| EngineError::Io { what: "starting the worker thread".into(), reason: e.to_string() })?;
        Ok((Worker { shards: shard_list, events: tx, registered, thread: Some(thread) }, hosted))
    }

    /// Its shards.
    pub(crate) fn shards(&self) -> &[WorkerShard] {
        &self.shards
    }

    /// How many times it has registered with a coordinator so far.
    pub fn registrations(&self) -> u64 {
        self.registered.load(Ordering::Acquire)
    }

    /// Waits until the worker ends: when a [`WorkerStopper`] stops it (`Ok`),
    /// or a coordinator refuses it for good, which is
    /// [`EngineError::RegistrationRefused`] with the reason.
    pub fn wait(mut self) -> Result<(), EngineError> {
        self.join()
    }

    /// A handle that stops the worker from another thread (a signal's, say)
    /// while its owner waits in [`Worker::wait`].
    pub fn stopper(&self) -> WorkerStopper {
        WorkerStopper(self.events.clone())
    }

    /// Cancels its tasks, stops its shards and waits.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.events.send(Event::Stop);
        let _ = self.join();
    }

    fn join(&mut self) -> Result<(), EngineError> {
        let Some(t) = self.thread.take() else { return Ok(()) };
        match t.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(EngineError::RegistrationRefused { reason }),
            Err(panic) => Err(EngineError::Io {
                what: "the worker thread".into(),
                reason: format!("panicked: {}", shardflow_control::panic_message(&*panic)),
            }),
        }
    }
}

/// Stops a [`Worker`] as [`Worker::shutdown`] does: it says goodbye to its
/// coordinator, cancels its tasks (each operator is closed) and stops its
/// shards; the owner's [`Worker::wait`] then returns.
#[derive(Debug, Clone)]
pub struct WorkerStopper(crossbeam_channel::Sender<Event>);

impl WorkerStopper {
    /// Asks the worker to stop (once it has, this does nothing).
    pub fn stop(&self) {
        let _ = self.0.send(Event::Stop);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// host-pid-start time.
fn default_resource_id() -> String {
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
    format!("{}-{}-{started}", gateway::hostname(), std::process::id())
}
