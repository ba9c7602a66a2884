//! Values that must not reach a log, the terminal or `check-config`'s output: secrets print as
//! `<redacted>`, URLs with their password redacted, and a secret is compared in time that does
//! not depend on where it differs.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value that must never reach a log or the terminal; it prints as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// A URL that may hold a password (database, SMTP); it prints with the password redacted.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that needs it (signing, comparing, connecting).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is this secret, in time that does not depend on where they differ.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let secret = self.0.as_bytes();
        secret.len() == candidate.len()
            && secret
                .iter()
                .zip(candidate)
                .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                == 0
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

impl SecretUrl {
    /// The URL with its password, for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url_password(&self.0))
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&redact_url_password(&self.0))
    }
}

/// An empty secret means "not set", so `MAILPUSH_INGEST__SECRET=` turns a secret off.
pub(super) fn optional_secret<'de, D: Deserializer<'de>>(
    de: D,
) -> Result<Option<Secret>, D::Error> {
    let secret = Option::<Secret>::deserialize(de)?;
    Ok(secret.filter(|secret| !secret.expose().is_empty()))
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
