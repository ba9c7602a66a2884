//! Web Push (RFC 8030) to browsers' push services: each push is encrypted for the one browser
//! ([`ece`], RFC 8291) and signed for its push service ([`vapid`], RFC 8292).
//!
//! A subscription is a device whose token is its endpoint URL; only [`endpoint`]'s public
//! addresses are ever reached. Unlike a phone, a browser tab has no app to fetch what changed,
//! so every state change goes to it (coalesced like badges) and the payload carries the state:
//! the `/events` document, or an RFC 8620 `StateChange` for subscriptions registered with
//! `"format":"jmap"`. Headers tell the push service what it may do with a message it holds:
//! `TTL`, `Urgency` (high for new mail, low for the rest) and `Topic` (a newer state replaces
//! an older one still waiting).

pub mod ece;
pub mod endpoint;
pub mod vapid;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use reqwest::{StatusCode, Url};
use serde_json::{Map, Value, json};

use super::provider::{self, Client, Refusal, Sending, classify};
use super::{PushJob, SendError};
use crate::auth::unix_now;
use crate::config::WebPushConfig;
use crate::route::PushKind;
use crate::store::{PayloadFormat, WebPushKeys};
use crate::stream::JmapIds;
use crate::stream::jmap::{TypeFilter, state_change};
pub use endpoint::EndpointPolicy;
pub use vapid::Vapid;

/// The `app` of every Web Push subscription: one client serves them all.
pub const APP: &str = "web";
/// The `Topic` of state-only pushes, so a push service keeps only the newest for a browser.
const STATE_TOPIC: &str = "state";
/// Longest sender or subject carried in a payload, in characters.
const MAX_TEXT: usize = 256;

/// Sends to every subscription's push service.
pub struct WebPushClient {
    http: reqwest::Client,
    vapid: Arc<Vapid>,
    ttl_secs: u32,
    endpoints: EndpointPolicy,
    jmap_ids: JmapIds,
}

/// The Web Push client, when `push.webpush` is on (with the key `vapid` loaded from it).
pub fn clients(
    config: &WebPushConfig,
    vapid: Option<&Arc<Vapid>>,
    jmap_ids: JmapIds,
    timeout: Duration,
) -> anyhow::Result<Vec<(String, Box<dyn Client>)>> {
    let Some(vapid) = vapid.filter(|_| config.enabled) else {
        return Ok(Vec::new());
    };
    let endpoints = EndpointPolicy {
        allow_private: config.allow_private_endpoints,
    };
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        // A push service answers; it never sends us on to somewhere else.
        .redirect(reqwest::redirect::Policy::none());
    if !endpoints.allow_private {
        builder = builder.dns_resolver(Arc::new(endpoint::PublicOnly));
    }
    let client = WebPushClient {
        http: builder.build()?,
        vapid: vapid.clone(),
        ttl_secs: config.ttl_secs,
        endpoints,
        jmap_ids,
    };
    Ok(vec![(APP.to_owned(), Box::new(client))])
}

impl Client for WebPushClient {
    fn send<'a>(&'a self, job: &'a PushJob) -> Sending<'a> {
        Box::pin(self.send_job(job))
    }

    fn takes(&self, _kind: &PushKind) -> bool {
        true
    }
}

impl WebPushClient {
    async fn send_job(&self, job: &PushJob) -> Result<(), SendError> {
        let permanent = |reason: String| SendError::Permanent { reason };
        let keys = job
            .device
            .webpush
            .as_ref()
            .ok_or_else(|| permanent("the subscription has no keys".into()))?;
        let url = Url::parse(&job.device.token)
            .map_err(|err| permanent(format!("the endpoint is not a URL: {err}")))?;
        if !self.endpoints.allows_literal(&url) {
            return Err(permanent("the endpoint is not a public address".into()));
        }
        let origin = url.origin().ascii_serialization();
        let plaintext = payload(job, keys.format, self.jmap_ids);
        let body = ece::encrypt(
            plaintext.as_bytes(),
            &decode_key(&keys.p256dh).unwrap_or_default(),
            &decode_key(&keys.auth).unwrap_or_default(),
        )
        .map_err(|err| permanent(err.to_string()))?;
        let authorization = self
            .vapid
            .authorization(&origin, unix_now())
            .map_err(|err| permanent(err.to_string()))?;
        let alert = matches!(
            job.kind,
            PushKind::NewMail { .. } | PushKind::Reminder { .. }
        );
        let mut request = self
            .http
            .post(url)
            .header("ttl", self.ttl_secs.to_string())
            .header("urgency", if alert { "high" } else { "low" })
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .header("authorization", authorization);
        if !alert {
            request = request.header("topic", STATE_TOPIC);
        }
        let Some(Refusal {
            status,
            retry_after,
            response,
        }) = provider::post(request.body(body)).await?
        else {
            return Ok(());
        };
        let text = response.text().await.unwrap_or_default();
        let reason = format!("{status}: {}", text.chars().take(200).collect::<String>());
        Err(match status {
            // RFC 8030 §7.3: the subscription expired or the browser unsubscribed.
            StatusCode::NOT_FOUND | StatusCode::GONE => SendError::Unregistered {
                since: None,
                reason,
            },
            _ => classify(status, retry_after, reason),
        })
    }
}

