//! Users' states outlive the process: after a restart (clean, or `kill -9` once the state was
//! written), ids and modseqs are never lower than before, and a `Last-Event-ID` from before
//! the restart is honoured.

mod common;

use std::path::Path;

use common::server::Server;
use common::{AUTH_SECRET, Sse, metric, wait_until};

/// A modseq change in alice's mailbox of type `mbtype` (`e` mail, `c` calendar, `a` contacts).
fn change(mbtype: &str, folder: &str, modseq: u64) -> Vec<u8> {
    let json = format!(
        r#"{{"event":"vnd.cmu.MailboxModseq","uri":"imap://h/user/alice{folder};UIDVALIDITY=1","modseq":{modseq},"vnd.cmu.mbtype":"{mbtype}"}}"#
    );
    [
        b"mailpush\0EVENT\0\0\0\x000\0".as_slice(),
        json.as_bytes(),
        b"\0",
    ]
    .concat()
}

fn env(dir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("MAILPUSH_HTTP__LISTEN", "127.0.0.1:0".to_owned()),
        (
            "MAILPUSH_STORAGE__DATA_DIR",
            dir.join("data").display().to_string(),
        ),
        (
            "MAILPUSH_INGEST__CYRUS_SOCKET",
            dir.join("notify.sock").display().to_string(),
        ),
        ("MAILPUSH_AUTH__SECRET", AUTH_SECRET.to_owned()),
    ]
}

async fn stream(server: &Server, dir: &Path, last_event_id: Option<&str>) -> Sse {
    let token = common::auth_keys(dir).mint("alice", 600, false).unwrap();
    Sse::connect(&server.url("/events"), &token, last_event_id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_never_go_back_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let env = env(dir.path());
    let socket = dir.path().join("notify.sock");
    let first = Server::start(dir.path(), &env, &["serve"]);
    let mut alice = stream(&first, dir.path(), None).await;
    common::send_datagram(&socket, &change("e", "", 6));
    common::send_datagram(&socket, &change("c", "/%23calendars/Default", 71));
    common::send_datagram(&socket, &change("a", "/%23addressbooks/Default", 3));
    while alice.next_state().await != (6, 71, 3) {}
    assert_eq!(alice.last_event_id.as_deref(), Some("m6c71a3"));
    drop(alice);
    assert!(first.terminate().success());

    // A clean restart: the client comes back with what it saw; the next mail change keeps
    // calendar and contacts where they were.
    let second = Server::start(dir.path(), &env, &["serve"]);
    let mut alice = stream(&second, dir.path(), Some("m6c71a3")).await;
    common::send_datagram(&socket, &change("e", "", 7));
    assert_eq!(alice.next_state().await, (7, 71, 3));
    assert_eq!(alice.last_event_id.as_deref(), Some("m7c71a3"));
    // A client that saw less gets the newest state at once.
    let mut behind = stream(&second, dir.path(), Some("m5c70a3")).await;
    assert_eq!(behind.next_state().await, (7, 71, 3));

    // kill -9 once the state was written (within storage.state_flush_ms).
    let metrics_url = second.url("/metrics");
    let saved = || async {
        let response = common::client().get(&metrics_url).send().await.unwrap();
        metric(
            &response.text().await.unwrap(),
            "mailpush_states_saved_total",
        )
    };
    wait_until("state 7 written", || async { saved().await >= 1.0 }).await;
    let before = saved().await;
    common::send_datagram(&socket, &change("e", "", 8));
    assert_eq!(alice.next_state().await, (8, 71, 3));
    wait_until("state 8 written", || async { saved().await > before }).await;
    second.kill();
    let third = Server::start(dir.path(), &env, &["serve"]);
    let mut after_crash = stream(&third, dir.path(), Some("m7c71a3")).await;
    assert_eq!(after_crash.next_state().await, (8, 71, 3));
    assert_eq!(after_crash.last_event_id.as_deref(), Some("m8c71a3"));
    drop(third);
}
