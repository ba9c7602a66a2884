//! The HTTP listener: EventSource streams get a lean writer, every other request gets hyper.
//!
//! hyper keeps two 8 KB buffers for a connection's whole life, and a streaming body adds its
//! own state: about 30 KB per idle EventSource connection, when what the stream needs is its
//! socket and its feed. So the listener reads each new connection's first request head itself.
//! A `GET` of `/events` or `/jmap/eventsource` runs through the same axum router as any request
//! (authentication, caps, CORS and metrics unchanged), with a [`LeanStream`] slot in its
//! extensions. When the handler leaves its feed there, the listener writes the response head,
//! drops every buffer, and from then on writes each frame straight to the socket: one write per
//! frame, nothing held while idle. Every other request, and every later request on a
//! connection hyper serves, goes to hyper ([`super::hyper_conn`]) with the bytes already read
//! put back in front; a connection that starts with `POST /ingest` goes to
//! [`super::lean_ingest`], which does the same with anything it does not serve itself.

use std::io;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, Response, Version, header};
use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::events::LeanStream;
use super::hyper_conn::HyperConnection;
use super::lean_ingest::{self, LeanIngest};
use crate::listen::{ConnectionBudget, Incoming, Permit, next_connection};
use crate::stream::Feed;

/// The largest request head the lean path reads; a longer one goes to hyper, which refuses it.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The largest error body the lean path writes (they are small JSON objects).
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// The path producers post events to.
const INGEST_PATH: &str = "/ingest";

/// The paths whose successful responses are EventSource streams.
const STREAM_PATHS: &[&str] = &["/events", "/jmap/eventsource"];

/// How long connections may idle and requests may take (`[connections]`).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Between requests on a keep-alive connection, and for a whole request head.
    pub idle: Duration,
    /// From a request head to its answer.
    pub request: Duration,
    /// How long a stream's write may wait for a client that stopped reading.
    pub send: Duration,
}

/// Accepts connections until `cancel` fires; each one is a task on `tracker`, so shutdown can
/// wait for every stream's goodbye frame and every request in flight. Each holds a place in
/// `budget`; one the budget has no room for gets a 503.
///
/// `ingest`, when `POST /ingest` is on, lets connections whose first request is one be served by
/// [`super::lean_ingest`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    ingest: Option<Arc<LeanIngest>>,
    budget: Arc<ConnectionBudget>,
    timeouts: Timeouts,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    while let Some(incoming) = next_connection(&listener, &budget, "http", &cancel).await {
        let (socket, permit) = match incoming {
            Incoming::Admitted(socket, permit) => (socket, permit),
            Incoming::Refused(socket) => {
                tracker.spawn(refuse(socket));
                continue;
            }
        };
        // Frames are small and written whole: never let Nagle hold one back.
        let _ = socket.set_nodelay(true);
        let connection = Connection {
            socket,
            permit,
            router: router.clone(),
            ingest: ingest.clone(),
            timeouts,
            cancel: cancel.clone(),
            tracker: tracker.clone(),
        };
        tracker.spawn(connection.serve());
    }
}

/// The answer to a connection the budget has no room for.
async fn refuse(mut socket: TcpStream) {
    let body = br#"{"code":"over_capacity","message":"too many connections; try again shortly"}"#;
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 5\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut reply = head.into_bytes();
    reply.extend_from_slice(body);
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.write_all(&reply)).await;
}

