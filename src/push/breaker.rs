//! A circuit breaker per provider: after `threshold` failures in a row, stop sending for
//! `cooldown`, then let one probe through; its result closes or reopens the circuit.
//!
//! Failures here are the retryable kind (timeouts, 5xx, 429): a dead token or a refused
//! payload is the device's or the message's fault, not the provider's.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The breaker's state; a std mutex guards it, held only for a few comparisons.
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out; everything else waits for its result.
    Probing,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// Whether a request may go out now.
    pub fn allow(&self) -> bool {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if Instant::now() >= until => {
                *state = State::Probing;
                tracing::info!("provider circuit half-open: probing");
                true
            }
            State::Open { .. } | State::Probing => false,
        }
    }

    /// Records a request the provider handled.
    pub fn success(&self) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *state == State::Probing {
            tracing::info!("provider circuit closed again");
        }
        *state = State::Closed { failures: 0 };
    }

    /// Records a request the provider failed (timeout, 5xx, 429).
    pub fn failure(&self) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let open = match *state {
            State::Closed { failures } if failures + 1 < self.threshold => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::Closed { .. } | State::Probing => true,
            // Late failures of requests sent before it opened do not extend the cooldown.
            State::Open { .. } => false,
        };
        if open {
            *state = State::Open {
                until: Instant::now() + self.cooldown,
            };
            tracing::warn!(cooldown = ?self.cooldown, "provider circuit open: pausing pushes to it");
        }
    }

    /// Whether requests are being held back now.
    pub fn is_open(&self) -> bool {
        !matches!(
            *self
                .state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            State::Closed { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_and_probes_after_cooldown() {
        let breaker = Breaker::new(3, Duration::from_secs(30));
        breaker.failure();
        breaker.failure();
        assert!(breaker.allow(), "two failures stay under the threshold");
        breaker.success();
        breaker.failure();
        breaker.failure();
        breaker.failure();
        assert!(!breaker.allow(), "open after three in a row");
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!breaker.allow());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(breaker.allow(), "one probe after the cooldown");
        assert!(!breaker.allow(), "only one");
        breaker.failure();
        assert!(!breaker.allow(), "a failed probe reopens");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(breaker.allow());
        breaker.success();
        assert!(breaker.allow() && breaker.allow() && !breaker.is_open());
    }
}
