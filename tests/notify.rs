//! The blocking path end to end: Cyrus SIEVE and CalendarAlarm packets into the real socket,
//! emails at a real SMTP server and text messages at a mock provider; idempotency, credit,
//! retries, dead jobs, and isolation from the fast path.

mod common;

use std::time::Duration;

use common::smtp::{SmsMock, SmtpSink};
use common::{TestApp, email_alarm, event_datagram, metric, wait_until};
use mail_parser::MimeHeaders;
use mailpush::store::{JobState, NewJob, UserUpdate};
use serde_json::json;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(common::fixtures().join("cyrus").join(name)).unwrap()
}

/// A Sieve legacy `sms` packet; `delivery` stands for lmtpd's staging file, one per message.
fn sms_packet(user: &str, text: &str, delivery: u32) -> Vec<u8> {
    format!("sms\0SIEVE\0high\0{user}\0\x000\0{text}\n\nAction(s) taken:\nKept\n\0/var/spool/cyrus/stage./{delivery}\0").into_bytes()
}

async fn app(smtp: &SmtpSink, sms: &SmsMock, extra: &[(&str, &str)]) -> TestApp {
    let mut builder = TestApp::builder()
        .env("MAILPUSH_NOTIFY__SMTP__URL", &smtp.url())
        .env("MAILPUSH_NOTIFY__FROM", "notifications@example.test")
        .env("MAILPUSH_NOTIFY__SMS__URL", &sms.url)
        .env(
            "MAILPUSH_NOTIFY__SMS__AUTH_HEADER",
            "Authorization: Bearer sms-provider-key",
        )
        .env("MAILPUSH_NOTIFY__RETRY_BASE_MS", "50");
    for (key, value) in extra {
        builder = builder.env(key, value);
    }
    builder.start().await
}

async fn wait_for_mails(smtp: &SmtpSink, count: usize) -> Vec<common::smtp::Mail> {
    wait_until(&format!("{count} emails"), || async {
        smtp.mails().len() >= count
    })
    .await;
    smtp.mails()
}

