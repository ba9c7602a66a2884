//! Jobs per second on the blocking path, from Cyrus packet to SMTP server: Sieve `mailto`
//! notifications sent into the real datagram socket of an in-process mailpush (SQLite in a
//! temp dir), through the job table and the workers, to a local SMTP sink.
//!
//! ```sh
//! cargo run --release --example jobs_bench -- [JOBS] [WORKERS]
//! ```
//!
//! With `MAILPUSH_DATABASE__URL` set to a PostgreSQL database, the jobs table is there instead
//! (use a scratch database: jobs an earlier run left pending there would be sent too; each run
//! makes keys of its own, so finished runs do not matter). Each
//! email has its own recipient, and the sink counts recipients it saw twice and ones it never
//! saw, so the figure says nothing was lost or sent twice.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailin_embedded::{Handler, Response, Server, response};
use mailpush::app::{self, Listeners};
use mailpush::config::Config;

/// What the sink received: each email's recipients, and how many were seen twice.
#[derive(Default)]
struct Received {
    recipients: HashSet<String>,
    twice: usize,
}

/// The SMTP sink's handler, cloned per connection: the transaction's recipients, then the
/// shared record once the message is accepted.
#[derive(Clone)]
struct Sink {
    received: Arc<Mutex<Received>>,
    rcpts: Vec<String>,
}

impl Handler for Sink {
    fn mail(&mut self, _ip: std::net::IpAddr, _domain: &str, _from: &str) -> Response {
        self.rcpts.clear();
        response::OK
    }

    fn rcpt(&mut self, to: &str) -> Response {
        self.rcpts.push(to.to_owned());
        response::OK
    }

    fn data_end(&mut self) -> Response {
        let mut received = self.received.lock().expect("sink");
        for rcpt in self.rcpts.drain(..) {
            if !received.recipients.insert(rcpt) {
                received.twice += 1;
            }
        }
        response::OK
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let jobs: u32 = args.next().map_or(Ok(2_000), |n| n.parse())?;
    let workers: usize = args.next().map_or(Ok(8), |n| n.parse())?;

    let received = Arc::new(Mutex::new(Received::default()));
    let sink = Sink {
        received: received.clone(),
        rcpts: Vec::new(),
    };
    let smtp = std::net::TcpListener::bind("127.0.0.1:0")?;
    let smtp_url = format!("smtp://{}", smtp.local_addr()?);
    let mut server = Server::new(sink);
    server
        .with_name("sink.example.test")
        .with_num_threads(workers as u32)
        .with_tcp_listener(smtp);
    std::thread::spawn(move || {
        let _ = server.serve();
    });

    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("notify.sock");
    let env = vec![
        ("MAILPUSH_HTTP__LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        (
            "MAILPUSH_STORAGE__DATA_DIR".to_owned(),
            dir.path().join("data").display().to_string(),
        ),
        (
            "MAILPUSH_INGEST__CYRUS_SOCKET".to_owned(),
            socket.display().to_string(),
        ),
        ("MAILPUSH_NOTIFY__SMTP__URL".to_owned(), smtp_url),
        ("MAILPUSH_NOTIFY__WORKERS".to_owned(), workers.to_string()),
    ];
    let database = std::env::var("MAILPUSH_DATABASE__URL").ok();
    let mut env = env;
    if let Some(url) = &database {
        env.push(("MAILPUSH_DATABASE__URL".to_owned(), url.clone()));
    }
    let config = Config::load(None, env)?;
    let listeners = Listeners::bind(&config).await?;
    let ready = format!("http://{}/readyz", listeners.http_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app::run(config, listeners, async {
        let _ = stopped.await;
    }));
    // Start-up (database, migrations, workers) finishes before the clock starts.
    let client = reqwest::Client::new();
    let ready_by = Instant::now() + Duration::from_secs(30);
    while !client
        .get(&ready)
        .send()
        .await
        .is_ok_and(|response| response.status().is_success())
    {
        anyhow::ensure!(Instant::now() < ready_by, "mailpush did not become ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The staging path is part of each job's idempotency key: a run of its own, so a database
    // kept from an earlier run takes these jobs as new.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let started = Instant::now();
    let sender = std::os::unix::net::UnixDatagram::unbound()?;
    for n in 0..jobs {
        let packet = format!(
            "mailto\0SIEVE\0normal\0alice\0\x001\0r{n}@example.test\0Mail {n}\0/stage/{run}/{n}\0"
        );
        sender.send_to(packet.as_bytes(), &socket)?;
    }
    let deadline = started + Duration::from_secs(300);
    let count = || received.lock().expect("sink").recipients.len();
    while count() < jobs as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let delivered = count();
    println!(
        "{delivered}/{jobs} emails in {:.2} s: {:.0} jobs/s ({workers} workers, {}, SMTP on loopback)",
        elapsed.as_secs_f64(),
        delivered as f64 / elapsed.as_secs_f64(),
        if database.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
    );
    let twice = received.lock().expect("sink").twice;
    println!(
        "missing: {}, sent twice: {twice}",
        jobs as usize - delivered.min(jobs as usize)
    );
    let _ = stop.send(());
    running.await??;
    Ok(())
}
