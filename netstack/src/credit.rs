//! The receiver's credit ledger of one input gate (Flink's credit-based protocol),
//! sans I/O: it decides, the channels apply.
//!
//! Every input channel starts with `exclusive` credits. The gate also holds a pool of
//! `floating` credits that go to channels announcing a backlog they have no credit
//! for. When the consumer is done with a buffer, its credit goes back to the channel
//! it came from, unless that channel holds floating credits and announces no backlog,
//! in which case a floating credit returns to the pool. Events need no credit.

/// Where a consumed buffer's credit goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recycle {
    /// Re-grant it to the same channel.
    ToChannel,
    /// Return it to the gate's floating pool.
    ToPool,
}

/// Receiver-side credit bookkeeping of one gate.
#[derive(Debug, Clone)]
pub struct CreditLedger {
    exclusive: u32,
    floating_total: u32,
    floating_free: u32,
    floating_held: Vec<u32>,
}

impl CreditLedger {
    /// A gate of `channels` channels with `exclusive` credits each and `floating`
    /// shared ones.
    pub fn new(channels: usize, exclusive: u32, floating: u32) -> Self {
        CreditLedger { exclusive, floating_total: floating, floating_free: floating, floating_held: vec![0; channels] }
    }

    /// Credits each channel starts with.
    pub fn initial_credits(&self) -> u32 {
        self.exclusive
    }

    /// Most buffers that can be in flight on one channel at once.
    pub fn max_in_flight_per_channel(&self) -> u32 {
        self.exclusive + self.floating_total
    }

    /// The consumer finished a buffer from `channel`, whose sender announces
    /// `backlog` buffers waiting.
    pub fn on_consumed(&mut self, channel: usize, backlog: u32) -> Recycle {
        let held = &mut self.floating_held[channel];
        if *held > 0 && backlog == 0 {
            *held -= 1;
            self.floating_free += 1;
            Recycle::ToPool
        } else {
            Recycle::ToChannel
        }
    }

    /// `channel` announces `backlog` buffers and has `available` unused credits:
    /// how many floating credits to grant it now (taken from the pool).
    pub fn grant_floating(&mut self, channel: usize, backlog: u32, available: u32) -> u32 {
        let want = backlog.saturating_sub(available);
        let grant = want.min(self.floating_free);
        self.floating_free -= grant;
        self.floating_held[channel] += grant;
        grant
    }

    /// Floating credits not assigned to any channel.
    pub fn floating_free(&self) -> u32 {
        self.floating_free
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_credits_cycle_back_to_their_channel() {
        let mut l = CreditLedger::new(2, 2, 1);
        assert_eq!(l.initial_credits(), 2);
        assert_eq!(l.on_consumed(0, 0), Recycle::ToChannel);
        assert_eq!(l.floating_free(), 1);
    }

    #[test]
    fn floating_credits_follow_backlog_and_come_back() {
        let mut l = CreditLedger::new(2, 1, 2);
        assert_eq!(l.grant_floating(0, 3, 0), 2, "limited by the pool");
        assert_eq!(l.grant_floating(1, 5, 0), 0, "pool empty");
        // channel 0 still has backlog: the credit stays with it
        assert_eq!(l.on_consumed(0, 1), Recycle::ToChannel);
        // no backlog any more: floating credits go home one by one
        assert_eq!(l.on_consumed(0, 0), Recycle::ToPool);
        assert_eq!(l.on_consumed(0, 0), Recycle::ToPool);
        assert_eq!(l.on_consumed(0, 0), Recycle::ToChannel, "the exclusive one");
        assert_eq!(l.floating_free(), 2);
        assert_eq!(l.grant_floating(1, 5, 1), 2);
    }

    #[test]
    fn no_grant_when_credits_cover_the_backlog() {
        let mut l = CreditLedger::new(1, 2, 4);
        assert_eq!(l.grant_floating(0, 2, 2), 0);
        assert_eq!(l.grant_floating(0, 3, 2), 1);
        assert_eq!(l.max_in_flight_per_channel(), 6);
    }
}
