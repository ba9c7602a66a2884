//! Every way events come in, one file per source, each handing [`crate::event::Event`]s to the
//! same [`Pipeline`]: the Cyrus datagram socket ([`cyrus`]), its `dlist:` stream form
//! ([`dlist`]), newline-delimited JSON over TCP ([`ndjson`]), `POST /ingest` ([`http`]), and
//! Dovecot's push_notification drivers over HTTP ([`dovecot`]). A new source is a file here,
//! its [`Source`] variant, and (for HTTP) its route in `http::router`.
//!
//! Cyrus sends each event from inside the IMAP or LMTP command that caused it and blocks once
//! about ten datagrams wait unread, so every receive loop parses and dispatches synchronously
//! and goes straight back to reading: nothing here awaits anything downstream. A bad packet is
//! counted, logged (rate-limited) with its reason, and dropped; a listener never dies of input.

pub mod cyrus;
pub mod dlist;
pub mod dovecot;
pub mod http;
pub mod ndjson;
pub mod socket;
mod source;

pub use source::{EXCERPT_BYTES, PacketHead, Source};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::event::ParseError;
use crate::pipeline::Pipeline;

/// Logs rejected packets at most once per interval per listener, with a count of the ones it
/// held back, so a flood of garbage cannot flood the log.
pub struct RejectLog {
    source: Source,
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RejectLog {
    /// A limiter allowing one line per second.
    pub fn new(source: Source) -> RejectLog {
        RejectLog {
            source,
            interval: Duration::from_secs(1),
            last: None,
            suppressed: 0,
        }
    }

    /// Counts the rejection and logs it unless a line went out less than a second ago.
    /// `packet` is as much of it as the listener still holds (it may be empty).
    pub fn reject(&mut self, pipeline: &Pipeline, error: &ParseError, size: usize, packet: &[u8]) {
        pipeline.reject(self.source, error, size, packet);
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            source = self.source.label(),
            reason = error.reason(),
            error = %error,
            bytes = size,
            suppressed = self.suppressed,
            "dropped bad packet"
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Lets a log line through at most once per interval, for refusals an attacker can repeat at
/// will (each one is still counted).
pub struct LogEvery {
    start: Instant,
    interval_ms: u64,
    /// Milliseconds since `start` of the last line let through, or `u64::MAX` for none yet.
    last_ms: AtomicU64,
}

impl LogEvery {
    /// One line a second.
    pub fn second() -> LogEvery {
        LogEvery {
            start: Instant::now(),
            interval_ms: 1000,
            last_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// Whether a line may go out now.
    pub fn ready(&self) -> bool {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != u64::MAX && now.saturating_sub(last) < self.interval_ms {
            return false;
        }
        self.last_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}
