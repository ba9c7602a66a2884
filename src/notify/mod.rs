//! The blocking path: jobs that need the database or outgoing mail (calendar-alarm email,
//! Sieve notify email and SMS), kept in a durable queue and sent by a pool of workers.
//!
//! `route` says what to send; [`JobHandle::enqueue`] appends it to the [`spool`] before the
//! receive loop reads on, and a batching writer ([`enqueue`]) moves it into the jobs table, so
//! ingestion never waits on the database and a crash loses no job it had read. Workers
//! ([`worker`]) claim due jobs, look up the recipient, render ([`render`]) and send by email
//! ([`email`] over [`smtp`]) or SMS ([`sms`]), then mark the job done, retry it later, or bury
//! it as dead. The [`journal`] keeps a crash between the relay's acceptance and the job's
//! completion from sending an email twice.
//! Only this module writes jobs, and only its workers send email or SMS.

pub mod email;
pub mod enqueue;
pub mod journal;
pub mod render;
mod results;
pub mod sms;
pub mod smtp;
pub mod spool;
pub mod worker;

use std::time::Duration;

pub use enqueue::JobHandle;

use crate::job::JobRequest;
use crate::store::NewJob;

/// Why a send failed, classified once by the transport.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Try again later (an SMTP 4xx, a provider's HTTP 5xx, timeouts, connection refused).
    #[error("{0}")]
    Retry(String),
    /// Retrying cannot help (an SMTP 5xx, a provider's HTTP 4xx, a bad address, no number).
    #[error("{0}")]
    Permanent(String),
}

/// Turns a routed job into a row to insert.
pub fn new_job(request: JobRequest) -> NewJob {
    NewJob {
        user_id: request.user,
        kind: request.work.kind().to_owned(),
        payload: request.work.to_payload(),
        key: request.key,
    }
}

/// Milliseconds since the Unix epoch, the unit of the jobs table.
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}
