//! The database: a SQLite file by default, PostgreSQL in production, with the same queries and
//! embedded migrations for each (`migrations/sqlite`, `migrations/postgres`).
//!
//! One file per table ([`devices`], [`jobs`], [`states`], [`users`]), and [`journal`] for the
//! delivery journal's side of `jobs`. The fast path never awaits the store: it reads caches
//! that the store's callers keep up to date.

pub mod devices;
pub mod jobs;
pub mod journal;
pub mod states;
pub mod users;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

pub use devices::{
    Device, DeviceError, Environment, NewDevice, PayloadFormat, Platform, Upserted, WebPushKeys,
};
pub use jobs::{Claim, DELIVERED_BEFORE_TAKEOVER, Job, JobResult, JobState, NewJob};
pub use journal::{DELIVERED_BEFORE_CRASH, JournalConnection, JournalPool};
pub use states::StoredState;
pub use users::{User, UserUpdate};

/// PostgreSQL connections a pool opens unless told otherwise (`database.max_connections`).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 16;

/// A connection pool to one of the two supported databases.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same code on either pool; the SQL is written once with `$N` placeholders, which
/// both SQLite and PostgreSQL accept.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            $crate::store::Store::Sqlite($pool) => $body,
            $crate::store::Store::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

impl Store {
    /// Opens the configured database (`url`), or the SQLite file `default_file` when no URL is
    /// set, and runs the migrations; a PostgreSQL pool of [`DEFAULT_MAX_CONNECTIONS`] (the
    /// admin commands, tests).
    pub async fn connect(url: Option<&str>, default_file: &Path) -> anyhow::Result<Store> {
        Store::connect_with(url, default_file, DEFAULT_MAX_CONNECTIONS).await
    }

    /// [`Store::connect`] with a PostgreSQL pool of at most `max_connections`
    /// (`database.max_connections`; SQLite always has one).
    pub async fn connect_with(
        url: Option<&str>,
        default_file: &Path,
        max_connections: u32,
    ) -> anyhow::Result<Store> {
        let store = match url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let options = PgConnectOptions::from_str(url).context("bad database.url")?;
                Store::postgres_with(options, max_connections).await?
            }
            Some(url) => {
                let options = SqliteConnectOptions::from_str(url).context("bad database.url")?;
                Store::sqlite(options).await?
            }
            None => {
                if let Some(dir) = default_file.parent() {
                    crate::files::create_private_dir(dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                }
                crate::files::make_private(default_file)
                    .with_context(|| format!("cannot create {}", default_file.display()))?;
                Store::sqlite(SqliteConnectOptions::new().filename(default_file)).await?
            }
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Connects to PostgreSQL with these options (tests use them to pick a schema).
    pub async fn postgres(options: PgConnectOptions) -> anyhow::Result<Store> {
        Store::postgres_with(options, DEFAULT_MAX_CONNECTIONS).await
    }

    /// [`Store::postgres`] with a pool of at most `max_connections`.
    pub async fn postgres_with(
        options: PgConnectOptions,
        max_connections: u32,
    ) -> anyhow::Result<Store> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .context("cannot connect to PostgreSQL")?;
        Ok(Store::Postgres(pool))
    }

    async fn sqlite(options: SqliteConnectOptions) -> anyhow::Result<Store> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        // SQLite has one writer at a time; one connection keeps read-then-write transactions
        // from failing with "database is locked" instead of waiting their turn.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .context("cannot open the SQLite database")?;
        Ok(Store::Sqlite(pool))
    }

    /// Brings the schema up to date.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            Store::Sqlite(pool) => sqlx::migrate!("./migrations/sqlite").run(pool).await,
            Store::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await,
        }
        .context("cannot migrate the database")
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(drop))
    }

    /// Which backend this is, for logs.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }
}
