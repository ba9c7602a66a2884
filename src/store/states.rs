//! The `user_states` table: each user's modseqs, the record behind the in-memory state hub.
//!
//! Writes only raise values (each column takes the larger of the stored and the new value), so
//! writers in any order, a replay, or a second node never move a state backwards.

use super::{Store, on_pool};

/// A user's stored modseqs (each at most 2^53 - 1, as the event parser guarantees).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredState {
    pub mail: u64,
    pub calendar: u64,
    pub contacts: u64,
    pub delivered: u64,
    /// The account's JMAP id scheme: 0 not known, 1 legacy, 2 compact.
    pub id_scheme: u8,
}

#[derive(sqlx::FromRow)]
struct StateRow {
    mail: i64,
    calendar: i64,
    contacts: i64,
    delivered: i64,
    id_scheme: i16,
}

/// Rows per statement: seven parameters each, well under SQLite's 32,766.
const ROWS_PER_STATEMENT: usize = 500;

impl Store {
    /// The stored state of `user`, if any.
    pub async fn user_state(&self, user: &str) -> Result<Option<StoredState>, sqlx::Error> {
        let row: Option<StateRow> = on_pool!(self, pool => sqlx::query_as(
            "SELECT mail, calendar, contacts, delivered, id_scheme FROM user_states WHERE user_id = $1"
        )
        .bind(user)
        .fetch_optional(pool)
        .await?);
        let value = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(row.map(|row| StoredState {
            mail: value(row.mail),
            calendar: value(row.calendar),
            contacts: value(row.contacts),
            delivered: value(row.delivered),
            id_scheme: u8::try_from(row.id_scheme).unwrap_or(0),
        }))
    }

    /// Raises the stored states to these, in one transaction.
    pub async fn save_user_states(
        &self,
        states: &[(String, StoredState)],
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        let value = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for rows in states.chunks(ROWS_PER_STATEMENT) {
                let mut query = sqlx::QueryBuilder::new(
                    "INSERT INTO user_states (user_id, mail, calendar, contacts, delivered, id_scheme, updated_at) ",
                );
                query.push_values(rows, |mut row, (user, state)| {
                    row.push_bind(user)
                        .push_bind(value(state.mail))
                        .push_bind(value(state.calendar))
                        .push_bind(value(state.contacts))
                        .push_bind(value(state.delivered))
                        .push_bind(i16::from(state.id_scheme))
                        .push_bind(now_ms);
                });
                query.push(
                    " ON CONFLICT (user_id) DO UPDATE SET \
                     mail = CASE WHEN excluded.mail > user_states.mail THEN excluded.mail ELSE user_states.mail END, \
                     calendar = CASE WHEN excluded.calendar > user_states.calendar THEN excluded.calendar ELSE user_states.calendar END, \
                     contacts = CASE WHEN excluded.contacts > user_states.contacts THEN excluded.contacts ELSE user_states.contacts END, \
                     delivered = CASE WHEN excluded.delivered > user_states.delivered THEN excluded.delivered ELSE user_states.delivered END, \
                     id_scheme = CASE WHEN excluded.id_scheme > 0 THEN excluded.id_scheme ELSE user_states.id_scheme END, \
                     updated_at = excluded.updated_at",
                );
                query.build().execute(&mut *tx).await?;
            }
            tx.commit().await
        })
    }
}

/// The database as the hub's state record.
impl crate::stream::persist::StateRecord for Store {
    fn load<'a>(
        &'a self,
        user: &'a str,
    ) -> crate::stream::persist::RecordFuture<'a, Option<crate::stream::UserState>> {
        Box::pin(async move {
            let stored = self
                .user_state(user)
                .await
                .map_err(|err| crate::stream::persist::RecordError(err.to_string()))?;
            Ok(stored.map(|stored| crate::stream::UserState {
                mail: stored.mail,
                calendar: stored.calendar,
                contacts: stored.contacts,
                delivered: stored.delivered,
                ids: crate::event::IdScheme::from_code(stored.id_scheme),
            }))
        })
    }

    fn save<'a>(
        &'a self,
        states: &'a [(String, crate::stream::UserState)],
    ) -> crate::stream::persist::RecordFuture<'a, ()> {
        Box::pin(async move {
            let rows: Vec<(String, StoredState)> = states
                .iter()
                .map(|(user, state)| {
                    let stored = StoredState {
                        mail: state.mail,
                        calendar: state.calendar,
                        contacts: state.contacts,
                        delivered: state.delivered,
                        id_scheme: state.ids.code(),
                    };
                    (user.clone(), stored)
                })
                .collect();
            self.save_user_states(&rows, crate::notify::now_ms())
                .await
                .map_err(|err| crate::stream::persist::RecordError(err.to_string()))
        })
    }
}
