//! The `mailpush` command line, run as a newcomer would: README's steps against the built
//! binary, `check-config` and `token`.

mod common;

use std::path::PathBuf;

use common::server::{Server, run_command};
use common::{Sse, fixtures};

/// The example program README tells newcomers to use; `cargo test` builds examples.
fn example(name: &str) -> PathBuf {
    let deps = std::env::current_exe().expect("test exe");
    let profile = deps
        .parent()
        .and_then(|d| d.parent())
        .expect("target profile dir");
    profile.join("examples").join(name)
}

/// README's steps, in order: start on embedded defaults, mint a token, open the stream, send a
/// fixture event with the example program, see it arrive. Only the HTTP port differs, so the
/// test does not collide with anything on 8080.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newcomer_steps_from_readme() {
    let dir = tempfile::tempdir().expect("temp dir");
    let env = [("MAILPUSH_HTTP__LISTEN", "127.0.0.1:0".to_owned())];
    let server = Server::start(dir.path(), &env, &[]);
    assert!(
        dir.path().join("run/notify.sock").exists(),
        "default socket run/notify.sock"
    );

    let (status, token, stderr) = run_command(dir.path(), &env, &["token", "--user", "alice"]);
    assert_eq!(status, 0, "{stderr}");
    let token = token.strip_suffix('\n').expect("one line");
    assert_eq!(
        token.split('.').count(),
        3,
        "stdout is the JWT and nothing else: {token:?}"
    );

    let mut stream = Sse::connect(&server.url("/events"), token, None).await;
    let fixture = fixtures().join("cyrus/008-MessageNew.bin");
    let output = std::process::Command::new(example("send_event"))
        .current_dir(dir.path())
        .arg("run/notify.sock")
        .arg(&fixture)
        .output()
        .expect("run examples/send_event: plain `cargo test` builds it, or run `cargo build --examples`");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stream.next_state().await, (4, 0, 0));

    // send_event wraps a JSON event in the Cyrus packet layout.
    let json = r#"{"event":"MessageNew","uri":"imap://h/user/alice;UIDVALIDITY=1/;UID=9","modseq":9,"vnd.cmu.mbtype":"e"}"#;
    std::fs::write(dir.path().join("event.json"), format!("{json}\n")).expect("write event");
    let output = std::process::Command::new(example("send_event"))
        .current_dir(dir.path())
        .args(["run/notify.sock", "event.json"])
        .output()
        .expect("run examples/send_event");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stream.next_state().await, (9, 0, 0));

    let secret = dir.path().join("data/auth.secret");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&secret)
            .expect("generated secret")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // Every file that holds users' data is the service user's alone.
    let private = |path: &str, expected: u32| {
        let path = dir.path().join(path);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path)
                .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
                .permissions(),
        );
        assert_eq!(mode & 0o777, expected, "{}", path.display());
    };
    private("data", 0o700);
    private("data/mailpush.db", 0o600);
    private("data/delivery.journal", 0o600);
    private("data/spool", 0o700);
    private("data/spool/cursor", 0o600);
    private("data/outbox", 0o700);
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        !dir.path().join("run/notify.sock").exists(),
        "socket file removed at exit"
    );
}

#[test]
fn check_config_redacts_secrets_and_names_bad_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = "a-very-secret-value-123".to_owned();
    let (status, stdout, _) = run_command(
        dir.path(),
        &[("MAILPUSH_AUTH__SECRET", secret.clone())],
        &["check-config"],
    );
    assert_eq!(status, 0);
    assert!(
        stdout.contains("[http]") && stdout.contains("listen = \"127.0.0.1:8080\""),
        "{stdout}"
    );
    assert!(stdout.contains("secret = \"<redacted>\""), "{stdout}");
    assert!(!stdout.contains(&secret), "{stdout}");

    let (status, _, stderr) = run_command(
        dir.path(),
        &[("MAILPUSH_HTTP__LISTEN", "nowhere".into())],
        &["check-config"],
    );
    assert_eq!(status, 64);
    assert!(stderr.contains("http.listen"), "{stderr}");

    std::fs::write(
        dir.path().join("bad.toml"),
        "[ingest]\ncyrus_socket_mode = \"rwx\"\n",
    )
    .expect("write");
    let (status, _, stderr) =
        run_command(dir.path(), &[], &["check-config", "--config", "bad.toml"]);
    assert_eq!(status, 64);
    assert!(stderr.contains("ingest.cyrus_socket_mode"), "{stderr}");
    let (status, _, stderr) = run_command(dir.path(), &[], &["serve", "--config", "bad.toml"]);
    assert_eq!(status, 64, "serve refuses a bad config too: {stderr}");

    // The shipped example lists every key and is itself valid.
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mailpush.example.toml");
    let (status, _, stderr) = run_command(
        dir.path(),
        &[],
        &["check-config", "--config", &example.display().to_string()],
    );
    assert_eq!(status, 0, "{stderr}");

    // mailpush.toml in the working directory is read without --config.
    std::fs::write(
        dir.path().join("mailpush.toml"),
        "[http]\nlisten = \"127.0.0.1:9999\"\n",
    )
    .expect("write");
    let (status, stdout, _) = run_command(dir.path(), &[], &["check-config"]);
    assert_eq!(status, 0);
    assert!(stdout.contains("listen = \"127.0.0.1:9999\""), "{stdout}");
}

