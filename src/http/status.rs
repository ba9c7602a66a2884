//! `GET /status`, the operators' live page, and `GET /status/events`, the EventSource that
//! feeds it: once a second, the totals, gauges and latest rejected packets of
//! [`crate::metrics::StatusSnapshot`]. The page derives rates itself, so a missed frame or a
//! reconnect costs a point on a chart, not a wrong figure.
//!
//! Both need a token with the admin claim. The page is one HTML file compiled into the binary:
//! no build step, no assets, nothing to install next to it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream;
use serde::Deserialize;

use super::{ApiError, Operators, event_stream};

/// The page, with its script and styles inline.
const PAGE: &str = include_str!("status.html");

/// How often the stream sends figures.
const INTERVAL: Duration = Duration::from_secs(1);

/// The page's only script and style are inline; it talks to its own origin only.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'";

/// Query parameters of both endpoints.
#[derive(Debug, Deserialize)]
pub struct StatusQuery {
    access_token: Option<String>,
}

/// Serves the page to operators.
#[utoipa::path(
    get,
    path = "/status",
    operation_id = "statusPage",
    tag = "operators",
    security(("client_token" = []), ("client_cookie" = []), ("client_query" = [])),
    responses(
        (status = 200, description = "The live status page (a token with the admin claim: `mailpush token --admin`)", content_type = "text/html", body = String),
        (status = 401, description = "`token_missing`, `token_invalid`, `token_expired`, `token_not_yet_valid`", body = super::openapi::ErrorBody),
        (status = 403, description = "`not_admin`", body = super::openapi::ErrorBody),
    ),
)]
pub async fn page(
    State(state): State<Arc<Operators>>,
    headers: HeaderMap,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let token = query.ok().and_then(|Query(query)| query.access_token);
    let operator = state.auth.admin(&headers, token.as_deref())?;
    tracing::debug!(operator, "status page opened");
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        PAGE,
    )
        .into_response())
}

/// Streams `event: stats` frames until the client leaves or the server drains.
#[utoipa::path(
    get,
    path = "/status/events",
    operation_id = "statusEvents",
    tag = "operators",
    security(("client_token" = []), ("client_cookie" = []), ("client_query" = [])),
    responses(
        (status = 200, description = "`event: stats` once a second: totals, gauges and the latest rejected packets", content_type = "text/event-stream", body = String),
        (status = 401, description = "`token_missing`, `token_invalid`, `token_expired`, `token_not_yet_valid`", body = super::openapi::ErrorBody),
        (status = 403, description = "`not_admin`", body = super::openapi::ErrorBody),
    ),
)]
pub async fn events(
    State(state): State<Arc<Operators>>,
    headers: HeaderMap,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let token = query.ok().and_then(|Query(query)| query.access_token);
    state.auth.admin(&headers, token.as_deref())?;
    let mut ticker = tokio::time::interval(INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A field line with no blank line after it: the first stats event carries it.
    let retry = Bytes::from(format!("retry: {}\n", state.retry_ms));
    let frames = stream::unfold(
        (state, ticker, Some(retry)),
        |(state, mut ticker, first)| async move {
            if let Some(retry) = first {
                return Some((Ok(retry), (state, ticker, None)));
            }
            tokio::select! {
                () = state.shutdown.cancelled() => None,
                _ = ticker.tick() => {
                    let frame = stats_frame(&state);
                    Some((Ok::<_, std::convert::Infallible>(frame), (state, ticker, None)))
                }
            }
        },
    );
    event_stream(axum::body::Body::from_stream(frames))
}

fn stats_frame(state: &Operators) -> Bytes {
    let snapshot = state.metrics.snapshot(state.levels());
    // Serializing plain maps, numbers and strings cannot fail; JSON has no raw newlines.
    let json = serde_json::to_string(&snapshot).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("event: stats\ndata: {json}\n\n"))
}
