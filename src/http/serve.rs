//! The HTTP listener: EventSource streams get a lean writer, every other request gets hyper.
//!
//! hyper keeps two 8 KB buffers for a connection's whole life, and a streaming body adds its
//! own state: about 30 KB per idle EventSource connection, when what the stream needs is its
//! socket and its feed. So the listener reads each new connection's first request head itself.
//! A `GET` of `/events` or `/jmap/eventsource` runs through the same axum router as any request
//! (authentication, caps, CORS and metrics unchanged), with a [`LeanStream`] slot in its
//! extensions. When the handler leaves its feed there, the connection's task hands the socket
//! to the lean stream writer ([`super::lean_stream`]), which writes the response head and from
//! then on each frame straight to the socket: one write per frame, nothing held while idle.
//! Every other request, and every later request on a connection hyper serves, goes to hyper
//! ([`super::hyper_conn`]) with the bytes already read put back in front; a connection that
//! starts with `POST /ingest` goes to [`super::lean_ingest`], which does the same with anything
//! it does not serve itself.

use std::io;
use std::sync::Arc;
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
use super::lean_stream;
use crate::listen::{ConnectionBudget, Incoming, Permit, next_connection};

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
                tracker.spawn(lean_stream::write_stream(
                    socket,
                    head,
                    feed,
                    permit,
                    timeouts.send,
                ));
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
}
