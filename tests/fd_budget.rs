//! As many idle keep-alive connections as this process can open, held against the real
//! binary: the connection budget closes the oldest idle ones for room, so `/healthz` still
//! answers within a second and a Sieve notification's email is still written. The only test
//! in this file: it holds nearly every descriptor the test process may open.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::server::Server;
use common::{metric, wait_until};

/// The most connections the test opens, whatever the file limit.
const MOST_CONNECTIONS: usize = 20_000;

/// Opens a connection, sends one request on it and reads the answer; the connection is then
/// an idle keep-alive. None once this process is out of descriptors.
fn idle_keep_alive(addr: SocketAddr) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(common::DEADLINE))
        .expect("read timeout");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: mailpush\r\n\r\n")
        .ok()?;
    let mut answer = [0u8; 512];
    let mut read = 0;
    while !answer[..read].ends_with(b"ok\n") {
        match stream.read(&mut answer[read..]) {
            Ok(0) | Err(_) => return None,
            Ok(n) => read += n,
        }
    }
    Some(stream)
}

/// This process's open-file limit, raised to its maximum as the server raises its own.
fn file_limit() -> usize {
    usize::try_from(mailpush::listen::raise_file_limit()).unwrap_or(usize::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_starve_health_or_jobs() {
    let dir = tempfile::tempdir().unwrap();
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
    ];
    // Leave this process a few descriptors for the checks below. The server sizes its budget
    // from the same limit; where the limit is far larger, both are bounded here instead.
    let limit = file_limit();
    let wanted = limit.min(MOST_CONNECTIONS).saturating_sub(24);
    if limit > MOST_CONNECTIONS {
        env.push(("MAILPUSH_CONNECTIONS__MAX", (wanted - 500).to_string()));
    }
    let server = Server::start(dir.path(), &env, &["serve"]);
    let addr = server.http;
    let attack = tokio::task::spawn_blocking(move || {
        let mut held = Vec::with_capacity(wanted);
        while held.len() < wanted {
            match idle_keep_alive(addr) {
                Some(stream) => held.push(stream),
                None => break,
            }
        }
        held
    });
    let held = attack.await.unwrap();
    eprintln!("holding {} idle keep-alive connections", held.len());
    assert!(held.len() + 100 >= wanted, "opened only {}", held.len());

    let started = Instant::now();
    let answered = tokio::time::timeout(
        Duration::from_secs(1),
        common::client().get(server.url("/healthz")).send(),
    )
    .await
    .expect("/healthz answers within 1 s")
    .expect("/healthz");
    assert_eq!(answered.status(), 200);
    eprintln!("/healthz answered in {:?}", started.elapsed());

    let datagram = b"mailto\0SIEVE\0normal\0alice\0\x001\0bob@example.test\0You have mail\0/var/spool/cyrus/stage./1\0";
    common::send_datagram(&dir.path().join("notify.sock"), datagram);
    let outbox = dir.path().join("data/outbox");
    wait_until("the notification's email written", || async {
        std::fs::read_dir(&outbox).is_ok_and(|mut entries| entries.next().is_some())
    })
    .await;

    let metrics = common::client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let closed = metric(
        &metrics,
        "mailpush_limits_reached_total{limit=\"idle_connection_closed\"}",
    );
    let budget = metric(&metrics, "mailpush_connections_budget");
    eprintln!("budget {budget}, idle connections closed for room: {closed}");
    assert!(closed > 0.0, "the budget made room: {metrics}");
    assert!(metric(&metrics, "mailpush_connections_open") <= budget + 1.0);
    drop(held);
}
