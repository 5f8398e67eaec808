//! How every role reaches the cluster and proves itself: the flags and config
//! keys of high availability (`--ha-etcd`, `[ha]`) and security
//! (`--secret-file`, `[security]`), read into the engine's `HaConfig` and
//! `Security`; and the client connection that follows the leader.
//!
//! Secrets and keys are read from files only, never taken from the command
//! line (where `ps` would show them).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Deserialize;
use shardflow_engine::cluster::{
    ClusterClient, ClusterSecret, HaConfig, LeaderFinder, LeaderInfo, Security, TlsConfig,
};
use shardflow_engine::protocol::ErrorCode;
use shardflow_engine::EngineError;

use super::{resolve, ConfigFile, DEFAULT_COORDINATOR};

/// The `[ha]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HaSection {
    /// The coordination service: `etcd` (the one kind there is).
    pub(crate) kind: Option<String>,
    /// Its endpoints: a list, or one string of comma-separated ones.
    pub(crate) endpoints: Option<Endpoints>,
    pub(crate) lease_ttl_ms: Option<u64>,
    pub(crate) cluster_id: Option<String>,
}

/// Endpoints as a TOML list or one comma-separated string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Endpoints {
    List(Vec<String>),
    Joined(String),
}

impl Endpoints {
    fn list(&self) -> Vec<String> {
        match self {
            Endpoints::List(l) => l.clone(),
            Endpoints::Joined(s) => split(s),
        }
    }
}

fn split(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|e| !e.is_empty()).map(String::from).collect()
}

/// The `[security]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SecuritySection {
    pub(crate) secret_file: Option<PathBuf>,
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
    pub(crate) tls_ca: Option<PathBuf>,
}

/// Flags every role has: where the cluster's leader is found, and what this
/// process proves.
#[derive(Debug, Clone, Args)]
pub(crate) struct AccessArgs {
    /// High availability: the etcd endpoints (comma-separated) where the cluster
    /// keeps its leader and jobs. A coordinator campaigns there; workers and
    /// clients find the leader there (no --coordinator needed).
    #[arg(long, value_name = "ENDPOINTS")]
    ha_etcd: Option<String>,
    /// Separates clusters sharing one etcd. Default: the config file's `[ha]
    /// cluster_id`, else `default`.
    #[arg(long)]
    cluster_id: Option<String>,
    /// The leadership lease's TTL in ms (whole seconds, at least 1000): a dead
    /// leader is replaced within about this long. Default 10000.
    #[arg(long)]
    lease_ttl_ms: Option<u64>,
    /// A file holding the cluster's secret: every connection proves it holds it.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// TLS: this process's certificate chain (PEM). With --tls-key and --tls-ca.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// TLS: this process's private key (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// TLS: the cluster's CA certificate (PEM); peers must present a certificate it signed.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
}

/// Warns when a secret's file can be read by others than its owner.
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "{} can be read by other users (mode {:o}): chmod 600 it",
                path.display(),
                m.permissions().mode() & 0o777
            );
        }
    }
}

impl AccessArgs {
    /// The high-availability settings, flags over the file; `None`: standalone.
    pub(crate) fn ha(&self, cfg: &ConfigFile) -> Result<Option<HaConfig>> {
        let file = &cfg.ha;
        let endpoints = match (&self.ha_etcd, &file.endpoints) {
            (Some(flag), _) => split(flag),
            (None, Some(e)) => {
                match file.kind.as_deref() {
                    Some("etcd") => {}
                    Some(other) => bail!("[ha] kind = \"{other}\" is not one shardflow knows (it knows \"etcd\")"),
                    None => bail!("[ha] names endpoints but no kind: add kind = \"etcd\""),
                }
                e.list()
            }
            (None, None) => {
                if file.kind.is_some() {
                    bail!("[ha] names a kind but no endpoints");
                }
                return Ok(None);
            }
        };
        let mut ha = HaConfig::etcd(endpoints);
        if let Some(ms) = self.lease_ttl_ms.or(file.lease_ttl_ms) {
            ha.lease_ttl = Duration::from_millis(ms);
        }
        if let Some(id) = self.cluster_id.clone().or(file.cluster_id.clone()) {
            ha.cluster_id = id;
        }
        ha.validate()?;
        Ok(Some(ha))
    }

