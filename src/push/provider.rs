//! A push service as the sender sees it: a [`Client`] that sends one job and says what became
//! of it. Each platform is one file implementing it (`apns`, `fcm`, `webpush`) and one line in
//! [`super::Providers::from_config`]; the sender, the queue, the breaker and the retries are
//! the same for all.
//!
//! Answers are classified once, by the client: its own codes first (a dead token, an expired
//! credential), then [`classify`], which every provider shares for the rest.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use reqwest::StatusCode;

use super::{PushJob, SendError};
use crate::route::PushKind;

/// What a [`Client::send`] returns.
pub type Sending<'a> = Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + 'a>>;

/// One provider's client for one app.
pub trait Client: Send + Sync {
    /// Sends one job and classifies the answer.
    fn send<'a>(&'a self, job: &'a PushJob) -> Sending<'a>;

    /// Whether pushes of this kind go to its devices at all. Phones get alerts and badges;
    /// a state-only change is for clients with no app of their own to sync (browsers).
    fn takes(&self, kind: &PushKind) -> bool {
        !matches!(kind, PushKind::State)
    }
}

/// A provider's answer that was not a success, for the provider to read its own codes from.
pub struct Refusal {
    pub status: StatusCode,
    /// The provider's `Retry-After`, in seconds.
    pub retry_after: Option<Duration>,
    pub response: reqwest::Response,
}

/// Sends a request: `Ok(None)` when the provider took it (2xx), `Ok(Some(refusal))` when it
/// answered otherwise, and a retryable error when no answer came (timeout, connection).
pub async fn post(request: reqwest::RequestBuilder) -> Result<Option<Refusal>, SendError> {
    let response = request.send().await.map_err(SendError::from_transport)?;
    let status = response.status();
    if status.is_success() {
        return Ok(None);
    }
    Ok(Some(Refusal {
        status,
        retry_after: super::retry_after(response.headers()),
        response,
    }))
}

/// What an HTTP answer no provider-specific rule claimed comes to: 429 and 5xx are worth
/// another try (after the provider's `Retry-After` when it gave one), anything else is not.
pub fn classify(status: StatusCode, retry_after: Option<Duration>, reason: String) -> SendError {
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        SendError::Retry {
            after: retry_after,
            reason,
        }
    } else {
        SendError::Permanent { reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_rule() {
        let after = Some(Duration::from_secs(7));
        for status in [429, 500, 502, 503, 504] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(
                classify(status, after, "x".into()),
                SendError::Retry {
                    after,
                    reason: "x".into()
                }
            );
        }
        for status in [400, 401, 403, 404, 413] {
            let status = StatusCode::from_u16(status).unwrap();
            assert!(matches!(
                classify(status, after, "x".into()),
                SendError::Permanent { .. }
            ));
        }
    }
}
