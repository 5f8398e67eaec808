//! The ResourceManager's part of the coordinator: worker registration and
//! fencing, heartbeats, lost workers, the cluster's overview and worker info, and
//! shard dumps asked of a worker on a client's behalf.

use std::time::{Duration, Instant};

use super::dispatcher::{WaitFor, Waiter};
use super::{ConnId, Coordinator, Output, Role};
use crate::ids::{JobId, ResourceManagerId, WorkerId};
use crate::protocol::*;

impl Coordinator {
    pub(super) fn register_worker(&mut self, now: Instant, conn: ConnId, role: Option<Role>, m: RegisterWorker) {
        if role.is_some() {
            return self.reject(conn, ErrorCode::Unexpected, "this connection has already registered or made requests");
        }
        // Where the connection comes from; the worker's own account (host, pid) if
        // the driver gave none.
        let address = self.peers.get(&conn).cloned().unwrap_or_else(|| m.address.clone());
        match self.slots.register(&m.resource_id, &address, m.resources) {
            Ok(worker) => {
                tracing::info!(%worker, resource_id = %m.resource_id, %address, runs = %m.address, "worker registered");
                self.conns.insert(conn, Role::Worker(worker));
                self.worker_conns.insert(worker, conn);
                self.heartbeats.heard(worker, now);
                self.send(
                    conn,
                    Message::RegistrationAccepted(RegistrationAccepted {
                        worker,
                        resource_manager: self.token,
                        heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u64,
                        heartbeat_timeout_ms: self.config.heartbeat_timeout.as_millis() as u64,
                    }),
                );
                // Jobs waiting for slots may fit now.
                let ids: Vec<JobId> = self.jobs.keys().copied().collect();
                for id in ids {
                    self.settle(now, id);
                }
            }
            Err(e) => self.reject(conn, ErrorCode::DuplicateRegistration, &e.to_string()),
        }
    }

    /// Whether `conn` is `worker`'s registered connection and `token` the
    /// leader's; if not, the connection is refused.
    pub(super) fn check_worker(
        &mut self,
        conn: ConnId,
        role: Option<Role>,
        token: ResourceManagerId,
        worker: WorkerId,
    ) -> bool {
        if role != Some(Role::Worker(worker)) {
            self.reject(conn, ErrorCode::NotRegistered, &format!("{worker} is not registered on this connection"));
            return false;
        }
        if token != self.token {
            self.reject(conn, ErrorCode::StaleToken, &format!("fencing token {token} is not the leader's"));
            return false;
        }
        true
    }

    pub(super) fn worker_disconnects(&mut self, now: Instant, conn: ConnId, role: Option<Role>, m: DisconnectWorker) {
        if self.check_worker(conn, role, m.resource_manager, m.worker) {
            tracing::info!(worker = %m.worker, "worker disconnects: {}", m.cause);
            self.worker_lost(now, m.worker, &format!("it disconnected: {}", m.cause));
            self.out.push(Output::Close(conn));
            self.conns.remove(&conn);
        }
    }

    pub(super) fn slot_request_reply(&mut self, conn: ConnId, role: Option<Role>, m: SlotRequestReply) {
        if let Some(Role::Worker(_)) = role {
            if m.outcome != SlotRequestOutcome::Allocated {
                tracing::warn!(slot = %m.slot, allocation = %m.allocation, outcome = ?m.outcome, "slot request refused");
            }
        } else {
            self.reject(conn, ErrorCode::NotRegistered, "slot replies come from registered workers");
        }
    }

    /// Heartbeats due go out; workers silent past the timeout are lost.
    pub(super) fn heartbeat_tick(&mut self, now: Instant) {
        if now >= self.next_heartbeat {
            self.heartbeat_seq += 1;
            let hb = HeartbeatFromCoordinator { resource_manager: self.token, seq: self.heartbeat_seq };
            for &conn in self.worker_conns.values() {
                self.out.push(Output::Send(conn, Message::HeartbeatFromCoordinator(hb.clone())));
            }
            self.next_heartbeat = now + self.config.heartbeat_interval;
        }
        for w in self.heartbeats.expire(now) {
            let timeout = self.config.heartbeat_timeout;
            self.worker_lost(now, w, &format!("no heartbeat for {} ms", timeout.as_millis()));
        }
    }

    /// `worker` is gone: its slots vanish, its connection closes, and the jobs
    /// with subtasks there fail over.
    pub(super) fn worker_lost(&mut self, now: Instant, worker: WorkerId, why: &str) {
        let Some(entry) = self.slots.remove(worker) else { return };
        if self.jobs.values().any(|j| !j.status().is_globally_terminal()) {
            tracing::warn!(%worker, resource_id = %entry.resource_id, "worker lost: {why}");
        } else {
            tracing::info!(%worker, resource_id = %entry.resource_id, "worker lost: {why}");
        }
        self.heartbeats.forget(worker);
        if let Some(conn) = self.worker_conns.remove(&worker) {
            self.conns.remove(&conn);
            self.out.push(Output::Close(conn));
        }
        let cause = format!("{worker} ({}) lost: {why}", entry.resource_id);
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for id in ids {
            self.with_job(now, id, |jm, gw| jm.worker_lost(gw, now, worker, &cause));
        }
    }

    /// The cluster's totals.
    pub(super) fn overview(&self) -> Message {
        let (total, free) = self.slots.totals();
        let running = self.jobs.values().filter(|j| !j.status().is_globally_terminal()).count();
        Message::ResourceOverview(ResourceOverview {
            workers: self.worker_conns.len() as u32,
            total_slots: total as u32,
            free_slots: free as u32,
            running_jobs: running as u32,
            leader: self.address.clone(),
            leader_epoch: self.epoch(),
        })
    }

    pub(super) fn worker_info(&mut self, now: Instant, conn: ConnId) {
        let workers = self
            .slots
            .workers()
            .map(|(id, w)| WorkerInfo {
                worker: id,
                resource_id: w.resource_id.clone(),
                address: w.address.clone(),
                resources: w.resources.clone(),
                slots: w.slots.len() as u32,
                free_slots: w.free_slots() as u32,
                last_heartbeat_ms: self.heartbeats.silence(id, now).map_or(0, |d| d.as_millis() as u64),
            })
            .collect();
        self.send(conn, Message::WorkerInfoList(WorkerInfoList { workers }));
    }

    /// A client asks for a worker's shard dump: one request to the worker serves
    /// every client waiting for it.
    pub(super) fn request_dump(&mut self, now: Instant, conn: ConnId, m: RequestWorkerDump) {
        let Some(&worker_conn) = self.worker_conns.get(&m.worker) else {
            return self.reject(conn, ErrorCode::UnknownWorker, &format!("no worker {}", m.worker));
        };
        if !self.waiters.iter().any(|w| matches!(w.what, WaitFor::Dump(x) if x == m.worker)) {
            let request = RequestShardDump { resource_manager: self.token };
            self.send(worker_conn, Message::RequestShardDump(request));
        }
        let deadline = now + Duration::from_millis(m.timeout_ms);
        self.waiters.push(Waiter { conn, what: WaitFor::Dump(m.worker), deadline });
    }

    /// Hands a worker's dump to every client waiting for it.
    pub(super) fn forward_dump(&mut self, dump: ShardDump) {
        let (waiting, rest): (Vec<Waiter>, _) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| matches!(w.what, WaitFor::Dump(x) if x == dump.worker));
        self.waiters = rest;
        for w in waiting {
            self.send(w.conn, Message::ShardDump(dump.clone()));
        }
    }
}
