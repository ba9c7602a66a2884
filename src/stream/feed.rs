//! One EventSource connection's frames: the `retry:` hint, the current state when the client
//! missed something, then a frame per state change, with keepalives in between.
//!
//! Every block the feed writes is a real event. Parsers differ on blocks without one: the
//! `jmap-client` crate turns each blank line that ends a block into a `state` event and fails
//! on its empty data, `httpx-sse` yields an empty `message` event, `sseclient-py` drops a
//! block that holds only `retry:` and never learns the delay. So `retry:` is a field line
//! with no blank line after it, taken by the next event's block (the WHATWG parser applies it
//! as the line is read), and a keepalive is a comment line that ends no block. A stream of
//! nothing but keepalives is then one block that never ends, which every parser ignores.
//!
//! The feed knows nothing of HTTP: it yields the bytes to write, and both the lean writer and
//! the hyper body write them. It compares each new state with the last one the client saw, so
//! a client that falls behind skips straight to the newest state, and a reconnect with
//! `Last-Event-ID` gets the current state only if it moved. `/events` frames are the cell's own
//! shared bytes; only JMAP frames, which depend on the client's filter, are encoded here.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::{Instant, Sleep};

use super::jmap::{self, TypeFilter};
use super::live::UserState;
use super::signals::Signal;
use super::state::Subscription;

/// Which wire format a connection speaks.
#[derive(Debug, Clone)]
pub enum Format {
    /// FastMail's `event: push` with the three modseqs.
    Legacy,
    /// RFC 8620 `event: state` StateChange objects. Boxed: every stream carries its format
    /// for its whole life, and a legacy one should not carry room for a JMAP filter.
    Jmap(Box<JmapFormat>),
}

/// What a JMAP EventSource connection asked for.
#[derive(Debug, Clone)]
pub struct JmapFormat {
    /// The data types the client asked for (`types=`): a state event names only those.
    pub filter: TypeFilter,
    /// `closeafter=state`: end the response after one state event.
    pub close_after_state: bool,
    /// `ping=N`: a `ping` event after N quiet seconds; None for `ping=0`.
    pub ping: Option<Duration>,
}

/// What a feed needs besides its subscription.
pub struct FeedOptions {
    pub format: Format,
    /// Suggested reconnection delay, sent once as `retry:`.
    pub retry_ms: u64,
    /// Counts frames that carried state.
    pub sent: Counter,
    /// Time from a state change to its frame being handed to the connection.
    pub latency: Histogram,
    /// How JMAP state strings are written: per the account's id scheme, or forced.
    pub jmap_ids: JmapIds,
}

/// How JMAP state strings are written (`jmap.id_scheme`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JmapIds {
    /// As each account's events show it: `J`-prefixed for compact ids, bare for legacy ids
    /// and while no event has shown it yet.
    #[default]
    Auto,
    /// Every account has compact ids.
    Compact,
    /// Every account has legacy ids.
    Legacy,
}

impl JmapIds {
    /// Whether `state`'s account gets compact-id states.
    pub fn compact(self, state: &UserState) -> bool {
        match self {
            JmapIds::Auto => state.ids == crate::event::IdScheme::Compact,
            JmapIds::Compact => true,
            JmapIds::Legacy => false,
        }
    }
}

/// The keepalive: a comment line, ending no block.
const KEEPALIVE: &[u8] = b":\n";

/// One connection's frame source, until the client goes, the user's cell closes, or shutdown.
/// It lives as long as its connection, so it holds no buffer and no timer of its own (but for
/// a JMAP `ping=N`, whose timer is boxed so that other streams do not carry its room).
pub struct Feed {
    subscription: Subscription,
    seen: UserState,
    options: FeedOptions,
    /// The `ping=N` timer of a JMAP connection that asked for one.
    ping: Option<Pin<Box<Sleep>>>,
    started: bool,
    finished: bool,
    /// Nothing written since the last keepalive tick.
    quiet: bool,
}

