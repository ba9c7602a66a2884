//! Fan-out through NATS against one node, in one run: events go to node A's NDJSON listener,
//! and EventSource streams read them on A itself (one node, no NATS), or on node B of a
//! two-node cluster (A ingests, B serves: every state crosses JetStream). For each setup:
//! latency from the event's write to its frame at the client (p50, p90, p99) at a paced rate,
//! then the most events a second that reach every stream.
//!
//! ```sh
//! cargo build --release && cargo run --release --example cluster_bench -- [USERS] [RATE] [SECS] [EVENTS]
//! ```
//!
//! Defaults: 100 users with one stream each, 1,000 events/s for 10 s, then 500,000 events as fast
//! as the generator writes them. NATS (`MAILPUSH_BENCH_NATS_URL`, default
//! `nats://127.0.0.1:4222`, JetStream on) and PostgreSQL (`MAILPUSH_BENCH_PG_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`; the bench makes a schema of its own and drops it)
//! serve the cluster; the lone node runs on SQLite, as one node does by default.
//! `MAILPUSH_BIN` names the binary (default `target/release/mailpush`). Everything runs on
//! 127.0.0.1, and every loop is bounded by its event count or its deadline.

use std::collections::HashMap;
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use anyhow::Context;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use mailpush::auth::TokenKeys;
use mailpush::config::{AuthConfig, Secret};
use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const AUTH_SECRET: &str = "bench-auth-secret-0123456789";
const INGEST_SECRET: &str = "bench-ingest-secret-0123456789";
/// How long a run may wait for its last states before it gives up.
const DRAIN: Duration = Duration::from_secs(60);

/// When each (user, modseq) was written, and when each stream last moved.
#[derive(Default)]
struct Clock {
    sent: Mutex<HashMap<(usize, u64), Instant>>,
    latencies: Mutex<Vec<Duration>>,
    /// The highest modseq each user's stream has shown.
    seen: Mutex<Vec<u64>>,
}

/// One mailpush process with its addresses.
struct Node {
    child: Child,
    http: std::net::SocketAddr,
    ndjson: std::net::SocketAddr,
}

