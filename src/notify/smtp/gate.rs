//! The gate in front of a connection's writes: it holds the final `.` of a message until the
//! journal's record of the delivery has left the process (see [`super::super::journal`]).
//!
//! It sits under any TLS (implicit or STARTTLS), so the `.` is the first write after the gate
//! is armed, plain or encrypted.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use lettre::transport::smtp::client::AsyncTokioStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The journal's record of a delivery, which must reach the journal before the `.` leaves.
pub struct Commit {
    /// The record; it completes once the journal has it.
    pub record: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Set by the record once its request has left the process (a database query written
    /// to its socket): from then on a crash cannot keep it from the journal, so the `.` may
    /// go at once and the journal's answer be awaited after the relay's. A record that
    /// never sets it holds the `.` until it completes.
    pub sent: Arc<AtomicBool>,
}

/// Holds a socket's writes while a [`Commit`] is on its way to the journal.
#[derive(Default)]
pub(super) struct Gate {
    /// A std mutex: held while the record is polled, by the one task that writes.
    armed: Mutex<Option<Commit>>,
}

impl Commit {
    /// A record that is made at once (or not at all).
    pub fn done() -> Commit {
        Commit {
            record: Box::pin(std::future::ready(())),
            sent: Arc::default(),
        }
    }
}

impl Gate {
    pub(super) fn arm(&self, commit: Commit) {
        *self.armed.lock().unwrap_or_else(|p| p.into_inner()) = Some(commit);
    }

    /// What is left of the record once the `.` went: awaited after the relay answers.
    pub(super) fn take(&self) -> Option<Commit> {
        self.armed.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Ready once the record is done, or its request has left the process.
    fn poll_open(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
        let Some(commit) = armed.as_mut() else {
            return Poll::Ready(());
        };
        if commit.sent.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        match commit.record.as_mut().poll(cx) {
            Poll::Ready(()) => {
                *armed = None;
                Poll::Ready(())
            }
            Poll::Pending if commit.sent.load(Ordering::Acquire) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A socket whose writes wait for its gate. It sits under any TLS (implicit or STARTTLS), so
/// it sees the `.` as the first write after the gate is armed, plain or encrypted.
#[derive(Debug)]
pub(super) struct Gated<S> {
    pub(super) inner: S,
    pub(super) gate: Arc<Gate>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}

/// An `smtps://` stream in the form lettre's connection takes.
#[derive(Debug)]
pub(super) struct TlsOverTcp(pub(super) tokio_rustls::client::TlsStream<Gated<TcpStream>>);

impl AsyncTokioStream for TlsOverTcp {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.get_ref().0.inner.peer_addr()
    }
}

impl AsyncTokioStream for Gated<TcpStream> {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.inner.peer_addr()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Gated<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gated<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.gate.poll_open(cx));
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl AsyncRead for TlsOverTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsOverTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_gate_holds_the_commit_until_the_record_is_on_its_way() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, mut far) = tokio::io::duplex(1024);
        let gate = Arc::new(Gate::default());
        let mut socket = Gated {
            inner: near,
            gate: gate.clone(),
        };
        socket.write_all(b"body").await.unwrap();
        // A record whose request leaves when `leave` fires and whose answer comes on `answer`.
        let (leave, left) = tokio::sync::oneshot::channel::<()>();
        let (answer, answered) = tokio::sync::oneshot::channel::<()>();
        let sent = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let (flag, finished) = (sent.clone(), done.clone());
        gate.arm(Commit {
            record: Box::pin(async move {
                let _ = left.await;
                flag.store(true, Ordering::Release);
                let _ = answered.await;
                finished.store(true, Ordering::Release);
            }),
            sent,
        });
        let mut commit = Box::pin(socket.write_all(b"\r\n.\r\n"));
        assert!(
            poll_once(&mut commit).await.is_pending(),
            "held while the record has not left"
        );
        assert!(poll_once(&mut commit).await.is_pending());
        leave.send(()).unwrap();
        assert!(
            matches!(poll_once(&mut commit).await, Poll::Ready(Ok(()))),
            "the `.` goes once the record is on its way, before its answer"
        );
        drop(commit);
        let mut written = vec![0; 9];
        far.read_exact(&mut written).await.unwrap();
        assert_eq!(written, b"body\r\n.\r\n");
        // What is left of the record is awaited after the relay's answer.
        let rest = gate.take().expect("the record's answer is still to come");
        assert!(!done.load(Ordering::Acquire));
        answer.send(()).unwrap();
        rest.record.await;
        assert!(done.load(Ordering::Acquire));
        // A record made at once (the file journal) never holds a write.
        gate.arm(Commit::done());
        socket.write_all(b"next").await.unwrap();
        assert!(gate.take().is_none());
    }

    /// Polls `future` once.
    async fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *future).poll(cx))).await
    }
}
