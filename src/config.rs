//! The configuration tree: embedded defaults, then a TOML file, then `MAILPUSH_<SECTION>__<KEY>`
//! environment variables, validated once at start-up.
//!
//! Every key in here is public interface (`mailpush.example.toml` lists them all). A bad value
//! is reported with its dotted key so that `check-config` and start-up can say exactly what to
//! fix. Secrets are held in [`Secret`], which never prints its value.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The whole configuration; each module is handed only its own section.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub ingest: IngestConfig,
    pub storage: StorageConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
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
    /// Seconds between keepalive comments on an idle stream (proxies drop idle streams at 60 s).
    pub keepalive_secs: u64,
    /// Reconnection delay suggested to clients with `retry:`, in milliseconds; each stream
    /// adds up to 20 % so that clients dropped together come back spread out.
    pub retry_ms: u64,
    /// Largest request body accepted, for `POST /ingest`.
    pub max_body_bytes: usize,
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
    /// TCP address for newline-delimited JSON events; off when absent.
    pub ndjson_listen: Option<SocketAddr>,
    /// Bearer secret for `POST /ingest`; the endpoint answers 403 while it is absent.
    #[serde(deserialize_with = "optional_secret")]
    pub secret: Option<Secret>,
    /// Largest event accepted, in bytes (datagrams are further capped at 64 KiB, Cyrus's own
    /// limit).
    pub max_event_bytes: usize,
}

/// Where mailpush keeps its files.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Folder for the generated token secret and the embedded SQLite database.
    pub data_dir: PathBuf,
}

/// The database used by the device registry and the job queue.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite:` or `postgres://` URL; default: `sqlite://<data_dir>/mailpush.db`.
    pub url: Option<DatabaseUrl>,
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

/// A value that must never reach a log or the terminal; it prints as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// A database URL; it prints with its password replaced by `<redacted>`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

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
            secret: None,
            max_event_bytes: 1 << 20,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("data"),
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

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that needs it (signing, comparing, connecting).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    /// Accepts numbers too: an environment value like `123456` parses as a TOML integer.
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Integer(i64),
        }
        Ok(match Raw::deserialize(de)? {
            Raw::Text(text) => Secret(text),
            Raw::Integer(n) => Secret(n.to_string()),
        })
    }
}

impl DatabaseUrl {
    /// The URL with its password, for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url_password(&self.0))
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&redact_url_password(&self.0))
    }
}

impl Config {
    /// Builds the effective configuration: defaults, then the TOML text, then `MAILPUSH_*`
    /// pairs (taken as an iterator so tests never touch the process environment), validated.
    pub fn load(
        toml_text: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut tree = match toml_text {
            Some(text) => toml::from_str::<toml::Table>(text).map_err(|err| ConfigError {
                key: "(file)".into(),
                reason: err.message().to_owned(),
            })?,
            None => toml::Table::new(),
        };
        overlay_env(&mut tree, env)?;
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(tree)).map_err(|err| {
                ConfigError {
                    key: err.path().to_string(),
                    reason: err.inner().to_string(),
                }
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads the file (if any) and the process environment.
    pub fn load_file(path: Option<&Path>) -> Result<Config, ConfigError> {
        let text = match path {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|err| ConfigError {
                key: "(file)".into(),
                reason: format!("cannot read {}: {err}", path.display()),
            })?),
            None => None,
        };
        Config::load(text.as_deref(), std::env::vars())
    }

