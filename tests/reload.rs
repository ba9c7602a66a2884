//! SIGHUP reloads the templates and the log level of a running `mailpush serve`.

mod common;

use common::server::Server;
use common::smtp::SmtpSink;
use common::wait_until;
use serde_json::json;

fn email_alarm(uid: &str) -> Vec<u8> {
    let alarm = json!({"event": "CalendarAlarm", "userId": "alice", "calendarId": "Default", "uid": uid, "alarmTime": "20261128T145123Z",
        "action": "email", "alarmRecipients": ["mailto:alice@example.test"], "summary": "Standup", "start": "20261128T150000Z",
        "end": "20261128T153000Z", "timezone": "UTC"});
    [
        b"mailpush\0EVENT\0\0\0\x000\0".as_slice(),
        alarm.to_string().as_bytes(),
        b"\0",
    ]
    .concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_templates_and_log_level() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpSink::start();
    std::fs::create_dir_all(dir.path().join("templates/alarm")).unwrap();
    let subject = dir.path().join("templates/alarm/en.subject.j2");
    std::fs::write(&subject, "First: {{ summary }}").unwrap();
    let config = dir.path().join("mailpush.toml");
    std::fs::write(&config, "[log]\nlevel = \"info\"\n").unwrap();
    let env = [
        ("MAILPUSH_CONFIG", config.display().to_string()),
        ("MAILPUSH_HTTP__LISTEN", "127.0.0.1:0".to_owned()),
        (
            "MAILPUSH_INGEST__CYRUS_SOCKET",
            dir.path().join("notify.sock").display().to_string(),
        ),
        (
            "MAILPUSH_NOTIFY__TEMPLATES_DIR",
            dir.path().join("templates").display().to_string(),
        ),
        ("MAILPUSH_NOTIFY__SMTP__URL", smtp.url()),
    ];
    let server = Server::start(dir.path(), &env, &["serve"]);
    let socket = dir.path().join("notify.sock");
    common::send_datagram(&socket, &email_alarm("e1"));
    wait_until("the first email", || async { smtp.mails().len() == 1 }).await;
    assert_eq!(smtp.mails()[0].parsed().subject(), Some("First: Standup"));
    assert!(
        !server.log().contains("event received"),
        "debug lines are off at info"
    );

    std::fs::write(&subject, "Second: {{ summary }}").unwrap();
    std::fs::write(&config, "[log]\nlevel = \"debug\"\n").unwrap();
    server.hangup();
    wait_until("both reloads logged", || async {
        let log = server.log();
        log.contains("templates reloaded") && log.contains("log level reloaded")
    })
    .await;
    common::send_datagram(&socket, &email_alarm("e2"));
    wait_until("the second email", || async { smtp.mails().len() == 2 }).await;
    assert_eq!(smtp.mails()[1].parsed().subject(), Some("Second: Standup"));
    wait_until("a debug line", || async {
        server.log().contains("event received")
    })
    .await;

    // A template that does not parse leaves the current ones in place.
    std::fs::write(&subject, "Broken: {{ summary").unwrap();
    server.hangup();
    wait_until("the refusal logged", || async {
        server.log().contains("templates not reloaded")
    })
    .await;
    common::send_datagram(&socket, &email_alarm("e3"));
    wait_until("the third email", || async { smtp.mails().len() == 3 }).await;
    assert_eq!(smtp.mails()[2].parsed().subject(), Some("Second: Standup"));
}
