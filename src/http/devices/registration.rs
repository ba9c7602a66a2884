//! A device registration as apps and browsers send it, and the checks it must pass before it
//! is stored: APNs tokens in hex (lowercased), FCM tokens of visible ASCII, Web Push
//! subscriptions with usable keys and an endpoint we may reach.

use serde::Deserialize;

use super::Devices;
use crate::push::webpush;
use crate::store::{Environment, NewDevice, PayloadFormat, Platform};

/// A registration as apps send it (read loosely here, then checked by `validate`; the
/// OpenAPI document gives its exact form per platform as `RegistrationForm`).
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
pub(super) enum RegistrationForm {
    Apns(ApnsRegistration),
    Fcm(FcmRegistration),
    WebPush(WebPushRegistration),
}

/// A browser's Web Push subscription (`PushSubscription.toJSON()` plus `platform`), made with
/// the key of `GET /webpush/vapid-public-key`.
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "camelCase")]
pub(super) struct WebPushRegistration {
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
pub(super) struct ApnsRegistration {
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
pub(super) struct FcmRegistration {
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

/// Longest FCM registration token accepted (real ones are about 160 characters).
const MAX_FCM_TOKEN: usize = 4096;
/// APNs tokens are 32 bytes today (64 hex digits); Apple may lengthen them.
const APNS_TOKEN_HEX: std::ops::RangeInclusive<usize> = 32..=200;
const MAX_APP: usize = 255;

/// Checks a registration of any platform and turns it into the device to store; the error
/// says which field is wrong and how.
pub(super) async fn accept(
    user: String,
    registration: Registration,
    state: &Devices,
) -> Result<NewDevice, String> {
    if registration.platform == Platform::WebPush.as_str() {
        validate_webpush(user, registration, state).await
    } else {
        validate(user, registration)
    }
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
