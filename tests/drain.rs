//! Graceful drain of the real binary: on SIGTERM every EventSource client is told to come back
//! and sees its stream end, the process exits 0 within the deadline, and no accepted job is
//! lost or left leased: what was not sent yet is sent after the restart.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::server::{Server, run_command};
use common::smtp::SmtpSink;
use common::{AUTH_SECRET, Sse, wait_until};

const CLIENTS: usize = 200;
const JOBS: u32 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_streams_and_loses_no_job() {
    drain(None).await;
}

/// The same on the single-threaded runtime that one worker thread selects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_on_the_single_threaded_runtime_too() {
    drain(Some(1)).await;
}

async fn drain(worker_threads: Option<usize>) {
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpSink::start();
    let mut env = vec![
        ("MAILPUSH_HTTP__LISTEN", "127.0.0.1:0".to_owned()),
        (
            "MAILPUSH_STORAGE__DATA_DIR",
            dir.path().join("data").display().to_string(),
        ),
        (
            "MAILPUSH_INGEST__CYRUS_SOCKET",
            dir.path().join("notify.sock").display().to_string(),
        ),
        ("MAILPUSH_AUTH__SECRET", AUTH_SECRET.to_owned()),
        ("MAILPUSH_NOTIFY__SMTP__URL", smtp.url()),
        ("MAILPUSH_NOTIFY__WORKERS", "2".to_owned()),
        ("MAILPUSH_SHUTDOWN__GRACE_SECS", "5".to_owned()),
    ];
    if let Some(threads) = worker_threads {
        env.push(("MAILPUSH_RUNTIME__WORKER_THREADS", threads.to_string()));
    }
    let server = Server::start(dir.path(), &env, &["serve"]);
    let keys = common::auth_keys(dir.path());
    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        let token = keys.mint(&format!("user{}", n % 20), 600, false).unwrap();
        clients.push(Sse::connect(&server.url("/events"), &token, None).await);
    }
    let socket = dir.path().join("notify.sock");
    for n in 0..JOBS {
        common::send_datagram(&socket, &common::sieve_mailto(n));
    }
    wait_until("sending under way", || async { smtp.mails().len() >= 10 }).await;

    let started = Instant::now();
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5 + 3),
        "exited within the deadline: {:?}",
        started.elapsed()
    );
    for client in &mut clients {
        client.expect_end().await;
    }

    // Nothing accepted is lost: every job is in the database, and a restart sends the rest.
    let (_, listing, _) = run_command(dir.path(), &env, &["jobs", "--limit", "1000"]);
    assert_eq!(listing.lines().count(), JOBS as usize + 1, "{listing}");
    // A drained node holds no lease: its sends finished, and the jobs it had claimed ahead of
    // its workers are queued again, not left to wait for their lease to run out.
    let leased: Vec<&str> = listing
        .lines()
        .filter(|line| line.split_whitespace().nth(1) == Some("running"))
        .collect();
    assert!(leased.is_empty(), "jobs left leased: {leased:?}");
    let _restarted = Server::start(dir.path(), &env, &["serve"]);
    wait_until("every email after the restart", || async {
        let ids: HashSet<String> = smtp
            .mails()
            .iter()
            .map(|m| m.parsed().message_id().unwrap_or_default().to_owned())
            .collect();
        ids.len() == JOBS as usize
    })
    .await;
}
