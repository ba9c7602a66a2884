//! `POST /devices`, `GET /devices`, `DELETE /devices/{id}`: a user's apps register their push
//! tokens, and browsers their Web Push subscriptions. Authenticated by the same client tokens
//! as the streams; a user only ever sees and deletes their own devices.
//! `GET /webpush/vapid-public-key` gives browsers the key to subscribe with.
//!
//! This module answers the requests; `registration.rs` reads and checks what apps send.

mod registration;

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{ApiError, Auth};
use crate::auth::unix_now;
use crate::push::DeviceCache;
use crate::push::webpush::{EndpointPolicy, Vapid};
use crate::store::{Device, DeviceError, Store, Upserted};

use registration::RegistrationForm;
pub use registration::{Registration, SubscriptionKeys};

/// What the device handlers use.
pub struct Devices {
    pub auth: Auth,
    /// The `devices` table.
    pub store: Store,
    /// Registered devices in memory; updated after each committed change (and, in a cluster,
    /// announced to the other nodes from there).
    pub cache: Arc<DeviceCache>,
    /// Devices one user may register.
    pub max_per_user: usize,
    /// The VAPID key when Web Push is on; registrations for it are refused otherwise.
    pub vapid: Option<Arc<Vapid>>,
    /// Which Web Push endpoints may be registered.
    pub endpoints: EndpointPolicy,
}

/// A device as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Device)]
struct DeviceBody<'a> {
    id: i64,
    /// `apns`, `fcm` or `webpush`.
    platform: &'static str,
    /// The APNs or FCM token, or the Web Push endpoint.
    token: &'a str,
    app: &'a str,
    /// `production` or `sandbox`.
    environment: &'static str,
    /// When the token was first registered, seconds since the epoch.
    created_at: i64,
    /// When it was last registered again.
    registered_at: i64,
    /// Web Push only: `legacy` or `jmap`.
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<&'static str>,
}

/// The key browsers subscribe with (`applicationServerKey`).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct VapidKey<'a> {
    /// The VAPID public key: a 65-byte uncompressed P-256 point, base64url.
    application_server_key: &'a str,
    /// The same key as a JMAP session capability (RFC 9749), for servers that put it in
    /// their session object.
    #[schema(value_type = Object)]
    capabilities: serde_json::Value,
}

/// The caller's devices.
#[derive(Serialize, utoipa::ToSchema)]
struct DeviceList<'a> {
    devices: Vec<DeviceBody<'a>>,
}

/// Registers a device, or refreshes a known token (idempotent): 201 when new, 200 when known.
#[utoipa::path(
    post,
    path = "/devices",
    operation_id = "registerDevice",
    tag = "devices",
    security(("client_token" = []), ("client_cookie" = [])),
    request_body(content = RegistrationForm, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered", body = DeviceBody, headers(("Location" = String, description = "`/devices/<id>`"))),
        (status = 200, description = "Known already: its registration time is refreshed (and a token moves to this user)", body = DeviceBody, headers(("Location" = String, description = "`/devices/<id>`"))),
        (status = 400, description = "`invalid_device`, with what is wrong (for Web Push also an endpoint that is not `https` or not on a public address)", body = super::openapi::ErrorBody),
        (status = 401, description = "`token_missing`, `token_invalid`, `token_expired`, `token_not_yet_valid`", body = super::openapi::ErrorBody),
        (status = 409, description = "`too_many_devices`: `push.max_devices_per_user` reached", body = super::openapi::ErrorBody),
        (status = 413, description = "`body_too_large`", body = super::openapi::ErrorBody),
    ),
)]
pub async fn register(
    State(state): State<Arc<Devices>>,
    headers: HeaderMap,
    body: Result<Json<Registration>, JsonRejection>,
) -> Result<Response, ApiError> {
    let user = state.auth.user(&headers, None)?;
    let Json(registration) = body.map_err(|rejection| match rejection.status() {
        axum::http::StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge,
        _ => invalid(rejection.body_text()),
    })?;
    let new = registration::accept(user, registration, &state)
        .await
        .map_err(invalid)?;
    let upserted = state
        .store
        .upsert_device(&new, to_i64(unix_now()), state.max_per_user)
        .await
        .map_err(|err| match err {
            DeviceError::Limit(limit) => ApiError::Conflict {
                code: "too_many_devices",
                message: format!("a user may register at most {limit} devices; delete one first"),
            },
            DeviceError::Database(err) => ApiError::Internal(format!("cannot store device: {err}")),
        })?;
    state.cache.apply(&upserted);
    let (status, device) = match &upserted {
        Upserted::Created(device) => (StatusCode::CREATED, device),
        Upserted::Updated { device, moved_from } => {
            if moved_from.is_some() {
                tracing::info!(device = device.id, "device token moved to another user");
            }
            (StatusCode::OK, device)
        }
    };
    let mut response = (status, Json(body_of(device))).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/devices/{}", device.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Lists the caller's devices.
#[utoipa::path(
    get,
    path = "/devices",
    operation_id = "listDevices",
    tag = "devices",
    security(("client_token" = []), ("client_cookie" = [])),
    responses(
        (status = 200, description = "The caller's devices, newest first", body = DeviceList),
        (status = 401, description = "`token_missing`, `token_invalid`, `token_expired`, `token_not_yet_valid`", body = super::openapi::ErrorBody),
    ),
)]
pub async fn list(
    State(state): State<Arc<Devices>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user = state.auth.user(&headers, None)?;
    let devices = state
        .store
        .devices_of(&user)
        .await
        .map_err(|err| ApiError::Internal(format!("cannot list devices: {err}")))?;
    Ok(Json(DeviceList {
        devices: devices.iter().map(body_of).collect(),
    })
    .into_response())
}

