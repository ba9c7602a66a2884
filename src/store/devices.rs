//! The `devices` table: push tokens registered by users' apps.
//!
//! A token is unique per platform. Registering it again is idempotent and refreshes its
//! registration time; registering it for another user moves it (a phone changed hands or
//! accounts). Removals are recorded with their reason in `device_removals`. A Web Push
//! subscription is a device whose token is its endpoint URL and which carries the browser's
//! keys ([`WebPushKeys`]).

use super::{Store, on_pool};

/// Which push service a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    Apns,
    Fcm,
    /// A browser's push service (RFC 8030), for a subscription made with our VAPID key.
    WebPush,
}

/// The APNs environment a token was issued for; FCM tokens are always `Production`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Environment {
    Production,
    Sandbox,
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: i64,
    pub user_id: String,
    pub platform: Platform,
    pub token: String,
    /// The APNs topic (bundle id) or the FCM app the token belongs to.
    pub app: String,
    pub environment: Environment,
    /// First registration, seconds since the Unix epoch.
    pub created_at: i64,
    /// Latest registration: a provider's "dead since" older than this does not remove it.
    pub registered_at: i64,
    /// What a Web Push payload is encrypted for; None on other platforms.
    pub webpush: Option<WebPushKeys>,
}

/// A browser's Web Push keys (`PushSubscription.toJSON().keys`), base64url without padding,
/// and the payload it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebPushKeys {
    /// The browser's P-256 ECDH public key, 65 bytes uncompressed.
    pub p256dh: String,
    /// The 16-byte authentication secret.
    pub auth: String,
    pub format: PayloadFormat,
}

/// Which document a Web Push payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PayloadFormat {
    /// The `/events` document (`mailModSeq`, …) plus the alert, for FastMail-style clients.
    #[default]
    Legacy,
    /// An RFC 8620 `StateChange`, for JMAP clients.
    Jmap,
}

impl PayloadFormat {
    /// The name used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadFormat::Legacy => "legacy",
            PayloadFormat::Jmap => "jmap",
        }
    }

    /// Reads an API or database name.
    pub fn parse(name: &str) -> Option<PayloadFormat> {
        match name {
            "legacy" => Some(PayloadFormat::Legacy),
            "jmap" => Some(PayloadFormat::Jmap),
            _ => None,
        }
    }
}

/// A registration request, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDevice {
    pub user_id: String,
    pub platform: Platform,
    pub token: String,
    pub app: String,
    pub environment: Environment,
    pub webpush: Option<WebPushKeys>,
}

/// What a registration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upserted {
    Created(Device),
    /// The token was known; `moved_from` names its previous user when it changed hands.
    Updated {
        device: Device,
        moved_from: Option<String>,
    },
}

/// Why a registration failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("a user may register at most {0} devices")]
    Limit(usize),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl Platform {
    /// The name used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Apns => "apns",
            Platform::Fcm => "fcm",
            Platform::WebPush => "webpush",
        }
    }

    /// Reads an API or database name.
    pub fn parse(name: &str) -> Option<Platform> {
        match name {
            "apns" => Some(Platform::Apns),
            "fcm" => Some(Platform::Fcm),
            "webpush" => Some(Platform::WebPush),
            _ => None,
        }
    }
}

impl NewDevice {
    fn format(&self) -> PayloadFormat {
        self.webpush
            .as_ref()
            .map(|keys| keys.format)
            .unwrap_or_default()
    }
}

impl Environment {
    /// The name used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Production => "production",
            Environment::Sandbox => "sandbox",
        }
    }

    /// Reads an API or database name.
    pub fn parse(name: &str) -> Option<Environment> {
        match name {
            "production" => Some(Environment::Production),
            "sandbox" => Some(Environment::Sandbox),
            _ => None,
        }
    }
}

#[derive(sqlx::FromRow)]
struct DeviceRow {
    id: i64,
    user_id: String,
    platform: String,
    token: String,
    app: String,
    environment: String,
    created_at: i64,
    registered_at: i64,
    p256dh: Option<String>,
    auth_secret: Option<String>,
    format: String,
}

