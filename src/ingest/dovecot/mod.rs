//! Dovecot as a mail store: its push_notification plugin's OX driver (`PUT
//! /ingest/dovecot/ox`) and Lua driver running mailpush's script (`POST /ingest/dovecot/lua`,
//! `examples/dovecot/mailpush.lua`), turned into the same
//! [`Event`](crate::event::Event)s the Cyrus path builds, so routing and every output stay one.
//!
//! What Dovecot 2.3 sends, and why it is read so:
//! - Dovecot waits for the answer: the IMAP command or the LMTP delivery is blocked until it
//!   comes. So the handlers check the credentials, parse, dispatch and answer; nothing waits on
//!   a database (Dovecot events make no jobs). The Lua client always sends `Expect:
//!   100-continue`; hyper answers it once the handler reads the body, after the credentials:
//!   a refused request never sends its body.
//! - Dovecot has no modseqs. Each change gets one of mailpush's own: the microseconds since the
//!   epoch, or one more than the last one given, whichever is larger. A user's state so rises
//!   with every change and never goes back, across restarts too, without reading the record
//!   first. A state is then "something changed", not a position in Dovecot's history: clients
//!   resync over IMAP (CONDSTORE) or their own cache.
//! - Every system-flag change also reports a FlagsClear with no flags and no keywords, and
//!   every keyword change an empty FlagsSet: both are dropped (counted in the answer).
//! - The OX driver sends MessageNew in INBOX only, with the raw From and Subject headers
//!   (decoded here) and the INBOX unseen count. The Lua script sends every event of a
//!   transaction, decoded, and the INBOX unseen count when the transaction touched INBOX.
//! - APPEND, COPY and MOVE all arrive as MessageAppend; MOVE also as a MessageExpunge.
//!
//! A transaction's unseen count rides on one event only (its MessageNew, else its last INBOX
//! event), so one transaction moves a phone's badge once, however many messages it touched.
//!
//! This module takes the requests (credentials, body, answer); `parse.rs` reads the bodies.

mod parse;

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Serialize;

use crate::event::ParseError;
use crate::http::{ApiError, bearer};
use crate::ingest::http::Ingest;
use crate::ingest::{PacketHead, Source};

use parse::{LuaTransaction, OxNotification};
pub use parse::{from_lua, from_ox};

/// What a request came to.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = DovecotAccepted)]
struct Accepted {
    accepted: usize,
    /// FlagsSet and FlagsClear events with no flags and no keywords: Dovecot's noise.
    dropped_empty: usize,
}

/// `PUT /ingest/dovecot/ox`: one MessageNew from the OX driver, authenticated with HTTP Basic
/// (any user name, the ingest secret as password: the driver's `url=http://u:SECRET@…`).
#[utoipa::path(
    put,
    path = "/ingest/dovecot/ox",
    operation_id = "ingestDovecotOx",
    tag = "ingest",
    security(("dovecot_basic" = [])),
    request_body(content = OxNotification, content_type = "application/json"),
    responses(
        (status = 200, description = "Taken", body = Accepted),
        (status = 400, description = "`invalid_json`, `missing_field`, `missing_event_name`, `number_out_of_range`, `unreadable_body`", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "`ingest_unauthorized`", body = crate::http::openapi::ErrorBody, headers(("WWW-Authenticate" = String, description = "`Basic realm=\"mailpush\"`"))),
        (status = 403, description = "`ingest_disabled`: `ingest.secret` is not set", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "`body_too_large`", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn ox(State(state): State<Arc<Ingest>>, request: Request) -> Result<Response, ApiError> {
    if let Err(err) = authorize(&state, request.headers(), Credentials::Basic) {
        let mut response = err.into_response();
        if response.status() == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"mailpush\""),
            );
        }
        return Ok(response);
    }
    let body = read_body(request).await?;
    let event = from_ox(&body).map_err(|err| reject(&state, Source::DovecotOx, &err, &body))?;
    state.pipeline.dispatch(Source::DovecotOx, event);
    Ok(Json(Accepted {
        accepted: 1,
        dropped_empty: 0,
    })
    .into_response())
}

