//! Building the effective [`Config`]: defaults, TOML, then `MAILPUSH_*` pairs, then checks
//! that types cannot express.

use std::path::{Path, PathBuf};

use super::{Config, ConfigError};

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
            None => format!("sqlite://{}", self.default_database_file().display()),
        }
    }

    /// The SQLite file used when `database.url` is not set.
    pub fn default_database_file(&self) -> PathBuf {
        self.storage.data_dir.join("mailpush.db")
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
        if let Some(origin) = self.http.cors_origins.iter().find(|o| !valid_origin(o)) {
            return fail(
                "http.cors_origins",
                &format!(
                    "{origin:?} is not \"*\" or an origin such as \"https://app.example.com\""
                ),
            );
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
        let push = &self.push;
        for (key, value) in [
            (
                "push.max_devices_per_user",
                push.max_devices_per_user as u64,
            ),
            ("push.queue_capacity", push.queue_capacity as u64),
            ("push.max_in_flight", push.max_in_flight as u64),
            ("push.request_timeout_ms", push.request_timeout_ms),
            ("push.max_attempts", u64::from(push.max_attempts)),
            ("push.breaker_threshold", u64::from(push.breaker_threshold)),
        ] {
            if value == 0 {
                return fail(key, "must be at least 1");
            }
        }
        for (name, apns) in &push.apns {
            for (field, url) in [
                ("base_url", &apns.base_url),
                ("sandbox_base_url", &apns.sandbox_base_url),
            ] {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return fail(
                        &format!("push.apns.{name}.{field}"),
                        "must be an http(s) URL",
                    );
                }
            }
            if apns.key_id.len() != 10 || apns.team_id.len() != 10 {
                let key = if apns.key_id.len() != 10 {
                    "key_id"
                } else {
                    "team_id"
                };
                return fail(
                    &format!("push.apns.{name}.{key}"),
                    "must be the 10-character id from Apple",
                );
            }
        }
        let notify = &self.notify;
        for (key, value) in [
            ("notify.workers", notify.workers as u64),
            ("notify.max_attempts", u64::from(notify.max_attempts)),
            ("notify.lease_secs", notify.lease_secs),
            ("notify.queue_capacity", notify.queue_capacity as u64),
        ] {
            if value == 0 {
                return fail(key, "must be at least 1");
            }
        }
        if notify.from.parse::<lettre::message::Mailbox>().is_err() {
            return fail("notify.from", "must be an email address");
        }
        if let Some(header) = &notify.sms.auth_header
            && !header.expose().contains(':')
        {
            return fail("notify.sms.auth_header", "must look like `Name: value`");
        }
        for (name, fcm) in &push.fcm {
            if !(fcm.base_url.starts_with("https://") || fcm.base_url.starts_with("http://")) {
                return fail(
                    &format!("push.fcm.{name}.base_url"),
                    "must be an http(s) URL",
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

/// `*`, or `http(s)://host[:port]` as a browser sends it in `Origin` (no path, no slash).
fn valid_origin(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    let Some(host) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return false;
    };
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
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
        // Variables without a section (MAILPUSH_BIN, MAILPUSH_ARGS in scripts) are not keys.
        if !path.contains("__") {
            continue;
        }
        let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        if keys.iter().any(String::is_empty) {
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

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
        assert_eq!(config.database_url(), "sqlite://data/mailpush.db");
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
        check_err(
            Some("[http]\ncors_origins = [\"https://app.example.com/\"]"),
            &[],
            "http.cors_origins",
        );
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
        check_err(
            None,
            &[("MAILPUSH_HTTP____LISTEN", "x")],
            "MAILPUSH_HTTP____LISTEN",
        );
        check_err(None, &[("MAILPUSH_HTTPX__LISTEN", "x")], "httpx");
        // Variables that name no section belong to scripts around mailpush.
        assert!(
            Config::load(
                None,
                env(&[("MAILPUSH_BIN", "/usr/bin/mailpush"), ("MAILPUSH_ARGS", "")])
            )
            .is_ok()
        );
        check_err(
            None,
            &[("MAILPUSH_PUSH__MAX_ATTEMPTS", "0")],
            "push.max_attempts",
        );
        let apns = |key: &str, value: &str| {
            let mut pairs = vec![
                ("MAILPUSH_PUSH__APNS__MAIN__KEY_FILE", "k.p8"),
                ("MAILPUSH_PUSH__APNS__MAIN__KEY_ID", "KEYID12345"),
                ("MAILPUSH_PUSH__APNS__MAIN__TEAM_ID", "TEAMID6789"),
                ("MAILPUSH_PUSH__APNS__MAIN__TOPIC", "com.example.mail"),
            ];
            pairs.retain(|(k, _)| *k != key);
            pairs.push((key, value));
            env(&pairs)
        };
        assert!(
            Config::load(
                None,
                apns("MAILPUSH_PUSH__APNS__MAIN__TOPIC", "com.example.mail")
            )
            .is_ok()
        );
        let err =
            Config::load(None, apns("MAILPUSH_PUSH__APNS__MAIN__KEY_ID", "short")).unwrap_err();
        assert_eq!(err.key, "push.apns.main.key_id");
        let err = Config::load(
            None,
            apns("MAILPUSH_PUSH__APNS__MAIN__BASE_URL", "api.push.apple.com"),
        )
        .unwrap_err();
        assert_eq!(err.key, "push.apns.main.base_url");
        let mut missing = apns("MAILPUSH_PUSH__APNS__MAIN__TOPIC", "x");
        missing.retain(|(k, _)| k != "MAILPUSH_PUSH__APNS__MAIN__TEAM_ID");
        let err = Config::load(None, missing).unwrap_err();
        assert_eq!(err.key, "push.apns.main", "{err}");
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
