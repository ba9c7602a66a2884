//! The recorder of the workers' results: done, retried later with backoff, or dead with its
//! last error, a batch per transaction as they come in, so that per email a worker pool pays a
//! fraction of a commit instead of one.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use super::now_ms;
use crate::store::{JobResult, Store};

/// How often the recorder tries again while the database is away.
const RECORD_RETRY: Duration = Duration::from_millis(250);
/// The most results recorded in one transaction.
pub(super) const RECORD_BATCH: usize = 256;

/// A job's result on its way to the recorder.
pub(super) struct Finished {
    pub(super) id: i64,
    pub(super) result: JobResult,
    /// When the job's lease runs out: a result not recorded by then is given up (the job
    /// is claimed again, at least once).
    pub(super) lease_ends: tokio::time::Instant,
}

/// Records the workers' results as they come in, each batch in one transaction, until every
/// sender is gone (the dispatcher and the last send, at shutdown). While the database is away
/// it keeps trying, within the results' leases: a sent job left `running` would be claimed and
/// sent again once its lease ran out. A job put back in the queue wakes the dispatcher, which
/// may have looked for due jobs while it was still running.
pub(super) async fn record_results(
    store: Store,
    mut results: mpsc::Receiver<Finished>,
    wake: Arc<Notify>,
) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    while results.recv_many(&mut batch, RECORD_BATCH).await > 0 {
        loop {
            let now = tokio::time::Instant::now();
            // A result whose lease has run out is another claim's now: at least once.
            batch.retain(|finished: &Finished| {
                let alive = finished.lease_ends > now;
                if !alive {
                    tracing::error!(
                        job = finished.id,
                        "the job's result was not recorded before its lease ran out"
                    );
                }
                alive
            });
            if batch.is_empty() {
                break;
            }
            let rows: Vec<(i64, JobResult)> = batch
                .iter()
                .map(|finished| (finished.id, finished.result.clone()))
                .collect();
            let Err(err) = store.record_results(&rows, now_ms()).await else {
                if rows
                    .iter()
                    .any(|(_, result)| matches!(result, JobResult::Retry { .. }))
                {
                    wake.notify_waiters();
                }
                break;
            };
            tracing::warn!(jobs = rows.len(), error = %err, "cannot record the jobs' results yet; retrying");
            tokio::time::sleep(RECORD_RETRY).await;
        }
        batch.clear();
    }
}
