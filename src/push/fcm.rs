//! Firebase Cloud Messaging, HTTP v1 (`protocol/fcm.md`), authenticated with an OAuth2 access
//! token from the service account (RFC 7523 JWT bearer grant, RS256).
//!
//! Android apps get a high-priority data message `{"uparam": <user>}` and fetch the rest
//! themselves. This module owns the FCM wire format and the mapping of every response to a
//! [`SendError`].

use std::time::{Duration, Instant};

use anyhow::Context;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Mutex;

use super::provider::{self, Client, Refusal, Sending, classify};
use super::{PushJob, SendError, http_client};
use crate::auth::unix_now;
use crate::config::FcmConfig;

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// An access token is replaced this long before Google says it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(300);

/// Sends to one FCM project.
pub struct FcmClient {
    http: reqwest::Client,
    send_url: String,
    app: String,
    account: ServiceAccount,
    key: EncodingKey,
    /// The access token and when it must be replaced. An async mutex: a refresh holds it across
    /// the token request, so concurrent sends wait for one refresh instead of each starting one.
    token: Mutex<Option<(String, Instant)>>,
}

/// The fields of a service-account JSON key that the grant needs.
#[derive(Deserialize)]
struct ServiceAccount {
    project_id: String,
    private_key_id: String,
    private_key: String,
    client_email: String,
    token_uri: String,
}

#[derive(Serialize)]
struct GrantClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: ErrorStatus,
}

#[derive(Deserialize, Default)]
struct ErrorStatus {
    #[serde(default)]
    status: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Vec<ErrorDetail>,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(rename = "errorCode")]
    error_code: Option<String>,
}

/// A client for every `[push.fcm.<name>]` section, under its app.
pub fn clients(
    sections: &std::collections::BTreeMap<String, FcmConfig>,
    timeout: Duration,
) -> anyhow::Result<Vec<(String, Box<dyn Client>)>> {
    let mut clients: Vec<(String, Box<dyn Client>)> = Vec::new();
    for (name, config) in sections {
        let client =
            FcmClient::new(name, config, timeout).with_context(|| format!("[push.fcm.{name}]"))?;
        clients.push((client.app.clone(), Box::new(client)));
    }
    Ok(clients)
}

impl Client for FcmClient {
    fn send<'a>(&'a self, job: &'a PushJob) -> Sending<'a> {
        Box::pin(self.send_job(job))
    }
}

impl FcmClient {
    /// Reads the service account and builds the HTTP/2 client. `name` is the config section,
    /// the default `app`.
    pub fn new(name: &str, config: &FcmConfig, timeout: Duration) -> anyhow::Result<FcmClient> {
        let path = &config.service_account_file;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read FCM service_account_file {}", path.display()))?;
        let account: ServiceAccount = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a service-account JSON key", path.display()))?;
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .with_context(|| format!("the private_key in {} is not an RSA key", path.display()))?;
        Ok(FcmClient {
            http: http_client(config.ca_file.as_deref(), timeout)?,
            send_url: format!(
                "{}/v1/projects/{}/messages:send",
                config.base_url.trim_end_matches('/'),
                account.project_id
            ),
            app: config.app.clone().unwrap_or_else(|| name.to_owned()),
            account,
            key,
            token: Mutex::new(None),
        })
    }

    /// Sends one data message and classifies the answer.
    async fn send_job(&self, job: &PushJob) -> Result<(), SendError> {
        let token = self.access_token().await?;
        let message = json!({
            "message": {
                "token": job.device.token,
                "data": {"uparam": job.user},
                "android": {"priority": "HIGH", "collapse_key": "mail"},
            }
        });
        let request = self.http.post(&self.send_url).bearer_auth(&token);
        let Some(Refusal {
            status,
            retry_after,
            response,
        }) = provider::post(request.json(&message)).await?
        else {
            return Ok(());
        };
        let body: ErrorBody = response.json().await.unwrap_or_default();
        Err(self.classify(status, body.error, retry_after).await)
    }

    async fn classify(
        &self,
        status: StatusCode,
        error: ErrorStatus,
        retry_after: Option<Duration>,
    ) -> SendError {
        let code = error
            .details
            .iter()
            .find_map(|detail| detail.error_code.clone())
            .unwrap_or_else(|| error.status.clone());
        let reason = if error.message.is_empty() {
            code.clone()
        } else {
            format!("{code}: {}", error.message)
        };
        match (code.as_str(), status.as_u16()) {
            ("UNREGISTERED" | "SENDER_ID_MISMATCH", _) | (_, 404) => SendError::Unregistered {
                since: None,
                reason,
            },
            ("INVALID_ARGUMENT", _) if error.message.contains("registration token") => {
                SendError::Unregistered {
                    since: None,
                    reason,
                }
            }
            ("THIRD_PARTY_AUTH_ERROR", _) => SendError::Permanent { reason },
            (_, 401) => {
                // The access token was refused: the retry fetches a new one.
                *self.token.lock().await = None;
                SendError::Retry {
                    after: Some(Duration::ZERO),
                    reason,
                }
            }
            ("QUOTA_EXCEEDED" | "UNAVAILABLE" | "INTERNAL", _) => SendError::Retry {
                after: retry_after,
                reason,
            },
            _ => classify(status, retry_after, reason),
        }
    }

    /// The cached access token, refreshed five minutes before it expires.
    async fn access_token(&self) -> Result<String, SendError> {
        let mut token = self.token.lock().await;
        if let Some((access_token, refresh_at)) = token.as_ref()
            && Instant::now() < *refresh_at
        {
            return Ok(access_token.clone());
        }
        let (access_token, expires_in) = self.grant().await?;
        let lifetime = Duration::from_secs(expires_in).saturating_sub(TOKEN_MARGIN);
        *token = Some((access_token.clone(), Instant::now() + lifetime));
        Ok(access_token)
    }

    /// The JWT bearer grant: a signed assertion exchanged for an access token.
    async fn grant(&self) -> Result<(String, u64), SendError> {
        // A few seconds in the past, for clock skew.
        let iat = unix_now().saturating_sub(10);
        let claims = GrantClaims {
            iss: &self.account.client_email,
            scope: SCOPE,
            aud: &self.account.token_uri,
            iat,
            exp: iat + 3600,
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.account.private_key_id.clone());
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key).map_err(|err| {
            SendError::Permanent {
                reason: format!("cannot sign the OAuth2 assertion: {err}"),
            }
        })?;
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", &assertion),
        ];
        let response = self
            .http
            .post(&self.account.token_uri)
            .form(&form)
            .send()
            .await
            .map_err(SendError::from_transport)?;
        let status = response.status();
        if !status.is_success() {
            let reason = format!("token endpoint answered {status}");
            return Err(
                if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                    SendError::Retry {
                        after: None,
                        reason,
                    }
                } else {
                    SendError::Permanent { reason }
                },
            );
        }
        let token: TokenResponse = response.json().await.map_err(|err| SendError::Retry {
            after: None,
            reason: format!("unreadable token response: {err}"),
        })?;
        Ok((token.access_token, token.expires_in))
    }
}
