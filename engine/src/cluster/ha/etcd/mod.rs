//! The HA services on etcd's v3 API: etcd-client (gRPC) on a small tokio
//! runtime of the process's own, talking to the rest of the process through
//! callbacks and channels, so no async code leaks out of this module. Leadership
//! (campaign, lead, store jobs) is [`election`]; following the leader,
//! [`retrieval`].
//!
//! Keys, under `/shardflow/<cluster_id>/`:
//!
//! - `leader`: the leader's advertised address, on the leader's lease; its
//!   create revision is the leadership epoch;
//! - `jobs/<id, 20 digits>`: a job's record (`JobRecord::encode`).
//!
//! Every request is bounded by a timeout (a third of the TTL, within 0.2–3 s), so
//! an etcd that hangs is an error to retry, never a stuck task.

mod election;
mod retrieval;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use shardflow_control::JobId;

use super::{
    HaConfig, HighAvailabilityServices, LeaderElection, LeaderInfo, LeaderRetrieval, LeaderSink, LeadershipSink,
};
use crate::error::EngineError;
use election::EtcdElection;
use retrieval::{leader_now, EtcdRetrieval};

/// The keys of one cluster.
#[derive(Debug, Clone)]
struct Keys {
    leader: String,
    jobs: String,
}

impl Keys {
    fn new(cluster_id: &str) -> Self {
        Keys { leader: format!("/shardflow/{cluster_id}/leader"), jobs: format!("/shardflow/{cluster_id}/jobs/") }
    }

    fn job(&self, id: JobId) -> String {
        format!("{}{:020}", self.jobs, id.0)
    }
}

/// What every task of the services needs (no handle on the runtime itself, so
/// that the runtime is never dropped from inside one of its tasks).
#[derive(Clone)]
struct Ctx {
    client: Client,
    keys: Keys,
    /// The TTL asked for, in whole seconds.
    ttl_s: i64,
    /// The bound of each request.
    request_timeout: Duration,
}

/// The HA services of one process on etcd.
pub(crate) struct EtcdHa {
    /// `Some` until dropped (see the `Drop` impl).
    runtime: Option<tokio::runtime::Runtime>,
    ctx: Ctx,
    endpoints: String,
}

impl Drop for EtcdHa {
    fn drop(&mut self) {
        // Without waiting for its threads: a runtime dropped the usual way
        // blocks, which panics inside another async runtime — and a client of
        // the services (a `ClusterClient` holds them) may be dropped in one.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn etcd_error(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Io { what: what.to_string(), reason: e.to_string() }
}

/// An etcd client error in one line: a gRPC status by its code and message,
/// then the root cause (tonic's own text carries the whole transport error's
/// debug form, `ConnectError(ConnectError("tcp connect error", …, Os { … }))`).
fn concise(e: &etcd_client::Error) -> String {
    use std::error::Error as _;
    let (top, below) = match e {
        etcd_client::Error::GRpcStatus(s) => (format!("{}: {}", s.code().description(), s.message()), s.source()),
        etcd_client::Error::TransportError(t) => (t.to_string(), t.source()),
        other => (other.to_string(), None),
    };
    let mut root = below;
    while let Some(next) = root.and_then(std::error::Error::source) {
        root = Some(next);
    }
    match root.map(ToString::to_string) {
        Some(root) if !top.contains(&root) => format!("{top}: {root}"),
        _ => top,
    }
}

/// Runs `f` within `limit`; an elapsed timeout is an error like any other.
async fn bounded<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(concise(&e)),
        Err(_) => Err(format!("etcd did not answer within {} ms", limit.as_millis())),
    }
}

/// Waits that double from 50 ms to 2 s.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(50))
    }
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
    }
    fn reset(&mut self) {
        self.0 = Duration::from_millis(50);
    }
}

impl EtcdHa {
    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the runtime lives until the services are dropped")
    }

    /// Starts the runtime and an etcd client for `config` (connections are made
    /// lazily: an etcd that is down now is an error of each request, retried).
    pub(crate) fn start(config: &HaConfig) -> Result<Arc<Self>, EngineError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("shardflow-etcd")
            .enable_all()
            .build()
            .map_err(|e| etcd_error("starting the etcd client's runtime", e))?;
        let request_timeout = (config.lease_ttl / 3).clamp(Duration::from_millis(200), Duration::from_secs(3));
        let endpoints: Vec<String> = config
            .endpoints
            .iter()
            .map(|e| if e.contains("://") { e.trim().to_string() } else { format!("http://{}", e.trim()) })
            .collect();
        // No HTTP/2 pings: etcd's server refuses pings more often than every 5 s
        // (`--grpc-keepalive-min-time`) by closing the connection, and a dead
        // etcd shows anyway as requests that time out.
        let options = ConnectOptions::new().with_connect_timeout(request_timeout).with_timeout(request_timeout);
        let joined = endpoints.join(",");
        let client = runtime
            .block_on(Client::connect(&endpoints, Some(options)))
            .map_err(|e| etcd_error(&format!("connecting to etcd at {joined}"), concise(&e)))?;
        let ttl_s = config.lease_ttl.as_millis().div_ceil(1000).max(1) as i64;
        Ok(Arc::new(EtcdHa {
            runtime: Some(runtime),
            ctx: Ctx { client, keys: Keys::new(&config.cluster_id), ttl_s, request_timeout },
            endpoints: joined,
        }))
    }
}

impl HighAvailabilityServices for EtcdHa {
    fn elect(&self, address: String, events: LeadershipSink) -> Result<Box<dyn LeaderElection>, EngineError> {
        Ok(Box::new(EtcdElection::start(self.runtime(), self.ctx.clone(), address, events)))
    }

    fn follow(&self, on_change: LeaderSink) -> Result<Box<dyn LeaderRetrieval>, EngineError> {
        Ok(Box::new(EtcdRetrieval::start(self.runtime(), self.ctx.clone(), on_change)))
    }

    fn leader(&self, timeout: Duration) -> Result<LeaderInfo, EngineError> {
        let ctx = self.ctx.clone();
        // What the last read of etcd failed with (none: etcd answered, naming no leader).
        let last_error = Arc::new(Mutex::new(None::<String>));
        let seen = last_error.clone();
        let found = self.runtime().block_on(async move {
            tokio::time::timeout(timeout, async {
                let mut backoff = Backoff::new();
                loop {
                    let read = leader_now(&ctx).await;
                    match read {
                        Ok((Some(l), _)) => return l,
                        Ok((None, _)) => *seen.lock().unwrap_or_else(PoisonError::into_inner) = None,
                        Err(e) => {
                            tracing::debug!("reading the leader from etcd: {e}");
                            *seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                        }
                    }
                    backoff.wait().await;
                }
            })
            .await
        });
        found.map_err(|_| {
            let why = match last_error.lock().unwrap_or_else(PoisonError::into_inner).take() {
                Some(e) => format!("etcd cannot be read ({e})"),
                None => "etcd names no leader (is a coordinator of this cluster id running?)".to_string(),
            };
            EngineError::Io {
                what: format!("finding the cluster's leader in etcd at {}", self.endpoints),
                reason: format!("none within {} ms: {why}", timeout.as_millis()),
            }
        })
    }
}
