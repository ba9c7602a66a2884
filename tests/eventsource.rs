//! EventSource behaviour against the real app: fan-out under load, reconnects with
//! `Last-Event-ID`, authentication, connection caps, the JMAP format, and shutdown.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{AUTH_SECRET, DEADLINE, Sse, TestApp, metric};
use serde_json::Value;

/// A Cyrus datagram for a MessageNew in `user`'s INBOX. `calendar` rides along in
/// `vnd.fastmail.counters` so every user's events carry a value that identifies them.
fn datagram(user: &str, mail: u64, calendar: u64) -> Vec<u8> {
    let json = format!(
        r#"{{"event":"MessageNew","uri":"imap://h/user/{user};UIDVALIDITY=1/;UID={mail}","modseq":{mail},"vnd.cmu.mbtype":"e","vnd.fastmail.counters":"9 {mail} {mail} {calendar} 0 0 0 0 0 0 0 0 1"}}"#
    );
    [
        b"mailpush\0EVENT\0\0\0\x000\0".as_slice(),
        json.as_bytes(),
        b"\0",
    ]
    .concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_clients_end_with_their_latest_state() {
    const USERS: u64 = 100;
    const CLIENTS: u64 = 1_000;
    const EVENTS: u64 = 10_000;
    let app = Arc::new(
        TestApp::builder()
            .env("MAILPUSH_HTTP__MAX_CONNECTIONS_PER_USER", "20")
            .start()
            .await,
    );
    let mut clients = Vec::new();
    for index in 0..CLIENTS {
        let user_index = index % USERS;
        let sse = app.sse(&format!("user{user_index}")).await;
        clients.push((user_index, sse));
    }
    // A stream holds its slot from the moment its 200 arrived.
    let metrics = app.metrics().await;
    assert_eq!(
        metric(&metrics, "mailpush_eventsource_connections"),
        CLIENTS as f64,
        "{metrics}"
    );
    // Each user gets EVENTS / USERS events with rising modseqs; the last is the final state.
    let socket = app.cyrus_socket.clone();
    let sender = tokio::task::spawn_blocking(move || {
        for seq in 0..EVENTS {
            let user_index = seq % USERS;
            let mail = seq / USERS + 1;
            common::send_datagram(
                &socket,
                &datagram(&format!("user{user_index}"), mail, 1000 + user_index),
            );
        }
    });
    let final_mail = EVENTS / USERS;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|(user_index, mut sse)| {
            tokio::spawn(async move {
                let mut last_mail = 0;
                let mut received = 0;
                while last_mail < final_mail {
                    let (mail, calendar, _) = sse.next_state().await;
                    assert_eq!(
                        calendar,
                        1000 + user_index,
                        "a user never receives another user's state"
                    );
                    assert!(
                        mail > last_mail,
                        "states only move forward: {mail} after {last_mail}"
                    );
                    last_mail = mail;
                    received += 1;
                }
                (last_mail, received)
            })
        })
        .collect();
    sender.await.expect("sender");
    let mut deliveries = 0;
    for reader in readers {
        let (last_mail, received) = tokio::time::timeout(DEADLINE, reader)
            .await
            .expect("client finished")
            .expect("reader");
        assert_eq!(last_mail, final_mail);
        deliveries += received;
    }
    // Slow readers are coalesced, never more than one frame per event.
    assert!(deliveries <= CLIENTS * (EVENTS / USERS), "{deliveries}");
    let metrics = app.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "mailpush_events_received_total{source=\"cyrus\",type=\"MessageNew\"}"
        ),
        EVENTS as f64
    );
    // Every frame a client read was counted, and its latency recorded.
    let sent = metric(
        &metrics,
        "mailpush_eventsource_events_sent_total{format=\"legacy\"}",
    );
    assert_eq!(sent, deliveries as f64, "{metrics}");
    assert_eq!(
        metric(&metrics, "mailpush_eventsource_latency_seconds_count"),
        sent,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_with_last_event_id_gets_only_what_changed() {
    let app = TestApp::start().await;
    let token = app.token("alice");
    let url = app.url("/events");
    let mut first = Sse::connect(&url, &token, None).await;
    app.send_datagram(&datagram("alice", 5, 1));
    assert_eq!(first.next_state().await, (5, 1, 0));
    let seen = first.last_event_id.clone().expect("events carry ids");
    assert_eq!(seen, "m5c1a0");
    drop(first);

    // Nothing changed: the reconnect gets no state at once; the next event is the next change.
    let mut unchanged = Sse::connect(&url, &token, Some(&seen)).await;
    app.send_datagram(&datagram("alice", 6, 1));
    assert_eq!(unchanged.next_state().await, (6, 1, 0));
    drop(unchanged);

    // Changed while away: the reconnect gets the current state at once.
    app.send_datagram(&datagram("alice", 7, 1));
    let mut changed = Sse::connect(&url, &token, Some(&seen)).await;
    assert_eq!(changed.next_state().await, (7, 1, 0));

    // A fresh connection (no Last-Event-ID) gets the current state too; garbage ids count as none.
    let mut fresh = Sse::connect(&url, &token, Some("garbage")).await;
    assert_eq!(fresh.next_state().await, (7, 1, 0));
    // A user nobody has written to yet gets no state until there is one.
    let mut empty = Sse::connect(&url, &app.token("nobody"), None).await;
    app.send_datagram(&datagram("nobody", 1, 2));
    assert_eq!(empty.next_state().await, (1, 2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_and_checked() {
    let app = TestApp::start().await;
    let url = app.url("/events");
    let client = reqwest::Client::new();
    let check = |response: reqwest::Response, code: &'static str| async move {
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body: Value = response.json().await.expect("json error body");
        assert_eq!(body["code"], code, "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    };
    check(client.get(&url).send().await.unwrap(), "token_missing").await;
    check(
        client
            .get(&url)
            .bearer_auth("not-a-jwt")
            .send()
            .await
            .unwrap(),
        "token_invalid",
    )
    .await;
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "alice", "exp": mailpush::auth::unix_now() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(b"someone-elses-secret-123").unwrap(),
    )
    .unwrap();
    check(
        client.get(&url).bearer_auth(&forged).send().await.unwrap(),
        "token_invalid",
    )
    .await;
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "alice", "exp": mailpush::auth::unix_now() - 600}),
        &jsonwebtoken::EncodingKey::from_secret(AUTH_SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    check(
        client.get(&url).bearer_auth(&expired).send().await.unwrap(),
        "token_expired",
    )
    .await;
    check(
        client
            .get(app.url("/jmap/eventsource?types=*"))
            .send()
            .await
            .unwrap(),
        "token_missing",
    )
    .await;

    // The token also works from a cookie and from ?access_token=, as browsers need.
    let token = app.token("alice");
    let response = client
        .get(&url)
        .header("cookie", format!("theme=dark; mailpush_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = client
        .get(format!("{url}?access_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let metrics = app.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "mailpush_requests_refused_total{reason=\"token_missing\"}"
        ),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "mailpush_requests_refused_total{reason=\"token_expired\"}"
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_answer_429_and_free_up() {
    let app = TestApp::builder()
        .env("MAILPUSH_HTTP__MAX_CONNECTIONS_PER_USER", "2")
        .env("MAILPUSH_HTTP__MAX_CONNECTIONS", "3")
        .start()
        .await;
    let url = app.url("/events");
    let alice = app.token("alice");
    let first = Sse::connect(&url, &alice, None).await;
    let _second = Sse::connect(&url, &alice, None).await;
    let refused = Sse::request(&url, &alice, None).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "30");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "too_many_user_connections");
    let _bob = Sse::connect(&url, &app.token("bob"), None).await;
    let refused = Sse::request(&url, &app.token("carol"), None).await;
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "too_many_connections");
    // Closing a stream frees its slot once the server notices the disconnect.
    drop(first);
    let token = app.token("carol");
    common::wait_until("a freed connection slot", || {
        let url = url.clone();
        let token = token.clone();
        async move { Sse::request(&url, &token, None).await.status() == 200 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jmap_stream_sends_state_changes_and_pings() {
    let app = TestApp::start().await;
    let token = app.token("alice");
    let mut stream = Sse::connect(
        &app.url("/jmap/eventsource?types=Email,EmailDelivery,CalendarEvent&closeafter=no&ping=0"),
        &token,
        None,
    )
    .await;
    app.send_datagram(&datagram("alice", 5, 0));
    let event = stream.next_event().await.expect("state event");
    assert_eq!(event.event, "state");
    assert_eq!(event.id, "m5c0a0");
    let data: Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(
        data,
        serde_json::json!({"@type": "StateChange", "changed": {"alice": {"Email": "5", "EmailDelivery": "5"}}})
    );

    // closeafter=state ends the response after one state event.
    let mut once = Sse::connect(
        &app.url("/jmap/eventsource?types=*&closeafter=state&ping=0"),
        &token,
        None,
    )
    .await;
    let event = once.next_event().await.expect("current state");
    assert_eq!(event.event, "state");
    once.expect_end().await;

    let client = reqwest::Client::new();
    for query in ["closeafter=maybe", "ping=soon", "types=Email,,Mailbox"] {
        let response = client
            .get(app.url(&format!("/jmap/eventsource?{query}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["code"].as_str().unwrap().starts_with("invalid_"),
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_every_stream() {
    let app = TestApp::start().await;
    let mut streams = Vec::new();
    for user in ["alice", "bob", "carol"] {
        streams.push(app.sse(user).await);
    }
    let stopping = tokio::spawn(app.stop());
    for stream in &mut streams {
        stream.expect_end().await;
    }
    tokio::time::timeout(DEADLINE, stopping)
        .await
        .expect("stop in time")
        .expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_headers_suit_proxies() {
    let app = TestApp::start().await;
    let response = Sse::request(&app.url("/events"), &app.token("alice"), None).await;
    let headers: HashMap<String, String> = response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    assert!(!headers.contains_key("content-length"));
    assert!(!headers.contains_key("content-encoding"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn display_alarms_remind_open_streams() {
    let app = TestApp::start().await;
    let mut alice = app.sse("alice").await;
    let mut bob = app.sse("bob").await;
    app.send_datagram(
        &std::fs::read(common::fixtures().join("cyrus/129-CalendarAlarm.bin")).unwrap(),
    );
    let event = alice.next_event().await.expect("a reminder");
    assert_eq!(event.event, "reminder");
    assert_eq!(event.id, "", "a reminder moves no Last-Event-ID");
    let data: Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(data["summary"], "Standup with the push team");
    assert_eq!(data["location"], "Room 4");
    assert_eq!(data["calendar"], "personal");
    assert_eq!(data["start"], "20261128T151608Z");
    // Bob's stream gets nothing: his next event is his own state.
    app.send_datagram(&datagram("bob", 3, 1));
    assert_eq!(bob.next_state().await, (3, 1, 0));
}
