//! Leader retrieval on etcd: the leader key read, then watched from the
//! revision after, so every change of leader reaches the followers in order.

use std::sync::{Arc, Mutex, PoisonError};

use etcd_client::{WatchOptions, WatchStream};

use super::{bounded, concise, Backoff, Ctx};
use crate::cluster::ha::{LeaderInfo, LeaderRetrieval, LeaderSink};

/// A watch of the leader running on the runtime.
pub(super) struct EtcdRetrieval {
    current: Arc<Mutex<Option<LeaderInfo>>>,
    /// Why the last read or watch of etcd failed, until one succeeds.
    error: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EtcdRetrieval {
    /// Follows the leader key on `runtime`, telling `on_change` of each change.
    pub(super) fn start(runtime: &tokio::runtime::Runtime, ctx: Ctx, on_change: LeaderSink) -> Self {
        let current = Arc::new(Mutex::new(None));
        let error = Arc::new(Mutex::new(Some("etcd has not answered yet".to_string())));
        let task = runtime.spawn(follow(ctx, current.clone(), error.clone(), on_change));
        EtcdRetrieval { current, error, task }
    }
}

impl LeaderRetrieval for EtcdRetrieval {
    fn current(&self) -> Option<LeaderInfo> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn last_error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(PoisonError::into_inner).clone()
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
pub(super) async fn leader_now(ctx: &Ctx) -> Result<(Option<LeaderInfo>, i64), String> {
    let mut c = ctx.client.clone();
    let resp = bounded(ctx.request_timeout, c.get(ctx.keys.leader.as_str(), None)).await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    Ok((resp.kvs().first().and_then(leader_of), revision))
}

/// A watch of the leader key from `revision` on.
pub(super) async fn watch_leader(ctx: &Ctx, revision: i64) -> Result<WatchStream, String> {
    let mut c = ctx.client.clone();
    let options = WatchOptions::new().with_start_revision(revision);
    bounded(ctx.request_timeout, c.watch(ctx.keys.leader.as_str(), Some(options))).await
}

/// The next change of the leader key a watch reports: `Ok(Some(leader or
/// None))`, `Ok(None)` for a response without events, `Err` when the watch is
/// broken (to be made again).
pub(super) async fn next_change(w: &mut WatchStream) -> Result<Option<Option<LeaderInfo>>, String> {
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

/// Leader retrieval: keeps `current` up to date and tells `on_change`; keeps
/// in `error` why etcd cannot be read or watched, while it cannot.
async fn follow(
    ctx: Ctx,
    current: Arc<Mutex<Option<LeaderInfo>>>,
    error: Arc<Mutex<Option<String>>>,
    on_change: LeaderSink,
) {
    let mut backoff = Backoff::new();
    let failed = |e: Option<String>| *error.lock().unwrap_or_else(PoisonError::into_inner) = e;
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
                failed(Some(e));
                backoff.wait().await;
                continue;
            }
        };
        failed(None);
        set(leader);
        let mut watch = match watch_leader(&ctx, revision + 1).await {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!("watching the leader in etcd: {e}");
                failed(Some(e));
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
