//! `POST /ingest`: one RFC 5423 event as a JSON object, or an array of them, from any producer
//! that holds the ingest secret.
//!
//! Good events in a batch are dispatched even when others are bad; the reply says which were
//! rejected and why, so the producer can fix them without resending the rest.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::value::RawValue;

use super::{PacketHead, Source};
use crate::config::Secret;
use crate::event::{self, ParseError};
use crate::http::{ApiError, bearer, bearer_token};
use crate::pipeline::Pipeline;

/// What `POST /ingest` uses.
pub struct Ingest {
    /// Where events go.
    pub pipeline: Arc<Pipeline>,
    /// The producers' bearer secret; None turns the endpoint off.
    pub secret: Option<Secret>,
}

/// Every event was taken.
#[derive(Serialize, utoipa::ToSchema)]
struct Accepted {
    accepted: usize,
}

/// Some events of a batch were refused; the others were taken.
#[derive(Serialize, utoipa::ToSchema)]
struct PartlyRejected {
    /// `invalid_event`.
    code: &'static str,
    message: String,
    accepted: usize,
    errors: Vec<Rejected>,
}

/// Why one event of a batch was refused.
#[derive(Serialize, utoipa::ToSchema)]
struct Rejected {
    /// Its position in the batch.
    index: usize,
    /// `invalid_json`, `missing_event_name`, `bad_uri`, `number_out_of_range`...
    reason: &'static str,
    message: String,
}

/// An RFC 5423 event as Cyrus writes it: the fields mailpush reads are described; others are
/// kept as they are. A field of another type than the one described is ignored, as Cyrus's
/// own consumers do, rather than refused.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[schema(as = IngestEvent)]
#[allow(dead_code)]
struct EventForm {
    /// The event type (`MessageNew`, `vnd.cmu.MessageCopy`, `CalendarAlarm`...).
    #[schema(min_length = 1)]
    event: String,
    /// The mailbox's IMAP URL (RFC 5092), whose path names the owner.
    #[schema(pattern = "^imap://[^/?#]+")]
    uri: Option<String>,
    /// The mailbox's MODSEQ after the change.
    #[schema(maximum = 9007199254740991_u64)]
    modseq: Option<u64>,
    #[schema(maximum = 9007199254740991_u64)]
    messages: Option<u64>,
    #[serde(rename = "vnd.cmu.unseenMessages")]
    #[schema(maximum = 9007199254740991_u64)]
    unseen: Option<u64>,
    /// `e` mail, `c` calendar, `a` contacts...
    #[serde(rename = "vnd.cmu.mbtype")]
    mbtype: Option<String>,
    /// The acting user (the owner comes from `uri` when there is one).
    user: Option<String>,
}

/// A refusal: of a single event (or the whole body), or of part of a batch.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum IngestRefusal {
    One(crate::http::openapi::ErrorBody),
    Batch(PartlyRejected),
}

/// One event, or a batch of them.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum IngestBody {
    One(EventForm),
    Many(Vec<EventForm>),
}

