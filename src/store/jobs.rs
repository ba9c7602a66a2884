//! The `jobs` table: the durable queue of the blocking path (calendar-alarm email, Sieve notify
//! email and SMS).
//!
//! A job is inserted once per idempotency key, so a replayed event never sends twice. Workers
//! claim due jobs with a lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite has a single
//! writer); a job whose worker died is claimed again once its lease has run out. An SMS job's
//! credit is taken right after its claim, once per job, and only if there is credit left.

use super::{Store, on_pool};
use crate::job::SMS_KIND;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Done,
    Dead,
}

/// A job to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub user_id: String,
    pub kind: String,
    /// The job's data, as JSON.
    pub payload: String,
    /// Same key, same job: a replayed event inserts nothing.
    pub key: String,
}

/// What became of a leased job, to record ([`Store::record_results`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobResult {
    /// Sent: done.
    Done,
    /// Failed for now: queued again from `run_at_ms`, keeping the error.
    Retry { run_at_ms: i64, error: String },
    /// Given up: dead, with its last error.
    Dead { error: String },
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: i64,
    pub user_id: String,
    pub kind: String,
    pub payload: String,
    pub state: JobState,
    /// Claims so far, the current one included.
    pub attempts: i64,
    /// When it may run next, milliseconds since the epoch.
    pub run_at: i64,
    pub last_error: Option<String>,
    pub key: String,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// A due job, now leased to the caller.
    Job(Job),
    /// An SMS job whose user has no credit left: it is dead, with that reason.
    NoCredit(Job),
    /// A job whose worker died after its message reached the relay (its lease ran out in the
    /// attempt the journal names): it is done, not sent again.
    Delivered(Job),
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: i64,
    user_id: String,
    kind: String,
    payload: String,
    state: String,
    attempts: i64,
    run_at: i64,
    last_error: Option<String>,
    idempotency_key: String,
    sms_charged: i64,
    created_at: i64,
    finished_at: Option<i64>,
}

/// Jobs inserted by one statement: six parameters each, well under either database's limit
/// (SQLite's 32,766).
const INSERT_ROWS: usize = 256;

const COLUMNS: &str = "id, user_id, kind, payload, state, attempts, run_at, last_error, idempotency_key, \
                       sms_charged, created_at, finished_at";

/// The last error of an SMS job whose user had no credit left.
const NO_CREDIT: &str = "no SMS credit";

/// The note on a job another worker found delivered when its lease ran out.
pub const DELIVERED_BEFORE_TAKEOVER: &str = "handed to the relay before its worker died; marked done when the lease ran out, from the delivery journal";

impl JobState {
    /// The name used in the database and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Dead => "dead",
        }
    }

    /// Reads a database or CLI name.
    pub fn parse(name: &str) -> Option<JobState> {
        match name {
            "queued" => Some(JobState::Queued),
            "running" => Some(JobState::Running),
            "done" => Some(JobState::Done),
            "dead" => Some(JobState::Dead),
            _ => None,
        }
    }
}

impl TryFrom<JobRow> for Job {
    type Error = sqlx::Error;

    fn try_from(row: JobRow) -> Result<Job, sqlx::Error> {
        let state = JobState::parse(&row.state).ok_or_else(|| {
            sqlx::Error::Decode(format!("jobs.state holds {:?}", row.state).into())
        })?;
        Ok(Job {
            id: row.id,
            user_id: row.user_id,
            kind: row.kind,
            payload: row.payload,
            state,
            attempts: row.attempts,
            run_at: row.run_at,
            last_error: row.last_error,
            key: row.idempotency_key,
            created_at: row.created_at,
            finished_at: row.finished_at,
        })
    }
}

