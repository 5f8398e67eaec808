//! Leadership on etcd: a campaign for the leader key on a lease, leading while
//! the lease is renewed (writing the job store fenced by the leadership's
//! epoch), and campaigning again once it is lost, until the process resigns.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Compare, CompareOp, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp, WatchStream,
};
use shardflow_control::JobRecord;
use tokio::sync::{mpsc, oneshot};

use super::retrieval::{leader_now, next_change, watch_leader};
use super::{bounded, concise, Backoff, Ctx};
use crate::cluster::ha::{LeaderElection, LeaderInfo, LeadershipEvent, LeadershipSink, StoreOp};
use crate::cluster::retry_log::RetryLog;

/// A campaign running on the runtime.
pub(super) struct EtcdElection {
    ops: mpsc::UnboundedSender<(u64, StoreOp)>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    runtime: tokio::runtime::Handle,
}

impl EtcdElection {
    /// Campaigns on `runtime` for `address`, telling `events` of each
    /// leadership won and lost.
    pub(super) fn start(runtime: &tokio::runtime::Runtime, ctx: Ctx, address: String, events: LeadershipSink) -> Self {
        let (ops_tx, ops_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = runtime.spawn(campaign(ctx, address, Arc::new(events), ops_rx, stop_rx));
        EtcdElection { ops: ops_tx, stop: Some(stop_tx), task: Some(task), runtime: runtime.handle().clone() }
    }
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

/// Every job record in the store; one this build cannot read (damaged, or of
/// another layout version) is logged and skipped.
async fn read_jobs(ctx: &Ctx) -> Result<Vec<JobRecord>, String> {
    let mut c = ctx.client.clone();
    let resp =
        bounded(ctx.request_timeout, c.get(ctx.keys.jobs.as_str(), Some(GetOptions::new().with_prefix()))).await?;
    let mut records = Vec::new();
    for kv in resp.kvs() {
        match JobRecord::decode(kv.value()) {
            Ok(r) => records.push(r),
            Err(e) => {
                tracing::error!(key = %String::from_utf8_lossy(kv.key()), "skipping a job record this build cannot read: {e}")
            }
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
