//! Channel wiring: a task's input and output channels meet in a per-job table
//! keyed by (attempt epoch, edge, producer subtask, subpartition); whichever of
//! the two tasks is deployed first creates the channel and leaves the other end
//! waiting for its peer. Channels between workers need the TCP data plane,
//! which is not built yet; the coordinator keeps jobs whose edges would need
//! them inside one worker.

use std::collections::HashMap;
use std::time::Instant;

use shardflow_control::protocol::TaskInformation;
use shardflow_control::VertexId;
use shardflow_netstack::{channel, ChannelReceiver, ChannelSender};

use crate::config::EngineConfig;

/// A channel's key in its job's table: attempt epoch, edge, producer subtask,
/// subpartition.
pub(super) type ChannelKey = (u32, u32, u32, u32);

/// One end of a channel waiting for the task at the other end.
pub(super) enum Pending {
    Sender(ChannelSender),
    Receiver(ChannelReceiver),
}

/// A task's end of a channel: which [`Pending`] it is, and how a new channel splits
/// into it and the end left for the peer.
pub(super) trait ChannelEnd: Sized {
    fn from_pending(p: Pending) -> Result<Self, Pending>;
    fn split(tx: ChannelSender, rx: ChannelReceiver) -> (Self, Pending);
}

impl ChannelEnd for ChannelSender {
    fn from_pending(p: Pending) -> Result<Self, Pending> {
        match p {
            Pending::Sender(tx) => Ok(tx),
            other => Err(other),
        }
    }
    fn split(tx: ChannelSender, rx: ChannelReceiver) -> (Self, Pending) {
        (tx, Pending::Receiver(rx))
    }
}

impl ChannelEnd for ChannelReceiver {
    fn from_pending(p: Pending) -> Result<Self, Pending> {
        match p {
            Pending::Receiver(rx) => Ok(rx),
            other => Err(other),
        }
    }
    fn split(tx: ChannelSender, rx: ChannelReceiver) -> (Self, Pending) {
        (rx, Pending::Sender(tx))
    }
}

/// What the worker keeps for a job while it has tasks or slots here.
#[derive(Default)]
pub(super) struct JobHere {
    /// Channel ends waiting for the task at the other end: whichever task comes
    /// first creates the channel.
    wiring: HashMap<ChannelKey, Pending>,
    /// Vertex information as received (archived) and read, by vertex and epoch.
    pub(super) information: HashMap<(VertexId, u32), (Vec<u8>, TaskInformation)>,
    /// The clock origin shared by the tasks of one attempt epoch here: record
    /// timestamps count from it.
    pub(super) starts: HashMap<u32, Instant>,
}

impl JobHere {
    /// This task's end of channel `key`: the end its peer left waiting, or one end
    /// of a new channel whose other end now waits for the peer.
    pub(super) fn claim<E: ChannelEnd>(&mut self, key: ChannelKey, cfg: &EngineConfig) -> E {
        match self.wiring.remove(&key).map(E::from_pending) {
            Some(Ok(end)) => end,
            left => {
                let max_in_flight = cfg.exclusive_credits + cfg.floating_credits;
                let (tx, rx) = channel(cfg.exclusive_credits, max_in_flight, cfg.event_room);
                let (mine, theirs) = E::split(tx, rx);
                if left.is_none() {
                    self.wiring.insert(key, theirs);
                }
                mine
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_task_gets_the_end_the_first_left() {
        let cfg = EngineConfig::default();
        let mut job = JobHere::default();
        let tx: ChannelSender = job.claim((0, 0, 0, 0), &cfg);
        let rx: ChannelReceiver = job.claim((0, 0, 0, 0), &cfg);
        assert_eq!(tx.credits(), cfg.exclusive_credits, "one channel: the receiver's grant is the sender's");
        rx.grant(1);
        assert_eq!(tx.credits(), cfg.exclusive_credits + 1);
        assert!(job.wiring.is_empty(), "nothing left waiting");
        let _: ChannelReceiver = job.claim((1, 0, 0, 0), &cfg);
        assert_eq!(job.wiring.len(), 1, "another epoch's channel waits for its producer");
    }
}
