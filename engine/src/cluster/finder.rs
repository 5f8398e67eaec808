//! Finding a highly available cluster's leader from outside it: a client that
//! follows the leader key and, between tries, waits for it to change rather than
//! for a pause to run out.
//!
//! A leader that dies keeps its key until its lease lapses; a client that tries
//! its address meanwhile is refused, and a standby that wins writes the key a
//! moment before it serves. Tried again after growing pauses, a client reached
//! the new leader up to a pause after it led (measured: 260 ms after the job
//! ran again, at the end of an 800 ms pause); woken by the change, it reaches
//! it at once. The pause stays, growing to a second, for what no change
//! announces: a leader that does not listen yet, or refuses for a moment.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::ha::{self, HighAvailabilityServices, LeaderRetrieval};
use super::{ClusterClient, HaConfig, LeaderInfo, Security};
use crate::error::EngineError;

/// Finds the leader of a highly available cluster and connects to it, waiting
/// for the leader to change between tries. One etcd client serves every try.
pub struct LeaderFinder {
    // Dropped in this order: the watch stops before its services do.
    retrieval: Box<dyn LeaderRetrieval>,
    services: Arc<dyn HighAvailabilityServices>,
    changes: Arc<Changes>,
    endpoints: String,
    /// The pause before the next try while the leader stays as it was at a
    /// count of changes: kept across calls, so a leader that keeps failing
    /// requests is not asked again and again.
    pause: Mutex<(u64, Duration)>,
    /// The first pause after a change of leader, and the longest.
    pauses: (Duration, Duration),
}

/// Counts the changes of leader seen, for a thread to wait on the next.
#[derive(Default)]
struct Changes {
    seen: Mutex<u64>,
    changed: Condvar,
}

impl Changes {
    fn count(&self) -> u64 {
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn note(&self) {
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.changed.notify_all();
    }

    /// Waits until the count is past `seen`, or for `timeout`.
    fn wait_past(&self, seen: u64, timeout: Duration) {
        let guard = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = self.changed.wait_timeout_while(guard, timeout, |now| *now == seen);
    }
}

impl LeaderFinder {
    /// Starts following the leader of `ha`.
    pub fn new(ha: &HaConfig) -> Result<Self, EngineError> {
        let services = ha::services(ha)?;
        Self::following(services, ha.endpoints.join(","))
    }

    /// A finder on `services` (etcd at `endpoints`, for errors).
    fn following(services: Arc<dyn HighAvailabilityServices>, endpoints: String) -> Result<Self, EngineError> {
        let changes = Arc::new(Changes::default());
        let noted = changes.clone();
        let retrieval = services.follow(Box::new(move |_| noted.note()))?;
        let pauses = (Duration::from_millis(50), Duration::from_secs(1));
        let pause = Mutex::new((0, pauses.0));
        Ok(LeaderFinder { retrieval, services, changes, endpoints, pause, pauses })
    }

    /// The leader as last seen (`None` while nobody leads, or before etcd
    /// answered).
    pub fn current(&self) -> Option<LeaderInfo> {
        self.retrieval.current()
    }

    /// Connects to the leader within `timeout` a try, proving what `security`
    /// holds, trying until `deadline`: a leader that cannot be reached (gone,
    /// not listening yet) is tried again once the leader changes, or after a
    /// pause if it does not (50 ms after a change, doubling to 1 s while none
    /// comes, over calls too). A refusal for good (a wrong secret, TLS) is
    /// returned at once. The client watches the leadership as
    /// [`ClusterClient::connect_leader`]'s does.
    pub fn connect(
        &self,
        timeout: Duration,
        security: &Security,
        deadline: Instant,
    ) -> Result<(ClusterClient, LeaderInfo), EngineError> {
        self.connect_instead_of(None, timeout, security, deadline)
    }

    /// [`Self::connect`] after `failed` failed a request: while it is still
    /// the leader named, the next try waits for a change (or a pause) first.
    pub fn connect_instead_of(
        &self,
        failed: Option<&LeaderInfo>,
        timeout: Duration,
        security: &Security,
        deadline: Instant,
    ) -> Result<(ClusterClient, LeaderInfo), EngineError> {
        let start = Instant::now();
        let mut last: Option<EngineError> = None;
        let mut avoid = failed.cloned();
        loop {
            let seen = self.changes.count();
            match self.current() {
                Some(leader) if avoid.as_ref() != Some(&leader) => {
                    match ClusterClient::attach(self.services.clone(), leader.clone(), timeout, security) {
                        Ok(client) => return Ok((client, leader)),
                        Err(e) if Self::worth_another_try(&e) => {
                            tracing::debug!("no leader to reach yet: {e}");
                            last = Some(e);
                        }
                        Err(e) => return Err(e),
                    }
                }
                _ => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(last.unwrap_or_else(|| self.none_named(now - start)));
            }
            self.changes.wait_past(seen, self.pause_at(seen).min(deadline - now));
            // After a change or a pause, any leader may be tried, the failed one too.
            avoid = None;
        }
    }

    /// The pause before another try while the leader is as at change `seen`,
    /// and the next one doubled.
    fn pause_at(&self, seen: u64) -> Duration {
        let mut pause = self.pause.lock().unwrap_or_else(PoisonError::into_inner);
        if pause.0 != seen {
            *pause = (seen, self.pauses.0);
        }
        let now = pause.1;
        pause.1 = (now * 2).min(self.pauses.1);
        now
    }

