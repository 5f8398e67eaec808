//! The worker's I/O edge: it connects to the coordinator, feeds the
//! [`Gateway`] with frames, task reports and the time, and carries out its
//! actions: frames onto the connection's bounded outbox (never a blocking
//! write), commands into the shards' mailboxes. When a session ends it cancels
//! what ran, backs off (doubling from `reconnect_min` to `reconnect_max`) and
//! connects again, unless the coordinator refused the worker for good. Under
//! high availability a new leader ends the session at once, and a worker
//! backing off connects as soon as one is elected.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use shardflow_control::protocol::{FrameError, Message};
use shardflow_control::{ExecutionState, ResourceManagerId};

use super::super::ha::LeaderInfo;
use super::super::retry_log::RetryLog;
use super::gateway::{Action, Gateway};
use super::options::{Connected, Connector, WorkerOptions};
use crate::cluster::link::{send_message, FrameSink, Permit, Received};
use crate::runtime::task::TaskFailure;
use crate::shard::{ShardCommand, ShardHandle, TaskReport};

/// What the worker's thread waits for.
pub(super) enum Event {
    /// A frame of session `.0`.
    Frame(u64, Message, Permit),
    /// Bytes of session `.0` that are not a frame.
    Bad(u64, FrameError, Permit),
    /// Session `.0`'s connection ended.
    Closed(u64),
    /// A shard's report.
    Task(TaskReport),
    /// The cluster's leader changed (high availability).
    LeaderChanged(Option<LeaderInfo>),
    /// The worker stops.
    Stop,
}

/// How a session ended.
enum SessionEnd {
    /// The worker stops.
    Stop,
    /// The coordinator is gone (or could not be reached): try again.
    Lost(String),
    /// The coordinator refused the worker for good.
    Refused(String),
    /// Another coordinator leads now: connect to it at once.
    NewLeader(String),
}

/// How a wait between sessions ended.
enum BackOff {
    /// The worker stops.
    Stop,
    /// A leader was elected: connect now.
    NewLeader,
    /// The wait is over.
    Waited,
}

/// The worker's thread: its gateway, its shards and the way to its coordinator.
pub(super) struct Session {
    pub(super) gateway: Gateway,
    pub(super) shards: Vec<ShardHandle>,
    pub(super) connector: Connector,
    pub(super) options: WorkerOptions,
    pub(super) events: Sender<Event>,
    pub(super) inbox: Receiver<Event>,
    /// Registrations so far, for [`super::Worker::registrations`].
    pub(super) registered: Arc<AtomicU64>,
}

impl Session {
    /// Runs until the worker stops (`Ok`) or is refused for good (`Err` with the
    /// reason); then stops the shards.
    pub(super) fn run(mut self) -> Result<(), String> {
        let mut backoff = self.options.reconnect_min;
        let mut session = 0u64;
        let mut failures = RetryLog::default();
        let outcome = loop {
            session += 1;
            let events = self.events.clone();
            let deliver = move |received, permit| {
                let event = match received {
                    Received::Message(m) => Event::Frame(session, m, permit),
                    Received::Bad(e) => Event::Bad(session, e, permit),
                    Received::Closed | Received::TimedOut => Event::Closed(session),
                };
                events.send(event).is_ok()
            };
            let registrations = self.registered.load(Ordering::Acquire);
            let end = match self.connector.connect(&self.options, deliver) {
                Ok(c) => self.serve(c, session, &mut backoff),
                Err(f) if f.retry => SessionEnd::Lost(format!("cannot connect: {}", f.reason)),
                Err(f) => SessionEnd::Refused(f.reason),
            };
            if self.registered.load(Ordering::Acquire) != registrations {
                failures.clear();
            }
            let why = match end {
                SessionEnd::Stop => "the worker shut down",
                _ => "the worker lost its coordinator",
            };
            let cancels = self.gateway.disconnected(why);
            self.carry_out_offline(cancels);
            match end {
                SessionEnd::Stop => break Ok(()),
                SessionEnd::Refused(why) => {
                    tracing::error!(resource_id = %self.gateway.resource_id(), "{why}; the worker stops");
                    break Err(why);
                }
                SessionEnd::Lost(why) => {
                    let id = self.gateway.resource_id();
                    match failures.note(Instant::now(), &why) {
                        Some(note) => {
                            tracing::warn!(resource_id = %id, "coordinator lost: {why}{note}; retrying in {backoff:?}");
                        }
                        None => tracing::debug!(resource_id = %id, "coordinator lost: {why}; retrying in {backoff:?}"),
                    }
                    match self.back_off(backoff) {
                        BackOff::Stop => break Ok(()),
                        BackOff::NewLeader => backoff = self.options.reconnect_min,
                        BackOff::Waited => backoff = (backoff * 2).min(self.options.reconnect_max),
                    }
                }
                SessionEnd::NewLeader(why) => {
                    tracing::info!(resource_id = %self.gateway.resource_id(), "{why}: registering with it");
                    backoff = self.options.reconnect_min;
                }
            }
        };
        for s in &mut self.shards {
            s.stop();
        }
        outcome
    }

