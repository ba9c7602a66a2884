//! `[cluster]`: several mailpush nodes serving the same users, on NATS JetStream (users' states
//! and their fan-out) and a shared PostgreSQL (devices, users, jobs). Off until `nats_url` is
//! set: one node on its own needs neither.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Secret, SecretUrl, optional_secret};

/// How this node reaches NATS, and what it calls itself there.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `nats://host:4222`, or several servers separated by commas (`user:password@` and
    /// `tls://` as async-nats takes them). Absent: this node is alone, and NATS is not used.
    pub nats_url: Option<SecretUrl>,
    /// This node's name in logs and on the NATS server; default: the host name.
    pub node_id: Option<String>,
    /// The first token of every subject mailpush uses and the start of its bucket's name
    /// (`<prefix>_states`), so that several deployments can share one NATS account.
    pub prefix: String,
    /// A NATS credentials file (`.creds`: a user JWT and its nkey seed).
    pub credentials_file: Option<PathBuf>,
    /// A NATS authentication token.
    #[serde(deserialize_with = "optional_secret")]
    pub token: Option<Secret>,
    /// A CA certificate (PEM) to trust for the NATS server's TLS certificate.
    pub tls_ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM), for servers that verify clients.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Refuse a server that does not offer TLS.
    pub tls_required: bool,
    /// How long a state read or write, a subscription or a flush may take before it counts as
    /// failed, in milliseconds; a stream's opening waits at most this for NATS.
    pub request_timeout_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats_url: None,
            node_id: None,
            prefix: "mailpush".into(),
            credentials_file: None,
            token: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
            request_timeout_ms: 2_000,
        }
    }
}

impl ClusterConfig {
    /// Whether this node is part of a cluster.
    pub fn enabled(&self) -> bool {
        self.nats_url.is_some()
    }

    /// This node's name: `node_id`, else the host name.
    pub fn node_name(&self) -> String {
        self.node_id.clone().unwrap_or_else(|| {
            rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned()
        })
    }

    /// Checks the section; `database_is_shared` says whether `database.url` is PostgreSQL.
    pub(super) fn validate(&self, database_is_shared: bool) -> Result<(), ConfigError> {
        let fail = |key: &str, reason: &str| {
            Err(ConfigError {
                key: format!("cluster.{key}"),
                reason: reason.into(),
            })
        };
        let valid_token = |text: &str| {
            !text.is_empty()
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !valid_token(&self.prefix) || self.prefix.len() > 32 {
            return fail(
                "prefix",
                "must be 1 to 32 letters, digits, `_` or `-` (a subject token and a bucket name)",
            );
        }
        if let Some(node) = &self.node_id
            && (node.is_empty() || node.len() > 64 || !node.bytes().all(|b| b.is_ascii_graphic()))
        {
            return fail("node_id", "must be 1 to 64 visible ASCII characters");
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return fail(
                "tls_cert_file",
                "needs tls_key_file, and tls_key_file needs tls_cert_file",
            );
        }
        if !(100..=60_000).contains(&self.request_timeout_ms) {
            return fail("request_timeout_ms", "must be between 100 and 60000");
        }
        if self.enabled() && !database_is_shared {
            return fail(
                "nats_url",
                "needs database.url on PostgreSQL: the nodes share devices, users and jobs",
            );
        }
        Ok(())
    }
}
