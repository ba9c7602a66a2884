//! The status page's figures: running totals kept beside the Prometheus families (a family
//! cannot be summed without knowing its label sets) and the latest rejected packets.
//!
//! An accepted event costs one relaxed atomic add here; a push or job outcome a short lock.
//! A rejection formats its error and excerpt, which only bad input pays for.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::Levels;
use crate::event::ParseError;
use crate::ingest::{EXCERPT_BYTES, Source};

/// The most rejected packets the status page lists.
const RECENT_REJECTIONS: usize = 20;
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

/// The totals the Prometheus families cannot give back.
pub(super) struct StatusTotals {
    events_in: [AtomicU64; Source::ALL.len()],
    rejected: [AtomicU64; Source::ALL.len()],
    pushes: Mutex<BTreeMap<&'static str, u64>>,
    jobs: Mutex<BTreeMap<&'static str, u64>>,
    recent_rejections: Mutex<VecDeque<Rejection>>,
    started: Instant,
}

impl Default for StatusTotals {
    fn default() -> Self {
        StatusTotals {
            events_in: Default::default(),
            rejected: Default::default(),
            pushes: Mutex::default(),
            jobs: Mutex::default(),
            recent_rejections: Mutex::default(),
            started: Instant::now(),
        }
    }
}

impl StatusTotals {
    pub(super) fn event(&self, source: Source) {
        self.events_in[source.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn rejected(&self, source: Source, error: &ParseError, size: usize, packet: &[u8]) {
        self.rejected[source.index()].fetch_add(1, Ordering::Relaxed);
        let rejection = Rejection {
            time_ms: now_unix_ms(),
            source: source.label(),
            reason: error.reason(),
            error: error.to_string(),
            bytes: size,
            excerpt: packet[..packet.len().min(EXCERPT_BYTES)]
                .escape_ascii()
                .to_string(),
        };
        let mut recent = locked(&self.recent_rejections);
        if recent.len() == RECENT_REJECTIONS {
            recent.pop_back();
        }
        recent.push_front(rejection);
    }

    pub(super) fn push(&self, outcome: &'static str) {
        *locked(&self.pushes).entry(outcome).or_insert(0) += 1;
    }

    pub(super) fn job(&self, outcome: &'static str) {
        *locked(&self.jobs).entry(outcome).or_insert(0) += 1;
    }

    /// The totals now, with the figures the Prometheus side keeps.
    pub(super) fn snapshot(
        &self,
        state_updates: u64,
        frames_sent: u64,
        levels: Levels,
    ) -> StatusSnapshot {
        let by_source = |counters: &[AtomicU64; Source::ALL.len()]| {
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
        StatusSnapshot {
            time_ms: now_unix_ms(),
            uptime_secs: self.started.elapsed().as_secs(),
            events_in: by_source(&self.events_in),
            rejected: by_source(&self.rejected),
            state_updates,
            connections: levels.connections,
            frames_sent,
            pushes: locked(&self.pushes).clone(),
            push_queue: levels.push_queue,
            jobs: locked(&self.jobs).clone(),
            recent_rejections: locked(&self.recent_rejections).iter().cloned().collect(),
        }
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

fn locked<T>(value: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    value
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::super::Metrics;
    use super::*;

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
            ..Levels::default()
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
}
