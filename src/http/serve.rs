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
//! connection hyper serves, goes to hyper with the bytes already read put back in front; a
//! connection that starts with `POST /ingest` goes to [`super::lean_ingest`], which does the
//! same with anything it does not serve itself.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, Response, Version, header};
use bytes::{Buf, Bytes};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::events::LeanStream;
use super::lean_ingest::{self, LeanIngest};
use crate::stream::Feed;

/// The largest request head the lean path reads; a longer one goes to hyper, which refuses it.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// How long a new connection may take to send its first request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest error body the lean path writes (they are small JSON objects).
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// The path producers post events to.
const INGEST_PATH: &str = "/ingest";

/// The paths whose successful responses are EventSource streams.
const STREAM_PATHS: &[&str] = &["/events", "/jmap/eventsource"];

/// Accepts connections until `cancel` fires; each one is a task on `tracker`, so shutdown can
/// wait for every stream's goodbye frame and every request in flight.
///
/// `ingest`, when `POST /ingest` is on, lets connections whose first request is one be served by
/// [`super::lean_ingest`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    ingest: Option<Arc<LeanIngest>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let socket = match accepted {
            Ok((socket, _)) => socket,
            Err(err) if is_per_connection(&err) => continue,
            Err(err) => {
                // Out of file descriptors, most likely: give connections time to close.
                tracing::error!(error = %err, "cannot accept HTTP connections; retrying in 1 s");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        // Frames are small and written whole: never let Nagle hold one back.
        let _ = socket.set_nodelay(true);
        tracker.spawn(connection(
            socket,
            router.clone(),
            ingest.clone(),
            cancel.clone(),
            tracker.clone(),
        ));
    }
}

/// Errors that concern one connection only (it was reset before it was accepted).
fn is_per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves one connection: a stream request on the lean path, ingest requests on theirs,
/// anything else through hyper.
async fn connection(
    mut socket: TcpStream,
    router: Router,
    ingest: Option<Arc<LeanIngest>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let mut head = Vec::with_capacity(1024);
    let read = tokio::select! {
        () = cancel.cancelled() => return,
        read = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut socket, &mut head)) => read,
    };
    let request = match read {
        Ok(Ok(First::Stream(request))) => *request,
        Ok(Ok(First::Ingest)) if let Some(ingest) = ingest => {
            return Box::pin(lean_ingest::serve(socket, head, ingest, router, cancel)).await;
        }
        Ok(Ok(First::Ingest | First::Hyper)) => {
            return Box::pin(with_hyper(socket, Bytes::from(head), router, cancel)).await;
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
            head.extend_from_slice(b"\r\n");
            // A task of its own, so that what the setup needed (this task's room for routing
            // and parsing futures) is freed now rather than held for the stream's life.
            tracker.spawn(write_stream(socket, head, feed));
        }
        None => Box::pin(write_response(socket, response)).await,
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

/// The status line and headers of a lean response. Its body ends when the connection closes,
/// so it has neither a length nor chunks: each frame goes out as it is.
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

/// The lean stream: the head with the first frame in one write, then each frame as the feed
/// yields it, until the feed ends (shutdown, `closeafter`) or the client goes. It lives as long
/// as the connection, so it is kept small: one place awaits the feed, one awaits the socket.
///
/// A plain function returning an `async move` block: an `async fn` would store its arguments
/// twice in the future (rust-lang/rust#62958), and this future is the connection's whole cost.
fn write_stream(
    mut socket: TcpStream,
    head: Vec<u8>,
    mut feed: Feed,
) -> impl std::future::Future<Output = ()> + Send {
    let mut frame = Bytes::from(head);
    async move {
        loop {
            if socket.write_all(&frame).await.is_err() {
                return;
            }
            frame = loop {
                tokio::select! {
                    next = feed.next_frame() => match next {
                        Some(next) => break next,
                        None => {
                            let _ = socket.shutdown().await;
                            return;
                        }
                    },
                    // The socket's own reader slot holds the waker: no waiter in this future.
                    ready = std::future::poll_fn(|cx| socket.poll_read_ready(cx)) => {
                        if ready.is_err() || client_went(&socket) {
                            return;
                        }
                    }
                }
            };
        }
    }
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

/// Serves the connection with hyper, the bytes already read first; shutdown lets the request in
/// flight finish and closes the connection.
pub(super) async fn with_hyper(
    socket: TcpStream,
    read: Bytes,
    router: Router,
    cancel: CancellationToken,
) {
    let io = TokioIo::new(Rewound { read, socket });
    let connection = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, TowerToHyperService::new(router));
    let mut connection = std::pin::pin!(connection);
    let mut draining = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(err) = served {
                    tracing::trace!(error = %err, "http connection ended with an error");
                }
                return;
            }
            () = cancel.cancelled(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// A socket with bytes already read from it put back in front.
struct Rewound {
    read: Bytes,
    socket: TcpStream,
}

impl AsyncRead for Rewound {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read.has_remaining() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewound {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
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
    /// growing back (a timer, a waiter or an `async fn` argument copy adds 50 to 300 bytes).
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
        };
        let feed = Feed::new(
            "alice".into(),
            hub.subscribe("alice").unwrap(),
            None,
            options,
        );
        let stream = write_stream(socket, Vec::new(), feed);
        let size = std::mem::size_of_val(&stream);
        assert!(size <= 512, "the stream future grew to {size} bytes");
    }
}
