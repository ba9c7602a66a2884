//! The gate on a connection's socket: the final `.` of a message and the journal's record of
//! its delivery leave together (see [`super::super::journal`]).
//!
//! A crash can come between any two system calls, so the order of the two writes decides
//! what a crash between them costs. The record first, then the `.`: a crash in between marks
//! a job done whose message never left, and a record to PostgreSQL wakes the database, which
//! on a busy machine takes the worker's CPU for hundreds of microseconds right there (a
//! `kill -9` in a test of 500 jobs landed in that gap in about one run of ten). The `.` first,
//! then the record: a crash in between sends the message twice, which is the side to err on.
//! So the `.` is written into a corked socket (Linux's `TCP_CORK`: the kernel holds the bytes
//! and wakes no one), then the record leaves, then the socket is uncorked and the `.` goes
//! out. The kernel sends what a socket holds when its process dies, so a crash after the `.`
//! was written delivers the message, and one after the record also finds it journaled. What
//! is left is the gap between the `.` going into the socket and the record's request leaving
//! (building the record: microseconds, waking no one), in which a crash sends the message
//! again. Where there is no `TCP_CORK`, the `.` goes out at once, before the record, and a
//! crash in that gap also sends it again.
//!
//! The gate sits under any TLS (implicit or STARTTLS), so the `.` is the first write after it
//! is armed, plain or encrypted, and lettre's flush after it reaches the gate once all of its
//! bytes are in the socket.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use lettre::transport::smtp::client::AsyncTokioStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The journal's record of a delivery, which leaves with the message's final `.`.
pub struct Commit {
    /// The record; it completes once the journal has it.
    pub record: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Set by the record once its request has left the process (a database query written
    /// to its socket): from then on a crash cannot keep it from the journal, so the `.` may
    /// go at once and the journal's answer be awaited after the relay's. A record that
    /// never sets it holds the `.` until it completes.
    pub sent: Arc<AtomicBool>,
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

/// Where a connection is in committing a message.
#[derive(Default)]
enum Stage {
    /// Writes pass.
    #[default]
    Open,
    /// The next write is the `.`: the socket is corked before it.
    Armed(Commit),
    /// The `.` is written and held in the corked socket; the flush after it starts the record
    /// and uncorks.
    Holding(Commit),
    /// The `.` went with the record on its way: what is left of the record (its answer) is
    /// awaited after the relay's.
    Recording(Commit),
}

/// Ties a message's final `.` to its [`Commit`].
#[derive(Default)]
pub(super) struct Gate {
    /// A std mutex: held only within a poll, by the one task that writes.
    stage: Mutex<Stage>,
}

impl Gate {
    /// Called when lettre asks for the part after the message: the next write is the `.`.
    pub(super) fn arm(&self, commit: Commit) {
        *self.lock() = Stage::Armed(commit);
    }

    /// What is left of the record once the `.` went: awaited after the relay answers. None
    /// if the record is done, or if the `.` never went (a failed write), in which case the
    /// record is dropped unmade: the message was not committed, and its retry must not find
    /// it journaled.
    pub(super) fn take(&self) -> Option<Commit> {
        match std::mem::take(&mut *self.lock()) {
            Stage::Recording(commit) => Some(commit),
            Stage::Open | Stage::Armed(_) | Stage::Holding(_) => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Stage> {
        self.stage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Before a write: corks the socket if the write is the `.`.
    fn before_write(&self, socket: &impl Cork) {
        let mut stage = self.lock();
        if let Stage::Armed(_) = &*stage {
            if let Err(err) = socket.cork(true) {
                // The `.` then goes at once, before the record: a crash between the two sends
                // the message again, never loses it.
                tracing::warn!(error = %err, "cannot cork the SMTP socket; the final `.` goes before its journal record");
            }
            let Stage::Armed(commit) = std::mem::take(&mut *stage) else {
                unreachable!("matched above")
            };
            *stage = Stage::Holding(commit);
        }
    }

    /// After a flush: if the `.` is held, starts the record and uncorks once its request has
    /// left (or it is done).
    fn after_flush(&self, socket: &impl Cork, cx: &mut Context<'_>) -> Poll<()> {
        let mut stage = self.lock();
        let Stage::Holding(commit) = &mut *stage else {
            return Poll::Ready(());
        };
        match commit.record.as_mut().poll(cx) {
            Poll::Ready(()) => *stage = Stage::Open,
            Poll::Pending if commit.sent.load(Ordering::Acquire) => {
                let Stage::Holding(commit) = std::mem::take(&mut *stage) else {
                    unreachable!("matched above")
                };
                *stage = Stage::Recording(commit);
            }
            Poll::Pending => return Poll::Pending,
        }
        drop(stage);
        if let Err(err) = socket.cork(false) {
            // The kernel sends corked bytes within 200 ms anyway.
            tracing::warn!(error = %err, "cannot uncork the SMTP socket");
        }
        Poll::Ready(())
    }
}

/// A socket whose sends the kernel can hold back until told (Linux's `TCP_CORK`), and sends
/// when its process dies.
pub(super) trait Cork {
    /// Holds (`true`) or sends (`false`) what is written.
    fn cork(&self, on: bool) -> std::io::Result<()>;
}

impl Cork for TcpStream {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn cork(&self, on: bool) -> std::io::Result<()> {
        rustix::net::sockopt::set_tcp_cork(self, on).map_err(std::io::Error::from)
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn cork(&self, _on: bool) -> std::io::Result<()> {
        Ok(())
    }
}

/// A socket whose `.` leaves with its record: under any TLS (implicit or STARTTLS), so it sees
/// the `.` as the first write after the gate is armed, plain or encrypted.
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

impl<S: AsyncWrite + Cork + Unpin> AsyncWrite for Gated<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.gate.before_write(&self.inner);
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        std::task::ready!(self.gate.after_flush(&self.inner, cx));
        Poll::Ready(Ok(()))
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
    use tokio::io::AsyncWriteExt;

    /// A socket as the kernel keeps one: what is written while it is corked is held, and sent
    /// when it is uncorked. Every step is logged, in order, with the record's.
    #[derive(Clone, Default)]
    struct Wire {
        log: Arc<Mutex<Vec<String>>>,
        held: Arc<Mutex<Option<Vec<u8>>>>,
    }

    impl Wire {
        fn note(&self, line: String) {
            self.log.lock().unwrap().push(line);
        }

        fn log(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }
    }

    impl Cork for Wire {
        fn cork(&self, on: bool) -> std::io::Result<()> {
            let mut held = self.held.lock().unwrap();
            match (on, held.take()) {
                (true, _) => *held = Some(Vec::new()),
                (false, Some(bytes)) if !bytes.is_empty() => {
                    self.note(format!("sent {:?}", String::from_utf8_lossy(&bytes)));
                }
                (false, _) => {}
            }
            Ok(())
        }
    }

    impl AsyncWrite for Wire {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let text = String::from_utf8_lossy(buf);
            match self.held.lock().unwrap().as_mut() {
                Some(held) => {
                    held.extend_from_slice(buf);
                    self.note(format!("held {text:?}"));
                }
                None => self.note(format!("sent {text:?}")),
            }
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A database record: its request leaves when `leave` fires (at once if None), its answer
    /// comes on the returned sender.
    fn database_record(
        wire: &Wire,
        leave: Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> (Commit, tokio::sync::oneshot::Sender<()>) {
        let (answer, answered) = tokio::sync::oneshot::channel::<()>();
        let sent = Arc::new(AtomicBool::new(false));
        let (flag, wire) = (sent.clone(), wire.clone());
        let record = async move {
            if let Some(leave) = leave {
                let _ = leave.await;
            }
            wire.note("record leaves".into());
            flag.store(true, Ordering::Release);
            let _ = answered.await;
            wire.note("record answered".into());
        };
        let commit = Commit {
            record: Box::pin(record),
            sent,
        };
        (commit, answer)
    }

    fn gated(wire: &Wire) -> (Gated<Wire>, Arc<Gate>) {
        let gate = Arc::new(Gate::default());
        let socket = Gated {
            inner: wire.clone(),
            gate: gate.clone(),
        };
        (socket, gate)
    }

    /// Writes and flushes `bytes`, as lettre does.
    async fn write(socket: &mut Gated<Wire>, bytes: &[u8]) {
        socket.write_all(bytes).await.unwrap();
        socket.flush().await.unwrap();
    }

    #[tokio::test]
    async fn the_final_dot_is_held_in_the_socket_until_its_record_has_left() {
        let wire = Wire::default();
        let (mut socket, gate) = gated(&wire);
        write(&mut socket, b"body").await;
        let (commit, answer) = database_record(&wire, None);
        gate.arm(commit);
        write(&mut socket, b"\r\n.\r\n").await;
        assert_eq!(
            wire.log(),
            [
                r#"sent "body""#,
                r#"held "\r\n.\r\n""#,
                "record leaves",
                r#"sent "\r\n.\r\n""#,
            ],
            "the `.` is in the socket before the record leaves, and goes out after it"
        );
        // The record's answer is awaited after the relay's.
        let rest = gate.take().expect("the record's answer is still to come");
        answer.send(()).unwrap();
        rest.record.await;
        write(&mut socket, b"QUIT\r\n").await;
        assert_eq!(wire.log()[4..], ["record answered", r#"sent "QUIT\r\n""#]);
    }

    #[tokio::test]
    async fn a_record_that_has_not_left_keeps_the_dot_held() {
        let wire = Wire::default();
        let (mut socket, gate) = gated(&wire);
        let (leave, left) = tokio::sync::oneshot::channel::<()>();
        let (commit, _answer) = database_record(&wire, Some(left));
        gate.arm(commit);
        socket.write_all(b"\r\n.\r\n").await.unwrap();
        let mut flush = Box::pin(socket.flush());
        assert!(poll_once(&mut flush).await.is_pending());
        assert_eq!(wire.log(), [r#"held "\r\n.\r\n""#]);
        leave.send(()).unwrap();
        assert!(matches!(poll_once(&mut flush).await, Poll::Ready(Ok(()))));
        assert_eq!(
            wire.log(),
            [
                r#"held "\r\n.\r\n""#,
                "record leaves",
                r#"sent "\r\n.\r\n""#
            ]
        );
    }

    #[tokio::test]
    async fn a_record_made_at_once_leaves_nothing_to_await() {
        let wire = Wire::default();
        let (mut socket, gate) = gated(&wire);
        let file = wire.clone();
        gate.arm(Commit {
            record: Box::pin(async move { file.note("journal line".into()) }),
            sent: Arc::default(),
        });
        write(&mut socket, b"\r\n.\r\n").await;
        assert_eq!(
            wire.log(),
            [r#"held "\r\n.\r\n""#, "journal line", r#"sent "\r\n.\r\n""#]
        );
        assert!(gate.take().is_none());
    }

    #[tokio::test]
    async fn a_dot_that_never_went_is_never_journaled() {
        let wire = Wire::default();
        let (_socket, gate) = gated(&wire);
        let (commit, _answer) = database_record(&wire, None);
        gate.arm(commit);
        // lettre's write of the `.` failed: the relay does not have the message.
        assert!(gate.take().is_none());
        assert!(wire.log().is_empty(), "the record was not made");
    }

    /// What the gate relies on: bytes held in a corked socket are sent when the socket is
    /// closed, as it is when its process dies.
    #[tokio::test]
    async fn the_kernel_sends_what_a_corked_socket_holds_when_it_closes() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut relay, _) = listener.accept().await.unwrap();
        client.set_nodelay(true).unwrap();
        client.cork(true).unwrap();
        let mut client = client;
        client.write_all(b"\r\n.\r\n").await.unwrap();
        drop(client);
        let mut received = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            relay.read_to_end(&mut received),
        )
        .await
        .expect("the relay reads to the end")
        .unwrap();
        assert_eq!(received, b"\r\n.\r\n");
    }

    /// Polls `future` once.
    async fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *future).poll(cx))).await
    }
}
