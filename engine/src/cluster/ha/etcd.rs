//! The HA services on etcd's v3 API: etcd-client (gRPC) on a small tokio
//! runtime of the process's own, talking to the rest of the process through
//! callbacks and channels, so no async code leaks out of this file.
//!
//! Keys, under `/shardflow/<cluster_id>/`:
//!
//! - `leader`: the leader's advertised address, on the leader's lease; its
//!   create revision is the leadership epoch;
//! - `jobs/<id, 20 digits>`: a job's record (`JobRecord::encode`).
//!
//! Every request is bounded by a timeout (a third of the TTL, within 0.2–3 s), so
//! an etcd that hangs is an error to retry, never a stuck task.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp,
    WatchOptions, WatchStream,
};
use shardflow_control::{JobId, JobRecord};
use tokio::sync::{mpsc, oneshot};

use super::{
    HaConfig, HighAvailabilityServices, LeaderElection, LeaderInfo, LeaderRetrieval, LeaderSink, LeadershipEvent,
    LeadershipSink, StoreOp,
};
use crate::cluster::retry_log::RetryLog;
use crate::error::EngineError;

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
        let (ops_tx, ops_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = self.runtime().spawn(campaign(self.ctx.clone(), address, Arc::new(events), ops_rx, stop_rx));
        Ok(Box::new(EtcdElection {
            ops: ops_tx,
            stop: Some(stop_tx),
            task: Some(task),
            runtime: self.runtime().handle().clone(),
        }))
    }

    fn follow(&self, on_change: LeaderSink) -> Result<Box<dyn LeaderRetrieval>, EngineError> {
        let current = Arc::new(Mutex::new(None));
        let task = self.runtime().spawn(follow(self.ctx.clone(), current.clone(), on_change));
        Ok(Box::new(EtcdRetrieval { current, task }))
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

/// A campaign running on the runtime.
struct EtcdElection {
    ops: mpsc::UnboundedSender<(u64, StoreOp)>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    runtime: tokio::runtime::Handle,
}

impl LeaderElection for EtcdElection {
    fn store(&self, epoch: u64, op: StoreOp) {
        let _ = self.ops.send((epoch, op));
    }

    fn resign(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // Resigning deletes the leader key, so a standby takes over at once.
            // (The timeout is made inside the runtime: its timer needs one.)
            let _ = self.runtime.block_on(async { tokio::time::timeout(Duration::from_secs(3), task).await });
        }
    }
}

impl Drop for EtcdElection {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A watch of the leader running on the runtime.
struct EtcdRetrieval {
    current: Arc<Mutex<Option<LeaderInfo>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaderRetrieval for EtcdRetrieval {
    fn current(&self) -> Option<LeaderInfo> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Drop for EtcdRetrieval {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The leader key's holder as a [`LeaderInfo`].
fn leader_of(kv: &etcd_client::KeyValue) -> Option<LeaderInfo> {
    // A deleted key comes with version 0.
    if kv.version() == 0 {
        return None;
    }
    let address = String::from_utf8_lossy(kv.value()).into_owned();
    Some(LeaderInfo { address, epoch: kv.create_revision().max(0) as u64 })
}

/// The leader now, and the revision it was read at.
async fn leader_now(ctx: &Ctx) -> Result<(Option<LeaderInfo>, i64), String> {
    let mut c = ctx.client.clone();
    let resp = bounded(ctx.request_timeout, c.get(ctx.keys.leader.as_str(), None)).await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    Ok((resp.kvs().first().and_then(leader_of), revision))
}

/// A watch of the leader key from `revision` on.
async fn watch_leader(ctx: &Ctx, revision: i64) -> Result<WatchStream, String> {
    let mut c = ctx.client.clone();
    let options = WatchOptions::new().with_start_revision(revision);
    bounded(ctx.request_timeout, c.watch(ctx.keys.leader.as_str(), Some(options))).await
}

/// The next change of the leader key a watch reports: `Ok(Some(leader or
/// None))`, `Ok(None)` for a response without events, `Err` when the watch is
/// broken (to be made again).
async fn next_change(w: &mut WatchStream) -> Result<Option<Option<LeaderInfo>>, String> {
    match w.message().await {
        Ok(Some(resp)) => {
            if resp.canceled() {
                return Err(format!("etcd cancelled the watch: {}", resp.cancel_reason()));
            }
            Ok(resp.events().last().map(|ev| ev.kv().and_then(leader_of)))
        }
        Ok(None) => Err("the watch ended".into()),
        Err(e) => Err(concise(&e)),
    }
}

/// Leader retrieval: keeps `current` up to date and tells `on_change`.
async fn follow(ctx: Ctx, current: Arc<Mutex<Option<LeaderInfo>>>, on_change: LeaderSink) {
    let mut backoff = Backoff::new();
    let set = |l: Option<LeaderInfo>| {
        let mut cur = current.lock().unwrap_or_else(PoisonError::into_inner);
        if *cur != l {
            cur.clone_from(&l);
            drop(cur);
            on_change(l);
        }
    };
    loop {
        // Read, then watch from just after what was read; on any error, read again
        // (keeping the last leader seen: an unreachable etcd elects nobody).
        let (leader, revision) = match leader_now(&ctx).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!("reading the leader from etcd: {e}");
                backoff.wait().await;
                continue;
            }
        };
        set(leader);
        let mut watch = match watch_leader(&ctx, revision + 1).await {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!("watching the leader in etcd: {e}");
                backoff.wait().await;
                continue;
            }
        };
        backoff.reset();
        loop {
            match next_change(&mut watch).await {
                Ok(Some(l)) => set(l),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!("the leader watch broke: {e}");
                    break;
                }
            }
        }
        backoff.wait().await;
    }
}

