//! The configuration tree: embedded defaults, then a TOML file, then `MAILPUSH_<SECTION>__<KEY>`
//! environment variables, validated once at start-up.
//!
//! Every key in here is public interface (`mailpush.example.toml` lists them all). A bad value
//! is reported with its dotted key so that `check-config` and start-up can say exactly what to
//! fix. Secrets are held in [`Secret`], which never prints its value (`secret.rs`). This file
//! holds the tree and its defaults; `load.rs` builds and checks it.

mod cluster;
mod load;
mod process;
mod secret;
mod validate;

/// `MAILPUSH_*` pairs as [`Config::load`] takes them, for the tests of both halves.
#[cfg(test)]
fn test_env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

use std::collections::BTreeMap;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

pub use cluster::ClusterConfig;
pub use process::{ConnectionsConfig, RuntimeConfig, ShutdownConfig};
use secret::optional_secret;
pub use secret::{Secret, SecretUrl};

/// The whole configuration; each module is handed only its own section.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub ingest: IngestConfig,
    pub storage: StorageConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub push: PushConfig,
    pub notify: NotifyConfig,
    pub jmap: JmapConfig,
    pub cluster: ClusterConfig,
    pub connections: ConnectionsConfig,
    pub shutdown: ShutdownConfig,
    pub runtime: RuntimeConfig,
    pub log: LogConfig,
}

/// The HTTP listener and the EventSource endpoints.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address for the HTTP API and EventSource streams.
    pub listen: SocketAddr,
    /// EventSource connections allowed in total; more get 429.
    pub max_connections: usize,
    /// EventSource connections allowed per user (browser tabs, devices); more get 429.
    pub max_connections_per_user: usize,
    /// Period of the shared keepalive clock: a stream quiet for a whole tick gets a comment, so
    /// an idle stream is never silent for two periods (proxies drop idle streams at 60 s).
    pub keepalive_secs: u64,
    /// Reconnection delay suggested to clients with `retry:`, in milliseconds; each stream
    /// adds up to 20 % so that clients dropped together come back spread out.
    pub retry_ms: u64,
    /// Largest request body accepted, for `POST /ingest`.
    pub max_body_bytes: usize,
    /// How long a stream's write may wait for a client that stopped reading before the stream
    /// is closed (nginx's `send_timeout`), in seconds.
    pub send_timeout_secs: u64,
    /// A user with no open stream whose state has not moved for this long leaves memory (their
    /// state stays in the database), so memory holds the active users only; in seconds.
    pub idle_user_secs: u64,
    /// A bearer token that `GET /metrics` requires; without it `/metrics` is open to anyone
    /// who reaches `listen` (keep that on a private address, or set this).
    #[serde(deserialize_with = "optional_secret")]
    pub metrics_token: Option<Secret>,
    /// Origins of web apps served elsewhere that may open streams and register devices
    /// (`https://app.example.com`), or `"*"` for any; none by default.
    pub cors_origins: Vec<String>,
}

/// Where events come from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Datagram socket(s) that Cyrus's `notifysocket` points at: one path or a list (one per
    /// Cyrus instance if they do not share one). An empty list turns datagram ingest off.
    #[serde(deserialize_with = "one_or_many")]
    pub cyrus_socket: Vec<PathBuf>,
    /// Octal mode of the socket files; Cyrus runs as its own user and must be able to write.
    pub cyrus_socket_mode: String,
    /// Group (name or numeric id) given to the socket files, e.g. the group Cyrus runs in.
    pub cyrus_socket_group: Option<String>,
    /// Stream socket for Cyrus's `notifysocket: dlist:<path>` form; off when absent.
    pub cyrus_dlist_socket: Option<PathBuf>,
    /// TCP address for newline-delimited JSON events; off when absent. Needs `secret`: a
    /// connection's first line is `AUTH <secret>`.
    pub ndjson_listen: Option<SocketAddr>,
    /// Events a second one NDJSON connection may send; past that it is read no faster.
    pub ndjson_max_events_per_sec: u32,
    /// Shared secret of event producers: bearer token of `POST /ingest` (which answers 403
    /// while it is absent) and the `AUTH` line of NDJSON connections.
    #[serde(deserialize_with = "optional_secret")]
    pub secret: Option<Secret>,
    /// Largest event accepted, in bytes (datagrams are further capped at 64 KiB, Cyrus's own
    /// limit).
    pub max_event_bytes: usize,
}

/// JMAP push (`GET /jmap/eventsource`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JmapConfig {
    /// How state strings are written: `auto` follows each account's ids as its events show
    /// them (Cyrus's `J` prefix for compact ids, bare for legacy ids), `compact` or `legacy`
    /// says so for every account (when events carry no `vnd.cmu.emailid`).
    pub id_scheme: crate::stream::JmapIds,
}

