//! Device pushes end to end: Cyrus fixtures in, requests at local HTTP/2 TLS mocks of APNs and
//! FCM out, checked header by header; each response class handled as the providers document.

mod common;

use std::time::Duration;

use common::mock::{Answer, ApnsMock, FcmMock};
use common::{TestApp, metric, wait_until};
use reqwest::Method;
use serde_json::{Value, json};

const IPHONE: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const ANDROID: &str = "fKz-android:APA91b-registration-token";
const ANDROID_APP: &str = "com.example.android";

struct Setup {
    app: TestApp,
    apns: ApnsMock,
    fcm: FcmMock,
    _dir: tempfile::TempDir,
}

async fn setup(extra: &[(&str, &str)]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let apns = ApnsMock::start(dir.path()).await;
    let fcm = FcmMock::start(dir.path()).await;
    let mut builder = TestApp::builder()
        .envs(apns.env("MAIN"))
        .envs(fcm.env("ANDROID", ANDROID_APP));
    for (key, value) in extra {
        builder = builder.env(key, value);
    }
    let app = builder.start().await;
    Setup {
        app,
        apns,
        fcm,
        _dir: dir,
    }
}

impl Setup {
    async fn register(&self, user: &str, body: Value) -> Value {
        let response = self
            .app
            .request(Method::POST, "/devices", user)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        response.json().await.unwrap()
    }

    async fn register_iphone(&self) -> Value {
        self.register("alice", json!({"platform": "apns", "token": IPHONE, "app": common::mock::APNS_TOPIC, "environment": "sandbox"})).await
    }

    async fn devices(&self, user: &str) -> Vec<Value> {
        let response = self
            .app
            .request(Method::GET, "/devices", user)
            .send()
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap();
        body["devices"].as_array().unwrap().clone()
    }

    fn send_fixture(&self, name: &str) {
        let bytes = std::fs::read(common::fixtures().join("cyrus").join(name)).unwrap();
        self.app.send_datagram(&bytes);
    }

    async fn apns_requests(&self, count: usize) -> Vec<common::mock::Received> {
        let recorder = self.apns.recorder.clone();
        wait_until(&format!("{count} APNs requests"), || {
            let recorder = recorder.clone();
            async move { recorder.received().len() >= count }
        })
        .await;
        self.apns.recorder.received()
    }

    async fn outcome(&self, provider: &str, app: &str, outcome: &str) -> f64 {
        let metrics = self.app.metrics().await;
        metric(
            &metrics,
            &format!(
                "mailpush_pushes_total{{provider=\"{provider}\",app=\"{app}\",outcome=\"{outcome}\"}}"
            ),
        )
    }

    async fn wait_outcome(&self, provider: &str, app: &str, outcome: &str, count: f64) {
        wait_until(&format!("{count} {provider} {outcome}"), || async {
            self.outcome(provider, app, outcome).await >= count
        })
        .await;
    }
}

