//! Schemathesis (from PyPI) against the running binary: it generates requests from
//! `/openapi.json` and checks every answer, with all of its checks: no server error, every
//! status and header documented, every body matching its schema, valid input accepted and
//! invalid input refused, authentication not ignored, deleted devices gone. The EventSource
//! streams never end, so it leaves them out; real clients test them (`tests/eventsource.rs`,
//! `tests/jmap_client.rs`, `tests/python_clients.rs`, `tests/browser.rs`).
//!
//! `MAILPUSH_TEST_SCHEMATHESIS` names the command (`.ci/run` installs it);
//! `MAILPUSH_TEST_SCHEMATHESIS_SEED` picks another seed than the fixed one, to explore.

mod common;

use common::server::Server;
use common::{AUTH_SECRET, INGEST_SECRET};

#[test]
#[ignore = "needs schemathesis: set MAILPUSH_TEST_SCHEMATHESIS"]
fn schemathesis_finds_nothing() {
    let command = std::env::var("MAILPUSH_TEST_SCHEMATHESIS").expect("MAILPUSH_TEST_SCHEMATHESIS");
    let seed =
        std::env::var("MAILPUSH_TEST_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261207".to_owned());
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("MAILPUSH_HTTP__LISTEN", "127.0.0.1:0".to_owned()),
        (
            "MAILPUSH_STORAGE__DATA_DIR",
            dir.path().join("data").display().to_string(),
        ),
        (
            "MAILPUSH_INGEST__CYRUS_SOCKET",
            dir.path().join("notify.sock").display().to_string(),
        ),
        ("MAILPUSH_INGEST__SECRET", INGEST_SECRET.to_owned()),
        ("MAILPUSH_AUTH__SECRET", AUTH_SECRET.to_owned()),
        // Schemathesis registers devices by the thousand; the cap is tested elsewhere.
        ("MAILPUSH_PUSH__MAX_DEVICES_PER_USER", "1000000".to_owned()),
        // Web Push on, its key served; endpoints are not looked up (no DNS for made-up hosts).
        ("MAILPUSH_PUSH__WEBPUSH__ENABLED", "true".to_owned()),
        (
            "MAILPUSH_PUSH__WEBPUSH__SUBJECT",
            "mailto:ops@example.test".to_owned(),
        ),
        (
            "MAILPUSH_PUSH__WEBPUSH__ALLOW_PRIVATE_ENDPOINTS",
            "true".to_owned(),
        ),
        ("RUST_LOG", "warn,mailpush::app=info".to_owned()),
    ];
    let server = Server::start(dir.path(), &env, &["serve"]);
    // An admin token is a user token too: it opens every client endpoint.
    let token = common::auth_keys(dir.path())
        .mint("alice", 3600, true)
        .unwrap();
    let config = format!(
        r#"
[auth.openapi.client_token]
bearer = "{token}"
[auth.openapi.client_cookie]
api_key = "{token}"
[auth.openapi.client_query]
api_key = "{token}"
[auth.openapi.ingest_secret]
bearer = "{INGEST_SECRET}"
[auth.openapi.dovecot_basic]
username = "dovecot"
password = "{INGEST_SECRET}"

# POST /ingest reads events as Cyrus's consumers do: a field of another type than the
# document gives is ignored rather than refused, so schema-violating events are accepted by
# design (the document says so).
[[operations]]
include-path = "/ingest"
checks.negative_data_rejection.enabled = false

# A Web Push subscription's p256dh must be a point on P-256, which no schema can say: keys
# that only look right are refused with 400 `invalid_device` and the reason.
[[operations]]
include-path = "/devices"
include-method = "POST"
checks.positive_data_acceptance.enabled = false
"#
    );
    std::fs::write(dir.path().join("schemathesis.toml"), config).unwrap();
    let output = std::process::Command::new(&command)
        .current_dir(dir.path())
        .args([
            "run",
            &server.url("/openapi.json"),
            "--exclude-path",
            "/events",
            "--exclude-path",
            "/jmap/eventsource",
            "--exclude-path",
            "/status/events",
            "--request-timeout",
            "10",
            "--max-examples",
            "100",
            "--workers",
            "1",
            "--seed",
            &seed,
        ])
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command}: {err}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = stdout.split("SUMMARY").last().unwrap_or(&stdout);
    eprintln!("schemathesis (seed {seed}):{summary}");
    assert!(
        output.status.success(),
        "schemathesis found something:\n{stdout}\n{}\nmailpush's log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.log()
    );
    assert!(summary.contains("No issues found"), "{summary}");
}
