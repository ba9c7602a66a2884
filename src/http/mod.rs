//! The HTTP API: the router, its shared state, and the one error type every handler returns.
//!
//! [`serve`] accepts connections and gives EventSource streams a lean writer of their own.
//! Handlers live in [`events`] (EventSource streams), [`devices`] and [`status`] (the
//! operators' live page); event sources that speak HTTP (`POST /ingest`, Dovecot) live with the
//! others in [`crate::ingest`]; [`cors`] lets web apps on other origins in. Each
//! group of handlers has a state of its own in [`AppState`], holding only what it uses. Every
//! error reaches the client as JSON with a stable `code`; client errors are logged at debug at
//! most, so a misbehaving client cannot fill the log.

pub mod cors;
pub mod devices;
pub mod events;
pub mod hyper_conn;
pub mod lean_ingest;
pub mod lean_stream;
pub mod openapi;
pub mod serve;
pub mod status;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, Claims, TokenKeys};
use crate::cluster::Link;
use crate::config::Secret;
use crate::listen::ConnectionBudget;
use crate::metrics::{Levels, Metrics};
use crate::push::PushHandle;
use crate::store::Store;
use crate::stream::{StateHub, SubscribeError};

/// What the router holds: one part per group of handlers, each handed only its own part
/// (axum's `FromRef`).
#[derive(Clone, FromRef)]
pub struct AppState {
    pub streams: Arc<events::Streams>,
    pub ingest: Arc<crate::ingest::http::Ingest>,
    pub devices: Arc<devices::Devices>,
    pub operators: Arc<Operators>,
}

/// Verifies client tokens (header, cookie or query) and counts the refusals.
pub struct Auth {
    pub keys: Arc<TokenKeys>,
    /// Cookie that may carry a client token.
    pub cookie_name: String,
    pub metrics: Arc<Metrics>,
}

/// What the operators' endpoints use: `/readyz`, `/metrics` and the status page.
pub struct Operators {
    pub auth: Auth,
    pub metrics: Arc<Metrics>,
    /// The bearer token `/metrics` asks for; None leaves it open.
    pub metrics_token: Option<Secret>,
    /// The database, which `/readyz` pings.
    pub store: Store,
    /// The NATS connection when clustered, which `/readyz` reports on.
    pub cluster: Option<Arc<Link>>,
    /// The owners of the gauges.
    pub hub: Arc<StateHub>,
    pub push: PushHandle,
    pub budget: Arc<ConnectionBudget>,
    /// `retry:` hint of the status stream, in milliseconds.
    pub retry_ms: u64,
    /// Cancelled at shutdown: the status stream ends (user streams end through their cells).
    pub shutdown: CancellationToken,
}

/// Builds the router with every endpoint: the routes of the OpenAPI document
/// ([`openapi::api_router`]), so each one is documented.
pub fn router(state: AppState, max_body_bytes: usize, cors_origins: &[String]) -> Router {
    let (routes, _document) = openapi::api_router().split_for_parts();
    let router = routes
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state);
    // Without configured origins the layer would only pass requests through, and it costs
    // about 1 KB of RSS per EventSource connection (measured with sseload): leave it out.
    if cors_origins.is_empty() {
        return router;
    }
    let allowed = Arc::new(cors::AllowedOrigins::new(cors_origins));
    router.layer(axum::middleware::from_fn_with_state(allowed, cors::layer))
}

/// Alive: the process serves HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "health",
    tag = "operators",
    security(()),
    responses((status = 200, description = "`ok`", content_type = "text/plain", body = String)),
)]
async fn healthz() -> &'static str {
    "ok\n"
}

/// What `/readyz` says of each dependency: `ok` / `connected`, or why not.
#[derive(Serialize, utoipa::ToSchema)]
struct Readiness {
    /// `ok`, `database unreachable` or `database did not answer within 2 s`.
    database: &'static str,
    /// In a cluster: `connected` or `cut off from NATS`; absent on a lone node.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<&'static str>,
}

/// Ready when the database answers and, in a cluster, the node is connected to NATS (a node
/// cut off serves stale states to users whose changes are ingested elsewhere): a load
/// balancer sends clients to another node meanwhile.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readiness",
    tag = "operators",
    security(()),
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready: the body says which dependency is away", body = Readiness),
    ),
)]
async fn readyz(State(state): State<Arc<Operators>>) -> Response {
    let database =
        match tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ping()).await {
            Ok(Ok(())) => Ok("ok"),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "readiness: database unreachable");
                Err("database unreachable")
            }
            Err(_) => Err("database did not answer within 2 s"),
        };
    let cluster = state.cluster.as_ref().map(|link| {
        if link.is_connected() {
            Ok("connected")
        } else {
            Err("cut off from NATS")
        }
    });
    let ready = database.is_ok() && cluster.is_none_or(|cluster| cluster.is_ok());
    let body = Readiness {
        database: database.unwrap_or_else(|reason| reason),
        cluster: cluster.map(|cluster| cluster.unwrap_or_else(|reason| reason)),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

impl Operators {
    /// The gauges, read from their owners: for `/metrics` and the status page.
    fn levels(&self) -> Levels {
        Levels {
            connections: self.hub.connections(),
            push_queue: self.push.queue_len(),
            open_connections: self.budget.open(),
            connection_budget: self.budget.max(),
            users_in_memory: self.hub.users(),
            cluster_connected: self
                .cluster
                .as_ref()
                .is_some_and(|link| link.is_connected()),
        }
    }
}

/// A `text/event-stream` response that proxies neither cache nor buffer.
fn event_stream(body: axum::body::Body) -> Result<Response, ApiError> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(body)
        .map_err(|err| ApiError::Internal(format!("cannot build the stream response: {err}")))
}