fn header(message: &mail_parser::Message<'_>, name: &str) -> String {
    message
        .header_raw(name)
        .map(|value| value.trim().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sieve_and_alarm_packets_send_the_right_emails_and_sms() {
    let smtp = SmtpSink::start();
    let sms = SmsMock::start().await;
    let app = app(&smtp, &sms, &[]).await;
    let store = app.store().await;
    store
        .set_user(
            "alice",
            &UserUpdate {
                language: Some("en".into()),
                sms_credit: Some(5),
                ..UserUpdate::default()
            },
        )
        .await
        .unwrap();
    store
        .set_user(
            "bert",
            &UserUpdate {
                language: Some("de".into()),
                ..UserUpdate::default()
            },
        )
        .await
        .unwrap();

    // RFC 5435 mailto notification.
    app.send_datagram(&fixture("093-SIEVE.bin"));
    let mails = wait_for_mails(&smtp, 1).await;
    let mail = &mails[0];
    assert_eq!(mail.to, ["alice-phone@sms.example.test"]);
    let message = mail.parsed();
    assert_eq!(
        message.subject(),
        Some("Urgent mail: This is URGENT please read")
    );
    assert_eq!(header(&message, "From"), "notifications@example.test");
    assert_eq!(header(&message, "Auto-Submitted"), "auto-notified");
    assert_eq!(header(&message, "Importance"), "High");
    assert!(
        message.date().is_some()
            && message
                .message_id()
                .is_some_and(|id| id.starts_with("mailpush.job"))
    );
    assert!(
        message
            .body_text(0)
            .unwrap()
            .contains("Urgent mail: This is URGENT please read")
    );

    // Legacy sms with the number in the options; credit is spent.
    app.send_datagram(&fixture("100-SIEVE.bin"));
    wait_until("the SMS", || async { !sms.received().is_empty() }).await;
    let text_message = &sms.received()[0];
    assert_eq!(
        text_message.headers["authorization"],
        "Bearer sms-provider-key"
    );
    assert_eq!(
        text_message.body,
        json!({"to": "+15555550100", "text": "Legacy notify: Bob Sender <bob@sender.example> / legacy notify test / First line of the body text here."})
    );
    wait_until("credit spent", || async {
        store.user("alice").await.unwrap().sms_credit == 4
    })
    .await;

    // The legacy default method with an address; xmpp is not supported and sends nothing.
    app.send_datagram(&fixture("101-SIEVE.bin"));
    app.send_datagram(&fixture("106-SIEVE.bin"));
    // The captured alarm is a display alarm: no email. Email alarms for an en and a de user.
    app.send_datagram(&fixture("129-CalendarAlarm.bin"));
    app.send_datagram(&email_alarm("alice", "alice@example.test"));
    app.send_datagram(&email_alarm("bert", "bert@example.test"));
    let mails = wait_for_mails(&smtp, 4).await;
    let to = |address: &str| {
        mails
            .iter()
            .find(|mail| mail.to == [address])
            .unwrap_or_else(|| panic!("no mail to {address}: {mails:?}"))
    };
    assert_eq!(
        to("carol@example.test").parsed().subject(),
        Some("default method")
    );

    let english = to("alice@example.test").parsed();
    assert_eq!(
        english.subject(),
        Some("Reminder: Standup with the push team — Saturday, 28 November 2026, 15:16")
    );
    assert_eq!(header(&english, "Auto-Submitted"), "auto-generated");
    assert!(
        english
            .content_type()
            .is_some_and(|ct| ct.ctype() == "multipart" && ct.subtype() == Some("alternative"))
    );
    let text = english.body_text(0).unwrap();
    assert!(
        text.contains(
            "When:  Saturday, 28 November 2026, 15:16 – Saturday, 28 November 2026, 15:46 (UTC)"
        ),
        "{text}"
    );
    assert!(
        text.contains("Where: Room 4") && text.contains("Discuss the gateway"),
        "{text}"
    );
    assert!(
        text.contains("Dave <dave@external.example> (needs action)"),
        "{text}"
    );
    let html = english.body_html(0).unwrap();
    assert!(
        html.contains("<h2>Reminder: Standup with the push team</h2>"),
        "{html}"
    );

    let german = to("bert@example.test").parsed();
    assert_eq!(
        german.subject(),
        Some("Erinnerung: Standup with the push team — Samstag, 28. November 2026, 15:16")
    );
    let text = german.body_text(0).unwrap();
    assert!(
        text.contains(
            "Wann: Samstag, 28. November 2026, 15:16 – Samstag, 28. November 2026, 15:46 (UTC)"
        ),
        "{text}"
    );
    assert!(
        text.contains("Alice <alice@example.test> (zugesagt)") && text.contains("(keine Antwort)"),
        "{text}"
    );
    assert!(german.body_html(0).unwrap().contains("lang=\"de\""));

    let metrics = app.metrics().await;
    assert_eq!(
        metric(&metrics, "mailpush_jobs_total{outcome=\"sent\"}"),
        5.0,
        "{metrics}"
    );
    assert_eq!(smtp.mails().len(), 4, "nothing else was mailed");
    assert_eq!(sms.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_event_sends_once() {
    let smtp = SmtpSink::start();
    let sms = SmsMock::start().await;
    let app = app(&smtp, &sms, &[]).await;
    app.send_datagram(&fixture("093-SIEVE.bin"));
    app.send_datagram(&fixture("093-SIEVE.bin"));
    app.send_datagram(&email_alarm("alice", "alice@example.test"));
    app.send_datagram(&email_alarm("alice", "alice@example.test"));
    wait_until("two duplicates counted", || async {
        metric(
            &app.metrics().await,
            "mailpush_jobs_total{outcome=\"duplicate\"}",
        ) == 2.0
    })
    .await;
    wait_until("two sent", || async {
        metric(
            &app.metrics().await,
            "mailpush_jobs_total{outcome=\"sent\"}",
        ) == 2.0
    })
    .await;
    assert_eq!(smtp.mails().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sms_jobs_never_spend_more_credit_than_there_is() {
    let smtp = SmtpSink::start();
    let sms = SmsMock::start().await;
    let app = app(&smtp, &sms, &[("MAILPUSH_NOTIFY__WORKERS", "8")]).await;
    let store = app.store().await;
    store
        .set_user(
            "alice",
            &UserUpdate {
                sms_number: Some("+4930123456".into()),
                sms_credit: Some(3),
                ..UserUpdate::default()
            },
        )
        .await
        .unwrap();
    for delivery in 0..20 {
        app.send_datagram(&sms_packet("alice", "New mail", delivery));
    }
    wait_until("20 jobs finished", || async {
        let done = store.jobs(Some(JobState::Done), 100).await.unwrap().len();
        let dead = store.jobs(Some(JobState::Dead), 100).await.unwrap().len();
        done + dead == 20
    })
    .await;
    assert_eq!(sms.received().len(), 3, "exactly the credit");
    assert!(
        sms.received().iter().all(|m| m.body["to"] == "+4930123456"),
        "the stored number"
    );
    assert_eq!(store.user("alice").await.unwrap().sms_credit, 0);
    let dead = store.jobs(Some(JobState::Dead), 100).await.unwrap();
    assert_eq!(dead.len(), 17);
    assert!(
        dead.iter()
            .all(|job| job.last_error.as_deref() == Some("no SMS credit"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_sends_are_retried_then_dead_and_can_be_retried_by_hand() {
    let smtp = SmtpSink::start();
    let sms = SmsMock::start().await;
    let app = app(&smtp, &sms, &[("MAILPUSH_NOTIFY__MAX_ATTEMPTS", "3")]).await;
    let store = app.store().await;
    // The legacy packets name no number: alice's stored one is used.
    store
        .set_user(
            "alice",
            &UserUpdate {
                sms_credit: Some(10),
                sms_number: Some("+15555550100".into()),
                ..UserUpdate::default()
            },
        )
        .await
        .unwrap();
    sms.answer(503);
    app.send_datagram(&sms_packet("alice", "retry me", 1));
    wait_until("a dead job", || async {
        !store
            .jobs(Some(JobState::Dead), 10)
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    let dead = store
        .jobs(Some(JobState::Dead), 10)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(dead.attempts, 3);
    assert_eq!(
        dead.last_error.as_deref(),
        Some("SMS provider answered 503 Service Unavailable")
    );
    assert_eq!(sms.received().len(), 3, "three attempts");
    assert_eq!(
        store.user("alice").await.unwrap().sms_credit,
        9,
        "credit is taken once per job, not per attempt"
    );

    // A 4xx is permanent: dead after one attempt.
    sms.answer(400);
    app.send_datagram(&sms_packet("alice", "bad request", 2));
    wait_until("two dead jobs", || async {
        store.jobs(Some(JobState::Dead), 10).await.unwrap().len() == 2
    })
    .await;
    assert_eq!(sms.received().len(), 4);

    // `mailpush jobs retry` sends a dead job round again.
    sms.answer(200);
    assert!(
        store
            .requeue_job(dead.id, mailpush::notify::now_ms())
            .await
            .unwrap()
    );
    // Another process's change is seen within 15 s; a new job wakes the workers at once.
    app.send_datagram(&sms_packet("alice", "wake up", 3));
    wait_until("the retried job done", || async {
        store
            .jobs(Some(JobState::Done), 10)
            .await
            .unwrap()
            .iter()
            .any(|job| job.id == dead.id)
    })
    .await;
    wait_until("the wake-up job sent too", || async {
        sms.received().len() == 6
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_smtp_server_delays_nothing_on_the_fast_path() {
    // A "server" that accepts connections and never says a word.
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("smtp://{}", hanging.local_addr().unwrap());
    let _held = std::thread::spawn(move || {
        let mut connections = Vec::new();
        for stream in hanging.incoming().take(64) {
            connections.push(stream);
        }
        std::thread::sleep(Duration::from_secs(60));
    });
    let sms = SmsMock::start().await;
    let app = TestApp::builder()
        .env("MAILPUSH_NOTIFY__SMTP__URL", &url)
        .env("MAILPUSH_NOTIFY__SMS__URL", &sms.url)
        .start()
        .await;
    let mut alice = app.sse("alice").await;
    let socket = app.cyrus_socket.clone();
    tokio::task::spawn_blocking(move || {
        for n in 1..=1000u64 {
            common::send_datagram(&socket, &email_alarm("alice", &format!("r{n}@example.test")));
            let json = json!({"event": "MessageNew", "uri": format!("imap://h/user/alice;UIDVALIDITY=1/;UID={n}"), "modseq": n, "vnd.cmu.mbtype": "e"});
            common::send_datagram(&socket, &event_datagram(&json));
        }
    })
    .await
    .unwrap();
    let mut last = 0;
    while last < 1000 {
        last = alice.next_state().await.0;
    }
    let metrics = app.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "mailpush_events_received_total{source=\"cyrus\",type=\"CalendarAlarm\"}"
        ),
        1000.0
    );
    wait_until("1000 jobs queued", || async {
        metric(
            &app.metrics().await,
            "mailpush_jobs_total{outcome=\"queued\"}",
        ) == 1000.0
    })
    .await;
    assert_eq!(
        metric(
            &app.metrics().await,
            "mailpush_jobs_total{outcome=\"sent\"}"
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_notification_about_an_auto_submitted_message() {
    let smtp = SmtpSink::start();
    let sms = SmsMock::start().await;
    let app = app(&smtp, &sms, &[]).await;
    let staged = tempfile::tempdir().unwrap();
    let auto_reply = staged.path().join("1-auto");
    std::fs::write(&auto_reply, "From: bob@example.test\r\nAuto-Submitted: auto-replied\r\nSubject: Out of office\r\n\r\nAway.\r\n").unwrap();
    let person = staged.path().join("2-person");
    std::fs::write(
        &person,
        "From: bob@example.test\r\nAuto-Submitted: no\r\nSubject: Hi\r\n\r\nHello.\r\n",
    )
    .unwrap();
    for (path, recipient) in [
        (&auto_reply, "auto@example.test"),
        (&person, "person@example.test"),
    ] {
        let packet = format!(
            "mailto\0SIEVE\0normal\0alice\0\x001\0{recipient}\0New mail\0{}\0",
            path.display()
        );
        app.send_datagram(packet.as_bytes());
    }
    let mails = wait_for_mails(&smtp, 1).await;
    wait_until("the auto-reply skipped", || async {
        metric(
            &app.metrics().await,
            "mailpush_jobs_total{outcome=\"skipped_auto_submitted\"}",
        ) == 1.0
    })
    .await;
    wait_until("one sent", || async {
        metric(
            &app.metrics().await,
            "mailpush_jobs_total{outcome=\"sent\"}",
        ) == 1.0
    })
    .await;
    assert_eq!(smtp.mails().len(), 1);
    assert_eq!(mails[0].to, ["person@example.test"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_sends_run_at_once_than_there_are_workers() {
    let smtp = SmtpSink::start_with_threads(8);
    let sms = SmsMock::start().await;
    let app = app(&smtp, &sms, &[("MAILPUSH_NOTIFY__WORKERS", "2")]).await;
    let store = app.store().await;
    smtp.hold(common::smtp::Hold::Data);
    for n in 0..6 {
        app.send_datagram(
            format!(
                "mailto\0SIEVE\0normal\0alice\0\x001\0r{n}@example.test\0Mail {n}\0/stage/{n}\0"
            )
            .as_bytes(),
        );
    }
    let count = |state| {
        let store = store.clone();
        async move { store.jobs(Some(state), 100).await.unwrap().len() }
    };
    wait_until("two sends held at the relay, every job queued", || async {
        smtp.held() == 2 && count(JobState::Queued).await + count(JobState::Running).await == 6
    })
    .await;
    // Two sending, and at most one per worker claimed ahead of them, not started.
    let claimed = count(JobState::Running).await;
    assert!((2..=4).contains(&claimed), "{claimed} claimed");
    assert_eq!(smtp.held(), 2, "no more sends than workers");

    smtp.hold(common::smtp::Hold::Nothing);
    wait_until("every job done", || async {
        count(JobState::Done).await == 6
    })
    .await;
    let mut recipients: Vec<String> = smtp.by_recipient().into_keys().collect();
    recipients.sort();
    assert_eq!(
        recipients,
        (0..6)
            .map(|n| format!("r{n}@example.test"))
            .collect::<Vec<_>>()
    );
    assert!(smtp.by_recipient().values().all(|&sent| sent == 1));
}

/// A job claimed ahead of a busy worker is not started on a lease more than half gone: it is
/// given back to the queue (counted as `released`), claimed again with its attempt undone,
/// and sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_claimed_ahead_for_half_its_lease_is_given_back_and_sent_once() {
    const LEASE: Duration = Duration::from_secs(6);
    // Both jobs wait in the database before the app starts, so its first claim takes both:
    // one for its one worker, one ahead of it.
    let dir = tempfile::tempdir().unwrap();
    let database = match std::env::var("MAILPUSH_TEST_APP_PG_URL") {
        Ok(url) => Some(common::postgres_schema(&url).await),
        Err(_) => None,
    };
    let setup =
        mailpush::store::Store::connect(database.as_deref(), &dir.path().join("mailpush.db"))
            .await
            .unwrap();
    let jobs: Vec<NewJob> = (0..2)
        .map(|n| NewJob {
            user_id: "alice".into(),
            kind: "sieve_email".into(),
            payload: serde_json::to_string(&mailpush::job::Work::SieveEmail {
                uri: format!("r{n}@example.test"),
                message: format!("Mail {n}"),
                importance: "normal".into(),
            })
            .unwrap(),
            key: format!("ahead-{n}"),
        })
        .collect();
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    assert_eq!(setup.insert_jobs(&jobs, now_ms).await.unwrap(), 2);

    let smtp = SmtpSink::start();
    smtp.hold(common::smtp::Hold::Data);
    let app = TestApp::builder()
        .database(database)
        .data_dir(dir.path())
        .env("MAILPUSH_NOTIFY__SMTP__URL", &smtp.url())
        .env("MAILPUSH_NOTIFY__FROM", "notifications@example.test")
        .env("MAILPUSH_NOTIFY__WORKERS", "1")
        .env("MAILPUSH_NOTIFY__LEASE_SECS", "6")
        .start()
        .await;
    let store = app.store().await;
    wait_until(
        "one send held at the relay, one job claimed ahead",
        || async {
            smtp.held() == 1 && store.jobs(Some(JobState::Running), 10).await.unwrap().len() == 2
        },
    )
    .await;
    // Both were claimed before this moment; the held send's budget is its lease less 1 s.
    let claimed = std::time::Instant::now();
    wait_until("more than half the lease gone", || async {
        claimed.elapsed() > LEASE / 2 + Duration::from_millis(500)
    })
    .await;
    smtp.hold(common::smtp::Hold::Nothing);

    wait_until("both sent and done", || async {
        store.jobs(Some(JobState::Done), 10).await.unwrap().len() == 2
    })
    .await;
    let sent = smtp.by_recipient();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent.values().all(|&n| n == 1), "each once: {sent:?}");
    let metrics = app.metrics().await;
    assert_eq!(
        metric(&metrics, "mailpush_jobs_total{outcome=\"released\"}"),
        1.0
    );
    let attempts: Vec<i64> = store
        .jobs(Some(JobState::Done), 10)
        .await
        .unwrap()
        .iter()
        .map(|job| job.attempts)
        .collect();
    assert_eq!(attempts, [1, 1], "the attempt given back is not counted");
}
