//! Email through an SMTP server nobody here wrote: nodemailer's `smtp-server` from npm
//! (`tests/peers/smtp_server.js`, run by node on an ephemeral port). It offers PIPELINING, as
//! relays do, so the workers send each transaction's commands as one group; the server says
//! which connections did, takes each message, and refuses some recipients with a 550. Over
//! TLS (implicit and STARTTLS, with a certificate of a CA made at test time) it says which
//! messages came encrypted.
//!
//! Needs `MAILPUSH_TEST_NODE_MODULES`: a `node_modules` folder holding `smtp-server`
//! (`.ci/run` installs it).

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use common::peer::Peer;
use common::{TestApp, email_alarm, wait_until};
use mailpush::store::JobState;
use serde_json::Value;

/// The running peer and the messages it took, in order.
struct SmtpServer {
    _peer: Peer,
    port: u16,
    messages: Arc<Mutex<Vec<Value>>>,
}

impl SmtpServer {
    fn start() -> SmtpServer {
        SmtpServer::start_with(&[])
    }

    /// Starts the server with `env` (its TLS settings).
    fn start_with(env: &[(&str, &std::ffi::OsStr)]) -> SmtpServer {
        let modules = std::env::var("MAILPUSH_TEST_NODE_MODULES")
            .expect("MAILPUSH_TEST_NODE_MODULES: a node_modules folder with smtp-server");
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/smtp_server.js");
        let mut peer = Peer::spawn(
            "node smtp_server.js",
            Command::new("node")
                .arg(script)
                .env("NODE_PATH", modules)
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::piped()),
        );
        let mut lines = peer.stdout_lines();
        let first: Value = serde_json::from_str(
            &lines
                .next()
                .expect("smtp-server said where it listens")
                .expect("read"),
        )
        .expect("a JSON line");
        let port = first["listening"].as_u64().expect("a port") as u16;
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        std::thread::spawn(move || {
            for line in lines {
                let Ok(line) = line else { break };
                let message = serde_json::from_str(&line).expect("a JSON line");
                sink.lock().unwrap().push(message);
            }
        });
        SmtpServer {
            _peer: peer,
            port,
            messages,
        }
    }

    fn messages(&self) -> Vec<Value> {
        self.messages.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node and smtp-server from npm (MAILPUSH_TEST_NODE_MODULES)"]
async fn alarms_reach_a_real_relay_pipelined_each_once_and_a_refused_recipient_is_dead() {
    const ALARMS: usize = 40;
    let server = SmtpServer::start();
    let app = TestApp::builder()
        .env(
            "MAILPUSH_NOTIFY__SMTP__URL",
            &format!("smtp://127.0.0.1:{}", server.port),
        )
        .env("MAILPUSH_NOTIFY__FROM", "notifications@example.test")
        .env("MAILPUSH_NOTIFY__WORKERS", "4")
        .start()
        .await;
    for n in 0..ALARMS {
        app.send_datagram(&email_alarm("alice", &format!("guest{n}@example.test")));
    }
    app.send_datagram(&email_alarm("alice", "refused@example.test"));

    let store = app.store().await;
    wait_until("every alarm sent and the refused one dead", || async {
        server.messages().len() >= ALARMS
            && !store
                .jobs(Some(JobState::Dead), 10)
                .await
                .unwrap()
                .is_empty()
    })
    .await;
    let messages = server.messages();
    let mut recipients: Vec<String> = messages
        .iter()
        .flat_map(|message| message["to"].as_array().unwrap().clone())
        .map(|to| to.as_str().unwrap().to_owned())
        .collect();
    recipients.sort();
    let mut expected: Vec<String> = (0..ALARMS)
        .map(|n| format!("guest{n}@example.test"))
        .collect();
    expected.sort();
    assert_eq!(recipients, expected, "each guest once, nobody else");
    for message in &messages {
        assert_eq!(message["from"], "notifications@example.test");
        assert!(
            message["groups"].as_u64().unwrap() >= 1,
            "the relay offers PIPELINING: MAIL, RCPT and DATA to {} came as one group",
            message["to"]
        );
        let data = message["data"].as_str().unwrap();
        let parsed = mail_parser::MessageParser::default()
            .parse(data.as_bytes())
            .expect("a message");
        assert!(parsed.subject().is_some_and(|s| !s.is_empty()), "{data}");
    }

    let dead = store.jobs(Some(JobState::Dead), 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].attempts, 1, "a 550 is not tried again");
    let error = dead[0].last_error.as_deref().unwrap_or_default();
    assert!(
        error.contains("550") && error.contains("no such user"),
        "the relay's own words: {error}"
    );
    // Sent jobs are done; nothing is left to send twice.
    wait_until("all sent jobs done", || async {
        store.jobs(Some(JobState::Done), 100).await.unwrap().len() == ALARMS
    })
    .await;
    assert_eq!(server.messages().len(), ALARMS);
}

