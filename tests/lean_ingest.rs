//! `POST /ingest` over raw TCP, so the listener's fast path is chosen for certain: one good
//! event per request is answered there, pipelined or in pieces; anything else on the same
//! connection is answered by the axum handler exactly as before, and the connection goes on.

mod common;

use common::raw::Raw;
use common::{INGEST_SECRET, TestApp, metric};

fn event(user: &str, modseq: u64) -> String {
    format!(
        r#"{{"event":"MessageNew","uri":"imap://h/user/{user};UIDVALIDITY=1/;UID={modseq}","modseq":{modseq},"vnd.cmu.mbtype":"e"}}"#
    )
}

fn post(secret: &str, extra_headers: &str, body: &str) -> String {
    format!(
        "POST /ingest HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {secret}\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Reads one response with a `Content-Length` body: (status line and headers lowercased, body).
async fn response(raw: &mut Raw) -> (String, String) {
    let head = raw.until("\r\n\r\n").await.to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .unwrap_or_else(|| panic!("no content-length in {head}"))
        .trim()
        .parse()
        .expect("a length");
    (head, raw.take(length).await)
}

async fn http_events(app: &TestApp) -> f64 {
    metric(
        &app.metrics().await,
        "mailpush_events_received_total{source=\"http\",type=\"MessageNew\"}",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_and_split_requests_are_each_accepted_and_reach_streams() {
    let app = TestApp::start().await;
    let mut alice = app.sse("alice").await;
    let mut raw = Raw::connect(&app).await;
    let pipelined = [
        post(INGEST_SECRET, "", &event("alice", 11)),
        post(INGEST_SECRET, "", &event("bob", 5)),
        post(INGEST_SECRET, "", &event("alice", 12)),
    ]
    .concat();
    raw.send(&pipelined).await;
    for _ in 0..3 {
        let (head, body) = response(&mut raw).await;
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        assert!(
            head.contains("content-type: application/json\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\ndate: "), "{head}");
        assert!(!head.contains("connection: close"), "kept alive: {head}");
        assert_eq!(body, r#"{"accepted":1}"#);
    }
    // A slow producer: the head, then the body in two pieces.
    let request = post(INGEST_SECRET, "", &event("alice", 13));
    let (head, body) = request.split_at(request.len() - 30);
    raw.send(head).await;
    let (first, second) = body.split_at(10);
    raw.send(first).await;
    raw.send(second).await;
    let (head, body) = response(&mut raw).await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert_eq!(body, r#"{"accepted":1}"#);

    assert_eq!(http_events(&app).await, 4.0, "each event counted once");
    let mut mail = 0;
    while mail < 13 {
        let (next, _, _) = alice.next_state().await;
        assert!(
            next > mail && next <= 13,
            "states only move forward: {next}"
        );
        mail = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anything_unusual_gets_the_full_handler_on_the_same_connection() {
    let app = TestApp::start().await;
    let mut raw = Raw::connect(&app).await;
    raw.send(&post(INGEST_SECRET, "", &event("alice", 1))).await;
    assert_eq!(response(&mut raw).await.1, r#"{"accepted":1}"#);

    // A wrong secret: the handler's 401, and the connection stays open.
    raw.send(&post("wrong", "", &event("alice", 2))).await;
    let (head, body) = response(&mut raw).await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["code"], "ingest_unauthorized");

    // A bad event: the handler's report of it.
    raw.send(&post(INGEST_SECRET, "", r#"{"event":"MessageNew","#))
        .await;
    let (head, body) = response(&mut raw).await;
    assert!(head.starts_with("http/1.1 400"), "{head}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["code"], "invalid_json");

    // A batch, a chunked body, and another path, all still on this connection.
    let batch = format!("[{},{}]", event("alice", 3), event("bob", 3));
    raw.send(&post(INGEST_SECRET, "", &batch)).await;
    assert_eq!(response(&mut raw).await.1, r#"{"accepted":2}"#);
    let body = event("alice", 4);
    raw.send(&format!(
        "POST /ingest HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {INGEST_SECRET}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    ))
    .await;
    assert_eq!(response(&mut raw).await.1, r#"{"accepted":1}"#);
    raw.send("GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await;
    assert_eq!(response(&mut raw).await.1, "ok\n");

    assert_eq!(http_events(&app).await, 4.0);
    let metrics = app.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "mailpush_packets_rejected_total{source=\"http\",reason=\"invalid_json\"}"
        ),
        1.0
    );

    // A body over http.max_body_bytes first thing on a connection: the handler's 413.
    let mut raw = Raw::connect(&app).await;
    let huge = format!(
        "{{\"event\":\"MessageNew\",\"x\":\"{}\"}}",
        "a".repeat(1 << 20)
    );
    raw.send(&post(INGEST_SECRET, "", &huge)).await;
    let (head, _) = response(&mut raw).await;
    assert!(head.starts_with("http/1.1 413"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_an_idle_ingest_connection() {
    let app = TestApp::start().await;
    let mut raw = Raw::connect(&app).await;
    raw.send(&post(
        INGEST_SECRET,
        "Connection: keep-alive\r\n",
        &event("alice", 1),
    ))
    .await;
    assert_eq!(response(&mut raw).await.1, r#"{"accepted":1}"#);
    app.stop().await;
    assert_eq!(
        raw.read_to_close().await,
        "",
        "closed, with nothing more said"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_content_length_is_not_read_as_a_length() {
    let app = TestApp::start().await;
    let body = event("alice", 3);
    for length in [format!("+{}", body.len()), format!(" {}x", body.len())] {
        let mut raw = Raw::connect(&app).await;
        raw.send(&format!(
            "POST /ingest HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {INGEST_SECRET}\r\nContent-Length: {length}\r\n\r\n{body}"
        ))
        .await;
        let answer = raw.read_to_close().await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{length}: {answer}");
    }
    assert_eq!(http_events(&app).await, 0.0, "no event taken");
}
