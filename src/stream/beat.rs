//! One keepalive clock for every EventSource connection.
//!
//! A timer per connection costs memory on every idle connection and a timer-wheel entry to
//! rearm after every frame. Instead one task beats the cells of users that have streams
//! ([`StateHub::beat_slice`]); a stream that wrote nothing since the previous beat then writes
//! a comment. An idle stream thus gets one comment per interval and is never silent for two.
//! The users are split into [`SLICES`] fixed slices ([`super::users`]) and the clock beats one
//! slice per `interval / SLICES`: with 100,000 streams, beating all at once would mean 100,000
//! writes in one burst, and every event arriving meanwhile would wait for them. At shutdown the same task
//! closes every cell, and each stream writes its goodbye: a stream waits on its cell and
//! nothing else.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::state::StateHub;
use super::users::SLICES;

/// Beats each slice of the hub once every `period` until `cancel`, then closes every stream.
pub async fn run(hub: Arc<StateHub>, period: Duration, cancel: CancellationToken) {
    let step = period / SLICES as u32;
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + step, step);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut slice = 0;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = interval.tick() => {
                hub.beat_slice(slice);
                slice = (slice + 1) % SLICES;
            }
        }
    }
    hub.close_streams();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn beats_each_user_once_per_period_spread_over_it_then_closes_at_shutdown() {
        let period = Duration::from_secs(32);
        let hub = Arc::new(StateHub::new(100, 100));
        let users: Vec<String> = (0..64).map(|n| format!("user{n}")).collect();
        let mut subscriptions: Vec<_> = users.iter().map(|u| hub.subscribe(u).unwrap()).collect();
        let cancel = CancellationToken::new();
        let clock = tokio::spawn(run(hub.clone(), period, cancel.clone()));
        let step = period / SLICES as u32;
        let start = tokio::time::Instant::now();
        let mut first_beats = std::collections::BTreeMap::new();
        for tick in 1..=2 * SLICES as u32 {
            // Halfway between this tick and the next.
            tokio::time::sleep_until(start + step * tick + step / 2).await;
            for (n, subscription) in subscriptions.iter_mut().enumerate() {
                if subscription.receiver.has_changed() {
                    let beats = subscription.receiver.borrow_and_update().signals.beats();
                    let first = *first_beats.entry(n).or_insert(tick);
                    assert_eq!(
                        tick,
                        first + (beats - 1) * SLICES as u32,
                        "user{n}: one beat per period, a period apart"
                    );
                }
            }
        }
        assert_eq!(first_beats.len(), users.len(), "every user beaten");
        let slices_used: std::collections::BTreeSet<_> = first_beats.values().collect();
        assert!(
            slices_used.len() > users.len() / 2,
            "spread over the period: {slices_used:?}"
        );
        cancel.cancel();
        clock.await.unwrap();
        assert!(
            subscriptions[0]
                .receiver
                .borrow_and_update()
                .signals
                .is_closing()
        );
    }
}