fn badge(unseen: u64) -> Value {
    json!({"aps": {"badge": unseen}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_mail_alerts_the_iphone_and_reading_it_moves_the_badge() {
    let setup = setup(&[]).await;
    setup.register_iphone().await;
    setup
        .register(
            "alice",
            json!({"platform": "fcm", "token": ANDROID, "app": ANDROID_APP}),
        )
        .await;

    setup.send_fixture("008-MessageNew.bin");
    let requests = setup.apns_requests(1).await;
    assert_eq!(requests.len(), 1);
    let alert = &requests[0];
    assert_eq!(alert.token, IPHONE);
    assert_eq!(
        alert.body,
        json!({
            "aps": {"alert": "Bob Sender\nHello 1", "badge": 1, "sound": "default", "thread-id": "alice/INBOX"},
            "account": "alice",
            "url": "imap://mailstore1.example.test/user/alice;UIDVALIDITY=1795878360/;UID=1"
        })
    );
    assert_eq!(alert.headers["apns-priority"], "10");
    assert!(!alert.headers.contains_key("apns-collapse-id"));

    // The Android phone gets a data message and fetches the rest itself.
    let fcm = setup.fcm.recorder.clone();
    wait_until("the FCM message", || async { !fcm.received().is_empty() }).await;
    let message = &setup.fcm.recorder.received()[0];
    assert_eq!(
        message.body,
        json!({"message": {"token": ANDROID, "data": {"uparam": "alice"}, "android": {"priority": "HIGH", "collapse_key": "mail"}}})
    );

    // 009 is the MAIL notice and 010 a MailboxModseq: no push. 017 marks a message read.
    setup.send_fixture("009-MAIL.bin");
    setup.send_fixture("010-MailboxModseq.bin");
    setup.send_fixture("017-MessageRead.bin");
    let requests = setup.apns_requests(2).await;
    assert_eq!(
        requests.len(),
        2,
        "exactly one alert, then one badge update"
    );
    assert_eq!(requests[1].body, badge(2));
    assert_eq!(requests[1].headers["apns-priority"], "5");
    assert_eq!(requests[1].headers["apns-collapse-id"], "badge");
    // Flags in another folder push nothing: a move into Work (051) is followed by INBOX events.
    setup.send_fixture("051-vnd.cmu.MessageCopy.bin");
    setup.send_fixture("021-FlagsSet.bin");
    let requests = setup.apns_requests(3).await;
    assert_eq!(
        requests[2].body,
        badge(2),
        "021 is an INBOX flag change; 051 (Work) pushed nothing"
    );

    setup
        .wait_outcome("apns", common::mock::APNS_TOPIC, "sent", 3.0)
        .await;
    let metrics = setup.app.metrics().await;
    let latencies = metric(
        &metrics,
        "mailpush_push_latency_seconds_count{provider=\"apns\"}",
    );
    assert_eq!(latencies, 3.0, "one latency per final answer: {metrics}");
    assert_eq!(
        setup.fcm.recorder.grants(),
        1,
        "one OAuth2 grant serves every send"
    );
    assert_eq!(setup.apns.recorder.violations(), Vec::<String>::new());
    assert_eq!(setup.fcm.recorder.violations(), Vec::<String>::new());
    // Both sandbox (iPhone) and production hosts are the mock here; the token is lowercase hex.
    let distinct_jwts: std::collections::HashSet<String> =
        requests.iter().map(|r| r.credential.clone()).collect();
    assert_eq!(distinct_jwts.len(), 1, "one provider token is reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_and_bad_tokens_remove_the_device() {
    let setup = setup(&[]).await;
    let phone = setup.register_iphone().await;
    let dead_since_ms = (phone["registered_at"].as_i64().unwrap() + 1) * 1000;
    setup.apns.recorder.script([Answer::Status(
        410,
        json!({"reason": "Unregistered", "timestamp": dead_since_ms}),
    )]);
    setup.send_fixture("008-MessageNew.bin");
    setup
        .wait_outcome("apns", common::mock::APNS_TOPIC, "token_removed", 1.0)
        .await;
    assert!(
        setup.devices("alice").await.is_empty(),
        "the device is gone"
    );

    // A token registered again after APNs's "dead since" is kept.
    setup.register_iphone().await;
    setup.apns.recorder.script([Answer::Status(
        410,
        json!({"reason": "Unregistered", "timestamp": 1000}),
    )]);
    setup.send_fixture("011-MessageNew.bin");
    setup
        .wait_outcome("apns", common::mock::APNS_TOPIC, "failed", 1.0)
        .await;
    assert_eq!(setup.devices("alice").await.len(), 1);

    setup
        .apns
        .recorder
        .script([Answer::Status(400, json!({"reason": "BadDeviceToken"}))]);
    setup.send_fixture("014-MessageNew.bin");
    setup
        .wait_outcome("apns", common::mock::APNS_TOPIC, "token_removed", 2.0)
        .await;
    assert!(setup.devices("alice").await.is_empty());

    // FCM: UNREGISTERED removes the Android device.
    setup
        .register(
            "alice",
            json!({"platform": "fcm", "token": ANDROID, "app": ANDROID_APP}),
        )
        .await;
    let unregistered = json!({"error": {"code": 404, "status": "NOT_FOUND", "message": "Requested entity was not found.",
        "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}});
    setup
        .fcm
        .recorder
        .script([Answer::Status(404, unregistered)]);
    setup.send_fixture("017-MessageRead.bin");
    setup
        .wait_outcome("fcm", ANDROID_APP, "token_removed", 1.0)
        .await;
    assert!(setup.devices("alice").await.is_empty());
    assert_eq!(setup.apns.recorder.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_errors_are_retried_with_growing_gaps() {
    let setup = setup(&[
        ("MAILPUSH_PUSH__RETRY_BASE_MS", "200"),
        ("MAILPUSH_PUSH__MAX_ATTEMPTS", "5"),
    ])
    .await;
    setup.register_iphone().await;
    let unavailable = json!({"reason": "ServiceUnavailable"});
    setup.apns.recorder.script([
        Answer::Status(503, unavailable.clone()),
        Answer::Status(500, json!({"reason": "InternalServerError"})),
        Answer::Status(429, json!({"reason": "TooManyRequests"})),
    ]);
    setup.send_fixture("008-MessageNew.bin");
    let requests = setup.apns_requests(4).await;
    setup
        .wait_outcome("apns", common::mock::APNS_TOPIC, "sent", 1.0)
        .await;
    let gaps: Vec<Duration> = requests
        .windows(2)
        .map(|pair| pair[1].at - pair[0].at)
        .collect();
    // Waits are base·2^(n-1) with the upper half random: [100,200], [200,400], [400,800] ms;
    // that they never shrink is checked under paused time in `push::tests`.
    assert!(gaps[0] >= Duration::from_millis(100), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(200), "{gaps:?}");
    assert!(gaps[2] >= Duration::from_millis(400), "{gaps:?}");
    assert!(
        requests.iter().all(|r| r.body == requests[0].body),
        "the same push each time"
    );
    assert_eq!(
        setup
            .outcome("apns", common::mock::APNS_TOPIC, "retried")
            .await,
        3.0
    );

    // Given up after max_attempts.
    setup
        .apns
        .recorder
        .script(std::iter::repeat_n(Answer::Status(503, unavailable), 5));
    setup.send_fixture("011-MessageNew.bin");
    setup
        .wait_outcome("apns", common::mock::APNS_TOPIC, "failed", 1.0)
        .await;
    assert_eq!(setup.apns.recorder.received().len(), 4 + 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_provider_token_is_replaced_and_permanent_errors_are_not_retried() {
    let setup = setup(&[("MAILPUSH_PUSH__RETRY_BASE_MS", "50")]).await;
    setup.register_iphone().await;
    setup.apns.recorder.script([Answer::Status(
        403,
        json!({"reason": "ExpiredProviderToken"}),
    )]);
    setup.send_fixture("008-MessageNew.bin");
    let requests = setup.apns_requests(2).await;
    assert_ne!(
        requests[0].credential, requests[1].credential,
        "a new JWT after ExpiredProviderToken"
    );
    setup
        .wait_outcome("apns", common::mock::APNS_TOPIC, "sent", 1.0)
        .await;

    setup
        .apns
        .recorder
        .script([Answer::Status(400, json!({"reason": "BadTopic"}))]);
    setup.send_fixture("011-MessageNew.bin");
    setup
        .wait_outcome("apns", common::mock::APNS_TOPIC, "failed", 1.0)
        .await;
    // The next push goes through, and the refused one was never sent again.
    setup.send_fixture("014-MessageNew.bin");
    setup
        .wait_outcome("apns", common::mock::APNS_TOPIC, "sent", 2.0)
        .await;
    assert_eq!(setup.apns.recorder.received().len(), 4);
    assert_eq!(
        setup.devices("alice").await.len(),
        1,
        "a permanent error keeps the device"
    );
    assert_eq!(setup.apns.recorder.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fcm_honours_retry_after_and_refreshes_a_refused_access_token() {
    let setup = setup(&[("MAILPUSH_PUSH__RETRY_BASE_MS", "50")]).await;
    setup
        .register(
            "alice",
            json!({"platform": "fcm", "token": ANDROID, "app": ANDROID_APP}),
        )
        .await;
    let quota = json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota",
        "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "QUOTA_EXCEEDED"}]}});
    setup.fcm.recorder.script([
        Answer::RetryAfter(429, quota, 1),
        Answer::Status(
            401,
            json!({"error": {"code": 401, "status": "UNAUTHENTICATED", "message": "expired"}}),
        ),
    ]);
    setup.send_fixture("008-MessageNew.bin");
    setup.wait_outcome("fcm", ANDROID_APP, "sent", 1.0).await;
    let requests = setup.fcm.recorder.received();
    assert_eq!(requests.len(), 3);
    assert!(
        requests[1].at - requests[0].at >= Duration::from_secs(1),
        "Retry-After: 1 honoured"
    );
    assert_eq!(
        setup.fcm.recorder.grants(),
        2,
        "a refused access token is replaced"
    );
    assert_ne!(requests[1].credential, requests[2].credential);

    let invalid = json!({"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "Invalid JSON payload"}});
    setup.fcm.recorder.script([Answer::Status(400, invalid)]);
    setup.send_fixture("011-MessageNew.bin");
    setup.wait_outcome("fcm", ANDROID_APP, "failed", 1.0).await;
    assert_eq!(setup.devices("alice").await.len(), 1);
    assert_eq!(setup.fcm.recorder.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_provider_delays_nothing_else_and_the_queue_stays_bounded() {
    const EVENTS: u64 = 1_000;
    let setup = setup(&[
        ("MAILPUSH_PUSH__QUEUE_CAPACITY", "50"),
        ("MAILPUSH_PUSH__MAX_IN_FLIGHT", "4"),
        ("MAILPUSH_PUSH__REQUEST_TIMEOUT_MS", "120000"),
        // The queue is what is under test here, not the per-minute caps.
        ("MAILPUSH_PUSH__MAX_PER_DEVICE_PER_MINUTE", "100000"),
        ("MAILPUSH_PUSH__MAX_PER_USER_PER_MINUTE", "100000"),
    ])
    .await;
    setup.register_iphone().await;
    setup
        .apns
        .recorder
        .script(std::iter::repeat_n(Answer::Never, EVENTS as usize));
    let mut alice = setup.app.sse("alice").await;
    let socket = setup.app.cyrus_socket.clone();
    tokio::task::spawn_blocking(move || {
        for modseq in 1..=EVENTS {
            let json = format!(
                r#"{{"event":"MessageNew","uri":"imap://h/user/alice;UIDVALIDITY=1/;UID={modseq}","modseq":{modseq},"vnd.cmu.mbtype":"e","vnd.cmu.unseenMessages":{modseq}}}"#
            );
            let datagram = [b"mailpush\0EVENT\0\0\0\x000\0".as_slice(), json.as_bytes(), b"\0"].concat();
            common::send_datagram(&socket, &datagram);
        }
    })
    .await
    .unwrap();
    let mut last = 0;
    while last < EVENTS {
        last = alice.next_state().await.0;
    }
    // max_in_flight requests hang at the mock; nothing more is sent.
    let recorder = setup.apns.recorder.clone();
    wait_until("4 hanging requests", || async {
        recorder.received().len() == 4
    })
    .await;
    let metrics = setup.app.metrics().await;
    let queued = metric(&metrics, "mailpush_push_queue_depth");
    let dropped = metric(
        &metrics,
        "mailpush_pushes_total{provider=\"apns\",app=\"com.example.mail\",outcome=\"dropped_alert\"}",
    );
    assert_eq!(queued, 50.0, "the queue is full and no fuller: {metrics}");
    // Every push is accounted for: 4 hanging, 1 taken by the sender waiting for a free slot,
    // 50 queued, the rest dropped and counted.
    assert_eq!(dropped + queued + 4.0 + 1.0, EVENTS as f64, "{metrics}");
    assert_eq!(setup.apns.recorder.received().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_display_alarm_alerts_the_phone() {
    let setup = setup(&[]).await;
    setup.register_iphone().await;
    setup.send_fixture("129-CalendarAlarm.bin");
    let requests = setup.apns_requests(1).await;
    assert_eq!(
        requests[0].body,
        json!({"aps": {"alert": "Standup with the push team\nSaturday, 28 November 2026, 15:16", "sound": "default"}, "account": "alice"})
    );
    assert_eq!(requests[0].headers["apns-priority"], "10");
    assert_eq!(setup.apns.recorder.violations(), Vec::<String>::new());
}

/// A Cyrus event for alice's INBOX with the given unseen count.
fn inbox_event(event: &str, modseq: u64, unseen: u64) -> Vec<u8> {
    let json = format!(
        r#"{{"event":"{event}","uri":"imap://h/user/alice;UIDVALIDITY=1/;UID={modseq}","modseq":{modseq},"vnd.cmu.mbtype":"e","vnd.cmu.unseenMessages":{unseen},"flagNames":"\\Seen"}}"#
    );
    [
        b"mailpush\0EVENT\0\0\0\x000\0".as_slice(),
        json.as_bytes(),
        b"\0",
    ]
    .concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_flag_changes_in_two_seconds_make_at_most_two_badge_pushes() {
    let setup = setup(&[]).await;
    setup.register_iphone().await;
    let started = std::time::Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(40));
    let mut new_mail_sent_at = None;
    for n in 0..50u64 {
        ticks.tick().await;
        let unseen = 100 - n;
        if n == 25 {
            new_mail_sent_at = Some(std::time::Instant::now());
            setup
                .app
                .send_datagram(&inbox_event("MessageNew", 1000 + n, unseen));
        } else {
            setup
                .app
                .send_datagram(&inbox_event("FlagsSet", 1000 + n, unseen));
        }
    }
    let sent_for = started.elapsed();
    // The last badge (51) arrives one window after the last event.
    let recorder = setup.apns.recorder.clone();
    wait_until("the last badge", || async {
        recorder
            .received()
            .last()
            .is_some_and(|r| r.body == badge(51))
    })
    .await;
    setup
        .wait_outcome(
            "apns",
            common::mock::APNS_TOPIC,
            "sent",
            recorder.received().len() as f64,
        )
        .await;
    let requests = setup.apns.recorder.received();
    let badges: Vec<&Value> = requests
        .iter()
        .filter(|r| r.body["aps"].get("alert").is_none())
        .map(|r| &r.body)
        .collect();
    let alerts: Vec<&common::mock::Received> = requests
        .iter()
        .filter(|r| r.body["aps"].get("alert").is_some())
        .collect();
    assert!(
        sent_for < Duration::from_millis(2100),
        "the 50 events took {sent_for:?}"
    );
    assert!(
        badges.len() <= 2,
        "at most two badge pushes for 49 flag changes: {badges:?}"
    );
    assert_eq!(alerts.len(), 1, "{requests:?}");
    assert_eq!(
        alerts[0].body["aps"]["badge"], 75,
        "the new mail carries the badge of its moment"
    );
    // "At once": before the window that was open when it came could have closed.
    let waited = alerts[0].at.duration_since(new_mail_sent_at.unwrap());
    assert!(
        waited < Duration::from_secs(1),
        "the alert waited {waited:?}"
    );
    let merged = setup
        .outcome("apns", common::mock::APNS_TOPIC, "coalesced")
        .await;
    assert_eq!(
        merged + requests.len() as f64,
        50.0,
        "every event is sent or merged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_over_the_per_minute_caps_are_dropped_and_counted() {
    let setup = setup(&[
        ("MAILPUSH_PUSH__MAX_PER_DEVICE_PER_MINUTE", "3"),
        ("MAILPUSH_PUSH__MAX_PER_USER_PER_MINUTE", "5"),
    ])
    .await;
    setup.register_iphone().await;
    setup
        .register(
            "alice",
            json!({"platform": "fcm", "token": ANDROID, "app": ANDROID_APP}),
        )
        .await;
    for n in 0..6u64 {
        setup
            .app
            .send_datagram(&inbox_event("MessageNew", 2000 + n, n + 1));
    }
    // Per event the iPhone goes first, then the Android phone. Alice's fifth push is the
    // iPhone's third; from then on her cap refuses the Android phone, and the iPhone's own cap
    // refuses the iPhone.
    let topic = common::mock::APNS_TOPIC;
    wait_until("every push sent or dropped", || async {
        setup.outcome("apns", topic, "sent").await
            + setup.outcome("apns", topic, "dropped_rate_device").await
            + setup.outcome("fcm", ANDROID_APP, "sent").await
            + setup.outcome("fcm", ANDROID_APP, "dropped_rate_user").await
            == 12.0
    })
    .await;
    assert_eq!(setup.outcome("apns", topic, "sent").await, 3.0);
    assert_eq!(
        setup.outcome("apns", topic, "dropped_rate_device").await,
        3.0
    );
    assert_eq!(setup.outcome("fcm", ANDROID_APP, "sent").await, 2.0);
    assert_eq!(
        setup.outcome("fcm", ANDROID_APP, "dropped_rate_user").await,
        4.0
    );
    assert_eq!(setup.apns.recorder.received().len(), 3);
    assert_eq!(setup.fcm.recorder.received().len(), 2);
}
