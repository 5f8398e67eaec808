//! Restart strategies (Flink's `none`, `fixed-delay`, `exponential-delay`), sans
//! I/O: a failure at `now` gives a decision, restart at an instant or give up.
//! Until checkpoints exist a restart runs the job from scratch.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::error::ControlError;

/// How a failed job is restarted.
#[derive(Debug, Clone, PartialEq)]
pub enum RestartStrategy {
    /// Never: the first failure fails the job.
    None,
    /// Up to `attempts` restarts, each after `delay`.
    FixedDelay {
        /// Restarts allowed.
        attempts: u32,
        /// Wait before each.
        delay: Duration,
    },
    /// Restarts with a delay that starts at `initial`, grows by `multiplier` per
    /// failure up to `max`, and falls back to `initial` after `reset` without one.
    ExponentialDelay {
        /// First delay.
        initial: Duration,
        /// Largest delay.
        max: Duration,
        /// Growth per failure (≥ 1).
        multiplier: f64,
        /// A failure after this long without one starts over at `initial`.
        reset: Duration,
        /// Restarts allowed in all.
        attempts: u32,
    },
}

impl Default for RestartStrategy {
    /// `fixed-delay` with 3 attempts 1 s apart.
    fn default() -> Self {
        RestartStrategy::FixedDelay { attempts: 3, delay: Duration::from_secs(1) }
    }
}

/// Parses `5s`, `100ms`, `2m`, `250us`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("'{s}' is not a duration (like 500ms, 2s, 1m)"))?;
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (us, ms, s, m)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("'{s}' is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl FromStr for RestartStrategy {
    type Err = ControlError;

    /// `none`, `fixed-delay[:attempts=N,delay=D]`,
    /// `exponential-delay[:initial=D,max=D,multiplier=F,reset=D,attempts=N]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| ControlError::InvalidRestartStrategy { spec: s.to_string(), reason };
        let (name, params) = s.split_once(':').unwrap_or((s, ""));
        let mut strategy = match name.trim() {
            "none" => RestartStrategy::None,
            "fixed-delay" => RestartStrategy::default(),
            "exponential-delay" => RestartStrategy::ExponentialDelay {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
                multiplier: 2.0,
                reset: Duration::from_secs(3600),
                attempts: u32::MAX,
            },
            other => return Err(bad(format!("unknown strategy '{other}' (none, fixed-delay, exponential-delay)"))),
        };
        for kv in params.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| bad(format!("'{kv}' is not key=value")))?;
            let dur = || parse_duration(v).map_err(bad);
            let count = || v.parse::<u32>().map_err(|e| bad(format!("{k}: {e}")));
            match (&mut strategy, k) {
                (RestartStrategy::FixedDelay { attempts, .. }, "attempts")
                | (RestartStrategy::ExponentialDelay { attempts, .. }, "attempts") => *attempts = count()?,
                (RestartStrategy::FixedDelay { delay, .. }, "delay") => *delay = dur()?,
                (RestartStrategy::ExponentialDelay { initial, .. }, "initial") => *initial = dur()?,
                (RestartStrategy::ExponentialDelay { max, .. }, "max") => *max = dur()?,
                (RestartStrategy::ExponentialDelay { reset, .. }, "reset") => *reset = dur()?,
                (RestartStrategy::ExponentialDelay { multiplier, .. }, "multiplier") => {
                    *multiplier = v
                        .parse::<f64>()
                        .ok()
                        .filter(|m| *m >= 1.0)
                        .ok_or_else(|| bad(format!("multiplier '{v}' must be a number ≥ 1")))?
                }
                _ => return Err(bad(format!("'{name}' has no parameter '{k}'"))),
            }
        }
        Ok(strategy)
    }
}

impl fmt::Display for RestartStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartStrategy::None => f.write_str("none"),
            RestartStrategy::FixedDelay { attempts, delay } => {
                write!(f, "fixed-delay:attempts={attempts},delay={}ms", delay.as_millis())
            }
            RestartStrategy::ExponentialDelay { initial, max, multiplier, reset, attempts } => write!(
                f,
                "exponential-delay:initial={}ms,max={}ms,multiplier={multiplier},reset={}ms,attempts={attempts}",
                initial.as_millis(),
                max.as_millis(),
                reset.as_millis()
            ),
        }
    }
}

