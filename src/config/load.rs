//! Building the effective [`Config`]: defaults, TOML, then `MAILPUSH_*` pairs, then the
//! checks of [`super::validate`].

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
    use crate::config::test_env as env;
    use std::path::PathBuf;

    use super::*;

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