    /// The database URL, defaulting to a SQLite file in the data dir.
    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(url) => url.expose().to_owned(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.storage.data_dir.join("mailpush.db").display()
            ),
        }
    }

    /// The socket file mode as a number; validated at load.
    pub fn socket_mode(&self) -> u32 {
        u32::from_str_radix(&self.ingest.cyrus_socket_mode, 8).unwrap_or(0o660)
    }

    /// Checks what types cannot: ranges, formats and relations between keys.
    fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, reason: &str| {
            Err(ConfigError {
                key: key.into(),
                reason: reason.into(),
            })
        };
        if self.http.keepalive_secs == 0 || self.http.keepalive_secs > 3600 {
            return fail("http.keepalive_secs", "must be between 1 and 3600");
        }
        if self.http.max_connections == 0 {
            return fail("http.max_connections", "must be at least 1");
        }
        if self.http.max_connections_per_user == 0 {
            return fail("http.max_connections_per_user", "must be at least 1");
        }
        if self.http.max_body_bytes < 1024 {
            return fail("http.max_body_bytes", "must be at least 1024");
        }
        match u32::from_str_radix(&self.ingest.cyrus_socket_mode, 8) {
            Ok(mode) if mode <= 0o777 => {}
            _ => {
                return fail(
                    "ingest.cyrus_socket_mode",
                    "must be an octal mode such as \"0660\"",
                );
            }
        }
        if !(1024..=64 << 20).contains(&self.ingest.max_event_bytes) {
            return fail(
                "ingest.max_event_bytes",
                "must be between 1024 and 67108864",
            );
        }
        let sockets = self
            .ingest
            .cyrus_socket
            .iter()
            .chain(&self.ingest.cyrus_dlist_socket);
        for path in sockets {
            // sun_path holds 108 bytes including the final NUL.
            if path.as_os_str().len() >= 108 {
                let key = if Some(path) == self.ingest.cyrus_dlist_socket.as_ref() {
                    "ingest.cyrus_dlist_socket"
                } else {
                    "ingest.cyrus_socket"
                };
                return fail(key, "socket path must be shorter than 108 bytes");
            }
        }
        if let Some(secret) = &self.ingest.secret
            && secret.expose().len() < 16
        {
            return fail("ingest.secret", "must be at least 16 characters");
        }
        if let Some(secret) = &self.auth.secret
            && secret.expose().len() < 16
        {
            return fail("auth.secret", "must be at least 16 characters");
        }
        if self.auth.cookie_name.is_empty()
            || !self
                .auth
                .cookie_name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"=;,".contains(&b))
        {
            return fail(
                "auth.cookie_name",
                "must be a cookie name (visible ASCII, no = ; ,)",
            );
        }
        if let Some(url) = &self.database.url {
            let url = url.expose();
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
            {
                return fail(
                    "database.url",
                    "must start with sqlite:, postgres:// or postgresql://",
                );
            }
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return fail(
                "log.level",
                "is not a tracing filter such as \"info\" or \"mailpush=debug\"",
            );
        }
        Ok(())
    }

    /// The effective configuration as TOML, secrets shown as `<redacted>`.
    pub fn to_redacted_toml(&self) -> String {
        let mut text =
            toml::to_string(self).unwrap_or_else(|err| format!("# cannot render: {err}\n"));
        if self.database.url.is_none() {
            text.push_str(&format!(
                "\n# database.url defaults to {}\n",
                self.database_url()
            ));
        }
        text
    }
}

/// Applies `MAILPUSH_SECTION__KEY=value` pairs. A value that reads as a TOML number, boolean or
/// array takes that type; anything else is a string, so paths and addresses need no quotes.
fn overlay_env(
    tree: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, value) in env {
        let Some(path) = name.strip_prefix("MAILPUSH_") else {
            continue;
        };
        // MAILPUSH_CONFIG names the file and is not a key.
        if path == "CONFIG" {
            continue;
        }
        let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        if keys.len() < 2 || keys.iter().any(String::is_empty) {
            return Err(ConfigError {
                key: name.clone(),
                reason: "environment keys look like MAILPUSH_<SECTION>__<KEY>".into(),
            });
        }
        let mut table = &mut *tree;
        for section in &keys[..keys.len() - 1] {
            let entry = table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = match entry {
                toml::Value::Table(inner) => inner,
                _ => {
                    return Err(ConfigError {
                        key: keys.join("."),
                        reason: format!("{section} is not a section"),
                    });
                }
            };
        }
        table.insert(keys[keys.len() - 1].clone(), env_value(&value));
    }
    Ok(())
}

fn env_value(text: &str) -> toml::Value {
    let parsed = toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut table| table.remove("v"));
    match parsed {
        Some(
            value @ (toml::Value::Integer(_)
            | toml::Value::Float(_)
            | toml::Value::Boolean(_)
            | toml::Value::Array(_)),
        ) => value,
        _ => toml::Value::String(text.to_owned()),
    }
}

