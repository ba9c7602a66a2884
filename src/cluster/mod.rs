//! Several nodes serving the same users: NATS JetStream holds each user's state of record and
//! carries it to the nodes that serve the user; PostgreSQL, shared, holds devices, users and
//! jobs.
//!
//! A node beside a mail store ingests its events as a lone node does: it raises the user's
//! state in its own hub, pushes to the user's devices and queues jobs. What clustering adds:
//! - [`record`]: the hub's unsaved states are merged into the bucket at once (per-kind
//!   maximum, compare-and-set on the revision), so a state never goes backwards whatever the
//!   order of writers, and the bucket republishes every stored value on the user's subject;
//! - [`relay`]: a node listens to a user's subject while it holds a stream of theirs, and
//!   merges what it hears into its hub; the node that ingested the event is the only one
//!   that pushes, since relayed states only move streams;
//! - [`devices`] and [`jobs`]: a device registered or removed on one node, or a job written,
//!   is announced so that every node's device cache and workers follow;
//! - reconnection: while NATS is away the node serves its own streams and keeps the newest
//!   unsent state of each user; once back it writes them, re-reads the state of every user
//!   it serves and reloads its device cache, so no stream is left behind.
//!
//! Nothing here is on the ingest path: the pipeline only hands reminders to a bounded queue
//! ([`Reminders`]), and the record's writer is the hub's write-behind task.

pub mod devices;
pub mod jobs;
pub mod names;
pub mod record;
pub mod relay;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event, ServerAddr};
use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;
use crate::metrics::Metrics;
use crate::notify::enqueue::JobsWritten;
use crate::push::DeviceCache;
use crate::store::Store;
use crate::stream::StateHub;
use crate::stream::persist::Persistence;
pub use names::Names;
use record::KvRecord;
use relay::Relay;

/// Everything clustering adds to a node: made by [`Cluster::connect`], its tasks started by
/// [`Cluster::spawn`].
pub struct Cluster {
    pub link: Arc<Link>,
    /// The state record: the bucket.
    pub record: Arc<KvRecord>,
    /// Which users this node listens for.
    pub relay: Arc<Relay>,
    /// Where the pipeline hands reminders for other nodes' streams.
    pub reminders: Reminders,
    reminder_queue: mpsc::Receiver<(String, Bytes)>,
    devices: Arc<devices::DeviceNews>,
}

/// What the cluster's tasks work with, besides the cluster itself.
pub struct ClusterTasks<'a> {
    pub persistence: Arc<Persistence>,
    pub store: Store,
    pub devices: Arc<DeviceCache>,
    pub jobs: &'a JobsWritten,
    pub tracker: &'a tokio_util::task::TaskTracker,
    pub shutdown: CancellationToken,
}

