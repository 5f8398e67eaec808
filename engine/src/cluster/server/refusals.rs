//! The coordinator's log of refused connections: every refusal names its peer,
//! but at most [`BURST`] lines go out per [`WINDOW`], so a flood of strangers
//! (or of connections past the cap) cannot fill a disk through the log. The
//! window's last line says that more are held back; what is held back is
//! counted and reported with the next line that goes out.

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Lines logged at most per window.
const BURST: u32 = 20;
/// The window.
const WINDOW: Duration = Duration::from_secs(10);

/// Refusals, logged within a budget.
#[derive(Default)]
pub(crate) struct RefusalLog(Mutex<Window>);

#[derive(Default)]
struct Window {
    start: Option<Instant>,
    logged: u32,
    /// Refusals not logged since the last line, and the last such peer.
    held: u64,
    last_held: Option<SocketAddr>,
}

impl RefusalLog {
    /// Logs (at warn) that a connection from `peer` was refused because of
    /// `why`, unless this window's lines are spent.
    pub(crate) fn refused(&self, peer: SocketAddr, why: &dyn Display) {
        if let Some(line) = self.line(Instant::now(), peer, why) {
            tracing::warn!(%peer, "{line}");
        }
    }

    /// The line to log for a refusal at `now`, if one goes out.
    fn line(&self, now: Instant, peer: SocketAddr, why: &dyn Display) -> Option<String> {
        let mut w = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if w.start.is_none_or(|s| now.duration_since(s) >= WINDOW) {
            w.start = Some(now);
            w.logged = 0;
        }
        if w.logged == BURST {
            w.held += 1;
            w.last_held = Some(peer);
            return None;
        }
        w.logged += 1;
        let mut line = format!("refused a connection from {peer}: {why}");
        if w.held > 0 {
            let last = w.last_held.map(|p| p.to_string()).unwrap_or_default();
            line += &format!(" ({} more refused and not logged before it, the last from {last})", w.held);
            w.held = 0;
        }
        if w.logged == BURST {
            let left = WINDOW.saturating_sub(now.duration_since(w.start.unwrap_or(now)));
            line += &format!("; further refusals in the next {} s are counted, not logged", left.as_secs().max(1));
        }
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_logged_within_a_budget_and_what_was_held_back_is_counted() {
        let log = RefusalLog::default();
        let t0 = Instant::now();
        let peer = |n: u16| SocketAddr::from(([127, 0, 0, 1], n));
        for n in 0..BURST as u16 - 1 {
            let line = log.line(t0, peer(n), &"wrong secret").expect("within the budget");
            assert_eq!(line, format!("refused a connection from 127.0.0.1:{n}: wrong secret"));
        }
        let last = log.line(t0 + Duration::from_secs(3), peer(19), &"wrong secret").expect("the budget's last line");
        assert_eq!(
            last,
            "refused a connection from 127.0.0.1:19: wrong secret; \
             further refusals in the next 7 s are counted, not logged"
        );
        for n in 0..1000 {
            assert_eq!(log.line(t0 + Duration::from_millis(n), peer(9000), &"wrong secret"), None);
        }
        assert_eq!(log.line(t0 + WINDOW - Duration::from_millis(1), peer(9001), &"x"), None);
        // The next window: the first line says what was held back.
        let line = log.line(t0 + WINDOW, peer(7), &"too many connections").expect("a new window");
        assert_eq!(
            line,
            "refused a connection from 127.0.0.1:7: too many connections \
             (1001 more refused and not logged before it, the last from 127.0.0.1:9001)"
        );
        let line = log.line(t0 + WINDOW, peer(8), &"x").unwrap();
        assert!(!line.contains("not logged"), "{line}");
    }
}
