//! The checks types cannot express: ranges, formats and relations between keys. Each failure
//! names the key, so `mailpush check-config` can say exactly what to fix.

use super::{Config, ConfigError};

impl Config {
    /// Checks what types cannot: ranges, formats and relations between keys.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, reason: &str| {
            Err(ConfigError {
                key: key.into(),
                reason: reason.into(),
            })
        };
        if self.http.keepalive_secs == 0 || self.http.keepalive_secs > 3600 {
            return fail("http.keepalive_secs", "must be between 1 and 3600");
        }
        if self.runtime.worker_threads > 1024 {
            return fail(
                "runtime.worker_threads",
                "must be between 0 (one per core) and 1024",
            );
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
        if self.ingest.ndjson_listen.is_some() && self.ingest.secret.is_none() {
            return fail(
                "ingest.ndjson_listen",
                "needs ingest.secret: NDJSON producers authenticate with it",
            );
        }
        if !(10..=1000).contains(&self.storage.state_flush_ms) {
            return fail(
                "storage.state_flush_ms",
                "must be 10 to 1000: states are written at least once a second",
            );
        }
        for (key, value) in [
            ("connections.idle_secs", self.connections.idle_secs),
            ("connections.request_secs", self.connections.request_secs),
            ("connections.backlog", u64::from(self.connections.backlog)),
            ("http.send_timeout_secs", self.http.send_timeout_secs),
            ("http.idle_user_secs", self.http.idle_user_secs),
        ] {
            if value == 0 {
                return fail(key, "must be at least 1");
            }
        }
        if self.ingest.ndjson_max_events_per_sec == 0 {
            return fail("ingest.ndjson_max_events_per_sec", "must be at least 1");
        }
        if let Some(secret) = &self.ingest.secret
            && secret.expose().len() < 16
        {
            return fail("ingest.secret", "must be at least 16 characters");
        }
        if let Some(token) = &self.http.metrics_token
            && token.expose().len() < 16
        {
            return fail("http.metrics_token", "must be at least 16 characters");
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
        let database_is_shared = self.database.url.as_ref().is_some_and(|url| {
            url.expose().starts_with("postgres://") || url.expose().starts_with("postgresql://")
        });
        self.cluster.validate(database_is_shared)?;
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
            (
                "push.max_per_device_per_minute",
                u64::from(push.max_per_device_per_minute),
            ),
            (
                "push.max_per_user_per_minute",
                u64::from(push.max_per_user_per_minute),
            ),
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
        let webpush = &push.webpush;
        if webpush.enabled {
            let subject = webpush.subject.as_deref().unwrap_or("");
            if !(subject.starts_with("mailto:") || subject.starts_with("https://")) {
                return fail(
                    "push.webpush.subject",
                    "must be a mailto: or https: contact for push services (required with Web Push on)",
                );
            }
            if self.cluster.enabled() && webpush.vapid_key_file.is_none() {
                return fail(
                    "push.webpush.vapid_key_file",
                    "must be set in a cluster: every node signs with the same VAPID key",
                );
            }
        }
        let notify = &self.notify;
        for (key, value) in [
            ("notify.workers", notify.workers as u64),
            ("notify.max_attempts", u64::from(notify.max_attempts)),
            ("notify.lease_secs", notify.lease_secs),
            ("notify.spool_max_bytes", notify.spool_max_bytes),
        ] {
            if value == 0 {
                return fail(key, "must be at least 1");
            }
        }
        if database_is_shared && self.database.max_connections == 0 {
            return fail("database.max_connections", "must be at least 1");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_env as env;

    fn check_err(toml: Option<&str>, pairs: &[(&str, &str)], key: &str) {
        let err = Config::load(toml, env(pairs)).expect_err("config should be rejected");
        assert_eq!(err.key, key, "{err}");
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
            &[("MAILPUSH_RUNTIME__WORKER_THREADS", "100000")],
            "runtime.worker_threads",
        );
        check_err(
            None,
            &[("MAILPUSH_DATABASE__URL", "mysql://x")],
            "database.url",
        );
        check_err(
            None,
            &[
                ("MAILPUSH_DATABASE__URL", "postgres://db/mailpush"),
                ("MAILPUSH_DATABASE__MAX_CONNECTIONS", "0"),
            ],
            "database.max_connections",
        );
        // The delivery records have a pool of their own, one connection per worker.
        assert!(
            Config::load(
                None,
                env(&[
                    ("MAILPUSH_DATABASE__URL", "postgres://db/mailpush"),
                    ("MAILPUSH_NOTIFY__WORKERS", "16"),
                ])
            )
            .is_ok()
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
    fn web_push_needs_a_contact_and_in_a_cluster_a_shared_key() {
        const ON: (&str, &str) = ("MAILPUSH_PUSH__WEBPUSH__ENABLED", "true");
        check_err(None, &[ON], "push.webpush.subject");
        check_err(
            None,
            &[ON, ("MAILPUSH_PUSH__WEBPUSH__SUBJECT", "ops@example.com")],
            "push.webpush.subject",
        );
        const SUBJECT: (&str, &str) = ("MAILPUSH_PUSH__WEBPUSH__SUBJECT", "mailto:ops@example.com");
        assert!(Config::load(None, env(&[ON, SUBJECT])).is_ok());
        let cluster = [
            ON,
            SUBJECT,
            ("MAILPUSH_DATABASE__URL", "postgres://db/mailpush"),
            ("MAILPUSH_CLUSTER__NATS_URL", "nats://127.0.0.1:4222"),
        ];
        check_err(None, &cluster, "push.webpush.vapid_key_file");
        let mut shared = cluster.to_vec();
        shared.push((
            "MAILPUSH_PUSH__WEBPUSH__VAPID_KEY_FILE",
            "/etc/mailpush/vapid.pem",
        ));
        assert!(Config::load(None, env(&shared)).is_ok());
        check_err(
            None,
            &[("MAILPUSH_PUSH__MAX_PER_DEVICE_PER_MINUTE", "0")],
            "push.max_per_device_per_minute",
        );
    }

    #[test]
    fn a_cluster_needs_a_shared_database_and_valid_names() {
        const PG: (&str, &str) = ("MAILPUSH_DATABASE__URL", "postgres://db/mailpush");
        const NATS: (&str, &str) = ("MAILPUSH_CLUSTER__NATS_URL", "nats://127.0.0.1:4222");
        check_err(None, &[NATS], "cluster.nats_url");
        check_err(
            None,
            &[NATS, ("MAILPUSH_DATABASE__URL", "sqlite://x.db")],
            "cluster.nats_url",
        );
        for prefix in ["", "a.b", "a*", "x y", &"p".repeat(33)] {
            check_err(
                None,
                &[PG, NATS, ("MAILPUSH_CLUSTER__PREFIX", prefix)],
                "cluster.prefix",
            );
        }
        check_err(
            None,
            &[PG, NATS, ("MAILPUSH_CLUSTER__NODE_ID", "a b")],
            "cluster.node_id",
        );
        check_err(
            None,
            &[PG, NATS, ("MAILPUSH_CLUSTER__TLS_CERT_FILE", "c.pem")],
            "cluster.tls_cert_file",
        );
        let config = Config::load(
            None,
            env(&[PG, NATS, ("MAILPUSH_CLUSTER__NODE_ID", "store-7")]),
        )
        .unwrap();
        assert!(config.cluster.enabled());
        assert_eq!(config.cluster.node_name(), "store-7");
        assert_eq!(config.cluster.prefix, "mailpush");
        let alone = Config::load(None, env(&[])).unwrap();
        assert!(!alone.cluster.enabled(), "off by default");
        assert!(!alone.cluster.node_name().is_empty(), "the host name");
    }
}
