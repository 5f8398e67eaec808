//! High availability (Flink's HighAvailabilityServices) on an existing
//! coordination service, etcd: leader election for the coordinator, leader
//! retrieval for workers and clients, and a job store, behind one interface
//! ([`HighAvailabilityServices`]).
//!
//! ```text
//!  coordinator A (leader)          etcd                       coordinator B (standby)
//!   lease (TTL), renewed ──────► /shardflow/<cluster>/leader ◄── watches it; campaigns
//!   every TTL/3                   = A's address, on A's lease     when it goes
//!   job records (txn: only while  /shardflow/<cluster>/jobs/<id>
//!   the leader key is still A's)          ▲
//!                                          │ watch
//!  workers, clients ───────────────────────┘ follow the leader key to its address
//! ```
//!
//! - **Election.** A contender grants itself a lease and creates the leader key
//!   on it only if the key does not exist (a transaction on its create
//!   revision). The key's create revision is the leadership's *epoch*; it grows
//!   with every new leader and is the coordinator's fencing token
//!   (`ResourceManagerId`). The leader renews its lease every TTL/3; its
//!   leadership is *confirmed* until the send time of the last renewal etcd
//!   answered plus the TTL, a moment that comes before etcd could expire the
//!   lease. A standby watches the key and campaigns when it is deleted (the
//!   leader resigned, or its lease lapsed).
//! - **Fencing.** A leader whose confirmation has lapsed (paused, or cut off
//!   from etcd) acts on nothing: the server holds every output that would change
//!   the cluster until a renewal succeeds (the lease never lapsed, so nobody else
//!   can lead) and drops them when etcd says the lease is gone; it then steps
//!   down. Workers accept a registration only from the coordinator whose token
//!   is the epoch they read from etcd, so a deposed leader's frames are refused;
//!   every job store write is a transaction that succeeds only while the leader
//!   key is the writer's.
//! - **Job store.** Each job's [`shardflow_control::JobRecord`] under
//!   `jobs/<id>`, written before the submission is acknowledged and whenever it
//!   changes; a new leader reads them all and runs every job that had not ended.
//!
//! The embedded engine never needs any of this: standalone (no HA) is the
//! default everywhere, and the etcd services are the crate's `etcd` feature
//! (without it only these traits remain, and [`services`] refuses by type).

#[cfg(feature = "etcd")]
mod etcd;

use std::time::Duration;

use shardflow_control::{JobId, JobRecord};

#[cfg(feature = "etcd")]
pub(crate) use etcd::EtcdHa;

use crate::error::EngineError;

/// Where a cluster keeps its leadership and jobs: the `[ha]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaConfig {
    /// etcd endpoints (`http://127.0.0.1:2379` or `127.0.0.1:2379`).
    pub endpoints: Vec<String>,
    /// The leadership lease's time to live: a leader that dies is replaced
    /// within about this long. etcd counts in whole seconds (and may raise a
    /// short TTL to its own minimum). Default 10 s; at least 1 s.
    pub lease_ttl: Duration,
    /// Separates clusters sharing one etcd (`[A-Za-z0-9._-]`). Default `default`.
    pub cluster_id: String,
}

impl HaConfig {
    /// Settings for the etcd at `endpoints`, with the default TTL and cluster id.
    pub fn etcd(endpoints: Vec<String>) -> Self {
        HaConfig { endpoints, lease_ttl: Duration::from_secs(10), cluster_id: "default".into() }
    }

