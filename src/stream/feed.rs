//! One EventSource connection's frames: the `retry:` hint, the current state when the client
//! missed something, then a frame per state change, with keepalives in between.
//!
//! The feed knows nothing of HTTP: it yields the bytes to write, and both the lean writer and
//! the hyper body write them. It compares each new state with the last one the client saw, so
//! a client that falls behind skips straight to the newest state, and a reconnect with
//! `Last-Event-ID` gets the current state only if it moved. `/events` frames are the cell's own
//! shared bytes; only JMAP frames, which depend on the client's filter, are encoded here.

use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::beat::Beats;
use super::jmap::{self, TypeFilter};
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
    /// The shared keepalive clock: an idle connection writes a comment on each tick.
    pub beats: Beats,
    /// Counts frames that carried state.
    pub sent: Counter,
    /// Time from a state change to its frame being handed to the connection.
    pub latency: Histogram,
}

/// The keepalive comment.
const KEEPALIVE: &[u8] = b":\n\n";

/// One connection's frame source, until the client goes, the user's cell closes, or shutdown.
pub struct Feed {
    user: String,
    subscription: Subscription,
    seen: UserState,
    options: FeedOptions,
    shutdown: CancellationToken,
    /// When a `ping=N` JMAP connection owes its next ping.
    next_ping: Instant,
    started: bool,
    finished: bool,
    /// Nothing written since the last keepalive tick.
    quiet: bool,
    /// Set once the reminder channel is gone, so the loop stops polling it.
    reminders_closed: bool,
}

impl Feed {
    /// A feed of `user`'s state; `seen` is what the client's `Last-Event-ID` says it has (None:
    /// nothing).
    pub fn new(
        user: String,
        subscription: Subscription,
        seen: Option<UserState>,
        options: FeedOptions,
        shutdown: CancellationToken,
    ) -> Feed {
        Feed {
            user,
            subscription,
            seen: seen.unwrap_or_default(),
            next_ping: Instant::now() + options.ping().unwrap_or_default(),
            options,
            shutdown,
            started: false,
            finished: false,
            quiet: false,
            reminders_closed: false,
        }
    }

    /// The frames as a response body stream, for connections that hyper serves.
    pub fn into_stream(
        self,
    ) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static {
        futures_util::stream::unfold(self, |mut feed| async move {
            let frame = feed.next_frame().await?;
            Some((Ok(frame), feed))
        })
    }

    /// The next bytes to write; None once the stream is over. Cancel-safe: state moves only
    /// when a frame is returned, so it can race a read of the client's socket.
    pub async fn next_frame(&mut self) -> Option<Bytes> {
        if self.finished {
            return None;
        }
        if self.shutdown.is_cancelled() {
            return Some(self.goodbye());
        }
        if !self.started {
            self.started = true;
            let mut out = format!("retry: {}\n\n", self.options.retry_ms).into_bytes();
            if let Some(frame) = self.state_frame_if_moved() {
                out.extend_from_slice(&frame);
            }
            return Some(Bytes::from(out));
        }
        let ping = self.options.ping();
        loop {
            if let Some(frame) = self.state_frame_if_moved() {
                return Some(frame);
            }
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Some(self.goodbye()),
                changed = self.subscription.receiver.changed() => {
                    // The hub never drops a cell while it runs; if it does, the stream ends.
                    changed.ok()?;
                }
                reminder = self.subscription.reminders.recv(), if !self.reminders_closed => match reminder {
                    Ok(frame) => {
                        self.quiet = false;
                        return Some(frame);
                    }
                    // Too slow for the backlog: the oldest reminders are skipped.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    // The hub dropped the channel: reminders are over, state goes on.
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => self.reminders_closed = true,
                },
                () = self.options.beats.next(), if ping.is_none() => {
                    if self.quiet {
                        return Some(Bytes::from_static(KEEPALIVE));
                    }
                    self.quiet = true;
                }
                () = tokio::time::sleep_until(self.next_ping), if ping.is_some() => {
                    let ping = ping.unwrap_or_default();
                    self.next_ping = Instant::now() + ping;
                    let mut out = String::new();
                    jmap::encode_ping(ping.as_secs(), &mut out);
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

    /// A state frame, if the state moved past what the client saw.
    fn state_frame_if_moved(&mut self) -> Option<Bytes> {
        let cell = self.subscription.receiver.borrow_and_update();
        let now = cell.state;
        let changed_at = cell.changed_at;
        let legacy = matches!(self.options.format, Format::Legacy);
        let shared = (legacy && now.is_newer_than(&self.seen)).then(|| cell.frame.clone());
        // Release the cell before encoding anything: `apply` waits on it.
        drop(cell);
        let frame = match &self.options.format {
            Format::Legacy => shared,
            Format::Jmap {
                filter,
                close_after_state,
                ..
            } => {
                let mut out = String::new();
                let wrote = jmap::encode_state(&self.user, &self.seen, &now, filter, &mut out);
                self.finished = wrote && *close_after_state;
                wrote.then(|| Bytes::from(out))
            }
        };
        self.seen = now;
        if frame.is_some() {
            self.options.sent.inc();
            if let Some(changed_at) = changed_at {
                self.options
                    .latency
                    .observe(changed_at.elapsed().as_secs_f64());
            }
            self.quiet = false;
            self.next_ping = Instant::now() + self.options.ping().unwrap_or_default();
        }
        frame
    }
}

impl FeedOptions {
    /// The JMAP `ping=N` interval, if the client asked for pings instead of comments.
    fn ping(&self) -> Option<Duration> {
        match &self.format {
            Format::Jmap { ping, .. } => *ping,
            Format::Legacy => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::StateChange;
    use crate::stream::legacy;
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
            beats: Beats::start(Duration::from_secs(25), CancellationToken::new()),
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
        let stream = Feed::new(
            "alice".into(),
            hub.subscribe("alice").unwrap(),
            None,
            options(Format::Legacy),
            shutdown.clone(),
        )
        .into_stream();
        let mut stream = Box::pin(stream);
        assert_eq!(
            next(&mut stream).await,
            format!("retry: 5000\n\n{}", frame(4))
        );
        hub.apply("alice", &mail(5));
        hub.apply("alice", &mail(6));
        let wrote = Instant::now();
        assert_eq!(next(&mut stream).await, frame(6));
        // The shared clock ticks at 25 s and 50 s: the first tick finds a frame written since
        // the last one, the second finds the stream quiet.
        assert_eq!(next(&mut stream).await, ":\n\n");
        assert_eq!(wrote.elapsed(), Duration::from_secs(50));
        assert_eq!(next(&mut stream).await, ":\n\n");
        assert_eq!(
            wrote.elapsed(),
            Duration::from_secs(75),
            "one comment per tick"
        );
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
        let stream = Feed::new(
            "alice".into(),
            hub.subscribe("alice").unwrap(),
            seen,
            options(Format::Legacy),
            CancellationToken::new(),
        )
        .into_stream();
        let mut stream = Box::pin(stream);
        assert_eq!(next(&mut stream).await, "retry: 5000\n\n");
        let seen = UserState::from_event_id("m3c0a0");
        let stream = Feed::new(
            "alice".into(),
            hub.subscribe("alice").unwrap(),
            seen,
            options(Format::Legacy),
            CancellationToken::new(),
        )
        .into_stream();
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
        let stream = Feed::new(
            "alice".into(),
            hub.subscribe("alice").unwrap(),
            None,
            options(format),
            CancellationToken::new(),
        )
        .into_stream();
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