/// The plaintext of a push for `job` in the subscription's `format`; at most
/// [`ece::MAX_PLAINTEXT`] bytes, so it always fits one record.
pub fn payload(job: &PushJob, format: PayloadFormat, jmap_ids: JmapIds) -> String {
    let state = &job.state;
    match format {
        PayloadFormat::Jmap => {
            let compact = jmap_ids.compact(state);
            state_change(
                &job.user,
                &crate::stream::UserState::default(),
                state,
                &TypeFilter::all(),
                compact,
            )
            .unwrap_or_else(|| json!({"@type": "StateChange", "changed": {}}).to_string())
        }
        PayloadFormat::Legacy => {
            let mut document = Map::new();
            document.insert("mailModSeq".into(), state.mail.into());
            document.insert("calendarModSeq".into(), state.calendar.into());
            document.insert("contactsModSeq".into(), state.contacts.into());
            let unseen = match &job.kind {
                PushKind::NewMail { unseen, .. } => *unseen,
                PushKind::Badge { unseen } => Some(*unseen),
                PushKind::Reminder { .. } | PushKind::State => None,
            };
            if let Some(unseen) = unseen {
                document.insert("unseen".into(), unseen.into());
            }
            if let Some(alert) = alert(&job.kind, false) {
                document.insert("alert".into(), alert);
            }
            let text = Value::Object(document.clone()).to_string();
            if text.len() <= ece::MAX_PLAINTEXT {
                return text;
            }
            // A very long URL: the alert without it still fits.
            if let Some(alert) = alert(&job.kind, true) {
                document.insert("alert".into(), alert);
            }
            Value::Object(document).to_string()
        }
    }
}

/// What a service worker shows: new mail's sender and subject, or a reminder.
fn alert(kind: &PushKind, without_url: bool) -> Option<Value> {
    let short = |text: &str| text.chars().take(MAX_TEXT).collect::<String>();
    match kind {
        PushKind::NewMail {
            from, subject, url, ..
        } => {
            let mut alert = json!({"type": "mail", "from": short(from), "subject": short(subject)});
            if !without_url && url.len() <= 2048 {
                alert["url"] = url.clone().into();
            }
            Some(alert)
        }
        PushKind::Reminder { summary, start } => Some(json!({
            "type": "reminder",
            "summary": short(summary),
            "start": short(start),
        })),
        PushKind::Badge { .. } | PushKind::State => None,
    }
}

/// A key from a subscription: base64url as browsers write it, and leniently padded or in the
/// standard alphabet.
pub fn decode_key(text: &str) -> Option<Vec<u8>> {
    let trimmed = text.trim_end_matches('=');
    URL_SAFE_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE.decode(text))
        .or_else(|_| STANDARD.decode(text))
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed))
        .ok()
}

