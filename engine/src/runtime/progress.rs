//! Event-time and barrier progress over the input channels of a task: which
//! watermark and which checkpoint barrier it may pass on.

use shardflow_netstack::{CheckpointBarrier, Event};

/// Event-time and barrier progress over every input channel of a task (all its
/// gates). A watermark moves on when the slowest live channel's does; a barrier
/// is forwarded once every live channel has delivered it (alignment and
/// snapshots come with the checkpoint coordinator). A channel that has ended
/// holds back neither.
pub(crate) struct ChannelProgress {
    watermarks: Vec<u64>,
    barriers: Vec<u64>,
    ended: Vec<bool>,
    emitted_watermark: u64,
    /// The newest barrier seen and not yet forwarded.
    pending: Option<CheckpointBarrier>,
    /// The newest checkpoint id forwarded.
    forwarded: u64,
}

impl ChannelProgress {
    pub(crate) fn new(channels: usize) -> Self {
        ChannelProgress {
            watermarks: vec![0; channels],
            barriers: vec![0; channels],
            ended: vec![false; channels],
            emitted_watermark: 0,
            pending: None,
            forwarded: 0,
        }
    }

    /// Applies `event` from `channel`; returns the watermark and the barrier to
    /// forward, if any.
    pub(crate) fn on_event(&mut self, channel: usize, event: Event) -> (Option<u64>, Option<CheckpointBarrier>) {
        match event {
            Event::Watermark(w) => self.watermarks[channel] = self.watermarks[channel].max(w),
            Event::Barrier(b) => {
                self.barriers[channel] = self.barriers[channel].max(b.checkpoint_id);
                let newer = self.pending.map_or(self.forwarded, |p| p.checkpoint_id);
                if b.checkpoint_id > newer {
                    self.pending = Some(b);
                }
            }
            Event::EndOfPartition => self.ended[channel] = true,
        }
        (self.advance_watermark(), self.complete_barrier())
    }

    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.ended.len()).filter(|&c| !self.ended[c])
    }

    fn advance_watermark(&mut self) -> Option<u64> {
        let min = self.live().map(|c| self.watermarks[c]).min()?;
        (min > self.emitted_watermark).then(|| {
            self.emitted_watermark = min;
            min
        })
    }

    fn complete_barrier(&mut self) -> Option<CheckpointBarrier> {
        let b = self.pending?;
        if self.live().all(|c| self.barriers[c] >= b.checkpoint_id) {
            self.pending = None;
            self.forwarded = b.checkpoint_id;
            Some(b)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn barrier(id: u64) -> CheckpointBarrier {
        CheckpointBarrier { checkpoint_id: id, timestamp_ms: 0, stop: false }
    }

    #[test]
    fn the_watermark_follows_the_slowest_live_channel() {
        let mut p = ChannelProgress::new(2);
        assert_eq!(p.on_event(0, Event::Watermark(10)), (None, None), "channel 1 is still at 0");
        assert_eq!(p.on_event(1, Event::Watermark(5)), (Some(5), None));
        assert_eq!(p.on_event(1, Event::Watermark(7)), (Some(7), None));
        // Channel 1 ends: it no longer holds channel 0's watermark back.
        assert_eq!(p.on_event(1, Event::EndOfPartition), (Some(10), None));
        assert_eq!(p.on_event(0, Event::EndOfPartition), (None, None), "nothing live: end of input");
    }

    #[test]
    fn a_barrier_is_forwarded_once_every_live_channel_delivered_it() {
        let mut p = ChannelProgress::new(3);
        assert_eq!(p.on_event(0, Event::Barrier(barrier(1))), (None, None));
        assert_eq!(p.on_event(1, Event::Barrier(barrier(1))), (None, None));
        // Channel 2 ends without the barrier: the others complete it.
        assert_eq!(p.on_event(2, Event::EndOfPartition), (None, Some(barrier(1))));
        assert_eq!(p.on_event(0, Event::Barrier(barrier(2))), (None, None));
        assert_eq!(p.on_event(1, Event::Barrier(barrier(2))), (None, Some(barrier(2))));
        assert_eq!(p.on_event(1, Event::Barrier(barrier(2))), (None, None), "forwarded once");
    }
}