#[test]
fn token_uses_the_configured_secret_and_ttl() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = "configured-secret-for-tokens";
    let env = [("MAILPUSH_AUTH__SECRET", secret.to_owned())];
    let (status, stdout, _) = run_command(
        dir.path(),
        &env,
        &["token", "--user", "bob", "--ttl", "120"],
    );
    assert_eq!(status, 0);
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    let key = jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()).expect("key");
    let data = jsonwebtoken::decode::<serde_json::Value>(stdout.trim(), &key, &validation)
        .expect("valid token");
    assert_eq!(data.claims["sub"], "bob");
    let ttl = data.claims["exp"].as_u64().unwrap() - data.claims["iat"].as_u64().unwrap();
    assert_eq!(ttl, 120);
    assert!(
        !dir.path().join("data/auth.secret").exists(),
        "a configured secret is not written to disk"
    );

    let (status, _, stderr) = run_command(dir.path(), &env, &["token"]);
    assert_ne!(status, 0, "--user is required: {stderr}");
}

/// JSON logs for a log pipeline, and no secret or token in them even at debug level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_no_secrets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let auth_secret = "auth-secret-that-must-not-leak";
    let ingest_secret = "ingest-secret-that-must-not-leak";
    let env = [
        ("MAILPUSH_HTTP__LISTEN", "127.0.0.1:0".to_owned()),
        ("MAILPUSH_AUTH__SECRET", auth_secret.to_owned()),
        ("MAILPUSH_INGEST__SECRET", ingest_secret.to_owned()),
        (
            "MAILPUSH_DATABASE__URL",
            format!("sqlite://{}/db.sqlite?mode=rwc", dir.path().display()),
        ),
        // Everything at debug, dependencies included.
        ("RUST_LOG", "debug".to_owned()),
    ];
    let server = Server::start(dir.path(), &env, &["serve", "--log-format", "json"]);
    let (_, token, _) = run_command(dir.path(), &env, &["token", "--user", "alice"]);
    let token = token.trim().to_owned();
    let client = reqwest::Client::new();
    let ready = client.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<serde_json::Value>().await.unwrap()["database"],
        "ok"
    );
    // A valid token in the query, a forged one, the ingest secret, a wrong ingest secret.
    let stream = client
        .get(server.url(&format!("/events?access_token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    drop(stream);
    let forged = client
        .get(server.url("/events"))
        .bearer_auth("forged.token-value.leak")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let event = r#"{"event":"MessageNew","uri":"imap://h/user/alice;UIDVALIDITY=1/;UID=1","modseq":1,"vnd.cmu.mbtype":"e"}"#;
    let ingested = client
        .post(server.url("/ingest"))
        .bearer_auth(ingest_secret)
        .body(event)
        .send()
        .await
        .unwrap();
    assert_eq!(ingested.status(), 200);
    let refused = client
        .post(server.url("/ingest"))
        .bearer_auth("wrong-ingest-secret-leak")
        .body(event)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    common::wait_until("the ingested event in the log", || async {
        server.log().contains("event received")
    })
    .await;
    let log = server.log();
    for line in log.lines() {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok(), "not a JSON line: {line}");
    }
    for secret in [
        auth_secret,
        ingest_secret,
        token.as_str(),
        "forged.token-value.leak",
        "wrong-ingest-secret-leak",
    ] {
        assert!(!log.contains(secret), "{secret} appears in the log:\n{log}");
    }
    let secret_file =
        std::fs::read_to_string(dir.path().join("data/auth.secret")).unwrap_or_default();
    assert!(
        secret_file.is_empty(),
        "a configured secret is not written to disk"
    );
}

/// `docker build` cannot run here, so the Dockerfile's HEALTHCHECK command is run as written
/// against the built binary: healthy while serving, unhealthy once stopped.
#[test]
fn dockerfile_healthcheck_command_works() {
    let dockerfile = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"),
    )
    .unwrap();
    let line = dockerfile
        .lines()
        .find(|line| line.starts_with("HEALTHCHECK"))
        .expect("a HEALTHCHECK");
    let exec = &line[line.find("CMD [").expect("exec form") + 4..];
    let argv: Vec<String> = serde_json::from_str(exec).expect("a JSON array");
    assert_eq!(argv[0], "/usr/local/bin/mailpush", "the installed binary");
    let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();

    let dir = tempfile::tempdir().expect("temp dir");
    let server_env = [("MAILPUSH_HTTP__LISTEN", "127.0.0.1:0".to_owned())];
    let server = Server::start(dir.path(), &server_env, &[]);
    let env = [("MAILPUSH_HTTP__LISTEN", server.http.to_string())];
    let (status, _, stderr) = run_command(dir.path(), &env, &args);
    assert_eq!(status, 0, "healthy: {stderr}");
    assert!(server.terminate().success());
    let (status, _, stderr) = run_command(dir.path(), &env, &args);
    assert_eq!(status, 1, "unhealthy once stopped");
    assert!(stderr.contains("cannot connect"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_listings_never_send_escape_sequences_to_the_terminal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let env = [("MAILPUSH_HTTP__LISTEN", "127.0.0.1:0".to_owned())];
    let server = Server::start(dir.path(), &env, &[]);
    // A user id with an escape sequence that would clear the operator's screen.
    let packet = b"mailto\0SIEVE\0normal\0ev\x1b[2Jil\0\x001\0bob@example.test\0Hi\0/stage/1\0";
    common::send_datagram(&dir.path().join("run/notify.sock"), packet);
    common::wait_until("the job listed", || async {
        let (_, listing, _) = run_command(dir.path(), &env, &["jobs"]);
        listing.lines().count() == 2
    })
    .await;
    let (status, listing, _) = run_command(dir.path(), &env, &["jobs"]);
    assert_eq!(status, 0);
    assert!(!listing.contains('\x1b'), "{listing:?}");
    assert!(listing.contains("ev\\u{1b}[2Jil"), "{listing:?}");
    drop(server);
}
