//! Newline-delimited JSON over TCP: one RFC 5423 event object per line, from any producer that
//! holds the ingest secret.
//!
//! The first line must be `AUTH <ingest.secret>`; the listener answers `OK` and takes events
//! from then on, or answers `ERR <reason>` and closes (a wrong secret, another first line, or
//! none within [`AUTH_TIMEOUT`]). Without it anyone who reached the port could inject events
//! for any user and have mailpush send email. Each connection takes at most
//! `ingest.ndjson_max_events_per_sec` events a second: past that the listener stops reading it
//! until the budget refills, so the producer is slowed by TCP, nothing is dropped, and the
//! pause is counted (`limits_reached{limit="ndjson_rate"}`). A line over the size limit is
//! skipped up to its newline and counted; the connection goes on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{LogEvery, RejectLog};
use super::{PacketHead, Source};
use crate::config::Secret;
use crate::event::{self, ParseError};
use crate::listen::{ConnectionBudget, Incoming, Permit, next_connection};
use crate::pipeline::Pipeline;

/// How long a new connection may take to authenticate.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long, and how much, a refused connection's input is read and dropped before it closes.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;
/// The longest first line read while waiting for `AUTH` (a secret is far shorter).
const MAX_AUTH_LINE: usize = 1024;

/// What every NDJSON connection is held to.
#[derive(Clone)]
pub struct NdjsonLimits {
    /// The ingest secret the first line must carry.
    pub secret: Secret,
    /// The largest line taken, in bytes.
    pub max_bytes: usize,
    /// Events a second per connection (a burst of as many is allowed).
    pub events_per_sec: u32,
}

/// Accepts connections until shutdown; each is served by its own task and holds a place in
/// `budget` (one it has no room for is told so and closed).
pub async fn run(
    listener: TcpListener,
    pipeline: Arc<Pipeline>,
    limits: NdjsonLimits,
    budget: Arc<ConnectionBudget>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let refusals = Arc::new(LogEvery::second());
    while let Some(incoming) = next_connection(&listener, &budget, "ndjson", &shutdown).await {
        let (stream, permit) = match incoming {
            Incoming::Admitted(stream, permit) => (stream, permit),
            Incoming::Refused(stream) => {
                tracker.spawn(refuse(BufReader::new(stream), "too many connections"));
                continue;
            }
        };
        let pipeline = pipeline.clone();
        let shutdown = shutdown.clone();
        let limits = limits.clone();
        let refusals = refusals.clone();
        tracker.spawn(async move {
            serve(stream, permit, &pipeline, &limits, &refusals, &shutdown).await;
        });
    }
}

async fn serve(
    stream: TcpStream,
    permit: Permit,
    pipeline: &Pipeline,
    limits: &NdjsonLimits,
    refusals: &LogEvery,
    shutdown: &CancellationToken,
) {
    let peer = stream.peer_addr().ok();
    let mut reader = BufReader::new(stream);
    // Until it has authenticated, the connection may be closed to make room.
    let close = Arc::new(Notify::new());
    let idle = permit.idle(&close);
    let authenticated = tokio::select! {
        () = shutdown.cancelled() => return,
        () = close.notified() => return,
        authenticated = tokio::time::timeout(AUTH_TIMEOUT, authenticate(&mut reader, &limits.secret)) => {
            authenticated.unwrap_or(Err("no AUTH line within 10 s"))
        }
    };
    drop(idle);
    if let Err(reason) = authenticated {
        pipeline.metrics().request_refused("ndjson_unauthenticated");
        if refusals.ready() {
            tracing::warn!(peer = ?peer, reason, "ndjson connection refused");
        }
        refuse(reader, reason).await;
        return;
    }
    if reader.get_mut().write_all(b"OK\n").await.is_err() {
        return;
    }
    read_events(reader, pipeline, limits, shutdown).await;
}

