//! A soak of the release binary: steady events for a long run, EventSource streams that come
//! and go, pushes to a local APNs mock and notification emails to a local SMTP sink, with the
//! process's RSS and open descriptors sampled every minute. Flat columns mean nothing leaks.
//!
//! ```sh
//! cargo build --release && cargo run --release --example soak -- [MINUTES] [EVENTS_PER_SEC]
//! ```
//!
//! Defaults: 30 minutes, 200 events/s (one in forty a Sieve notification, so 5 emails/s),
//! 2,000 streams of 500 users with 20 replaced every second, one iPhone per user.
//! `MAILPUSH_BIN` names the binary (default `target/release/mailpush`). Everything runs on
//! 127.0.0.1, and every loop stops at the deadline.

use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use mailin_embedded::{Handler, Response, Server, response};
use mailpush::auth::TokenKeys;
use mailpush::config::{AuthConfig, Secret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const USERS: usize = 500;
const STREAMS: usize = 2_000;
const CHURN_PER_SEC: usize = 20;
const AUTH_SECRET: &str = "soak-auth-secret-0123456789";
const TOPIC: &str = "com.example.mail";

#[derive(Clone)]
struct Mails(Arc<AtomicU64>);

impl Handler for Mails {
    fn data_end(&mut self) -> Response {
        self.0.fetch_add(1, Ordering::Relaxed);
        response::OK
    }
}

/// What the run has done so far.
#[derive(Default)]
struct Counts {
    events: AtomicU64,
    pushes: AtomicU64,
    frames: AtomicU64,
    streams_opened: AtomicU64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let minutes: u64 = args.next().map_or(Ok(30), |n| n.parse())?;
    let rate: u64 = args.next().map_or(Ok(200), |n| n.parse())?;
    let deadline = Instant::now() + Duration::from_secs(minutes * 60);
    let counts = Arc::new(Counts::default());
    let dir = tempfile::tempdir()?;

    let apns_url = start_apns_mock(counts.clone()).await?;
    let mails = Mails(Arc::new(AtomicU64::new(0)));
    let smtp_url = start_smtp_sink(mails.clone())?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let key_file = dir.path().join("apns.p8");
    std::fs::write(&key_file, key.serialize_pem())?;

    let socket = dir.path().join("notify.sock");
    let mut child = start_mailpush(dir.path(), &socket, &apns_url, &smtp_url, &key_file)?;
    let pid = child.id();
    let http = common::wait_for_listening(&mut child, true)?.http;
    println!("mailpush pid {pid} on {http}; {minutes} min at {rate} events/s");

    let keys = TokenKeys::load(
        &AuthConfig {
            secret: Some(Secret::new(AUTH_SECRET)),
            ..AuthConfig::default()
        },
        dir.path(),
    )?;
    let tokens: Arc<Vec<String>> = Arc::new(
        (0..USERS)
            .map(|n| keys.mint(&format!("user{n}"), minutes * 60 + 3600, false))
            .collect::<anyhow::Result<_>>()?,
    );
    register_devices(http, &tokens).await?;

    let streams = tokio::spawn(churn_streams(
        http,
        tokens.clone(),
        counts.clone(),
        deadline,
    ));
    let events = tokio::task::spawn_blocking({
        let counts = counts.clone();
        move || send_events(&socket, rate, &counts, deadline)
    });

    println!(
        "{:>4}  {:>9}  {:>6}  {:>9}  {:>8}  {:>8}  {:>7}  {:>8}",
        "min", "rss_kb", "fds", "events", "pushes", "emails", "streams", "frames"
    );
    let started = Instant::now();
    let mut minute = 0;
    loop {
        sample(pid, minute, &counts, &mails);
        if Instant::now() >= deadline {
            break;
        }
        minute += 1;
        let next = started + Duration::from_secs(60 * minute);
        tokio::time::sleep_until(next.min(deadline).into()).await;
    }
    events.await??;
    streams.await?;
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = child.wait()?;
    println!("mailpush exited: {status}");
    Ok(())
}

/// One row: the process's resident memory and descriptors, and what the run has done.
fn sample(pid: u32, minute: u64, counts: &Counts, mails: &Mails) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|kb| kb.trim().trim_end_matches(" kB").parse::<u64>().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    println!(
        "{minute:>4}  {rss:>9}  {fds:>6}  {:>9}  {:>8}  {:>8}  {:>7}  {:>8}",
        counts.events.load(Ordering::Relaxed),
        counts.pushes.load(Ordering::Relaxed),
        mails.0.load(Ordering::Relaxed),
        counts.streams_opened.load(Ordering::Relaxed),
        counts.frames.load(Ordering::Relaxed),
    );
}

