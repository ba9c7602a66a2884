//! `POST /ingest` on a keep-alive connection without hyper: the fast path for producers that
//! post one event per request.
//!
//! A producer posts every mailbox change, so this request is the gateway's most frequent one.
//! Through hyper and axum each costs a request object, a header map, routing, extractors and a
//! serialized reply; at a paced rate the caches are cold for each event, and that code costs
//! more than the event's own work. This path reads requests itself and serves only the case
//! that needs no decision: an HTTP/1.1 `POST /ingest` with the right secret, a
//! `Content-Length`, and one good event as its body. Anything else (a wrong secret, a bad
//! event, a batch, chunked bodies, `Expect`, an `Origin`, another path) is handed to hyper and
//! the axum handler with every byte not yet answered, so it is answered exactly as before, and
//! the connection stays with hyper from then on.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::hyper_conn::HyperConnection;
use super::serve::Timeouts;
use crate::config::Secret;
use crate::ingest::Source;
use crate::ingest::http::{accepts_secret, single_event};
use crate::listen::Permit;
use crate::notify::spool::Ticket;
use crate::pipeline::Pipeline;

/// What the fast path needs to accept an event on its own.
pub struct LeanIngest {
    /// Where accepted events go, as from the axum handler.
    pub pipeline: Arc<Pipeline>,
    /// The ingest secret; without one `POST /ingest` is off and the fast path is never taken.
    pub secret: Secret,
    /// `http.max_body_bytes`: longer bodies go to hyper, which refuses them.
    pub max_body_bytes: usize,
}

/// The largest request head read here; a longer one goes to hyper.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The most room an idle connection's read buffer keeps.
const KEPT_BUFFER_BYTES: usize = 16 * 1024;

/// The reply to one accepted event, as the axum handler words it, around the `date` value.
const ACCEPTED_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 14\r\ndate: ";
const ACCEPTED_TAIL: &[u8] = b"\r\n\r\n{\"accepted\":1}";

/// What the buffered bytes start with.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// A request the fast path may serve: its head and body lengths.
    Ingest { head: usize, body: usize },
    /// Not a whole head yet.
    More,
    /// Something for hyper.
    Hyper,
}

/// A connection whose first request is `POST /ingest`.
pub struct IngestConnection {
    pub socket: TcpStream,
    pub permit: Permit,
    pub ingest: Arc<LeanIngest>,
    pub router: Router,
    pub timeouts: Timeouts,
    pub cancel: CancellationToken,
}

impl IngestConnection {
    /// Serves `POST /ingest` requests until the connection closes, shutdown comes between two
    /// requests, or a request needs hyper. `buf` holds the bytes read so far. Between requests
    /// the connection is idle: closed after `timeouts.idle`, or sooner if the budget needs the
    /// room; a request begun must arrive whole within `timeouts.request`.
    pub async fn serve(self, mut buf: Vec<u8>) {
        let IngestConnection {
            mut socket,
            permit,
            ingest,
            router,
            timeouts,
            cancel,
        } = self;
        let close = Arc::new(Notify::new());
        let mut replies = Vec::with_capacity(ACCEPTED_HEAD.len() + 64);
        let mut request_started = None;
        loop {
            let (answered, hand_over, ticket) = answer_buffered(&buf, &ingest, &mut replies);
            if let Some(ticket) = ticket {
                // "accepted" means on disk for an event that made jobs, as on every other path.
                ingest.pipeline.wait_durable(ticket).await;
            }
            if !replies.is_empty() {
                if socket.write_all(&replies).await.is_err() {
                    return;
                }
                replies.clear();
            }
            buf.drain(..answered);
            if hand_over {
                let connection = HyperConnection {
                    socket,
                    permit,
                    router,
                    timeouts,
                    cancel,
                };
                return Box::pin(connection.serve(Bytes::from(buf))).await;
            }
            if buf.is_empty() && buf.capacity() > KEPT_BUFFER_BYTES {
                // A large body came and went: do not keep its room for the connection's life.
                buf = Vec::with_capacity(KEPT_BUFFER_BYTES);
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(8 * 1024);
            }
            // Shutdown and the budget close the connection between requests; a request begun
            // is read to its end, within the request timeout.
            let read = if buf.is_empty() {
                request_started = None;
                let _idle = permit.idle(&close);
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = close.notified() => return,
                    read = tokio::time::timeout(timeouts.idle, socket.read_buf(&mut buf)) => read,
                }
            } else {
                let started = *request_started.get_or_insert_with(tokio::time::Instant::now);
                let deadline = started + timeouts.request;
                tokio::time::timeout_at(deadline, socket.read_buf(&mut buf)).await
            };
            match read {
                Ok(Ok(n)) if n > 0 => {}
                Err(_) if !buf.is_empty() => {
                    permit.limit_reached("request_timeout");
                    return;
                }
                _ => return,
            }
        }
    }
}