/// Says why and closes. What the producer sent after is read and dropped for a moment first
/// (at most [`LINGER_BYTES`]): closing with unread input would reset the connection, and the
/// reset can overtake the reason.
async fn refuse(mut reader: BufReader<TcpStream>, reason: &str) {
    let socket = reader.get_mut();
    if socket
        .write_all(format!("ERR {reason}\n").as_bytes())
        .await
        .is_err()
        || socket.shutdown().await.is_err()
    {
        return;
    }
    let drain = async {
        let mut discard = [0u8; 4096];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match tokio::io::AsyncReadExt::read(&mut reader, &mut discard).await {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Reads the first line and checks that it is `AUTH <secret>`.
async fn authenticate(
    reader: &mut BufReader<TcpStream>,
    secret: &Secret,
) -> Result<(), &'static str> {
    let mut line = Vec::new();
    loop {
        let available = reader
            .fill_buf()
            .await
            .map_err(|_| "read failed before AUTH")?;
        if available.is_empty() {
            return Err("closed before AUTH");
        }
        let (taken, ends_line) = match memchr::memchr(b'\n', available) {
            Some(at) => (at + 1, true),
            None => (available.len(), false),
        };
        line.extend_from_slice(&available[..taken]);
        reader.consume(taken);
        if line.len() > MAX_AUTH_LINE {
            return Err("the first line must be AUTH <ingest.secret>");
        }
        if ends_line {
            break;
        }
    }
    let line = line.trim_ascii_end();
    let Some(candidate) = line.strip_prefix(b"AUTH ") else {
        return Err("the first line must be AUTH <ingest.secret>");
    };
    if secret.matches(candidate) {
        Ok(())
    } else {
        Err("wrong ingest secret")
    }
}

async fn read_events(
    mut reader: BufReader<TcpStream>,
    pipeline: &Pipeline,
    limits: &NdjsonLimits,
    shutdown: &CancellationToken,
) {
    let mut reject_log = RejectLog::new(Source::Ndjson);
    let mut budget = Budget::new(limits.events_per_sec);
    let mut line: Vec<u8> = Vec::new();
    // Bytes of the current line, counted also once it is over the limit and no longer kept.
    let mut line_size = 0usize;
    loop {
        let available = tokio::select! {
            () = shutdown.cancelled() => return,
            available = reader.fill_buf() => match available {
                Ok(available) => available,
                Err(err) => {
                    tracing::debug!(error = %err, "ndjson connection read failed");
                    return;
                }
            },
        };
        if available.is_empty() {
            if line_size > 0 {
                let line = std::mem::take(&mut line);
                handle_line(line, line_size, limits.max_bytes, pipeline, &mut reject_log);
            }
            return;
        }
        let (taken, ends_line) = match memchr::memchr(b'\n', available) {
            Some(at) => (at + 1, true),
            None => (available.len(), false),
        };
        let content = if ends_line {
            &available[..taken - 1]
        } else {
            &available[..taken]
        };
        line_size += content.len();
        if line_size <= limits.max_bytes {
            line.extend_from_slice(content);
        } else {
            line = Vec::new();
        }
        reader.consume(taken);
        if !ends_line {
            continue;
        }
        let line = std::mem::take(&mut line);
        handle_line(line, line_size, limits.max_bytes, pipeline, &mut reject_log);
        line_size = 0;
        if let Some(pause) = budget.take(Instant::now()) {
            pipeline.metrics().limit_reached("ndjson_rate", 1);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}

fn handle_line(
    mut line: Vec<u8>,
    size: usize,
    max_bytes: usize,
    pipeline: &Pipeline,
    reject_log: &mut RejectLog,
) {
    if size > max_bytes {
        let err = ParseError::TooLarge {
            size,
            limit: max_bytes,
        };
        reject_log.reject(pipeline, &err, size, &line);
        return;
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    let head = PacketHead::new(&line);
    let parsed = String::from_utf8(line)
        .map_err(|_| ParseError::NotUtf8("line"))
        .and_then(event::from_json);
    match parsed {
        Ok(event) => drop(pipeline.dispatch(Source::Ndjson, event)),
        Err(err) => reject_log.reject(pipeline, &err, size, head.as_slice()),
    }
}

/// A token bucket: `rate` events a second, bursts of up to `rate`.
struct Budget {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Budget {
    fn new(rate: u32) -> Budget {
        let rate = f64::from(rate.max(1));
        Budget {
            rate,
            tokens: rate,
            last: Instant::now(),
        }
    }

    /// Spends one event; when the bucket is empty, how long to pause before the next.
    fn take(&mut self, now: Instant) -> Option<Duration> {
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.last = now;
        self.tokens -= 1.0;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut budget = Budget::new(10);
        for _ in 0..10 {
            assert_eq!(budget.take(start), None);
        }
        let pause = budget.take(start).expect("over the burst");
        assert!((pause.as_secs_f64() - 0.1).abs() < 1e-9, "{pause:?}");
        // A second later the bucket is full again.
        let later = start + Duration::from_secs(2);
        for _ in 0..10 {
            assert_eq!(budget.take(later), None);
        }
        assert!(budget.take(later).is_some());
    }
}