/// What to do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    /// Restart at this instant.
    RestartAt(Instant),
    /// Fail the job: the strategy allows no more restarts.
    GiveUp,
}

/// A strategy plus the job's failure history.
#[derive(Debug, Clone)]
pub struct RestartTracker {
    strategy: RestartStrategy,
    restarts: u32,
    backoff: Option<Duration>,
    last_failure: Option<Instant>,
}

impl RestartTracker {
    /// A tracker with no failures yet.
    pub fn new(strategy: RestartStrategy) -> Self {
        RestartTracker { strategy, restarts: 0, backoff: None, last_failure: None }
    }

    /// A tracker that counts on from `restarts` earlier restarts (a job a new
    /// leader recovered from its job store).
    pub fn resumed(strategy: RestartStrategy, restarts: u32) -> Self {
        RestartTracker { restarts, ..Self::new(strategy) }
    }

    /// Restarts decided so far.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// The strategy.
    pub fn strategy(&self) -> &RestartStrategy {
        &self.strategy
    }

    /// Decides about a failure at `now`.
    pub fn on_failure(&mut self, now: Instant) -> RestartDecision {
        let decision = match &self.strategy {
            RestartStrategy::None => RestartDecision::GiveUp,
            RestartStrategy::FixedDelay { attempts, delay } => {
                if self.restarts >= *attempts {
                    RestartDecision::GiveUp
                } else {
                    RestartDecision::RestartAt(now + *delay)
                }
            }
            RestartStrategy::ExponentialDelay { initial, max, multiplier, reset, attempts } => {
                if self.restarts >= *attempts {
                    RestartDecision::GiveUp
                } else {
                    let quiet = self.last_failure.is_some_and(|t| now.saturating_duration_since(t) >= *reset);
                    let next = match self.backoff {
                        Some(b) if !quiet => b.mul_f64(*multiplier).min(*max),
                        _ => *initial,
                    };
                    self.backoff = Some(next);
                    RestartDecision::RestartAt(now + next)
                }
            }
        };
        self.last_failure = Some(now);
        if matches!(decision, RestartDecision::RestartAt(_)) {
            self.restarts += 1;
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn none_gives_up_at_once() {
        let mut t = RestartTracker::new("none".parse().unwrap());
        assert_eq!(t.on_failure(Instant::now()), RestartDecision::GiveUp);
    }

    #[test]
    fn fixed_delay_restarts_n_times_after_the_delay() {
        let t0 = Instant::now();
        let mut t = RestartTracker::new("fixed-delay:attempts=2,delay=250ms".parse().unwrap());
        assert_eq!(t.on_failure(t0), RestartDecision::RestartAt(t0 + 250 * MS));
        assert_eq!(t.on_failure(t0 + MS), RestartDecision::RestartAt(t0 + 251 * MS));
        assert_eq!(t.on_failure(t0 + 2 * MS), RestartDecision::GiveUp);
        assert_eq!(t.restarts(), 2);
    }

    #[test]
    fn exponential_delay_grows_caps_and_resets() {
        let t0 = Instant::now();
        let s: RestartStrategy =
            "exponential-delay:initial=100ms,max=350ms,multiplier=2,reset=10s,attempts=10".parse().unwrap();
        let mut t = RestartTracker::new(s);
        let delays: Vec<Duration> = (0..4)
            .map(|i| {
                let now = t0 + i * MS;
                match t.on_failure(now) {
                    RestartDecision::RestartAt(at) => at - now,
                    RestartDecision::GiveUp => panic!("gave up"),
                }
            })
            .collect();
        assert_eq!(delays, vec![100 * MS, 200 * MS, 350 * MS, 350 * MS]);
        let later = t0 + Duration::from_secs(20);
        assert_eq!(t.on_failure(later), RestartDecision::RestartAt(later + 100 * MS));
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        for bad in ["sometimes", "fixed-delay:tries=3", "fixed-delay:delay=soon", "exponential-delay:multiplier=0.5"] {
            let e = bad.parse::<RestartStrategy>().unwrap_err();
            assert!(matches!(e, ControlError::InvalidRestartStrategy { .. }), "{bad}: {e}");
        }
        let s: RestartStrategy = "fixed-delay:attempts=5,delay=2s".parse().unwrap();
        assert_eq!(s.to_string().parse::<RestartStrategy>().unwrap(), s);
    }
}
