//! Heartbeat tracking, sans I/O: the driver reports traffic with the time it saw it
//! and asks which targets have been silent longer than the timeout.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Last-heard times of monitored targets.
#[derive(Debug, Clone)]
pub struct HeartbeatMonitor<K> {
    timeout: Duration,
    last: BTreeMap<K, Instant>,
}

impl<K: Ord + Copy> HeartbeatMonitor<K> {
    /// Targets silent for longer than `timeout` expire.
    pub fn new(timeout: Duration) -> Self {
        HeartbeatMonitor { timeout, last: BTreeMap::new() }
    }

    /// The timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Starts monitoring `k` (or records traffic from it).
    pub fn heard(&mut self, k: K, now: Instant) {
        self.last.insert(k, now);
    }

    /// Stops monitoring `k`.
    pub fn forget(&mut self, k: K) {
        self.last.remove(&k);
    }

    /// Time since `k` was last heard, if monitored.
    pub fn silence(&self, k: K, now: Instant) -> Option<Duration> {
        self.last.get(&k).map(|&t| now.saturating_duration_since(t))
    }

    /// Removes and returns every target silent for longer than the timeout.
    pub fn expire(&mut self, now: Instant) -> Vec<K> {
        let dead: Vec<K> = self
            .last
            .iter()
            .filter(|(_, &t)| now.saturating_duration_since(t) > self.timeout)
            .map(|(&k, _)| k)
            .collect();
        for k in &dead {
            self.last.remove(k);
        }
        dead
    }

    /// When the next target would expire if nothing is heard.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.last.values().min().map(|&t| t + self.timeout + Duration::from_nanos(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_targets_expire_after_the_timeout_and_only_then() {
        let t0 = Instant::now();
        let mut m = HeartbeatMonitor::new(Duration::from_secs(5));
        m.heard(1u32, t0);
        m.heard(2u32, t0 + Duration::from_secs(3));
        assert!(m.expire(t0 + Duration::from_secs(5)).is_empty());
        assert_eq!(m.next_deadline(), Some(t0 + Duration::from_secs(5) + Duration::from_nanos(1)));
        assert_eq!(m.expire(t0 + Duration::from_millis(5001)), vec![1]);
        m.heard(2, t0 + Duration::from_secs(7));
        assert!(m.expire(t0 + Duration::from_secs(11)).is_empty());
        assert_eq!(m.expire(t0 + Duration::from_secs(13)), vec![2]);
        assert_eq!(m.next_deadline(), None);
    }
}
