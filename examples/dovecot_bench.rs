//! How long Dovecot waits for mailpush: requests shaped as Dovecot 2.3.19 sends them (the Lua
//! script's POST with `Expect: 100-continue`, and the OX driver's PUT), paced over keep-alive
//! connections, and the time from the first byte of each request to the last byte of its
//! answer (p50, p90, p99, max). The Lua client waits for `100 Continue` before it sends the
//! body, as Dovecot's does.
//!
//! ```sh
//! cargo build --release && cargo run --release --example dovecot_bench -- [RATE] [SECS] [CONNECTIONS]
//! ```
//!
//! Defaults: 1,000 requests/s for 10 s over 8 connections, half Lua, half OX, to 1,000 users
//! with an iPhone each (pushes go to a port where nothing listens, so every push fails fast and
//! is counted: the path is the full one). `MAILPUSH_BIN` names the binary (default
//! `target/release/mailpush`). Everything runs on 127.0.0.1, and every loop stops at its
//! deadline.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

mod common;

use anyhow::Context;
use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const INGEST_SECRET: &str = "bench-ingest-secret-0123456789";
const USERS: usize = 1_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rate: u64 = args.next().map_or(Ok(1_000), |n| n.parse())?;
    let secs: u64 = args.next().map_or(Ok(10), |n| n.parse())?;
    let connections: u64 = args.next().map_or(Ok(8), |n| n.parse())?;
    let dir = tempfile::tempdir()?;
    let (mut child, http) = start_mailpush(dir.path())?;
    register_devices(dir.path(), http).await?;
    println!("mailpush on {http}: {rate} requests/s for {secs} s over {connections} connections");

    let start = Instant::now() + Duration::from_millis(100);
    let per_connection = rate as f64 / connections as f64;
    let mut tasks = Vec::new();
    for connection in 0..connections {
        tasks.push(tokio::spawn(run_connection(
            http,
            connection,
            per_connection,
            start,
            Duration::from_secs(secs),
        )));
    }
    let (mut lua, mut ox) = (Vec::new(), Vec::new());
    for task in tasks {
        for (is_lua, latency) in task.await?? {
            if is_lua {
                lua.push(latency)
            } else {
                ox.push(latency)
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut all: Vec<Duration> = lua.iter().chain(&ox).copied().collect();
    report("all", &mut all)?;
    report("Lua (100 Continue, then the body)", &mut lua)?;
    report("OX", &mut ox)?;
    Ok(())
}

/// Prints the percentiles of one set of latencies.
fn report(name: &str, latencies: &mut [Duration]) -> anyhow::Result<()> {
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name}: {} requests, p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        latencies.len(),
        ms(at(0.5)),
        ms(at(0.9)),
        ms(at(0.99)),
        ms(*latencies.last().context("no request")?)
    );
    Ok(())
}

