//! Apple Push Notification service over HTTP/2 with token (JWT, ES256) authentication
//! (`protocol/apns.md`). One client per app (topic); one HTTP/2 connection per host, shared by
//! every request.
//!
//! This module owns the APNs wire format: the payload JSON, the headers, and the mapping of
//! every response to a [`SendError`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::provider::{self, Client, Refusal, Sending, classify};
use super::{PushJob, SendError, http_client};
use crate::auth::unix_now;
use crate::config::ApnsConfig;
use crate::route::PushKind;
use crate::store::Environment;

/// A provider token is renewed after this age (APNs refuses them after 60 minutes and
/// throttles renewals more often than every 20).
const TOKEN_MAX_AGE: Duration = Duration::from_secs(50 * 60);
/// APNs's limit for regular notifications.
pub const MAX_PAYLOAD: usize = 4096;
/// Alerts are kept by APNs for a day while the phone is offline; badges for an hour.
const ALERT_EXPIRY_SECS: u64 = 86_400;
const BADGE_EXPIRY_SECS: u64 = 3_600;

/// Sends to one APNs app. What every request shares is built once: the device URL's prefix
/// (so no request parses a host), the topic and the provider token's header.
pub struct ApnsClient {
    http: reqwest::Client,
    /// `<base_url>/3/device/`, to which each request adds its device token.
    production_url: Url,
    sandbox_url: Url,
    key: EncodingKey,
    key_id: String,
    team_id: String,
    /// The app's topic, as every request's `apns-topic` carries it.
    topic: HeaderValue,
    /// The current provider token's `authorization` value and when it was minted. A std
    /// mutex: held only to read or replace the pair.
    token: Mutex<Option<(HeaderValue, Instant)>>,
}

const APNS_TOPIC: HeaderName = HeaderName::from_static("apns-topic");
const APNS_PUSH_TYPE: HeaderName = HeaderName::from_static("apns-push-type");
const APNS_PRIORITY: HeaderName = HeaderName::from_static("apns-priority");
const APNS_EXPIRATION: HeaderName = HeaderName::from_static("apns-expiration");
const APNS_ID: HeaderName = HeaderName::from_static("apns-id");
const APNS_COLLAPSE_ID: HeaderName = HeaderName::from_static("apns-collapse-id");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

#[derive(Serialize)]
struct TokenClaims<'a> {
    iss: &'a str,
    iat: u64,
}

#[derive(Deserialize)]
struct ErrorBody {
    reason: Option<String>,
    /// For 410: when the token stopped being valid, in milliseconds since the epoch.
    timestamp: Option<i64>,
}

/// A client for every `[push.apns.<name>]` section, under its topic.
pub fn clients(
    sections: &std::collections::BTreeMap<String, ApnsConfig>,
    timeout: Duration,
) -> anyhow::Result<Vec<(String, Box<dyn Client>)>> {
    let mut clients: Vec<(String, Box<dyn Client>)> = Vec::new();
    for (name, config) in sections {
        let client =
            ApnsClient::new(config, timeout).with_context(|| format!("[push.apns.{name}]"))?;
        clients.push((config.topic.clone(), Box::new(client)));
    }
    Ok(clients)
}

impl Client for ApnsClient {
    fn send<'a>(&'a self, job: &'a PushJob) -> Sending<'a> {
        Box::pin(self.send_job(job))
    }
}

impl ApnsClient {
    /// Reads the key and builds the HTTP/2 client.
    pub fn new(config: &ApnsConfig, timeout: Duration) -> anyhow::Result<ApnsClient> {
        let pem = std::fs::read(&config.key_file)
            .with_context(|| format!("cannot read APNs key_file {}", config.key_file.display()))?;
        let key = EncodingKey::from_ec_pem(&pem).with_context(|| {
            format!(
                "APNs key_file {} is not a PKCS#8 P-256 key",
                config.key_file.display()
            )
        })?;
        let device_url = |key: &str, base: &str| {
            Url::parse(&format!("{}/3/device/", base.trim_end_matches('/')))
                .ok()
                .filter(|url| !url.cannot_be_a_base())
                .with_context(|| format!("{key} {base:?} is not an http(s) URL"))
        };
        Ok(ApnsClient {
            http: http_client(config.ca_file.as_deref(), timeout)?,
            production_url: device_url("base_url", &config.base_url)?,
            sandbox_url: device_url("sandbox_base_url", &config.sandbox_base_url)?,
            key,
            key_id: config.key_id.clone(),
            team_id: config.team_id.clone(),
            topic: HeaderValue::from_str(&config.topic)
                .with_context(|| format!("topic {:?} cannot be a header value", config.topic))?,
            token: Mutex::new(None),
        })
    }

