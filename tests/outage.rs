//! The database goes away under a steady job load and comes back: no job is lost, none is sent
//! twice. The database is a PostgreSQL of the test's own (`common::postgres`), stopped and
//! started by the test; the machine's shared cluster is never touched.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use common::postgres::PrivatePostgres;
use common::server::Server;
use common::smtp::SmtpSink;
use common::{wait_until, wait_until_within};

/// How long the database is away: 60 s, or `MAILPUSH_TEST_OUTAGE_SECS`.
fn outage() -> Duration {
    let secs = std::env::var("MAILPUSH_TEST_OUTAGE_SECS")
        .ok()
        .and_then(|secs| secs.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL's server binaries: MAILPUSH_TEST_PG_BINDIR"]
async fn a_database_outage_under_load_loses_no_job() {
    let bin = std::env::var("MAILPUSH_TEST_PG_BINDIR").expect("MAILPUSH_TEST_PG_BINDIR");
    let postgres = PrivatePostgres::start(Path::new(&bin));
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpSink::start();
    let env = vec![
        ("MAILPUSH_HTTP__LISTEN", "127.0.0.1:0".to_owned()),
        (
            "MAILPUSH_STORAGE__DATA_DIR",
            dir.path().join("data").display().to_string(),
        ),
        (
            "MAILPUSH_INGEST__CYRUS_SOCKET",
            dir.path().join("notify.sock").display().to_string(),
        ),
        ("MAILPUSH_NOTIFY__SMTP__URL", smtp.url()),
        ("MAILPUSH_DATABASE__URL", postgres.url()),
    ];
    let server = Server::start(dir.path(), &env, &["serve"]);

    // A steady load: one Sieve notification every 20 ms, until told to stop.
    let socket = dir.path().join("notify.sock");
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU32::new(0));
    let load = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let n = sent.load(Ordering::Relaxed);
                common::send_datagram(&socket, &common::sieve_mailto(n));
                sent.store(n + 1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    wait_until("emails flowing", || async { smtp.mails().len() >= 20 }).await;

    postgres.stop();
    let down_at = sent.load(Ordering::Relaxed);
    let metrics_url = server.url("/metrics");
    // A fresh connection each time: a pooled one idles through the outage, as long as the
    // server's keep-alive timeout, and the two closing at once would reset the request.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let metrics = || async {
        let response = fresh.get(&metrics_url).send().await.unwrap();
        response.text().await.unwrap()
    };
    wait_until("jobs waiting in the spool", || async {
        common::metric(&metrics().await, "mailpush_job_spool_bytes") > 0.0
    })
    .await;
    // The outage is the scenario, not a wait for something: it lasts its whole length.
    tokio::time::sleep(outage()).await;
    let during = sent.load(Ordering::Relaxed) - down_at;
    let spooled = common::metric(&metrics().await, "mailpush_job_spool_bytes");
    postgres.resume();

    let sent_by_resume = sent.load(Ordering::Relaxed);
    wait_until_within(
        "emails after the outage",
        Duration::from_secs(60),
        || async {
            smtp.by_recipient()
                .contains_key(&format!("r{}@example.test", sent_by_resume + 10))
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let total = sent.load(Ordering::Relaxed) as usize;
    wait_until_within("every email", Duration::from_secs(60), || async {
        smtp.by_recipient().len() == total
    })
    .await;
    let counts = smtp.by_recipient();
    let twice: usize = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "{total} jobs; {during} sent to mailpush during a {:?} outage ({spooled} bytes spooled); {twice} sent twice",
        outage()
    );
    for n in 0..total {
        assert!(
            counts.contains_key(&format!("r{n}@example.test")),
            "job {n} lost"
        );
    }
    assert_eq!(twice, 0, "no email sent twice");
    drop(server);
}
