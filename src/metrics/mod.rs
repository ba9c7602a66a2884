//! Counters and gauges, registered once per running app and rendered for `GET /metrics`.
//!
//! Each app owns its own registry (no global recorder), so tests that run several apps in one
//! process read each app's figures apart. Label values come from fixed sets (event kinds,
//! reject reasons, sources) or are capped (slots), so a producer cannot grow the series without
//! limit. The status page's totals and latest rejected packets live in `status.rs`.

mod cluster;
mod labels;
mod status;

use std::collections::HashSet;
use std::sync::RwLock;

use crate::event::ParseError;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use cluster::ClusterMetrics;
use labels::{
    EventLabels, FormatLabels, LimitLabels, OperationLabels, OutcomeLabels, ProviderLabels,
    PushLabels, ReasonLabels, RejectLabels, SlotLabels,
};
use status::StatusTotals;
pub use status::{Rejection, StatusSnapshot};

use crate::ingest::Source;

/// Every `limits_reached` label, so each series exists (at 0) from the start: `rate()` and
/// dashboards see a bound before it is first reached.
pub const LIMITS: &[&str] = &[
    "connections_refused",
    "idle_connection_closed",
    "idle_timeout",
    "request_timeout",
    "send_timeout",
    "accept_error",
    "ndjson_rate",
    "alarm_recipients_over_cap",
    "job_spool_full",
];

/// Every `jobs_total` outcome, created at 0 for the same reason.
pub const JOB_OUTCOMES: &[&str] = &[
    "queued",
    "duplicate",
    "dropped",
    "skipped_auto_submitted",
    "unreadable_in_spool",
    "sent",
    "retried",
    "dead",
    "no_credit",
    "released",
];

/// The most distinct slots (Cyrus `serverFQDN`s) given their own series; FastMail ran up to 40
/// per machine. Later ones count under `other`.
const MAX_SLOTS: usize = 128;

/// Every metric mailpush exports.
pub struct Metrics {
    registry: Registry,
    events_received: Family<EventLabels, Counter>,
    slot_events: Family<SlotLabels, Counter>,
    known_slots: RwLock<HashSet<String>>,
    packets_rejected: Family<RejectLabels, Counter>,
    state_updates: Counter,
    states_saved: Counter,
    users_evicted: Counter,
    users_in_memory: Gauge,
    state_record_failures: Family<OperationLabels, Counter>,
    connections: Gauge,
    open_connections: Gauge,
    connection_budget: Gauge,
    frames_sent: Family<FormatLabels, Counter>,
    requests_refused: Family<ReasonLabels, Counter>,
    pushes: Family<PushLabels, Counter>,
    push_queue: Gauge,
    jobs: Family<OutcomeLabels, Counter>,
    job_spool_bytes: Gauge,
    limits_reached: Family<LimitLabels, Counter>,
    job_latency: Histogram,
    eventsource_latency: Histogram,
    push_latency: Family<ProviderLabels, Histogram, fn() -> Histogram>,
    /// The cluster's series (`mailpush_cluster_*`).
    pub cluster: ClusterMetrics,
    totals: StatusTotals,
}

