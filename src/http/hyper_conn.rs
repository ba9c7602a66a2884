//! Connections hyper serves: every request that is not a new stream or a plain `POST
//! /ingest`, with the bytes the listener already read put back in front.
//!
//! Each connection keeps its place in the connection budget and says when it is idle (no
//! request in flight, response bodies written to their end), so the budget can close it for
//! room. Requests are held to the request timeout, idle keep-alives to hyper's header read
//! timeout, and writes to the send timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, header};
use bytes::{Buf, Bytes};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::serve::Timeouts;
use crate::listen::{Idle, Permit};

/// A connection for hyper, with the bytes already read put back in front.
pub struct HyperConnection {
    pub socket: TcpStream,
    pub permit: Permit,
    pub router: Router,
    pub timeouts: Timeouts,
    pub cancel: CancellationToken,
}

impl HyperConnection {
    /// Serves the connection with hyper until it closes; shutdown lets the request in flight
    /// finish and closes it. Between requests it is idle: hyper closes it after
    /// `timeouts.idle` (its header read timeout runs from the moment it waits for a head), and
    /// the budget may close it sooner for room.
    pub async fn serve(self, read: Bytes) {
        let close = Arc::new(Notify::new());
        let state = Arc::new(ConnectionState {
            idle: Mutex::new(Some(self.permit.idle(&close))),
            permit: self.permit,
            close: close.clone(),
            in_flight: AtomicUsize::new(0),
        });
        let service = TrackedService {
            router: self.router,
            state: state.clone(),
            request_timeout: self.timeouts.request,
        };
        let io = TokioIo::new(Rewound {
            read,
            socket: self.socket,
            send_timeout: self.timeouts.send,
            stalled: None,
            state: state.clone(),
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.timeouts.idle)
            .serve_connection(io, TowerToHyperService::new(service));
        let mut connection = std::pin::pin!(connection);
        let mut draining = false;
        loop {
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(err) = served {
                        if err.is_timeout() {
                            state.permit.limit_reached("idle_timeout");
                        }
                        tracing::trace!(error = %err, "http connection ended with an error");
                    }
                    return;
                }
                () = self.cancel.cancelled(), if !draining => {
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
                () = close.notified(), if !draining => {
                    // A wake from while it was idle may arrive after it got busy: then keep it.
                    if state.in_flight.load(Ordering::Acquire) == 0 {
                        draining = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

/// What a hyper connection's requests share: its place in the budget and whether it is idle.
struct ConnectionState {
    permit: Permit,
    /// Registered while no request is in flight. A std mutex: taken for a swap, no `.await`.
    idle: Mutex<Option<Idle>>,
    close: Arc<Notify>,
    /// Requests whose response body has not been written to its end.
    in_flight: AtomicUsize,
}

impl ConnectionState {
    fn busy(&self) {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
    }

    fn done(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let idle = self.permit.idle(&self.close);
            *self.idle.lock().unwrap_or_else(|p| p.into_inner()) = Some(idle);
        }
    }
}

/// Marks its connection's request done when dropped, which hyper does once the response body
/// is written to its end (or the connection is gone): a streaming body keeps it busy.
struct RequestDone(Arc<ConnectionState>);

impl Drop for RequestDone {
    fn drop(&mut self) {
        self.0.done();
    }
}

/// The router, with each request counted in flight until its body is written and held to the
/// request timeout (a slow body gets 408).
#[derive(Clone)]
struct TrackedService {
    router: Router,
    state: Arc<ConnectionState>,
    request_timeout: Duration,
}

impl tower::Service<Request<hyper::body::Incoming>> for TrackedService {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<hyper::body::Incoming>) -> Self::Future {
        use http_body_util::BodyExt;
        self.state.busy();
        let done = RequestDone(self.state.clone());
        let state = self.state.clone();
        let router = self.router.clone();
        let limit = self.request_timeout;
        Box::pin(async move {
            let routed = tokio::time::timeout(limit, router.oneshot(request.map(Body::new)));
            let response = match routed.await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => {
                    state.permit.limit_reached("request_timeout");
                    request_timed_out()
                }
            };
            let (parts, body) = response.into_parts();
            let body = body.map_frame(move |frame| {
                let _ = &done;
                frame
            });
            Ok(Response::from_parts(parts, Body::new(body)))
        })
    }
}

/// 408 for a request that took longer than the request timeout (a body that trickles in).
fn request_timed_out() -> Response<Body> {
    let body = r#"{"code":"request_timeout","message":"the request took too long to arrive"}"#;
    Response::builder()
        .status(axum::http::StatusCode::REQUEST_TIMEOUT)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONNECTION, "close")
        .body(Body::from(body))
        .unwrap_or_default()
}

/// A socket with bytes already read from it put back in front, whose writes give up after
/// `send_timeout` without progress (a client that stopped reading a stream hyper serves).
struct Rewound {
    read: Bytes,
    socket: TcpStream,
    send_timeout: Duration,
    /// Armed while a write waits for room; only then is there a timer.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    state: Arc<ConnectionState>,
}

impl Rewound {
    /// What a write came to: progress disarms the timer; waiting arms it, and once it fires
    /// the write fails, which ends the connection.
    fn deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if written.is_ready() {
            self.stalled = None;
            return written;
        }
        let send_timeout = self.send_timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(send_timeout)));
        if stalled.as_mut().poll(cx).is_ready() {
            self.stalled = None;
            self.state.permit.limit_reached("send_timeout");
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        Poll::Pending
    }
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
        let written = Pin::new(&mut self.socket).poll_write(cx, buf);
        self.deadline(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.socket).poll_write_vectored(cx, bufs);
        self.deadline(cx, written)
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
