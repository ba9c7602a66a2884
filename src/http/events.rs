//! `GET /events` (FastMail's format) and `GET /jmap/eventsource` (RFC 8620 §7.3).
//!
//! Both authenticate the token, take a connection slot from the hub (subscribing to the user's
//! channel), get the user's state ready (in a cluster: listen for changes made on other nodes,
//! then read the record), read `Last-Event-ID` and stream the [`Feed`] of the token's user. A
//! user can only ever subscribe to their own cell: the user id comes from the verified token,
//! never from the request.
//!
//! On a connection the lean listener serves ([`super::serve`]) the handler leaves the feed in
//! the request's [`LeanStream`] slot and answers with the head only; on one hyper serves, the
//! feed becomes the response body. Either way the same checks ran first.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;

use super::{ApiError, Auth, event_stream};
use crate::metrics::Metrics;
use crate::stream::jmap::TypeFilter;
use crate::stream::persist::Persistence;
use crate::stream::{
    Feed, FeedOptions, Format, JmapFormat, JmapIds, StateHub, Subscription, UserState,
};

/// What the stream handlers use.
pub struct Streams {
    pub auth: Auth,
    /// Every user's channel, which streams subscribe to.
    pub hub: Arc<StateHub>,
    /// Gets a user's state ready before their stream's first frame.
    pub persistence: Arc<Persistence>,
    pub metrics: Arc<Metrics>,
    /// `retry:` hint for EventSource clients, in milliseconds.
    pub retry_ms: u64,
    /// How JMAP state strings are written (`jmap.id_scheme`).
    pub jmap_ids: JmapIds,
}

/// A slot the lean listener puts in a stream request's extensions: the handler leaves its
/// feed here, and the listener writes the frames to the socket itself.
#[derive(Clone, Default)]
pub struct LeanStream(Arc<Mutex<Option<Feed>>>);

impl LeanStream {
    /// The feed the handler left, if it opened a stream.
    pub fn take(&self) -> Option<Feed> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    fn put(&self, feed: Feed) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(feed);
    }
}

/// Query parameters of `GET /events`.
#[derive(Debug, Deserialize)]
pub struct LegacyQuery {
    access_token: Option<String>,
}

/// Query parameters of `GET /jmap/eventsource`.
#[derive(Debug, Deserialize)]
pub struct JmapQuery {
    access_token: Option<String>,
    types: Option<String>,
    closeafter: Option<String>,
    ping: Option<String>,
}

/// The ping interval range; RFC 8620 asks for a minimum of at most 30 s and a maximum of at
/// least 300 s.
const PING_MIN_SECS: u64 = 5;
const PING_MAX_SECS: u64 = 600;

/// Serves FastMail's `event: push` stream.
#[utoipa::path(
    get,
    path = "/events",
    operation_id = "streamEvents",
    tag = "streams",
    security(("client_token" = []), ("client_cookie" = []), ("client_query" = [])),
    params(
        ("Last-Event-ID" = Option<String>, Header, description = "The `id` of the last event the client saw (`m<mail>c<calendar>a<contacts>`): the current state comes at once only if it moved since"),
    ),
    responses(
        (status = 200, description = "The stream: a `retry:` hint, then `event: push` with `id: m<mail>c<calendar>a<contacts>` and `data: {\"mailModSeq\":…,\"calendarModSeq\":…,\"contactsModSeq\":…}` at each change, `event: reminder` for calendar alarms, and `:` keepalive comments", content_type = "text/event-stream", body = String),
        (status = 400, description = "`invalid_query`", body = super::openapi::ErrorBody),
        (status = 401, description = "`token_missing`, `token_invalid`, `token_expired`, `token_not_yet_valid`", body = super::openapi::ErrorBody),
        (status = 429, description = "`too_many_user_connections`, `too_many_connections`", body = super::openapi::ErrorBody, headers(("Retry-After" = String, description = "Seconds before trying again"))),
    ),
)]
pub async fn legacy(
    State(state): State<Arc<Streams>>,
    lean: Option<Extension<LeanStream>>,
    headers: HeaderMap,
    query: Result<Query<LegacyQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let user = state.auth.user(&headers, query.access_token.as_deref())?;
    let subscription = subscribe(&state, &user).await?;
    let feed = open_feed(&state, &headers, subscription, Format::Legacy, "legacy");
    respond(feed, lean)
}