/// Sends requests on one keep-alive connection at `rate` a second until `length` has passed;
/// returns each one's driver (Lua or not) and time to its answer.
async fn run_connection(
    http: std::net::SocketAddr,
    connection: u64,
    rate: f64,
    start: Instant,
    length: Duration,
) -> anyhow::Result<Vec<(bool, Duration)>> {
    let stream = TcpStream::connect(http).await?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut latencies = Vec::new();
    let mut n = 0u64;
    loop {
        let due = start + Duration::from_secs_f64(n as f64 / rate);
        if due > start + length {
            return Ok(latencies);
        }
        tokio::time::sleep_until(due.into()).await;
        let user = (connection * 7919 + n) as usize % USERS;
        let lua = n.is_multiple_of(2);
        let sent = Instant::now();
        if lua {
            let body = format!(
                r#"{{"events":[{{"flags":[],"from_address":"sender@example.org","from_display_name":"Jürgen Sender","keywords":[],"mailbox":"INBOX","name":"MessageNew","subject":"Grüße","uid":{n},"uid_validity":1795879878}}],"inbox_unseen":1,"service":"lmtp","session":"bench","source":"dovecot-lua","ts":1795879879,"user":"user{user}","v":1}}"#
            );
            let head = format!(
                "POST /ingest/dovecot/lua HTTP/1.1\r\nHost: {http}\r\nUser-Agent: mailpush.lua/1\r\nExpect: 100-continue\r\nContent-Length: {}\r\nConnection: Keep-Alive\r\nContent-Type: application/json\r\nAuthorization: Bearer {INGEST_SECRET}\r\n\r\n",
                body.len()
            );
            write.write_all(head.as_bytes()).await?;
            let (status, _) = read_head(&mut read).await?;
            anyhow::ensure!(status == 100, "expected 100 Continue, got {status}");
            write.write_all(body.as_bytes()).await?;
        } else {
            let body = format!(
                r#"{{"user":"user{user}","event":"messageNew","folder":"INBOX","imap-uidvalidity":1795879878,"imap-uid":{n},"from":"=?UTF-8?Q?J=C3=BCrgen_Sender?= <sender@example.org>","subject":"=?UTF-8?Q?Gr=C3=BC=C3=9Fe?=","snippet":"Hello","unseen":1}}"#
            );
            let credentials = base64::engine::general_purpose::STANDARD
                .encode(format!("dovecot:{INGEST_SECRET}"));
            let request = format!(
                "PUT /ingest/dovecot/ox HTTP/1.1\r\nHost: {http}\r\nContent-Length: {}\r\nConnection: Keep-Alive\r\nContent-Type: application/json; charset=utf-8\r\nAuthorization: Basic {credentials}\r\n\r\n{body}",
                body.len()
            );
            write.write_all(request.as_bytes()).await?;
        }
        let (status, length) = read_head(&mut read).await?;
        let mut answer = vec![0; length];
        read.read_exact(&mut answer).await?;
        anyhow::ensure!(
            status == 200,
            "answer {status}: {}",
            String::from_utf8_lossy(&answer)
        );
        latencies.push((lua, sent.elapsed()));
        n += 1;
    }
}

/// Reads a response head: its status and Content-Length.
async fn read_head(
    read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> anyhow::Result<(u16, usize)> {
    let (mut status, mut length) = (0, 0);
    loop {
        let mut line = String::new();
        anyhow::ensure!(read.read_line(&mut line).await? > 0, "connection closed");
        let line = line.trim_end();
        if line.is_empty() {
            return Ok((status, length));
        }
        if let Some(rest) = line.strip_prefix("HTTP/1.1 ") {
            status = rest.get(..3).context("status")?.parse()?;
        } else if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse()?;
        }
    }
}

fn start_mailpush(dir: &Path) -> anyhow::Result<(Child, std::net::SocketAddr)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let key_file = dir.join("apns.p8");
    std::fs::write(&key_file, key.serialize_pem())?;
    // A closed port: every push fails fast and is counted, so the whole path runs.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let apns = |key: &str| format!("MAILPUSH_PUSH__APNS__MAIL__{key}");
    let mut child = common::serve(dir, "error,mailpush::app=info")?
        .env("MAILPUSH_INGEST__SECRET", INGEST_SECRET)
        .env("MAILPUSH_PUSH__MAX_ATTEMPTS", "1")
        .env(apns("BASE_URL"), format!("https://{nowhere}"))
        .env(apns("SANDBOX_BASE_URL"), format!("https://{nowhere}"))
        .env(apns("KEY_FILE"), &key_file)
        .env(apns("KEY_ID"), "KEYID12345")
        .env(apns("TEAM_ID"), "TEAMID6789")
        .env(apns("TOPIC"), "com.example.mail")
        .spawn()
        .context("cannot start mailpush")?;
    let http = common::wait_for_listening(&mut child, true)?.http;
    Ok((child, http))
}

/// One iPhone per user, registered before the run (tokens minted with the secret mailpush
/// generated in its data dir).
async fn register_devices(dir: &Path, http: std::net::SocketAddr) -> anyhow::Result<()> {
    let keys = mailpush::auth::TokenKeys::load(
        &mailpush::config::AuthConfig::default(),
        &dir.join("data"),
    )?;
    let client = reqwest::Client::new();
    for user in 0..USERS {
        let status = client
            .post(format!("http://{http}/devices"))
            .bearer_auth(keys.mint(&format!("user{user}"), 3600, false)?)
            .json(&serde_json::json!({"platform": "apns", "token": format!("{user:064x}"), "app": "com.example.mail"}))
            .send()
            .await?
            .status();
        anyhow::ensure!(status.is_success(), "register: {status}");
    }
    Ok(())
}
