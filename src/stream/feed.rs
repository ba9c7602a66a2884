//! One EventSource connection's frames: the `retry:` hint, the current state when the client
//! missed something, then a frame per state change, with keepalives in between.
//!
//! The feed knows nothing of HTTP: it yields the bytes to write. It compares each new state
//! with the last one the client saw, so a client that falls behind skips straight to the newest
//! state, and a reconnect with `Last-Event-ID` gets the current state only if it moved.

use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::jmap::{self, TypeFilter};
use super::legacy;
use super::state::{Subscription, UserState};

/// Which wire format a connection speaks.
#[derive(Debug, Clone)]
pub enum Format {
    /// FastMail's `event: push` with the three modseqs.
    Legacy,
    /// RFC 8620 `event: state` StateChange objects.
    Jmap {
        filter: TypeFilter,
        /// `closeafter=state`: end the response after one state event.
        close_after_state: bool,
        /// `ping=N`: a `ping` event after N quiet seconds; None for `ping=0`.
        ping: Option<Duration>,
    },
}

/// What a feed needs besides its subscription.
pub struct FeedOptions {
    pub format: Format,
    /// Suggested reconnection delay, sent once as `retry:`.
    pub retry_ms: u64,
    /// Quiet time after which a keepalive comment is sent.
    pub keepalive: Duration,
    /// Counts frames that carried state.
    pub sent: Counter,
    /// Time from a state change to its frame being handed to the connection.
    pub latency: Histogram,
}