/// Buckets from 50 µs to about 26 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// Values read from their owners when metrics are rendered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Levels {
    /// EventSource connections open now.
    pub connections: usize,
    /// Pushes waiting for a sender.
    pub push_queue: usize,
    /// Connections of every kind open now, and the budget they share.
    pub open_connections: usize,
    pub connection_budget: usize,
    /// Users whose state is in memory.
    pub users_in_memory: usize,
    /// Whether the node is connected to NATS (false when it is not clustered).
    pub cluster_connected: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("mailpush");
        let events_received = Family::<EventLabels, Counter>::default();
        registry.register(
            "events_received",
            "Events accepted, by source and type",
            events_received.clone(),
        );
        let slot_events = Family::<SlotLabels, Counter>::default();
        registry.register(
            "slot_events",
            "Events accepted, by Cyrus instance (serverFQDN)",
            slot_events.clone(),
        );
        let packets_rejected = Family::<RejectLabels, Counter>::default();
        registry.register(
            "packets_rejected",
            "Packets dropped as invalid, by source and reason",
            packets_rejected.clone(),
        );
        let state_updates = Counter::default();
        registry.register(
            "state_updates",
            "Events that raised a user's live state",
            state_updates.clone(),
        );
        let states_saved = Counter::default();
        registry.register(
            "states_saved",
            "Users' states written to the state record (the database)",
            states_saved.clone(),
        );
        let users_evicted = Counter::default();
        registry.register(
            "users_evicted",
            "Idle users dropped from memory (their state stays in the record)",
            users_evicted.clone(),
        );
        let users_in_memory = Gauge::default();
        registry.register(
            "users_in_memory",
            "Users whose live state is in memory now",
            users_in_memory.clone(),
        );
        let state_record_failures = Family::<OperationLabels, Counter>::default();
        registry.register(
            "state_record_failures",
            "State record reads (load) and writes (save) that failed; a failed write is retried",
            state_record_failures.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "eventsource_connections",
            "EventSource connections open now",
            connections.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "connections_open",
            "Connections of every kind (HTTP, streams, NDJSON, dlist) open now",
            open_connections.clone(),
        );
        let connection_budget = Gauge::default();
        registry.register(
            "connections_budget",
            "Connections that may be open at once before idle ones are closed and new ones refused",
            connection_budget.clone(),
        );
        let frames_sent = Family::<FormatLabels, Counter>::default();
        registry.register(
            "eventsource_events_sent",
            "State events written to EventSource clients, by format",
            frames_sent.clone(),
        );
        let requests_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "requests_refused",
            "Client requests refused (EventSource, devices), by reason",
            requests_refused.clone(),
        );
        let pushes = Family::<PushLabels, Counter>::default();
        registry.register(
            "pushes",
            "Device pushes by provider, app and outcome (sent, retried, failed, token_removed, coalesced, dropped_*: alert, badge, rate_device, rate_user)",
            pushes.clone(),
        );
        let push_queue = Gauge::default();
        registry.register(
            "push_queue_depth",
            "Pushes waiting for a sender",
            push_queue.clone(),
        );
        let jobs = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "jobs",
            "Jobs of the blocking path by outcome (queued, duplicate, dropped, sent, retried, dead, no_credit)",
            jobs.clone(),
        );
        let job_spool_bytes = Gauge::default();
        registry.register(
            "job_spool_bytes",
            "Bytes of jobs in the spool not yet written to the database",
            job_spool_bytes.clone(),
        );
        let limits_reached = Family::<LimitLabels, Counter>::default();
        registry.register(
            "limits_reached",
            "Times a bound was reached, by limit: each one refuses, closes or slows something (README, Budgets)",
            limits_reached.clone(),
        );
        let job_latency = Histogram::new(exponential_buckets(0.01, 2.0, 18));
        registry.register(
            "job_latency_seconds",
            "From a job's enqueue to its successful send",
            job_latency.clone(),
        );
        let eventsource_latency = latency_histogram();
        registry.register(
            "eventsource_latency_seconds",
            "From an event raising a user's state to the frame written to each of the user's streams",
            eventsource_latency.clone(),
        );
        let push_latency: Family<ProviderLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "push_latency_seconds",
            "From an event to the provider's final answer to its push, by provider",
            push_latency.clone(),
        );
        let cluster = ClusterMetrics::register(&mut registry);
        for limit in LIMITS {
            drop(limits_reached.get_or_create(&LimitLabels { limit }));
        }
        for outcome in JOB_OUTCOMES {
            drop(jobs.get_or_create(&OutcomeLabels { outcome }));
        }
        for operation in ["load", "save"] {
            drop(state_record_failures.get_or_create(&OperationLabels { operation }));
        }
        Metrics {
            registry,
            eventsource_latency,
            push_latency,
            pushes,
            push_queue,
            jobs,
            job_spool_bytes,
            limits_reached,
            job_latency,
            events_received,
            slot_events,
            known_slots: RwLock::new(HashSet::new()),
            packets_rejected,
            state_updates,
            states_saved,
            users_evicted,
            users_in_memory,
            state_record_failures,
            connections,
            open_connections,
            connection_budget,
            frames_sent,
            requests_refused,
            cluster,
            totals: StatusTotals::default(),
        }
    }

    /// Counts an accepted event.
    pub fn event_received(&self, source: Source, kind: &'static str, slot: Option<&str>) {
        self.totals.event(source);
        self.events_received
            .get_or_create(&EventLabels {
                source: source.label(),
                r#type: kind,
            })
            .inc();
        if let Some(slot) = slot {
            self.slot_events
                .get_or_create(&SlotLabels {
                    slot: self.slot_label(slot),
                })
                .inc();
        }
    }

    /// Counts a dropped packet and keeps it among the latest for the status page.
    pub fn packet_rejected(&self, source: Source, error: &ParseError, size: usize, packet: &[u8]) {
        self.packets_rejected
            .get_or_create(&RejectLabels {
                source: source.label(),
                reason: error.reason(),
            })
            .inc();
        self.totals.rejected(source, error, size, packet);
    }

    /// Counts users' states written to the record.
    pub fn states_saved(&self, count: usize) {
        self.states_saved.inc_by(count as u64);
    }

    /// Counts idle users dropped from memory.
    pub fn users_evicted(&self, count: usize) {
        self.users_evicted.inc_by(count as u64);
    }

    /// Counts a failed read (`load`) or write (`save`) of the state record.
    pub fn state_record_failed(&self, operation: &'static str) {
        self.state_record_failures
            .get_or_create(&OperationLabels { operation })
            .inc();
    }

    /// Counts an event that moved a user's state.
    pub fn state_updated(&self) {
        self.state_updates.inc();
    }

    /// The counter a feed bumps for each state frame it writes.
    pub fn frames_sent(&self, format: &'static str) -> Counter {
        self.frames_sent
            .get_or_create(&FormatLabels { format })
            .clone()
    }

    /// Counts a refused client request (`token_missing`, `user_limit`...).
    pub fn request_refused(&self, reason: &'static str) {
        self.requests_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts what became of a device push.
    pub fn push_outcome(&self, provider: &'static str, app: &str, outcome: &'static str) {
        self.totals.push(outcome);
        self.pushes
            .get_or_create(&PushLabels {
                provider,
                app: app.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Counts what became of a job.
    pub fn job_outcome(&self, outcome: &'static str) {
        self.totals.job(outcome);
        self.jobs.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts `count` things refused, closed or slowed because `limit` was reached.
    pub fn limit_reached(&self, limit: &'static str, count: usize) {
        self.limits_reached
            .get_or_create(&LimitLabels { limit })
            .inc_by(count as u64);
    }

    /// How many times `limit` was reached so far (for tests and the status page).
    pub fn limit_count(&self, limit: &'static str) -> u64 {
        self.limits_reached
            .get_or_create(&LimitLabels { limit })
            .get()
    }

    /// Sets the bytes waiting in the job spool.
    pub fn job_spool_bytes(&self, bytes: u64) {
        self.job_spool_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The histogram a feed records its delivery latency in.
    pub fn eventsource_latency(&self) -> Histogram {
        self.eventsource_latency.clone()
    }

    /// Records how long a push took from its event to the provider's final answer.
    pub fn push_latency(&self, provider: &'static str, latency: std::time::Duration) {
        self.push_latency
            .get_or_create(&ProviderLabels { provider })
            .observe(latency.as_secs_f64());
    }

    /// Records how long a job took from enqueue to sent.
    pub fn job_latency(&self, latency: std::time::Duration) {
        self.job_latency.observe(latency.as_secs_f64());
    }

    /// Renders the Prometheus text format, with gauges set from `levels`.
    pub fn render(&self, levels: Levels) -> String {
        let gauge = |value: usize| i64::try_from(value).unwrap_or(i64::MAX);
        self.connections.set(gauge(levels.connections));
        self.push_queue.set(gauge(levels.push_queue));
        self.open_connections.set(gauge(levels.open_connections));
        self.connection_budget.set(gauge(levels.connection_budget));
        self.users_in_memory.set(gauge(levels.users_in_memory));
        self.cluster.set_connected(levels.cluster_connected);
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %err, "cannot render metrics");
        }
        text
    }

    /// The figures the status page charts, read now.
    pub fn snapshot(&self, levels: Levels) -> StatusSnapshot {
        let frames_sent = ["legacy", "jmap"]
            .into_iter()
            .map(|format| {
                self.frames_sent
                    .get_or_create(&FormatLabels { format })
                    .get()
            })
            .sum();
        self.totals
            .snapshot(self.state_updates.get(), frames_sent, levels)
    }

    fn slot_label(&self, slot: &str) -> String {
        let known = self
            .known_slots
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if known.contains(slot) {
            return slot.to_owned();
        }
        drop(known);
        let mut known = self
            .known_slots
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if known.len() < MAX_SLOTS {
            known.insert(slot.to_owned());
            slot.to_owned()
        } else {
            "other".to_owned()
        }
    }
}

#[cfg(test)]
mod tests;