/// One accepted connection and what serving it needs.
struct Connection {
    socket: TcpStream,
    permit: Permit,
    router: Router,
    ingest: Option<Arc<LeanIngest>>,
    timeouts: Timeouts,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Connection {
    /// Serves the connection: a stream request on the lean path, ingest requests on theirs,
    /// anything else through hyper. Until its first head is read, the connection is idle: the
    /// budget may close it for room.
    async fn serve(self) {
        let Connection {
            mut socket,
            permit,
            router,
            ingest,
            timeouts,
            cancel,
            tracker,
        } = self;
        let mut head = Vec::with_capacity(1024);
        let close = Arc::new(Notify::new());
        let idle = permit.idle(&close);
        let read = tokio::select! {
            () = cancel.cancelled() => return,
            () = close.notified() => return,
            read = tokio::time::timeout(timeouts.idle, read_head(&mut socket, &mut head)) => read,
        };
        drop(idle);
        let request = match read {
            Ok(Ok(First::Stream(request))) => *request,
            Ok(Ok(First::Ingest)) if let Some(ingest) = ingest => {
                let connection = lean_ingest::IngestConnection {
                    socket,
                    permit,
                    ingest,
                    router,
                    timeouts,
                    cancel,
                };
                return Box::pin(connection.serve(head)).await;
            }
            Ok(Ok(First::Ingest | First::Hyper)) => {
                let connection = HyperConnection {
                    socket,
                    permit,
                    router,
                    timeouts,
                    cancel,
                };
                return Box::pin(connection.serve(Bytes::from(head))).await;
            }
            // Gone or silent before a whole head: nothing to answer.
            Ok(Err(_)) | Err(_) => return,
        };
        drop(head);
        let slot = LeanStream::default();
        let request = with_slot(request, slot.clone());
        let response = match Box::pin(router.oneshot(request)).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        match slot.take() {
            Some(feed) => {
                let mut head = response_head(&response);
                head.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
                // A task of its own, so that what the setup needed (this task's room for routing
                // and parsing futures) is freed now rather than held for the stream's life.
                tracker.spawn(write_stream(socket, head, feed, permit, timeouts.send));
            }
            None => Box::pin(write_response(socket, response)).await,
        }
    }
}

/// Where a connection's first request goes.
enum First {
    /// A stream request, for the lean stream writer.
    Stream(Box<Request<Body>>),
    /// `POST /ingest`, for [`lean_ingest`] (which hands anything unusual to hyper).
    Ingest,
    /// Everything else: other paths and methods, request bodies, malformed or oversized heads.
    Hyper,
}

/// Reads the first request head and says where it goes. Unless it is a stream, `head` then
/// holds every byte read, for the next reader to read again.
async fn read_head(socket: &mut TcpStream, head: &mut Vec<u8>) -> io::Result<First> {
    use tokio::io::AsyncReadExt;
    loop {
        if socket.read_buf(head).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(decided) = decide(head) {
            return Ok(decided);
        }
    }
}

/// What the head read so far decides, or None while more of it is needed. A plain function,
/// so that the parser's header array lives on the stack for this call only and never in the
/// connection's task.
fn decide(head: &[u8]) -> Option<First> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(_)) if parsed.path == Some(INGEST_PATH) => {
            Some(First::Ingest)
        }
        Ok(httparse::Status::Complete(_)) => Some(
            lean_request(&parsed).map_or(First::Hyper, |request| First::Stream(Box::new(request))),
        ),
        Ok(httparse::Status::Partial)
            if parsed
                .path
                .is_none_or(|path| is_stream_path(path) || path == INGEST_PATH)
                && head.len() < MAX_HEAD_BYTES =>
        {
            None
        }
        Ok(httparse::Status::Partial) | Err(_) => Some(First::Hyper),
    }
}

fn is_stream_path(target: &str) -> bool {
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    STREAM_PATHS.contains(&path)
}

/// The request as axum sees it, if it is one the lean path serves: a bodiless HTTP/1.1 `GET`
/// of a stream path.
fn lean_request(parsed: &httparse::Request<'_, '_>) -> Option<Request<Body>> {
    let target = parsed.path?;
    if parsed.method? != "GET" || parsed.version? != 1 || !is_stream_path(target) {
        return None;
    }
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(target)
        .version(Version::HTTP_11);
    for field in parsed.headers.iter() {
        let name = field.name;
        let has_body = name.eq_ignore_ascii_case("transfer-encoding")
            || (name.eq_ignore_ascii_case("content-length") && field.value != b"0");
        if has_body {
            return None;
        }
        request = request.header(name, field.value);
    }
    request.body(Body::empty()).ok()
}