    /// Checks the settings: endpoints given, a TTL of at least 1 s, a cluster id
    /// of letters, digits, `.`, `_` and `-`.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |field, value: String, reason: &str| {
            Err(EngineError::InvalidConfig { field, value, reason: reason.into() })
        };
        if self.endpoints.is_empty() || self.endpoints.iter().any(|e| e.trim().is_empty()) {
            return bad("ha.endpoints", format!("{:?}", self.endpoints), "name at least one etcd endpoint (host:port)");
        }
        if let Some(e) = self.endpoints.iter().find(|e| e.contains("://") && !e.trim().starts_with("http://")) {
            return bad(
                "ha.endpoints",
                e.clone(),
                "give host:port or http://host:port (this build talks to etcd without TLS)",
            );
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return bad(
                "ha.lease_ttl_ms",
                self.lease_ttl.as_millis().to_string(),
                "at least 1000 (etcd counts in seconds)",
            );
        }
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if self.cluster_id.is_empty() || !self.cluster_id.chars().all(ok) {
            return bad("ha.cluster_id", self.cluster_id.clone(), "letters, digits, '.', '_' and '-' only");
        }
        Ok(())
    }
}

/// Who leads a cluster: where it is reached, and its epoch (fencing token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The leader's advertised address (host:port).
    pub address: String,
    /// Its leadership epoch: grows with every new leader.
    pub epoch: u64,
}

/// What an election tells its contender (the coordinator's event loop).
#[derive(Debug)]
#[cfg_attr(not(feature = "etcd"), allow(dead_code))] // made by the services alone
pub(crate) enum LeadershipEvent {
    /// Won: the epoch (the fencing token), the job store's records, and until
    /// when the leadership is confirmed.
    Granted {
        /// The epoch.
        epoch: u64,
        /// Every job record the store held.
        records: Vec<JobRecord>,
        /// The leadership holds at least until then.
        valid_until: std::time::Instant,
    },
    /// The lease was renewed: the leadership holds at least until `valid_until`.
    Renewed {
        /// The new confirmation.
        valid_until: std::time::Instant,
    },
    /// The leadership is gone: step down.
    Revoked {
        /// Why, for the log.
        reason: String,
    },
    /// Another contender leads (or nobody does): for a standby's answers.
    Leader(Option<LeaderInfo>),
    /// The job store's answer to a write with `ack`.
    Stored {
        /// The job.
        job: JobId,
        /// Written, or why not.
        outcome: Result<(), String>,
    },
}

/// A write to the job store, fenced by the leadership.
#[derive(Debug)]
#[cfg_attr(not(feature = "etcd"), allow(dead_code))] // read by the services alone
pub(crate) enum StoreOp {
    /// Write a job's record; with `ack`, the outcome comes back as
    /// [`LeadershipEvent::Stored`].
    Put {
        /// The record.
        record: Box<JobRecord>,
        /// Whether to report the outcome.
        ack: bool,
    },
    /// Remove a job's record.
    Remove(JobId),
}

/// Where an election reports.
pub(crate) type LeadershipSink = Box<dyn Fn(LeadershipEvent) + Send + Sync>;
/// Where leader retrieval reports each change of leader.
pub(crate) type LeaderSink = Box<dyn Fn(Option<LeaderInfo>) + Send + Sync>;

/// A running campaign for leadership (and, once won, the leader's job store).
pub(crate) trait LeaderElection: Send {
    /// Queues a job store write made under the leadership of `epoch` (fenced: it
    /// is refused under any other leadership, and fails once this one is lost).
    fn store(&self, epoch: u64, op: StoreOp);
    /// Gives the leadership up (a standby takes over at once) and stops.
    fn resign(&mut self);
}

/// A running watch of the cluster's leader.
pub(crate) trait LeaderRetrieval: Send + Sync {
    /// The leader as last seen.
    fn current(&self) -> Option<LeaderInfo>;
    /// Why the service cannot be read now, if it cannot (cleared by the next
    /// read that succeeds).
    fn last_error(&self) -> Option<String>;
}

/// The services a highly available cluster's processes share (Flink's
/// HighAvailabilityServices).
pub(crate) trait HighAvailabilityServices: Send + Sync {
    /// Campaigns for the leadership as `address`, reporting to `events`.
    fn elect(&self, address: String, events: LeadershipSink) -> Result<Box<dyn LeaderElection>, EngineError>;
    /// Follows the leader, telling `on_change` of every change.
    fn follow(&self, on_change: LeaderSink) -> Result<Box<dyn LeaderRetrieval>, EngineError>;
    /// The current leader, waiting at most `timeout` for one to be elected.
    fn leader(&self, timeout: Duration) -> Result<LeaderInfo, EngineError>;
}

