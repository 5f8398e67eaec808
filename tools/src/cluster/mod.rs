//! Cluster commands: `coordinator` and `worker` processes (`roles.rs`), and the
//! client commands `submit`, `list`, `status`, `cancel`, `cluster` (`client.rs`)
//! and `dump` (`dump.rs`). Tables for people, `--json` for programs; everything a flag sets
//! can also come from the config file (`config.rs`).

mod access;
mod certs;
mod client;
mod config;
mod dump;
mod roles;

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use shardflow_engine::JobId;

pub(crate) use access::{AccessArgs, Connection, HaSection, SecuritySection};
pub(crate) use certs::{make_certs, MakeCertsArgs};

pub(crate) use client::{cancel, cluster, list, status, submit};
pub(crate) use client::{CancelArgs, ClusterArgs, ListArgs, StatusArgs, SubmitArgs};
pub(crate) use config::ConfigFile;
pub(crate) use dump::{dump, DumpArgs};
pub(crate) use roles::{coordinator, worker, CoordinatorArgs, WorkerArgs};

/// Where clients look for the coordinator without a flag or config file.
pub(crate) const DEFAULT_COORDINATOR: &str = "127.0.0.1:6123";

pub(super) fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("'{addr}' is not an address (host:port)"))?
        .next()
        .with_context(|| format!("'{addr}' resolves to no address"))
}

pub(super) fn parse_job_id(s: &str) -> Result<JobId> {
    let digits = s.strip_prefix("job-").unwrap_or(s);
    Ok(JobId(digits.parse().with_context(|| format!("'{s}' is not a job id (like job-3 or 3)"))?))
}

/// Flags every client command has.
#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    /// The coordinator. Default: the config file's `[client] coordinator`, else
    /// 127.0.0.1:6123; with --ha-etcd, whichever coordinator leads.
    #[arg(long)]
    coordinator: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(super) json: bool,
    #[command(flatten)]
    access: AccessArgs,
}

impl ClientArgs {
    pub(super) fn connect(&self, cfg: &ConfigFile) -> Result<Connection> {
        Connection::open(self.coordinator.as_deref(), &self.access, cfg)
    }

    /// As [`Self::connect`], waiting up to `wait` for a coordinator (or leader)
    /// that is not there yet.
    pub(super) fn connect_within(&self, cfg: &ConfigFile, wait: Duration) -> Result<Connection> {
        Connection::open_within(self.coordinator.as_deref(), &self.access, cfg, Some(wait))
    }
}

/// How long reads and waits go on finding a leader that went away.
pub(super) const FOLLOW_LEADER: Duration = Duration::from_secs(60);