const COLUMNS: &str = "id, user_id, platform, token, app, environment, created_at, registered_at, \
                       p256dh, auth_secret, format";

impl TryFrom<DeviceRow> for Device {
    type Error = sqlx::Error;

    fn try_from(row: DeviceRow) -> Result<Device, sqlx::Error> {
        let decode = |what: &str, value: &str| {
            sqlx::Error::Decode(format!("devices.{what} holds {value:?}").into())
        };
        let format =
            PayloadFormat::parse(&row.format).ok_or_else(|| decode("format", &row.format))?;
        let webpush = match (row.p256dh, row.auth_secret) {
            (Some(p256dh), Some(auth)) => Some(WebPushKeys {
                p256dh,
                auth,
                format,
            }),
            _ => None,
        };
        Ok(Device {
            webpush,
            platform: Platform::parse(&row.platform)
                .ok_or_else(|| decode("platform", &row.platform))?,
            environment: Environment::parse(&row.environment)
                .ok_or_else(|| decode("environment", &row.environment))?,
            id: row.id,
            user_id: row.user_id,
            token: row.token,
            app: row.app,
            created_at: row.created_at,
            registered_at: row.registered_at,
        })
    }
}

/// Writes a `device_removals` row inside the caller's transaction (a macro, as the executor
/// type differs per database).
macro_rules! record_removal {
    ($executor:expr, $device:expr, $reason:expr, $now:expr) => {
        sqlx::query(
            "INSERT INTO device_removals (device_id, user_id, platform, token, reason, removed_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind($device.id)
        .bind(&$device.user_id)
        .bind($device.platform.as_str())
        .bind(&$device.token)
        .bind($reason)
        .bind($now)
        .execute($executor)
        .await?
    };
}

fn devices(rows: Vec<DeviceRow>) -> Result<Vec<Device>, sqlx::Error> {
    rows.into_iter().map(Device::try_from).collect()
}

impl Store {
    /// Registers a device, or refreshes and possibly moves a known token, within the per-user
    /// limit. Races on the same new token resolve to one row.
    pub async fn upsert_device(
        &self,
        new: &NewDevice,
        now: i64,
        max_per_user: usize,
    ) -> Result<Upserted, DeviceError> {
        match self.try_upsert_device(new, now, max_per_user).await {
            // Another registration of the same token won the insert: now it is an update.
            Err(DeviceError::Database(sqlx::Error::Database(err))) if err.is_unique_violation() => {
                self.try_upsert_device(new, now, max_per_user).await
            }
            other => other,
        }
    }

    async fn try_upsert_device(
        &self,
        new: &NewDevice,
        now: i64,
        max_per_user: usize,
    ) -> Result<Upserted, DeviceError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let select = format!("SELECT {COLUMNS} FROM devices WHERE platform = $1 AND token = $2");
            let existing: Option<DeviceRow> = sqlx::query_as(sqlx::AssertSqlSafe(select))
                .bind(new.platform.as_str())
                .bind(&new.token)
                .fetch_optional(&mut *tx)
                .await?;
            if existing.as_ref().is_none_or(|row| row.user_id != new.user_id) {
                let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM devices WHERE user_id = $1")
                    .bind(&new.user_id)
                    .fetch_one(&mut *tx)
                    .await?;
                if usize::try_from(count).unwrap_or(usize::MAX) >= max_per_user {
                    return Err(DeviceError::Limit(max_per_user));
                }
            }
            let upserted = match existing {
                Some(old) => {
                    let update = format!(
                        "UPDATE devices SET user_id = $1, app = $2, environment = $3, registered_at = $4, \
                         p256dh = $6, auth_secret = $7, format = $8 WHERE id = $5 RETURNING {COLUMNS}"
                    );
                    let row: DeviceRow = sqlx::query_as(sqlx::AssertSqlSafe(update))
                        .bind(&new.user_id)
                        .bind(&new.app)
                        .bind(new.environment.as_str())
                        .bind(now)
                        .bind(old.id)
                        .bind(new.webpush.as_ref().map(|keys| &keys.p256dh))
                        .bind(new.webpush.as_ref().map(|keys| &keys.auth))
                        .bind(new.format().as_str())
                        .fetch_one(&mut *tx)
                        .await?;
                    let moved_from = (old.user_id != new.user_id).then_some(old.user_id);
                    Upserted::Updated { device: row.try_into()?, moved_from }
                }
                None => {
                    let insert = format!(
                        "INSERT INTO devices (user_id, platform, token, app, environment, created_at, registered_at, \
                         p256dh, auth_secret, format) VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9) RETURNING {COLUMNS}"
                    );
                    let row: DeviceRow = sqlx::query_as(sqlx::AssertSqlSafe(insert))
                        .bind(&new.user_id)
                        .bind(new.platform.as_str())
                        .bind(&new.token)
                        .bind(&new.app)
                        .bind(new.environment.as_str())
                        .bind(now)
                        .bind(new.webpush.as_ref().map(|keys| &keys.p256dh))
                        .bind(new.webpush.as_ref().map(|keys| &keys.auth))
                        .bind(new.format().as_str())
                        .fetch_one(&mut *tx)
                        .await?;
                    Upserted::Created(row.try_into()?)
                }
            };
            tx.commit().await?;
            Ok(upserted)
        })
    }

    /// A user's devices, oldest first.
    pub async fn devices_of(&self, user: &str) -> Result<Vec<Device>, sqlx::Error> {
        let select = format!("SELECT {COLUMNS} FROM devices WHERE user_id = $1 ORDER BY id");
        on_pool!(self, pool => devices(sqlx::query_as(sqlx::AssertSqlSafe(select)).bind(user).fetch_all(pool).await?))
    }

    /// Every device, to fill the in-memory cache at start-up.
    pub async fn all_devices(&self) -> Result<Vec<Device>, sqlx::Error> {
        let select = format!("SELECT {COLUMNS} FROM devices ORDER BY id");
        on_pool!(self, pool => devices(sqlx::query_as(sqlx::AssertSqlSafe(select)).fetch_all(pool).await?))
    }

    /// Deletes one of `user`'s devices; None when it does not exist or is someone else's.
    pub async fn delete_device(
        &self,
        user: &str,
        id: i64,
        now: i64,
    ) -> Result<Option<Device>, sqlx::Error> {
        let delete =
            format!("DELETE FROM devices WHERE id = $1 AND user_id = $2 RETURNING {COLUMNS}");
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let row: Option<DeviceRow> = sqlx::query_as(sqlx::AssertSqlSafe(delete))
                .bind(id)
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
            let removed = row.map(Device::try_from).transpose()?;
            if let Some(device) = &removed {
                record_removal!(&mut *tx, device, "deleted by user", now);
            }
            tx.commit().await?;
            Ok(removed)
        })
    }

    /// Removes a token a provider declared dead, unless it was registered again after
    /// `dead_since` (APNs 410 carries that time); records `reason`.
    pub async fn remove_dead_token(
        &self,
        platform: Platform,
        token: &str,
        dead_since: Option<i64>,
        reason: &str,
        now: i64,
    ) -> Result<Option<Device>, sqlx::Error> {
        let delete = format!(
            "DELETE FROM devices WHERE platform = $1 AND token = $2 AND registered_at <= $3 RETURNING {COLUMNS}"
        );
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let row: Option<DeviceRow> = sqlx::query_as(sqlx::AssertSqlSafe(delete))
                .bind(platform.as_str())
                .bind(token)
                .bind(dead_since.unwrap_or(i64::MAX))
                .fetch_optional(&mut *tx)
                .await?;
            let removed = row.map(Device::try_from).transpose()?;
            if let Some(device) = &removed {
                record_removal!(&mut *tx, device, reason, now);
            }
            tx.commit().await?;
            Ok(removed)
        })
    }

    /// The recorded removals of a user's devices, newest first: (token, reason).
    pub async fn removals_of(&self, user: &str) -> Result<Vec<(String, String)>, sqlx::Error> {
        on_pool!(self, pool => sqlx::query_as(
            "SELECT token, reason FROM device_removals WHERE user_id = $1 ORDER BY id DESC"
        )
        .bind(user)
        .fetch_all(pool)
        .await)
    }
}
