//! The blocking path: jobs that need the database or outgoing mail (calendar-alarm email,
//! Sieve notify email and SMS), kept in a durable queue and sent by a pool of workers.
//!
//! `route` says what to send; [`JobHandle::enqueue`] hands it to a batching writer
//! ([`enqueue`]) without waiting, so ingestion never waits on the database. Workers
//! ([`worker`]) claim due jobs, look up the recipient, render ([`render`]) and send by email
//! ([`email`] over [`smtp`]) or SMS ([`sms`]), then mark the job done, retry it later, or bury
//! it as dead. The [`journal`] keeps a crash between the relay's acceptance and the job's
//! completion from sending an email twice.
//! Only this module writes jobs, and only its workers send email or SMS.

pub mod email;
pub mod enqueue;
pub mod journal;
pub mod render;
pub mod sms;
pub mod smtp;
pub mod worker;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use enqueue::JobHandle;

use crate::route::{JobRequest, Work};
use crate::store::NewJob;

/// A job's stored payload: the [`Work`] in a form that survives restarts and upgrades.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Payload {
    Sms {
        number: Option<String>,
        text: String,
    },
    SieveEmail {
        uri: String,
        message: String,
        importance: String,
    },
    AlarmEmail {
        recipient: String,
        alarm: String,
    },
}

/// Why a send failed, classified once by the transport.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Try again later (5xx, timeouts, connection refused).
    #[error("{0}")]
    Retry(String),
    /// Retrying cannot help (4xx, bad address, no number).
    #[error("{0}")]
    Permanent(String),
}

impl Payload {
    /// The `jobs.kind` column for this payload.
    pub fn kind(&self) -> &'static str {
        match self {
            Payload::Sms { .. } => crate::store::jobs::SMS_KIND,
            Payload::SieveEmail { .. } => "sieve_email",
            Payload::AlarmEmail { .. } => "alarm_email",
        }
    }
}

impl From<Work> for Payload {
    fn from(work: Work) -> Payload {
        match work {
            Work::Sms { number, text } => Payload::Sms { number, text },
            Work::SieveEmail {
                uri,
                message,
                importance,
            } => Payload::SieveEmail {
                uri,
                message,
                importance,
            },
            Work::AlarmEmail { recipient, alarm } => Payload::AlarmEmail { recipient, alarm },
        }
    }
}

/// Turns a routed job into a row to insert.
pub fn new_job(request: JobRequest) -> NewJob {
    let payload = Payload::from(request.work);
    NewJob {
        user_id: request.user,
        kind: payload.kind().to_owned(),
        // Serialising plain strings and options cannot fail.
        payload: serde_json::to_string(&payload).unwrap_or_default(),
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
