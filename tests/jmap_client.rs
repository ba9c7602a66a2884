//! Stalwart's `jmap-client` crate, unmodified, parses mailpush's JMAP stream: its EventSource
//! parser turns every blank line that ends a block into an event and parses that event's data
//! as a StateChange, so a block without an event (a lone `retry:`, a keepalive comment with a
//! blank line after it) is an error there. Every event it yields must parse, and carry the
//! states mailpush wrote.

mod common;

use jmap_client::event_source::PushNotification;
use jmap_client::event_source::parser::EventParser;

use common::TestApp;
use common::raw::Raw;

/// Feeds what the stream sends to the parser until it yields a notification, or `chunks`
/// chunks went by without one. As jmap-client's own stream does, bytes are pushed only once
/// the parser has used what it had (`filter_notification` said None).
async fn next_notification(
    raw: &mut Raw,
    parser: &mut EventParser,
    chunks: usize,
) -> Option<PushNotification> {
    let mut fed = 0;
    loop {
        if let Some(notification) = parser.filter_notification() {
            return Some(notification.expect("jmap-client parses every event"));
        }
        if fed == chunks {
            return None;
        }
        parser.push_bytes(raw.chunk().await.into_bytes());
        fed += 1;
    }
}

async fn open(app: &TestApp, query: &str) -> Raw {
    let mut raw = Raw::connect(app).await;
    raw.send(&format!(
        "GET /jmap/eventsource?{query} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        app.token("alice")
    ))
    .await;
    let head = raw.until("\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jmap_client_reads_every_state_through_retry_hints_and_keepalives() {
    let app = TestApp::builder()
        .env("MAILPUSH_HTTP__KEEPALIVE_SECS", "1")
        .start()
        .await;
    // ping=0: no pings (RFC 8620), so keepalives are comment lines.
    let mut raw = open(&app, "types=*&closeafter=no&ping=0").await;
    let mut parser = EventParser::default();
    // The opening hint alone: nothing for the parser to yield.
    assert!(next_notification(&mut raw, &mut parser, 1).await.is_none());
    for modseq in 1..=3u64 {
        if modseq > 1 {
            // Let a keepalive comment go by first.
            assert!(parser.filter_notification().is_none());
            let comment = raw.chunk().await;
            assert_eq!(comment, ":\n");
            parser.push_bytes(comment.into_bytes());
            assert!(
                parser.filter_notification().is_none(),
                "a comment is no event"
            );
        }
        app.send_datagram(&common::mail_event_datagram("alice", modseq));
        let notification = next_notification(&mut raw, &mut parser, 4)
            .await
            .expect("a state change");
        let PushNotification::StateChange(changes) = notification else {
            panic!("a StateChange, not {notification:?}");
        };
        let email = changes
            .changes("alice")
            .and_then(|mut types| types.find(|(kind, _)| kind.to_string() == "Email"))
            .map(|(_, state)| state.to_string());
        assert_eq!(
            email.as_deref(),
            Some(modseq.to_string().as_str()),
            "{changes:?}"
        );
        assert_eq!(changes.id(), Some(format!("m{modseq}c0a0").as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jmap_client_skips_pings() {
    let app = TestApp::start().await;
    let mut raw = open(&app, "types=Email&closeafter=no&ping=5").await;
    let mut parser = EventParser::default();
    assert!(next_notification(&mut raw, &mut parser, 1).await.is_none());
    assert!(parser.filter_notification().is_none());
    let ping = raw.chunk().await;
    assert_eq!(ping, "event: ping\ndata: {\"interval\":5}\n\n");
    parser.push_bytes(ping.into_bytes());
    assert!(parser.filter_notification().is_none(), "a ping is no state");
    app.send_datagram(&common::mail_event_datagram("alice", 4));
    let notification = next_notification(&mut raw, &mut parser, 4).await;
    assert!(
        matches!(notification, Some(PushNotification::StateChange(_))),
        "{notification:?}"
    );
}

/// The Email state jmap-client reads from the next notification.
async fn email_state(raw: &mut Raw, parser: &mut EventParser) -> String {
    let notification = next_notification(raw, parser, 4)
        .await
        .expect("a state change");
    let PushNotification::StateChange(changes) = notification else {
        panic!("a StateChange, not {notification:?}");
    };
    changes
        .changes("alice")
        .and_then(|mut types| types.find(|(kind, _)| kind.to_string() == "Email"))
        .map(|(_, state)| state.to_string())
        .expect("an Email state")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_are_written_as_cyrus_writes_them_for_each_id_scheme() {
    let app = TestApp::start().await;
    let mut raw = open(&app, "types=Email&closeafter=no&ping=0").await;
    let mut parser = EventParser::default();
    assert!(next_notification(&mut raw, &mut parser, 1).await.is_none());
    // A real Cyrus 3.6 delivery to a legacy account (vnd.cmu.emailid "M" + 24 hex): bare.
    let legacy = std::fs::read(common::fixtures().join("cyrus/008-MessageNew.bin")).unwrap();
    app.send_datagram(&legacy);
    assert_eq!(email_state(&mut raw, &mut parser).await, "4");
    // The account's events now show compact ids ("S" + 11): Cyrus writes "J" + modseq.
    let compact = r#"{"event":"MessageNew","uri":"imap://h/user/alice;UIDVALIDITY=1/;UID=2","modseq":5,"vnd.cmu.mbtype":"e","vnd.cmu.emailid":"Sbrp-oRDd_Mh","vnd.cmu.threadid":"A0nwZdIYiCtU"}"#;
    app.send_datagram(
        &[
            b"mailpush\0EVENT\0\0\0\x000\0".as_slice(),
            compact.as_bytes(),
            b"\0",
        ]
        .concat(),
    );
    assert_eq!(email_state(&mut raw, &mut parser).await, "J5");
    // Events without ids keep the scheme the account showed.
    app.send_datagram(&common::mail_event_datagram("alice", 6));
    assert_eq!(email_state(&mut raw, &mut parser).await, "J6");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_id_scheme_can_be_set_for_every_account() {
    let app = TestApp::builder()
        .env("MAILPUSH_JMAP__ID_SCHEME", "compact")
        .start()
        .await;
    let mut raw = open(&app, "types=Email&closeafter=no&ping=0").await;
    let mut parser = EventParser::default();
    assert!(next_notification(&mut raw, &mut parser, 1).await.is_none());
    app.send_datagram(&common::mail_event_datagram("alice", 3));
    assert_eq!(email_state(&mut raw, &mut parser).await, "J3");
}
