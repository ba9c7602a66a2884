//! One keepalive clock for every EventSource connection.
//!
//! A timer per connection costs memory on every idle connection and a timer-wheel entry to
//! rearm after every frame. Instead one task ticks every keepalive interval and beats every
//! user's cell that has streams ([`StateHub::beat`]); a stream that wrote nothing since the
//! previous tick then writes a comment. An idle stream thus gets one comment per interval and
//! is never silent for two. At shutdown the same task closes every cell, and each stream writes
//! its goodbye: a stream waits on its cell and nothing else.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::state::StateHub;

/// Beats the hub every `period` until `cancel`, then closes every stream.
pub async fn run(hub: Arc<StateHub>, period: Duration, cancel: CancellationToken) {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = interval.tick() => hub.beat(),
        }
    }
    hub.close_streams();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn beats_once_per_period_then_closes_at_shutdown() {
        let hub = Arc::new(StateHub::new(10, 10));
        let mut alice = hub.subscribe("alice").unwrap();
        let cancel = CancellationToken::new();
        let clock = tokio::spawn(run(hub.clone(), Duration::from_secs(25), cancel.clone()));
        let start = tokio::time::Instant::now();
        alice.receiver.changed().await;
        assert_eq!(start.elapsed(), Duration::from_secs(25));
        assert_eq!(alice.receiver.borrow_and_update().beats, 1);
        alice.receiver.changed().await;
        assert_eq!(start.elapsed(), Duration::from_secs(50));
        assert_eq!(alice.receiver.borrow_and_update().beats, 2);
        cancel.cancel();
        clock.await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(50), "closed at once");
        assert!(alice.receiver.borrow_and_update().closing);
    }
}
