//! The long-running roles: `shardflow coordinator` and `shardflow worker`.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde::Deserialize;
use shardflow_engine::cluster::{CoordinatorServer, ServerOptions, Worker, WorkerOptions};
use shardflow_engine::{CoordinatorConfig, IdlePolicy, PlacementStrategy, RestartStrategy};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use signal_hook::low_level::signal_name;

use super::config::WorkerSection;
use super::{resolve, AccessArgs, ConfigFile, DEFAULT_COORDINATOR};
use crate::Exit;

/// `shardflow coordinator`.
#[derive(Debug, Args)]
pub(crate) struct CoordinatorArgs {
    /// Address to listen on. Default 127.0.0.1:6123.
    #[arg(long)]
    bind: Option<String>,
    /// The address workers and clients reach this coordinator at, as it is
    /// announced under high availability. Default: the address it listens on.
    #[arg(long)]
    advertise: Option<String>,
    /// Heartbeat interval in ms. Default 1000.
    #[arg(long)]
    heartbeat_interval_ms: Option<u64>,
    /// A worker silent this long (ms) is lost. Default 5000.
    #[arg(long)]
    heartbeat_timeout_ms: Option<u64>,
    /// How long (ms) a restarting job, or one recovered by a new leader, waits
    /// for slots. Default 10000.
    #[arg(long)]
    slot_wait_timeout_ms: Option<u64>,
    /// How long (ms) a submitted job that does not fit the free slots waits
    /// for them (CREATED: workers registering, other jobs ending) before it
    /// fails saying so; 0 refuses it at once. Default 60000.
    #[arg(long)]
    submit_slot_wait_ms: Option<u64>,
    /// Default placement: spread, pack, colocate (default) or `vertex=cores;...`.
    #[arg(long)]
    placement: Option<String>,
    /// Default restart strategy: none, fixed-delay[:attempts=N,delay=D] (default),
    /// exponential-delay[:initial=D,max=D,multiplier=F,reset=D,attempts=N].
    #[arg(long)]
    restart: Option<String>,
    /// Ended jobs kept for `status` and `list`; the longest-ended beyond this are
    /// forgotten. Default 1000.
    #[arg(long)]
    retained_jobs: Option<usize>,
    /// Largest control frame accepted, in bytes. Default 16 MiB.
    #[arg(long)]
    max_frame_bytes: Option<usize>,
    /// TCP connections served at once; more are refused with a clear error.
    /// Default 512.
    #[arg(long)]
    max_connections: Option<usize>,
    /// A peer that takes no bytes of a reply for this long (ms) is disconnected.
    /// Default 10000.
    #[arg(long)]
    write_timeout_ms: Option<u64>,
    #[command(flatten)]
    access: AccessArgs,
}

pub(crate) fn coordinator(a: &CoordinatorArgs, cfg: &ConfigFile) -> Result<Exit> {
    let c = &cfg.coordinator;
    let bind = a.bind.clone().or(c.bind.clone()).unwrap_or(DEFAULT_COORDINATOR.into());
    let mut config = CoordinatorConfig::default();
    let ms = Duration::from_millis;
    if let Some(v) = a.heartbeat_interval_ms.or(c.heartbeat_interval_ms) {
        config.heartbeat_interval = ms(v.max(1));
    }
    if let Some(v) = a.heartbeat_timeout_ms.or(c.heartbeat_timeout_ms) {
        config.heartbeat_timeout = ms(v.max(1));
    }
    if let Some(v) = a.slot_wait_timeout_ms.or(c.slot_wait_timeout_ms) {
        config.slot_wait_timeout = ms(v);
    }
    if let Some(v) = a.submit_slot_wait_ms.or(c.submit_slot_wait_ms) {
        config.submit_slot_wait = ms(v);
    }
    if let Some(p) = a.placement.clone().or(c.placement.clone()) {
        config.default_placement = p.parse::<PlacementStrategy>()?;
    }
    if let Some(r) = a.restart.clone().or(c.restart.clone()) {
        config.default_restart = r.parse::<RestartStrategy>()?;
    }
    if let Some(n) = a.retained_jobs.or(c.retained_jobs) {
        config.retained_jobs = n.max(1);
    }
    let mut options = ServerOptions::default();
    if let Some(max) = a.max_frame_bytes.or(c.max_frame_bytes) {
        options.limits.max_frame_bytes = max;
    }
    if let Some(n) = a.max_connections.or(c.max_connections) {
        options.max_connections = n.max(1);
    }
    if let Some(ms) = a.write_timeout_ms.or(c.write_timeout_ms) {
        options.limits.write_timeout = Duration::from_millis(ms.max(1));
    }
    options.security = a.access.security(cfg)?;
    options.ha = a.access.ha(cfg)?;
    options.advertise = a.advertise.clone().or(c.advertise.clone());
    let ha = options.ha.clone();
    raise_open_files(options.max_connections);
    // Taken before the server starts, so no signal finds the default action.
    let signals = termination_signals()?;
    let server = CoordinatorServer::bind(resolve(&bind)?, config, crate::jobs().clone(), options)?;
    let addr = server.local_addr().context("the listener has no address")?;
    println!("coordinator listening on {addr}");
    match ha {
        Some(ha) => {
            tracing::info!(%addr, cluster_id = %ha.cluster_id, "coordinator started: a standby campaigning for the leadership")
        }
        None => tracing::info!(%addr, "coordinator started"),
    }
    // SIGTERM or SIGINT stops the coordinator cleanly: a leader resigns (a
    // standby takes over at once instead of when the lease lapses), and every
    // connection is closed.
    let (stop, stopped) = std::sync::mpsc::channel();
    stop_on_signal(signals, move |signal| {
        let _ = stop.send(signal);
    })?;
    let signal = stopped.recv().unwrap_or("?");
    tracing::info!(signal, "stopping: resigning any leadership and closing every connection");
    server.shutdown();
    tracing::info!("coordinator stopped");
    Ok(Exit::Done)
}

