//! How memory grows with users seen, and shrinks once they go idle: the release binary takes one
//! event for each of N distinct users through its Cyrus socket, then the users go quiet; the
//! process's RSS is read after the events, once every state is in the database, and once the
//! idle users have left memory (`http.idle_user_secs`, 5 s here).
//!
//! ```sh
//! cargo build --release && cargo run --release --example users_bench -- [USERS]
//! ```
//!
//! Default 1,000,000 users. `MAILPUSH_BIN` names the binary (default `target/release/mailpush`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|kb| kb.trim().trim_end_matches(" kB").parse().ok())
        })
        .unwrap_or(0)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            (series == name).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let users: u64 = std::env::args()
        .nth(1)
        .map_or(Ok(1_000_000), |n| n.parse())?;
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("notify.sock");
    let binary = std::env::var_os("MAILPUSH_BIN")
        .map_or_else(|| PathBuf::from("target/release/mailpush"), PathBuf::from);
    let binary = std::env::current_dir()?.join(binary);
    let mut child = Command::new(&binary)
        .arg("serve")
        .current_dir(dir.path())
        .env_clear()
        .env("RUST_LOG", "warn,mailpush::app=info")
        .env("MAILPUSH_HTTP__LISTEN", "127.0.0.1:0")
        .env("MAILPUSH_HTTP__IDLE_USER_SECS", "5")
        .env("MAILPUSH_STORAGE__DATA_DIR", dir.path().join("data"))
        .env("MAILPUSH_INGEST__CYRUS_SOCKET", &socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let pid = child.id();
    let http = {
        use std::io::BufRead;
        let stderr = child.stderr.take().context("stderr")?;
        let mut lines = std::io::BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines.next().context("mailpush exited")??;
            if let Some(at) = line.find("http=") {
                break line[at + 5..].split(' ').next().unwrap_or("").to_owned();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        addr
    };
    let metrics_url = format!("http://{http}/metrics");
    let metrics = || async { reqwest::get(&metrics_url).await?.text().await };
    let at_start = rss_kb(pid);

    let started = Instant::now();
    let sender = std::os::unix::net::UnixDatagram::unbound()?;
    for n in 0..users {
        let json = format!(
            r#"{{"event":"MessageNew","uri":"imap://h/user/user{n};UIDVALIDITY=1/;UID=1","modseq":{},"vnd.cmu.mbtype":"e"}}"#,
            n + 1
        );
        sender.send_to(
            format!("mailpush\0EVENT\0\0\0\x000\0{json}\0").as_bytes(),
            &socket,
        )?;
    }
    let sent_in = started.elapsed();
    let wait = |what: &'static str, done: fn(&str, u64) -> bool| {
        let metrics = &metrics;
        async move {
            let deadline = Instant::now() + Duration::from_secs(600);
            loop {
                let text = metrics().await?;
                if done(&text, users) {
                    return anyhow::Ok(());
                }
                anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    wait("every event", |text, users| {
        metric(text, "mailpush_state_updates_total") >= users as f64
    })
    .await?;
    let after_events = rss_kb(pid);
    let in_memory = metric(&metrics().await?, "mailpush_users_in_memory");
    wait("every state saved", |text, users| {
        metric(text, "mailpush_states_saved_total") >= users as f64
    })
    .await?;
    let after_saved = rss_kb(pid);
    wait("the idle users gone", |text, _| {
        metric(text, "mailpush_users_in_memory") == 0.0
    })
    .await?;
    // Let the allocator hand freed pages back (mimalloc purges with a delay).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_idle = rss_kb(pid);
    let per_user = |kb: u64| (kb.saturating_sub(at_start) as f64 * 1024.0) / users as f64;
    println!("{users} distinct users, one event each, sent in {sent_in:.1?}");
    println!("RSS at start:                 {at_start:>9} kB");
    println!(
        "RSS after the events:         {after_events:>9} kB  ({:.0} B a user, {in_memory} users in memory)",
        per_user(after_events)
    );
    println!(
        "RSS with every state saved:   {after_saved:>9} kB  ({:.0} B a user)",
        per_user(after_saved)
    );
    println!(
        "RSS once they went idle:      {after_idle:>9} kB  ({:.0} B a user seen, 0 in memory)",
        per_user(after_idle)
    );
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    child.wait()?;
    Ok(())
}
