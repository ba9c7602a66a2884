//! Jobs per second on the blocking path, from Cyrus packet to SMTP server: Sieve `mailto`
//! notifications sent into the real datagram socket of an in-process mailpush (SQLite in a
//! temp dir), through the job table and the workers, to a local SMTP sink.
//!
//! ```sh
//! cargo run --release --example jobs_bench -- [JOBS] [WORKERS]
//! ```
//!
//! The sink offers PIPELINING, as relays do; `JOBS_BENCH_PIPELINING=0` hides it, for the
//! figure of a transaction's commands one round trip each. `JOBS_BENCH_RELAY_DELAY_US` holds
//! each of its answers that long, as a relay a network away would.
//!
//! With `MAILPUSH_DATABASE__URL` set to a PostgreSQL database, the jobs table is there instead
//! (use a scratch database: jobs an earlier run left pending there would be sent too; each run
//! makes keys of its own, so finished runs do not matter); any other `MAILPUSH_*` setting in
//! the environment is passed on. Each
//! email has its own recipient, and the sink counts recipients it saw twice and ones it never
//! saw, so the figure says nothing was lost or sent twice.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailpush::app::{self, Listeners};
use mailpush::config::Config;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// What the sink received: each email's recipients, and how many were seen twice.
#[derive(Default)]
struct Received {
    recipients: HashSet<String>,
    twice: usize,
}

/// Starts the SMTP sink on a thread and runtime of its own, so it takes no time from
/// mailpush's workers: it offers PIPELINING unless told not to, answers a pipelined group's
/// commands with one write (RFC 2920: replies go once no more input is buffered), and records
/// each message's recipients once the message is taken.
fn start_sink(
    received: Arc<Mutex<Received>>,
    pipelining: bool,
    delay: Duration,
) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the sink's runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, received.clone(), pipelining, delay));
            }
        });
    });
    Ok(addr)
}

/// Writes the replies gathered so far, `delay` after they were due: a relay that far away.
async fn answer(
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    replies: &mut Vec<u8>,
    delay: Duration,
) -> std::io::Result<()> {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    writer.write_all(replies).await?;
    replies.clear();
    Ok(())
}

/// One SMTP session of the sink.
async fn serve(
    socket: tokio::net::TcpStream,
    received: Arc<Mutex<Received>>,
    pipelining: bool,
    delay: Duration,
) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    let (reader, mut writer) = socket.into_split();
    let mut reader = BufReader::new(reader);
    let mut replies: Vec<u8> = b"220 sink.example.test ESMTP\r\n".to_vec();
    let mut rcpts = Vec::new();
    let mut line = String::new();
    loop {
        if reader.buffer().is_empty() && !replies.is_empty() {
            answer(&mut writer, &mut replies, delay).await?;
        }
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" if pipelining => replies
                .extend_from_slice(b"250-sink.example.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"),
            "EHLO" => replies.extend_from_slice(b"250-sink.example.test\r\n250 8BITMIME\r\n"),
            "MAIL" => {
                rcpts.clear();
                replies.extend_from_slice(b"250 2.1.0 Ok\r\n");
            }
            "RCPT" => {
                let to = line.trim_end().trim_start_matches(|c| c != '<');
                rcpts.push(to.trim_matches(['<', '>']).to_owned());
                replies.extend_from_slice(b"250 2.1.5 Ok\r\n");
            }
            "DATA" => {
                replies.extend_from_slice(b"354 Go ahead\r\n");
                answer(&mut writer, &mut replies, delay).await?;
                loop {
                    line.clear();
                    if reader.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" {
                        break;
                    }
                }
                let mut received = received.lock().expect("sink");
                for rcpt in rcpts.drain(..) {
                    if !received.recipients.insert(rcpt) {
                        received.twice += 1;
                    }
                }
                replies.extend_from_slice(b"250 2.0.0 Queued\r\n");
            }
            "QUIT" => {
                replies.extend_from_slice(b"221 Bye\r\n");
                return answer(&mut writer, &mut replies, Duration::ZERO).await;
            }
            "RSET" | "NOOP" => replies.extend_from_slice(b"250 Ok\r\n"),
            _ => replies.extend_from_slice(b"500 5.5.2 What?\r\n"),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let jobs: u32 = args.next().map_or(Ok(2_000), |n| n.parse())?;
    let workers: usize = args.next().map_or(Ok(8), |n| n.parse())?;

    let pipelining = std::env::var("JOBS_BENCH_PIPELINING").map_or(true, |value| value != "0");

    let received = Arc::new(Mutex::new(Received::default()));
    let delay = Duration::from_micros(
        std::env::var("JOBS_BENCH_RELAY_DELAY_US").map_or(Ok(0), |value| value.parse())?,
    );
    let smtp_url = format!(
        "smtp://{}",
        start_sink(received.clone(), pipelining, delay)?
    );

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
    // Any other setting of the environment's (`MAILPUSH_DATABASE__MAX_CONNECTIONS` for more
    // workers on PostgreSQL, say) comes after the bench's own, and wins.
    let mut env = env;
    env.extend(std::env::vars().filter(|(key, _)| key.starts_with("MAILPUSH_")));
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

    // Each notification names the message that triggered it, as lmtpd's do, and mailpush
    // reads its header (no `Auto-Submitted`: every one is sent). The staging path is part of
    // each job's idempotency key, and the temp dir's name is new each run, so a database kept
    // from an earlier run takes these jobs as new.
    let stage = dir.path().join("stage");
    std::fs::create_dir(&stage)?;
    for n in 0..jobs {
        std::fs::write(
            stage.join(n.to_string()),
            format!(
                "From: bob@example.test\r\nTo: alice@example.test\r\nSubject: Mail {n}\r\n\
                 Message-ID: <{n}@example.test>\r\n\r\nHello.\r\n"
            ),
        )?;
    }
    let started = Instant::now();
    let sender = std::os::unix::net::UnixDatagram::unbound()?;
    for n in 0..jobs {
        let packet = format!(
            "mailto\0SIEVE\0normal\0alice\0\x001\0r{n}@example.test\0Mail {n}\0{}\0",
            stage.join(n.to_string()).display()
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
        "{delivered}/{jobs} emails in {:.2} s: {:.0} jobs/s ({workers} workers, {}, SMTP on loopback{})",
        elapsed.as_secs_f64(),
        delivered as f64 / elapsed.as_secs_f64(),
        if database.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        format_args!(
            "{}{}",
            if pipelining { ", PIPELINING" } else { "" },
            if delay.is_zero() {
                String::new()
            } else {
                format!(", answers {delay:?} late")
            }
        ),
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
