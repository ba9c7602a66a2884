//! Pushes per second from mailpush's APNs or FCM client to a local HTTP/2 mock that answers at
//! once, and the client's CPU per push: the cost of building, signing (cached JWT or access
//! token) and sending a push over one shared connection.
//!
//! ```sh
//! cargo build --release --example push_bench
//! taskset -c 0 target/release/examples/push_bench apns 200000 256
//! taskset -c 0 target/release/examples/push_bench fcm 200000 256
//! taskset -c 0 target/release/examples/push_bench apns-queue 200000 256
//! ```
//!
//! `apns` and `fcm` drive the client alone; `apns-queue` and `fcm-queue` go the whole way a
//! push goes in the server: `PushHandle::enqueue` for 1,000 users with one device each, the
//! coalescer, the per-minute caps (raised: throughput is measured here, not the caps), the
//! bounded queue, the sender with its breaker, retries and metrics.
//!
//! The mock runs as a child process of its own (this binary with `mock`), on CPU 1 when
//! `taskset` is there, so the client's CPU is measured alone (from `/proc/self/stat`). It speaks
//! h2c (HTTP/2 without TLS) on 127.0.0.1, so the figure is client and HTTP/2 framing cost, not
//! TLS.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use mailpush::config::{ApnsConfig, FcmConfig};
use mailpush::metrics::Metrics;
use mailpush::push::apns::ApnsClient;
use mailpush::push::fcm::FcmClient;
use mailpush::push::provider::Client;
use mailpush::push::{DeviceCache, Providers, PushHandle, PushJob};
use mailpush::route::{PushKind, PushRequest};
use mailpush::store::{Device, Environment, Platform, Store};
use mailpush::stream::UserState;
use tokio::sync::Semaphore;

/// The allocator the binary runs with (src/main.rs), so the figure is the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let provider = args.next().unwrap_or_else(|| "apns".into());
    if provider == "mock" {
        return mock().await;
    }
    let pushes: usize = args.next().map_or(Ok(200_000), |n| n.parse())?;
    let concurrency: usize = args.next().map_or(Ok(256), |n| n.parse())?;

    let (mut child, url) = start_mock()?;
    let dir = tempfile::tempdir()?;
    let (cpu_before, mock_before, started);
    let (sent, first_error) = if let Some(platform) = provider.strip_suffix("-queue") {
        let handle = server_path(platform, &url, dir.path(), concurrency).await?;
        cpu_before = cpu_ticks("self")?;
        mock_before = cpu_ticks(&child.id().to_string())?;
        started = Instant::now();
        (tokio::spawn(enqueue(handle, pushes)).await??, None)
    } else {
        let (client, platform): (Arc<dyn Client>, Platform) = match provider.as_str() {
            "apns" => (Arc::new(apns_client(&url, dir.path())?), Platform::Apns),
            "fcm" => (Arc::new(fcm_client(&url, dir.path())?), Platform::Fcm),
            other => anyhow::bail!("apns, fcm, apns-queue, fcm-queue or mock, not {other}"),
        };
        let job = job(platform);
        // Warm up: the connection and the provider token.
        client
            .send(&job)
            .await
            .map_err(|err| anyhow::anyhow!("{err:?}"))?;
        cpu_before = cpu_ticks("self")?;
        mock_before = cpu_ticks(&child.id().to_string())?;
        started = Instant::now();
        // Driven from a task, as the sender is, not from the main thread (which would contend
        // with the one worker for the client's core).
        tokio::spawn(drive(client, job, pushes, concurrency)).await??
    };
    let elapsed = started.elapsed();
    let cpu = ticks_to_secs(cpu_ticks("self")? - cpu_before);
    let mock_cpu = ticks_to_secs(cpu_ticks(&child.id().to_string())? - mock_before);
    let _ = child.kill();
    let _ = child.wait();
    if let Some(err) = first_error {
        println!("first failure: {err:?}");
    }
    let per_push_us = |cpu: f64| cpu * 1e6 / sent.max(1) as f64;
    println!(
        "{provider}: {sent}/{pushes} pushes in {:.2} s: {:.0} pushes/s ({concurrency} in flight, one HTTP/2 connection); client CPU {:.2} s = {:.1} µs a push; mock CPU {:.1} µs a push",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64(),
        cpu,
        per_push_us(cpu),
        per_push_us(mock_cpu),
    );
    Ok(())
}