/// Why a leadership ended.
enum Ended {
    /// The process resigns.
    Stop,
    /// It was lost, for this reason.
    Lost(String),
}

/// Campaigns for the leadership, leads while it holds, and campaigns again
/// after losing it, until stopped.
async fn campaign(
    ctx: Ctx,
    address: String,
    events: Arc<LeadershipSink>,
    mut ops: mpsc::UnboundedReceiver<(u64, StoreOp)>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut backoff = Backoff::new();
    let mut told: Option<Option<LeaderInfo>> = None;
    let mut failures = RetryLog::default();
    loop {
        // Standby: wait while another leads.
        let vacant = tokio::select! {
            _ = &mut stop => return,
            v = wait_for_vacancy(&ctx, &events, &mut told) => v,
        };
        if let Err(e) = vacant {
            match failures.note(Instant::now(), &e) {
                Some(note) => tracing::warn!("waiting for the leadership: {e}{note}; retrying"),
                None => tracing::debug!("waiting for the leadership: {e}; retrying"),
            }
            tokio::select! { _ = &mut stop => return, () = backoff.wait() => continue }
        }
        failures.clear();
        let won = tokio::select! {
            _ = &mut stop => return,
            w = try_to_win(&ctx, &address) => w,
        };
        let (epoch, lease, granted, sent) = match won {
            Ok(Some(w)) => w,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("campaigning for the leadership: {e}; retrying");
                tokio::select! { _ = &mut stop => return, () = backoff.wait() => continue }
            }
        };
        backoff.reset();
        let records = match read_jobs(&ctx).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cannot read the job store after winning the leadership: {e}; resigning");
                give_up(&ctx, epoch, lease).await;
                tokio::select! { _ = &mut stop => return, () = backoff.wait() => continue }
            }
        };
        tracing::info!(epoch, records = records.len(), %address, "won the leadership");
        told = None;
        events(LeadershipEvent::Granted { epoch, records, valid_until: sent + granted });
        let ended = lead(&ctx, epoch, lease, granted, &events, &mut ops, &mut stop).await;
        give_up(&ctx, epoch, lease).await;
        match ended {
            Ended::Stop => return,
            Ended::Lost(reason) => {
                tracing::warn!(epoch, "lost the leadership: {reason}");
                events(LeadershipEvent::Revoked { reason });
            }
        }
    }
}

/// Returns once nobody holds the leader key, telling `events` who does
/// meanwhile.
async fn wait_for_vacancy(
    ctx: &Ctx,
    events: &LeadershipSink,
    told: &mut Option<Option<LeaderInfo>>,
) -> Result<(), String> {
    let mut tell = |l: Option<LeaderInfo>| {
        if told.as_ref() != Some(&l) {
            *told = Some(l.clone());
            events(LeadershipEvent::Leader(l));
        }
    };
    let (leader, revision) = leader_now(ctx).await?;
    let Some(leader) = leader else {
        tell(None);
        return Ok(());
    };
    tell(Some(leader));
    let mut watch = watch_leader(ctx, revision + 1).await?;
    loop {
        match next_change(&mut watch).await? {
            Some(None) => {
                tell(None);
                return Ok(());
            }
            Some(Some(l)) => tell(Some(l)),
            None => {}
        }
    }
}

