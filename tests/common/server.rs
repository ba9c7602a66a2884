//! The built `mailpush` binary as a child process, configured through `MAILPUSH_*` variables,
//! with its log captured so tests can read the bound addresses and what it logged.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::DEADLINE;

/// A running `mailpush serve`.
pub struct Server {
    child: Child,
    pub http: SocketAddr,
    pub ndjson: Option<SocketAddr>,
    /// Everything the server wrote to stderr so far.
    pub log: Arc<Mutex<String>>,
}

/// The binary under test.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mailpush"))
}

/// Runs `mailpush ARGS` to completion in `dir` with `env`; returns (status, stdout, stderr).
pub fn run_command(dir: &Path, env: &[(&str, String)], args: &[&str]) -> (i32, String, String) {
    let output = Command::new(binary())
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run mailpush");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

impl Server {
    /// Starts `mailpush ARGS` in `dir` and waits until it logs its listening addresses.
    pub fn start(dir: &Path, env: &[(&str, String)], args: &[&str]) -> Server {
        // A test that sets its own logging (RUST_LOG, or a configuration file) keeps it.
        let own_logging = env
            .iter()
            .any(|(k, _)| *k == "RUST_LOG" || *k == "MAILPUSH_CONFIG");
        let mut command = Command::new(binary());
        command.args(args).current_dir(dir).env_clear();
        if !own_logging {
            command.env("RUST_LOG", "info");
        }
        let mut child = command
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mailpush");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (found, listening) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("mailpush listening") {
                    let _ = found.send(line.clone());
                }
                let mut log = sink.lock().expect("log lock");
                log.push_str(&line);
                log.push('\n');
            }
        });
        let line = match listening.recv_timeout(DEADLINE) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "mailpush did not start; log:\n{}",
                    log.lock().expect("log lock")
                );
            }
        };
        Server {
            child,
            // Text logs say `http=ADDR`, JSON logs `"http":"ADDR"`.
            http: field(&line, "http=")
                .or_else(|| field(&line, "\"http\":\""))
                .expect("http address in the listening line"),
            ndjson: field(&line, "ndjson=Some(").or_else(|| field(&line, "\"ndjson\":\"Some(")),
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// Sends SIGHUP: reload templates and log level.
    pub fn hangup(&self) {
        let _ = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status();
    }

    /// Kills the process at once (SIGKILL), as a crash or the OOM killer would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait mailpush") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "mailpush did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what its servers logged: the CI log is all a failure leaves.
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
            eprintln!(
                "--- mailpush at {} logged (last {} lines):\n{}",
                self.http,
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// How many of a server's last log lines a failing test prints.
const LOG_TAIL: usize = 60;

fn field(line: &str, prefix: &str) -> Option<SocketAddr> {
    let start = line.find(prefix)? + prefix.len();
    let rest = &line[start..];
    let end = rest.find([' ', ')', '"']).unwrap_or(rest.len());
    rest[..end].parse().ok()
}
