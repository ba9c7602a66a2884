//! One keepalive clock for every EventSource connection.
//!
//! A timer per connection costs memory on every idle connection and a timer-wheel entry to
//! rearm after every frame. Instead one task ticks every keepalive interval, and on each tick a
//! connection that wrote nothing since the previous tick writes a comment. An idle stream thus
//! gets one comment per interval and is never silent for two.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// A connection's view of the shared keepalive clock.
#[derive(Clone)]
pub struct Beats(watch::Receiver<u64>);

impl Beats {
    /// Starts the clock on the current runtime; it stops when `cancel` fires.
    pub fn start(period: Duration, cancel: CancellationToken) -> Beats {
        let (ticks, receiver) = watch::channel(0u64);
        tokio::spawn(async move {
            let mut interval =
                tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = interval.tick() => ticks.send_modify(|tick| *tick += 1),
                }
            }
        });
        Beats(receiver)
    }

    /// Waits for the next tick. Once the clock has stopped (shutdown), it never returns.
    pub async fn next(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ticks_once_per_period_for_every_listener() {
        let cancel = CancellationToken::new();
        let mut first = Beats::start(Duration::from_secs(25), cancel.clone());
        let mut second = first.clone();
        let start = tokio::time::Instant::now();
        first.next().await;
        assert_eq!(start.elapsed(), Duration::from_secs(25));
        second.next().await;
        assert_eq!(start.elapsed(), Duration::from_secs(25), "the same tick");
        first.next().await;
        assert_eq!(start.elapsed(), Duration::from_secs(50));
        second.next().await;
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(50),
            "a missed tick is not queued twice"
        );
        cancel.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(3600), second.next()).await;
        assert!(stopped.is_err(), "no ticks after the clock stopped");
    }
}
