//! The coordinator's event loop: connections' frames, the clock and, under high
//! availability, the leadership's events in; the [`Coordinator`]'s outputs
//! carried out. It never touches a socket (outputs go onto each connection's
//! bounded outbox).
//!
//! ```text
//!            standalone: Leading for ever (epoch 0, always confirmed)
//!  HA:  Standby ──Granted(epoch, job records)──► Leading ──Revoked──► Standby
//!         │ frames answered NotLeader              │ outputs through the gate
//!         └ (names the leader where known)         └ Renewed: confirmed until …
//! ```
//!
//! **The gate.** A leader acts on the cluster only while its leadership is
//! confirmed (`now` before the last renewal's send time + TTL). Past that, every
//! output that would change something (a deployment, a cancel, a slot request or
//! free, a registration's acceptance, an acknowledged submission, a job store
//! write) is held, in order; heartbeats and answers that only inform (lists,
//! details, errors) still go out, so workers keep their tasks running through a
//! short etcd outage (a close waits behind what is held for its connection). A
//! renewal that succeeds means the lease never lapsed and
//! nobody else could lead: the held outputs go out. A revocation (etcd says the
//! lease is gone, or the key is another's) drops them, closes every connection
//! and makes this process a standby: a deposed leader, paused and resumed, acts
//! on nothing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use shardflow_control::protocol::{ErrorCode, Message};
use shardflow_control::{ConnId, Coordinator, Output, ResourceManagerId};

use super::super::ha::{HighAvailabilityServices, LeaderElection, LeaderInfo, LeadershipEvent, StoreOp};
use super::super::link::{send_message, FrameSink, SendError};
use super::Event;

/// Makes the coordinator of a leadership of `epoch`, at `now`.
pub(super) type MakeCoordinator = Box<dyn Fn(ResourceManagerId, Instant) -> Coordinator + Send>;

/// What a highly available event loop holds beyond a standalone one.
pub(super) struct Ha {
    /// The campaign (and, while leading, the job store).
    pub(super) election: Box<dyn LeaderElection>,
    /// A fresh coordinator per leadership.
    pub(super) make: MakeCoordinator,
    /// Kept alive as long as the loop runs (the etcd client's runtime).
    pub(super) _services: Arc<dyn HighAvailabilityServices>,
}

/// A coordinator that leads.
struct Leader {
    c: Coordinator,
    /// The leadership's epoch (0 standalone).
    epoch: u64,
    /// Until when the leadership is confirmed; `None`: always (standalone).
    valid_until: Option<Instant>,
    /// Outputs held while the leadership was unconfirmed, in order.
    held: VecDeque<Output>,
    /// Connections with held outputs: closing them waits behind.
    held_conns: HashSet<ConnId>,
    /// Whether the lapse of the confirmation has been logged.
    lapse_logged: bool,
}

impl Leader {
    fn confirmed(&self, now: Instant) -> bool {
        self.valid_until.is_none_or(|until| now < until)
    }
}

enum State {
    Leading(Box<Leader>),
    Standby(Option<LeaderInfo>),
}

/// The loop's state.
pub(super) struct Driver {
    rx: Receiver<Event>,
    sinks: HashMap<ConnId, Box<dyn FrameSink>>,
    state: State,
    ha: Option<Ha>,
    /// Told of each job's end, on this loop's thread.
    on_job_end: Option<OnJobEnd>,
}

/// What a driver tells of each job's end ([`Output::JobEnded`]): called on the
/// coordinator's thread, before the answers to those waiting for the end; it
/// must not block.
pub(crate) type OnJobEnd = Box<dyn Fn(shardflow_control::JobId) + Send>;

