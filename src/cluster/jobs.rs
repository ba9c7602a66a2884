//! Workers on every node, woken by jobs any node writes: the job writer signals each batch it
//! commits to the shared database, this node says so on `<prefix>.jobs`, and every other node
//! wakes its workers. Without it they would find the jobs at their next look (at most 15 s).
//!
//! A job a dead node had claimed is not announced: the workers look again when its lease runs
//! out, as on one node.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Link;

/// Announces every batch `written` signals, until shutdown. Several batches written while one
/// announcement is out make one more, not many.
pub async fn run_announcer(link: Arc<Link>, written: Arc<Notify>, shutdown: CancellationToken) {
    let subject = link.names.jobs_subject();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = written.notified() => {}
        }
        match link.publish(subject.clone(), Bytes::new()).await {
            Ok(()) => link.metrics.cluster.message_sent("jobs"),
            // The others find the jobs at their next look; nothing is lost.
            Err(err) => tracing::debug!(error = %err, "cluster: new jobs not announced"),
        }
    }
}

/// Wakes this node's workers (`workers`) whenever another node announces jobs, until shutdown.
pub async fn run_listener(link: Arc<Link>, workers: Arc<Notify>, shutdown: CancellationToken) {
    let subject = link.names.jobs_subject();
    let Some(mut subscriber) = link.subscribe_until_done(subject, &shutdown).await else {
        return;
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            message = subscriber.next() => match message {
                Some(_) => {
                    link.metrics.cluster.message_received("jobs");
                    workers.notify_waiters();
                }
                None => return,
            },
        }
    }
}
