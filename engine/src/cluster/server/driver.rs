//! The coordinator's event loop: connections' frames, the clock and, under high
//! availability, the leadership's events in; the [`Coordinator`]'s outputs
//! carried out. It never touches a socket (outputs go onto each connection's
//! bounded outbox).
//!
//! ```text
//!            standalone: Leading for ever (epoch 0, always confirmed)
//!  HA:  Standby ──Granted(epoch, job records)──► Leading ──Revoked──► Standby
//!         │ frames answered NotLeader              │ outputs through the gate
//!         │ (names the leader where known)         └ Renewed: confirmed until …
//!         └ while none is: held, served once Granted
//! ```
//!
//! **A vacancy's frames.** A standby that wins writes the leader key a moment
//! before it leads (it reads the job store in between), and workers and clients
//! that follow the key reach it in that moment. So while no leader is known a
//! standby holds their frames (up to [`HELD_WHILE_VACANT`], for at most
//! [`HOLD_WHILE_VACANT`]) and serves them once it leads; another's leadership,
//! or the time running out, refuses them as before — instead of a refusal, a
//! reconnection and a retry's pause on every failover.
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
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use shardflow_control::protocol::{ErrorCode, Message};
use shardflow_control::{ConnId, Coordinator, Output, ResourceManagerId};

use super::super::ha::{HighAvailabilityServices, LeaderElection, LeaderInfo, LeadershipEvent, StoreOp};
use super::super::link::{send_message, FrameSink, Permit, SendError};
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
    Standby(Standby),
}

/// A coordinator that does not lead.
#[derive(Default)]
struct Standby {
    /// Who leads, where known.
    leader: Option<LeaderInfo>,
    /// Frames that came while no leader was known, in order.
    held: Vec<HeldFrame>,
}

/// A frame a standby holds: its permit kept, so a connection's held frames
/// count against its reader's limit.
struct HeldFrame {
    conn: ConnId,
    message: Message,
    _permit: Permit,
    at: Instant,
}

/// The most frames a standby holds while no leader is known.
pub(super) const HELD_WHILE_VACANT: usize = 256;
/// How long a standby holds a frame while no leader is known.
pub(super) const HOLD_WHILE_VACANT: Duration = Duration::from_secs(2);

impl Standby {
    /// When the hold of the frames held ends: [`HOLD_WHILE_VACANT`] after the first came.
    fn hold_ends(&self) -> Option<Instant> {
        self.held.first().map(|f| f.at + HOLD_WHILE_VACANT)
    }