/// Serves the JMAP `event: state` stream.
#[utoipa::path(
    get,
    path = "/jmap/eventsource",
    operation_id = "streamJmap",
    tag = "streams",
    security(("client_token" = []), ("client_cookie" = []), ("client_query" = [])),
    params(
        ("types" = Option<String>, Query, pattern = r"^(\*|[^,]*\S[^,]*(,[^,]*\S[^,]*)*)$", description = "`*` (the default) or a comma-separated list of JMAP type names (`Email,Mailbox`)"),
        ("closeafter" = Option<String>, Query, pattern = "^(state|no)$", description = "`state` ends the response after one state event; `no` (the default) keeps it open"),
        ("ping" = Option<u32>, Query, description = "Seconds between `ping` events (5 to 600); 0 (the default) sends none"),
        ("Last-Event-ID" = Option<String>, Header, description = "The `id` of the last event the client saw: the current state comes at once only if it moved since"),
    ),
    responses(
        (status = 200, description = "The stream (RFC 8620 §7.3): `event: state` with a StateChange `data` at each change, `event: ping` when asked for, `event: reminder` for calendar alarms", content_type = "text/event-stream", body = String),
        (status = 400, description = "`invalid_query`, `invalid_types`, `invalid_closeafter`, `invalid_ping`", body = super::openapi::ErrorBody),
        (status = 401, description = "`token_missing`, `token_invalid`, `token_expired`, `token_not_yet_valid`", body = super::openapi::ErrorBody),
        (status = 429, description = "`too_many_user_connections`, `too_many_connections`", body = super::openapi::ErrorBody, headers(("Retry-After" = String, description = "Seconds before trying again"))),
    ),
)]
pub async fn jmap(
    State(state): State<Arc<Streams>>,
    lean: Option<Extension<LeanStream>>,
    headers: HeaderMap,
    query: Result<Query<JmapQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    // Authenticate before looking at the other parameters, so anonymous callers learn nothing.
    let user = state.auth.user(&headers, query.access_token.as_deref())?;
    let format = jmap_format(&query)?;
    let subscription = subscribe(&state, &user).await?;
    let feed = open_feed(&state, &headers, subscription, format, "jmap");
    respond(feed, lean)
}

/// Takes a connection slot on the user's channel, then gets the user's state ready: in that
/// order, so that a change made elsewhere while the record is read still wakes the stream.
async fn subscribe(state: &Streams, user: &str) -> Result<Subscription, ApiError> {
    let subscription = state.hub.subscribe(user).inspect_err(|err| {
        state.metrics.request_refused(match err {
            crate::stream::SubscribeError::UserLimit => "user_limit",
            crate::stream::SubscribeError::ServerLimit => "server_limit",
        });
    })?;
    state.persistence.prepare(user).await;
    Ok(subscription)
}

/// The stream response: the head alone when the lean listener writes the frames, the frames as
/// the body otherwise.
fn respond(feed: Feed, lean: Option<Extension<LeanStream>>) -> Result<Response, ApiError> {
    match lean {
        Some(Extension(slot)) => {
            slot.put(feed);
            event_stream(Body::empty())
        }
        None => event_stream(Body::from_stream(feed.into_stream())),
    }
}

fn jmap_format(query: &JmapQuery) -> Result<Format, ApiError> {
    let filter = TypeFilter::parse(query.types.as_deref().unwrap_or("*")).map_err(|message| {
        ApiError::BadRequest {
            code: "invalid_types",
            message: message.into(),
        }
    })?;
    let close_after_state = match query.closeafter.as_deref().unwrap_or("no") {
        "state" => true,
        "no" => false,
        _ => {
            return Err(ApiError::BadRequest {
                code: "invalid_closeafter",
                message: "closeafter must be state or no".into(),
            });
        }
    };
    let ping_secs: u64 =
        query
            .ping
            .as_deref()
            .unwrap_or("0")
            .parse()
            .map_err(|_| ApiError::BadRequest {
                code: "invalid_ping",
                message: "ping must be a number of seconds".into(),
            })?;
    let ping =
        (ping_secs > 0).then(|| Duration::from_secs(ping_secs.clamp(PING_MIN_SECS, PING_MAX_SECS)));
    Ok(Format::Jmap(Box::new(JmapFormat {
        filter,
        close_after_state,
        ping,
    })))
}

fn open_feed(
    state: &Streams,
    headers: &HeaderMap,
    subscription: Subscription,
    format: Format,
    format_label: &'static str,
) -> Feed {
    let seen = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|id| UserState::from_event_id(id.trim()));
    let options = FeedOptions {
        format,
        retry_ms: retry_with_jitter(state.retry_ms),
        sent: state.metrics.frames_sent(format_label),
        latency: state.metrics.eventsource_latency(),
        jmap_ids: state.jmap_ids,
    };
    Feed::new(subscription, seen, options)
}

/// Adds up to 20 % to the reconnection delay, so that clients dropped together (a restart, a
/// proxy reload) do not all come back in the same millisecond.
fn retry_with_jitter(retry_ms: u64) -> u64 {
    retry_ms + crate::backoff::random_u64() % (retry_ms / 5 + 1)
}

fn bad_query(rejection: QueryRejection) -> ApiError {
    ApiError::BadRequest {
        code: "invalid_query",
        message: rejection.body_text(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_jitter_stays_within_a_fifth() {
        let values: std::collections::HashSet<u64> =
            (0..200).map(|_| retry_with_jitter(5000)).collect();
        assert!(
            values.iter().all(|v| (5000..=6000).contains(v)),
            "{values:?}"
        );
        assert!(values.len() > 10, "spread out: {values:?}");
        assert_eq!(retry_with_jitter(0), 0);
    }
}