impl Store {
    /// Inserts a batch atomically, skipping keys already known; returns how many were new.
    /// One statement per `INSERT_ROWS` (256) jobs (a statement a job cost PostgreSQL a round trip
    /// and an executor start each), in a transaction only when there are several.
    pub async fn insert_jobs(&self, jobs: &[NewJob], now_ms: i64) -> Result<u64, sqlx::Error> {
        if jobs.is_empty() {
            return Ok(0);
        }
        // A macro, not a closure: each pool's arm builds for its own database.
        macro_rules! insert {
            ($chunk:expr) => {{
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO jobs (user_id, kind, payload, idempotency_key, run_at, created_at) ",
                );
                insert.push_values($chunk, |mut row, job| {
                    row.push_bind(&job.user_id)
                        .push_bind(&job.kind)
                        .push_bind(&job.payload)
                        .push_bind(&job.key)
                        .push_bind(now_ms)
                        .push_bind(now_ms);
                });
                insert.push(" ON CONFLICT (idempotency_key) DO NOTHING");
                insert
            }};
        }
        on_pool!(self, pool => {
            if jobs.len() <= INSERT_ROWS {
                // One statement: atomic by itself (on SQLite, one round trip to its thread).
                return Ok(insert!(jobs).build().execute(pool).await?.rows_affected());
            }
            let mut tx = pool.begin().await?;
            let mut inserted = 0;
            for chunk in jobs.chunks(INSERT_ROWS) {
                inserted += insert!(chunk).build().execute(&mut *tx).await?.rows_affected();
            }
            tx.commit().await?;
            Ok(inserted)
        })
    }

    /// Leases the most overdue job (queued and due, or running with an expired lease) until
    /// `now + lease`, taking SMS credit in the same transaction.
    pub async fn claim_job(
        &self,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<Claim>, sqlx::Error> {
        Ok(self.claim_jobs(now_ms, lease_ms, 1).await?.pop())
    }

    /// Leases up to `limit` of the most overdue jobs, oldest due first, as [`Store::claim_job`]
    /// leases one: a worker pool with several free workers pays one statement for all of them.
    ///
    /// The lease, and the delivery journal's verdict on a job whose lease ran out, are one
    /// statement, atomic by itself: on SQLite each statement is a round trip to its thread, and
    /// a transaction's `BEGIN` and `COMMIT` were two more. An SMS job's credit is taken after,
    /// in a transaction of its own; if the process dies in between, or that transaction fails,
    /// the job's lease runs out and the next claim charges it, still once.
    pub async fn claim_jobs(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> Result<Vec<Claim>, sqlx::Error> {
        let lock = match self {
            Store::Sqlite(_) => "",
            Store::Postgres(_) => " FOR UPDATE SKIP LOCKED",
        };
        // The first due jobs of each kind, then the older of the two lists. Each pick walks
        // the `(state, run_at, id)` index (on SQLite `(state, run_at)`, which ends in the
        // rowid) from its start, in the order it takes jobs, so a claim costs the same however
        // many jobs wait or are done; one pick with `OR` sorted every due job first (620 µs a
        // claim on SQLite with 5,000 queued, and on PostgreSQL a scan of the whole table), and
        // so did the PostgreSQL index without the id, once jobs shared their run_at.
        //
        // A job whose journal names the attempt whose lease just ran out (`sent_attempt =
        // attempts`, before the increment) reached the relay: it is marked done, not leased.
        let claim = format!(
            "WITH queued AS (SELECT id, run_at FROM jobs WHERE state = 'queued' AND run_at <= $2 \
                             ORDER BY run_at, id LIMIT $3{lock}), \
                  expired AS (SELECT id, run_at FROM jobs WHERE state = 'running' AND lease_until <= $2 \
                              ORDER BY run_at, id LIMIT $3{lock}) \
             UPDATE jobs SET attempts = attempts + 1, \
                 state = CASE WHEN sent_attempt = attempts THEN 'done' ELSE 'running' END, \
                 lease_until = CASE WHEN sent_attempt = attempts THEN NULL ELSE $1 END, \
                 finished_at = CASE WHEN sent_attempt = attempts THEN $2 ELSE finished_at END, \
                 last_error = CASE WHEN sent_attempt = attempts THEN $4 ELSE last_error END \
             WHERE id IN (SELECT id FROM (SELECT id, run_at FROM queued UNION ALL SELECT id, run_at FROM expired) AS due \
                          ORDER BY run_at, id LIMIT $3) \
             RETURNING {COLUMNS}"
        );
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let mut rows: Vec<JobRow> = on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(claim))
            .bind(now_ms + lease_ms)
            .bind(now_ms)
            .bind(limit)
            .bind(DELIVERED_BEFORE_TAKEOVER)
            .fetch_all(pool)
            .await?);
        // RETURNING follows no order.
        rows.sort_by_key(|row| (row.run_at, row.id));
        let mut claims = Vec::with_capacity(rows.len());
        let mut unpaid = Vec::new();
        for row in rows {
            let needs_credit = row.kind == SMS_KIND && row.sms_charged == 0;
            let job = Job::try_from(row)?;
            if job.state == JobState::Done {
                claims.push(Claim::Delivered(job));
                continue;
            }
            if needs_credit {
                unpaid.push(claims.len());
            }
            claims.push(Claim::Job(job));
        }
        if !unpaid.is_empty()
            && let Err(err) = self.charge_sms_credit(&mut claims, &unpaid, now_ms).await
        {
            // The other jobs are leased and go out; these wait for their leases to run out.
            tracing::warn!(jobs = unpaid.len(), error = %err, "cannot take SMS credit yet; those texts wait for their leases to run out");
            let mut index = 0;
            claims.retain(|_| {
                index += 1;
                !unpaid.contains(&(index - 1))
            });
        }
        Ok(claims)
    }

    /// Takes a credit for each SMS job leased at `unpaid` (indices into `claims`), in one
    /// transaction; a job whose user has none left is dead, and its claim says so.
    async fn charge_sms_credit(
        &self,
        claims: &mut [Claim],
        unpaid: &[usize],
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for &index in unpaid {
                let Claim::Job(job) = &claims[index] else {
                    continue;
                };
                let charged = sqlx::query("UPDATE users SET sms_credit = sms_credit - 1 WHERE user_id = $1 AND sms_credit > 0")
                    .bind(&job.user_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if charged == 1 {
                    sqlx::query("UPDATE jobs SET sms_charged = 1 WHERE id = $1").bind(job.id).execute(&mut *tx).await?;
                    continue;
                }
                sqlx::query("UPDATE jobs SET state = 'dead', last_error = $2, finished_at = $3, lease_until = NULL WHERE id = $1")
                    .bind(job.id)
                    .bind(NO_CREDIT)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                let dead = Job { state: JobState::Dead, last_error: Some(NO_CREDIT.into()), finished_at: Some(now_ms), ..job.clone() };
                claims[index] = Claim::NoCredit(dead);
            }
            tx.commit().await
        })
    }

    /// Marks a job sent.
    pub async fn finish_job(&self, id: i64, now_ms: i64) -> Result<(), sqlx::Error> {
        self.record_results(&[(id, JobResult::Done)], now_ms).await
    }

    /// Records what became of a batch of leased jobs atomically (the worker pool's results as
    /// they come in): the sent ones in one statement, each failure with its own error. A batch
    /// of sent jobs alone is that one statement, with no transaction around it. `now_ms` is
    /// their finishing time.
    pub async fn record_results(
        &self,
        results: &[(i64, JobResult)],
        now_ms: i64,
    ) -> Result<(), sqlx::Error> {
        let done: Vec<i64> = results
            .iter()
            .filter(|(_, result)| matches!(result, JobResult::Done))
            .map(|(id, _)| *id)
            .collect();
        // Placeholders only: nothing in the text comes from outside.
        let finish = (!done.is_empty()).then(|| {
            let ids: Vec<String> = (0..done.len()).map(|n| format!("${}", n + 2)).collect();
            format!(
                "UPDATE jobs SET state = 'done', finished_at = $1, lease_until = NULL, last_error = NULL \
                 WHERE id IN ({})",
                ids.join(", ")
            )
        });
        on_pool!(self, pool => {
            let mut statements = Vec::new();
            if let Some(finish) = finish {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(finish)).bind(now_ms);
                for id in &done {
                    query = query.bind(*id);
                }
                statements.push(query);
            }
            for (id, result) in results {
                match result {
                    JobResult::Done => {}
                    JobResult::Retry { run_at_ms, error } => statements.push(
                        sqlx::query(sqlx::AssertSqlSafe(
                            "UPDATE jobs SET state = 'queued', run_at = $2, lease_until = NULL, last_error = $3, sent_attempt = NULL WHERE id = $1"
                        ))
                        .bind(*id)
                        .bind(*run_at_ms)
                        .bind(error.clone()),
                    ),
                    JobResult::Dead { error } => statements.push(
                        sqlx::query(sqlx::AssertSqlSafe(
                            "UPDATE jobs SET state = 'dead', last_error = $2, finished_at = $3, lease_until = NULL WHERE id = $1"
                        ))
                        .bind(*id)
                        .bind(error.clone())
                        .bind(now_ms),
                    ),
                }
            }
            run_atomically(pool, statements).await
        })
    }

    /// Puts a failed job back in the queue until `run_at_ms`, keeping its error.
    pub async fn retry_job_at(
        &self,
        id: i64,
        run_at_ms: i64,
        error: &str,
    ) -> Result<(), sqlx::Error> {
        let retry = JobResult::Retry {
            run_at_ms,
            error: error.to_owned(),
        };
        self.record_results(&[(id, retry)], run_at_ms).await
    }

    /// Gives a job up: dead, with its last error.
    pub async fn bury_job(&self, id: i64, error: &str, now_ms: i64) -> Result<(), sqlx::Error> {
        let dead = JobResult::Dead {
            error: error.to_owned(),
        };
        self.record_results(&[(id, dead)], now_ms).await
    }

    /// When the next job falls due (a queued job's `run_at` or a running job's lease end).
    pub async fn next_job_due(&self) -> Result<Option<i64>, sqlx::Error> {
        on_pool!(self, pool => sqlx::query_scalar(
            "SELECT MIN(due) FROM (SELECT MIN(run_at) AS due FROM jobs WHERE state = 'queued' \
             UNION ALL SELECT MIN(lease_until) FROM jobs WHERE state = 'running') AS next"
        )
        .fetch_one(pool)
        .await)
    }

    /// Jobs, newest first, optionally in one state.
    pub async fn jobs(&self, state: Option<JobState>, limit: i64) -> Result<Vec<Job>, sqlx::Error> {
        let select = format!(
            "SELECT {COLUMNS} FROM jobs WHERE ($1 IS NULL OR state = $1) ORDER BY id DESC LIMIT $2"
        );
        let rows: Vec<JobRow> = on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(select))
            .bind(state.map(JobState::as_str))
            .bind(limit)
            .fetch_all(pool)
            .await?);
        rows.into_iter().map(Job::try_from).collect()
    }

    /// Sends a dead job round again (`mailpush jobs retry`): queued now, attempts reset.
    pub async fn requeue_job(&self, id: i64, now_ms: i64) -> Result<bool, sqlx::Error> {
        let updated = on_pool!(self, pool => sqlx::query(
            "UPDATE jobs SET state = 'queued', attempts = 0, run_at = $2, lease_until = NULL, finished_at = NULL, \
             sent_attempt = NULL WHERE id = $1 AND state = 'dead'"
        )
        .bind(id)
        .bind(now_ms)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(updated == 1)
    }

    /// Gives back jobs claimed but never started (claimed ahead of a free worker, then the node
    /// shut down): queued again and due as they were, their claim's attempt undone. Each
    /// `(id, attempt)` only while that claim still holds it. Returns how many it gave back.
    pub async fn release_jobs(&self, jobs: &[(i64, i64)]) -> Result<u64, sqlx::Error> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut released = 0;
            for (id, attempt) in jobs {
                released += sqlx::query(
                    "UPDATE jobs SET state = 'queued', attempts = attempts - 1, lease_until = NULL \
                     WHERE id = $1 AND attempts = $2 AND state = 'running'",
                )
                .bind(id)
                .bind(attempt)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
            tx.commit().await?;
            Ok(released)
        })
    }
}

/// Runs `statements` as one: a lone statement by itself, atomic already, and more in a
/// transaction. On SQLite every statement, `BEGIN` and `COMMIT` included, is a round trip to
/// the connection's thread, so a lone statement costs one hand-off instead of three.
async fn run_atomically<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    statements: Vec<sqlx::query::Query<'_, DB, DB::Arguments>>,
) -> Result<(), sqlx::Error>
where
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    if statements.len() <= 1 {
        for statement in statements {
            statement.execute(pool).await?;
        }
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    for statement in statements {
        statement.execute(&mut *tx).await?;
    }
    tx.commit().await
}