/// Streams one connection's frames until the client goes, the user's cell closes, or shutdown.
/// `seen` is what the client's `Last-Event-ID` says it has (None: nothing).
pub fn feed(
    user: String,
    subscription: Subscription,
    seen: Option<UserState>,
    options: FeedOptions,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static {
    let feed = Feed {
        user,
        subscription,
        seen: seen.unwrap_or_default(),
        next_beat: Instant::now() + options.beat_interval(),
        options,
        shutdown,
        started: false,
        finished: false,
        reminders_closed: false,
    };
    futures_util::stream::unfold(feed, |mut feed| async move {
        let frame = feed.next_frame().await?;
        Some((Ok(frame), feed))
    })
}

struct Feed {
    user: String,
    subscription: Subscription,
    seen: UserState,
    options: FeedOptions,
    shutdown: CancellationToken,
    next_beat: Instant,
    started: bool,
    finished: bool,
    /// Set once the reminder channel is gone, so the loop stops polling it.
    reminders_closed: bool,
}

impl FeedOptions {
    fn beat_interval(&self) -> Duration {
        match &self.format {
            Format::Jmap {
                ping: Some(ping), ..
            } => *ping,
            _ => self.keepalive,
        }
    }
}

impl Feed {
    async fn next_frame(&mut self) -> Option<Bytes> {
        if self.finished {
            return None;
        }
        if self.shutdown.is_cancelled() {
            return Some(self.goodbye());
        }
        let mut out = String::new();
        if !self.started {
            self.started = true;
            out.push_str(&format!("retry: {}\n\n", self.options.retry_ms));
            self.write_state_if_moved(&mut out);
            return Some(Bytes::from(out));
        }
        loop {
            if self.write_state_if_moved(&mut out) {
                return Some(Bytes::from(out));
            }
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Some(self.goodbye()),
                changed = self.subscription.receiver.changed() => {
                    // The hub never drops a cell while it runs; if it does, the stream ends.
                    changed.ok()?;
                }
                reminder = self.subscription.reminders.recv(), if !self.reminders_closed => match reminder {
                    Ok(frame) => return Some(Bytes::from(frame.to_string())),
                    // Too slow for the backlog: the oldest reminders are skipped.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    // The hub dropped the channel: reminders are over, state goes on.
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => self.reminders_closed = true,
                },
                () = tokio::time::sleep_until(self.next_beat) => {
                    self.write_beat(&mut out);
                    return Some(Bytes::from(out));
                }
            }
        }
    }

    /// The last frame before a shutdown closes the stream: the reconnection hint again, so
    /// clients come back (to this node once restarted, or another) after that delay.
    fn goodbye(&mut self) -> Bytes {
        self.finished = true;
        Bytes::from(format!("retry: {}\n\n", self.options.retry_ms))
    }

    /// Appends a state frame if the state moved past what the client saw.
    fn write_state_if_moved(&mut self, out: &mut String) -> bool {
        let cell = *self.subscription.receiver.borrow_and_update();
        let now = cell.state;
        let wrote = match &self.options.format {
            Format::Legacy => {
                let moved = now.is_newer_than(&self.seen);
                if moved {
                    legacy::encode(&now, out);
                }
                moved
            }
            Format::Jmap {
                filter,
                close_after_state,
                ..
            } => {
                let wrote = jmap::encode_state(&self.user, &self.seen, &now, filter, out);
                self.finished = wrote && *close_after_state;
                wrote
            }
        };
        self.seen = now;
        if wrote {
            self.options.sent.inc();
            if let Some(changed_at) = cell.changed_at {
                self.options
                    .latency
                    .observe(changed_at.elapsed().as_secs_f64());
            }
            self.next_beat = Instant::now() + self.options.beat_interval();
        }
        wrote
    }

    fn write_beat(&mut self, out: &mut String) {
        match &self.options.format {
            Format::Jmap {
                ping: Some(ping), ..
            } => jmap::encode_ping(ping.as_secs(), out),
            _ => out.push_str(":\n\n"),
        }
        self.next_beat = Instant::now() + self.options.beat_interval();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::StateChange;
    use crate::stream::state::StateHub;
    use futures_util::StreamExt;

    fn mail(modseq: u64) -> StateChange {
        StateChange {
            mail: Some(modseq),
            ..StateChange::default()
        }
    }

    fn options(format: Format) -> FeedOptions {
        FeedOptions {
            format,
            retry_ms: 5000,
            keepalive: Duration::from_secs(25),
            sent: Counter::default(),
            latency: Histogram::new([0.001]),
        }
    }

    async fn next(
        stream: &mut (impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Unpin),
    ) -> String {
        let frame = stream.next().await.expect("stream ended").unwrap();
        String::from_utf8(frame.to_vec()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn legacy_feed_sends_current_then_changes_and_keepalives() {
        let hub = StateHub::new(10, 10);
        hub.apply("alice", &mail(4));
        let shutdown = CancellationToken::new();
        let stream = feed(
            "alice".into(),
            hub.subscribe("alice").unwrap(),
            None,
            options(Format::Legacy),
            shutdown.clone(),
        );
        let mut stream = Box::pin(stream);
        assert_eq!(
            next(&mut stream).await,
            format!("retry: 5000\n\n{}", frame(4))
        );
        hub.apply("alice", &mail(5));
        hub.apply("alice", &mail(6));
        assert_eq!(next(&mut stream).await, frame(6));
        assert_eq!(next(&mut stream).await, ":\n\n");
        shutdown.cancel();
        assert_eq!(
            next(&mut stream).await,
            "retry: 5000\n\n",
            "told to come back"
        );
        assert!(stream.next().await.is_none());
    }

    fn frame(mail: u64) -> String {
        let mut out = String::new();
        legacy::encode(
            &UserState {
                mail,
                ..UserState::default()
            },
            &mut out,
        );
        out
    }

    #[tokio::test(start_paused = true)]
    async fn reconnect_gets_state_only_when_it_moved() {
        let hub = StateHub::new(10, 10);
        hub.apply("alice", &mail(4));
        let seen = UserState::from_event_id("m4c0a0");
        let stream = feed(
            "alice".into(),
            hub.subscribe("alice").unwrap(),
            seen,
            options(Format::Legacy),
            CancellationToken::new(),
        );
        let mut stream = Box::pin(stream);
        assert_eq!(next(&mut stream).await, "retry: 5000\n\n");
        let seen = UserState::from_event_id("m3c0a0");
        let stream = feed(
            "alice".into(),
            hub.subscribe("alice").unwrap(),
            seen,
            options(Format::Legacy),
            CancellationToken::new(),
        );
        let mut stream = Box::pin(stream);
        assert_eq!(
            next(&mut stream).await,
            format!("retry: 5000\n\n{}", frame(4))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn jmap_pings_and_close_after_state() {
        let hub = StateHub::new(10, 10);
        let format = Format::Jmap {
            filter: TypeFilter::parse("*").unwrap(),
            close_after_state: true,
            ping: Some(Duration::from_secs(30)),
        };
        let stream = feed(
            "alice".into(),
            hub.subscribe("alice").unwrap(),
            None,
            options(format),
            CancellationToken::new(),
        );
        let mut stream = Box::pin(stream);
        assert_eq!(next(&mut stream).await, "retry: 5000\n\n");
        let before = Instant::now();
        assert_eq!(
            next(&mut stream).await,
            "event: ping\ndata: {\"interval\":30}\n\n"
        );
        assert_eq!(Instant::now() - before, Duration::from_secs(30));
        hub.apply("alice", &mail(9));
        assert!(
            next(&mut stream)
                .await
                .starts_with("event: state\nid: m9c0a0\n")
        );
        assert!(
            stream.next().await.is_none(),
            "closeafter=state ends the stream"
        );
    }
}
