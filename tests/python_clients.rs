//! Real Python EventSource clients, installed from PyPI and unmodified, read mailpush's
//! streams: `httpx-sse` and `sseclient-py` (over `requests`/`urllib3`, which fills a fixed
//! buffer). No empty event, `retry:` learned, every event handed over within 100 ms of being
//! written, keepalive comments in between changing nothing.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use common::TestApp;
use common::raw::Raw;
use serde_json::Value;

const EVENTS: u64 = 4;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Waits for a keepalive comment on a second stream of the user: both streams' keepalives
/// come from the same tick, so the client's stream has had one too.
async fn keepalive_seen(watcher: &mut Raw) {
    watcher.until(":\n").await;
}

async fn check(client: &str, python: &str) {
    let app = TestApp::builder()
        .env("MAILPUSH_HTTP__KEEPALIVE_SECS", "1")
        .start()
        .await;
    let script = common::fixtures().join("../clients/sse_client.py");
    let mut child = Command::new(python)
        .arg(&script)
        .args([
            client,
            &app.url("/events"),
            &app.token("alice"),
            &EVENTS.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run python3");
    let (lines, received) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let next_line = || {
        received
            .recv_timeout(common::DEADLINE)
            .unwrap_or_else(|_| panic!("{client}: no line from the client"))
    };
    assert_eq!(next_line(), r#"{"ready": true}"#, "{client}");
    let mut watcher = Raw::connect(&app).await;
    watcher
        .send(&format!(
            "GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            app.token("alice")
        ))
        .await;
    watcher.until("\r\n\r\n").await;
    for modseq in 1..=EVENTS {
        if modseq > 2 {
            // Quiet streams get comments; they must change nothing for the client.
            keepalive_seen(&mut watcher).await;
        }
        let sent = now();
        app.send_datagram(&common::mail_event_datagram("alice", modseq));
        let line = next_line();
        let event: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            event["event"], "push",
            "{client}: no empty or other event: {line}"
        );
        let data: Value = serde_json::from_str(event["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["mailModSeq"], modseq, "{client}: {line}");
        assert_eq!(event["id"], format!("m{modseq}c0a0"), "{client}");
        if modseq == 1 {
            // httpx-sse gives a number, sseclient-py the field's text.
            let retry = event["retry"]
                .as_u64()
                .or_else(|| event["retry"].as_str().and_then(|ms| ms.parse().ok()))
                .unwrap_or(0);
            assert!(
                (5000..=6000).contains(&retry),
                "{client} learned retry: {line}"
            );
        }
        let late = event["at"].as_f64().unwrap() - sent;
        eprintln!("{client}: event {modseq} after {:.1} ms", late * 1000.0);
        assert!(
            late < 0.1,
            "{client}: event {modseq} came {late:.3} s after it was written"
        );
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{client} exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with httpx-sse and sseclient-py: MAILPUSH_TEST_PYTHON"]
async fn python_clients_read_every_event_at_once() {
    let python = std::env::var("MAILPUSH_TEST_PYTHON").expect("MAILPUSH_TEST_PYTHON");
    check("httpx-sse", &python).await;
    check("sseclient-py", &python).await;
}