/// Whether an output only informs: it may leave while the leadership is
/// unconfirmed.
fn informs(o: &Output) -> bool {
    match o {
        Output::Send(_, m) => matches!(
            m,
            Message::HeartbeatFromCoordinator(_)
                | Message::JobList(_)
                | Message::JobDetails(_)
                | Message::JobProgress(_)
                | Message::ResourceOverview(_)
                | Message::WorkerInfoList(_)
                | Message::ShardDump(_)
                | Message::RequestShardDump(_)
                | Message::ErrorReply(_)
        ),
        Output::Close(_) | Output::JobEnded(_) => true,
        Output::StoreJob { .. } | Output::RemoveJob(_) => false,
    }
}

fn conn_of(o: &Output) -> Option<ConnId> {
    match o {
        Output::Send(c, _) | Output::Close(c) => Some(*c),
        Output::StoreJob { .. } | Output::RemoveJob(_) | Output::JobEnded(_) => None,
    }
}

impl Driver {
    /// A standalone loop around `c`.
    pub(super) fn standalone(rx: Receiver<Event>, c: Coordinator) -> Self {
        let leader = Leader {
            c,
            epoch: 0,
            valid_until: None,
            held: VecDeque::new(),
            held_conns: HashSet::new(),
            lapse_logged: false,
        };
        Driver { rx, sinks: HashMap::new(), state: State::Leading(Box::new(leader)), ha: None, on_job_end: None }
    }

    /// A highly available loop, a standby until its election is won.
    pub(super) fn highly_available(rx: Receiver<Event>, ha: Ha) -> Self {
        Driver { rx, sinks: HashMap::new(), state: State::Standby(None), ha: Some(ha), on_job_end: None }
    }

    /// Tells `f` of each job's end from now on.
    pub(super) fn on_job_end(mut self, f: Option<OnJobEnd>) -> Self {
        self.on_job_end = f;
        self
    }