async fn start_apns_mock(counts: Arc<Counts>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let router = Router::new().route(
        "/3/device/{token}",
        post(move |_body: axum::body::Bytes| {
            counts.pushes.fetch_add(1, Ordering::Relaxed);
            async { StatusCode::OK }
        }),
    );
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let service = TowerToHyperService::new(router.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(url)
}

fn start_smtp_sink(mails: Mails) -> anyhow::Result<String> {
    let smtp = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("smtp://{}", smtp.local_addr()?);
    let mut server = Server::new(mails);
    server
        .with_name("sink.example.test")
        .with_num_threads(4)
        .with_tcp_listener(smtp);
    std::thread::spawn(move || {
        let _ = server.serve();
    });
    Ok(url)
}

fn start_mailpush(
    dir: &Path,
    socket: &Path,
    apns_url: &str,
    smtp_url: &str,
    key_file: &Path,
) -> anyhow::Result<Child> {
    let apns = |key: &str| format!("MAILPUSH_PUSH__APNS__MAIL__{key}");
    common::serve(dir, "warn,mailpush::app=info")?
        .env("MAILPUSH_HTTP__MAX_CONNECTIONS_PER_USER", "100")
        .env("MAILPUSH_INGEST__CYRUS_SOCKET", socket)
        .env("MAILPUSH_AUTH__SECRET", AUTH_SECRET)
        .env("MAILPUSH_NOTIFY__SMTP__URL", smtp_url)
        .env(apns("BASE_URL"), apns_url)
        .env(apns("SANDBOX_BASE_URL"), apns_url)
        .env(apns("KEY_FILE"), key_file)
        .env(apns("KEY_ID"), "KEYID12345")
        .env(apns("TEAM_ID"), "TEAMID6789")
        .env(apns("TOPIC"), TOPIC)
        .spawn()
        .context("cannot start mailpush")
}

async fn register_devices(http: std::net::SocketAddr, tokens: &[String]) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for (n, token) in tokens.iter().enumerate() {
        let body = serde_json::json!({
            "platform": "apns",
            "token": format!("{n:064x}"),
            "app": TOPIC,
            "environment": "production",
        });
        let response = client
            .post(format!("http://{http}/devices"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "register: {}",
            response.status()
        );
    }
    Ok(())
}

/// Sends events at `rate` a second until the deadline: INBOX deliveries to every user in
/// turn, and every fortieth a Sieve `mailto` notification.
fn send_events(socket: &Path, rate: u64, counts: &Counts, deadline: Instant) -> anyhow::Result<()> {
    let sender = std::os::unix::net::UnixDatagram::unbound()?;
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let started = Instant::now();
    let mut n: u64 = 0;
    while Instant::now() < deadline {
        let user = n as usize % USERS;
        let modseq = n + 1;
        let packet = if n % 40 == 39 {
            format!(
                "mailto\0SIEVE\0normal\0user{user}\0\x001\0r{n}@example.test\0Mail number {n}\0/var/spool/cyrus/stage./{n}\0"
            )
        } else {
            let json = format!(
                r#"{{"event":"MessageNew","uri":"imap://h/user/user{user};UIDVALIDITY=1/;UID={modseq}","modseq":{modseq},"vnd.cmu.mbtype":"e","vnd.cmu.unseenMessages":{}}}"#,
                modseq % 100
            );
            format!("mailpush\0EVENT\0\0\0\x000\0{json}\0")
        };
        sender.send_to(packet.as_bytes(), socket)?;
        counts.events.fetch_add(1, Ordering::Relaxed);
        n += 1;
        let next = started + period.mul_f64(n as f64);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    Ok(())
}

/// Keeps about [`STREAMS`] streams open, replacing [`CHURN_PER_SEC`] of them every second.
async fn churn_streams(
    http: std::net::SocketAddr,
    tokens: Arc<Vec<String>>,
    counts: Arc<Counts>,
    deadline: Instant,
) {
    let mut open: Vec<tokio::task::JoinHandle<()>> = Vec::with_capacity(STREAMS);
    let mut next_user = 0usize;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while Instant::now() < deadline {
        tick.tick().await;
        let replace = if open.len() < STREAMS {
            STREAMS - open.len()
        } else {
            CHURN_PER_SEC
        };
        for _ in 0..replace.min(open.len()).min(CHURN_PER_SEC) {
            let index = next_user % open.len();
            open.swap_remove(index).abort();
        }
        for _ in 0..replace {
            let token = tokens[next_user % tokens.len()].clone();
            next_user += 1;
            counts.streams_opened.fetch_add(1, Ordering::Relaxed);
            open.push(tokio::spawn(stream(http, token, counts.clone())));
        }
    }
    for task in open {
        task.abort();
    }
}

/// One EventSource stream, read until it ends or the task is aborted; counts frames.
async fn stream(http: std::net::SocketAddr, token: String, counts: Arc<Counts>) {
    let Ok(mut socket) = TcpStream::connect(http).await else {
        return;
    };
    let request =
        format!("GET /events HTTP/1.1\r\nHost: soak\r\nAuthorization: Bearer {token}\r\n\r\n");
    if socket.write_all(request.as_bytes()).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = socket.read(&mut buf).await {
        if n == 0 {
            return;
        }
        let frames = buf[..n].windows(6).filter(|w| w == b"event:").count();
        counts.frames.fetch_add(frames as u64, Ordering::Relaxed);
    }
}
