//! `notify.smtp.url`, read as lettre reads it: `smtp://host:port` (plain),
//! `smtp://host?tls=required` or `?tls=opportunistic` (STARTTLS), `smtps://host` (implicit
//! TLS, port 465 by default), `user:password@` for AUTH PLAIN/LOGIN, and a path naming the
//! EHLO host.

use std::borrow::Cow;

use anyhow::{Context as _, bail};
use percent_encoding::percent_decode_str;

/// How a connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Security {
    Plain,
    /// STARTTLS; `required` refuses a relay that does not offer it.
    StartTls {
        required: bool,
    },
    /// TLS from the first byte (`smtps://`).
    Implicit,
}

/// The relay of `notify.smtp.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) security: Security,
    pub(super) credentials: Option<(String, String)>,
    pub(super) hello: Option<String>,
}

/// Reads `notify.smtp.url`.
pub(super) fn parse_url(text: &str) -> anyhow::Result<Target> {
    let url = reqwest::Url::parse(text).context("not a URL")?;
    let host = url
        .host_str()
        .filter(|host| !host.is_empty())
        .context("no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tls = url
        .query_pairs()
        .find(|(key, _)| key == "tls")
        .map(|(_, value)| value.into_owned());
    let (security, default_port) = match (url.scheme(), tls.as_deref()) {
        ("smtp", None) => (Security::Plain, 25),
        ("smtp", Some("required")) => (Security::StartTls { required: true }, 587),
        ("smtp", Some("opportunistic")) => (Security::StartTls { required: false }, 587),
        ("smtps", _) => (Security::Implicit, 465),
        (scheme, tls) => bail!("unknown scheme {scheme:?} or tls={tls:?}"),
    };
    let decode = |part: &str| -> anyhow::Result<String> {
        percent_decode_str(part)
            .decode_utf8()
            .map(Cow::into_owned)
            .context("credentials are not UTF-8")
    };
    let credentials = match url.password() {
        Some(password) => Some((decode(url.username())?, decode(password)?)),
        None => None,
    };
    let path = url.path().trim_matches('/');
    Ok(Target {
        host,
        port: url.port().unwrap_or(default_port),
        security,
        credentials,
        hello: (!path.is_empty()).then(|| path.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_read_as_lettre_reads_them() {
        let plain = parse_url("smtp://127.0.0.1:2525").unwrap();
        assert_eq!(
            (plain.host.as_str(), plain.port, plain.security),
            ("127.0.0.1", 2525, Security::Plain)
        );
        assert_eq!(plain.credentials, None);
        assert_eq!(parse_url("smtp://relay.example.com").unwrap().port, 25);

        let starttls =
            parse_url("smtp://me%40x.test:p%3Ass@relay.example.com?tls=required").unwrap();
        assert_eq!(starttls.port, 587);
        assert_eq!(starttls.security, Security::StartTls { required: true });
        assert_eq!(
            starttls.credentials,
            Some(("me@x.test".to_owned(), "p:ss".to_owned()))
        );
        assert_eq!(
            parse_url("smtp://relay.example.com?tls=opportunistic")
                .unwrap()
                .security,
            Security::StartTls { required: false }
        );

        let implicit = parse_url("smtps://relay.example.com/client.example.com").unwrap();
        assert_eq!(
            (implicit.port, implicit.security),
            (465, Security::Implicit)
        );
        assert_eq!(implicit.hello.as_deref(), Some("client.example.com"));
        assert_eq!(parse_url("smtp://[::1]:25").unwrap().host, "::1");

        for bad in [
            "http://relay",
            "smtp://relay?tls=sometimes",
            "relay:25",
            "smtp://",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
