//! The `users` table: what the blocking path needs to know about a recipient (language, SMS
//! number, SMS credit). A user without a row gets the defaults: English, no number, no credit.

use super::{Store, on_pool};

/// A user's notification settings.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct User {
    pub user_id: String,
    /// A language tag (`en`, `de`) choosing the templates; `en` is the fallback.
    pub language: String,
    /// E.164 number for Sieve `sms` notifications that name no number.
    pub sms_number: Option<String>,
    /// Text messages the user may still be sent.
    pub sms_credit: i64,
}

/// A partial update from `mailpush user set`: None leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserUpdate {
    pub language: Option<String>,
    pub sms_number: Option<String>,
    pub sms_credit: Option<i64>,
}

impl User {
    /// The settings of a user with no row.
    pub fn defaults(user_id: &str) -> User {
        User {
            user_id: user_id.to_owned(),
            language: "en".into(),
            sms_number: None,
            sms_credit: 0,
        }
    }
}

impl Store {
    /// A user's settings, or the defaults when the user has no row.
    pub async fn user(&self, user_id: &str) -> Result<User, sqlx::Error> {
        let found: Option<User> = on_pool!(self, pool => sqlx::query_as(
            "SELECT user_id, language, sms_number, sms_credit FROM users WHERE user_id = $1"
        )
        .bind(user_id)
        .fetch_optional(pool)
        .await?);
        Ok(found.unwrap_or_else(|| User::defaults(user_id)))
    }

    /// Creates or changes a user's settings.
    pub async fn set_user(&self, user_id: &str, update: &UserUpdate) -> Result<User, sqlx::Error> {
        let current = self.user(user_id).await?;
        let user = User {
            user_id: user_id.to_owned(),
            language: update.language.clone().unwrap_or(current.language),
            sms_number: update.sms_number.clone().or(current.sms_number),
            sms_credit: update.sms_credit.unwrap_or(current.sms_credit),
        };
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO users (user_id, language, sms_number, sms_credit) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id) DO UPDATE SET language = $2, sms_number = $3, sms_credit = $4"
        )
        .bind(&user.user_id)
        .bind(&user.language)
        .bind(&user.sms_number)
        .bind(user.sms_credit)
        .execute(pool)
        .await
        .map(drop))?;
        Ok(user)
    }
}
