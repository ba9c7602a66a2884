//! The HTTP API's contract: an OpenAPI 3.1 document built from the handlers' own annotations
//! and types, and served at `GET /openapi.json`.
//!
//! The router is built from the same annotations ([`api_router`]: each handler is registered
//! with the path and method its `#[utoipa::path]` names), so a route cannot exist without its
//! entry, nor an entry without its route; `tests/openapi.rs` checks that every documented
//! operation answers, and schemathesis holds the answers to the schemas.

use std::sync::OnceLock;

use axum::Json;
use axum::response::IntoResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

/// The document's fixed parts: what it is, its tags, its security schemes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "mailpush",
        description = "Push-notification gateway for mail servers: EventSource streams of users' mail, calendar and contacts states, device registration for APNs and FCM, event ingest from mail stores, and the operators' endpoints.",
    ),
    tags(
        (name = "streams", description = "EventSource streams of a user's state"),
        (name = "devices", description = "A user's phones, for APNs and FCM pushes"),
        (name = "ingest", description = "Events from mail stores and other producers"),
        (name = "operators", description = "Health, readiness, metrics, the status page"),
    ),
    components(schemas(ErrorBody, ErrorCode)),
    modifiers(&SecuritySchemes),
)]
pub struct ApiDoc;

/// The error body every endpoint answers a refusal with.
#[derive(serde::Serialize, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ErrorBody {
    code: ErrorCode,
    /// What went wrong, for people; `code` is for programs.
    message: String,
}

/// Every stable error code.
#[derive(serde::Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum ErrorCode {
    TokenMissing,
    TokenInvalid,
    TokenExpired,
    TokenNotYetValid,
    NotAdmin,
    TooManyUserConnections,
    TooManyConnections,
    InvalidQuery,
    InvalidTypes,
    InvalidCloseafter,
    InvalidPing,
    InvalidDevice,
    TooManyDevices,
    DeviceNotFound,
    WebpushOff,
    IngestDisabled,
    IngestUnauthorized,
    UnreadableBody,
    BodyTooLarge,
    InvalidEvent,
    InvalidJson,
    MissingEventName,
    MissingField,
    BadUri,
    NumberOutOfRange,
    MetricsUnauthorized,
    OverCapacity,
    RequestTimeout,
    Internal,
}

/// Declares how requests authenticate.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            let mut http = Http::new(HttpAuthScheme::Bearer);
            http.description = Some(description.to_owned());
            SecurityScheme::Http(http)
        };
        components.add_security_scheme(
            "client_token",
            bearer("A client token (JWT) whose subject is the user: `mailpush token --user U`, or one your login service signs"),
        );
        components.add_security_scheme(
            "client_cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "mailpush_token",
                "The client token in a cookie (`auth.cookie_name`), for browsers whose EventSource sets no headers",
            ))),
        );
        components.add_security_scheme(
            "client_query",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "access_token",
                "The client token as a query parameter, for EventSource clients that can set neither headers nor cookies",
            ))),
        );
        components.add_security_scheme(
            "ingest_secret",
            bearer("`ingest.secret`, shared with the event producers"),
        );
        let mut basic = Http::new(HttpAuthScheme::Basic);
        basic.description =
            Some("Dovecot's OX driver: any user name, `ingest.secret` as the password".to_owned());
        components.add_security_scheme("dovecot_basic", SecurityScheme::Http(basic));
        components.add_security_scheme(
            "metrics_token",
            bearer("`http.metrics_token`, when it is set"),
        );
    }
}

/// Every route, registered with the path and method its annotation names, and the document
/// they make.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(super::events::legacy))
        .routes(routes!(super::events::jmap))
        .routes(routes!(crate::ingest::http::post))
        .routes(routes!(crate::ingest::dovecot::ox))
        .routes(routes!(crate::ingest::dovecot::lua))
        .routes(routes!(super::devices::register, super::devices::list))
        .routes(routes!(super::devices::delete))
        .routes(routes!(super::devices::vapid_public_key))
        .routes(routes!(super::healthz))
        .routes(routes!(super::readyz))
        .routes(routes!(super::metrics))
        .routes(routes!(super::status::page))
        .routes(routes!(super::status::events))
        .routes(routes!(spec))
}

/// The document, made once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOCUMENT.get_or_init(|| api_router().split_for_parts().1)
}

/// This document: the contract of every endpoint, for client generators and API testers.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openApiDocument",
    tag = "operators",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)),
)]
pub async fn spec() -> impl IntoResponse {
    Json(document())
}
