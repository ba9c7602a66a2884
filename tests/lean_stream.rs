//! The two ways a stream is served, over raw TCP so each path is chosen for certain: a new
//! connection whose first request is a stream gets the lean writer (close-delimited, one write
//! per frame); a stream asked for on a keep-alive connection hyper already serves gets the
//! same frames chunked. Refusals on the lean path are whole responses.

mod common;

use common::raw::Raw;
use common::{TestApp, metric};
use tokio::io::AsyncWriteExt;

fn stream_request(token: &str) -> String {
    format!(
        "GET /events HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
}

async fn connections(app: &TestApp) -> f64 {
    metric(&app.metrics().await, "mailpush_eventsource_connections")
}

/// Splits the `retry:` line off the front of a frame; checks that its delay is
/// `http.retry_ms` (5 s) plus at most 20 % of jitter.
fn after_retry(frame: &str) -> &str {
    let (line, rest) = frame.split_once('\n').expect("a line");
    let delay: u64 = line
        .strip_prefix("retry: ")
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("a retry line: {frame:?}"));
    assert!((5000..=6000).contains(&delay), "{delay}");
    rest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_gets_one_chunk_per_frame_and_frees_its_slot_on_close() {
    let app = TestApp::start().await;
    let mut raw = Raw::connect(&app).await;
    // The head in pieces, as a slow client sends it.
    let request = stream_request(&app.token("alice"));
    let (first, rest) = request.split_at(20);
    raw.send(first).await;
    raw.socket.flush().await.unwrap();
    raw.send(rest).await;
    let head = raw.until("\r\n\r\n").await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(
        head.contains("content-type: text/event-stream\r\n"),
        "{head}"
    );
    assert!(head.contains("cache-control: no-cache\r\n"), "{head}");
    assert!(head.contains("connection: close\r\n"), "{head}");
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    // Nothing to say yet: the reconnection hint as a field line that ends no block.
    assert_eq!(after_retry(&raw.chunk().await), "");

    app.send_datagram(&common::mail_event_datagram("alice", 7));
    assert_eq!(
        raw.chunk().await,
        "event: push\nid: m7c0a0\ndata: {\"mailModSeq\":7,\"calendarModSeq\":0,\"contactsModSeq\":0}\n\n",
        "one frame, one chunk"
    );
    // Bytes from the client do not disturb the stream.
    raw.send("stray bytes").await;
    app.send_datagram(&common::mail_event_datagram("alice", 8));
    assert!(raw.chunk().await.contains("id: m8c0a0\n"));

    assert_eq!(connections(&app).await, 1.0);
    drop(raw);
    // The writer notices the close while idle: no frame has to fail first.
    common::wait_until("the slot is free", || async {
        connections(&app).await == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_waiting_at_connect_carries_the_retry_hint_in_its_block() {
    let app = TestApp::start().await;
    app.send_datagram(&common::mail_event_datagram("alice", 3));
    let mut alice = app.sse("alice").await;
    assert_eq!(alice.next_state().await.0, 3);
    let mut raw = Raw::connect(&app).await;
    raw.send(&stream_request(&app.token("alice"))).await;
    raw.until("\r\n\r\n").await;
    assert_eq!(
        after_retry(&raw.chunk().await),
        "event: push\nid: m3c0a0\ndata: {\"mailModSeq\":3,\"calendarModSeq\":0,\"contactsModSeq\":0}\n\n"
    );
    // At shutdown: the hint again, then the end of the body.
    app.stop().await;
    assert_eq!(after_retry(&raw.chunk().await), "");
    assert_eq!(raw.read_to_close().await, "0\r\n\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_a_keep_alive_connection_is_served_by_hyper_with_the_same_frames() {
    let app = TestApp::start().await;
    let mut raw = Raw::connect(&app).await;
    raw.send("GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await;
    let head = raw.until("\r\n\r\n").await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert_eq!(raw.until("ok\n").await, "ok\n");

    raw.send(&stream_request(&app.token("alice"))).await;
    let head = raw.until("\r\n\r\n").await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(
        head.contains("content-type: text/event-stream\r\n"),
        "{head}"
    );
    assert!(
        head.contains("transfer-encoding: chunked\r\n"),
        "hyper's framing: {head}"
    );
    assert!(raw.until("retry: ").await.len() < 16);
    app.send_datagram(&common::mail_event_datagram("alice", 9));
    let chunk = raw.until("}\n\n").await;
    assert!(
        chunk.ends_with("event: push\nid: m9c0a0\ndata: {\"mailModSeq\":9,\"calendarModSeq\":0,\"contactsModSeq\":0}\n\n"),
        "{chunk:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_on_the_lean_path_are_whole_responses() {
    let app = TestApp::start().await;
    let mut raw = Raw::connect(&app).await;
    raw.send("GET /events HTTP/1.1\r\nHost: test\r\n\r\n").await;
    let response = raw.read_to_close().await;
    let (head, body) = response.split_once("\r\n\r\n").expect("a head");
    let head = format!("{}\r\n", head.to_ascii_lowercase());
    assert!(head.starts_with("http/1.1 401 unauthorized\r\n"), "{head}");
    assert!(head.contains("www-authenticate: bearer\r\n"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}\r\n", body.len())),
        "{head}"
    );
    let body: serde_json::Value = serde_json::from_str(body).expect("json");
    assert_eq!(body["code"], "token_missing");
    assert_eq!(
        metric(
            &app.metrics().await,
            "mailpush_requests_refused_total{reason=\"token_missing\"}"
        ),
        1.0,
        "counted once"
    );

    // Not a stream request: hyper answers, and the connection stays open for the next one.
    let mut raw = Raw::connect(&app).await;
    raw.send(
        "GET /nowhere HTTP/1.1\r\nHost: test\r\n\r\nGET /healthz HTTP/1.1\r\nHost: test\r\n\r\n",
    )
    .await;
    assert!(
        raw.until("\r\n\r\n")
            .await
            .to_ascii_lowercase()
            .starts_with("http/1.1 404")
    );
    let second = raw.until("ok\n").await.to_ascii_lowercase();
    assert!(second.starts_with("http/1.1 200 ok\r\n"), "{second}");
}
