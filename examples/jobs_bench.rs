//! Jobs per second on the blocking path, from Cyrus packet to SMTP server: Sieve `mailto`
//! notifications sent into the real datagram socket of an in-process mailpush (SQLite in a
//! temp dir), through the job table and the workers, to a local SMTP sink.
//!
//! ```sh
//! cargo run --release --example jobs_bench -- [JOBS] [WORKERS]
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailin_embedded::{Handler, Response, Server, response};
use mailpush::app::{self, Listeners};
use mailpush::config::Config;

#[derive(Clone)]
struct Counter(Arc<Mutex<usize>>);

impl Handler for Counter {
    fn data_end(&mut self) -> Response {
        *self.0.lock().expect("counter") += 1;
        response::OK
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let jobs: u32 = args.next().map_or(Ok(2_000), |n| n.parse())?;
    let workers: usize = args.next().map_or(Ok(8), |n| n.parse())?;

    let received = Counter(Arc::new(Mutex::new(0)));
    let smtp = std::net::TcpListener::bind("127.0.0.1:0")?;
    let smtp_url = format!("smtp://{}", smtp.local_addr()?);
    let mut server = Server::new(received.clone());
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

    let started = Instant::now();
    let sender = std::os::unix::net::UnixDatagram::unbound()?;
    for n in 0..jobs {
        let packet = format!(
            "mailto\0SIEVE\0normal\0alice\0\x001\0r{n}@example.test\0Mail {n}\0/stage/{n}\0"
        );
        sender.send_to(packet.as_bytes(), &socket)?;
    }
    let deadline = started + Duration::from_secs(300);
    while *received.0.lock().expect("counter") < jobs as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let delivered = *received.0.lock().expect("counter");
    println!(
        "{delivered}/{jobs} emails in {:.2} s: {:.0} jobs/s ({workers} workers, SQLite, SMTP on loopback)",
        elapsed.as_secs_f64(),
        delivered as f64 / elapsed.as_secs_f64()
    );
    let _ = stop.send(());
    running.await??;
    Ok(())
}
