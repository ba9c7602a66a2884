//! The Cyrus notify datagram socket (`notifysocket: /path`).
//!
//! One datagram is one packet. The loop reads into one reused buffer one byte larger than the
//! limit, so an oversized datagram shows up as a full buffer and is dropped whole, never
//! parsed half.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::UnixDatagram;
use tokio_util::sync::CancellationToken;

use super::RejectLog;
use super::socket::{self, SocketAccess};
use crate::event::{self, ParseError};
use crate::ingest::Source;
use crate::pipeline::Pipeline;

/// Cyrus never sends a datagram over 64 KiB (`min(SO_SNDBUF/10 - 32, 65536)`).
pub const MAX_DATAGRAM: usize = 65_536;

/// Binds the socket file, replacing a stale one, with the configured mode and group.
pub fn bind(path: &Path, access: &SocketAccess) -> anyhow::Result<UnixDatagram> {
    socket::prepare(path, socket::Kind::Datagram)?;
    let socket = UnixDatagram::bind(path)
        .with_context(|| format!("cannot bind datagram socket {}", path.display()))?;
    socket::apply_access(path, access)?;
    Ok(socket)
}

/// Drains the socket until shutdown, dispatching each packet as it arrives.
pub async fn run(
    socket: UnixDatagram,
    pipeline: Arc<Pipeline>,
    max_bytes: usize,
    shutdown: CancellationToken,
) {
    let limit = max_bytes.min(MAX_DATAGRAM);
    let mut buffer = vec![0u8; limit + 1];
    let mut reject_log = RejectLog::new(Source::Cyrus);
    loop {
        let received = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            received = socket.recv(&mut buffer) => received,
        };
        let size = match received {
            Ok(size) => size,
            Err(err) => {
                // Receive errors on a bound datagram socket are transient (ENOBUFS, EINTR);
                // the listener keeps going.
                tracing::warn!(error = %err, "cyrus socket receive failed");
                continue;
            }
        };
        if size > limit {
            let err = ParseError::TooLarge { size, limit };
            reject_log.reject(&pipeline, &err, size, &buffer);
            continue;
        }
        match event::packet::from_datagram(&buffer[..size]).and_then(event::from_notification) {
            // A job it made is in the spool's page cache now: a crash from here on keeps it.
            Ok(event) => drop(pipeline.dispatch(Source::Cyrus, event)),
            Err(err) => reject_log.reject(&pipeline, &err, size, &buffer[..size]),
        }
    }
}