/// `POST /ingest/dovecot/lua`: one push transaction from mailpush's Lua script, authenticated
/// with `Authorization: Bearer <ingest secret>`.
#[utoipa::path(
    post,
    path = "/ingest/dovecot/lua",
    operation_id = "ingestDovecotLua",
    tag = "ingest",
    security(("ingest_secret" = [])),
    request_body(content = LuaTransaction, content_type = "application/json"),
    responses(
        (status = 200, description = "Taken: how many events, and how many empty flag changes were dropped", body = Accepted),
        (status = 400, description = "`invalid_json`, `missing_field`, `missing_event_name`, `number_out_of_range`, `unreadable_body`", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "`ingest_unauthorized`", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "`ingest_disabled`: `ingest.secret` is not set", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "`body_too_large`", body = crate::http::openapi::ErrorBody),
    ),
)]
pub async fn lua(State(state): State<Arc<Ingest>>, request: Request) -> Result<Response, ApiError> {
    authorize(&state, request.headers(), Credentials::Bearer)?;
    let body = read_body(request).await?;
    let (events, dropped_empty) =
        from_lua(&body).map_err(|err| reject(&state, Source::DovecotLua, &err, &body))?;
    let accepted = events.len();
    for event in events {
        state.pipeline.dispatch(Source::DovecotLua, event);
    }
    Ok(Json(Accepted {
        accepted,
        dropped_empty,
    })
    .into_response())
}

/// Which credentials a driver sends.
#[derive(Clone, Copy)]
enum Credentials {
    /// HTTP Basic, the password being the ingest secret (the OX driver's URL userinfo).
    Basic,
    /// `Bearer <ingest secret>` (the Lua script's `mailpush_token`).
    Bearer,
}

fn authorize(
    state: &Ingest,
    headers: &HeaderMap,
    credentials: Credentials,
) -> Result<(), ApiError> {
    let Some(secret) = &state.secret else {
        return Err(ApiError::Forbidden {
            code: "ingest_disabled",
            message: "Dovecot ingest is off: set ingest.secret to turn it on".into(),
        });
    };
    let given = match credentials {
        Credentials::Bearer => bearer(headers).map(str::to_owned),
        Credentials::Basic => basic_password(headers),
    };
    match given {
        Some(given) if secret.matches(given.as_bytes()) => Ok(()),
        given => {
            let (scheme, how) = match credentials {
                Credentials::Basic => (
                    "Basic",
                    "put the ingest secret in the driver's url as its password: ox:url=http://dovecot:SECRET@host/ingest/dovecot/ox",
                ),
                Credentials::Bearer => ("Bearer", "set mailpush_token to the ingest secret"),
            };
            state
                .pipeline
                .metrics()
                .request_refused("ingest_unauthorized");
            Err(ApiError::Unauthorized {
                code: "ingest_unauthorized",
                message: if given.is_some() {
                    format!("wrong ingest secret ({scheme})")
                } else {
                    format!("no {scheme} credentials: {how}")
                },
            })
        }
    }
}

/// The password of an `Authorization: Basic` header.
fn basic_password(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':')
        .map(|(_, password)| password.to_owned())
}

/// Reads the body, once the credentials are checked: only then does hyper answer `Expect:
/// 100-continue`, so a refused request never sends its body.
async fn read_body(request: Request) -> Result<Bytes, ApiError> {
    let body: Result<Bytes, BytesRejection> = Bytes::from_request(request, &()).await;
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge,
        _ => ApiError::BadRequest {
            code: "unreadable_body",
            message: rejection.body_text(),
        },
    })
}

/// Counts and logs a bad body, and says why to the caller.
fn reject(state: &Ingest, source: Source, err: &ParseError, body: &[u8]) -> ApiError {
    let head = PacketHead::new(body);
    state
        .pipeline
        .reject(source, err, body.len(), head.as_slice());
    tracing::warn!(source = source.label(), reason = err.reason(), error = %err, "Dovecot request refused");
    ApiError::BadRequest {
        code: err.reason(),
        message: err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            "Basic ZG92ZWNvdDpzM2NyZXQ6eA==".parse().unwrap(),
        );
        assert_eq!(basic_password(&headers).as_deref(), Some("s3cret:x"));
        headers.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert_eq!(basic_password(&headers), None);
    }
}