    /// Whether another try may reach a leader: the one tried went away, or
    /// does not lead (yet) — not a refusal for good (a wrong secret, TLS).
    pub fn worth_another_try(e: &EngineError) -> bool {
        use shardflow_control::protocol::ErrorCode;
        matches!(e, EngineError::Io { .. } | EngineError::Remote { code: ErrorCode::NotLeader, .. })
    }

    /// Why no leader was reached within `waited`, where none was named.
    fn none_named(&self, waited: Duration) -> EngineError {
        let why = match self.retrieval.last_error() {
            Some(e) => format!("etcd cannot be read ({e})"),
            None => "etcd names no leader (is a coordinator of this cluster id running?)".to_string(),
        };
        EngineError::Io {
            what: format!("finding the cluster's leader in etcd at {}", self.endpoints),
            reason: format!("none within {} ms: {why}", waited.as_millis()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ha::{LeaderElection, LeaderSink, LeadershipSink};
    use crate::cluster::{CoordinatorServer, ServerOptions};
    use crate::registry::JobCatalog;
    use shardflow_control::CoordinatorConfig;

    /// Leader retrieval by hand: the test names the leader.
    #[derive(Default)]
    struct Named {
        leader: Mutex<Option<LeaderInfo>>,
        sinks: Mutex<Vec<LeaderSink>>,
        /// Told of each look at the leader.
        looked: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    }

    impl Named {
        fn set(&self, leader: Option<LeaderInfo>) {
            *self.leader.lock().unwrap() = leader.clone();
            for sink in self.sinks.lock().unwrap().iter() {
                sink(leader.clone());
            }
        }
    }

    struct NamedRetrieval(Arc<Named>);

    impl LeaderRetrieval for NamedRetrieval {
        fn current(&self) -> Option<LeaderInfo> {
            if let Some(tx) = self.0.looked.lock().unwrap().as_ref() {
                let _ = tx.send(());
            }
            self.0.leader.lock().unwrap().clone()
        }
        fn last_error(&self) -> Option<String> {
            None
        }
    }

    struct ByHand(Arc<Named>);

    impl HighAvailabilityServices for ByHand {
        fn elect(&self, _: String, _: LeadershipSink) -> Result<Box<dyn LeaderElection>, EngineError> {
            unreachable!("a client never campaigns")
        }
        fn follow(&self, on_change: LeaderSink) -> Result<Box<dyn LeaderRetrieval>, EngineError> {
            self.0.sinks.lock().unwrap().push(on_change);
            Ok(Box::new(NamedRetrieval(self.0.clone())))
        }
        fn leader(&self, _: Duration) -> Result<LeaderInfo, EngineError> {
            unreachable!("the finder reads what it follows")
        }
    }

    /// A loopback address nothing listens on.
    fn dead_address() -> String {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
    }

    #[test]
    fn a_change_of_leader_wakes_a_finder_that_would_pause_for_an_hour() {
        let named = Arc::new(Named::default());
        let dead = LeaderInfo { address: dead_address(), epoch: 1 };
        named.set(Some(dead.clone()));
        let mut finder = LeaderFinder::following(Arc::new(ByHand(named.clone())), "by hand".into()).unwrap();
        // Only a change can end a wait now.
        let hour = Duration::from_secs(3600);
        finder.pauses = (hour, hour);
        let (config, jobs, options) = (CoordinatorConfig::default(), JobCatalog::new(), ServerOptions::default());
        let server = CoordinatorServer::bind("127.0.0.1:0".parse().unwrap(), config, jobs, options).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (looks, looked) = std::sync::mpsc::channel();
        *named.looked.lock().unwrap() = Some(looks);
        let tries = std::thread::spawn(move || {
            // The dead leader just failed a request: it is not tried before a change.
            let found = finder.connect_instead_of(
                Some(&dead),
                Duration::from_secs(5),
                &Security::none(),
                Instant::now() + Duration::from_secs(3600),
            );
            tx.send(found.map(|(_, leader)| leader)).unwrap();
        });
        // The finder saw only the dead leader: it waits (or is about to).
        looked.recv_timeout(Duration::from_secs(60)).expect("the finder looks for the leader");
        let live = LeaderInfo { address: server.local_addr().unwrap().to_string(), epoch: 2 };
        named.set(Some(live.clone()));
        let found = rx.recv_timeout(Duration::from_secs(60)).expect("the change of leader wakes the finder");
        assert_eq!(found.unwrap(), live);
        tries.join().unwrap();
        server.shutdown();
    }

    #[test]
    fn a_finder_gives_up_at_its_deadline_naming_why() {
        let named = Arc::new(Named::default());
        let finder = LeaderFinder::following(Arc::new(ByHand(named.clone())), "by hand".into()).unwrap();
        let at = Instant::now();
        let e = finder.connect(Duration::from_secs(5), &Security::none(), at).unwrap_err();
        assert!(e.to_string().contains("etcd names no leader"), "{e}");
        // A leader named but unreachable: the last failure is the error.
        let dead = dead_address();
        named.set(Some(LeaderInfo { address: dead.clone(), epoch: 3 }));
        let e = finder.connect(Duration::from_secs(5), &Security::none(), Instant::now()).unwrap_err();
        assert!(matches!(e, EngineError::Io { .. }) && e.to_string().contains(&dead), "{e}");
    }
}