/// Where mailpush keeps its files.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Folder for the generated token secret and the embedded SQLite database.
    pub data_dir: PathBuf,
    /// How often users' live states are written to the database, in milliseconds: a crash
    /// can lose at most this much of the record (the next event carries it again).
    pub state_flush_ms: u64,
}

/// The database used by the device registry and the job queue.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite:` or `postgres://` URL; default: `sqlite://<data_dir>/mailpush.db`.
    pub url: Option<SecretUrl>,
    /// PostgreSQL connections this node opens at most for its queries; a query that finds
    /// none free waits up to 10 s, then fails (and is retried). The delivery records have a
    /// pool of their own, one connection per `notify.workers`. SQLite always has one.
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            max_connections: crate::store::DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Client tokens.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 secret; when absent one is generated on first start and kept in the data dir.
    #[serde(deserialize_with = "optional_secret")]
    pub secret: Option<Secret>,
    /// PEM public key (RSA or EC P-256) of a login service that signs RS256/ES256 tokens.
    pub public_key_file: Option<PathBuf>,
    /// Cookie that may carry the token, for browsers whose EventSource cannot set headers.
    pub cookie_name: String,
}

/// Device pushes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Devices one user may register; more get 409.
    pub max_devices_per_user: usize,
    /// Pushes waiting for a sender; when full, badge-only updates are dropped before alerts.
    pub queue_capacity: usize,
    /// Requests in flight per provider (HTTP/2 streams on one connection).
    pub max_in_flight: usize,
    /// Per-request timeout, in milliseconds.
    pub request_timeout_ms: u64,
    /// Attempts per push, the first included, before it is given up.
    pub max_attempts: u32,
    /// First retry delay in milliseconds; doubled each attempt (with jitter), capped at 60 s.
    pub retry_base_ms: u64,
    /// Consecutive failures after which a provider is left alone for `breaker_cooldown_ms`.
    pub breaker_threshold: u32,
    /// How long a tripped provider is left alone before one probe request.
    pub breaker_cooldown_ms: u64,
    /// How long badge-only and data updates for a device are held and merged (newest wins)
    /// before one is sent; 0 sends each at once. New-mail alerts are never held.
    pub coalesce_ms: u64,
    /// Pushes one device may be sent per minute; more are dropped and counted.
    pub max_per_device_per_minute: u32,
    /// Pushes one user may cause per minute, over all their devices; more are dropped and
    /// counted.
    pub max_per_user_per_minute: u32,
    /// APNs apps by name: `[push.apns.<name>]`.
    pub apns: BTreeMap<String, ApnsConfig>,
    /// FCM apps by name: `[push.fcm.<name>]`.
    pub fcm: BTreeMap<String, FcmConfig>,
    /// Browsers' push services: `[push.webpush]`.
    pub webpush: WebPushConfig,
}

/// Web Push (RFC 8030) with VAPID (RFC 8292): browsers subscribe with mailpush's public key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebPushConfig {
    /// Accepts `webpush` registrations and pushes to them.
    pub enabled: bool,
    /// The VAPID `sub` claim: a `mailto:` or `https:` contact the push service can reach
    /// (Apple's refuses tokens without one). Required when enabled.
    pub subject: Option<String>,
    /// The VAPID key pair (PKCS#8 P-256 PEM), generated when missing. Every subscription is
    /// bound to it: losing or changing it breaks them all. Default: `<data_dir>/vapid.pem`; a
    /// cluster's nodes must all be given the same file.
    pub vapid_key_file: Option<PathBuf>,
    /// How long a push service keeps a message for a browser that is offline, in seconds.
    pub ttl_secs: u32,
    /// Accepts endpoints on loopback and private addresses, and plain `http` ones: for tests
    /// and push services on a private network. Off, such registrations are refused (SSRF).
    pub allow_private_endpoints: bool,
}

/// One APNs app (topic) with its token key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    /// Where production tokens go.
    #[serde(default = "apns_production")]
    pub base_url: String,
    /// Where sandbox (development build) tokens go.
    #[serde(default = "apns_sandbox")]
    pub sandbox_base_url: String,
    /// The `.p8` token signing key (PKCS#8 P-256 PEM).
    pub key_file: PathBuf,
    /// The key's 10-character id.
    pub key_id: String,
    /// The 10-character developer team id.
    pub team_id: String,
    /// The app's bundle id; devices register with it as their `app`.
    pub topic: String,
    /// An extra CA to trust (a proxy, a test server).
    pub ca_file: Option<PathBuf>,
}

/// One FCM project with its service account.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    #[serde(default = "fcm_production")]
    pub base_url: String,
    /// The service-account JSON key from the Firebase console.
    pub service_account_file: PathBuf,
    /// The `app` devices register with; defaults to the section name.
    pub app: Option<String>,
    /// An extra CA to trust (a proxy, a test server).
    pub ca_file: Option<PathBuf>,
}

