//! The cluster's metrics (`mailpush_cluster_*`): registered on every node, so dashboards and
//! alerts see the same series whether or not a node is clustered (a lone node's stay at 0).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Every message kind, so each series exists from the start.
const KINDS: &[&str] = &["state", "reminder", "devices", "jobs", "invalid"];
/// Every state-write outcome.
const WRITE_OUTCOMES: &[&str] = &["written", "conflict", "failed"];

/// What a clustered node counts.
pub struct ClusterMetrics {
    connected: Gauge,
    users_watched: Gauge,
    state_writes: Family<OutcomeLabels, Counter>,
    received: Family<KindLabels, Counter>,
    sent: Family<KindLabels, Counter>,
    dropped: Family<KindLabels, Counter>,
    resyncs: Counter,
}

impl ClusterMetrics {
    /// Registers the cluster's series in `registry`.
    pub(super) fn register(registry: &mut Registry) -> ClusterMetrics {
        let metrics = ClusterMetrics {
            connected: Gauge::default(),
            users_watched: Gauge::default(),
            state_writes: Family::default(),
            received: Family::default(),
            sent: Family::default(),
            dropped: Family::default(),
            resyncs: Counter::default(),
        };
        registry.register(
            "cluster_connected",
            "1 while the node is connected to NATS; 0 while it is cut off (or not clustered)",
            metrics.connected.clone(),
        );
        registry.register(
            "cluster_users_watched",
            "Users whose changes this node listens for (those with a stream here)",
            metrics.users_watched.clone(),
        );
        registry.register(
            "cluster_state_writes",
            "Merged writes of users' states to the bucket, by outcome (written, conflict: another writer was first, failed)",
            metrics.state_writes.clone(),
        );
        registry.register(
            "cluster_messages_received",
            "Messages heard from other nodes, by kind (state, reminder, devices, jobs, invalid)",
            metrics.received.clone(),
        );
        registry.register(
            "cluster_messages_sent",
            "Messages this node published, by kind",
            metrics.sent.clone(),
        );
        registry.register(
            "cluster_messages_dropped",
            "Messages this node could not publish and gave up (reminders while NATS was away)",
            metrics.dropped.clone(),
        );
        registry.register(
            "cluster_resyncs",
            "Reconnections to NATS after which the node re-read its users' states and its devices",
            metrics.resyncs.clone(),
        );
        for kind in KINDS {
            drop(metrics.received.get_or_create(&KindLabels { kind }));
            drop(metrics.sent.get_or_create(&KindLabels { kind }));
            drop(metrics.dropped.get_or_create(&KindLabels { kind }));
        }
        for outcome in WRITE_OUTCOMES {
            drop(
                metrics
                    .state_writes
                    .get_or_create(&OutcomeLabels { outcome }),
            );
        }
        metrics
    }

    /// Sets whether the node is connected to NATS.
    pub fn set_connected(&self, connected: bool) {
        self.connected.set(i64::from(connected));
    }

    /// Sets how many users the node listens for.
    pub fn users_watched(&self, count: i64) {
        self.users_watched.set(count);
    }

    /// Counts a state write by outcome.
    pub fn state_written(&self, outcome: &'static str) {
        self.state_writes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts states a flush could not write (they stay unsaved and go with the next one).
    pub fn states_failed(&self, count: u64) {
        self.state_writes
            .get_or_create(&OutcomeLabels { outcome: "failed" })
            .inc_by(count);
    }

    /// Counts a message heard.
    pub fn message_received(&self, kind: &'static str) {
        self.received.get_or_create(&KindLabels { kind }).inc();
    }

    /// Counts a message published.
    pub fn message_sent(&self, kind: &'static str) {
        self.sent.get_or_create(&KindLabels { kind }).inc();
    }

    /// Counts a message given up.
    pub fn message_dropped(&self, kind: &'static str) {
        self.dropped.get_or_create(&KindLabels { kind }).inc();
    }

    /// Counts a resync after a reconnection.
    pub fn resynced(&self) {
        self.resyncs.inc();
    }

    /// Messages of `kind` heard so far (tests).
    pub fn received_count(&self, kind: &'static str) -> u64 {
        self.received.get_or_create(&KindLabels { kind }).get()
    }
}
