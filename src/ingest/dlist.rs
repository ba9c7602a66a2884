//! The Cyrus `dlist:` stream socket (`notifysocket: dlist:/path`).
//!
//! Cyrus opens one connection per notification, writes one record, waits for `OK NIL`, and
//! closes. The reply goes out after the event is dispatched, so it is a true acknowledgement;
//! a bad record gets `NO` with the reason (Cyrus logs it) and the connection is closed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::RejectLog;
use super::socket::{self, SocketAccess};
use crate::event::dlist::{DlistError, REPLY_OK, parse_record};
use crate::event::{self, ParseError};
use crate::ingest::Source;
use crate::listen::{ConnectionBudget, Incoming, next_connection};
use crate::pipeline::Pipeline;

/// Connections served at once; Cyrus holds one per process that is sending.
const MAX_CONNECTIONS: usize = 1024;
/// A connection that sends nothing for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds the socket file, replacing a stale one, with the configured mode and group.
pub fn bind(path: &Path, access: &SocketAccess, backlog: u32) -> anyhow::Result<UnixListener> {
    socket::prepare(path, socket::Kind::Stream)?;
    let listener = crate::listen::bind_unix(path, backlog)
        .with_context(|| format!("cannot bind dlist socket {}", path.display()))?;
    socket::apply_access(path, access)?;
    Ok(listener)
}

/// Accepts connections until shutdown; each is served by its own task and holds a place in
/// `budget` (one it has no room for gets `NO`).
pub async fn run(
    listener: UnixListener,
    pipeline: Arc<Pipeline>,
    max_bytes: usize,
    budget: Arc<ConnectionBudget>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Wait for a free slot first, so a connection storm queues in the kernel backlog.
        let slot = tokio::select! {
            () = shutdown.cancelled() => return,
            slot = permits.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let Some(incoming) = next_connection(&listener, &budget, "dlist", &shutdown).await else {
            return;
        };
        let (mut stream, permit) = match incoming {
            Incoming::Admitted(stream, permit) => (stream, permit),
            Incoming::Refused(mut stream) => {
                tracker.spawn(async move {
                    let _ = stream.write_all(b"NO \"too many connections\"\r\n").await;
                });
                continue;
            }
        };
        let pipeline = pipeline.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            serve(&mut stream, &pipeline, max_bytes, &shutdown).await;
            drop((slot, permit));
        });
    }
}

async fn serve(
    stream: &mut UnixStream,
    pipeline: &Pipeline,
    max_bytes: usize,
    shutdown: &CancellationToken,
) {
    let mut reject_log = RejectLog::new(Source::Dlist);
    let mut buffer: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match parse_record(&buffer, max_bytes) {
            Ok((notification, used)) => {
                match event::from_notification(notification) {
                    // `OK` is a promise: an event that made jobs is acknowledged once they
                    // are synced to disk.
                    Ok(event) => {
                        if let Some(ticket) = pipeline.dispatch(Source::Dlist, event) {
                            pipeline.wait_durable(ticket).await;
                        }
                    }
                    Err(err) => {
                        reject_log.reject(pipeline, &err, used, &buffer[..used]);
                        let _ = stream.write_all(&no_reply(&err)).await;
                        return;
                    }
                }
                buffer.drain(..used);
                if stream.write_all(REPLY_OK).await.is_err() {
                    return;
                }
                continue;
            }
            Err(DlistError::Invalid(err)) => {
                reject_log.reject(pipeline, &err, buffer.len(), &buffer);
                let _ = stream.write_all(&no_reply(&err)).await;
                return;
            }
            Err(DlistError::Incomplete) if buffer.len() > max_bytes + 1024 => {
                let err = ParseError::TooLarge {
                    size: buffer.len(),
                    limit: max_bytes,
                };
                reject_log.reject(pipeline, &err, buffer.len(), &buffer);
                let _ = stream.write_all(&no_reply(&err)).await;
                return;
            }
            Err(DlistError::Incomplete) => {}
        }
        let read = tokio::select! {
            () = shutdown.cancelled() => return,
            read = tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut chunk)) => read,
        };
        match read {
            Ok(Ok(n)) if n > 0 => buffer.extend_from_slice(&chunk[..n]),
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "dlist connection read failed");
                return;
            }
            // End of stream or idle timeout: a partial record is counted as truncated.
            Ok(Ok(_)) | Err(_) => {
                if !buffer.is_empty() {
                    let err = ParseError::Truncated("dlist record");
                    reject_log.reject(pipeline, &err, buffer.len(), &buffer);
                }
                return;
            }
        }
    }
}

/// A dlist `NO` reply carrying the reason as a quoted string.
fn no_reply(err: &ParseError) -> Vec<u8> {
    let reason: String = err
        .to_string()
        .chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect();
    format!("NO \"{reason}\"\r\n").into_bytes()
}