/// One try for the leadership: grant a lease and create the leader key on it if
/// nobody holds it. Returns the epoch, the lease, its TTL and when the grant was
/// asked for, or `None` when another was faster.
async fn try_to_win(ctx: &Ctx, address: &str) -> Result<Option<(u64, i64, Duration, Instant)>, String> {
    let mut c = ctx.client.clone();
    let sent = Instant::now();
    let lease = bounded(ctx.request_timeout, c.lease_grant(ctx.ttl_s, None)).await?;
    let granted = Duration::from_secs(lease.ttl().max(1) as u64);
    if lease.ttl() != ctx.ttl_s {
        tracing::info!("etcd granted a lease of {} s (asked {} s)", lease.ttl(), ctx.ttl_s);
    }
    let key = ctx.keys.leader.as_str();
    let txn = Txn::new().when([Compare::create_revision(key, CompareOp::Equal, 0)]).and_then([TxnOp::put(
        key,
        address,
        Some(PutOptions::new().with_lease(lease.id())),
    )]);
    let resp = match bounded(ctx.request_timeout, c.txn(txn)).await {
        Ok(r) => r,
        Err(e) => {
            let _ = bounded(ctx.request_timeout, c.lease_revoke(lease.id())).await;
            return Err(e);
        }
    };
    if !resp.succeeded() {
        let _ = bounded(ctx.request_timeout, c.lease_revoke(lease.id())).await;
        return Ok(None);
    }
    // The put is the transaction's only write: its revision is the key's create
    // revision, the epoch.
    let epoch = resp.header().map_or(0, |h| h.revision()).max(0) as u64;
    Ok(Some((epoch, lease.id(), granted, sent)))
}

/// Every job record in the store; a damaged one is logged and skipped.
async fn read_jobs(ctx: &Ctx) -> Result<Vec<JobRecord>, String> {
    let mut c = ctx.client.clone();
    let resp =
        bounded(ctx.request_timeout, c.get(ctx.keys.jobs.as_str(), Some(GetOptions::new().with_prefix()))).await?;
    let mut records = Vec::new();
    for kv in resp.kvs() {
        match JobRecord::decode(kv.value()) {
            Ok(r) => records.push(r),
            Err(e) => tracing::error!(key = %String::from_utf8_lossy(kv.key()), "skipping a damaged job record: {e}"),
        }
    }
    Ok(records)
}

/// Deletes the leader key if it is still this leadership's, and revokes the
/// lease: best effort, so that a standby takes over at once.
async fn give_up(ctx: &Ctx, epoch: u64, lease: i64) {
    let mut c = ctx.client.clone();
    let key = ctx.keys.leader.as_str();
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, epoch as i64)])
        .and_then([TxnOp::delete(key, None)]);
    let _ = bounded(ctx.request_timeout, c.txn(txn)).await;
    let _ = bounded(ctx.request_timeout, c.lease_revoke(lease)).await;
}

fn refuse_op(events: &LeadershipSink, op: StoreOp, why: &str) {
    if let StoreOp::Put { record, ack: true } = op {
        events(LeadershipEvent::Stored { job: record.job, outcome: Err(why.to_string()) });
    }
}

/// Renews the lease once; returns the TTL etcd answered (0: the lease is gone)
/// and when the renewal was sent.
async fn renew(
    ctx: &Ctx,
    keeper: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    lease: i64,
) -> Result<(i64, Instant), String> {
    let sent = Instant::now();
    let Some((k, s)) = keeper.as_mut() else {
        let mut c = ctx.client.clone();
        return match tokio::time::timeout(ctx.request_timeout, c.lease_keep_alive(lease)).await {
            // Making the keeper sent a renewal and read its answer.
            Ok(Ok(made)) => {
                *keeper = Some(made);
                Ok((ctx.ttl_s, sent))
            }
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(e))) if e.contains("not found") => Ok((0, sent)),
            Ok(Err(e)) => Err(concise(&e)),
            Err(_) => Err(format!("etcd did not answer within {} ms", ctx.request_timeout.as_millis())),
        };
    };
    bounded(ctx.request_timeout, k.keep_alive()).await?;
    match bounded(ctx.request_timeout, s.message()).await? {
        Some(r) => Ok((r.ttl(), sent)),
        None => Err("the keep-alive stream ended".into()),
    }
}

/// A job store write that succeeds only while the leader key is this
/// leadership's: `Ok(false)` when it is not (the leadership is gone).
async fn write(ctx: &Ctx, epoch: u64, op: &StoreOp) -> Result<bool, String> {
    let mut c = ctx.client.clone();
    let fenced = Compare::create_revision(ctx.keys.leader.as_str(), CompareOp::Equal, epoch as i64);
    let action = match op {
        StoreOp::Put { record, .. } => {
            let bytes = record.encode().map_err(|e| e.to_string())?;
            TxnOp::put(ctx.keys.job(record.job), bytes, None)
        }
        StoreOp::Remove(job) => TxnOp::delete(ctx.keys.job(*job), None),
    };
    let resp = bounded(ctx.request_timeout, c.txn(Txn::new().when([fenced]).and_then([action]))).await?;
    Ok(resp.succeeded())
}