/// Accepts events over HTTP. The answer comes once every job the events made is on disk.
#[utoipa::path(
    post,
    path = "/ingest",
    operation_id = "ingestEvents",
    tag = "ingest",
    security(("ingest_secret" = [])),
    request_body(content = IngestBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Every event taken", body = Accepted),
        (status = 400, description = "`invalid_json`, `missing_event_name`, `bad_uri`, `number_out_of_range`, `unreadable_body` for a single event; `invalid_event` (a `PartlyRejected`) for a batch, whose good events were taken", body = IngestRefusal),
        (status = 401, description = "`ingest_unauthorized`", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "`ingest_disabled`: `ingest.secret` is not set", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "`body_too_large`: over `http.max_body_bytes`", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn post(
    State(state): State<Arc<Ingest>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge,
        _ => ApiError::BadRequest {
            code: "unreadable_body",
            message: rejection.body_text(),
        },
    })?;
    // One good object, the common case: parse it once, with no split pass first. A bad one
    // takes the general path below, which reports it.
    if let Ok(event) = single_event(&body) {
        if let Some(ticket) = state.pipeline.dispatch(Source::Http, event) {
            state.pipeline.wait_durable(ticket).await;
        }
        return Ok(Json(Accepted { accepted: 1 }).into_response());
    }
    let events = split_body(&body).map_err(|err| {
        state.pipeline.reject(Source::Http, &err, body.len(), &body);
        ApiError::BadRequest {
            code: err.reason(),
            message: err.to_string(),
        }
    })?;
    let total = events.len();
    let mut errors = Vec::new();
    let mut ticket = None;
    for (index, raw) in events.into_iter().enumerate() {
        let text = String::from(Box::<str>::from(raw));
        let (size, head) = (text.len(), PacketHead::new(text.as_bytes()));
        match event::from_json(text) {
            Ok(event) => ticket = state.pipeline.dispatch(Source::Http, event).or(ticket),
            Err(err) => {
                state
                    .pipeline
                    .reject(Source::Http, &err, size, head.as_slice());
                errors.push(Rejected {
                    index,
                    reason: err.reason(),
                    message: err.to_string(),
                });
            }
        }
    }
    if let Some(ticket) = ticket {
        // Accepted means on disk, for the events that made jobs.
        state.pipeline.wait_durable(ticket).await;
    }
    let accepted = total - errors.len();
    if errors.is_empty() {
        return Ok(Json(Accepted { accepted }).into_response());
    }
    tracing::debug!(
        accepted,
        rejected = errors.len(),
        "ingest batch partly rejected"
    );
    let reply = PartlyRejected {
        code: "invalid_event",
        message: format!("{} of {total} events rejected", errors.len()),
        accepted,
        errors,
    };
    Ok((StatusCode::BAD_REQUEST, Json(reply)).into_response())
}

fn authorize(state: &Ingest, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(secret) = &state.secret else {
        return Err(ApiError::Forbidden {
            code: "ingest_disabled",
            message: "POST /ingest is off: set ingest.secret to turn it on".into(),
        });
    };
    match bearer(headers) {
        Some(token) if is_secret(secret, token) => Ok(()),
        Some(_) => Err(ApiError::Unauthorized {
            code: "ingest_unauthorized",
            message: "wrong ingest secret".into(),
        }),
        None => Err(ApiError::Unauthorized {
            code: "ingest_unauthorized",
            message: "send Authorization: Bearer <ingest.secret>".into(),
        }),
    }
}

/// Whether an `Authorization` value is `Bearer <ingest.secret>`.
pub(crate) fn accepts_secret(secret: &Secret, authorization: &str) -> bool {
    bearer_token(authorization).is_some_and(|token| is_secret(secret, token))
}

fn is_secret(secret: &Secret, token: &str) -> bool {
    secret.matches(token.as_bytes())
}

fn first_byte(body: &[u8]) -> Option<u8> {
    body.iter().copied().find(|b| !b.is_ascii_whitespace())
}

/// A body that is one JSON object, parsed as an event; the fast path of both this handler and
/// [`super::lean_ingest`]. An error here is not the reply: the general path reports it.
pub(crate) fn single_event(body: &[u8]) -> Result<event::Event, ParseError> {
    if first_byte(body) != Some(b'{') {
        return Err(ParseError::Json("not a single object".into()));
    }
    let text = std::str::from_utf8(body).map_err(|err| ParseError::Json(err.to_string()))?;
    event::from_json(text.to_owned())
}

/// One object or an array of objects; each element stays raw text until parsed as an event.
fn split_body(body: &[u8]) -> Result<Vec<Box<RawValue>>, ParseError> {
    let parsed = match first_byte(body) {
        Some(b'[') => serde_json::from_slice::<Vec<Box<RawValue>>>(body),
        _ => serde_json::from_slice::<Box<RawValue>>(body).map(|raw| vec![raw]),
    };
    parsed.map_err(|err| ParseError::Json(err.to_string()))
}

/// Compares secrets in time that does not depend on where they differ.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        assert_eq!(split_body(b"{\"event\":\"A\"}").unwrap().len(), 1);
        assert_eq!(
            split_body(b" [{\"event\":\"A\"}, {\"event\":\"B\"}] ")
                .unwrap()
                .len(),
            2
        );
        assert_eq!(split_body(b"[]").unwrap().len(), 0);
        assert!(split_body(b"").is_err());
        assert!(split_body(b"{").is_err());
        assert!(split_body(b"[1,").is_err());
    }

    #[test]
    fn secrets_compare() {
        let secret = Secret::new("abc");
        assert!(secret.matches(b"abc"));
        assert!(!secret.matches(b"abd"));
        assert!(!secret.matches(b"abcd"));
    }
}
