//! Several `mailpush serve` processes as one cluster: a shared PostgreSQL schema, one NATS, one
//! token secret, and a folder per node (its data dir and Cyrus socket) that outlives the
//! process, so a node killed can start again on its own data.

use std::path::PathBuf;

use super::server::Server;
use super::{AUTH_SECRET, DEADLINE, INGEST_SECRET};

/// What every node of a test's cluster shares.
pub struct Cluster {
    pub database_url: String,
    pub nats_url: String,
    /// Subjects and bucket of this test only, on a shared NATS server.
    pub prefix: String,
    extra: Vec<(String, String)>,
    root: tempfile::TempDir,
}

/// One running node.
pub struct Node {
    pub name: String,
    pub server: Server,
    /// Its Cyrus datagram socket.
    pub socket: PathBuf,
}

impl Cluster {
    /// A cluster on NATS at `nats_url` and a fresh schema of `MAILPUSH_TEST_PG_URL`.
    pub async fn new(nats_url: &str) -> Cluster {
        let url = std::env::var("MAILPUSH_TEST_PG_URL").expect("MAILPUSH_TEST_PG_URL");
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Cluster {
            database_url: super::postgres_schema(&url).await,
            nats_url: nats_url.to_owned(),
            prefix: format!("mptest{}x{n}", std::process::id()),
            extra: Vec::new(),
            root: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Sets `key` on every node started from now on.
    pub fn env(mut self, key: &str, value: &str) -> Cluster {
        self.extra.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Sets each pair on every node started from now on.
    pub fn envs(mut self, pairs: Vec<(String, String)>) -> Cluster {
        self.extra.extend(pairs);
        self
    }

    /// Starts node `name` (again, on its own folder if it ran before).
    pub fn start(&self, name: &str) -> Node {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir).expect("node folder");
        let socket = dir.join("notify.sock");
        let mut env: Vec<(String, String)> = vec![
            ("MAILPUSH_HTTP__LISTEN".into(), "127.0.0.1:0".into()),
            (
                "MAILPUSH_STORAGE__DATA_DIR".into(),
                dir.join("data").display().to_string(),
            ),
            (
                "MAILPUSH_INGEST__CYRUS_SOCKET".into(),
                socket.display().to_string(),
            ),
            ("MAILPUSH_INGEST__SECRET".into(), INGEST_SECRET.into()),
            ("MAILPUSH_AUTH__SECRET".into(), AUTH_SECRET.into()),
            ("MAILPUSH_DATABASE__URL".into(), self.database_url.clone()),
            ("MAILPUSH_CLUSTER__NATS_URL".into(), self.nats_url.clone()),
            ("MAILPUSH_CLUSTER__NODE_ID".into(), name.into()),
            ("MAILPUSH_CLUSTER__PREFIX".into(), self.prefix.clone()),
            ("MAILPUSH_SHUTDOWN__GRACE_SECS".into(), "2".into()),
        ];
        env.extend(self.extra.iter().cloned());
        let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let server = Server::start(&dir, &env, &["serve"]);
        Node {
            name: name.to_owned(),
            server,
            socket,
        }
    }

    /// A client token for `user`.
    pub fn token(&self, user: &str) -> String {
        super::auth_keys(self.root.path())
            .mint(user, 600, false)
            .expect("mint token")
    }
}

impl Node {
    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    /// Sends one datagram to the node's Cyrus socket.
    pub fn send_datagram(&self, bytes: &[u8]) {
        super::send_datagram(&self.socket, bytes);
    }

    /// The node's `/metrics` text (a fresh connection each time).
    pub async fn metrics(&self) -> String {
        reqwest::Client::new()
            .get(self.url("/metrics"))
            .timeout(DEADLINE)
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// One sample of the node's metrics.
    pub async fn metric(&self, series: &str) -> f64 {
        super::metric(&self.metrics().await, series)
    }

    /// Kills the process at once.
    pub fn kill(self) {
        self.server.kill();
    }
}