    /// What this process proves, flags over the file.
    pub(crate) fn security(&self, cfg: &ConfigFile) -> Result<Security> {
        let file = &cfg.security;
        let mut security = Security::none();
        if let Some(path) = self.secret_file.as_ref().or(file.secret_file.as_ref()) {
            warn_if_shared(path);
            let secret = ClusterSecret::new(&read(path, "secret file")?)
                .with_context(|| format!("the secret in {}", path.display()))?;
            security = security.with_secret(secret);
        }
        let cert = self.tls_cert.as_ref().or(file.tls_cert.as_ref());
        let key = self.tls_key.as_ref().or(file.tls_key.as_ref());
        let ca = self.tls_ca.as_ref().or(file.tls_ca.as_ref());
        match (cert, key, ca) {
            (None, None, None) => {}
            (Some(cert), Some(key), Some(ca)) => {
                warn_if_shared(key);
                let tls = TlsConfig::from_pem(
                    &read(cert, "TLS certificate")?,
                    &read(key, "TLS key")?,
                    &read(ca, "TLS CA certificate")?,
                )?;
                security = security.with_tls(tls);
            }
            _ => {
                let missing: Vec<&str> = [("tls_cert", cert), ("tls_key", key), ("tls_ca", ca)]
                    .iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(n, _)| *n)
                    .collect();
                bail!("TLS needs a certificate, its key and the CA together: {} missing", missing.join(", "));
            }
        }
        Ok(security)
    }
}

/// A client's way to the coordinator: a fixed address, or the leader of a
/// highly available cluster, found again when it changes.
pub(crate) struct Connection {
    client: ClusterClient,
    /// Under high availability: follows the leader, to find it again.
    ha: Option<Ha>,
    security: Security,
    /// The leader reached (under high availability).
    pub(crate) leader: Option<LeaderInfo>,
}

/// A highly available cluster, followed.
struct Ha {
    finder: LeaderFinder,
    cluster_id: String,
}