fn apns_production() -> String {
    "https://api.push.apple.com".into()
}

fn apns_sandbox() -> String {
    "https://api.sandbox.push.apple.com".into()
}

fn fcm_production() -> String {
    "https://fcm.googleapis.com".into()
}

/// The blocking path: the job queue, its workers, and the email and SMS transports.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Workers sending jobs at once.
    pub workers: usize,
    /// Attempts per job before it is dead.
    pub max_attempts: u32,
    /// First retry delay in milliseconds; doubled each attempt (with jitter), capped at an hour.
    pub retry_base_ms: u64,
    /// How long a claimed job is leased: a job whose worker died runs again after this.
    pub lease_secs: u64,
    /// Bytes of jobs the spool holds while they wait for the database (an outage fills it);
    /// past this, new jobs are refused, counted and logged.
    pub spool_max_bytes: u64,
    /// Sender address of notification emails.
    pub from: String,
    /// Folder of `templates/<kind>/<lang>.{subject,txt,html}.j2`.
    pub templates_dir: PathBuf,
    pub smtp: SmtpConfig,
    pub sms: SmsConfig,
}

/// Outgoing mail.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// `smtp://host:port`, `smtps://user:pass@host`, `smtp://host?tls=required`... (lettre's URL
    /// form). Absent: emails are written as `.eml` files under `<data_dir>/outbox/`.
    pub url: Option<SecretUrl>,
    /// An extra CA to trust for the relay's certificate, besides the platform's (a relay with
    /// a private CA), for `smtps://` and STARTTLS alike.
    pub ca_file: Option<PathBuf>,
}

/// Outgoing text messages.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmsConfig {
    /// The provider's HTTP endpoint. Absent: messages are appended to `<data_dir>/sms.log`.
    pub url: Option<String>,
    /// A header sent with each request, as `Name: value` (e.g. `Authorization: Bearer …`).
    pub auth_header: Option<Secret>,
    /// The request body, a minijinja template over `number` and `text`.
    pub body_template: String,
    /// Per-request timeout, in milliseconds.
    pub timeout_ms: u64,
}

/// Logging.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `mailpush=debug,info`...
    pub level: String,
    pub format: LogFormat,
}

/// Human-readable lines for a terminal, or one JSON object per line for a log pipeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A configuration problem, named by its dotted key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_connections: 10_000,
            max_connections_per_user: 20,
            keepalive_secs: 25,
            retry_ms: 5_000,
            max_body_bytes: 1 << 20,
            send_timeout_secs: 30,
            idle_user_secs: 300,
            metrics_token: None,
            cors_origins: Vec::new(),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            cyrus_socket: vec![PathBuf::from("run/notify.sock")],
            cyrus_socket_mode: "0660".into(),
            cyrus_socket_group: None,
            cyrus_dlist_socket: None,
            ndjson_listen: None,
            ndjson_max_events_per_sec: 5_000,
            secret: None,
            max_event_bytes: 1 << 20,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("data"),
            state_flush_ms: 1000,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            secret: None,
            public_key_file: None,
            cookie_name: "mailpush_token".into(),
        }
    }
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            max_devices_per_user: 20,
            queue_capacity: 10_000,
            max_in_flight: 100,
            request_timeout_ms: 10_000,
            max_attempts: 5,
            retry_base_ms: 1_000,
            breaker_threshold: 10,
            breaker_cooldown_ms: 30_000,
            coalesce_ms: 1_000,
            max_per_device_per_minute: 60,
            max_per_user_per_minute: 120,
            apns: BTreeMap::new(),
            fcm: BTreeMap::new(),
            webpush: WebPushConfig::default(),
        }
    }
}

impl Default for WebPushConfig {
    fn default() -> Self {
        WebPushConfig {
            enabled: false,
            subject: None,
            vapid_key_file: None,
            ttl_secs: 86_400,
            allow_private_endpoints: false,
        }
    }
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            workers: 4,
            max_attempts: 8,
            retry_base_ms: 30_000,
            lease_secs: 120,
            spool_max_bytes: 1 << 30,
            from: "mailpush@localhost".into(),
            templates_dir: PathBuf::from("templates"),
            smtp: SmtpConfig::default(),
            sms: SmsConfig::default(),
        }
    }
}

impl Default for SmsConfig {
    fn default() -> Self {
        SmsConfig {
            url: None,
            auth_header: None,
            body_template: r#"{"to": {{ number|tojson }}, "text": {{ text|tojson }}}"#.into(),
            timeout_ms: 10_000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(PathBuf),
        Many(Vec<PathBuf>),
    }
    Ok(match OneOrMany::deserialize(de)? {
        OneOrMany::One(path) if path.as_os_str().is_empty() => Vec::new(),
        OneOrMany::One(path) => vec![path],
        OneOrMany::Many(paths) => paths,
    })
}
