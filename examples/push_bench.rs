//! Pushes per second from mailpush's APNs client to a local HTTP/2 mock that answers 200 at
//! once: the cost of building, signing (cached JWT) and sending a push over one shared
//! connection, measured on this machine.
//!
//! ```sh
//! cargo run --release --example push_bench -- [PUSHES] [CONCURRENCY]
//! ```
//!
//! The mock speaks h2c (HTTP/2 without TLS) on 127.0.0.1, so the figure is client and HTTP/2
//! framing cost, not TLS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use mailpush::config::ApnsConfig;
use mailpush::push::PushJob;
use mailpush::push::apns::ApnsClient;
use mailpush::push::provider::Client;
use mailpush::route::PushKind;
use mailpush::store::{Device, Environment, Platform};
use tokio::sync::Semaphore;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let pushes: usize = args.next().map_or(Ok(20_000), |n| n.parse())?;
    let concurrency: usize = args.next().map_or(Ok(100), |n| n.parse())?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    // The handler reads the body before answering, as APNs does.
    let router = Router::new().route(
        "/3/device/{token}",
        post(|_body: axum::body::Bytes| async { StatusCode::OK }),
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

    let dir = tempfile::tempdir()?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let key_file = dir.path().join("bench.p8");
    std::fs::write(&key_file, key.serialize_pem())?;
    let config = ApnsConfig {
        base_url: url.clone(),
        sandbox_base_url: url,
        key_file,
        key_id: "KEYID12345".into(),
        team_id: "TEAMID6789".into(),
        topic: "com.example.mail".into(),
        ca_file: None,
    };
    let client = Arc::new(ApnsClient::new(&config, Duration::from_secs(10))?);
    let job = PushJob {
        id: "00000000-0000-4000-8000-000000000000".into(),
        user: "alice".into(),
        device: Device {
            id: 1,
            user_id: "alice".into(),
            platform: Platform::Apns,
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
    };
    // Warm up: the connection and the provider token.
    client
        .send(&job)
        .await
        .map_err(|err| anyhow::anyhow!("{err:?}"))?;

    let permits = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
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
    if let Some(err) = first_error {
        println!("first failure: {err:?}");
    }
    let elapsed = started.elapsed();
    println!(
        "{sent}/{pushes} pushes in {:.2} s: {:.0} pushes/s ({concurrency} in flight, one HTTP/2 connection)",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