/// `/metrics`: open to whoever reaches the port, unless `http.metrics_token` is set; then the
/// scraper sends it as a bearer token.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operators",
    security((), ("metrics_token" = [])),
    responses(
        (status = 200, description = "Every metric, in the OpenMetrics text format", content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String),
        (status = 401, description = "`metrics_unauthorized`: `http.metrics_token` is set and was not sent", body = openapi::ErrorBody),
    ),
)]
async fn metrics(State(state): State<Arc<Operators>>, headers: HeaderMap) -> Response {
    if let Some(token) = &state.metrics_token {
        let given = bearer(&headers).is_some_and(|given| token.matches(given.as_bytes()));
        if !given {
            state.metrics.request_refused("metrics_unauthorized");
            return ApiError::Unauthorized {
                code: "metrics_unauthorized",
                message: "send Authorization: Bearer <http.metrics_token>".into(),
            }
            .into_response();
        }
    }
    let body = state.metrics.render(state.levels());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Every way a request can fail, each with its HTTP status and stable code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Busy(#[from] SubscribeError),
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{message}")]
    Unauthorized { code: &'static str, message: String },
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("request body is larger than the limit")]
    TooLarge,
    /// A fault of ours; the detail goes to the log, the client gets a generic message.
    #[error("internal error")]
    Internal(String),
}

/// The body of every error answer (documented as [`openapi::ErrorBody`]).
#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: String,
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Auth(err) => (StatusCode::UNAUTHORIZED, err.code()),
            ApiError::Busy(SubscribeError::UserLimit) => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_user_connections")
            }
            ApiError::Busy(SubscribeError::ServerLimit) => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_connections")
            }
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::Unauthorized { code, .. } => (StatusCode::UNAUTHORIZED, code),
            ApiError::Forbidden { code, .. } => (StatusCode::FORBIDDEN, code),
            ApiError::NotFound { code, .. } => (StatusCode::NOT_FOUND, code),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            ApiError::Internal(detail) => tracing::error!(error = %detail, "request failed"),
            _ => tracing::debug!(status = status.as_u16(), code, error = %self, "request refused"),
        }
        let body = ErrorBody {
            code,
            message: self.to_string(),
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        match status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::TOO_MANY_REQUESTS => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
            }
            _ => {}
        }
        response
    }
}

impl Auth {
    /// The user a request speaks for, from its verified client token; refusals are counted.
    pub fn user(&self, headers: &HeaderMap, query_token: Option<&str>) -> Result<String, ApiError> {
        self.verify(headers, query_token).map(|claims| claims.sub)
    }

    /// The operator a request speaks for: a verified token with the admin claim.
    pub fn admin(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<String, ApiError> {
        let claims = self.verify(headers, query_token)?;
        if !claims.admin {
            self.metrics.request_refused("not_admin");
            return Err(ApiError::Forbidden {
                code: "not_admin",
                message: "this needs a token with the admin claim (mailpush token --admin)".into(),
            });
        }
        Ok(claims.sub)
    }

    fn verify(&self, headers: &HeaderMap, query_token: Option<&str>) -> Result<Claims, ApiError> {
        request_token(headers, &self.cookie_name, query_token)
            .ok_or(AuthError::Missing)
            .and_then(|token| self.keys.verify(token))
            .map_err(|err| {
                self.metrics.request_refused(err.code());
                err.into()
            })
    }
}

/// The token of a request: `Authorization: Bearer`, then the cookie, then `?access_token=`.
pub fn request_token<'a>(
    headers: &'a HeaderMap,
    cookie_name: &str,
    query_token: Option<&'a str>,
) -> Option<&'a str> {
    bearer(headers)
        .or_else(|| cookie(headers, cookie_name))
        .or(query_token)
        .filter(|token| !token.is_empty())
}

/// The credentials of an `Authorization: Bearer` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    bearer_token(headers.get(header::AUTHORIZATION)?.to_str().ok()?)
}

/// The token of an `Authorization: Bearer <token>` value.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn token_sources_in_order() {
        let check = |map: HeaderMap, query: Option<&str>, expect: Option<&str>| {
            assert_eq!(request_token(&map, "mailpush_token", query), expect);
        };
        check(
            headers(&[("authorization", "Bearer aaa")]),
            Some("ccc"),
            Some("aaa"),
        );
        check(
            headers(&[("authorization", "bearer  aaa ")]),
            None,
            Some("aaa"),
        );
        check(
            headers(&[("cookie", "x=1; mailpush_token=bbb")]),
            Some("ccc"),
            Some("bbb"),
        );
        check(
            headers(&[("authorization", "Basic zzz"), ("cookie", "other=1")]),
            Some("ccc"),
            Some("ccc"),
        );
        check(headers(&[]), None, None);
        check(headers(&[]), Some(""), None);
    }
}
