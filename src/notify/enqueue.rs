//! The batching writer: jobs arrive in the [`Spool`], appended by the receive loop that read
//! their event, and are inserted from there a batch per transaction. Ingest never waits on the
//! database: a job is on disk before its loop reads the next packet, and a database outage of
//! any length only lets the spool grow (retried with backoff; nothing is held in memory but
//! the batch in hand).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::new_job;
use super::now_ms;
use super::spool::{Spool, SpoolBatch, SpoolReader, Ticket};
use crate::job::JobRequest;
use crate::metrics::Metrics;
use crate::store::{NewJob, Store};

/// The most jobs inserted in one transaction.
const BATCH: usize = 256;
/// The longest wait between two attempts to write a batch while the database is away.
const MAX_RETRY: Duration = Duration::from_secs(5);

/// What the pipeline holds to hand jobs over.
#[derive(Clone)]
pub struct JobHandle {
    spool: Arc<Spool>,
    metrics: Arc<Metrics>,
}

impl JobHandle {
    /// Spools a job: one `write` to the page cache, no other wait. A job that cannot be spooled
    /// (the spool is full, the disk fails) is dropped, counted and logged; the ticket says
    /// which job to wait for with [`JobHandle::wait_durable`].
    pub fn enqueue(&self, request: JobRequest) -> Option<Ticket> {
        match self.spool.append(&request) {
            Ok(ticket) => Some(ticket),
            Err(err) => {
                self.metrics.job_outcome("dropped");
                if matches!(err, super::spool::SpoolError::Full { .. }) {
                    self.metrics.limit_reached("job_spool_full", 1);
                }
                self.spool.log_refusal(&request.user, &err);
                None
            }
        }
    }

    /// Waits until the job is synced to disk (for acknowledgements such as `dlist:`'s).
    pub async fn wait_durable(&self, ticket: Ticket) {
        self.spool.wait_durable(ticket).await;
    }
}

/// Who hears that a batch of jobs was committed.
#[derive(Clone, Default)]
pub struct JobsWritten {
    /// This node's workers, every waiting one.
    pub workers: Arc<Notify>,
    /// Whoever tells other nodes' workers (the cluster): one wake-up for any number of
    /// batches written since it last looked.
    pub elsewhere: Arc<Notify>,
}

impl JobsWritten {
    fn signal(&self) {
        self.workers.notify_waiters();
        self.elsewhere.notify_one();
    }
}

/// Starts the writer and the spool's syncer; `written` hears of each batch committed.
pub fn spawn(
    (spool, reader): (Arc<Spool>, SpoolReader),
    store: Store,
    metrics: Arc<Metrics>,
    written: JobsWritten,
    tracker: &tokio_util::task::TaskTracker,
    shutdown: CancellationToken,
) -> JobHandle {
    tracker.spawn(spool.clone().run_syncer(shutdown.clone()));
    tracker.spawn(run(
        spool.clone(),
        reader,
        store,
        metrics.clone(),
        written,
        shutdown,
    ));
    JobHandle { spool, metrics }
}

/// Drains the spool into the database until shutdown, and at shutdown as far as the database
/// takes it in the grace period: what is left is read at the next start.
async fn run(
    spool: Arc<Spool>,
    mut reader: SpoolReader,
    store: Store,
    metrics: Arc<Metrics>,
    written: JobsWritten,
    shutdown: CancellationToken,
) {
    loop {
        let Some((returned, read)) = read_batch(spool.clone(), reader).await else {
            // The runtime is going away; the spool keeps whatever was not written.
            return;
        };
        reader = returned;
        let Read {
            batch,
            auto_submitted,
        } = match read {
            Ok(read) => read,
            Err(err) => {
                tracing::error!(error = %err, "cannot read the job spool; trying again in 1 s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = shutdown.cancelled() => return,
                }
            }
        };
        if !batch.is_empty()
            && !write_batch(&batch, &auto_submitted, &store, &metrics, &shutdown).await
        {
            // Shutting down with the database away: the spool keeps the batch.
            return;
        }
        if batch.moves()
            && let Err(err) = reader.commit(&spool, &batch)
        {
            tracing::error!(error = %err, "cannot move the job spool's cursor; jobs may be read again");
        }
        if !batch.is_empty() {
            written.signal();
            continue;
        }
        if batch.moves() {
            continue;
        }
        if shutdown.is_cancelled() {
            return;
        }
        tokio::select! {
            () = spool.appended() => {}
            // Receive loops stop at shutdown; one more pass writes what they spooled last.
            () = shutdown.cancelled() => {}
        }
    }
}

/// A batch read from the spool, and for each of its jobs whether an auto-submitted message
/// triggered it.
struct Read {
    batch: SpoolBatch,
    auto_submitted: Vec<bool>,
}

