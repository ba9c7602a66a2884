//! `POST /devices`, `GET /devices`, `DELETE /devices/{id}`: a user's apps register their push
//! tokens, and browsers their Web Push subscriptions. Authenticated by the same client tokens
//! as the streams; a user only ever sees and deletes their own devices.
//! `GET /webpush/vapid-public-key` gives browsers the key to subscribe with.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{ApiError, Auth};
use crate::auth::unix_now;
use crate::push::DeviceCache;
use crate::push::webpush::{self, EndpointPolicy, Vapid};
use crate::store::{
    Device, DeviceError, Environment, NewDevice, PayloadFormat, Platform, Store, Upserted,
};

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

/// A registration as apps send it (read loosely here, then checked by [`validate`]; the
/// OpenAPI document gives its exact form per platform as [`RegistrationForm`]).
#[derive(Debug, Default, Deserialize)]
pub struct Registration {
    platform: String,
    token: Option<String>,
    app: Option<String>,
    environment: Option<String>,
    /// Web Push: `PushSubscription.toJSON()`'s fields, and the payload wanted.
    endpoint: Option<String>,
    keys: Option<SubscriptionKeys>,
    format: Option<String>,
}

/// `PushSubscription.toJSON().keys`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SubscriptionKeys {
    /// The browser's P-256 ECDH public key: 65 bytes, uncompressed, base64url.
    #[schema(pattern = "^[A-Za-z0-9_+/-]{86,87}={0,2}$")]
    p256dh: String,
    /// The 16-byte authentication secret, base64url.
    #[schema(pattern = "^[A-Za-z0-9_+/-]{22}={0,2}$")]
    auth: String,
}

/// A registration, as [`validate`] accepts it.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = Registration)]
#[allow(dead_code)]
#[serde(untagged)]
enum RegistrationForm {
    Apns(ApnsRegistration),
    Fcm(FcmRegistration),
    WebPush(WebPushRegistration),
}

