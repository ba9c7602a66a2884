//! Counters and gauges, registered once per running app and rendered for `GET /metrics`.
//!
//! Each app owns its own registry (no global recorder), so tests that run several apps in one
//! process read each app's figures apart. Label values come from fixed sets (event kinds,
//! reject reasons, sources) or are capped (slots), so a producer cannot grow the series without
//! limit.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::event::ParseError;

/// Where an event came in; a label on ingest metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The Cyrus notify datagram socket.
    Cyrus,
    /// The Cyrus `dlist:` stream socket.
    Dlist,
    /// Newline-delimited JSON over TCP.
    Ndjson,
    /// `POST /ingest`.
    Http,
}

impl Source {
    /// Every source, in the order of [`Source::index`].
    pub const ALL: [Source; 4] = [Source::Cyrus, Source::Dlist, Source::Ndjson, Source::Http];

    /// The position in per-source arrays.
    fn index(self) -> usize {
        self as usize
    }

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Source::Cyrus => "cyrus",
            Source::Dlist => "dlist",
            Source::Ndjson => "ndjson",
            Source::Http => "http",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EventLabels {
    source: &'static str,
    r#type: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RejectLabels {
    source: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SlotLabels {
    slot: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FormatLabels {
    format: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PushLabels {
    provider: &'static str,
    app: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

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
    connections: Gauge,
    frames_sent: Family<FormatLabels, Counter>,
    requests_refused: Family<ReasonLabels, Counter>,
    pushes: Family<PushLabels, Counter>,
    push_queue: Gauge,
    jobs: Family<OutcomeLabels, Counter>,
    job_latency: Histogram,
    eventsource_latency: Histogram,
    push_latency: Family<ProviderLabels, Histogram, fn() -> Histogram>,
    totals: Totals,
    started: Instant,
}

/// Running totals for the status page, kept beside the Prometheus families because a family
/// cannot be summed without knowing its label sets. One relaxed add per event.
#[derive(Default)]
struct Totals {
    events_in: [AtomicU64; 4],
    rejected: [AtomicU64; 4],
    pushes: Mutex<BTreeMap<&'static str, u64>>,
    jobs: Mutex<BTreeMap<&'static str, u64>>,
    recent_rejections: Mutex<VecDeque<Rejection>>,
}

/// The most rejected packets the status page lists.
const RECENT_REJECTIONS: usize = 20;
/// The most bytes of a rejected packet shown.
pub const EXCERPT_BYTES: usize = 96;

/// The first bytes of a packet, copied on the stack before a parse consumes the packet, so a
/// rejection can still show them without an allocation per packet.
pub struct PacketHead {
    bytes: [u8; EXCERPT_BYTES],
    len: usize,
}

impl PacketHead {
    /// Copies up to [`EXCERPT_BYTES`] of `packet`.
    pub fn new(packet: &[u8]) -> PacketHead {
        let len = packet.len().min(EXCERPT_BYTES);
        let mut bytes = [0; EXCERPT_BYTES];
        bytes[..len].copy_from_slice(&packet[..len]);
        PacketHead { bytes, len }
    }

    /// The copied bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// A rejected packet as the status page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    pub time_ms: u64,
    pub source: &'static str,
    pub reason: &'static str,
    /// The parse error in full.
    pub error: String,
    pub bytes: usize,
    /// The packet's first bytes, with control and non-ASCII bytes escaped.
    pub excerpt: String,
}

/// What the status page's stream sends each second: totals (the page derives rates), gauges
/// and the latest rejected packets, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct StatusSnapshot {
    pub time_ms: u64,
    pub uptime_secs: u64,
    pub events_in: BTreeMap<&'static str, u64>,
    pub rejected: BTreeMap<&'static str, u64>,
    pub state_updates: u64,
    pub connections: usize,
    pub frames_sent: u64,
    pub pushes: BTreeMap<&'static str, u64>,
    pub push_queue: usize,
    pub jobs: BTreeMap<&'static str, u64>,
    pub recent_rejections: Vec<Rejection>,
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str) {
    *map.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .entry(key)
        .or_insert(0) += 1;
}

fn copied<T: Clone>(value: &Mutex<T>) -> T {
    value
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProviderLabels {
    provider: &'static str,
}

/// Buckets from 50 µs to about 26 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Values read from their owners when metrics are rendered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Levels {
    /// EventSource connections open now.
    pub connections: usize,
    /// Pushes waiting for a sender.
    pub push_queue: usize,
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
        let connections = Gauge::default();
        registry.register(
            "eventsource_connections",
            "EventSource connections open now",
            connections.clone(),
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
            "Device pushes by provider, app and outcome (sent, retried, failed, token_removed, dropped_*)",
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
        Metrics {
            registry,
            eventsource_latency,
            push_latency,
            pushes,
            push_queue,
            jobs,
            job_latency,
            events_received,
            slot_events,
            known_slots: RwLock::new(HashSet::new()),
            packets_rejected,
            state_updates,
            connections,
            frames_sent,
            requests_refused,
            totals: Totals::default(),
            started: Instant::now(),
        }
    }

    /// Counts an accepted event.
    pub fn event_received(&self, source: Source, kind: &'static str, slot: Option<&str>) {
        self.totals.events_in[source.index()].fetch_add(1, Ordering::Relaxed);
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
        let reason = error.reason();
        self.packets_rejected
            .get_or_create(&RejectLabels {
                source: source.label(),
                reason,
            })
            .inc();
        self.totals.rejected[source.index()].fetch_add(1, Ordering::Relaxed);
        let rejection = Rejection {
            time_ms: now_unix_ms(),
            source: source.label(),
            reason,
            error: error.to_string(),
            bytes: size,
            excerpt: packet[..packet.len().min(EXCERPT_BYTES)]
                .escape_ascii()
                .to_string(),
        };
        let mut recent = self
            .totals
            .recent_rejections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if recent.len() == RECENT_REJECTIONS {
            recent.pop_back();
        }
        recent.push_front(rejection);
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
        bump(&self.totals.pushes, outcome);
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
        bump(&self.totals.jobs, outcome);
        self.jobs.get_or_create(&OutcomeLabels { outcome }).inc();
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
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %err, "cannot render metrics");
        }
        text
    }

    /// The figures the status page charts, read now.
    pub fn snapshot(&self, levels: Levels) -> StatusSnapshot {
        let by_source = |counters: &[AtomicU64; 4]| {
            Source::ALL
                .iter()
                .map(|source| {
                    (
                        source.label(),
                        counters[source.index()].load(Ordering::Relaxed),
                    )
                })
                .collect()
        };
        let frames_sent = ["legacy", "jmap"]
            .into_iter()
            .map(|format| {
                self.frames_sent
                    .get_or_create(&FormatLabels { format })
                    .get()
            })
            .sum();
        StatusSnapshot {
            time_ms: now_unix_ms(),
            uptime_secs: self.started.elapsed().as_secs(),
            events_in: by_source(&self.totals.events_in),
            rejected: by_source(&self.totals.rejected),
            state_updates: self.state_updates.get(),
            connections: levels.connections,
            frames_sent,
            pushes: copied(&self.totals.pushes),
            push_queue: levels.push_queue,
            jobs: copied(&self.totals.jobs),
            recent_rejections: copied(&self.totals.recent_rejections).into(),
        }
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
mod tests {
    use super::*;

    #[test]
    fn renders_counts() {
        let metrics = Metrics::new();
        metrics.event_received(Source::Cyrus, "MessageNew", Some("slot1"));
        metrics.event_received(Source::Cyrus, "MessageNew", Some("slot1"));
        metrics.packet_rejected(
            Source::Dlist,
            &ParseError::Truncated("dlist record"),
            3,
            b"%(\0",
        );
        let text = metrics.render(Levels {
            connections: 3,
            push_queue: 0,
        });
        assert!(
            text.contains("mailpush_events_received_total{source=\"cyrus\",type=\"MessageNew\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("mailpush_slot_events_total{slot=\"slot1\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "mailpush_packets_rejected_total{source=\"dlist\",reason=\"truncated\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("mailpush_eventsource_connections 3"),
            "{text}"
        );
    }

    #[test]
    fn snapshot_sums_and_keeps_the_latest_rejections() {
        let metrics = Metrics::new();
        metrics.event_received(Source::Cyrus, "MessageNew", None);
        metrics.event_received(Source::Cyrus, "FlagsSet", None);
        metrics.event_received(Source::Http, "MessageNew", None);
        metrics.push_outcome("apns", "app", "sent");
        metrics.push_outcome("fcm", "app", "sent");
        metrics.job_outcome("dead");
        for n in 0..RECENT_REJECTIONS + 5 {
            let packet = format!("packet {n}\n\u{1}{}", "x".repeat(200));
            metrics.packet_rejected(
                Source::Cyrus,
                &ParseError::MissingName,
                packet.len(),
                packet.as_bytes(),
            );
        }
        let snapshot = metrics.snapshot(Levels {
            connections: 7,
            push_queue: 1,
        });
        assert_eq!(snapshot.events_in["cyrus"], 2);
        assert_eq!(snapshot.events_in["http"], 1);
        assert_eq!(snapshot.events_in["dlist"], 0);
        assert_eq!(snapshot.rejected["cyrus"], 25);
        assert_eq!(snapshot.pushes["sent"], 2);
        assert_eq!(snapshot.jobs["dead"], 1);
        assert_eq!(snapshot.connections, 7);
        assert_eq!(snapshot.recent_rejections.len(), RECENT_REJECTIONS);
        let newest = &snapshot.recent_rejections[0];
        assert_eq!(newest.reason, "missing_event_name");
        assert!(
            newest.excerpt.starts_with("packet 24\\n\\x01xx"),
            "{}",
            newest.excerpt
        );
        assert_eq!(
            newest.excerpt.len(),
            EXCERPT_BYTES + 4,
            "\\n and \\x01 escaped"
        );
        assert_eq!(newest.bytes, 211);
    }

    #[test]
    fn slots_are_capped() {
        let metrics = Metrics::new();
        for n in 0..MAX_SLOTS + 10 {
            metrics.event_received(Source::Cyrus, "Login", Some(&format!("slot{n}")));
        }
        let text = metrics.render(Levels::default());
        assert!(
            text.contains("mailpush_slot_events_total{slot=\"other\"} 10"),
            "{text}"
        );
    }
}
