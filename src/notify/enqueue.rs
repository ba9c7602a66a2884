//! The batching writer: jobs arrive from the ingest path over a bounded channel and are
//! inserted a batch per transaction. Ingest never waits: when the channel is full the job is
//! dropped and counted. A database outage delays the batch (retried with backoff, held in
//! memory) but loses nothing while the process runs.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::{new_job, now_ms};
use crate::metrics::Metrics;
use crate::route::JobRequest;
use crate::store::{NewJob, Store};

/// The most jobs inserted in one transaction.
const BATCH: usize = 256;

/// What the pipeline holds to hand jobs over.
#[derive(Clone)]
pub struct JobHandle {
    sender: mpsc::Sender<JobRequest>,
    metrics: Arc<Metrics>,
}

impl JobHandle {
    /// Queues a job for writing. Never waits; a full queue drops the job and counts it.
    pub fn enqueue(&self, request: JobRequest) {
        if let Err(err) = self.sender.try_send(request) {
            let (request, why) = match err {
                mpsc::error::TrySendError::Full(request) => (request, "job writer queue full"),
                mpsc::error::TrySendError::Closed(request) => (request, "shutting down"),
            };
            self.metrics.job_outcome("dropped");
            tracing::error!(user = %request.user, key = %request.key, why, "job dropped");
        }
    }
}

/// Starts the writer; `written` wakes the workers after each batch.
pub fn spawn(
    capacity: usize,
    store: Store,
    metrics: Arc<Metrics>,
    written: Arc<Notify>,
    tracker: &tokio_util::task::TaskTracker,
    shutdown: CancellationToken,
) -> JobHandle {
    let (sender, receiver) = mpsc::channel(capacity.max(1));
    tracker.spawn(run(receiver, store, metrics.clone(), written, shutdown));
    JobHandle { sender, metrics }
}

async fn run(
    mut receiver: mpsc::Receiver<JobRequest>,
    store: Store,
    metrics: Arc<Metrics>,
    written: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut batch: Vec<NewJob> = Vec::with_capacity(BATCH);
    loop {
        let first = tokio::select! {
            first = receiver.recv() => first,
            // At shutdown, stop taking new jobs but write what has arrived.
            () = shutdown.cancelled() => {
                receiver.close();
                receiver.recv().await
            }
        };
        let Some(first) = first else { return };
        let mut requests = vec![first];
        while requests.len() < BATCH {
            match receiver.try_recv() {
                Ok(request) => requests.push(request),
                Err(_) => break,
            }
        }
        for request in requests {
            if triggered_by_auto_submitted(&request).await {
                metrics.job_outcome("skipped_auto_submitted");
                tracing::info!(user = %request.user, "no notification about an auto-submitted message");
                continue;
            }
            batch.push(new_job(request));
        }
        if batch.is_empty() {
            continue;
        }
        write(&store, &mut batch, &metrics).await;
        written.notify_waiters();
    }
}

/// Whether the message that triggered a notification says `Auto-Submitted` (anything but
/// `no`): RFC 5436 forbids notifying about auto-replies, notifications and bounces. The
/// staging file is read while lmtpd is still delivering; if it is already gone, the
/// notification is sent (its own `Auto-Submitted: auto-notified` stops loops downstream).
async fn triggered_by_auto_submitted(request: &JobRequest) -> bool {
    let Some(path) = &request.trigger else {
        return false;
    };
    let mut head = vec![0u8; 64 * 1024];
    let read = match tokio::fs::File::open(path).await {
        Ok(mut file) => {
            use tokio::io::AsyncReadExt;
            file.read(&mut head).await.unwrap_or(0)
        }
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

/// Inserts the batch, retrying until the database takes it.
async fn write(store: &Store, batch: &mut Vec<NewJob>, metrics: &Metrics) {
    let mut delay = Duration::from_millis(100);
    loop {
        match store.insert_jobs(batch, now_ms()).await {
            Ok(inserted) => {
                let replayed = batch.len() as u64 - inserted;
                for _ in 0..inserted {
                    metrics.job_outcome("queued");
                }
                for _ in 0..replayed {
                    metrics.job_outcome("duplicate");
                }
                batch.clear();
                return;
            }
            Err(err) => {
                tracing::error!(error = %err, jobs = batch.len(), retry_in = ?delay, "cannot write jobs; will retry");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
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