impl Cluster {
    /// Sets up the NATS connection (in the background), the record, the relay for `hub`'s
    /// users, and the announcements of `devices`' changes.
    pub async fn connect(
        config: &ClusterConfig,
        hub: Arc<StateHub>,
        devices: &DeviceCache,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Cluster> {
        let link = Arc::new(Link::connect(config, metrics.clone()).await?);
        let (reminders, reminder_queue) = Reminders::new(metrics);
        Ok(Cluster {
            record: Arc::new(KvRecord::new(link.clone())),
            relay: Relay::new(link.clone(), hub),
            devices: devices::DeviceNews::new(link.clone(), devices),
            reminders,
            reminder_queue,
            link,
        })
    }

    /// How long a stream's opening waits for NATS at most.
    pub fn timeout(&self) -> Duration {
        self.link.timeout
    }

    /// Starts the cluster's tasks: the relay's sweeper, reminders out, device announcements
    /// out and in, job announcements out and in, and the resync after each reconnection.
    pub fn spawn(self, tasks: ClusterTasks<'_>) -> Arc<Link> {
        let ClusterTasks {
            persistence,
            store,
            devices,
            jobs,
            tracker,
            shutdown,
        } = tasks;
        let link = self.link;
        tracker.spawn(self.relay.clone().run_sweeper(shutdown.clone()));
        tracker.spawn(Reminders::run(
            link.clone(),
            self.reminder_queue,
            shutdown.clone(),
        ));
        tracker.spawn(self.devices.run_publisher(shutdown.clone()));
        tracker.spawn(devices::run_listener(
            link.clone(),
            store.clone(),
            devices.clone(),
            shutdown.clone(),
        ));
        tracker.spawn(jobs::run_announcer(
            link.clone(),
            jobs.elsewhere.clone(),
            shutdown.clone(),
        ));
        tracker.spawn(jobs::run_listener(
            link.clone(),
            jobs.workers.clone(),
            shutdown.clone(),
        ));
        tracker.spawn(run_resync(
            self.record,
            self.relay,
            persistence,
            (store, devices),
            shutdown,
        ));
        link
    }
}

/// After every connection to NATS (the first too: the node may have started cut off): makes
/// sure the bucket exists, writes the states kept while cut off, re-reads the state of every
/// user with a stream here and reloads the device cache.
async fn run_resync(
    record: Arc<KvRecord>,
    relay: Arc<Relay>,
    persistence: Arc<Persistence>,
    (store, devices): (Store, Arc<DeviceCache>),
    shutdown: CancellationToken,
) {
    let link = record.link.clone();
    let mut connects = link.connects();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = connects.changed() => if changed.is_err() { return },
        }
        if let Err(err) = record.bucket().await {
            tracing::error!(error = %err, "cluster: the state bucket is not ready; trying again at the next write");
        }
        persistence.retry_now();
        let users = relay.resync(&persistence).await;
        // Best effort: a failure is logged, and the listener keeps the cache fresh from here.
        let _ = devices::reload_all(&store, &devices).await;
        link.metrics.cluster.resynced();
        tracing::info!(
            users,
            "cluster: states and devices read again after connecting"
        );
    }
}

/// The node's NATS connection and what every part of the cluster needs with it.
pub struct Link {
    client: Client,
    names: Names,
    node: String,
    /// How long any NATS request may take.
    timeout: Duration,
    /// Counts connections made, the first included: a change means "connected again".
    connects: watch::Receiver<u64>,
    metrics: Arc<Metrics>,
}

impl Link {
    /// Connects to NATS in the background: a node started while NATS is away serves its own
    /// users and joins once it can. Bad options (a credentials file that does not read, a URL
    /// that does not parse) fail at once.
    pub async fn connect(config: &ClusterConfig, metrics: Arc<Metrics>) -> anyhow::Result<Link> {
        let url = config
            .nats_url
            .as_ref()
            .context("cluster.nats_url is not set")?;
        let servers = url
            .expose()
            .split(',')
            .map(|server| server.trim().parse::<ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .context("cluster.nats_url")?;
        let node = config.node_name();
        let timeout = Duration::from_millis(config.request_timeout_ms);
        let (connected, connects) = watch::channel(0u64);
        let lost = Arc::new(AtomicBool::new(false));
        let mut options = ConnectOptions::new()
            .name(format!("mailpush {node}"))
            // A node hears its own reminders and announcements from itself, not from NATS.
            .no_echo()
            .retry_on_initial_connect()
            .connection_timeout(timeout)
            .request_timeout(Some(timeout))
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(100 * u64::try_from(attempts.min(20)).unwrap_or(20))
            })
            .event_callback(connection_events(connected, lost))
            .require_tls(config.tls_required);
        if let Some(token) = &config.token {
            options = options.token(token.expose().to_owned());
        }
        if let Some(path) = &config.credentials_file {
            options = options.credentials_file(path).await.with_context(|| {
                format!("cannot read cluster.credentials_file {}", path.display())
            })?;
        }
        if let Some(path) = &config.tls_ca_file {
            options = options.add_root_certificates(path.clone());
        }
        if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let client = options
            .connect(servers)
            .await
            .context("cannot set up the NATS connection")?;
        tracing::info!(node = %node, servers = ?url, "cluster: connecting to NATS");
        // Give the first connection the request timeout, so a node whose NATS is up joins
        // before it serves; one whose NATS is away starts anyway.
        let mut first = connects.clone();
        let joined = tokio::time::timeout(timeout, first.wait_for(|count| *count > 0)).await;
        if !matches!(joined, Ok(Ok(_))) {
            tracing::warn!(
                ?timeout,
                "cluster: NATS did not answer; starting cut off, joining once it does"
            );
        }
        Ok(Link {
            client,
            names: Names::new(&config.prefix),
            node,
            timeout,
            connects,
            metrics,
        })
    }

    /// Whether the node is connected to NATS now; `/readyz` and `cluster_connected` say so.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The subjects and bucket.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Each (re)connection, as a count that changes.
    pub fn connects(&self) -> watch::Receiver<u64> {
        self.connects.clone()
    }

    /// Subscribes to `subject` for the rest of the process, trying again every few seconds
    /// until it works; None at shutdown.
    async fn subscribe_until_done(
        &self,
        subject: String,
        shutdown: &CancellationToken,
    ) -> Option<async_nats::Subscriber> {
        loop {
            match self.client.subscribe(subject.clone()).await {
                Ok(subscriber) => return Some(subscriber),
                Err(err) => {
                    tracing::warn!(subject = %subject, error = %err, "cluster: cannot subscribe yet");
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
            }
        }
    }

    /// Publishes and flushes, within the request timeout.
    async fn publish(&self, subject: String, payload: Bytes) -> Result<(), String> {
        let sent = tokio::time::timeout(self.timeout, async {
            self.client
                .publish(subject, payload)
                .await
                .map_err(|err| err.to_string())?;
            self.client.flush().await.map_err(|err| err.to_string())
        })
        .await;
        match sent {
            Ok(result) => result,
            Err(_) => Err(format!("no answer from NATS within {:?}", self.timeout)),
        }
    }
}