    /// Runs until shut down; then resigns the leadership and closes every
    /// connection.
    pub(super) fn run(mut self) {
        loop {
            let event = match &self.state {
                State::Leading(l) => match self.rx.recv_deadline(l.c.next_deadline()) {
                    Ok(e) => Some(e),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                State::Standby(_) => match self.rx.recv() {
                    Ok(e) => Some(e),
                    Err(_) => break,
                },
            };
            let now = Instant::now();
            let outputs = match event {
                Some(Event::Shutdown) => break,
                Some(e) => self.on_event(now, e),
                None => self.leader().map_or_else(Vec::new, |l| l.c.on_tick(now)),
            };
            let mut outputs = outputs;
            if let Some(l) = self.leader() {
                if now >= l.c.next_deadline() {
                    outputs.extend(l.c.on_tick(now));
                }
            }
            self.carry_out(now, outputs);
        }
        if let Some(ha) = self.ha.as_mut() {
            ha.election.resign();
        }
        for (_, mut s) in self.sinks.drain() {
            s.close();
        }
    }

    fn leader(&mut self) -> Option<&mut Leader> {
        match &mut self.state {
            State::Leading(l) => Some(l),
            State::Standby(_) => None,
        }
    }

    fn on_event(&mut self, now: Instant, event: Event) -> Vec<Output> {
        match event {
            Event::Open(conn, sink) => {
                if let Some(l) = self.leader() {
                    l.c.on_connect(conn, sink.peer());
                }
                self.sinks.insert(conn, sink);
                Vec::new()
            }
            Event::Frame(conn, m, _permit) if self.sinks.contains_key(&conn) => match &mut self.state {
                State::Leading(l) => l.c.on_message(now, conn, m),
                State::Standby(leader) => {
                    let why = match leader {
                        Some(l) => format!(
                            "this coordinator is a standby: the leader is {} (epoch {}); {} was not served",
                            l.address,
                            l.epoch,
                            m.kind_name()
                        ),
                        None => "this coordinator is a standby and no leader is elected yet: try again shortly".into(),
                    };
                    self.refuse(conn, Message::error(ErrorCode::NotLeader, why));
                    Vec::new()
                }
            },
            Event::Bad(conn, e, _permit) if self.sinks.contains_key(&conn) => match &mut self.state {
                State::Leading(l) => l.c.on_frame_error(now, conn, &e),
                State::Standby(_) => {
                    self.refuse(conn, e.reply());
                    Vec::new()
                }
            },
            Event::Frame(..) | Event::Bad(..) => Vec::new(),
            Event::Closed(conn) => match self.sinks.remove(&conn) {
                Some(mut s) => {
                    s.abort();
                    self.leader().map_or_else(Vec::new, |l| l.c.on_disconnect(now, conn))
                }
                None => Vec::new(),
            },
            Event::Leadership(ev) => self.on_leadership(now, ev),
            Event::Shutdown => Vec::new(),
        }
    }

    /// Answers `conn` with `reply` and closes it (a standby's answer).
    fn refuse(&mut self, conn: ConnId, reply: Message) {
        if let Some(mut s) = self.sinks.remove(&conn) {
            let _ = send_message(s.as_mut(), &reply);
            s.close();
        }
    }

    fn on_leadership(&mut self, now: Instant, ev: LeadershipEvent) -> Vec<Output> {
        match ev {
            LeadershipEvent::Granted { epoch, records, valid_until } => {
                let Some(ha) = self.ha.as_ref() else { return Vec::new() };
                if let State::Leading(l) = &self.state {
                    tracing::error!(old = l.epoch, epoch, "granted a leadership while leading: the old one ends");
                }
                let jobs = records.len();
                let mut c = (ha.make)(ResourceManagerId(epoch), now).with_job_store(now, records);
                for (&conn, s) in &self.sinks {
                    c.on_connect(conn, s.peer());
                }
                tracing::info!(
                    epoch,
                    "leading the cluster (epoch {epoch}); {jobs} job records read from the job store"
                );
                let leader = Leader {
                    c,
                    epoch,
                    valid_until: Some(valid_until),
                    held: VecDeque::new(),
                    held_conns: HashSet::new(),
                    lapse_logged: false,
                };
                self.state = State::Leading(Box::new(leader));
                self.leader().map_or_else(Vec::new, |l| l.c.on_tick(now))
            }
            LeadershipEvent::Renewed { valid_until } => {
                let Some(l) = self.leader() else { return Vec::new() };
                l.valid_until = Some(valid_until);
                if !l.confirmed(now) {
                    return Vec::new();
                }
                if l.lapse_logged {
                    tracing::info!(epoch = l.epoch, "the leadership is confirmed again");
                    l.lapse_logged = false;
                }
                if l.held.is_empty() {
                    return Vec::new();
                }
                tracing::info!(
                    epoch = l.epoch,
                    held = l.held.len(),
                    "leadership confirmed again: carrying out what waited"
                );
                l.held_conns.clear();
                l.held.drain(..).collect()
            }
            LeadershipEvent::Revoked { reason } => {
                if let State::Leading(l) = &self.state {
                    tracing::warn!(
                        epoch = l.epoch,
                        dropped = l.held.len(),
                        "stepping down to standby: {reason}; {} held actions dropped, every connection closed",
                        l.held.len()
                    );
                    for (_, mut s) in self.sinks.drain() {
                        s.close();
                    }
                    self.state = State::Standby(None);
                }
                Vec::new()
            }
            LeadershipEvent::Leader(info) => {
                if let State::Standby(known) = &mut self.state {
                    *known = info;
                }
                Vec::new()
            }
            LeadershipEvent::Stored { job, outcome } => match self.leader() {
                Some(l) => l.c.on_job_stored(now, job, outcome),
                None => Vec::new(),
            },
        }
    }

    /// Carries out `outputs` (and the outputs they lead to), through the gate.
    fn carry_out(&mut self, now: Instant, mut outputs: Vec<Output>) {
        while !outputs.is_empty() {
            let mut more = Vec::new();
            for o in outputs {
                let State::Leading(l) = &mut self.state else { return };
                if !l.confirmed(now) && !l.lapse_logged {
                    l.lapse_logged = true;
                    tracing::warn!(
                        epoch = l.epoch,
                        "the leadership is unconfirmed (no lease renewal answered in time): holding back every action"
                    );
                }
                // A close waits behind what is held for its connection; what only
                // informs needs no order with held actions (a heartbeat may pass a
                // held cancel: neither depends on the other).
                let behind = matches!(o, Output::Close(c) if l.held_conns.contains(&c));
                if !l.confirmed(now) && (!informs(&o) || behind) {
                    if let Some(c) = conn_of(&o) {
                        l.held_conns.insert(c);
                    }
                    l.held.push_back(o);
                    continue;
                }
                match o {
                    Output::Send(conn, msg) => {
                        let Some(s) = self.sinks.get_mut(&conn) else { continue };
                        if let Err(e) = send_message(s.as_mut(), &msg) {
                            match &e {
                                SendError::Full { .. } => {
                                    tracing::warn!(conn, peer = %s.peer(), "disconnecting {}: {e}", s.peer())
                                }
                                _ => tracing::debug!(conn, peer = %s.peer(), "cannot send {}: {e}", msg.kind_name()),
                            }
                            if let Some(mut s) = self.sinks.remove(&conn) {
                                s.abort();
                            }
                            more.extend(l.c.on_disconnect(now, conn));
                        }
                    }
                    Output::Close(conn) => {
                        if let Some(mut s) = self.sinks.remove(&conn) {
                            s.close();
                            more.extend(l.c.on_disconnect(now, conn));
                        }
                    }
                    Output::StoreJob { record, ack } => match &self.ha {
                        Some(ha) => ha.election.store(l.epoch, StoreOp::Put { record, ack }),
                        None => tracing::error!(job = %record.job, "a job store write without a job store"),
                    },
                    Output::RemoveJob(job) => {
                        if let Some(ha) = &self.ha {
                            ha.election.store(l.epoch, StoreOp::Remove(job));
                        }
                    }
                    Output::JobEnded(job) => {
                        if let Some(f) = &self.on_job_end {
                            f(job);
                        }
                    }
                }
            }
            outputs = more;
        }
    }
}

#[cfg(test)]
mod tests {
    use shardflow_control::protocol::*;
    use shardflow_control::JobId;