/// Leads: renews the lease every TTL/3 (reporting each renewal), watches the
/// leader key, and writes the job store's records in order, until the
/// leadership is lost or the process resigns.
async fn lead(
    ctx: &Ctx,
    epoch: u64,
    lease: i64,
    granted: Duration,
    events: &LeadershipSink,
    ops: &mut mpsc::UnboundedReceiver<(u64, StoreOp)>,
    stop: &mut oneshot::Receiver<()>,
) -> Ended {
    let mut keeper = None;
    let mut renewals = tokio::time::interval((granted / 3).max(Duration::from_millis(100)));
    renewals.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch: Option<WatchStream> = None;
    let mut pending: VecDeque<(StoreOp, Instant)> = VecDeque::new();
    let mut retry_at = Instant::now();
    let mut renew_failing = false;
    // A submission waits this long for its record at most.
    let ack_within = ctx.request_timeout * 3;
    let lost = |pending: &mut VecDeque<(StoreOp, Instant)>, why: String| {
        for (op, _) in pending.drain(..) {
            refuse_op(events, op, &why);
        }
        Ended::Lost(why)
    };
    loop {
        if watch.is_none() {
            match watch_leader(ctx, epoch as i64 + 1).await {
                Ok(w) => watch = Some(w),
                Err(e) => tracing::debug!("watching the leader key: {e}"),
            }
        }
        let retry_in = retry_at.saturating_duration_since(Instant::now());
        tokio::select! {
            biased;
            _ = &mut *stop => {
                let _ = lost(&mut pending, "the coordinator is stopping".into());
                return Ended::Stop;
            }
            _ = renewals.tick() => match renew(ctx, &mut keeper, lease).await {
                Ok((ttl, sent)) if ttl > 0 => {
                    if renew_failing {
                        tracing::info!(epoch, "the leadership lease is renewed again");
                        renew_failing = false;
                    }
                    events(LeadershipEvent::Renewed { valid_until: sent + Duration::from_secs(ttl as u64) });
                }
                Ok(_) => return lost(&mut pending, "etcd no longer has its lease (it expired)".into()),
                Err(e) => {
                    if !renew_failing {
                        tracing::warn!(epoch, "cannot renew the leadership lease: {e}; holding back every action until it is");
                        renew_failing = true;
                    }
                    keeper = None;
                }
            },
            change = async {
                match watch.as_mut() {
                    Some(w) => next_change(w).await,
                    None => std::future::pending().await,
                }
            } => match change {
                Ok(Some(None)) => return lost(&mut pending, "its leader key was deleted".into()),
                Ok(Some(Some(l))) if l.epoch != epoch => {
                    return lost(&mut pending, format!("another coordinator leads (epoch {} at {})", l.epoch, l.address))
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!("the leader key's watch broke: {e}");
                    watch = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            op = ops.recv() => match op {
                Some((e, op)) if e == epoch => pending.push_back((op, Instant::now())),
                // Written under an earlier leadership, whose state is gone.
                Some((_, op)) => refuse_op(events, op, "the leadership it was made under has ended"),
                None => return Ended::Stop,
            },
            () = tokio::time::sleep(retry_in), if !pending.is_empty() => {}
        }
        // The job store's writes, in order, one per turn of the loop: a renewal
        // that falls due between two writes goes first (`biased`), so a burst of
        // submissions never holds the lease's renewal back by more than one
        // write's timeout (TTL/3). A failed write is retried (a submission's only
        // until it has waited `ack_within`).
        if let Some((op, since)) = pending.front().filter(|_| Instant::now() >= retry_at) {
            match write(ctx, epoch, op).await {
                Ok(true) => {
                    if let Some((StoreOp::Put { record, ack: true }, _)) = pending.pop_front() {
                        events(LeadershipEvent::Stored { job: record.job, outcome: Ok(()) });
                    }
                }
                Ok(false) => return lost(&mut pending, "a job store write found the leader key is not its own".into()),
                Err(e) => {
                    if matches!(op, StoreOp::Put { ack: true, .. }) && since.elapsed() >= ack_within {
                        if let Some((op, _)) = pending.pop_front() {
                            refuse_op(events, op, &format!("etcd did not take it: {e}"));
                        }
                    } else {
                        tracing::debug!("a job store write failed: {e}; retrying");
                        retry_at = Instant::now() + Duration::from_millis(200);
                    }
                }
            }
        }
    }
}
