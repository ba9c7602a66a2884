//! What the examples that run the built binary share: where it is, how it is started, and its
//! listening line.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

/// Where a started mailpush listens.
pub struct Listening {
    pub http: SocketAddr,
    pub ndjson: Option<SocketAddr>,
}

/// The binary under measure: `MAILPUSH_BIN`, else `target/release/mailpush`, from the current
/// folder.
pub fn binary() -> anyhow::Result<PathBuf> {
    let binary = std::env::var_os("MAILPUSH_BIN")
        .map_or_else(|| PathBuf::from("target/release/mailpush"), PathBuf::from);
    Ok(std::env::current_dir()?.join(binary))
}

/// `mailpush serve` in `dir`, with nothing of this program's environment but `RUST_LOG=log`,
/// HTTP on an ephemeral port, the data dir and Cyrus socket in `dir`, and its log piped.
pub fn serve(dir: &Path, log: &str) -> anyhow::Result<Command> {
    let mut command = Command::new(binary()?);
    command
        .arg("serve")
        .current_dir(dir)
        .env_clear()
        .env("RUST_LOG", log)
        .env("MAILPUSH_HTTP__LISTEN", "127.0.0.1:0")
        .env("MAILPUSH_STORAGE__DATA_DIR", dir.join("data"))
        .env("MAILPUSH_INGEST__CYRUS_SOCKET", dir.join("notify.sock"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    Ok(command)
}

/// Reads the log until the listening line and returns the addresses; the rest of the log goes
/// to this program's stderr when `echo`, else nowhere.
pub fn wait_for_listening(child: &mut Child, echo: bool) -> anyhow::Result<Listening> {
    use std::io::BufRead;
    let stderr = child.stderr.take().context("no stderr")?;
    let mut lines = std::io::BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        let line = line?;
        if line.contains("mailpush listening") {
            let field = |prefix: &str| -> Option<SocketAddr> {
                let at = line.find(prefix)? + prefix.len();
                line[at..].split([' ', ')']).next()?.parse().ok()
            };
            let listening = Listening {
                http: field("http=").with_context(|| format!("no address in {line}"))?,
                ndjson: field("ndjson=Some("),
            };
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    if echo {
                        eprintln!("mailpush: {line}");
                    }
                }
            });
            return Ok(listening);
        }
        if echo {
            eprintln!("mailpush: {line}");
        }
    }
    anyhow::bail!("mailpush exited before listening")
}

/// A process's resident memory in kB (`VmRSS`); 0 if it cannot be read.
pub fn rss_kb(pid: u32) -> u64 {
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