impl Feed {
    /// A feed of the subscription's user's state; `seen` is what the client's `Last-Event-ID`
    /// says it has (None: nothing).
    pub fn new(subscription: Subscription, seen: Option<UserState>, options: FeedOptions) -> Feed {
        Feed {
            subscription,
            seen: seen.unwrap_or_default(),
            ping: options
                .ping_interval()
                .map(|every| Box::pin(tokio::time::sleep(every))),
            options,
            started: false,
            finished: false,
            quiet: false,
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
        std::future::poll_fn(|cx| self.poll_frame(cx)).await
    }

    /// [`Feed::next_frame`] as a poll: the lean stream writer waits on it and on its socket
    /// in one `poll_fn`, so the wait where an idle stream spends its life keeps no future of
    /// its own in the connection's task (two references).
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.finished {
            return Poll::Ready(None);
        }
        if !self.started {
            self.started = true;
            let mut out = format!("retry: {}\n", self.options.retry_ms).into_bytes();
            if let Some(frame) = self.pending_frame() {
                out.extend_from_slice(&frame);
            }
            return Poll::Ready(Some(Bytes::from(out)));
        }
        loop {
            if let Some(frame) = self.pending_frame() {
                return Poll::Ready(Some(frame));
            }
            // The channel moved: look again. Else the `ping=N` timer of a stream that has one.
            if self.subscription.receiver.poll_changed(cx).is_ready() {
                continue;
            }
            return match self.ping.as_mut() {
                Some(timer) => timer.as_mut().poll(cx).map(|()| Some(self.ping_frame())),
                None => Poll::Pending,
            };
        }
    }

    /// A JMAP `ping` event, and the timer rearmed.
    fn ping_frame(&mut self) -> Bytes {
        let every = self.options.ping_interval().unwrap_or_default();
        if let Some(timer) = self.ping.as_mut() {
            timer.as_mut().reset(Instant::now() + every);
        }
        let mut out = String::new();
        jmap::encode_ping(every.as_secs(), &mut out);
        Bytes::from(out)
    }

    /// The last frame before a shutdown closes the stream: the reconnection hint again, so
    /// clients come back (to this node once restarted, or another) after that delay.
    fn goodbye(&mut self) -> Bytes {
        self.finished = true;
        Bytes::from(format!("retry: {}\n", self.options.retry_ms))
    }

    /// The next frame for this client, most urgent first: the goodbye at shutdown, a reminder
    /// it has not written yet, a keepalive if a clock tick found it quiet, the state if it
    /// moved past what the client saw.
    fn pending_frame(&mut self) -> Option<Bytes> {
        let live = self.subscription.receiver.borrow_and_update();
        match live.signals.next(&mut self.subscription.signals_seen) {
            Some(Signal::Closing) => {
                drop(live);
                return Some(self.goodbye());
            }
            Some(Signal::Reminder(frame)) => {
                self.quiet = false;
                return Some(frame);
            }
            // A clock tick: a stream quiet since the one before gets a comment (JMAP streams
            // that asked for pings get those instead). Two ticks seen at once mean a whole
            // interval went by without this stream reading its channel, so without a frame.
            Some(Signal::Beats(ticks)) => {
                let comment = (self.quiet || ticks > 1) && self.ping.is_none();
                self.quiet = true;
                if comment {
                    return Some(Bytes::from_static(KEEPALIVE));
                }
            }
            None => {}
        }
        let now = live.published.state;
        let changed_at = live.published.changed_at;
        let legacy = matches!(self.options.format, Format::Legacy);
        let shared =
            (legacy && now.is_newer_than(&self.seen)).then(|| live.published.frame.clone());
        // Release the channel before encoding anything: `apply` waits on it.
        drop(live);
        let frame = match &self.options.format {
            Format::Legacy => shared,
            Format::Jmap(jmap) => {
                let JmapFormat {
                    filter,
                    close_after_state,
                    ..
                } = &**jmap;
                let mut out = String::new();
                let compact = self.options.jmap_ids.compact(&now);
                let wrote = jmap::encode_state(
                    &self.subscription.user,
                    &self.seen,
                    &now,
                    filter,
                    compact,
                    &mut out,
                );
                self.finished = wrote && *close_after_state;
                wrote.then(|| Bytes::from(out))
            }
        };
        self.seen = now;
        if frame.is_some() {
            self.options.sent.inc();
            if let Some(elapsed) = changed_at.elapsed() {
                self.options.latency.observe(elapsed.as_secs_f64());
            }
            self.quiet = false;
            if let (Some(timer), Some(every)) = (self.ping.as_mut(), self.options.ping_interval()) {
                timer.as_mut().reset(Instant::now() + every);
            }
        }
        frame
    }
}