fn with_slot(mut request: Request<Body>, slot: LeanStream) -> Request<Body> {
    request.extensions_mut().insert(slot);
    request
}

/// The status line and headers of a lean response, which closes its connection when it ends:
/// a refusal adds its length, a stream `transfer-encoding: chunked`.
fn response_head(response: &Response<Body>) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    let status = response.status();
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in response.headers() {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"connection: close\r\n");
    head
}

/// Writes a whole non-stream answer (a refusal) and closes the connection.
async fn write_response(mut socket: TcpStream, response: Response<Body>) {
    let mut out = response_head(&response);
    let body = axum::body::to_bytes(response.into_body(), MAX_ERROR_BODY_BYTES)
        .await
        .unwrap_or_default();
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(&body);
    if socket.write_all(&out).await.is_ok() {
        let _ = socket.shutdown().await;
    }
}

/// The lean stream: the head, then each frame as the feed yields it, one chunk per frame,
/// until the feed ends (shutdown, `closeafter`) or the client goes. It lives as long as the
/// connection, so it is kept small: one place awaits the feed, one awaits the socket.
///
/// Chunked, not close-delimited, because readers that fill a fixed buffer (`urllib3` under
/// `sseclient-py`) hand over a close-delimited body only when the buffer is full, so each event
/// would wait for the next; a chunk is handed over as soon as it is whole.
///
/// A plain function returning an `async move` block: an `async fn` would store its arguments
/// twice in the future (rust-lang/rust#62958), and this future is the connection's whole cost.
///
/// A write the socket takes at once needs no timer. Only one that finds the socket full (the
/// client stopped reading) waits, for at most `send_timeout`, in a boxed future, so an idle
/// stream carries no timer's room; past it the stream is closed and counted (`send_timeout`).
fn write_stream(
    mut socket: TcpStream,
    head: Vec<u8>,
    mut feed: Feed,
    permit: Permit,
    send_timeout: Duration,
) -> impl std::future::Future<Output = ()> + Send {
    let mut out = head;
    // Kept as milliseconds: a `Duration` is twice the room in a future that every idle
    // stream holds.
    let send_timeout_ms = u32::try_from(send_timeout.as_millis()).unwrap_or(u32::MAX);
    // `permit`, moved in, is the stream's place in the connection budget, given back when
    // the stream ends.
    async move {
        let mut ended = false;
        loop {
            // The one place that writes (the last chunk too), so the future holds one write.
            let taken = match socket.try_write(&out) {
                Ok(taken) => taken,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => 0,
                Err(_) => return,
            };
            if taken < out.len() {
                // Boxed with its timer: only a stream whose client stopped reading pays for
                // them, and only while it waits.
                let rest = Box::pin(tokio::time::timeout(
                    Duration::from_millis(u64::from(send_timeout_ms)),
                    socket.write_all(&out[taken..]),
                ));
                match rest.await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        permit.limit_reached("send_timeout");
                        return;
                    }
                }
            }
            if ended {
                let _ = socket.shutdown().await;
                return;
            }
            // Written: the buffer goes now, not when the next frame replaces it. An idle
            // stream would otherwise hold its last chunk (the head and first frame, a few
            // hundred bytes) for as long as it waits.
            drop(std::mem::take(&mut out));
            out = loop {
                // One wait on both, polled by hand: the feed's channel (or ping timer), and
                // the socket's reader slot, which holds the waker. No future of either is kept
                // in this one's state.
                let woke = std::future::poll_fn(|cx| {
                    if let Poll::Ready(frame) = feed.poll_frame(cx) {
                        return Poll::Ready(Ok(frame));
                    }
                    socket.poll_read_ready(cx).map(Err)
                })
                .await;
                match woke {
                    Ok(Some(next)) => break chunk(&next),
                    Ok(None) => {
                        ended = true;
                        break LAST_CHUNK.to_vec();
                    }
                    Err(ready) => {
                        if ready.is_err() || client_went(&socket) {
                            return;
                        }
                    }
                }
            };
        }
    }
}