/// Accepts every whole request at the front of `buf` that the fast path serves, appending each
/// reply to `replies`. Returns how many bytes were answered, whether the request after them
/// is hyper's, and the spool ticket of the last job they made.
fn answer_buffered(
    buf: &[u8],
    ingest: &LeanIngest,
    replies: &mut Vec<u8>,
) -> (usize, bool, Option<Ticket>) {
    let mut answered = 0;
    let mut ticket = None;
    loop {
        let rest = &buf[answered..];
        match next_request(rest, &ingest.secret, ingest.max_body_bytes) {
            Next::Ingest { head, body } if rest.len() >= head + body => {
                // The same test as the axum handler's fast path, so a body it would answer
                // otherwise (a batch, a bad event) goes to it.
                let body = &rest[head..head + body];
                let Ok(event) = single_event(body) else {
                    return (answered, true, ticket);
                };
                ticket = ingest.pipeline.dispatch(Source::Http, event).or(ticket);
                replies.extend_from_slice(ACCEPTED_HEAD);
                with_date(|date| replies.extend_from_slice(date));
                replies.extend_from_slice(ACCEPTED_TAIL);
                answered += head + body.len();
            }
            Next::Ingest { .. } | Next::More => return (answered, false, ticket),
            Next::Hyper => return (answered, true, ticket),
        }
    }
}

/// A `Content-Length` value: digits only (RFC 9110 §8.6), so `+5` or ` 5` go to hyper, which
/// refuses them, rather than being read as 5.
fn content_length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Reads the request head at the front of `buf`. A plain function, so the parser's header
/// array lives on the stack for this call only.
fn next_request(buf: &[u8], secret: &Secret, max_body_bytes: usize) -> Next {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    let head = match request.parse(buf) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => return Next::More,
        Ok(httparse::Status::Partial) | Err(_) => return Next::Hyper,
    };
    if request.method != Some("POST") || request.path != Some("/ingest") {
        return Next::Hyper;
    }
    if request.version != Some(1) {
        return Next::Hyper;
    }
    let mut length = None;
    let mut authorized = None;
    for field in request.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Next::Hyper;
            }
            length = content_length(field.value);
        } else if name.eq_ignore_ascii_case("authorization") {
            // As axum reads it: the first one counts.
            if authorized.is_none() {
                authorized = Some(
                    std::str::from_utf8(field.value)
                        .is_ok_and(|value| accepts_secret(secret, value)),
                );
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("origin")
            || (name.eq_ignore_ascii_case("connection")
                && !field.value.eq_ignore_ascii_case(b"keep-alive"))
        {
            return Next::Hyper;
        }
    }
    match length {
        Some(body) if authorized == Some(true) && body <= max_body_bytes => {
            Next::Ingest { head, body }
        }
        _ => Next::Hyper,
    }
}

/// Calls `write` with the current HTTP date, formatted once a second per thread.
fn with_date(write: impl FnOnce(&[u8])) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        write(text.as_bytes());
    });
}

#[cfg(test)]
#[path = "lean_ingest_tests.rs"]
mod tests;