/// Sends `pushes` copies of `job`, `concurrency` at a time, each as its own task (as the
/// sender runs deliveries); returns how many were sent and the first failure.
async fn drive(
    client: Arc<dyn Client>,
    job: PushJob,
    pushes: usize,
    concurrency: usize,
) -> anyhow::Result<(usize, Option<mailpush::push::SendError>)> {
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(pushes);
    for _ in 0..pushes {
        let permit = permits.clone().acquire_owned().await?;
        let (client, job) = (client.clone(), job.clone());
        tasks.push(tokio::spawn(async move {
            let result = client.send(&job).await;
            drop(permit);
            result
        }));
    }
    let mut sent = 0;
    let mut first_error = None;
    for task in tasks {
        match task.await? {
            Ok(()) => sent += 1,
            Err(err) => {
                first_error.get_or_insert(err);
            }
        }
    }
    Ok((sent, first_error))
}

/// The push path of the server, with one device for each of 1,000 users, warmed up.
async fn server_path(
    platform: &str,
    url: &str,
    dir: &std::path::Path,
    concurrency: usize,
) -> anyhow::Result<(PushHandle, Arc<Metrics>)> {
    let mut config = mailpush::config::Config::default();
    config.push.max_in_flight = concurrency;
    config.push.max_per_device_per_minute = u32::MAX;
    config.push.max_per_user_per_minute = u32::MAX;
    let device_platform = match platform {
        "apns" => {
            config
                .push
                .apns
                .insert("bench".into(), apns_config(url, dir)?);
            Platform::Apns
        }
        "fcm" => {
            config
                .push
                .fcm
                .insert("bench".into(), fcm_config(url, dir)?);
            Platform::Fcm
        }
        other => anyhow::bail!("apns-queue or fcm-queue, not {other}-queue"),
    };
    let providers = Providers::from_config(&config, None)?;
    let devices: Vec<Device> = (0..USERS)
        .map(|n| Device {
            id: n as i64 + 1,
            user_id: format!("user{n}"),
            ..job(device_platform).device
        })
        .collect();
    let store = Store::connect(None, &dir.join("bench.db")).await?;
    let metrics = Arc::new(Metrics::new());
    let tracker = tokio_util::task::TaskTracker::new();
    let handle = mailpush::push::spawn(
        &config.push,
        providers,
        store,
        Arc::new(DeviceCache::new(devices)),
        metrics.clone(),
        &tracker,
        tokio_util::sync::CancellationToken::new(),
    );
    // Warm up: the connection and the provider token.
    handle.enqueue(request(0), |_| UserState::default());
    wait_sent(&metrics, 1).await;
    Ok((handle, metrics))
}

/// Users (with one device each) the queue mode pushes to, in turn.
const USERS: usize = 1_000;

fn request(n: usize) -> PushRequest {
    PushRequest {
        user: format!("user{}", n % USERS),
        kind: job(Platform::Apns).kind,
    }
}

/// Enqueues `pushes` alerts as ingest would, keeping the queue under half full (a full queue
/// drops, which is not what is measured), and waits until all are sent.
async fn enqueue(
    (handle, metrics): (PushHandle, Arc<Metrics>),
    pushes: usize,
) -> anyhow::Result<usize> {
    for n in 0..pushes {
        while handle.queue_len() > 4_000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        handle.enqueue(request(n), |_| UserState::default());
    }
    wait_sent(&metrics, pushes as u64 + 1).await;
    Ok(pushes)
}

