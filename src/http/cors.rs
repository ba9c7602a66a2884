//! Cross-origin access for web apps served from another origin than mailpush (the usual case:
//! the app on `app.example.com`, the push gateway on `push.example.com`).
//!
//! Only origins listed in `http.cors_origins` are answered; no credentials are allowed, since
//! tokens travel in `Authorization` or `?access_token=` and never in a cookie across origins.
//! Requests without an allowed `Origin` pass through untouched, so same-origin use and
//! non-browser clients see no difference.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The origins `http.cors_origins` lets in.
pub struct AllowedOrigins {
    any: bool,
    origins: HashSet<String>,
}

/// How long a browser may cache a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

impl AllowedOrigins {
    /// Reads the configured list; `"*"` allows every origin.
    pub fn new(origins: &[String]) -> AllowedOrigins {
        AllowedOrigins {
            any: origins.iter().any(|origin| origin == "*"),
            origins: origins.iter().cloned().collect(),
        }
    }

    /// The `Access-Control-Allow-Origin` value for a request's `Origin`, if it is allowed.
    fn allow(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let origin = origin?;
        if self.any {
            return Some(HeaderValue::from_static("*"));
        }
        let text = origin.to_str().ok()?;
        self.origins.contains(text).then(|| origin.clone())
    }
}

/// Answers preflights from allowed origins and marks their responses readable.
pub async fn layer(
    State(allowed): State<Arc<AllowedOrigins>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(allow_origin) = allowed.allow(request.headers().get(header::ORIGIN)) else {
        return next.run(request).await;
    };
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, last-event-id"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(PREFLIGHT_MAX_AGE),
        );
        response
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    response
}
