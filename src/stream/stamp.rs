//! Moments of this process in the few bytes a user's cell can spare: every user in memory
//! carries two, and an `Option<Instant>` takes 16 bytes where these take 8 and 4.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The moment every stamp counts from: the first one taken.
fn since_epoch(at: Instant) -> Duration {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    at.saturating_duration_since(*EPOCH.get_or_init(Instant::now))
}

/// A moment to the nanosecond (the latency of a state to its streams); the default is never.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp(u64);

impl Stamp {
    /// Now.
    pub fn now() -> Stamp {
        Stamp::at(Instant::now())
    }

    /// `at` (one before the epoch counts as the epoch).
    pub fn at(at: Instant) -> Stamp {
        let nanos = u64::try_from(since_epoch(at).as_nanos()).unwrap_or(u64::MAX);
        Stamp(nanos.max(1))
    }

    /// The time since the stamp; None if it was never set.
    pub fn elapsed(self) -> Option<Duration> {
        (self.0 != 0)
            .then(|| since_epoch(Instant::now()).saturating_sub(Duration::from_nanos(self.0)))
    }
}

/// A moment to the second, rounded up (when a user was last touched, against a cutoff
/// `http.idle_user_secs` back); the default is never.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecondStamp(u32);

impl SecondStamp {
    /// Now.
    pub fn now() -> SecondStamp {
        SecondStamp::at(Instant::now())
    }

    /// `at`, rounded up to the second.
    pub fn at(at: Instant) -> SecondStamp {
        let since = since_epoch(at);
        let secs = since.as_secs() + u64::from(since.subsec_nanos() > 0);
        SecondStamp(u32::try_from(secs).unwrap_or(u32::MAX).max(1))
    }

    /// Whether the stamp is surely before `cutoff` (never is before every moment): both are
    /// rounded up, so a stamp is never found before a cutoff it is not before, at worst found
    /// so a second late.
    pub fn is_before(self, cutoff: Instant) -> bool {
        self.0 < SecondStamp::at(cutoff).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_keep_their_order_and_never_is_never() {
        assert_eq!(Stamp::default().elapsed(), None);
        let then = Stamp::now();
        let elapsed = then.elapsed().expect("set");
        assert!(elapsed < Duration::from_secs(60), "{elapsed:?}");
        let earlier = Instant::now();
        let touched = SecondStamp::at(earlier);
        assert!(
            SecondStamp::default().is_before(earlier),
            "never is before all"
        );
        assert!(!touched.is_before(earlier), "not before its own moment");
        assert!(
            !touched.is_before(earlier - Duration::from_millis(1)),
            "nor before an earlier one"
        );
        assert!(touched.is_before(earlier + Duration::from_secs(2)));
    }
}