/// An empty secret means "not set", so `MAILPUSH_INGEST__SECRET=` turns a secret off.
fn optional_secret<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Secret>, D::Error> {
    let secret = Option::<Secret>::deserialize(de)?;
    Ok(secret.filter(|secret| !secret.expose().is_empty()))
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

fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest
        .split_once('/')
        .map_or((rest, None), |(a, t)| (a, Some(t)));
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let Some((user, _password)) = userinfo.split_once(':') else {
        return url.to_owned();
    };
    let mut shown = format!("{scheme}://{user}:<redacted>@{host}");
    if let Some(tail) = tail {
        shown.push('/');
        shown.push_str(tail);
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn check_err(toml: Option<&str>, pairs: &[(&str, &str)], key: &str) {
        let err = Config::load(toml, env(pairs)).expect_err("config should be rejected");
        assert_eq!(err.key, key, "{err}");
    }

    #[test]
    fn defaults() {
        let config = Config::load(None, Vec::new()).unwrap();
        assert_eq!(config.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            config.ingest.cyrus_socket,
            [PathBuf::from("run/notify.sock")]
        );
        assert_eq!(config.storage.data_dir, PathBuf::from("data"));
        assert_eq!(config.database_url(), "sqlite://data/mailpush.db?mode=rwc");
        assert_eq!(config.socket_mode(), 0o660);
        assert!(config.auth.secret.is_none());
    }

    #[test]
    fn toml_then_env() {
        let toml = r#"
            [http]
            listen = "127.0.0.1:9000"
            keepalive_secs = 10
            [ingest]
            cyrus_socket = ["/run/a.sock", "/run/b.sock"]
        "#;
        let config = Config::load(
            Some(toml),
            env(&[
                ("MAILPUSH_HTTP__LISTEN", "127.0.0.1:9001"),
                ("MAILPUSH_INGEST__CYRUS_SOCKET_MODE", "0666"),
                ("MAILPUSH_INGEST__SECRET", "12345678901234567890"),
                ("MAILPUSH_AUTH__SECRET", "a-secret-of-enough-length"),
                ("MAILPUSH_HTTP__MAX_CONNECTIONS_PER_USER", "3"),
                ("MAILPUSH_CONFIG", "ignored.toml"),
                ("OTHER_VAR", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(config.http.listen.port(), 9001);
        assert_eq!(config.http.keepalive_secs, 10);
        assert_eq!(config.http.max_connections_per_user, 3);
        assert_eq!(config.ingest.cyrus_socket.len(), 2);
        assert_eq!(config.socket_mode(), 0o666);
        assert_eq!(
            config.ingest.secret.unwrap().expose(),
            "12345678901234567890"
        );
        assert_eq!(
            config.auth.secret.unwrap().expose(),
            "a-secret-of-enough-length"
        );
    }

    #[test]
    fn single_socket_from_env_and_empty_disables() {
        let config = Config::load(
            None,
            env(&[("MAILPUSH_INGEST__CYRUS_SOCKET", "/tmp/x.sock")]),
        )
        .unwrap();
        assert_eq!(config.ingest.cyrus_socket, [PathBuf::from("/tmp/x.sock")]);
        let config = Config::load(None, env(&[("MAILPUSH_INGEST__CYRUS_SOCKET", "")])).unwrap();
        assert!(config.ingest.cyrus_socket.is_empty());
    }

    #[test]
    fn errors_name_the_key() {
        check_err(Some("[http]\nlisten = \"nowhere\""), &[], "http.listen");
        check_err(Some("[http]\nlisen = \"127.0.0.1:1\""), &[], "http.lisen");
        check_err(Some("[nope]\nx = 1"), &[], "nope");
        check_err(Some("[http"), &[], "(file)");
        check_err(
            None,
            &[("MAILPUSH_HTTP__KEEPALIVE_SECS", "0")],
            "http.keepalive_secs",
        );
        check_err(
            None,
            &[("MAILPUSH_HTTP__KEEPALIVE_SECS", "soon")],
            "http.keepalive_secs",
        );
        check_err(
            None,
            &[("MAILPUSH_INGEST__CYRUS_SOCKET_MODE", "rw")],
            "ingest.cyrus_socket_mode",
        );
        check_err(
            None,
            &[("MAILPUSH_INGEST__SECRET", "short")],
            "ingest.secret",
        );
        check_err(None, &[("MAILPUSH_AUTH__SECRET", "short")], "auth.secret");
        check_err(
            None,
            &[("MAILPUSH_DATABASE__URL", "mysql://x")],
            "database.url",
        );
        check_err(None, &[("MAILPUSH_LOG__FORMAT", "xml")], "log.format");
        check_err(None, &[("MAILPUSH_LOG__LEVEL", "[[[")], "log.level");
        check_err(None, &[("MAILPUSH_HTTP", "x")], "MAILPUSH_HTTP");
        check_err(
            None,
            &[("MAILPUSH_INGEST__CYRUS_SOCKET", &"x".repeat(120))],
            "ingest.cyrus_socket",
        );
    }

    #[test]
    fn redacted_output() {
        let config = Config::load(
            None,
            env(&[
                ("MAILPUSH_AUTH__SECRET", "top-secret-value-123"),
                (
                    "MAILPUSH_DATABASE__URL",
                    "postgres://push:hunter2hunter2@db/mailpush",
                ),
            ]),
        )
        .unwrap();
        let text = config.to_redacted_toml();
        assert!(!text.contains("top-secret-value-123"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains("postgres://push:<redacted>@db/mailpush"),
            "{text}"
        );
        assert!(text.contains("<redacted>"));
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("top-secret") && !debug.contains("hunter2"),
            "{debug}"
        );
    }
}