/// Checks a subscription's keys (a P-256 point and a 16-byte secret) and writes them in the
/// canonical base64url; the error names the field.
pub fn check_keys(p256dh: &str, auth: &str, format: PayloadFormat) -> Result<WebPushKeys, String> {
    let public = decode_key(p256dh).ok_or("keys.p256dh: not base64url")?;
    if public.len() != 65 || public[0] != 4 {
        return Err(format!(
            "keys.p256dh: must be a 65-byte uncompressed P-256 point, not {} bytes",
            public.len()
        ));
    }
    if !ece::is_p256_point(&public) {
        return Err("keys.p256dh: not a point on P-256".into());
    }
    let secret = decode_key(auth).ok_or("keys.auth: not base64url")?;
    if secret.len() != 16 {
        return Err(format!("keys.auth: must be 16 bytes, not {}", secret.len()));
    }
    Ok(WebPushKeys {
        p256dh: URL_SAFE_NO_PAD.encode(public),
        auth: URL_SAFE_NO_PAD.encode(secret),
        format,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Device, Environment, Platform};
    use crate::stream::UserState;

    const P256DH: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";

    fn job(kind: PushKind) -> PushJob {
        PushJob {
            id: "1".into(),
            user: "alice".into(),
            device: Device {
                id: 1,
                user_id: "alice".into(),
                platform: Platform::WebPush,
                token: "https://push.example/x".into(),
                app: APP.into(),
                environment: Environment::Production,
                created_at: 0,
                registered_at: 0,
                webpush: None,
            },
            kind,
            state: UserState {
                mail: 1042,
                calendar: 17,
                contacts: 9,
                delivered: 1042,
                ids: crate::event::IdScheme::Compact,
            },
            received_at: std::time::Instant::now(),
        }
    }

    #[test]
    fn payloads() {
        let mail = job(PushKind::NewMail {
            from: "Bob".into(),
            subject: "Lunch?".into(),
            unseen: Some(3),
            thread_id: "INBOX".into(),
            url: "imap://alice@mail.example/INBOX;UIDVALIDITY=1/;UID=7".into(),
        });
        let legacy: Value =
            serde_json::from_str(&payload(&mail, PayloadFormat::Legacy, JmapIds::Auto)).unwrap();
        assert_eq!(
            legacy,
            json!({"mailModSeq": 1042, "calendarModSeq": 17, "contactsModSeq": 9, "unseen": 3,
                   "alert": {"type": "mail", "from": "Bob", "subject": "Lunch?",
                             "url": "imap://alice@mail.example/INBOX;UIDVALIDITY=1/;UID=7"}})
        );
        let jmap: Value =
            serde_json::from_str(&payload(&mail, PayloadFormat::Jmap, JmapIds::Auto)).unwrap();
        assert_eq!(jmap["@type"], "StateChange");
        assert_eq!(jmap["changed"]["alice"]["Email"], "J1042");
        assert_eq!(jmap["changed"]["alice"]["EmailDelivery"], "J1042");
        assert_eq!(jmap["changed"]["alice"]["ContactCard"], "9");
        let badge: Value = serde_json::from_str(&payload(
            &job(PushKind::Badge { unseen: 0 }),
            PayloadFormat::Legacy,
            JmapIds::Auto,
        ))
        .unwrap();
        assert_eq!(badge["unseen"], 0);
        assert!(badge.get("alert").is_none());
        // Whatever the sender and subject, the payload fits one record.
        let huge = job(PushKind::NewMail {
            from: "f".repeat(10_000),
            subject: "s".repeat(10_000),
            unseen: None,
            thread_id: String::new(),
            url: "u".repeat(3_900),
        });
        let text = payload(&huge, PayloadFormat::Legacy, JmapIds::Auto);
        assert!(text.len() <= ece::MAX_PLAINTEXT, "{}", text.len());
    }

    #[test]
    fn keys() {
        let auth = "BTBZMqHH6r4Tts7J_aSIgg";
        let keys = check_keys(P256DH, auth, PayloadFormat::Jmap).unwrap();
        assert_eq!((keys.p256dh.as_str(), keys.auth.as_str()), (P256DH, auth));
        // Padded and standard-alphabet forms are read and written back canonically.
        let standard = STANDARD.encode(URL_SAFE_NO_PAD.decode(P256DH).unwrap());
        assert_eq!(
            check_keys(&standard, "BTBZMqHH6r4Tts7J/aSIgg==", PayloadFormat::Legacy)
                .unwrap()
                .auth,
            auth
        );
        let err =
            |p256dh: &str, auth: &str| check_keys(p256dh, auth, PayloadFormat::Legacy).unwrap_err();
        assert!(err(&P256DH[..40], auth).starts_with("keys.p256dh: must be a 65-byte"));
        let mut bytes = URL_SAFE_NO_PAD.decode(P256DH).unwrap();
        bytes[30] ^= 0x55;
        assert_eq!(
            err(&URL_SAFE_NO_PAD.encode(&bytes), auth),
            "keys.p256dh: not a point on P-256"
        );
        assert!(err(P256DH, "c2hvcnQ").starts_with("keys.auth: must be 16 bytes"));
        assert!(err(P256DH, "!!!").starts_with("keys.auth: not base64url"));
    }
}
