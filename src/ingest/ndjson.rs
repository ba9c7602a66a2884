//! Newline-delimited JSON over TCP: one RFC 5423 event object per line, from any producer.
//!
//! A line over the size limit is skipped up to its newline and counted; the connection goes on.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::RejectLog;
use crate::event::{self, ParseError};
use crate::metrics::{PacketHead, Source};
use crate::pipeline::Pipeline;

/// Accepts connections until shutdown; each is served by its own task.
pub async fn run(
    listener: TcpListener,
    pipeline: Arc<Pipeline>,
    max_bytes: usize,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                tracing::debug!(%peer, "ndjson connection");
                let pipeline = pipeline.clone();
                let shutdown = shutdown.clone();
                tracker.spawn(async move { serve(stream, &pipeline, max_bytes, &shutdown).await });
            }
            Err(err) => tracing::warn!(error = %err, "ndjson accept failed"),
        }
    }
}

async fn serve(
    stream: TcpStream,
    pipeline: &Pipeline,
    max_bytes: usize,
    shutdown: &CancellationToken,
) {
    let mut reader = BufReader::new(stream);
    let mut reject_log = RejectLog::new(Source::Ndjson);
    let mut line: Vec<u8> = Vec::new();
    // Bytes of the current line, counted also once it is over the limit and no longer kept.
    let mut line_size = 0usize;
    loop {
        let available = tokio::select! {
            () = shutdown.cancelled() => return,
            available = reader.fill_buf() => match available {
                Ok(available) => available,
                Err(err) => {
                    tracing::debug!(error = %err, "ndjson connection read failed");
                    return;
                }
            },
        };
        if available.is_empty() {
            if line_size > 0 {
                handle_line(
                    std::mem::take(&mut line),
                    line_size,
                    max_bytes,
                    pipeline,
                    &mut reject_log,
                );
            }
            return;
        }
        let (taken, ends_line) = match available.iter().position(|b| *b == b'\n') {
            Some(at) => (at + 1, true),
            None => (available.len(), false),
        };
        let content = if ends_line {
            &available[..taken - 1]
        } else {
            &available[..taken]
        };
        line_size += content.len();
        if line_size <= max_bytes {
            line.extend_from_slice(content);
        } else {
            line = Vec::new();
        }
        reader.consume(taken);
        if ends_line {
            handle_line(
                std::mem::take(&mut line),
                line_size,
                max_bytes,
                pipeline,
                &mut reject_log,
            );
            line_size = 0;
        }
    }
}

fn handle_line(
    mut line: Vec<u8>,
    size: usize,
    max_bytes: usize,
    pipeline: &Pipeline,
    reject_log: &mut RejectLog,
) {
    if size > max_bytes {
        let err = ParseError::TooLarge {
            size,
            limit: max_bytes,
        };
        reject_log.reject(pipeline, &err, size, &line);
        return;
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    let head = PacketHead::new(&line);
    let parsed = String::from_utf8(line)
        .map_err(|_| ParseError::NotUtf8("line"))
        .and_then(event::from_json);
    match parsed {
        Ok(event) => drop(pipeline.dispatch(Source::Ndjson, event)),
        Err(err) => reject_log.reject(pipeline, &err, size, head.as_slice()),
    }
}
