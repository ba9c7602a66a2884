//! Client tokens: minting and verifying the JWTs that open EventSource streams.
//!
//! The only module that sees the token secret. A token is a JWT whose `sub` is the user id and
//! whose `exp` is required, so a provider's own login service can mint tokens without asking
//! mailpush. HS256 tokens are checked with `auth.secret` (generated on first start when not
//! configured); RS256/ES256 tokens with the configured public key.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id the token speaks for.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Operators' tokens may open the status page and admin endpoints.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

/// Why a request is not authenticated; each maps to a stable error code for clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token: send Authorization: Bearer <token>, a cookie or ?access_token=")]
    Missing,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("token is not valid")]
    Invalid,
}

impl AuthError {
    /// The stable `code` in the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::Invalid => "token_invalid",
        }
    }
}

/// The keys tokens are signed and checked with.
pub struct TokenKeys {
    secret_encoding: EncodingKey,
    secret_decoding: DecodingKey,
    public: Option<(DecodingKey, Algorithm)>,
}

/// The file, inside the data dir, that holds a generated HS256 secret.
pub const SECRET_FILE: &str = "auth.secret";

impl TokenKeys {
    /// Loads the configured keys, or the secret kept in the data dir, generating it (mode 0600)
    /// on first use so `mailpush token` and `mailpush serve` agree without configuration.
    pub fn load(config: &AuthConfig, data_dir: &Path) -> anyhow::Result<TokenKeys> {
        let secret = match &config.secret {
            Some(secret) => secret.expose().as_bytes().to_vec(),
            None => load_or_generate_secret(&data_dir.join(SECRET_FILE))?,
        };
        let public = match &config.public_key_file {
            Some(path) => Some(load_public_key(path)?),
            None => None,
        };
        Ok(TokenKeys {
            secret_encoding: EncodingKey::from_secret(&secret).context("unusable token secret")?,
            secret_decoding: DecodingKey::from_secret(&secret).context("unusable token secret")?,
            public,
        })
    }

    /// Mints an HS256 token for `user`, valid for `ttl_secs`.
    pub fn mint(&self, user: &str, ttl_secs: u64, admin: bool) -> anyhow::Result<String> {
        let now = unix_now();
        let claims = Claims {
            sub: user.to_owned(),
            exp: now + ttl_secs,
            iat: Some(now),
            admin,
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.secret_encoding,
        )
        .context("cannot sign token")
    }

    /// Verifies signature, algorithm, `exp`, `nbf` when present, and a non-empty `sub`.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let key = match (header.alg, &self.public) {
            (Algorithm::HS256, _) => &self.secret_decoding,
            (alg, Some((key, public_alg))) if alg == *public_alg => key,
            _ => return Err(AuthError::Invalid),
        };
        let mut validation = Validation::new(header.alg);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // A token minted for later (`nbf`) is refused until then, with the same leeway.
        validation.validate_nbf = true;
        validation.leeway = 30;
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|err| {
                match err.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                    jsonwebtoken::errors::ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                    _ => AuthError::Invalid,
                }
            })?;
        if data.claims.sub.is_empty() {
            return Err(AuthError::Invalid);
        }
        Ok(data.claims)
    }
}

fn load_or_generate_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    match fs::read_to_string(path) {
        Ok(text) => {
            crate::files::warn_if_readable_by_others(path, "token secret");
            let secret = text.trim();
            anyhow::ensure!(
                secret.len() >= 16,
                "{} holds a secret shorter than 16 characters",
                path.display()
            );
            return Ok(secret.as_bytes().to_vec());
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    }
    let mut random = [0u8; 32];
    getrandom::fill(&mut random)
        .map_err(|err| anyhow::anyhow!("no randomness for the token secret: {err}"))?;
    let secret: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let created = crate::files::create_secret(path, secret.as_bytes())
        .with_context(|| format!("cannot create {}", path.display()))?;
    if !created {
        // Another process created it between our read and create: use theirs.
        return load_or_generate_secret(path);
    }
    tracing::info!(path = %path.display(), "generated a new token secret");
    Ok(secret.into_bytes())
}

fn load_public_key(path: &PathBuf) -> anyhow::Result<(DecodingKey, Algorithm)> {
    let pem = fs::read(path)
        .with_context(|| format!("cannot read auth.public_key_file {}", path.display()))?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((key, Algorithm::RS256));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok((key, Algorithm::ES256));
    }
    anyhow::bail!(
        "auth.public_key_file {} is not an RSA or EC public key in PEM",
        path.display()
    )
}