/// A browser's Web Push subscription (`PushSubscription.toJSON()` plus `platform`), made with
/// the key of `GET /webpush/vapid-public-key`.
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "camelCase")]
struct WebPushRegistration {
    #[schema(inline)]
    platform: WebPushPlatform,
    /// The push service's URL for this subscription: `https`, on a public address.
    #[schema(max_length = 2048, pattern = "^https?://[^/?#@]+")]
    endpoint: String,
    keys: SubscriptionKeys,
    /// `legacy` (the default): the `/events` document with `unseen` and `alert`; `jmap`: an
    /// RFC 8620 StateChange.
    #[schema(inline)]
    format: Option<WebPushFormat>,
    /// As the browser gives it; not used.
    expiration_time: Option<i64>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum WebPushPlatform {
    Webpush,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum WebPushFormat {
    Legacy,
    Jmap,
}

/// An iPhone's APNs device token.
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
struct ApnsRegistration {
    #[schema(inline)]
    platform: ApnsPlatform,
    /// An even number (32 to 200) of hex digits (upper or lower case).
    #[schema(pattern = "^([0-9a-fA-F]{2}){16,100}$")]
    token: String,
    /// The app's bundle id: a configured APNs topic.
    #[schema(pattern = "^[!-~]{1,255}$")]
    app: String,
    /// `sandbox` for development builds; `production` when absent.
    #[schema(inline)]
    environment: Option<ApnsEnvironment>,
}

/// An Android device's FCM registration token.
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
struct FcmRegistration {
    #[schema(inline)]
    platform: FcmPlatform,
    /// 1 to 4,096 visible ASCII characters.
    #[schema(pattern = "^[!-~]{1,4096}$")]
    token: String,
    /// The FCM app the token belongs to.
    #[schema(pattern = "^[!-~]{1,255}$")]
    app: String,
    /// Only `production` (when given).
    #[schema(inline)]
    environment: Option<FcmEnvironment>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum ApnsPlatform {
    Apns,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum FcmPlatform {
    Fcm,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum ApnsEnvironment {
    Production,
    Sandbox,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum FcmEnvironment {
    Production,
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

/// Longest FCM registration token accepted (real ones are about 160 characters).
const MAX_FCM_TOKEN: usize = 4096;
/// APNs tokens are 32 bytes today (64 hex digits); Apple may lengthen them.
const APNS_TOKEN_HEX: std::ops::RangeInclusive<usize> = 32..=200;
const MAX_APP: usize = 255;

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
    let new = if registration.platform == Platform::WebPush.as_str() {
        validate_webpush(user, registration, &state).await
    } else {
        validate(user, registration)
    }
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

/// Checks a Web Push subscription: its keys, its format, and that its endpoint is one we may
/// reach (a name lookup, hence async).
async fn validate_webpush(
    user: String,
    registration: Registration,
    state: &Devices,
) -> Result<NewDevice, String> {
    if state.vapid.is_none() {
        return Err("platform: Web Push is not enabled on this server".into());
    }
    let format = match registration.format.as_deref() {
        None => PayloadFormat::Legacy,
        Some(name) => PayloadFormat::parse(name)
            .ok_or_else(|| format!("format must be \"legacy\" or \"jmap\", not {name:?}"))?,
    };
    let keys = registration
        .keys
        .ok_or("keys: required, with p256dh and auth (PushSubscription.toJSON())")?;
    let keys = webpush::check_keys(&keys.p256dh, &keys.auth, format)?;
    let endpoint = registration
        .endpoint
        .ok_or("endpoint: required (PushSubscription.endpoint)")?;
    state.endpoints.check(&endpoint).await?;
    Ok(NewDevice {
        user_id: user,
        platform: Platform::WebPush,
        token: endpoint,
        app: webpush::APP.into(),
        environment: Environment::Production,
        webpush: Some(keys),
    })
}

/// Checks an APNs or FCM registration and normalises the token (APNs hex to lowercase).
fn validate(user: String, registration: Registration) -> Result<NewDevice, String> {
    let platform = Platform::parse(&registration.platform).ok_or_else(|| {
        format!(
            "platform must be \"apns\", \"fcm\" or \"webpush\", not {:?}",
            registration.platform
        )
    })?;
    let token = registration.token.ok_or("token: required")?;
    let app = registration.app.ok_or("app: required")?;
    let environment = match registration.environment.as_deref() {
        None => Environment::Production,
        Some(name) => Environment::parse(name).ok_or_else(|| {
            format!("environment must be \"production\" or \"sandbox\", not {name:?}")
        })?,
    };
    let token = match platform {
        Platform::Apns => {
            let token = token.to_ascii_lowercase();
            if !APNS_TOKEN_HEX.contains(&token.len())
                || !token.len().is_multiple_of(2)
                || !token.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(
                    "token: an APNs device token is an even number (32 to 200) of hex digits"
                        .into(),
                );
            }
            token
        }
        Platform::Fcm => {
            if environment == Environment::Sandbox {
                return Err("environment: sandbox applies to APNs tokens only".into());
            }
            if token.is_empty()
                || token.len() > MAX_FCM_TOKEN
                || !token.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(format!(
                    "token: an FCM token is 1 to {MAX_FCM_TOKEN} visible ASCII characters"
                ));
            }
            token
        }
        Platform::WebPush => return Err("platform: webpush takes endpoint and keys".into()),
    };
    if app.is_empty() || app.len() > MAX_APP || !app.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "app: the APNs topic or FCM app is 1 to {MAX_APP} visible ASCII characters"
        ));
    }
    Ok(NewDevice {
        user_id: user,
        platform,
        token,
        app,
        environment,
        webpush: None,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        platform: &str,
        token: &str,
        app: &str,
        environment: Option<&str>,
        expect: Result<&str, &str>,
    ) {
        let registration = Registration {
            platform: platform.into(),
            token: Some(token.into()),
            app: Some(app.into()),
            environment: environment.map(Into::into),
            ..Registration::default()
        };
        let got = validate("alice".into(), registration);
        match expect {
            Ok(token) => assert_eq!(got.map(|d| d.token), Ok(token.to_owned())),
            Err(prefix) => {
                let err = got.expect_err("should be refused");
                assert!(err.starts_with(prefix), "{err}");
            }
        }
    }

    #[test]
    fn registrations() {
        let hex = "ab".repeat(32);
        check(
            "apns",
            &hex.to_uppercase(),
            "com.example.mail",
            None,
            Ok(&hex),
        );
        check("apns", &hex, "com.example.mail", Some("sandbox"), Ok(&hex));
        check("apns", &hex[..63], "a", None, Err("token:"));
        check("apns", &"zz".repeat(32), "a", None, Err("token:"));
        check("apns", "ab", "a", None, Err("token:"));
        check(
            "fcm",
            "fKz:APA91b-x_y",
            "com.example.android",
            None,
            Ok("fKz:APA91b-x_y"),
        );
        check("fcm", "has space", "a", None, Err("token:"));
        check("fcm", "", "a", None, Err("token:"));
        check(
            "fcm",
            &"x".repeat(MAX_FCM_TOKEN + 1),
            "a",
            None,
            Err("token:"),
        );
        check("fcm", "tok", "a", Some("sandbox"), Err("environment:"));
        check("webpush", "tok", "a", None, Err("platform"));
        check("apns", &hex, "", None, Err("app:"));
        check("apns", &hex, "a b", None, Err("app:"));
        check("apns", &hex, "a", Some("staging"), Err("environment"));
    }
}
