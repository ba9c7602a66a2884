//! Test harness: the real app on ephemeral ports (in-process or as the built binary), a real
//! EventSource client, fixture loading, and waiting on conditions under a deadline.

#![allow(dead_code)]

pub mod cluster;
pub mod mock;
pub mod nats;
pub mod peer;
pub mod postgres;
pub mod raw;
pub mod server;
pub mod smtp;
pub mod sse;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mailpush::app::{self, Listeners};
use mailpush::auth::TokenKeys;
use mailpush::config::Config;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use sse::Sse;

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub const AUTH_SECRET: &str = "test-auth-secret-0123456789";

/// The keys a server started with `MAILPUSH_AUTH__SECRET=AUTH_SECRET` verifies tokens with.
pub fn auth_keys(dir: &Path) -> TokenKeys {
    let config = mailpush::config::AuthConfig {
        secret: Some(mailpush::config::Secret::new(AUTH_SECRET)),
        ..Default::default()
    };
    TokenKeys::load(&config, dir).expect("token keys")
}
pub const INGEST_SECRET: &str = "test-ingest-secret-0123456789";

/// The fixture folder copied into the repo.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A running in-process mailpush on ephemeral ports with its own temp dir.
pub struct TestApp {
    pub data_dir: PathBuf,
    /// The PostgreSQL URL (with its own schema) when the suite runs on PostgreSQL.
    pub database_url: Option<String>,
    pub http: SocketAddr,
    /// The NDJSON listener's address; `0.0.0.0:0` when a test turned the ingest secret off
    /// (NDJSON needs it).
    pub ndjson: SocketAddr,
    pub cyrus_socket: PathBuf,
    pub dlist_socket: PathBuf,
    pub dir: TempDir,
    keys: TokenKeys,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Extra configuration for a [`TestApp`], as `MAILPUSH_*` pairs.
#[derive(Default)]
pub struct TestAppBuilder {
    env: Vec<(String, String)>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
}

impl TestApp {
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder::default()
    }

    pub async fn start() -> TestApp {
        TestApp::builder().start().await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// A request to this app, authenticated as `user`.
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        user: &str,
    ) -> reqwest::RequestBuilder {
        client()
            .request(method, self.url(path))
            .bearer_auth(self.token(user))
    }

    /// A valid token for `user`.
    pub fn token(&self, user: &str) -> String {
        self.keys.mint(user, 600, false).expect("mint token")
    }

    /// A valid token with the admin claim (the status page).
    pub fn admin_token(&self, user: &str) -> String {
        self.keys.mint(user, 600, true).expect("mint admin token")
    }

    /// Opens the legacy EventSource stream for `user`.
    pub async fn sse(&self, user: &str) -> Sse {
        Sse::connect(&self.url("/events"), &self.token(user), None).await
    }

    /// Sends one datagram to the Cyrus socket (blocking send, as Cyrus does).
    pub fn send_datagram(&self, bytes: &[u8]) {
        send_datagram(&self.cyrus_socket, bytes);
    }

    /// A second connection to the app's database (SQLite in WAL mode takes both).
    pub async fn store(&self) -> mailpush::store::Store {
        mailpush::store::Store::connect(
            self.database_url.as_deref(),
            &self.data_dir.join("mailpush.db"),
        )
        .await
        .expect("open the app's database")
    }