    use super::*;

    #[test]
    fn what_only_informs_passes_an_unconfirmed_leadership_and_what_acts_waits() {
        let job = JobId(1);
        let reads = [
            Message::JobDetails(JobDetails {
                job,
                name: "j".into(),
                status: shardflow_control::JobStatus::Running,
                restarts: 0,
                failure: None,
                submit_to_running_us: None,
                subtasks: vec![],
            }),
            Message::JobProgress(JobProgress { job, subtasks: vec![] }),
            Message::JobList(JobList { jobs: vec![] }),
            Message::error(ErrorCode::UnknownJob, "no job"),
        ];
        for m in reads {
            assert!(informs(&Output::Send(1, m.clone())), "{} only informs", m.kind_name());
        }
        let acts = [
            Message::JobSubmitted(JobSubmitted { job }),
            Message::Ack(Ack {}),
            Message::CancelTask(CancelTask {
                job_master: shardflow_control::JobMasterId(1),
                job,
                attempt: shardflow_control::AttemptId {
                    execution_vertex: shardflow_control::ExecutionVertexId {
                        vertex: shardflow_control::VertexId(0),
                        subtask: 0,
                    },
                    attempt: 0,
                },
                reason: "the job was cancelled".into(),
            }),
        ];
        for m in acts {
            assert!(!informs(&Output::Send(1, m.clone())), "{} acts: it waits for the leadership", m.kind_name());
        }
        assert!(!informs(&Output::RemoveJob(job)));
    }
}