/// The gate that sends a message's final `.` with its journal record sits under TLS: over
/// `smtps://` and STARTTLS alike each email arrives once, encrypted, and its job is done. The
/// relay's certificate is trusted through `notify.smtp.ca_file`, without which it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node and smtp-server from npm (MAILPUSH_TEST_NODE_MODULES)"]
async fn alarms_reach_a_relay_over_tls_and_starttls_that_trusts_its_ca_file() {
    const ALARMS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let certificate = common::mock::localhost_certificate(dir.path());
    let (cert, key) = (dir.path().join("relay.pem"), dir.path().join("relay.key"));
    std::fs::write(&cert, certificate.cert.pem()).unwrap();
    std::fs::write(&key, certificate.key.serialize_pem()).unwrap();
    for (mode, url) in [
        ("implicit", "smtps://localhost:{port}"),
        ("starttls", "smtp://localhost:{port}?tls=required"),
    ] {
        let server = SmtpServer::start_with(&[
            ("SMTP_TLS", mode.as_ref()),
            ("SMTP_TLS_KEY", key.as_os_str()),
            ("SMTP_TLS_CERT", cert.as_os_str()),
        ]);
        let url = url.replace("{port}", &server.port.to_string());

        // The platform's roots alone do not know the relay's CA.
        let untrusting = TestApp::builder()
            .env("MAILPUSH_NOTIFY__SMTP__URL", &url)
            .start()
            .await;
        untrusting.send_datagram(&email_alarm("alice", "early@example.test"));
        let store = untrusting.store().await;
        wait_until(
            &format!("{mode}: the relay's certificate refused"),
            || async {
                store
                    .jobs(Some(JobState::Queued), 10)
                    .await
                    .unwrap()
                    .iter()
                    .any(|job| {
                        job.last_error
                            .as_deref()
                            .is_some_and(|error| error.contains("certificate"))
                    })
            },
        )
        .await;
        drop(untrusting);
        assert!(server.messages().is_empty(), "{mode}: nothing sent");

        let app = TestApp::builder()
            .env("MAILPUSH_NOTIFY__SMTP__URL", &url)
            .env(
                "MAILPUSH_NOTIFY__SMTP__CA_FILE",
                certificate.ca_file.to_str().unwrap(),
            )
            .env("MAILPUSH_NOTIFY__WORKERS", "2")
            .start()
            .await;
        for n in 0..ALARMS {
            app.send_datagram(&email_alarm("alice", &format!("guest{n}@example.test")));
        }
        let store = app.store().await;
        wait_until(&format!("{mode}: every alarm sent and done"), || async {
            server.messages().len() >= ALARMS
                && store.jobs(Some(JobState::Done), 100).await.unwrap().len() == ALARMS
        })
        .await;
        let messages = server.messages();
        let mut recipients: Vec<&str> = messages
            .iter()
            .map(|message| message["to"][0].as_str().unwrap())
            .collect();
        recipients.sort_unstable();
        let mut expected: Vec<String> = (0..ALARMS)
            .map(|n| format!("guest{n}@example.test"))
            .collect();
        expected.sort_unstable();
        assert_eq!(recipients, expected, "{mode}: each guest once");
        assert!(
            messages.iter().all(|message| message["secure"] == true),
            "{mode}: every message came over TLS: {messages:?}"
        );
    }
}
