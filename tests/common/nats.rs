//! NATS for the cluster tests: the machine's shared server (`MAILPUSH_TEST_NATS_URL`) with a
//! prefix of the test's own, or a `nats-server -js` of the test's own on an ephemeral port
//! (`MAILPUSH_TEST_NATS_SERVER` names the binary) for tests that stop and start it. Never the
//! machine's shared server for those.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::DEADLINE;

/// A `nats-server` with JetStream of the test's own; killed when dropped.
pub struct PrivateNats {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl PrivateNats {
    /// Starts `bin` on a free port, its JetStream store in a temporary folder.
    pub fn start(bin: &Path) -> PrivateNats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut nats = PrivateNats {
            bin: bin.to_owned(),
            dir: tempfile::Builder::new()
                .prefix("mailpush-nats-")
                .tempdir()
                .expect("temp dir"),
            port,
            child: None,
        };
        nats.resume();
        nats
    }

    /// The URL mailpush connects with.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once, as a crash would (its store stays on disk).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): its connections stay open and nothing is answered, as a
    /// server too busy to answer would.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server run on (SIGCONT).
    pub fn unpause(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Starts the server (again) on the same port and store, and waits until it answers.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let store = self.dir.path().join("store");
        let child = Command::new(&self.bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}", self.bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Deletes the state bucket a test made under `prefix` on the shared server.
pub async fn delete_bucket(url: &str, prefix: &str) {
    let Ok(client) = async_nats::connect(url).await else {
        return;
    };
    let context = async_nats::jetstream::new(client);
    let _ = context.delete_stream(format!("KV_{prefix}_states")).await;
}