/// The figures of one setup.
struct Figures {
    p50: Duration,
    p90: Duration,
    p99: Duration,
    samples: usize,
    max_rate: f64,
    /// States the ingesting node wrote to the bucket a second in the full-speed phase (each
    /// write carries every change to one user since that user's last write).
    writes_per_sec: f64,
    /// The serving node's resident memory with every stream open, after the paced phase.
    serve_rss_kb: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let users: usize = args.next().map_or(Ok(100), |n| n.parse())?;
    let rate: u64 = args.next().map_or(Ok(1_000), |n| n.parse())?;
    let secs: u64 = args.next().map_or(Ok(10), |n| n.parse())?;
    let events: u64 = args.next().map_or(Ok(500_000), |n| n.parse())?;
    let nats =
        std::env::var("MAILPUSH_BENCH_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let pg = std::env::var("MAILPUSH_BENCH_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    println!("{users} users, {rate} events/s for {secs} s, then {events} events at full speed");

    let dir = tempfile::tempdir()?;
    let alone = start_node(&dir.path().join("alone"), &[])?;
    let single = run(&alone, &alone, users, rate, secs, events).await?;
    drop(alone);

    let schema = format!("mailpush_bench_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&pg).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut admin)
        .await?;
    let separator = if pg.contains('?') { '&' } else { '?' };
    let database = format!("{pg}{separator}options[search_path]={schema}");
    let prefix = format!("mpbench{}", std::process::id());
    let cluster = |node: &str| {
        vec![
            ("MAILPUSH_DATABASE__URL".to_owned(), database.clone()),
            ("MAILPUSH_CLUSTER__NATS_URL".to_owned(), nats.clone()),
            ("MAILPUSH_CLUSTER__NODE_ID".to_owned(), node.to_owned()),
            ("MAILPUSH_CLUSTER__PREFIX".to_owned(), prefix.clone()),
        ]
    };
    let a = start_node(&dir.path().join("a"), &cluster("a"))?;
    let b = start_node(&dir.path().join("b"), &cluster("b"))?;
    let crossed = run(&a, &b, users, rate, secs, events).await;
    drop((a, b));
    let client = async_nats::connect(&nats).await?;
    let _ = async_nats::jetstream::new(client)
        .delete_stream(format!("KV_{prefix}_states"))
        .await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut admin)
        .await?;
    let crossed = crossed?;

    println!();
    println!(
        "| setup | p50 | p90 | p99 | samples | max events/s reaching every stream | bucket writes/s | serving node RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, figures) in [
        ("one node (events and streams on A)", &single),
        ("cluster (events at A, streams on B)", &crossed),
    ] {
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {:.2} ms | {} | {:.0} | {:.0} | {} kB |",
            ms(figures.p50),
            ms(figures.p90),
            ms(figures.p99),
            figures.samples,
            figures.max_rate,
            figures.writes_per_sec,
            figures.serve_rss_kb
        );
    }
    println!(
        "cluster ÷ one node: p50 {:.2}×, p99 {:.2}×, max rate {:.2}×; memory per user listened for: {:.0} B",
        ms(crossed.p50) / ms(single.p50),
        ms(crossed.p99) / ms(single.p99),
        crossed.max_rate / single.max_rate,
        (crossed.serve_rss_kb as f64 - single.serve_rss_kb as f64) * 1024.0 / users as f64
    );
    Ok(())
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Events into `ingest`, streams on `serve`: the paced latency run, then the full-speed one.
async fn run(
    ingest: &Node,
    serve: &Node,
    users: usize,
    rate: u64,
    secs: u64,
    events: u64,
) -> anyhow::Result<Figures> {
    let clock = Arc::new(Clock {
        seen: Mutex::new(vec![0; users]),
        ..Clock::default()
    });
    let keys = TokenKeys::load(
        &AuthConfig {
            secret: Some(Secret::new(AUTH_SECRET)),
            ..AuthConfig::default()
        },
        Path::new("."),
    )?;
    let mut readers = Vec::new();
    for user in 0..users {
        let token = keys.mint(&format!("bench{user}"), 3600, false)?;
        let response = reqwest::Client::new()
            .get(format!("http://{}/events", serve.http))
            .bearer_auth(token)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "stream: {}",
            response.status()
        );
        readers.push(tokio::spawn(read_stream(response, user, clock.clone())));
    }
    let mut ndjson = ndjson(ingest.ndjson).await?;
    // Paced: one event every 1/rate s, round robin over the users (each round raises every
    // user's modseq by one).
    let rounds = (rate * secs).div_ceil(users as u64);
    let start = Instant::now();
    let mut n = 0u64;
    for modseq in 1..=rounds {
        for user in 0..users {
            let due = start + Duration::from_secs_f64(n as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
            send(&mut ndjson, &clock, user, modseq).await?;
            n += 1;
        }
    }
    let modseq = rounds;
    wait_all_seen(&clock, modseq).await?;
    let serve_rss_kb = rss_kb(serve.child.id())?;
    let mut latencies = std::mem::take(&mut *clock.latencies.lock().unwrap());
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    let (p50, p90, p99, samples) = (at(0.5), at(0.9), at(0.99), latencies.len());

    // Full speed: the time from the first write until every stream shows its last event.
    clock.sent.lock().unwrap().clear();
    let writes_before = bucket_writes(ingest).await?;
    let first = Instant::now();
    let rounds = events.div_ceil(users as u64);
    for round in 1..=rounds {
        for user in 0..users {
            write_event(&mut ndjson, user, modseq + round).await?;
        }
    }
    ndjson.flush().await?;
    wait_all_seen(&clock, modseq + rounds).await?;
    let elapsed = first.elapsed().as_secs_f64();
    let max_rate = (rounds * users as u64) as f64 / elapsed;
    let writes_per_sec = (bucket_writes(ingest).await? - writes_before) / elapsed;
    for reader in readers {
        reader.abort();
    }
    Ok(Figures {
        p50,
        p90,
        p99,
        samples,
        max_rate,
        writes_per_sec,
        serve_rss_kb,
    })
}

/// A process's resident memory, from /proc.
fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// The states `node` has written to the bucket so far.
async fn bucket_writes(node: &Node) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("http://{}/metrics", node.http))
        .await?
        .text()
        .await?;
    let series = "mailpush_cluster_state_writes_total{outcome=\"written\"} ";
    Ok(text
        .lines()
        .find_map(|line| line.strip_prefix(series)?.parse().ok())
        .unwrap_or(0.0))
}

