//! Retry timing and the cheap randomness behind it, shared by the push senders, the job
//! workers and the EventSource `retry:` hint.

use std::hash::BuildHasher;
use std::time::Duration;

/// Retry policy for one delivery: how often, and how long to wait between attempts.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`: `base·2^(attempt-1)`, of which the upper half is
    /// random ("equal jitter"), then capped; so waits never shrink from one attempt to the next.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let exponential = self
            .base
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)));
        let jittered = exponential / 2 + exponential.mul_f64(random.clamp(0.0, 1.0) / 2.0);
        jittered.min(self.cap)
    }
}

/// A random number. Each `RandomState` has fresh keys: enough for jitter and ids, not for
/// secrets (those use `getrandom`).
pub fn random_u64() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now())
}

/// A random number in `[0, 1)`.
pub fn random_fraction() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            max_attempts: 8,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(10),
        };
        assert_eq!(policy.delay(1, 0.0), Duration::from_millis(500));
        assert_eq!(policy.delay(1, 1.0), Duration::from_secs(1));
        assert_eq!(policy.delay(2, 0.0), Duration::from_secs(1));
        assert_eq!(policy.delay(3, 0.5), Duration::from_secs(3));
        assert_eq!(policy.delay(10, 1.0), Duration::from_secs(10));
        for attempt in 1..40 {
            assert!(
                policy.delay(attempt + 1, 0.0) >= policy.delay(attempt, 1.0),
                "waits never shrink"
            );
        }
    }

    #[test]
    fn fractions_stay_in_range() {
        for _ in 0..100 {
            assert!((0.0..1.0).contains(&random_fraction()));
        }
    }
}
