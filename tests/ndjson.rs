//! The NDJSON listener takes events only from producers that hold the ingest secret, caps what
//! one event may ask for, and slows a producer that sends too fast without dropping its events.

mod common;

use std::io::{Read, Write};

use common::{TestApp, metric, wait_until};

/// A CalendarAlarm `email` event for alice with `count` outside recipients.
fn alarm(uid: &str, count: usize) -> String {
    let recipients: Vec<String> = (0..count)
        .map(|n| format!("\"mailto:victim{n}@outside.test\""))
        .collect();
    format!(
        r#"{{"event":"CalendarAlarm","userId":"alice","calendarId":"Default","uid":"{uid}","alarmTime":"20261128T145123Z","action":"email","alarmRecipients":[{}],"summary":"Standup"}}"#,
        recipients.join(",")
    )
}

/// Everything the server says until it closes the connection.
fn said_until_closed(mut stream: std::net::TcpStream) -> String {
    stream
        .set_read_timeout(Some(common::DEADLINE))
        .expect("read timeout");
    let mut said = String::new();
    stream.read_to_string(&mut said).expect("read until closed");
    said
}

fn queued(metrics: &str) -> f64 {
    metric(metrics, "mailpush_jobs_total{outcome=\"queued\"}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_without_the_secret_send_nothing() {
    let app = TestApp::start().await;
    // An event as the first line, as a producer that does not know about AUTH would send it.
    let mut stream = std::net::TcpStream::connect(app.ndjson).unwrap();
    writeln!(stream, "{}", alarm("e1", 2000)).unwrap();
    assert_eq!(
        said_until_closed(stream),
        "ERR the first line must be AUTH <ingest.secret>\n"
    );
    // A plain HTTP POST: its request line is the first line.
    let mut stream = std::net::TcpStream::connect(app.ndjson).unwrap();
    let body = alarm("e2", 2000);
    write!(
        stream,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}\n",
        body.len() + 1
    )
    .unwrap();
    assert!(said_until_closed(stream).starts_with("ERR "));
    // The wrong secret.
    let mut stream = std::net::TcpStream::connect(app.ndjson).unwrap();
    writeln!(stream, "AUTH not-the-secret\n{}", alarm("e3", 1)).unwrap();
    assert_eq!(said_until_closed(stream), "ERR wrong ingest secret\n");

    // With the secret, one alarm to one recipient is one job: none came from the refused lines.
    let mut stream = common::ndjson_connect(app.ndjson);
    writeln!(stream, "{}", alarm("e4", 1)).unwrap();
    wait_until("the authenticated alarm's job", || async {
        queued(&app.metrics().await) >= 1.0
    })
    .await;
    let metrics = app.metrics().await;
    assert_eq!(queued(&metrics), 1.0, "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "mailpush_requests_refused_total{reason=\"ndjson_unauthenticated\"}"
        ),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "mailpush_events_received_total{source=\"ndjson\",type=\"CalendarAlarm\"}"
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_mails_at_most_twenty_recipients() {
    let app = TestApp::start().await;
    let mut stream = common::ndjson_connect(app.ndjson);
    writeln!(stream, "{}", alarm("e1", 2000)).unwrap();
    wait_until("the capped alarm's jobs", || async {
        queued(&app.metrics().await) >= 20.0
    })
    .await;
    let metrics = app.metrics().await;
    assert_eq!(queued(&metrics), 20.0, "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "mailpush_limits_reached_total{limit=\"alarm_recipients_over_cap\"}"
        ),
        1980.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_producer_is_slowed_not_dropped() {
    let app = TestApp::builder()
        .env("MAILPUSH_INGEST__NDJSON_MAX_EVENTS_PER_SEC", "20")
        .start()
        .await;
    let mut alice = app.sse("alice").await;
    let mut stream = common::ndjson_connect(app.ndjson);
    // Twice the burst in one write: the second half waits for the budget to refill.
    for modseq in 1..=40u64 {
        writeln!(
            stream,
            r#"{{"event":"FlagsSet","uri":"imap://h/user/alice;UIDVALIDITY=1","modseq":{modseq},"vnd.cmu.mbtype":"e"}}"#
        )
        .unwrap();
    }
    loop {
        let (mail, _, _) = alice.next_state().await;
        if mail == 40 {
            break;
        }
    }
    let metrics = app.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "mailpush_events_received_total{source=\"ndjson\",type=\"FlagsSet\"}"
        ),
        40.0,
        "every event taken: {metrics}"
    );
    assert!(
        metric(
            &metrics,
            "mailpush_limits_reached_total{limit=\"ndjson_rate\"}"
        ) >= 1.0,
        "{metrics}"
    );
    // The connection is still good.
    let last = r#"{"event":"FlagsSet","uri":"imap://h/user/alice;UIDVALIDITY=1","modseq":41,"vnd.cmu.mbtype":"e"}"#;
    writeln!(stream, "{last}").unwrap();
    assert_eq!(alice.next_state().await.0, 41);
}
