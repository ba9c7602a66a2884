//! VAPID (RFC 8292): mailpush's one long-lived P-256 key pair, which browsers subscribe with
//! (`applicationServerKey`) and which signs a short JWT per push service.
//!
//! The key is generated on first start into the data dir (mode 0600) and read back after.
//! Every subscription is bound to it: a new key makes push services refuse (403) every
//! subscription made with the old one, so it is never replaced silently. Tokens are cached per
//! origin and minted again an hour before they expire.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context as _;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// How long a token is valid (RFC 8292 allows at most 24 hours).
const TOKEN_LIFETIME_SECS: u64 = 12 * 3600;
/// A cached token is minted again when it has less than this left.
const RENEW_BEFORE_SECS: u64 = 3600;
/// Origins whose token is kept; past this the cache starts again (push services are few).
const MAX_CACHED_ORIGINS: usize = 1024;

/// The key pair and the tokens it signed.
pub struct Vapid {
    key: EcdsaKeyPair,
    /// The public key, base64url: the `applicationServerKey` and the `k` of each request.
    public_key: String,
    subject: Option<String>,
    tokens: Mutex<HashMap<String, Token>>,
}

struct Token {
    jwt: String,
    expires: u64,
}

impl Vapid {
    /// Reads the key pair at `path`, or makes one there when the file does not exist.
    pub fn load_or_generate(path: &Path, subject: Option<String>) -> anyhow::Result<Vapid> {
        let der = match fs::read_to_string(path) {
            Ok(pem) => {
                crate::files::warn_if_readable_by_others(path, "VAPID key");
                pem_to_der(&pem).with_context(|| format!("{} holds no PEM key", path.display()))?
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => generate(path)?,
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        Vapid::from_der(&der, subject)
            .with_context(|| format!("{} is not a P-256 private key", path.display()))
    }

    /// A key pair from PKCS#8 or SEC1 DER.
    pub fn from_der(der: &[u8], subject: Option<String>) -> anyhow::Result<Vapid> {
        let key = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|err| anyhow::anyhow!("{err}"))?;
        let public_key = URL_SAFE_NO_PAD.encode(key.public_key().as_ref());
        Ok(Vapid {
            key,
            public_key,
            subject,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The public key (65 bytes, uncompressed, base64url) that browsers subscribe with.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// The `Authorization` header for a push service at `origin` (`https://host[:port]`).
    pub fn authorization(&self, origin: &str, now: u64) -> anyhow::Result<String> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let cached = tokens
            .get(origin)
            .filter(|token| token.expires > now + RENEW_BEFORE_SECS);
        let jwt = match cached {
            Some(token) => token.jwt.clone(),
            None => {
                let expires = now + TOKEN_LIFETIME_SECS;
                let jwt = self.sign(origin, expires)?;
                if tokens.len() >= MAX_CACHED_ORIGINS {
                    tokens.clear();
                }
                tokens.insert(
                    origin.to_owned(),
                    Token {
                        jwt: jwt.clone(),
                        expires,
                    },
                );
                jwt
            }
        };
        Ok(format!("vapid t={jwt}, k={}", self.public_key))
    }

    /// An ES256 JWT for `aud`: the signature in JOSE form (`r‖s`), which the FIXED signing
    /// algorithm gives directly.
    fn sign(&self, aud: &str, expires: u64) -> anyhow::Result<String> {
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let mut claims = serde_json::json!({"aud": aud, "exp": expires});
        if let Some(subject) = &self.subject {
            claims["sub"] = subject.clone().into();
        }
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{claims}");
        let signature = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| anyhow::anyhow!("cannot sign the VAPID token"))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}

/// Makes a key pair and writes it as PKCS#8 PEM, readable by the owner only.
fn generate(path: &Path) -> anyhow::Result<Vec<u8>> {
    let document =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("cannot generate a VAPID key"))?;
    let der = document.as_ref().to_vec();
    let created = crate::files::create_secret(path, der_to_pem(&der).as_bytes())
        .with_context(|| format!("cannot create {}", path.display()))?;
    if !created {
        // Another process made it between our read and create: use theirs.
        let pem =
            fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        return pem_to_der(&pem).with_context(|| format!("{} holds no PEM key", path.display()));
    }
    tracing::info!(path = %path.display(), "generated a new VAPID key pair for Web Push");
    Ok(der)
}

fn der_to_pem(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

/// The DER inside the first PEM block (`PRIVATE KEY` or `EC PRIVATE KEY`).
fn pem_to_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|line| !line.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|line| !line.starts_with("-----END"))
        .collect();
    anyhow::ensure!(!body.is_empty(), "no PEM block");
    STANDARD.decode(body).context("the PEM block is not base64")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

    use super::*;

    fn claims(jwt: &str) -> serde_json::Value {
        let part = jwt.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn generated_once_kept_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/vapid.pem");
        let first = Vapid::load_or_generate(&path, None).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Vapid::load_or_generate(&path, None).unwrap();
        assert_eq!(first.public_key(), again.public_key());
        let raw = URL_SAFE_NO_PAD.decode(first.public_key()).unwrap();
        assert_eq!((raw.len(), raw[0]), (65, 4), "uncompressed P-256 point");
        fs::write(&path, "not a key").unwrap();
        assert!(Vapid::load_or_generate(&path, None).is_err());
    }

    #[test]
    fn tokens_are_signed_per_origin_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let vapid = Vapid::load_or_generate(
            &dir.path().join("vapid.pem"),
            Some("mailto:ops@example.org".into()),
        )
        .unwrap();
        let now = 1_800_000_000;
        let header = vapid.authorization("https://push.example", now).unwrap();
        let (jwt, k) = header
            .strip_prefix("vapid t=")
            .unwrap()
            .split_once(", k=")
            .unwrap();
        assert_eq!(k, vapid.public_key());
        let first = claims(jwt);
        assert_eq!(first["aud"], "https://push.example");
        assert_eq!(first["sub"], "mailto:ops@example.org");
        let exp = first["exp"].as_u64().unwrap();
        assert!(exp > now && exp <= now + 24 * 3600, "{exp}");
        // The signature verifies with the public key, in JOSE (r‖s) form.
        let (input, signature) = jwt.rsplit_once('.').unwrap();
        let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
        assert_eq!(signature.len(), 64);
        let public = URL_SAFE_NO_PAD.decode(vapid.public_key()).unwrap();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public)
            .verify(input.as_bytes(), &signature)
            .expect("signature verifies");
        // Cached until an hour before it expires, then minted again.
        assert_eq!(
            vapid
                .authorization("https://push.example", now + 60)
                .unwrap(),
            header
        );
        let later = exp - RENEW_BEFORE_SECS + 1;
        let renewed = vapid.authorization("https://push.example", later).unwrap();
        assert_ne!(renewed, header);
        let other = vapid.authorization("https://other.example", now).unwrap();
        assert_eq!(
            claims(&other[8..other.find(',').unwrap()])["aud"],
            "https://other.example"
        );
    }

    #[test]
    fn sec1_keys_as_openssl_writes_them_are_read() {
        // `openssl ecparam -name prime256v1 -genkey -noout` writes SEC1 (RFC 5915) DER under
        // `EC PRIVATE KEY`; it is the same key pair as the PKCS#8 form.
        use aws_lc_rs::encoding::{AsDer as _, EcPrivateKeyRfc5915Der};
        let document =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let pkcs8 = Vapid::from_der(document.as_ref(), None).unwrap();
        let sec1: EcPrivateKeyRfc5915Der = pkcs8.key.private_key().as_der().unwrap();
        let pem = format!(
            "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----\n",
            STANDARD.encode(sec1.as_ref())
        );
        let read = Vapid::from_der(&pem_to_der(&pem).unwrap(), None).unwrap();
        assert_eq!(read.public_key(), pkcs8.public_key());
        assert_eq!(
            pem_to_der(&der_to_pem(document.as_ref())).unwrap(),
            document.as_ref()
        );
    }
}