/// Deletes one of the caller's devices: 204, or 404 whether it is absent or someone else's.
#[utoipa::path(
    delete,
    path = "/devices/{id}",
    operation_id = "deleteDevice",
    tag = "devices",
    security(("client_token" = []), ("client_cookie" = [])),
    params(("id" = i64, Path, description = "The device's id")),
    responses(
        (status = 204, description = "Deleted: no more pushes go to it"),
        (status = 401, description = "`token_missing`, `token_invalid`, `token_expired`, `token_not_yet_valid`", body = super::openapi::ErrorBody),
        (status = 404, description = "`device_not_found`: absent, or another user's", body = super::openapi::ErrorBody),
    ),
)]
pub async fn delete(
    State(state): State<Arc<Devices>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let user = state.auth.user(&headers, None)?;
    let not_found = || ApiError::NotFound {
        code: "device_not_found",
        message: "no such device".into(),
    };
    let id: i64 = id.parse().map_err(|_| not_found())?;
    let removed = state
        .store
        .delete_device(&user, id, to_i64(unix_now()))
        .await
        .map_err(|err| ApiError::Internal(format!("cannot delete device: {err}")))?;
    let device = removed.ok_or_else(not_found)?;
    state.cache.remove(&device);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The VAPID public key, for `PushManager.subscribe({applicationServerKey})`.
#[utoipa::path(
    get,
    path = "/webpush/vapid-public-key",
    operation_id = "vapidPublicKey",
    tag = "devices",
    security(()),
    responses(
        (status = 200, description = "The key", body = VapidKey),
        (status = 404, description = "`webpush_off`: `push.webpush.enabled` is false", body = super::openapi::ErrorBody),
    ),
)]
pub async fn vapid_public_key(State(state): State<Arc<Devices>>) -> Result<Response, ApiError> {
    let vapid = state.vapid.as_ref().ok_or_else(|| ApiError::NotFound {
        code: "webpush_off",
        message: "Web Push is not enabled on this server".into(),
    })?;
    let key = vapid.public_key();
    Ok(Json(VapidKey {
        application_server_key: key,
        capabilities: serde_json::json!({
            "urn:ietf:params:jmap:webpush-vapid": {"applicationServerKey": key}
        }),
    })
    .into_response())
}

fn invalid(message: String) -> ApiError {
    ApiError::BadRequest {
        code: "invalid_device",
        message,
    }
}

fn body_of(device: &Device) -> DeviceBody<'_> {
    DeviceBody {
        id: device.id,
        platform: device.platform.as_str(),
        token: &device.token,
        app: &device.app,
        environment: device.environment.as_str(),
        created_at: device.created_at,
        registered_at: device.registered_at,
        format: device.webpush.as_ref().map(|keys| keys.format.as_str()),
    }
}

fn to_i64(seconds: u64) -> i64 {
    i64::try_from(seconds).unwrap_or(i64::MAX)
}