/// How long a client waits for the coordinator to take its connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Connection {
    /// Connects as `access` and the config file say: to the leader found in etcd
    /// under high availability, else to `coordinator` (or the file's, or the
    /// default address).
    pub(crate) fn open(coordinator: Option<&str>, access: &AccessArgs, cfg: &ConfigFile) -> Result<Self> {
        Self::open_within(coordinator, access, cfg, None)
    }

    /// As [`Self::open`]; with `wait`, a coordinator that does not listen yet
    /// (one starting next to this client, in a script) is tried again until
    /// `wait` has passed — under high availability, a leader is looked for
    /// that long at least.
    pub(crate) fn open_within(
        coordinator: Option<&str>,
        access: &AccessArgs,
        cfg: &ConfigFile,
        wait: Option<Duration>,
    ) -> Result<Self> {
        let security = access.security(cfg)?;
        let ha = access.ha(cfg)?;
        if let Some(ha) = ha {
            if coordinator.is_some() {
                tracing::info!("--coordinator is ignored: the leader is found through --ha-etcd");
            }
            let ha = Ha { finder: LeaderFinder::new(&ha)?, cluster_id: ha.cluster_id };
            let deadline = Instant::now() + wait.unwrap_or_default().max(FIND_LEADER);
            let (client, leader) = ha.reach_leader(None, &security, deadline)?;
            return Ok(Connection { client, ha: Some(ha), security, leader: Some(leader) });
        }
        let addr =
            coordinator.map(String::from).or(cfg.client.coordinator.clone()).unwrap_or(DEFAULT_COORDINATOR.into());
        let addr = resolve(&addr)?;
        let (start, mut pause, mut told) = (Instant::now(), Pause::new(), false);
        let deadline = start + wait.unwrap_or_default();
        loop {
            match ClusterClient::connect_with(addr, CONNECT_TIMEOUT, &security) {
                Ok(client) => return Ok(Connection { client, ha: None, security, leader: None }),
                // Not listening yet, or gone while it started: ask again.
                Err(e @ EngineError::Io { .. }) if wait.is_some() => {
                    if Instant::now() >= deadline {
                        let waited = start.elapsed().as_secs_f64();
                        return Err(
                            anyhow::Error::new(e).context(format!("no coordinator at {addr} within {waited:.0} s"))
                        );
                    }
                    if !std::mem::replace(&mut told, true) {
                        tracing::info!("waiting for the coordinator at {addr} to listen ({e})");
                    }
                    pause.sleep_before(deadline); // then a last try at the deadline
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The client, for a request made once (a submission, a cancel).
    pub(crate) fn client(&mut self) -> &mut ClusterClient {
        &mut self.client
    }

    /// Runs `request` (one that must not run twice: a submission, a cancel);
    /// under high availability, a coordinator that answers it is not the leader
    /// (so did not serve it) makes the request go to the leader found again.
    pub(crate) fn once<T>(
        &mut self,
        mut request: impl FnMut(&mut ClusterClient) -> Result<T, EngineError>,
    ) -> Result<T> {
        let deadline = Instant::now() + FIND_LEADER;
        loop {
            match request(&mut self.client) {
                Err(e @ EngineError::Remote { code: ErrorCode::NotLeader, .. }) => {
                    if self.ha.is_none() || Instant::now() >= deadline {
                        return Err(e.into());
                    }
                    tracing::info!("{e}; finding the leader again");
                    self.reach_leader_again(deadline)?;
                }
                other => return Ok(other?),
            }
        }
    }

    /// Runs `request` (one that may be asked again: a read, a wait); under high
    /// availability, a leader that goes away or steps down meanwhile is found
    /// again and asked again until `within` has passed.
    pub(crate) fn following<T>(
        &mut self,
        within: Duration,
        mut request: impl FnMut(&mut ClusterClient, Duration) -> Result<T, EngineError>,
    ) -> Result<T> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let e = match request(&mut self.client, left) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if self.ha.is_none() || !LeaderFinder::worth_another_try(&e) || Instant::now() >= deadline {
                return Err(e.into());
            }
            tracing::info!("the leader went away ({e}); finding the leader again");
            self.reach_leader_again(deadline)?;
        }
    }

    /// Connects to the leader again after a request to it failed. The same
    /// leader (its key outlives it until its lease lapses, or it fails every
    /// request at once) is asked again only after a change of leader or a
    /// pause that grows while none comes, so a client never hammers a
    /// coordinator until its deadline.
    fn reach_leader_again(&mut self, deadline: Instant) -> Result<()> {
        let Some(ha) = self.ha.as_ref() else { return Ok(()) };
        let (client, leader) = ha.reach_leader(self.leader.as_ref(), &self.security, deadline)?;
        self.client = client;
        self.leader = Some(leader);
        Ok(())
    }
}

impl Ha {
    /// Connects to the leader (not `failed` before the leader changes or a
    /// pause passes), trying again until `deadline`: a leader that just died,
    /// a standby that does not lead yet. Refusals for good (a wrong secret,
    /// TLS) are not tried again.
    fn reach_leader(
        &self,
        failed: Option<&LeaderInfo>,
        security: &Security,
        deadline: Instant,
    ) -> Result<(ClusterClient, LeaderInfo)> {
        let start = Instant::now();
        match self.finder.connect_instead_of(failed, CONNECT_TIMEOUT, security, deadline) {
            Ok((client, leader)) => {
                tracing::info!("reached the leader {} (epoch {})", leader.address, leader.epoch);
                Ok((client, leader))
            }
            Err(e) if LeaderFinder::worth_another_try(&e) => Err(anyhow::Error::new(e).context(format!(
                "no leader of cluster '{}' reached within {:.0} s",
                self.cluster_id,
                start.elapsed().as_secs_f64()
            ))),
            Err(e) => Err(e.into()),
        }
    }
}

/// A pause that doubles from 50 ms to 1 s between tries.
struct Pause(Duration);

impl Pause {
    fn new() -> Self {
        Pause(Duration::from_millis(50))
    }

    /// Sleeps the pause (at most until `deadline`) and doubles it.
    fn sleep_before(&mut self, deadline: Instant) {
        // Not waiting for an event: what would end the pause (a coordinator
        // starting to listen) is announced to no one.
        std::thread::sleep(self.0.min(deadline.saturating_duration_since(Instant::now())));
        self.0 = (self.0 * 2).min(Duration::from_secs(1));
    }
}

/// How long a client looks for a leader it can reach (a dead leader's key
/// lives until its lease lapses, and a standby needs a moment to take over).
const FIND_LEADER: Duration = Duration::from_secs(30);
