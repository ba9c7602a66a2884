//! The delivery journal's side in the database (see `notify::journal`): on PostgreSQL, a
//! worker records in the job's row that its message's final `.` is in the relay's socket, so
//! the node that takes the job over after its lease reads it (the claim's `sent_attempt` check);
//! and at start-up, the file journal of a lone node's crashed run marks its delivered jobs done.

use super::{Store, on_pool};

/// The connections that journal deliveries, one per worker, apart from the store's pool
/// ([`Store::journal_pool`]).
///
/// Their commits do not wait for the write-ahead log's flush (`synchronous_commit = off`): the
/// record is visible to every node at once, and is what a node that takes a dead worker's job
/// over reads; only a crash of the database itself within a fraction of a second can forget
/// it, and then only a worker that also died before recording its result sends that email
/// again. Waiting for the flush was a commit an email on top of the claims and results.
#[derive(Clone)]
pub struct JournalPool(sqlx::PgPool);

/// A database connection held to journal one delivery ([`JournalPool::connection`]).
pub struct JournalConnection(sqlx::pool::PoolConnection<sqlx::Postgres>);

impl JournalConnection {
    /// Records in the delivery journal that `attempt` of job `id` is committed at the relay
    /// (its final `.` is written, held in the corked socket until this request has left): if
    /// its worker dies now, the claim that takes the job over marks it done instead of
    /// sending it again.
    ///
    /// One prepared statement on a connection with nothing outstanding: the statement was
    /// parsed when the connection was taken ([`JournalPool::connection`]), so the first
    /// poll writes the whole request (Bind, Execute, Sync) to the socket before it waits for
    /// the answer, and the server runs a query it has received even if the client dies.
    /// `sent` is set just before that first poll of the query.
    pub async fn record(
        mut self,
        id: i64,
        attempt: i64,
        sent: &std::sync::atomic::AtomicBool,
    ) -> Result<(), sqlx::Error> {
        let query = sqlx::query(JOURNAL_RECORD)
            .bind(attempt)
            .bind(id)
            .execute(&mut *self.0);
        sent.store(true, std::sync::atomic::Ordering::Release);
        query.await.map(drop)
    }
}

/// The delivery journal's record: prepared once per connection and kept in its statement
/// cache, where a simple-protocol query was parsed and planned at every email (half of its
/// 155 µs of server time).
const JOURNAL_RECORD: &str =
    "UPDATE jobs SET sent_attempt = $1 WHERE id = $2 AND attempts = $1 AND state = 'running'";

/// The note on a job finished from the delivery journal at start-up.
pub const DELIVERED_BEFORE_CRASH: &str =
    "handed to the relay before a crash; marked done at start-up from the delivery journal";

impl JournalPool {
    /// A connection of its own for journaling one delivery. Taken before the message goes
    /// out, so that the record's request leaves at once when the `.` is due.
    pub async fn connection(&self) -> Result<JournalConnection, sqlx::Error> {
        let mut connection = self.0.acquire().await?;
        // Parsed now, on the connection's first journal only (sqlx caches it): the record
        // itself must not wait for a Parse before its request leaves.
        sqlx::Executor::prepare(
            &mut *connection,
            sqlx::SqlSafeStr::into_sql_str(JOURNAL_RECORD),
        )
        .await?;
        Ok(JournalConnection(connection))
    }
}

impl Store {
    /// The pool of `size` connections (one per worker) that journal deliveries, on the
    /// store's PostgreSQL; None on SQLite, where a lone node journals to a file. Connects as
    /// its connections are first needed.
    pub fn journal_pool(&self, size: u32) -> Option<JournalPool> {
        let Store::Postgres(pool) = self else {
            return None;
        };
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(size.max(1))
            .acquire_timeout(std::time::Duration::from_secs(10))
            .after_connect(|connection, _| {
                Box::pin(async move {
                    sqlx::Executor::execute(&mut *connection, "SET synchronous_commit = off")
                        .await
                        .map(drop)
                })
            })
            .connect_lazy_with(pool.connect_options().as_ref().clone());
        Some(JournalPool(pool))
    }

    /// Marks done the jobs of a crashed run whose email reached the relay: each `(id, attempt)`
    /// only while that attempt is still the running one. Returns how many it finished.
    pub async fn finish_delivered_jobs(
        &self,
        deliveries: &[(i64, i64)],
        now_ms: i64,
    ) -> Result<u64, sqlx::Error> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut finished = 0;
            for (id, attempt) in deliveries {
                finished += sqlx::query(
                    "UPDATE jobs SET state = 'done', finished_at = $3, lease_until = NULL, last_error = $4 \
                     WHERE id = $1 AND attempts = $2 AND state = 'running'",
                )
                .bind(id)
                .bind(attempt)
                .bind(now_ms)
                .bind(DELIVERED_BEFORE_CRASH)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
            tx.commit().await?;
            Ok(finished)
        })
    }
}