    /// Sends one notification and classifies the answer.
    async fn send_job(&self, job: &PushJob) -> Result<(), SendError> {
        let mut url = match job.device.environment {
            Environment::Production => self.production_url.clone(),
            Environment::Sandbox => self.sandbox_url.clone(),
        };
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push(&job.device.token);
        }
        let token = self.provider_token()?;
        let (body, push_type, priority, expiry) = match &job.kind {
            kind @ PushKind::NewMail { .. } => (
                alert_payload(&job.user, kind),
                "alert",
                "10",
                ALERT_EXPIRY_SECS,
            ),
            PushKind::Badge { unseen } => (
                json!({"aps": {"badge": unseen}}).to_string(),
                "alert",
                "5",
                BADGE_EXPIRY_SECS,
            ),
            PushKind::State => {
                return Err(SendError::Permanent {
                    reason: "APNs takes no state-only pushes".into(),
                });
            }
            PushKind::Reminder { summary, start } => {
                let when = crate::notify::render::ical_when(start, "en");
                let body = json!({"aps": {"alert": format!("{summary}\n{when}"), "sound": "default"}, "account": job.user});
                (body.to_string(), "alert", "10", BADGE_EXPIRY_SECS)
            }
        };
        let mut request = self
            .http
            .post(url)
            .header(AUTHORIZATION, token)
            .header(APNS_TOPIC, self.topic.clone())
            .header(APNS_PUSH_TYPE, HeaderValue::from_static(push_type))
            .header(APNS_PRIORITY, HeaderValue::from_static(priority))
            .header(APNS_EXPIRATION, HeaderValue::from(unix_now() + expiry))
            .header(APNS_ID, &job.id)
            .header(CONTENT_TYPE, JSON);
        if matches!(job.kind, PushKind::Badge { .. }) {
            // Only the newest badge matters; a newer one replaces an undelivered older one.
            request = request.header(APNS_COLLAPSE_ID, HeaderValue::from_static("badge"));
        }
        let Some(Refusal {
            status,
            retry_after,
            response,
        }) = provider::post(request.body(body)).await?
        else {
            return Ok(());
        };
        let error: ErrorBody = response.json().await.unwrap_or(ErrorBody {
            reason: None,
            timestamp: None,
        });
        let reason = error.reason.unwrap_or_else(|| status.to_string());
        Err(self.classify(status, reason, error.timestamp, retry_after))
    }

    /// APNs's own codes; the rest by the shared rule.
    fn classify(
        &self,
        status: StatusCode,
        reason: String,
        timestamp: Option<i64>,
        retry_after: Option<Duration>,
    ) -> SendError {
        match (status.as_u16(), reason.as_str()) {
            (410, _) => SendError::Unregistered {
                since: timestamp.map(|ms| ms / 1000),
                reason,
            },
            (400, "BadDeviceToken") => SendError::Unregistered {
                since: None,
                reason,
            },
            (403, "ExpiredProviderToken") => {
                self.expire_token();
                SendError::Retry {
                    after: Some(Duration::ZERO),
                    reason,
                }
            }
            _ => classify(status, retry_after, reason),
        }
    }

    /// The shared provider token's `authorization` value, minted anew when it is 50 minutes
    /// old.
    fn provider_token(&self) -> Result<HeaderValue, SendError> {
        let mut token = self
            .token
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((jwt, minted)) = token.as_ref()
            && minted.elapsed() < TOKEN_MAX_AGE
        {
            return Ok(jwt.clone());
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = TokenClaims {
            iss: &self.team_id,
            iat: unix_now(),
        };
        let jwt = jsonwebtoken::encode(&header, &claims, &self.key).map_err(|err| {
            SendError::Permanent {
                reason: format!("cannot sign the APNs provider token: {err}"),
            }
        })?;
        let value =
            HeaderValue::try_from(format!("bearer {jwt}")).map_err(|err| SendError::Permanent {
                reason: format!("the APNs provider token cannot be a header value: {err}"),
            })?;
        *token = Some((value.clone(), Instant::now()));
        Ok(value)
    }

    /// Drops a token APNs called expired, so the retry mints a new one. Renewals stay bounded
    /// by the retry limit, and APNs answers over-eager renewals with a retryable 429.
    fn expire_token(&self) {
        *self
            .token
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }
}