/// Reads the next batch, and the triggering messages' headers, on a blocking thread: one
/// hand-off a batch (a file read each was a hand-off each). None when the runtime shut down
/// first.
async fn read_batch(
    spool: Arc<Spool>,
    mut reader: SpoolReader,
) -> Option<(SpoolReader, std::io::Result<Read>)> {
    let read = tokio::task::spawn_blocking(move || {
        let read = reader.read_batch(&spool, BATCH).map(|batch| {
            let mut head = Vec::new();
            let auto_submitted = batch
                .requests
                .iter()
                .map(|request| triggered_by_auto_submitted(request, &mut head))
                .collect();
            Read {
                batch,
                auto_submitted,
            }
        });
        (reader, read)
    })
    .await;
    match read {
        Ok(read) => Some(read),
        // The closure does not panic on any input; a panic here is a bug worth dying for.
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(_) => None,
    }
}

/// Writes one batch, leaving out the jobs an auto-submitted message triggered; false if
/// shutdown came first.
async fn write_batch(
    batch: &SpoolBatch,
    auto_submitted: &[bool],
    store: &Store,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> bool {
    let mut rows: Vec<NewJob> = Vec::with_capacity(batch.requests.len());
    for (request, &auto_submitted) in batch.requests.iter().zip(auto_submitted) {
        if auto_submitted {
            metrics.job_outcome("skipped_auto_submitted");
            tracing::info!(user = %request.user, "no notification about an auto-submitted message");
            continue;
        }
        rows.push(new_job(request.clone()));
    }
    rows.is_empty() || write(store, &rows, metrics, shutdown).await
}

/// How much of a triggering message is read for its header.
const HEAD_BYTES: usize = 64 * 1024;

/// Whether the message that triggered a notification says `Auto-Submitted` (anything but
/// `no`): RFC 5436 forbids notifying about auto-replies, notifications and bounces. The
/// staging file is read while lmtpd is still delivering; if it is already gone, the
/// notification is sent (its own `Auto-Submitted: auto-notified` stops loops downstream).
/// `head` is the buffer to read into, shared by a batch and made on its first use.
fn triggered_by_auto_submitted(request: &JobRequest, head: &mut Vec<u8>) -> bool {
    use std::io::Read;
    let Some(path) = &request.trigger else {
        return false;
    };
    head.resize(HEAD_BYTES, 0);
    let read = match std::fs::File::open(path) {
        Ok(mut file) => file.read(head).unwrap_or(0),
        Err(err) => {
            tracing::debug!(path, error = %err, "cannot read the triggering message; notifying anyway");
            return false;
        }
    };
    auto_submitted(&String::from_utf8_lossy(&head[..read]))
}

/// Reads the `Auto-Submitted` field of a message's header (unfolded, any case).
fn auto_submitted(message: &str) -> bool {
    let header_end = message
        .find("\r\n\r\n")
        .or_else(|| message.find("\n\n"))
        .unwrap_or(message.len());
    let header = message[..header_end]
        .replace("\r\n", "\n")
        .replace("\n ", " ")
        .replace("\n\t", " ");
    header.lines().any(|line| {
        let Some((name, value)) = line.split_once(':') else {
            return false;
        };
        let value = value.split(';').next().unwrap_or("").trim();
        name.trim().eq_ignore_ascii_case("auto-submitted") && !value.eq_ignore_ascii_case("no")
    })
}

/// Inserts the rows, retrying until the database takes them; false if shutdown came first.
async fn write(
    store: &Store,
    rows: &[NewJob],
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> bool {
    let mut delay = Duration::from_millis(100);
    loop {
        match store.insert_jobs(rows, now_ms()).await {
            Ok(inserted) => {
                let replayed = rows.len() as u64 - inserted;
                for _ in 0..inserted {
                    metrics.job_outcome("queued");
                }
                for _ in 0..replayed {
                    metrics.job_outcome("duplicate");
                }
                return true;
            }
            Err(err) => {
                tracing::error!(error = %err, jobs = rows.len(), retry_in = ?delay, "cannot write jobs; they wait in the spool");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return false,
                }
                delay = (delay * 2).min(MAX_RETRY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_submitted_headers() {
        assert!(auto_submitted(
            "From: a\r\nAuto-Submitted: auto-replied\r\n\r\nbody"
        ));
        assert!(auto_submitted(
            "auto-submitted:\n auto-notified; owner-email=\"x@y\"\n\nbody"
        ));
        assert!(!auto_submitted("From: a\r\nAuto-Submitted: no\r\n\r\nbody"));
        assert!(
            !auto_submitted("From: a\r\nSubject: hi\r\n\r\nAuto-Submitted: auto-replied"),
            "only the header counts"
        );
        assert!(!auto_submitted(""));
    }
}