/// Seconds since the Unix epoch; the clock is only read to stamp and check tokens.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::config::Secret;

    fn keys(secret: &str) -> TokenKeys {
        let config = AuthConfig {
            secret: Some(Secret::new(secret)),
            ..AuthConfig::default()
        };
        TokenKeys::load(&config, Path::new("/nonexistent")).unwrap()
    }

    #[test]
    fn mint_then_verify() {
        let keys = keys("0123456789abcdef0123");
        let token = keys.mint("alice", 60, false).unwrap();
        let claims = keys.verify(&token).unwrap();
        assert_eq!(claims.sub, "alice");
        assert!(!claims.admin);
    }

    #[test]
    fn rejects_forged_expired_and_odd_tokens() {
        let keys_a = keys("0123456789abcdef0123");
        let keys_b = keys("another-secret-of-20");
        let forged = keys_b.mint("alice", 60, false).unwrap();
        assert_eq!(keys_a.verify(&forged), Err(AuthError::Invalid));
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "alice".into(),
                exp: unix_now() - 3600,
                iat: None,
                admin: false,
            },
            &EncodingKey::from_secret(b"0123456789abcdef0123").unwrap(),
        )
        .unwrap();
        assert_eq!(keys_a.verify(&expired), Err(AuthError::Expired));
        assert_eq!(keys_a.verify("not.a.jwt"), Err(AuthError::Invalid));
        assert_eq!(keys_a.verify(""), Err(AuthError::Invalid));
        let no_exp = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "alice"}),
            &EncodingKey::from_secret(b"0123456789abcdef0123").unwrap(),
        )
        .unwrap();
        assert_eq!(keys_a.verify(&no_exp), Err(AuthError::Invalid));
        let empty_sub = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "", "exp": unix_now() + 60}),
            &EncodingKey::from_secret(b"0123456789abcdef0123").unwrap(),
        )
        .unwrap();
        assert_eq!(keys_a.verify(&empty_sub), Err(AuthError::Invalid));
        let later = |nbf: u64| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &serde_json::json!({"sub": "alice", "exp": unix_now() + 7200, "nbf": nbf}),
                &EncodingKey::from_secret(b"0123456789abcdef0123").unwrap(),
            )
            .unwrap()
        };
        assert_eq!(
            keys_a.verify(&later(unix_now() + 3600)),
            Err(AuthError::NotYetValid)
        );
        assert!(keys_a.verify(&later(unix_now() - 10)).is_ok());
    }

    /// A login service's keys, generated at test time: ES256 and RS256 tokens verify with the
    /// public key alone, other keys and other algorithms do not, and HS256 keeps working.
    #[test]
    fn public_key_tokens() {
        let cases = [
            (Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256),
            (Algorithm::RS256, &rcgen::PKCS_RSA_SHA256),
        ];
        for (algorithm, generator) in cases {
            let login_key = rcgen::KeyPair::generate_for(generator).unwrap();
            let other_key = rcgen::KeyPair::generate_for(generator).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let public_pem = dir.path().join("login.pub.pem");
            fs::write(&public_pem, login_key.public_key_pem()).unwrap();
            let config = AuthConfig {
                secret: Some(Secret::new("0123456789abcdef0123")),
                public_key_file: Some(public_pem),
                ..AuthConfig::default()
            };
            let keys = TokenKeys::load(&config, dir.path()).unwrap();
            let sign = |key: &rcgen::KeyPair| {
                let pem = key.serialize_pem();
                let encoding = match algorithm {
                    Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
                    _ => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
                };
                let claims = Claims {
                    sub: "alice".into(),
                    exp: unix_now() + 60,
                    iat: None,
                    admin: false,
                };
                jsonwebtoken::encode(&Header::new(algorithm), &claims, &encoding).unwrap()
            };
            assert_eq!(
                keys.verify(&sign(&login_key)).unwrap().sub,
                "alice",
                "{algorithm:?}"
            );
            assert_eq!(
                keys.verify(&sign(&other_key)),
                Err(AuthError::Invalid),
                "{algorithm:?}"
            );
            assert_eq!(
                keys.verify(&keys.mint("bob", 60, false).unwrap())
                    .unwrap()
                    .sub,
                "bob"
            );
        }
    }

    #[test]
    fn public_key_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-a-key.pem");
        fs::write(&path, "hello").unwrap();
        let config = AuthConfig {
            public_key_file: Some(path),
            ..AuthConfig::default()
        };
        let err = TokenKeys::load(&config, dir.path()).err().unwrap();
        assert!(err.to_string().contains("not-a-key.pem"), "{err}");
    }

    #[test]
    fn generated_secret_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuthConfig::default();
        let first = TokenKeys::load(&config, dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(SECRET_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let token = first.mint("bob", 60, false).unwrap();
        let second = TokenKeys::load(&config, dir.path()).unwrap();
        assert_eq!(second.verify(&token).unwrap().sub, "bob");
    }
}