/// The end of a chunked body.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// `frame` as one chunk of a chunked body, ready for one write.
fn chunk(frame: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut out = Vec::with_capacity(frame.len() + 12);
    let _ = write!(out, "{:x}\r\n", frame.len());
    out.extend_from_slice(frame);
    out.extend_from_slice(b"\r\n");
    out
}

/// Reads what the client sent on a stream connection (nothing is expected) and tells whether
/// it closed. Its buffer lives on the stack for this call only.
fn client_went(socket: &TcpStream) -> bool {
    let mut discard = [0u8; 64];
    loop {
        match socket.try_read(&mut discard) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return false,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Option<Request<Body>> {
        let mut headers = [httparse::EMPTY_HEADER; 48];
        let mut parsed = httparse::Request::new(&mut headers);
        assert!(parsed.parse(raw.as_bytes()).unwrap().is_complete());
        lean_request(&parsed)
    }

    #[test]
    fn only_bodiless_stream_gets_go_lean() {
        let lean = parse(
            "GET /events?access_token=x HTTP/1.1\r\nHost: a\r\nLast-Event-ID: m1c2a3\r\n\r\n",
        )
        .expect("a stream request");
        assert_eq!(lean.uri(), "/events?access_token=x");
        assert_eq!(lean.headers()["last-event-id"], "m1c2a3");
        assert!(
            parse("GET /jmap/eventsource?types=* HTTP/1.1\r\nContent-Length: 0\r\n\r\n").is_some()
        );
        for other in [
            "GET /metrics HTTP/1.1\r\n\r\n",
            "GET /eventsx HTTP/1.1\r\n\r\n",
            "OPTIONS /events HTTP/1.1\r\n\r\n",
            "GET /events HTTP/1.0\r\n\r\n",
            "GET /events HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
            "GET /events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(parse(other).is_none(), "{other}");
        }
    }

    #[test]
    fn frames_are_chunks() {
        assert_eq!(chunk(b":\n"), b"2\r\n:\n\r\n");
        let frame = vec![b'x'; 300];
        let framed = chunk(&frame);
        assert!(framed.starts_with(b"12c\r\nxxx"));
        assert!(framed.ends_with(b"xxx\r\n"));
        assert_eq!(framed.len(), 300 + 7);
    }

    #[test]
    fn lean_heads_are_close_delimited() {
        let response = Response::builder()
            .status(200)
            .header("content-type", "text/event-stream")
            .header("content-length", "0")
            .body(Body::empty())
            .unwrap();
        let head = String::from_utf8(response_head(&response)).unwrap();
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n"
        );
    }

    /// An idle stream costs its task, and the task is mostly this future: keep it from
    /// growing back (a timer, a waiter, a `select!` or an `async fn` argument copy adds 50 to
    /// 300 bytes). tokio aligns a task to 128 bytes and adds about 112 of its own (with the
    /// tracker's token), so a future of up to 272 bytes keeps the task in 384: it was 512 with
    /// a 328-byte future, and 640 with 496.
    #[tokio::test]
    async fn an_idle_stream_stays_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (socket, _) = listener.accept().await.unwrap();
        let hub = crate::stream::StateHub::new(10, 10);
        let options = crate::stream::FeedOptions {
            format: crate::stream::Format::Legacy,
            retry_ms: 1,
            sent: Default::default(),
            latency: prometheus_client::metrics::histogram::Histogram::new([1.0]),
            jmap_ids: crate::stream::JmapIds::Auto,
        };
        let feed = Feed::new(hub.subscribe("alice").unwrap(), None, options);
        let budget = crate::listen::ConnectionBudget::new(1, Default::default());
        let crate::listen::Admission::Admitted(permit) = budget.admit() else {
            panic!("room for one")
        };
        let stream = write_stream(socket, Vec::new(), feed, permit, Duration::from_secs(1));
        let size = std::mem::size_of_val(&stream);
        assert!(size <= 272, "the stream future grew to {size} bytes");
    }
}