/// SIGTERM and SIGINT, taken from their default action (ending the process at
/// once) so that a role can stop cleanly.
fn termination_signals() -> Result<Signals> {
    Signals::new([SIGTERM, SIGINT]).context("cannot take SIGTERM and SIGINT")
}

/// Waits on a thread of its own for `signals`: the first calls `stop` with its
/// name; a second ends the process at once, as the default action would have
/// (exit status 128 + the signal's number).
fn stop_on_signal(mut signals: Signals, stop: impl FnOnce(&'static str) + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut caught = signals.forever();
            if let Some(first) = caught.next() {
                stop(signal_name(first).unwrap_or("?"));
            }
            if let Some(second) = caught.next() {
                eprintln!("{} while stopping: ending at once", signal_name(second).unwrap_or("a second signal"));
                std::process::exit(128 + second);
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

/// Raises the soft open-file limit to the hard one (every connection costs a
/// descriptor), and says so if it still cannot hold `connections` of them.
fn raise_open_files(connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < connections as u64 + 64 => tracing::warn!(
            "the open-file limit is {limit}, below max_connections ({connections}) + 64: connections beyond the \
             descriptors left are refused (raise it with `ulimit -n`)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read or raise the open-file limit: {e}"),
    }
}

/// `shardflow worker`.
#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// The coordinator to register with. Default: the config file's, else 127.0.0.1:6123.
    #[arg(long)]
    coordinator: Option<String>,
    /// Cores for the shards, e.g. `0,1`. Default: every online core.
    #[arg(long, value_delimiter = ',')]
    cores: Option<Vec<usize>>,
    /// Slots per shard. Default 2.
    #[arg(long)]
    slots_per_shard: Option<u32>,
    /// Name to register under. Default: host-pid-start time.
    #[arg(long)]
    resource_id: Option<String>,
    /// Network memory per shard in bytes. Default 64 MiB.
    #[arg(long)]
    network_memory_bytes: Option<usize>,
    /// Segment size in bytes. Default 32 KiB.
    #[arg(long)]
    segment_bytes: Option<usize>,
    /// Idle policy: park (default) or spin.
    #[arg(long, value_enum)]
    idle: Option<IdleArg>,
    #[command(flatten)]
    access: AccessArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum IdleArg {
    Park,
    Spin,
}

impl IdleArg {
    pub(crate) fn policy(self) -> IdlePolicy {
        match self {
            IdleArg::Park => IdlePolicy::Park,
            IdleArg::Spin => IdlePolicy::Spin,
        }
    }
}

pub(crate) fn worker(a: &WorkerArgs, cfg: &ConfigFile) -> Result<Exit> {
    // Each flag wins over its key in the file's [worker] table.
    let w = cfg.worker.clone();
    let w = WorkerSection {
        coordinator: a.coordinator.clone().or(w.coordinator),
        cores: a.cores.clone().or(w.cores),
        slots_per_shard: a.slots_per_shard.or(w.slots_per_shard),
        resource_id: a.resource_id.clone().or(w.resource_id),
        segment_bytes: a.segment_bytes.or(w.segment_bytes),
        network_memory_bytes: a.network_memory_bytes.or(w.network_memory_bytes),
        idle: a.idle.or(w.idle),
        ..w
    };
    let security = a.access.security(cfg)?;
    let options = WorkerOptions { resource_id: w.resource_id.clone(), security, ..WorkerOptions::default() };
    let engine = w.engine().jobs(crate::jobs());
    let signals = termination_signals()?;
    let worker = match a.access.ha(cfg)? {
        Some(ha) => {
            let worker = Worker::start_ha(&ha, engine, options)?;
            println!(
                "worker started, registering with the leader of cluster {} (etcd {})",
                ha.cluster_id,
                ha.endpoints.join(",")
            );
            worker
        }
        None => {
            let addr = w.coordinator.clone().unwrap_or(DEFAULT_COORDINATOR.into());
            let worker = Worker::start(resolve(&addr)?, engine, options)?;
            println!("worker started, registering with {addr}");
            worker
        }
    };
    // SIGTERM or SIGINT stops it cleanly: it says goodbye to its coordinator
    // (whose jobs then fail over at once), and its tasks are cancelled, every
    // operator closed. Otherwise it runs until a coordinator refuses it for good.
    let stopper = worker.stopper();
    stop_on_signal(signals, move |signal| {
        tracing::info!(signal, "stopping: cancelling every task and leaving the coordinator");
        stopper.stop();
    })?;
    worker.wait()?;
    tracing::info!("worker stopped");
    Ok(Exit::Done)
}
