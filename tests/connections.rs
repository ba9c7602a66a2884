//! Every connection has a bound: idle keep-alives and slow requests time out, a full budget
//! closes idle connections for room and then refuses, and listeners have a deep backlog.

mod common;

use common::raw::Raw;
use common::{INGEST_SECRET, TestApp, metric};

fn limit(metrics: &str, name: &str) -> f64 {
    metric(
        metrics,
        &format!("mailpush_limits_reached_total{{limit=\"{name}\"}}"),
    )
}

/// An app whose connections idle at most 1 s and whose requests take at most 1 s.
async fn impatient_app() -> TestApp {
    TestApp::builder()
        .env("MAILPUSH_CONNECTIONS__IDLE_SECS", "1")
        .env("MAILPUSH_CONNECTIONS__REQUEST_SECS", "1")
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_is_closed() {
    let app = impatient_app().await;
    let mut raw = Raw::connect(&app).await;
    raw.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    raw.until("ok\n").await;
    assert_eq!(raw.read_to_close().await, "", "closed with nothing more");
    // (The harness's own pooled connection may have timed out too.)
    assert!(limit(&app.metrics().await, "idle_timeout") >= 1.0);
    // A connection that never sends a whole head is closed too.
    let mut raw = Raw::connect(&app).await;
    raw.send("GET /healthz HTTP/1.1\r\n").await;
    assert_eq!(raw.read_to_close().await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_gets_408() {
    let app = impatient_app().await;
    let mut raw = Raw::connect(&app).await;
    raw.send(&format!(
        "POST /devices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"platform\"",
        app.token("alice")
    ))
    .await;
    let answer = raw.read_to_close().await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    // On the lean ingest path too: the connection is closed.
    let mut raw = Raw::connect(&app).await;
    raw.send(&format!(
        "POST /ingest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {INGEST_SECRET}\r\nContent-Length: 100\r\n\r\n{{\"event\""
    ))
    .await;
    assert_eq!(raw.read_to_close().await, "");
    assert_eq!(limit(&app.metrics().await, "request_timeout"), 2.0);
}

/// A stream for `user` on a raw connection, its first frame read.
async fn stream(app: &TestApp, user: &str) -> Raw {
    let mut raw = Raw::connect(app).await;
    raw.send(&format!(
        "GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        app.token(user)
    ))
    .await;
    raw.until("retry:").await;
    raw
}

/// A connection that made one request and now idles.
async fn idle_keep_alive(app: &TestApp) -> Raw {
    let mut raw = Raw::connect(app).await;
    raw.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    raw.until("ok\n").await;
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_budget_closes_idle_connections_then_refuses() {
    let app = TestApp::builder()
        .env("MAILPUSH_CONNECTIONS__MAX", "3")
        .start()
        .await;
    // Streams are never closed for room.
    let mut alice = stream(&app, "alice").await;
    let _bob = stream(&app, "bob").await;
    let mut first = idle_keep_alive(&app).await;
    // Each newcomer closes the oldest idle connection: after two, the first is gone.
    let _second = idle_keep_alive(&app).await;
    let _third = idle_keep_alive(&app).await;
    assert_eq!(
        first.read_to_close().await,
        "",
        "the oldest idle one is closed"
    );
    // A third stream takes the last idle one's place; then there is nothing idle to close,
    // and a newcomer is refused with 503 while the streams go on.
    let _carol = stream(&app, "carol").await;
    let mut refused = Raw::connect(&app).await;
    let answer = refused.read_to_close().await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("over_capacity"), "{answer}");
    app.send_datagram(&common::mail_event_datagram("alice", 7));
    alice.until("\"mailModSeq\":7").await;
    drop((refused, _carol));
    let metrics = app.metrics().await;
    assert!(
        limit(&metrics, "idle_connection_closed") >= 3.0,
        "{metrics}"
    );
    assert!(limit(&metrics, "connections_refused") >= 1.0, "{metrics}");
}

#[tokio::test]
async fn listeners_have_a_deep_backlog() {
    let app = TestApp::start().await;
    let output = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", app.http.port())])
        .output();
    let Ok(output) = output else {
        eprintln!("no ss here: backlog not checked");
        return;
    };
    let listing = String::from_utf8_lossy(&output.stdout);
    let backlog: u32 = listing
        .split_whitespace()
        .nth(2)
        .and_then(|field| field.parse().ok())
        .unwrap_or_else(|| panic!("ss listing: {listing}"));
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(backlog, somaxconn.min(4096), "{listing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_client_stopped_reading_is_closed_after_the_send_timeout() {
    let app = TestApp::builder()
        .env("MAILPUSH_HTTP__SEND_TIMEOUT_SECS", "1")
        .start()
        .await;
    let mut bob = app.sse("bob").await;
    // Alice's client has a small receive window and never reads past the head.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut alice = socket.connect(app.http).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut alice,
        format!(
            "GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            app.token("alice")
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (timed_out, events) = flood_until(&app, 1.0).await;
    assert!(timed_out, "no send timeout after {events} reminders");
    eprintln!("alice's stream closed after {events} reminders");
    // The other streams go on.
    app.send_datagram(&common::mail_event_datagram("bob", 5));
    assert_eq!(bob.next_state().await.0, 5);
    common::wait_until("alice's slot freed", || async {
        metric(&app.metrics().await, "mailpush_eventsource_connections") == 1.0
    })
    .await;
    drop(alice);
}

/// Calendar reminders of 50 KB each for alice until `send_timeout` has been counted `count`
/// times (bounded: the kernel's buffers hold a few megabytes at most). Returns whether it was,
/// and how many reminders it took.
async fn flood_until(app: &TestApp, count: f64) -> (bool, u64) {
    let summary = "x".repeat(50_000);
    let mut events = 0u64;
    loop {
        for _ in 0..20 {
            events += 1;
            let alarm = format!(
                r#"{{"event":"CalendarAlarm","userId":"alice","uid":"e{events}","alarmTime":"20261128T145123Z","action":"display","alarmRecipients":[],"summary":"{summary}","start":"20261128T150053Z"}}"#
            );
            let datagram = [
                b"mailpush\0EVENT\0\0\0\x000\0".as_slice(),
                alarm.as_bytes(),
                b"\0",
            ]
            .concat();
            app.send_datagram(&datagram);
        }
        if limit(&app.metrics().await, "send_timeout") >= count {
            return (true, events);
        }
        if events >= 10_000 {
            return (false, events);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_hyper_serves_is_closed_after_the_send_timeout_too() {
    let app = TestApp::builder()
        .env("MAILPUSH_HTTP__SEND_TIMEOUT_SECS", "1")
        .start()
        .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let alice = socket.connect(app.http).await.unwrap();
    let mut raw = Raw::from_socket(alice);
    // A request first, so the stream that follows on this connection is hyper's.
    raw.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    raw.until("ok\n").await;
    raw.send(&format!(
        "GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        app.token("alice")
    ))
    .await;
    raw.until("transfer-encoding: chunked").await;
    let (timed_out, events) = flood_until(&app, 1.0).await;
    assert!(timed_out, "no send timeout after {events} reminders");
    common::wait_until("alice's slot freed", || async {
        metric(&app.metrics().await, "mailpush_eventsource_connections") == 0.0
    })
    .await;
}
