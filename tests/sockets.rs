//! The Cyrus socket files: several sockets (one per Cyrus instance) feed one mailpush, files get
//! the configured mode, a live socket is never taken over, and bad packets are logged with
//! their reason at a bounded rate.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::server::Server;
use common::{AUTH_SECRET, Sse, TestApp, metric};
use mailpush::app::Listeners;
use mailpush::config::Config;

fn datagram(user: &str, modseq: u64, slot: &str) -> Vec<u8> {
    let json = format!(
        r#"{{"event":"MessageNew","uri":"imap://{slot}/user/{user};UIDVALIDITY=1/;UID=1","modseq":{modseq},"vnd.cmu.mbtype":"e","serverFQDN":"{slot}"}}"#
    );
    [
        b"mailpush\0EVENT\0\0\0\x000\0".as_slice(),
        json.as_bytes(),
        b"\0",
    ]
    .concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mailpush_serves_several_cyrus_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let slot1 = dir.path().join("slot1.sock");
    let slot2 = dir.path().join("slot2.sock");
    let app = TestApp::builder()
        .env(
            "MAILPUSH_INGEST__CYRUS_SOCKET",
            &format!("[\"{}\", \"{}\"]", slot1.display(), slot2.display()),
        )
        .env("MAILPUSH_INGEST__CYRUS_SOCKET_MODE", "0640")
        .start()
        .await;
    for path in [&slot1, &slot2] {
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640, "{}", path.display());
    }
    let mut alice = app.sse("alice").await;
    // User ids are global: the same user's events from two slots feed one state.
    common::send_datagram(&slot1, &datagram("alice", 3, "slot1.example"));
    assert_eq!(alice.next_state().await, (3, 0, 0));
    common::send_datagram(&slot2, &datagram("alice", 8, "slot2.example"));
    assert_eq!(alice.next_state().await, (8, 0, 0));
    let metrics = app.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "mailpush_slot_events_total{slot=\"slot1.example\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "mailpush_slot_events_total{slot=\"slot2.example\"}"
        ),
        1.0,
        "{metrics}"
    );
    app.stop().await;
    assert!(
        !slot1.exists() && !slot2.exists(),
        "socket files are removed at shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_socket_is_not_taken_over_and_a_stale_one_is_replaced() {
    let app = TestApp::start().await;
    let env = vec![
        ("MAILPUSH_HTTP__LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        (
            "MAILPUSH_INGEST__CYRUS_SOCKET".to_owned(),
            app.cyrus_socket.display().to_string(),
        ),
    ];
    let config = Config::load(None, env).unwrap();
    let err = Listeners::bind(&config)
        .await
        .err()
        .expect("a live socket is refused");
    assert!(
        format!("{err:#}").contains("another process is listening"),
        "{err:#}"
    );
    let mode = std::fs::metadata(&app.cyrus_socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660, "default mode");

    // A socket file left behind by a dead process is replaced.
    let stale_dir = tempfile::tempdir().unwrap();
    let stale = stale_dir.path().join("notify.sock");
    drop(std::os::unix::net::UnixDatagram::bind(&stale).unwrap());
    let env = vec![
        ("MAILPUSH_HTTP__LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        (
            "MAILPUSH_INGEST__CYRUS_SOCKET".to_owned(),
            stale.display().to_string(),
        ),
    ];
    let config = Config::load(None, env).unwrap();
    let listeners = Listeners::bind(&config)
        .await
        .expect("stale socket replaced");
    drop(listeners);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_packets_are_logged_with_their_reason_at_a_bounded_rate() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify.sock");
    let env = [
        ("MAILPUSH_HTTP__LISTEN", "127.0.0.1:0".to_owned()),
        (
            "MAILPUSH_STORAGE__DATA_DIR",
            dir.path().join("data").display().to_string(),
        ),
        (
            "MAILPUSH_INGEST__CYRUS_SOCKET",
            socket.display().to_string(),
        ),
        ("MAILPUSH_AUTH__SECRET", AUTH_SECRET.to_owned()),
    ];
    let server = Server::start(dir.path(), &env, &["serve"]);
    for _ in 0..200 {
        common::send_datagram(&socket, b"mailpush\0EVENT\0\0\0\x000\0{\"event\": nope}\0");
    }
    let url = server.url("/metrics");
    common::wait_until("200 rejected packets", || {
        let url = url.clone();
        async move {
            let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
            metric(
                &text,
                "mailpush_packets_rejected_total{source=\"cyrus\",reason=\"invalid_json\"}",
            ) == 200.0
        }
    })
    .await;
    common::wait_until("the log line", || async {
        server.log().contains("dropped bad packet")
    })
    .await;
    let log = server.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("dropped bad packet"))
        .collect();
    assert!(
        lines[0].contains("invalid_json") && lines[0].contains("invalid JSON"),
        "{}",
        lines[0]
    );
    // One line per second at most: 200 packets sent within a few seconds make a handful.
    assert!(lines.len() <= 5, "{} lines:\n{log}", lines.len());

    // The listener is still there for good packets.
    let keys = common::auth_keys(dir.path());
    let mut alice = Sse::connect(
        &server.url("/events"),
        &keys.mint("alice", 60, false).unwrap(),
        None,
    )
    .await;
    common::send_datagram(&socket, &datagram("alice", 2, "slot1"));
    assert_eq!(alice.next_state().await, (2, 0, 0));
}