/// Waits until every stream has shown `modseq`.
async fn wait_all_seen(clock: &Clock, modseq: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + DRAIN;
    while clock.seen.lock().unwrap().iter().any(|seen| *seen < modseq) {
        anyhow::ensure!(Instant::now() < deadline, "streams did not reach {modseq}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

async fn send(
    ndjson: &mut TcpStream,
    clock: &Clock,
    user: usize,
    modseq: u64,
) -> anyhow::Result<()> {
    clock
        .sent
        .lock()
        .unwrap()
        .insert((user, modseq), Instant::now());
    write_event(ndjson, user, modseq).await?;
    ndjson.flush().await?;
    Ok(())
}

async fn write_event(ndjson: &mut TcpStream, user: usize, modseq: u64) -> anyhow::Result<()> {
    let line = format!(
        "{{\"event\":\"vnd.cmu.MailboxModseq\",\"uri\":\"imap://h/user/bench{user};UIDVALIDITY=1\",\"modseq\":{modseq},\"vnd.cmu.mbtype\":\"e\"}}\n"
    );
    ndjson.write_all(line.as_bytes()).await?;
    Ok(())
}

/// Reads one stream until aborted, timing each state it shows against its event's write.
async fn read_stream(response: reqwest::Response, user: usize, clock: Arc<Clock>) {
    let mut events = response.bytes_stream().eventsource();
    while let Some(Ok(event)) = events.next().await {
        let Some(modseq) = mail_modseq(&event.data) else {
            continue;
        };
        let now = Instant::now();
        if let Some(sent) = clock.sent.lock().unwrap().remove(&(user, modseq)) {
            clock.latencies.lock().unwrap().push(now - sent);
        }
        let mut seen = clock.seen.lock().unwrap();
        seen[user] = seen[user].max(modseq);
    }
}

fn mail_modseq(data: &str) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_str(data).ok()?;
    value["mailModSeq"].as_u64()
}

/// An authenticated NDJSON connection.
async fn ndjson(addr: std::net::SocketAddr) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream
        .write_all(format!("AUTH {INGEST_SECRET}\n").as_bytes())
        .await?;
    let mut reply = String::new();
    BufReader::new(&mut stream).read_line(&mut reply).await?;
    anyhow::ensure!(reply == "OK\n", "NDJSON AUTH: {reply:?}");
    Ok(stream)
}

fn start_node(dir: &Path, extra: &[(String, String)]) -> anyhow::Result<Node> {
    std::fs::create_dir_all(dir)?;
    let mut child = common::serve(dir, "warn,mailpush::app=info")?
        .env("MAILPUSH_INGEST__NDJSON_LISTEN", "127.0.0.1:0")
        .env("MAILPUSH_INGEST__NDJSON_MAX_EVENTS_PER_SEC", "10000000")
        .env("MAILPUSH_INGEST__SECRET", INGEST_SECRET)
        .env("MAILPUSH_AUTH__SECRET", AUTH_SECRET)
        .envs(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .spawn()
        .context("cannot start mailpush")?;
    let listening = common::wait_for_listening(&mut child, true)?;
    Ok(Node {
        child,
        http: listening.http,
        ndjson: listening.ndjson.context("no NDJSON listener")?,
    })
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