impl FeedOptions {
    /// The JMAP `ping=N` interval, if the client asked for pings instead of comments.
    fn ping_interval(&self) -> Option<Duration> {
        match &self.format {
            Format::Jmap(jmap) => jmap.ping,
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
            sent: Counter::default(),
            latency: Histogram::new([0.001]),
            jmap_ids: JmapIds::Auto,
        }
    }

    async fn next(
        stream: &mut (impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Unpin),
    ) -> String {
        let frame = stream.next().await.expect("stream ended").unwrap();
        String::from_utf8(frame.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn legacy_feed_sends_current_then_changes_and_keepalives() {
        let hub = StateHub::new(10, 10);
        hub.apply("alice", &mail(4));
        let stream = Feed::new(
            hub.subscribe("alice").unwrap(),
            None,
            options(Format::Legacy),
        )
        .into_stream();
        let mut stream = Box::pin(stream);
        assert_eq!(
            next(&mut stream).await,
            format!("retry: 5000\n{}", frame(4))
        );
        hub.apply("alice", &mail(5));
        hub.apply("alice", &mail(6));
        assert_eq!(next(&mut stream).await, frame(6));
        // Two ticks seen at once: a whole interval without a frame, so a comment.
        hub.beat();
        hub.beat();
        assert_eq!(next(&mut stream).await, ":\n");
        hub.beat();
        assert_eq!(next(&mut stream).await, ":\n", "one comment per quiet tick");
        hub.apply("alice", &mail(7));
        assert_eq!(next(&mut stream).await, frame(7));
        // The next tick finds a frame written since the last one: no comment, so the next
        // bytes are the next state.
        hub.beat();
        hub.apply("alice", &mail(8));
        assert_eq!(next(&mut stream).await, frame(8));
        hub.close_streams();
        assert_eq!(
            next(&mut stream).await,
            "retry: 5000\n",
            "told to come back"
        );
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn reminders_come_in_order_and_a_laggard_skips_the_oldest() {
        let hub = StateHub::new(10, 10);
        let mut stream = Box::pin(
            Feed::new(
                hub.subscribe("alice").unwrap(),
                None,
                options(Format::Legacy),
            )
            .into_stream(),
        );
        assert_eq!(next(&mut stream).await, "retry: 5000\n");
        hub.remind("alice", Bytes::from_static(b"r0"));
        hub.remind("alice", Bytes::from_static(b"r1"));
        hub.apply("alice", &mail(3));
        assert_eq!(next(&mut stream).await, "r0");
        assert_eq!(next(&mut stream).await, "r1");
        assert_eq!(next(&mut stream).await, frame(3));
        let total = crate::stream::signals::REMINDER_BACKLOG + 3;
        for n in 0..total {
            hub.remind("alice", Bytes::from(format!("s{n}")));
        }
        for n in 3..total {
            assert_eq!(next(&mut stream).await, format!("s{n}"));
        }
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
            hub.subscribe("alice").unwrap(),
            seen,
            options(Format::Legacy),
        )
        .into_stream();
        let mut stream = Box::pin(stream);
        assert_eq!(next(&mut stream).await, "retry: 5000\n");
        let seen = UserState::from_event_id("m3c0a0");
        let stream = Feed::new(
            hub.subscribe("alice").unwrap(),
            seen,
            options(Format::Legacy),
        )
        .into_stream();
        let mut stream = Box::pin(stream);
        assert_eq!(
            next(&mut stream).await,
            format!("retry: 5000\n{}", frame(4))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn jmap_pings_and_close_after_state() {
        let hub = StateHub::new(10, 10);
        let format = Format::Jmap(Box::new(JmapFormat {
            filter: TypeFilter::parse("*").unwrap(),
            close_after_state: true,
            ping: Some(Duration::from_secs(30)),
        }));
        let stream =
            Feed::new(hub.subscribe("alice").unwrap(), None, options(format)).into_stream();
        let mut stream = Box::pin(stream);
        assert_eq!(next(&mut stream).await, "retry: 5000\n");
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