async fn wait_sent(metrics: &Metrics, count: u64) {
    loop {
        let snapshot = metrics.snapshot(mailpush::metrics::Levels::default());
        let done: u64 = ["sent", "failed"]
            .iter()
            .filter_map(|outcome| snapshot.pushes.get(outcome))
            .sum();
        if done >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn apns_client(url: &str, dir: &std::path::Path) -> anyhow::Result<ApnsClient> {
    ApnsClient::new(&apns_config(url, dir)?, Duration::from_secs(10))
}

fn apns_config(url: &str, dir: &std::path::Path) -> anyhow::Result<ApnsConfig> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let key_file = dir.join("bench.p8");
    std::fs::write(&key_file, key.serialize_pem())?;
    Ok(ApnsConfig {
        base_url: url.into(),
        sandbox_base_url: url.into(),
        key_file,
        key_id: "KEYID12345".into(),
        team_id: "TEAMID6789".into(),
        topic: "com.example.mail".into(),
        ca_file: None,
    })
}

fn fcm_client(url: &str, dir: &std::path::Path) -> anyhow::Result<FcmClient> {
    FcmClient::new("android", &fcm_config(url, dir)?, Duration::from_secs(10))
}

fn fcm_config(url: &str, dir: &std::path::Path) -> anyhow::Result<FcmConfig> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)?;
    let account = serde_json::json!({
        "type": "service_account",
        "project_id": "bench",
        "private_key_id": "key-id-1",
        "private_key": key.serialize_pem(),
        "client_email": "pusher@bench.iam.gserviceaccount.com",
        "token_uri": format!("{url}/token"),
    });
    let service_account_file = dir.join("service-account.json");
    std::fs::write(&service_account_file, account.to_string())?;
    Ok(FcmConfig {
        base_url: url.into(),
        service_account_file,
        app: Some("com.example.mail".into()),
        ca_file: None,
    })
}

fn job(platform: Platform) -> PushJob {
    PushJob {
        id: "00000000-0000-4000-8000-000000000000".into(),
        user: "alice".into(),
        device: Device {
            id: 1,
            user_id: "alice".into(),
            platform,
            token: "ab".repeat(32),
            app: "com.example.mail".into(),
            environment: Environment::Production,
            created_at: 0,
            registered_at: 0,
            webpush: None,
        },
        state: Default::default(),
        received_at: Instant::now(),
        kind: PushKind::NewMail {
            from: "Robert Norris".into(),
            subject: "Holiday pics".into(),
            unseen: Some(3),
            thread_id: "alice/INBOX".into(),
            url: "imap://h/user/alice;UIDVALIDITY=1/;UID=5".into(),
        },
    }
}

/// Starts this binary as the mock, on CPU 1 when `taskset` is there; returns it and its URL.
fn start_mock() -> anyhow::Result<(std::process::Child, String)> {
    let exe = std::env::current_exe()?;
    let second_cpu = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .is_ok_and(|online| online.trim() != "0");
    let pinned = second_cpu && Command::new("taskset").arg("-V").output().is_ok();
    let mut command = if pinned {
        let mut command = Command::new("taskset");
        command.args(["-c", "1"]).arg(&exe);
        command
    } else {
        Command::new(&exe)
    };
    let mut child = command.arg("mock").stdout(Stdio::piped()).spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let url = line
        .trim()
        .strip_prefix("listening ")
        .ok_or_else(|| anyhow::anyhow!("the mock said {line:?}"))?
        .to_owned();
    Ok((child, url))
}

/// The mock: APNs and FCM (with its OAuth token endpoint) over h2c, answering at once after
/// reading the body, as the services do.
async fn mock() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening http://{}", listener.local_addr()?);
    let token = serde_json::json!({"access_token": "bench-token", "expires_in": 3600, "token_type": "Bearer"});
    let router = Router::new()
        .route(
            "/3/device/{token}",
            post(|_body: axum::body::Bytes| async { StatusCode::OK }),
        )
        .route(
            "/token",
            post(move || {
                let token = token.clone();
                async move { axum::Json(token) }
            }),
        )
        .route(
            "/v1/projects/{project}/messages:send",
            post(|_body: axum::body::Bytes| async {
                axum::Json(serde_json::json!({"name": "projects/bench/messages/1"}))
            }),
        );
    while let Ok((tcp, _)) = listener.accept().await {
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
    Ok(())
}

/// User plus system CPU of a process, in clock ticks (`/proc/<pid>/stat` fields 14 and 15).
fn cpu_ticks(pid: &str) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let after = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11).map_or(Ok(0), |f| f.parse())?;
    let stime: u64 = fields.get(12).map_or(Ok(0), |f| f.parse())?;
    Ok(utime + stime)
}

fn ticks_to_secs(ticks: u64) -> f64 {
    // USER_HZ is 100 on every Linux this runs on.
    ticks as f64 / 100.0
}
