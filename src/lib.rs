//! mailpush: a push-notification gateway for mail servers.
//!
//! A mail store (Cyrus IMAP) reports every mailbox change as an RFC 5423 event; mailpush turns
//! that stream into live EventSource updates for web clients. The modules follow the data path:
//!
//! ```text
//! ingest ─bytes─▶ event (parse) ─Event─▶ pipeline ─▶ route (pure) ─Action─▶ stream ─▶ http (SSE)
//! ```
//!
//! - [`ingest`]: the Cyrus datagram and `dlist:` sockets, NDJSON over TCP; never waits downstream.
//! - [`event`]: bytes to [`event::Event`]; no I/O, no panics on input.
//! - [`pipeline`]: counts each event, routes it, carries out the actions without waiting.
//! - [`route`]: `Event → Vec<Action>`, pure.
//! - [`stream`]: each user's live channel (state, signals, record marks), the EventSource frame
//!   formats, the keepalive clock, the state's record beyond the process.
//! - [`http`]: the listener (a lean writer for EventSource streams, hyper for the rest) and the
//!   axum router: EventSource endpoints, `POST /ingest`, devices, health, metrics, status.
//! - [`store`]: the database (SQLite or PostgreSQL): registered devices.
//! - [`push`]: device pushes to APNs and FCM, on a bounded queue; the in-memory device cache.
//! - [`job`]: the job model, the one shape a job has from `route` to the workers.
//! - [`notify`]: the blocking path: the job spool, durable jobs, workers, email (lettre) and SMS.
//! - [`cluster`]: several nodes serving the same users: states of record and their fan-out on
//!   NATS JetStream, device and job announcements; off unless `cluster.nats_url` is set.
//! - [`auth`]: client tokens; the only module that sees the token secret.
//! - [`listen`]: binding, the shared accept loop and the connection budget every listener uses.
//! - [`config`], [`metrics`], [`backoff`] (retry timing), [`files`] (private files), [`app`]
//!   (start-up and shutdown), [`doctor`] (the mail store's configuration, checked).

pub mod app;
pub mod auth;
pub mod backoff;
pub mod cluster;
pub mod config;
pub mod doctor;
pub mod event;
pub mod files;
pub mod http;
pub mod ingest;
pub mod job;
pub mod listen;
pub mod metrics;
pub mod notify;
pub mod pipeline;
pub mod push;
pub mod route;
pub mod store;
pub mod stream;
