//! Message encryption for Web Push: RFC 8291 (the keys) over RFC 8188 (`aes128gcm`), with
//! aws-lc-rs, the crypto provider the rest of mailpush already uses.
//!
//! For each message a fresh P-256 key pair and a random salt: the ECDH secret with the
//! browser's key, mixed with its auth secret, keys one AES-128-GCM record. Checked against RFC
//! 8291's Appendix A byte for byte, and decrypted by two implementations of others in the
//! tests (web-push-testing's, and Python's `http_ece`).

use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::agreement::{self, ECDH_P256, PrivateKey, UnparsedPublicKey};
use aws_lc_rs::hmac;

/// The record size written in the header (RFC 8291 uses 4096).
const RECORD_SIZE: u32 = 4096;
/// The header: salt (16), record size (4), key id length (1), key id (65).
pub const HEADER_BYTES: usize = 16 + 4 + 1 + 65;
/// The most plaintext that fits the 4,096 bytes every push service takes: 4096 - 86 (header)
/// - 16 (tag) - 1 (delimiter).
pub const MAX_PLAINTEXT: usize = 4096 - HEADER_BYTES - 16 - 1;

/// Why a message could not be encrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncryptError {
    #[error("the subscription's p256dh is not a P-256 public key")]
    BadPublicKey,
    #[error("the payload is {0} bytes, over the {MAX_PLAINTEXT} that fit one record")]
    TooLong(usize),
    #[error("the crypto library failed")]
    Crypto,
}

/// Encrypts `plaintext` for the browser whose key is `ua_public` (65 bytes, uncompressed) and
/// whose auth secret is `auth` (16 bytes).
pub fn encrypt(plaintext: &[u8], ua_public: &[u8], auth: &[u8]) -> Result<Vec<u8>, EncryptError> {
    let ephemeral = PrivateKey::generate(&ECDH_P256).map_err(|_| EncryptError::Crypto)?;
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|_| EncryptError::Crypto)?;
    encrypt_with(plaintext, ua_public, auth, &ephemeral, &salt)
}

/// Whether `key` is a P-256 public key a message can be encrypted to.
pub fn is_p256_point(key: &[u8]) -> bool {
    let Ok(probe) = PrivateKey::generate(&ECDH_P256) else {
        return false;
    };
    key.len() == 65
        && agreement::agree(&probe, UnparsedPublicKey::new(&ECDH_P256, key), (), |_| {
            Ok(())
        })
        .is_ok()
}

/// [`encrypt`] with the sender's key pair and salt given (the RFC's test vector fixes them).
fn encrypt_with(
    plaintext: &[u8],
    ua_public: &[u8],
    auth: &[u8],
    as_private: &PrivateKey,
    salt: &[u8; 16],
) -> Result<Vec<u8>, EncryptError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(EncryptError::TooLong(plaintext.len()));
    }
    let as_public = as_private
        .compute_public_key()
        .map_err(|_| EncryptError::Crypto)?;
    let as_public = as_public.as_ref();
    let ecdh_secret = agreement::agree(
        as_private,
        UnparsedPublicKey::new(&ECDH_P256, ua_public),
        EncryptError::BadPublicKey,
        |secret| Ok(secret.to_vec()),
    )?;
    // RFC 8291 §3.4: IKM = HKDF(salt = auth, ikm = ecdh_secret, info = "WebPush: info" 0 ua as).
    let prk_key = hmac_sha256(auth, &ecdh_secret);
    let mut key_info = Vec::with_capacity(14 + 65 + 65 + 1);
    key_info.extend_from_slice(b"WebPush: info\0");
    key_info.extend_from_slice(ua_public);
    key_info.extend_from_slice(as_public);
    key_info.push(1);
    let ikm = hmac_sha256(&prk_key, &key_info);
    // RFC 8188 §2.2, 2.3: the content-encryption key and the nonce.
    let prk = hmac_sha256(salt, &ikm);
    let cek = hmac_sha256(&prk, b"Content-Encoding: aes128gcm\0\x01");
    let nonce = hmac_sha256(&prk, b"Content-Encoding: nonce\0\x01");
    let key = UnboundKey::new(&AES_128_GCM, &cek[..16]).map_err(|_| EncryptError::Crypto)?;
    let key = LessSafeKey::new(key);
    let nonce = Nonce::try_assume_unique_for_key(&nonce[..12]).map_err(|_| EncryptError::Crypto)?;
    // One record, the last: the plaintext and its delimiter, no padding.
    let mut record = Vec::with_capacity(plaintext.len() + 1 + 16);
    record.extend_from_slice(plaintext);
    record.push(2);
    key.seal_in_place_append_tag(nonce, Aad::empty(), &mut record)
        .map_err(|_| EncryptError::Crypto)?;
    let mut body = Vec::with_capacity(HEADER_BYTES + record.len());
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(65);
    body.extend_from_slice(as_public);
    body.extend_from_slice(&record);
    Ok(body)
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn b64(text: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(text).unwrap()
    }

    #[test]
    fn rfc_8291_appendix_a() {
        let as_private = PrivateKey::from_private_key(
            &ECDH_P256,
            &b64("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"),
        )
        .unwrap();
        let salt: [u8; 16] = b64("DGv6ra1nlYgDCS1FRnbzlw").try_into().unwrap();
        let body = encrypt_with(
            b"When I grow up, I want to be a watermelon",
            &b64("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"),
            &b64("BTBZMqHH6r4Tts7J_aSIgg"),
            &as_private,
            &salt,
        )
        .unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.encode(&body),
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
        );
    }

    #[test]
    fn sizes_and_keys() {
        let ua = b64(
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
        );
        let auth = b64("BTBZMqHH6r4Tts7J_aSIgg");
        assert!(is_p256_point(&ua));
        let mut off_curve = ua.clone();
        off_curve[40] ^= 1;
        assert!(!is_p256_point(&off_curve));
        assert!(!is_p256_point(&ua[..64]));
        let body = encrypt(&vec![b'x'; MAX_PLAINTEXT], &ua, &auth).unwrap();
        assert_eq!(
            body.len(),
            4096,
            "the largest payload fills the 4,096 bytes exactly"
        );
        assert_eq!(
            encrypt(&vec![b'x'; MAX_PLAINTEXT + 1], &ua, &auth),
            Err(EncryptError::TooLong(MAX_PLAINTEXT + 1))
        );
        assert_eq!(
            encrypt(b"x", &off_curve, &auth),
            Err(EncryptError::BadPublicKey)
        );
        assert_ne!(
            encrypt(b"x", &ua, &auth).unwrap(),
            encrypt(b"x", &ua, &auth).unwrap()
        );
    }
}