/// The services for `config` (etcd is the one kind today).
#[cfg(feature = "etcd")]
pub(crate) fn services(config: &HaConfig) -> Result<std::sync::Arc<dyn HighAvailabilityServices>, EngineError> {
    config.validate()?;
    Ok(EtcdHa::start(config)?)
}

/// Without the `etcd` feature there are no services: a typed refusal.
#[cfg(not(feature = "etcd"))]
pub(crate) fn services(config: &HaConfig) -> Result<std::sync::Arc<dyn HighAvailabilityServices>, EngineError> {
    config.validate()?;
    Err(EngineError::InvalidConfig {
        field: "ha.kind",
        value: "etcd".into(),
        reason: "this build has no etcd support: build shardflow-engine with its `etcd` feature \
                 (shardflow-tools turns it on by default)"
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_by_name() {
        assert!(HaConfig::etcd(vec!["127.0.0.1:2379".into()]).validate().is_ok());
        let e = HaConfig::etcd(vec![]).validate().unwrap_err();
        assert!(e.to_string().contains("ha.endpoints"), "{e}");
        let e = HaConfig { lease_ttl: Duration::from_millis(500), ..HaConfig::etcd(vec!["x:1".into()]) }
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("ha.lease_ttl_ms"), "{e}");
        let e = HaConfig { cluster_id: "a/b".into(), ..HaConfig::etcd(vec!["x:1".into()]) }.validate().unwrap_err();
        assert!(e.to_string().contains("ha.cluster_id"), "{e}");
        assert!(HaConfig::etcd(vec!["http://127.0.0.1:2379".into()]).validate().is_ok());
        for scheme in ["https://127.0.0.1:2379", "unix:///run/etcd.sock"] {
            let e = HaConfig::etcd(vec!["x:1".into(), scheme.into()]).validate().unwrap_err().to_string();
            assert!(e.contains("ha.endpoints") && e.contains(scheme) && e.contains("without TLS"), "{e}");
        }
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn a_leader_looked_for_where_no_etcd_listens_names_the_cause() {
        // A loopback port nothing listens on: every read is refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let ha = HaConfig::etcd(vec![format!("127.0.0.1:{port}")]);
        let e = crate::cluster::current_leader(&ha, Duration::from_millis(300)).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, EngineError::Io { .. }), "{e:?}");
        assert!(text.contains("none within 300 ms: etcd cannot be read"), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        // One line a person reads: the status and the root cause, not tonic's
        // debug form of the transport error.
        assert!(text.contains("unavailable") && text.contains("Connection refused"), "{text}");
        assert!(!text.contains("ConnectError(") && !text.contains("Os {"), "{text}");
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn the_services_can_be_dropped_inside_another_async_runtime() {
        // A service's own tokio code may drop a ClusterClient, which holds them.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let ha = services(&HaConfig::etcd(vec![format!("127.0.0.1:{port}")])).expect("connections are lazy");
        let outer = tokio::runtime::Builder::new_current_thread().build().unwrap();
        outer.block_on(async move { drop(ha) });
    }

    #[cfg(not(feature = "etcd"))]
    #[test]
    fn a_build_without_etcd_refuses_ha_settings_by_name() {
        let ha = HaConfig::etcd(vec!["127.0.0.1:2379".into()]);
        let e = crate::cluster::current_leader(&ha, Duration::from_millis(300)).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, EngineError::InvalidConfig { field: "ha.kind", .. }), "{e:?}");
        assert!(text.contains("no etcd support") && text.contains("`etcd` feature"), "{text}");
        // Bad settings are still named first.
        let e = crate::cluster::current_leader(&HaConfig::etcd(vec![]), Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, EngineError::InvalidConfig { field: "ha.endpoints", .. }), "{e:?}");
    }
}