/// The new-mail alert: "<sender>\n<subject>", the badge, a sound, the thread and a URL, cut
/// to fit APNs's payload limit.
fn alert_payload(user: &str, kind: &PushKind) -> String {
    let PushKind::NewMail {
        from,
        subject,
        unseen,
        thread_id,
        url,
    } = kind
    else {
        return String::new();
    };
    // Typed, not `json!`: a push is sent tens of thousands of times a second, and a typed
    // payload is written in one pass without building a map of values first.
    #[derive(Serialize)]
    struct Alert<'a> {
        aps: Aps<'a>,
        account: &'a str,
        url: &'a str,
    }
    #[derive(Serialize)]
    struct Aps<'a> {
        alert: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        badge: Option<u64>,
        sound: &'static str,
        #[serde(rename = "thread-id")]
        thread_id: &'a str,
    }
    let build = |subject: &str| {
        let alert = Alert {
            aps: Aps {
                alert: format!("{from}\n{subject}"),
                badge: *unseen,
                sound: "default",
                thread_id,
            },
            account: user,
            url,
        };
        serde_json::to_string(&alert).expect("strings and numbers always serialize")
    };
    let payload = build(subject);
    if payload.len() <= MAX_PAYLOAD {
        return payload;
    }
    // The longest subject prefix (in characters) that fits with an ellipsis: escaping makes
    // bytes per character vary, so search rather than estimate.
    let cut = |keep: usize| {
        build(&format!(
            "{}…",
            subject.chars().take(keep).collect::<String>()
        ))
    };
    let (mut fits, mut too_long) = (0, subject.chars().count());
    while fits + 1 < too_long {
        let middle = (fits + too_long) / 2;
        if cut(middle).len() <= MAX_PAYLOAD {
            fits = middle;
        } else {
            too_long = middle;
        }
    }
    cut(fits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_mail(from: &str, subject: &str) -> PushKind {
        PushKind::NewMail {
            from: from.into(),
            subject: subject.into(),
            unseen: Some(3),
            thread_id: "alice/INBOX".into(),
            url: "imap://h/user/alice;UIDVALIDITY=1/;UID=5".into(),
        }
    }

    #[test]
    fn alert_shape() {
        let payload: serde_json::Value = serde_json::from_str(&alert_payload(
            "alice",
            &new_mail("Robert Norris", "Holiday pics"),
        ))
        .unwrap();
        assert_eq!(
            payload,
            json!({
                "aps": {"alert": "Robert Norris\nHoliday pics", "badge": 3, "sound": "default", "thread-id": "alice/INBOX"},
                "account": "alice",
                "url": "imap://h/user/alice;UIDVALIDITY=1/;UID=5"
            })
        );
    }

    #[test]
    fn long_subjects_are_cut_to_fit() {
        for subject in ["x".repeat(10_000), "ü".repeat(5_000), "\"".repeat(3_000)] {
            let payload = alert_payload("alice", &new_mail("Robert", &subject));
            assert!(payload.len() <= MAX_PAYLOAD, "{}", payload.len());
            assert!(
                payload.len() > MAX_PAYLOAD - 200,
                "not cut more than needed: {}",
                payload.len()
            );
            let value: serde_json::Value = serde_json::from_str(&payload).unwrap();
            assert!(value["aps"]["alert"].as_str().unwrap().ends_with('…'));
        }
    }
}
