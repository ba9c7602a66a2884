//! Listening sockets and the connection budget that every one of them shares.
//!
//! Why one budget: each connection is a file descriptor, and a process out of descriptors
//! cannot answer `/healthz`, open its database or write an email. So every accepted
//! connection (HTTP, EventSource streams, NDJSON, `dlist:`) holds a [`Permit`] from one
//! [`ConnectionBudget`] sized below the file limit, with room kept for the rest. When it is
//! full, the oldest idle connection (a keep-alive between requests, or one that has not sent
//! its first request) is closed to make room; with none idle, the new connection is refused.
//! Open streams, authenticated producers and requests in progress are never closed for room.
//! Every accept loop goes through [`next_connection`], which backs off on accept errors such
//! as EMFILE instead of spinning, and every listener is bound with a backlog that holds a
//! reconnect storm ([`bind_tcp`], [`bind_unix`]).

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream, UnixListener, UnixSocket, UnixStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Connections closed to make room may take a moment to go: this many more may be admitted
/// meanwhile (the reserved descriptors cover them); past that, new ones are refused.
const MAX_OVERSHOOT: usize = 256;
/// The longest pause between two accepts after an accept error.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Raises the soft limit on open files to the hard limit and returns it: the budget is sized
/// from what the process may really hold.
pub fn raise_file_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum
        && limit.current != Some(hard)
    {
        limit.current = Some(hard);
        if let Err(err) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %err, "cannot raise the open-file limit");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Binds a TCP listener with `backlog` (the standard library's is 128, which turns a reconnect
/// storm of thousands into a minute of SYN retries).
pub fn bind_tcp(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Binds a Unix stream listener at `path` with `backlog`.
pub fn bind_unix(path: &Path, backlog: u32) -> io::Result<UnixListener> {
    let socket = UnixSocket::new_stream()?;
    socket.bind(path)?;
    socket.listen(backlog)
}

/// The budget of open connections, shared by every listener.
pub struct ConnectionBudget {
    max: usize,
    open: AtomicUsize,
    /// Connections that may be closed for room, oldest first. A std mutex: held for a map
    /// insert or removal, never across an `.await`.
    idle: Mutex<IdleSet>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct IdleSet {
    next: u64,
    entries: BTreeMap<u64, Arc<Notify>>,
}

/// One admitted connection's place in the budget, given back when dropped.
pub struct Permit {
    budget: Arc<ConnectionBudget>,
}

/// A connection registered as idle: until it is dropped (the connection got busy or went
/// away), the budget may notify the connection's `close` to take its room.
pub struct Idle {
    budget: Arc<ConnectionBudget>,
    id: u64,
}

/// What the budget says to a new connection.
pub enum Admission {
    Admitted(Permit),
    /// No room, and nothing idle to close for it.
    Refused,
}

impl ConnectionBudget {
    /// A budget of `max` connections (at least one).
    pub fn new(max: usize, metrics: Arc<Metrics>) -> Arc<ConnectionBudget> {
        Arc::new(ConnectionBudget {
            max: max.max(1),
            open: AtomicUsize::new(0),
            idle: Mutex::new(IdleSet::default()),
            metrics,
        })
    }

    /// The budget for a process that may hold `file_limit` descriptors: `configured`, or the
    /// limit less `reserve`.
    pub fn size(configured: usize, file_limit: u64, reserve: usize) -> usize {
        match configured {
            0 => usize::try_from(file_limit)
                .unwrap_or(usize::MAX)
                .saturating_sub(reserve)
                .max(1),
            max => max,
        }
    }

    /// Admits a new connection, closing the oldest idle one when the budget is full.
    pub fn admit(self: &Arc<Self>) -> Admission {
        let open = self.open.fetch_add(1, Ordering::AcqRel);
        if open >= self.max {
            let made_room = open < self.max + MAX_OVERSHOOT && self.close_oldest_idle();
            if !made_room {
                self.open.fetch_sub(1, Ordering::AcqRel);
                self.metrics.limit_reached("connections_refused", 1);
                return Admission::Refused;
            }
        }
        Admission::Admitted(Permit {
            budget: self.clone(),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// The budget's size.
    pub fn max(&self) -> usize {
        self.max
    }

    fn close_oldest_idle(&self) -> bool {
        let oldest = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.entries.pop_first()
        };
        match oldest {
            Some((_, close)) => {
                close.notify_one();
                self.metrics.limit_reached("idle_connection_closed", 1);
                true
            }
            None => false,
        }
    }
}

impl Permit {
    /// Registers the connection as idle until the returned guard is dropped; `close` is
    /// notified if the budget needs the room (a stored permit: check that still idle).
    pub fn idle(&self, close: &Arc<Notify>) -> Idle {
        let mut idle = self.budget.idle.lock().unwrap_or_else(|p| p.into_inner());
        let id = idle.next;
        idle.next += 1;
        idle.entries.insert(id, close.clone());
        Idle {
            budget: self.budget.clone(),
            id,
        }
    }
}

impl Permit {
    /// Counts a limit this connection reached (a request timeout, say).
    pub fn limit_reached(&self, limit: &'static str) {
        self.budget.metrics.limit_reached(limit, 1);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.budget.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        let mut idle = self.budget.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.entries.remove(&self.id);
    }
}

/// A listener [`next_connection`] accepts from.
pub trait Accept {
    type Connection;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Connection>> + Send;
}

impl Accept for TcpListener {
    type Connection = TcpStream;
    async fn accept(&self) -> io::Result<TcpStream> {
        TcpListener::accept(self).await.map(|(stream, _)| stream)
    }
}

impl Accept for UnixListener {
    type Connection = UnixStream;
    async fn accept(&self) -> io::Result<UnixStream> {
        UnixListener::accept(self).await.map(|(stream, _)| stream)
    }
}

/// What [`next_connection`] hands over.
pub enum Incoming<C> {
    /// A connection with its place in the budget.
    Admitted(C, Permit),
    /// A connection the budget has no room for: say so briefly and close it.
    Refused(C),
}

/// Waits for the next connection on `listener`; None at shutdown. Accept errors that concern
/// one connection are skipped; the others (out of descriptors, out of memory) are logged once
/// per run of them, counted, and waited out with a backoff from 10 ms to 1 s, so a loop never
/// spins on them.
pub async fn next_connection<L: Accept>(
    listener: &L,
    budget: &Arc<ConnectionBudget>,
    what: &'static str,
    cancel: &CancellationToken,
) -> Option<Incoming<L::Connection>> {
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(connection) => {
                return Some(match budget.admit() {
                    Admission::Admitted(permit) => Incoming::Admitted(connection, permit),
                    Admission::Refused => Incoming::Refused(connection),
                });
            }
            Err(err) if is_per_connection(&err) => continue,
            Err(err) => {
                budget.metrics.limit_reached("accept_error", 1);
                if backoff.is_zero() {
                    tracing::error!(listener = what, error = %err, "cannot accept connections; backing off");
                    backoff = Duration::from_millis(10);
                } else {
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                }
                tokio::select! {
                    () = cancel.cancelled() => return None,
                    () = tokio::time::sleep(backoff) => {}
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_budget_closes_the_oldest_idle_connection_then_refuses() {
        let metrics = Arc::new(Metrics::new());
        let budget = ConnectionBudget::new(2, metrics.clone());
        let Admission::Admitted(first) = budget.admit() else {
            panic!("room")
        };
        let Admission::Admitted(second) = budget.admit() else {
            panic!("room")
        };
        let (first_close, second_close) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let first_idle = first.idle(&first_close);
        let second_idle = second.idle(&second_close);
        // Full: the oldest idle one is asked to close, and the newcomer is let in.
        let Admission::Admitted(third) = budget.admit() else {
            panic!("room made")
        };
        let closing = std::pin::pin!(first_close.notified());
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        assert!(
            closing.poll(&mut context).is_ready(),
            "the oldest is closed"
        );
        assert_eq!(metrics.limit_count("idle_connection_closed"), 1);
        drop((first_idle, second_idle));
        drop(first);
        // Nothing idle now (the second got busy): a newcomer is refused.
        assert_eq!(budget.open(), 2);
        assert!(matches!(budget.admit(), Admission::Refused));
        assert_eq!(metrics.limit_count("connections_refused"), 1);
        assert_eq!(budget.open(), 2);
        drop((second, third));
        assert_eq!(budget.open(), 0);
    }

    /// A listener that fails with EMFILE `errors` times, then accepts.
    struct OutOfFiles {
        errors: AtomicUsize,
    }

    impl Accept for OutOfFiles {
        type Connection = ();
        async fn accept(&self) -> io::Result<()> {
            if self.errors.load(Ordering::Relaxed) == 0 {
                return Ok(());
            }
            self.errors.fetch_sub(1, Ordering::Relaxed);
            Err(io::Error::from_raw_os_error(24))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn accept_errors_back_off_instead_of_spinning() {
        let metrics = Arc::new(Metrics::new());
        let budget = ConnectionBudget::new(10, metrics.clone());
        let listener = OutOfFiles {
            errors: AtomicUsize::new(8),
        };
        let started = tokio::time::Instant::now();
        let incoming = next_connection(&listener, &budget, "test", &CancellationToken::new()).await;
        assert!(matches!(incoming, Some(Incoming::Admitted((), _))));
        // 10, 20, 40 ... 640 ms, then capped at 1 s: 10+20+40+80+160+320+640+1000 ms.
        assert_eq!(started.elapsed(), Duration::from_millis(2270));
        assert_eq!(metrics.limit_count("accept_error"), 8);
    }

    #[test]
    fn the_budget_is_sized_from_the_file_limit() {
        assert_eq!(ConnectionBudget::size(0, 20_000, 512), 19_488);
        assert_eq!(ConnectionBudget::size(100, 20_000, 512), 100);
        assert_eq!(ConnectionBudget::size(0, 100, 512), 1);
    }
}