    /// Waits out `backoff`, still taking task reports (no coordinator hears
    /// them; they release what the tasks held); a newly elected leader ends
    /// the wait.
    fn back_off(&mut self, backoff: Duration) -> BackOff {
        let until = Instant::now() + backoff;
        loop {
            match self.inbox.recv_deadline(until) {
                Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => return BackOff::Stop,
                Ok(Event::Task(r)) => {
                    let actions = self.gateway.on_task(r);
                    self.carry_out_offline(actions);
                }
                Ok(Event::LeaderChanged(Some(l))) => {
                    tracing::info!(epoch = l.epoch, address = %l.address, "a leader is elected: connecting at once");
                    return BackOff::NewLeader;
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => return BackOff::Waited,
            }
        }
    }

    /// One session on `connection`: register, then serve until it ends. Its
    /// epoch is the leadership it was made to (high availability), whose
    /// token the registration must carry.
    fn serve(&mut self, connection: Connected, session: u64, backoff: &mut Duration) -> SessionEnd {
        let Connected { mut sink, epoch, peer } = connection;
        let expected = epoch.map(ResourceManagerId);
        let mut pending: VecDeque<Action> = self.gateway.connected(Instant::now(), expected).into();
        // Over TCP without TLS, a coordinator that requires TLS answers the first
        // frame with a TLS alert: bytes that are not a frame before any frame.
        // Its address while no frame has come.
        let mut unheard_plain = peer.filter(|_| !self.options.security.has_tls());
        loop {
            if let Some(end) = self.carry_out(&mut pending, sink.as_mut()) {
                return end;
            }
            let event = match self.gateway.next_deadline() {
                Some(at) => self.inbox.recv_deadline(at),
                None => self.inbox.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            let now = Instant::now();
            let event = match event {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) => {
                    pending.extend(self.gateway.on_tick(now));
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return SessionEnd::Stop,
            };
            // Deployments wait in the batch only while more of them follow right away.
            let deploying = matches!(&event, Event::Frame(_, Message::SubmitTask(_) | Message::DeployTask(_), _));
            if !deploying {
                pending.extend(self.gateway.flush());
            }
            let was_registered = self.gateway.is_registered();
            match event {
                Event::Stop => {
                    pending.extend(self.gateway.stop());
                    if let Some(end) = self.carry_out(&mut pending, sink.as_mut()) {
                        return end;
                    }
                    sink.close();
                    return SessionEnd::Stop;
                }
                Event::Frame(s, ..) | Event::Bad(s, ..) | Event::Closed(s) if s != session => continue,
                Event::LeaderChanged(Some(l)) if epoch.is_some_and(|e| e != l.epoch) => {
                    sink.close();
                    return SessionEnd::NewLeader(format!(
                        "a new leader is elected: {} (epoch {})",
                        l.address, l.epoch
                    ));
                }
                Event::LeaderChanged(_) => {}
                Event::Closed(_) => {
                    sink.abort();
                    return SessionEnd::Lost("the connection closed".into());
                }
                Event::Bad(_, e, _permit) => {
                    if let Some(at) = unheard_plain {
                        // Connecting again cannot help: the worker stops with the reason.
                        sink.close();
                        return SessionEnd::Refused(format!(
                            "the coordinator at {at} answered with bytes that are not a frame ({e}): does it \
                             require TLS? (give the worker --tls-cert, --tls-key and --tls-ca)"
                        ));
                    }
                    pending.extend(self.gateway.on_bad_frame(&e));
                }
                Event::Task(r) => pending.extend(self.gateway.on_task(r)),
                Event::Frame(_, msg, _permit) => {
                    unheard_plain = None;
                    pending.extend(self.gateway.on_message(now, msg));
                }
            }
            if !was_registered && self.gateway.is_registered() {
                *backoff = self.options.reconnect_min;
                self.registered.fetch_add(1, Ordering::AcqRel);
            }
            if self.inbox.is_empty() {
                pending.extend(self.gateway.flush());
            }
        }
    }

    /// Carries out `pending` (and what it leads to); returns how the session
    /// ended, if it did.
    fn carry_out(&mut self, pending: &mut VecDeque<Action>, sink: &mut dyn FrameSink) -> Option<SessionEnd> {
        while let Some(action) = pending.pop_front() {
            match action {
                Action::Send(m) => {
                    if let Err(e) = send_message(sink, &m) {
                        sink.abort();
                        return Some(SessionEnd::Lost(format!(
                            "cannot send {} to the coordinator: {e}",
                            m.kind_name()
                        )));
                    }
                }
                Action::Shard(i, cmd) => pending.extend(self.post(i, cmd)),
                Action::End { reason, retry } => {
                    sink.close();
                    return Some(if retry { SessionEnd::Lost(reason) } else { SessionEnd::Refused(reason) });
                }
            }
        }
        None
    }

    /// Carries out shard commands with no coordinator connected.
    fn carry_out_offline(&mut self, actions: Vec<Action>) {
        let mut pending: VecDeque<Action> = actions.into();
        while let Some(action) = pending.pop_front() {
            if let Action::Shard(i, cmd) = action {
                pending.extend(self.post(i, cmd));
            }
        }
    }

    /// Posts `cmd` to shard `i`; deployments a stopped shard cannot take are
    /// reported failed.
    fn post(&mut self, i: usize, cmd: ShardCommand) -> Vec<Action> {
        let Some(shard) = self.shards.get(i) else { return Vec::new() };
        match shard.mailbox.send(cmd) {
            Ok(()) => Vec::new(),
            Err(ShardCommand::Deploy(ds)) => ds
                .into_iter()
                .flat_map(|d| {
                    self.gateway.on_task(TaskReport {
                        job: d.job,
                        attempt: d.attempt,
                        state: ExecutionState::Failed,
                        failure: Some(TaskFailure::new(format!("shard {i} has stopped"))),
                        output: None,
                    })
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}