    /// Why a frame of `kind` is not served here.
    fn refusal(&self, kind: &str) -> Message {
        let why = match &self.leader {
            Some(l) => format!(
                "this coordinator is a standby: the leader is {} (epoch {}); {kind} was not served",
                l.address, l.epoch
            ),
            None => "this coordinator is a standby and no leader is elected yet: try again shortly".into(),
        };
        Message::error(ErrorCode::NotLeader, why)
    }
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
        Driver { rx, sinks: HashMap::new(), state: State::Standby(Standby::default()), ha: Some(ha), on_job_end: None }
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
                State::Standby(s) => match s.hold_ends() {
                    Some(until) => match self.rx.recv_deadline(until) {
                        Ok(e) => Some(e),
                        Err(RecvTimeoutError::Timeout) => {
                            self.refuse_held();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    },
                    None => match self.rx.recv() {
                        Ok(e) => Some(e),
                        Err(_) => break,
                    },
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
            Event::Frame(conn, m, permit) if self.sinks.contains_key(&conn) => match &mut self.state {
                State::Leading(l) => l.c.on_message(now, conn, m),
                State::Standby(s) if s.leader.is_none() && s.held.len() < HELD_WHILE_VACANT => {
                    s.held.push(HeldFrame { conn, message: m, _permit: permit, at: now });
                    Vec::new()
                }
                State::Standby(s) => {
                    let reply = s.refusal(m.kind_name());
                    self.refuse(conn, reply);
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

    /// Refuses the frames a standby held (another leads, or the hold ran out).
    fn refuse_held(&mut self) {
        let State::Standby(s) = &mut self.state else { return };
        let held = std::mem::take(&mut s.held);
        let refusals: Vec<_> = held.into_iter().map(|f| (f.conn, s.refusal(f.message.kind_name()))).collect();
        for (conn, reply) in refusals {
            self.refuse(conn, reply);
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
                let held = match &mut self.state {
                    State::Standby(s) => std::mem::take(&mut s.held),
                    State::Leading(_) => Vec::new(),
                };
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
                let mut outputs = self.leader().map_or_else(Vec::new, |l| l.c.on_tick(now));
                // What came while it was about to lead, served in order.
                for f in held {
                    if let (true, Some(l)) = (self.sinks.contains_key(&f.conn), self.leader()) {
                        outputs.extend(l.c.on_message(now, f.conn, f.message));
                    }
                }
                outputs
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
                    self.state = State::Standby(Standby::default());
                }
                Vec::new()
            }
            LeadershipEvent::Leader(info) => {
                if let State::Standby(s) = &mut self.state {
                    let another = info.is_some();
                    s.leader = info;
                    if another {
                        self.refuse_held();
                    }
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

    /// An election and services by hand: the test tells the leadership's events.
    struct ByHand;

    impl LeaderElection for ByHand {
        fn store(&self, _: u64, _: StoreOp) {}
        fn resign(&mut self) {}
    }

    impl HighAvailabilityServices for ByHand {
        fn elect(
            &self,
            _: String,
            _: crate::cluster::ha::LeadershipSink,
        ) -> Result<Box<dyn LeaderElection>, crate::EngineError> {
            Ok(Box::new(ByHand))
        }
        fn follow(
            &self,
            _: crate::cluster::ha::LeaderSink,
        ) -> Result<Box<dyn crate::cluster::ha::LeaderRetrieval>, crate::EngineError> {
            unreachable!("a coordinator campaigns")
        }
        fn leader(&self, _: std::time::Duration) -> Result<LeaderInfo, crate::EngineError> {
            unreachable!("a coordinator campaigns")
        }
    }

    /// A connection's far end: the messages the coordinator sends it, and its close.
    struct Peer(crossbeam_channel::Sender<Option<Message>>);

    impl FrameSink for Peer {
        fn try_send(&mut self, frame: Vec<u8>) -> Result<(), SendError> {
            let (m, _) = decode(&frame, usize::MAX).expect("the coordinator sends whole frames");
            let _ = self.0.send(Some(m));
            Ok(())
        }
        fn close(&mut self) {
            let _ = self.0.send(None);
        }
        fn abort(&mut self) {
            let _ = self.0.send(None);
        }
        fn peer(&self) -> &str {
            "test"
        }
    }

    #[test]
    fn a_standby_serves_what_came_in_a_vacancy_once_it_leads_and_refuses_it_once_another_does() {
        let live = Arc::new(crate::registry::LiveRegistry::new(crate::registry::JobCatalog::new()));
        let make: MakeCoordinator = Box::new(move |token, now| {
            let catalog = Box::new(crate::registry::catalog::RegistryCatalog::new(live.clone()));
            Coordinator::new(shardflow_control::CoordinatorConfig::default(), catalog, token, now)
        });
        let (events, rx) = crossbeam_channel::unbounded();
        let ha = Ha { election: Box::new(ByHand), make, _services: Arc::new(ByHand) };
        let looper = std::thread::spawn(move || Driver::highly_available(rx, ha).run());
        let wait = std::time::Duration::from_secs(60);
        let open = |conn: ConnId| {
            let (tx, answers) = crossbeam_channel::unbounded();
            events.send(Event::Open(conn, Box::new(Peer(tx)))).unwrap();
            events.send(Event::Frame(conn, Message::ListJobs(ListJobs {}), Permit::unbounded())).unwrap();
            answers
        };
        let leadership = |ev| events.send(Event::Leadership(ev)).unwrap();

        // Nobody leads: the request waits, and is served once this one leads.
        let first = open(1);
        let valid_until = Instant::now() + std::time::Duration::from_secs(3600);
        leadership(LeadershipEvent::Granted { epoch: 7, records: vec![], valid_until });
        let answer = first.recv_timeout(wait).expect("served once it leads");
        assert!(matches!(answer, Some(Message::JobList(JobList { ref jobs })) if jobs.is_empty()), "{answer:?}");

        // Deposed, then a vacancy again: held until another is named, then refused naming it.
        leadership(LeadershipEvent::Revoked { reason: "test".into() });
        assert_eq!(first.recv_timeout(wait).unwrap(), None, "stepping down closes every connection");
        let second = open(2);
        let other = LeaderInfo { address: "127.0.0.1:9".into(), epoch: 8 };
        leadership(LeadershipEvent::Leader(Some(other)));
        match second.recv_timeout(wait).unwrap() {
            Some(Message::ErrorReply(e)) => {
                assert_eq!(e.code, ErrorCode::NotLeader);
                assert!(e.message.contains("the leader is 127.0.0.1:9 (epoch 8)"), "{}", e.message);
            }
            other => panic!("a refusal naming the leader, not {other:?}"),
        }
        // With a leader known, a frame is refused at once.
        let third = open(3);
        assert!(matches!(third.recv_timeout(wait).unwrap(), Some(Message::ErrorReply(_))));
        events.send(Event::Shutdown).unwrap();
        looper.join().unwrap();
    }
}
