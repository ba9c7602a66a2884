//! How the process runs and stops: the async runtime, the connection budget and the shutdown
//! grace.

use serde::{Deserialize, Serialize};

/// The async runtime.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Threads that run tasks; 0 means one per core the process may use. With one, mailpush
    /// runs a single-threaded event loop (as nginx does per worker), which spends about 15 %
    /// less CPU per delivery than a work-stealing scheduler with one worker.
    pub worker_threads: usize,
}

impl RuntimeConfig {
    /// The worker threads to start: the configured count, or one per usable core.
    pub fn threads(&self) -> usize {
        match self.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            threads => threads,
        }
    }
}

/// Stopping.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Seconds that in-flight pushes, the job in hand and the job writer get to finish after
    /// SIGTERM; EventSource clients are told to come back and closed at once.
    pub grace_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { grace_secs: 10 }
    }
}

/// The budget every accepted connection (HTTP, streams, NDJSON, dlist) is counted against.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionsConfig {
    /// Connections open at once, of every kind; 0 sizes it from the file limit (raised to its
    /// hard maximum at start) less `reserve_fds`. When it is reached, the oldest idle
    /// connection (a keep-alive between requests, or one yet to send its first request) is
    /// closed to make room; with none idle, a new connection is refused (HTTP 503).
    pub max: usize,
    /// File descriptors kept out of the budget for the database, the spool and journal, the
    /// outbox, SMTP and provider connections.
    pub reserve_fds: usize,
    /// A keep-alive connection idle this long between requests is closed, and so is one that
    /// takes longer to send a request head.
    pub idle_secs: u64,
    /// The longest a request may take from its head to its answer (a slow body gets 408).
    pub request_secs: u64,
    /// The kernel's queue of connections not yet accepted, per listener (capped by
    /// `net.core.somaxconn`): room for every client of a restarted node to reconnect at once.
    pub backlog: u32,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            max: 0,
            reserve_fds: 512,
            idle_secs: 60,
            request_secs: 30,
            backlog: 4096,
        }
    }
}