/// Turns the client's connection events into the connection count and log lines.
fn connection_events(
    connected: watch::Sender<u64>,
    lost: Arc<AtomicBool>,
) -> impl Fn(Event) -> std::future::Ready<()> + Send + Sync + 'static {
    move |event| {
        match event {
            Event::Connected => {
                if lost.swap(false, Ordering::AcqRel) {
                    tracing::info!("cluster: connected to NATS again");
                } else {
                    tracing::info!("cluster: connected to NATS");
                }
                connected.send_modify(|count| *count += 1);
            }
            Event::Disconnected => {
                lost.store(true, Ordering::Release);
                tracing::warn!(
                    "cluster: cut off from NATS; serving this node's own streams until it is back"
                );
            }
            Event::SlowConsumer(sid) => {
                tracing::warn!(
                    subscription = sid,
                    "cluster: messages dropped: this node reads too slowly"
                )
            }
            other => tracing::info!(event = %other, "cluster: NATS connection event"),
        }
        std::future::ready(())
    }
}

/// Carries calendar reminders from the pipeline to the other nodes, without waiting: a bounded
/// queue drained by [`Reminders::run`]. A reminder is now or never, so when the queue is full
/// (NATS away for long) new ones are dropped and counted.
#[derive(Clone)]
pub struct Reminders {
    queue: mpsc::Sender<(String, Bytes)>,
    metrics: Arc<Metrics>,
}

/// Reminders waiting for NATS.
const REMINDER_QUEUE: usize = 1024;

impl Reminders {
    /// The queue, and its receiving end for [`Reminders::run`].
    pub fn new(metrics: Arc<Metrics>) -> (Reminders, mpsc::Receiver<(String, Bytes)>) {
        let (queue, receiver) = mpsc::channel(REMINDER_QUEUE);
        (Reminders { queue, metrics }, receiver)
    }

    /// Queues `frame` for the streams `user` has on other nodes.
    pub fn send(&self, user: &str, frame: Bytes) {
        if self.queue.try_send((user.to_owned(), frame)).is_err() {
            self.metrics.cluster.message_dropped("reminder");
        }
    }

    /// Publishes queued reminders until shutdown.
    pub async fn run(
        link: Arc<Link>,
        mut queue: mpsc::Receiver<(String, Bytes)>,
        shutdown: CancellationToken,
    ) {
        loop {
            let (user, frame) = tokio::select! {
                () = shutdown.cancelled() => return,
                next = queue.recv() => match next {
                    Some(next) => next,
                    None => return,
                },
            };
            match link
                .publish(link.names.reminder_subject(&user), frame)
                .await
            {
                Ok(()) => link.metrics.cluster.message_sent("reminder"),
                Err(err) => {
                    link.metrics.cluster.message_dropped("reminder");
                    tracing::warn!(user = %user, error = %err, "cluster: reminder not relayed");
                }
            }
        }
    }
}
