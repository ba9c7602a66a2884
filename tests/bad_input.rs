//! Bad input never stops mailpush: each bad packet, line, record or request gets a clear
//! error or a counted drop, and the next good event still arrives.

mod common;

use std::io::{Read, Write};

use common::{INGEST_SECRET, TestApp, metric};
use serde_json::{Value, json};

fn event_json(user: &str, modseq: u64) -> String {
    format!(
        r#"{{"event":"MessageNew","uri":"imap://h/user/{user};UIDVALIDITY=1/;UID=1","modseq":{modseq},"vnd.cmu.mbtype":"e"}}"#
    )
}

fn datagram(json: &str) -> Vec<u8> {
    [
        b"mailpush\0EVENT\0\0\0\x000\0".as_slice(),
        json.as_bytes(),
        b"\0",
    ]
    .concat()
}

fn rejected(metrics: &str, source: &str, reason: &str) -> f64 {
    metric(
        metrics,
        &format!("mailpush_packets_rejected_total{{source=\"{source}\",reason=\"{reason}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_datagrams_are_counted_by_reason_and_dropped() {
    let app = TestApp::start().await;
    let mut alice = app.sse("alice").await;
    let good = datagram(&event_json("alice", 7));
    app.send_datagram(&good[..good.len() / 2]); // truncated mid-JSON: no final NUL
    app.send_datagram(&good[..12]); // truncated in the header
    app.send_datagram(&vec![b'x'; 70_000]); // over Cyrus's 64 KiB datagram limit
    app.send_datagram(b"\x00\xff\xfe garbage \x01\x02");
    app.send_datagram(&datagram("{\"event\": MessageNew}"));
    app.send_datagram(&datagram("{}"));
    app.send_datagram(&datagram(r#"{"event":"MessageNew","uri":"mailto:alice"}"#));
    app.send_datagram(b"m\0EVENT\0\0\0\0many\0{}\0");
    app.send_datagram(b"");
    // Unknown event types and fields are kept, not rejected.
    app.send_datagram(&datagram(
        r#"{"event":"vnd.example.Future","uri":"imap://h/user/alice;UIDVALIDITY=1","x-new":[1]}"#,
    ));
    app.send_datagram(&good);
    assert_eq!(
        alice.next_state().await,
        (7, 0, 0),
        "the good event after the bad ones arrives"
    );

    let metrics = app.metrics().await;
    // Cut mid-JSON, cut in the header, empty, and garbage without NULs.
    assert_eq!(rejected(&metrics, "cyrus", "truncated"), 4.0, "{metrics}");
    assert_eq!(rejected(&metrics, "cyrus", "too_large"), 1.0, "{metrics}");
    assert_eq!(
        rejected(&metrics, "cyrus", "invalid_json"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        rejected(&metrics, "cyrus", "missing_event_name"),
        1.0,
        "{metrics}"
    );
    assert_eq!(rejected(&metrics, "cyrus", "bad_uri"), 1.0, "{metrics}");
    assert_eq!(rejected(&metrics, "cyrus", "bad_header"), 1.0, "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "mailpush_events_received_total{source=\"cyrus\",type=\"other\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "mailpush_events_received_total{source=\"cyrus\",type=\"MessageNew\"}"
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_datagrams_with_a_stalled_client_keeps_draining() {
    const DATAGRAMS: u64 = 100_000;
    let app = TestApp::start().await;
    // A client that opens a stream and never reads: its socket buffers fill, nothing else may stall.
    let mut stalled = std::net::TcpStream::connect(app.http).expect("connect");
    write!(
        stalled,
        "GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        app.token("alice")
    )
    .expect("request");
    let mut head = [0u8; 12];
    stalled.read_exact(&mut head).expect("status line");
    assert_eq!(&head, b"HTTP/1.1 200");
    let mut reader = app.sse("alice").await;

    let socket = app.cyrus_socket.clone();
    let sent = tokio::task::spawn_blocking(move || {
        let sender = std::os::unix::net::UnixDatagram::unbound().expect("socket");
        // Cyrus blocks when mailpush stops draining; a stall here fails the send, not the test run.
        sender
            .set_write_timeout(Some(common::DEADLINE))
            .expect("timeout");
        for seq in 1..=DATAGRAMS {
            let bytes = if seq % 10 == 0 {
                b"garbage".to_vec()
            } else {
                datagram(&event_json("alice", seq))
            };
            sender
                .send_to(&bytes, &socket)
                .expect("the socket keeps draining");
        }
    });
    sent.await.expect("all datagrams sent");
    let mut last = 0;
    while last < DATAGRAMS - 1 {
        last = reader.next_state().await.0;
    }
    assert_eq!(
        last,
        DATAGRAMS - 1,
        "the reading client reaches the newest state"
    );
    let metrics = app.metrics().await;
    let good = DATAGRAMS - DATAGRAMS / 10;
    assert_eq!(
        metric(
            &metrics,
            "mailpush_events_received_total{source=\"cyrus\",type=\"MessageNew\"}"
        ),
        good as f64,
        "{metrics}"
    );
    assert_eq!(
        rejected(&metrics, "cyrus", "truncated"),
        (DATAGRAMS / 10) as f64,
        "{metrics}"
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ndjson_lines_are_skipped_and_the_connection_goes_on() {
    let app = TestApp::builder()
        .env("MAILPUSH_INGEST__MAX_EVENT_BYTES", "2048")
        .start()
        .await;
    let mut alice = app.sse("alice").await;
    let mut stream = common::ndjson_connect(app.ndjson);
    stream.write_all(b"{not json}\n").unwrap();
    stream.write_all(b"[1,2,3]\n").unwrap();
    stream.write_all(&[b'{'; 5000]).unwrap();
    stream.write_all(b"\n\xff\xfe\n\n   \n").unwrap();
    stream.write_all(event_json("alice", 3).as_bytes()).unwrap();
    stream.write_all(b"\r\n").unwrap();
    assert_eq!(alice.next_state().await, (3, 0, 0));
    let metrics = app.metrics().await;
    assert_eq!(
        rejected(&metrics, "ndjson", "invalid_json"),
        2.0,
        "{metrics}"
    );
    assert_eq!(rejected(&metrics, "ndjson", "too_large"), 1.0, "{metrics}");
    assert_eq!(rejected(&metrics, "ndjson", "not_utf8"), 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_dlist_records_get_a_no_reply() {
    let app = TestApp::start().await;
    let mut alice = app.sse("alice").await;
    let exchange = |record: &[u8]| {
        let mut stream =
            std::os::unix::net::UnixStream::connect(&app.dlist_socket).expect("connect");
        stream.set_read_timeout(Some(common::DEADLINE)).unwrap();
        stream.write_all(record).unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        reply
    };
    let reply = exchange(b"HELLO %(CLASS EVENT)\r\n");
    assert!(reply.starts_with("NO \"bad dlist record"), "{reply}");
    let reply = exchange(b"NOTIFY %(CLASS EVENT MESSAGE {5+}\r\n{oops FILEPATH NIL)\r\n");
    assert!(reply.starts_with("NO \"invalid JSON"), "{reply}");
    // The connection closes mid-record: counted as truncated, nothing to reply to.
    let reply = exchange(b"NOTIFY %(CLASS EVENT MESSAGE {500+}\r\n{");
    assert_eq!(reply, "");
    let json = event_json("alice", 9);
    let record = format!(
        "NOTIFY %(METHOD m CLASS EVENT MESSAGE {{{}+}}\r\n{json} FILEPATH NIL)\r\n",
        json.len()
    );
    assert_eq!(exchange(record.as_bytes()), "OK NIL\r\n");
    assert_eq!(alice.next_state().await, (9, 0, 0));
    let metrics = app.metrics().await;
    assert_eq!(rejected(&metrics, "dlist", "bad_dlist"), 1.0, "{metrics}");
    assert_eq!(
        rejected(&metrics, "dlist", "invalid_json"),
        1.0,
        "{metrics}"
    );
    common::wait_until("the truncated record to be counted", || async {
        rejected(&app.metrics().await, "dlist", "truncated") == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingest_checks_its_secret_and_reports_bad_events() {
    let app = TestApp::builder()
        .env("MAILPUSH_HTTP__MAX_BODY_BYTES", "4096")
        .start()
        .await;
    let mut alice = app.sse("alice").await;
    let client = reqwest::Client::new();
    let url = app.url("/ingest");
    let post = |body: String, secret: Option<&str>| {
        let mut request = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(secret) = secret {
            request = request.bearer_auth(secret);
        }
        request.send()
    };
    let response = post(event_json("alice", 1), None).await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "ingest_unauthorized"
    );
    let response = post(event_json("alice", 1), Some("wrong-secret-but-long"))
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let response = post("{\"event\":".into(), Some(INGEST_SECRET))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "invalid_json"
    );

    let response = post("x".repeat(5000), Some(INGEST_SECRET)).await.unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "body_too_large"
    );

    let batch = format!(
        "[{}, {{\"no\":\"name\"}}, {}]",
        event_json("alice", 2),
        event_json("alice", 4)
    );
    let response = post(batch, Some(INGEST_SECRET)).await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["accepted"], 2);
    assert_eq!(
        body["errors"],
        json!([{"index": 1, "reason": "missing_event_name", "message": "event has no \"event\" name"}])
    );
    // The good events of a partly bad batch count; the stream may see the first before the
    // second lands.
    alice.state_reaching((4, 0, 0)).await;

    let response = post(event_json("alice", 5), Some(INGEST_SECRET))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"accepted": 1})
    );
    assert_eq!(alice.next_state().await, (5, 0, 0));
    let metrics = app.metrics().await;
    assert_eq!(
        rejected(&metrics, "http", "missing_event_name"),
        1.0,
        "{metrics}"
    );
    assert_eq!(rejected(&metrics, "http", "invalid_json"), 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingest_is_off_without_a_secret() {
    let app = TestApp::builder()
        .env("MAILPUSH_INGEST__SECRET", "")
        .start()
        .await;
    let response = reqwest::Client::new()
        .post(app.url("/ingest"))
        .bearer_auth("anything")
        .body(event_json("alice", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "ingest_disabled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_modseq_is_rejected_and_the_next_real_event_arrives() {
    let app = TestApp::start().await;
    let mut alice = app.sse("alice").await;
    app.send_datagram(&datagram(&event_json("alice", u64::MAX)));
    app.send_datagram(&datagram(&event_json("alice", 1 << 53)));
    app.send_datagram(&datagram(&event_json("alice", 5)));
    assert_eq!(alice.next_state().await, (5, 0, 0));
    app.send_datagram(&datagram(&event_json("alice", 6)));
    assert_eq!(alice.next_state().await, (6, 0, 0), "not frozen");
    let metrics = app.metrics().await;
    assert_eq!(
        rejected(&metrics, "cyrus", "number_out_of_range"),
        2.0,
        "{metrics}"
    );
}
