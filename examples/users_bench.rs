//! How memory grows with users seen, and shrinks once they go idle: the release binary takes one
//! event for each of N distinct users through its Cyrus socket, then the users go quiet; the
//! process's RSS is read after the events and once the idle users have left memory
//! (`http.idle_user_secs`, 5 s here). A second wave of as many new users follows: what the
//! first left is reused, so memory follows the users active at once, not every user seen.
//!
//! ```sh
//! cargo build --release && cargo run --release --example users_bench -- [USERS]
//! ```
//!
//! Default 1,000,000 users. `MAILPUSH_BIN` names the binary (default `target/release/mailpush`).

use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use anyhow::Context;

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            (series == name).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// Polls `/metrics` until `done` holds, for at most ten minutes.
async fn wait_for<F, Fut>(
    metrics: &F,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = reqwest::Result<String>>,
{
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if done(&metrics().await?) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let users: u64 = std::env::args()
        .nth(1)
        .map_or(Ok(1_000_000), |n| n.parse())?;
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("notify.sock");
    let mut child = common::serve(dir.path(), "warn,mailpush::app=info")?
        .env("MAILPUSH_HTTP__IDLE_USER_SECS", "5")
        .spawn()
        .context("cannot start mailpush")?;
    let pid = child.id();
    let http = common::wait_for_listening(&mut child, false)?.http;
    let metrics_url = format!("http://{http}/metrics");
    let metrics = || async { reqwest::get(&metrics_url).await?.text().await };
    let at_start = common::rss_kb(pid);

    let sender = std::os::unix::net::UnixDatagram::unbound()?;
    let per_user = |kb: u64| (kb.saturating_sub(at_start) as f64 * 1024.0) / users as f64;
    println!("RSS at start: {at_start} kB");
    // Two waves of distinct users: the second reuses what the first left, so memory follows
    // the users active at once, not every user ever seen.
    for wave in 0..2u64 {
        let started = Instant::now();
        for n in wave * users..(wave + 1) * users {
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
        let seen = (wave + 1) * users;
        wait_for(&metrics, "every event", |text| {
            metric(text, "mailpush_state_updates_total") >= seen as f64
        })
        .await?;
        let after_events = common::rss_kb(pid);
        let in_memory = metric(&metrics().await?, "mailpush_users_in_memory");
        wait_for(&metrics, "every state saved", |text| {
            metric(text, "mailpush_states_saved_total") >= seen as f64
        })
        .await?;
        wait_for(&metrics, "the idle users gone", |text| {
            metric(text, "mailpush_users_in_memory") == 0.0
        })
        .await?;
        let after_idle = common::rss_kb(pid);
        println!(
            "wave {}: {users} new users sent in {sent_in:.1?}; RSS {after_events} kB with {in_memory} in memory ({:.0} B a user of the wave), {after_idle} kB once they went idle ({seen} seen, 0 in memory)",
            wave + 1,
            per_user(after_events),
        );
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    child.wait()?;
    Ok(())
}
