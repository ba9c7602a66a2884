//! The lean stream writer: once the router has answered a stream request with a feed, the
//! connection's task is this one, and it lives as long as the stream. It writes the response
//! head, then each frame as one chunk, straight to the socket, and holds nothing while idle but
//! the socket and the feed ([`super::serve`] reads the request and decides who serves it).

use std::io;
use std::task::Poll;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::listen::Permit;
use crate::stream::Feed;

/// The lean stream: the head, then each frame as the feed yields it, one chunk per frame,
/// until the feed ends (shutdown, `closeafter`) or the client goes. It lives as long as the
/// connection, so it is kept small: one place awaits the feed, one awaits the socket.
///
/// Chunked, not close-delimited, because readers that fill a fixed buffer (`urllib3` under
/// `sseclient-py`) hand over a close-delimited body only when the buffer is full, so each event
/// would wait for the next; a chunk is handed over as soon as it is whole.
///
/// A plain function returning an `async move` block: an `async fn` would store its arguments
/// twice in the future (rust-lang/rust#62958), and this future is the connection's whole cost.
///
/// A write the socket takes at once needs no timer. Only one that finds the socket full (the
/// client stopped reading) waits, for at most `send_timeout`, in a boxed future, so an idle
/// stream carries no timer's room; past it the stream is closed and counted (`send_timeout`).
pub(super) fn write_stream(
    mut socket: TcpStream,
    head: Vec<u8>,
    mut feed: Feed,
    permit: Permit,
    send_timeout: Duration,
) -> impl std::future::Future<Output = ()> + Send {
    let mut out = head;
    // Kept as milliseconds: a `Duration` is twice the room in a future that every idle
    // stream holds.
    let send_timeout_ms = u32::try_from(send_timeout.as_millis()).unwrap_or(u32::MAX);
    // `permit`, moved in, is the stream's place in the connection budget, given back when
    // the stream ends.
    async move {
        let mut ended = false;
        loop {
            // The one place that writes (the last chunk too), so the future holds one write.
            let taken = match socket.try_write(&out) {
                Ok(taken) => taken,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => 0,
                Err(_) => return,
            };
            if taken < out.len() {
                // Boxed with its timer: only a stream whose client stopped reading pays for
                // them, and only while it waits.
                let rest = Box::pin(tokio::time::timeout(
                    Duration::from_millis(u64::from(send_timeout_ms)),
                    socket.write_all(&out[taken..]),
                ));
                match rest.await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        permit.limit_reached("send_timeout");
                        return;
                    }
                }
            }
            if ended {
                let _ = socket.shutdown().await;
                return;
            }
            // Written: the buffer goes now, not when the next frame replaces it. An idle
            // stream would otherwise hold its last chunk (the head and first frame, a few
            // hundred bytes) for as long as it waits.
            drop(std::mem::take(&mut out));
            out = loop {
                // One wait on both, polled by hand: the feed's channel (or ping timer), and
                // the socket's reader slot, which holds the waker. No future of either is kept
                // in this one's state.
                let woke = std::future::poll_fn(|cx| {
                    if let Poll::Ready(frame) = feed.poll_frame(cx) {
                        return Poll::Ready(Ok(frame));
                    }
                    socket.poll_read_ready(cx).map(Err)
                })
                .await;
                match woke {
                    Ok(Some(next)) => break chunk(&next),
                    Ok(None) => {
                        ended = true;
                        break LAST_CHUNK.to_vec();
                    }
                    Err(ready) => {
                        if ready.is_err() || client_went(&socket) {
                            return;
                        }
                    }
                }
            };
        }
    }
}

/// The end of a chunked body.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// `frame` as one chunk of a chunked body, ready for one write.
fn chunk(frame: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut out = Vec::with_capacity(frame.len() + 12);
    let _ = write!(out, "{:x}\r\n", frame.len());
    out.extend_from_slice(frame);
    out.extend_from_slice(b"\r\n");
    out
}

/// Reads what the client sent on a stream connection (nothing is expected) and tells whether
/// it closed. Its buffer lives on the stack for this call only.
fn client_went(socket: &TcpStream) -> bool {
    let mut discard = [0u8; 64];
    loop {
        match socket.try_read(&mut discard) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return false,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn frames_are_chunks() {
        assert_eq!(chunk(b":\n"), b"2\r\n:\n\r\n");
        let frame = vec![b'x'; 300];
        let framed = chunk(&frame);
        assert!(framed.starts_with(b"12c\r\nxxx"));
        assert!(framed.ends_with(b"xxx\r\n"));
        assert_eq!(framed.len(), 300 + 7);
    }

    /// An idle stream costs its task, and the task is mostly this future: keep it from
    /// growing back (a timer, a waiter, a `select!` or an `async fn` argument copy adds 50 to
    /// 300 bytes). tokio aligns a task to 128 bytes and adds about 112 of its own (with the
    /// tracker's token), so a future of up to 272 bytes keeps the task in 384: it was 512 with
    /// a 328-byte future, and 640 with 496.
    #[tokio::test]
    async fn an_idle_stream_stays_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (socket, _) = listener.accept().await.unwrap();
        let hub = crate::stream::StateHub::new(10, 10);
        let options = crate::stream::FeedOptions {
            format: crate::stream::Format::Legacy,
            retry_ms: 1,
            sent: Default::default(),
            latency: prometheus_client::metrics::histogram::Histogram::new([1.0]),
            jmap_ids: crate::stream::JmapIds::Auto,
        };
        let feed = Feed::new(hub.subscribe("alice").unwrap(), None, options);
        let budget = crate::listen::ConnectionBudget::new(1, Default::default());
        let crate::listen::Admission::Admitted(permit) = budget.admit() else {
            panic!("room for one")
        };
        let stream = write_stream(socket, Vec::new(), feed, permit, Duration::from_secs(1));
        let size = std::mem::size_of_val(&stream);
        assert!(size <= 272, "the stream future grew to {size} bytes");
    }
}