    /// The current `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// Stops the app and waits for it to drain.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(DEADLINE, task)
                .await
                .expect("app stops within the deadline")
                .expect("app task")
                .expect("app run");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl TestAppBuilder {
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn envs(mut self, pairs: Vec<(String, String)>) -> Self {
        self.env.extend(pairs);
        self
    }

    /// Uses the database at `url` (None: SQLite in the data dir), prepared by the test.
    pub fn database(mut self, url: Option<String>) -> Self {
        self.database_url = url;
        self
    }

    /// Uses another app's database (on PostgreSQL: its schema), to start again on its data.
    pub fn same_database(mut self, other: &TestApp) -> Self {
        self.database_url = other.database_url.clone();
        self
    }

    /// Keeps the data (token secret, SQLite file) in `dir`, so a later app can start on it.
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    pub async fn start(self) -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = self.data_dir.unwrap_or_else(|| dir.path().join("data"));
        let cyrus_socket = dir.path().join("notify.sock");
        let dlist_socket = dir.path().join("dlist.sock");
        let mut env = vec![
            ("MAILPUSH_HTTP__LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
            (
                "MAILPUSH_STORAGE__DATA_DIR".to_owned(),
                data_dir.display().to_string(),
            ),
            (
                "MAILPUSH_INGEST__CYRUS_SOCKET".to_owned(),
                cyrus_socket.display().to_string(),
            ),
            (
                "MAILPUSH_INGEST__CYRUS_DLIST_SOCKET".to_owned(),
                dlist_socket.display().to_string(),
            ),
            (
                "MAILPUSH_INGEST__SECRET".to_owned(),
                INGEST_SECRET.to_owned(),
            ),
            ("MAILPUSH_AUTH__SECRET".to_owned(), AUTH_SECRET.to_owned()),
        ];
        let ingest_off = self
            .env
            .iter()
            .any(|(key, value)| key == "MAILPUSH_INGEST__SECRET" && value.is_empty());
        if !ingest_off {
            env.push((
                "MAILPUSH_INGEST__NDJSON_LISTEN".to_owned(),
                "127.0.0.1:0".to_owned(),
            ));
        }
        let database_url = match (self.database_url, std::env::var("MAILPUSH_TEST_APP_PG_URL")) {
            (Some(url), _) => Some(url),
            (None, Ok(url)) => Some(postgres_schema(&url).await),
            (None, Err(_)) => None,
        };
        if let Some(url) = &database_url {
            env.push(("MAILPUSH_DATABASE__URL".to_owned(), url.clone()));
        }
        env.extend(self.env);
        let config = Config::load(None, env).expect("test config");
        let keys = TokenKeys::load(&config.auth, &config.storage.data_dir).expect("token keys");
        let listeners = Listeners::bind(&config).await.expect("bind listeners");
        let http = listeners.http_addr().expect("http addr");
        let ndjson = listeners
            .ndjson_addr()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app::run(config, listeners, async {
            let _ = stopped.await;
        }));
        // Ready once HTTP answers: the database is open and migrated by then.
        let health = format!("http://{http}/healthz");
        wait_until("the app to answer /healthz", || {
            let health = health.clone();
            let stopped = task.is_finished();
            async move {
                stopped
                    || client()
                        .get(&health)
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200)
            }
        })
        .await;
        if task.is_finished() {
            match task.await {
                Ok(Err(err)) => panic!("the app failed to start: {err:#}"),
                other => panic!("the app stopped during start-up: {other:?}"),
            }
        }
        TestApp {
            database_url,
            data_dir,
            http,
            ndjson,
            cyrus_socket,
            dlist_socket,
            dir,
            keys,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

/// A fresh schema on the PostgreSQL server at `url`, as a URL that selects it: with
/// `MAILPUSH_TEST_APP_PG_URL` set (CI does), every [`TestApp`] runs on PostgreSQL.
pub async fn postgres_schema(url: &str) -> String {
    use sqlx::Connection;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let schema = format!(
        "mailpush_app_{}_{}_{n}",
        std::process::id(),
        mailpush::auth::unix_now()
    );
    let mut connection = sqlx::PgConnection::connect(url)
        .await
        .expect("connect to MAILPUSH_TEST_APP_PG_URL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut connection)
        .await
        .expect("create schema");
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options[search_path]={schema}")
}

/// One HTTP client per test binary.
pub fn client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(reqwest::Client::new)
}

/// Sends one datagram with a blocking socket and a write timeout: if mailpush stopped
/// draining, the send fails instead of hanging the test.
pub fn send_datagram(path: &Path, bytes: &[u8]) {
    let socket = std::os::unix::net::UnixDatagram::unbound().expect("datagram socket");
    socket
        .set_write_timeout(Some(DEADLINE))
        .expect("write timeout");
    socket.send_to(bytes, path).expect("send datagram");
}

/// A Cyrus datagram carrying the RFC 5423 event `json`.
pub fn event_datagram(json: &serde_json::Value) -> Vec<u8> {
    [
        b"mailpush\0EVENT\0\0\0\x000\0".as_slice(),
        json.to_string().as_bytes(),
        b"\0",
    ]
    .concat()
}

/// A Cyrus datagram of a MessageNew in `user`'s INBOX at mail modseq `modseq`.
pub fn mail_event_datagram(user: &str, modseq: u64) -> Vec<u8> {
    event_datagram(&serde_json::json!({
        "event": "MessageNew",
        "uri": format!("imap://h/user/{user};UIDVALIDITY=1/;UID={modseq}"),
        "modseq": modseq,
        "vnd.cmu.mbtype": "e",
    }))
}

/// The captured CalendarAlarm, turned into an email alarm for `user` to `recipient`.
pub fn email_alarm(user: &str, recipient: &str) -> Vec<u8> {
    let captured: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixtures().join("cyrus/129-CalendarAlarm.json")).expect("the fixture"),
    )
    .expect("JSON");
    let mut alarm = captured["event"].clone();
    alarm["action"] = "email".into();
    alarm["userId"] = user.into();
    alarm["alarmRecipients"] = serde_json::json!([format!("mailto:{recipient}")]);
    event_datagram(&alarm)
}

/// A Sieve `mailto:` notify datagram for delivery `n`, to its own recipient `r<n>@example.test`.
pub fn sieve_mailto(n: u32) -> Vec<u8> {
    format!("mailto\0SIEVE\0normal\0alice\0\x001\0r{n}@example.test\0Mail number {n}\n\nAction(s) taken:\nKept\n\0/var/spool/cyrus/stage./{n}\0")
        .into_bytes()
}

/// An NDJSON connection that has authenticated (`AUTH <INGEST_SECRET>`, answered `OK`).
pub fn ndjson_connect(addr: SocketAddr) -> std::net::TcpStream {
    use std::io::{BufRead, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect ndjson");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    writeln!(stream, "AUTH {INGEST_SECRET}").expect("write AUTH");
    let mut reply = String::new();
    std::io::BufReader::new(stream.try_clone().expect("clone"))
        .read_line(&mut reply)
        .expect("AUTH reply");
    assert_eq!(reply, "OK\n", "NDJSON authentication");
    stream
}

/// Waits until `check` returns true, polling, or panics at the deadline with `what`.
pub async fn wait_until<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_until_within(what, DEADLINE, check).await;
}

/// [`wait_until`] with a deadline of its own, for waits that are long by design (catching up
/// after an outage).
pub async fn wait_until_within<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads one sample from Prometheus text: `name{labels}` exactly as rendered; 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// The EVENT fixtures as (file name, datagram bytes), in capture order.
pub fn datagram_fixtures(folder: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fixtures().join(folder);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("read {}: {err}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "bin" || ext == "dlist")
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read(&path).expect("read fixture"))
        })
        .collect()
}
