//! Start-up and shutdown: builds the shared state, spawns every task, and stops them in order.
//!
//! [`run`] takes listeners that are already bound ([`Listeners::bind`]), so `main` binds the
//! configured addresses and tests bind ephemeral ones. Shutdown order: stop accepting, cancel
//! the token (EventSource streams end, receive loops return), then wait for the tasks under a
//! deadline and remove the socket files so Cyrus sees "no listener" at once.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::TokenKeys;
use crate::cluster::{Cluster, ClusterTasks};
use crate::config::{Config, ConnectionsConfig};
use crate::http::devices::Devices;
use crate::http::events::Streams;
use crate::http::{self, AppState, Operators};
use crate::ingest;
use crate::ingest::http::Ingest;
use crate::listen::{self, ConnectionBudget};
use crate::metrics::Metrics;
use crate::notify::enqueue::JobsWritten;
use crate::notify::{
    self, JobHandle,
    worker::{TemplateReloader, Workers},
};
use crate::pipeline::Pipeline;
use crate::push::webpush::{EndpointPolicy, Vapid};
use crate::push::{self, DeviceCache, Providers, PushHandle};
use crate::store::Store;
use crate::stream::persist::{self, Persistence};
use crate::stream::{StateHub, beat};

mod listeners;

pub use listeners::Listeners;

/// The cancellation token every task stops on, and the tracker shutdown waits on.
#[derive(Clone, Default)]
struct Tasks {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// What the database holds for the whole node: client token keys, the store, its devices.
struct Storage {
    keys: Arc<TokenKeys>,
    store: Store,
    devices: Arc<DeviceCache>,
}

/// Runs mailpush until `shutdown` completes, then drains. Each step starts one part of the
/// node, in the order the parts depend on each other.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let tasks = Tasks::default();
    let metrics = Arc::new(Metrics::new());
    let storage = open_storage(&config).await?;
    let budget = connection_budget(&config.connections, metrics.clone());
    let hub = Arc::new(StateHub::new(
        config.http.max_connections,
        config.http.max_connections_per_user,
    ));
    let cluster = connect_cluster(&config, &hub, &storage, &metrics).await?;
    let vapid = load_vapid(&config)?;
    let push = start_push(&config, &storage, vapid.as_ref(), &metrics, &tasks)?;
    let (jobs, jobs_written) = start_notify(&config, &storage, &metrics, &tasks).await?;
    let mut pipeline = Pipeline::new(hub.clone(), push.clone(), jobs, metrics.clone());
    if let Some(cluster) = &cluster {
        pipeline = pipeline.with_reminders(cluster.reminders.clone());
    }
    let pipeline = Arc::new(pipeline);
    let http_addr = listeners.http_addr()?;
    let ndjson_addr = listeners.ndjson_addr();
    let (http_listener, socket_files) =
        start_ingest(&config, listeners, &pipeline, &budget, &tasks);
    let persistence = start_streams(&config, &hub, &storage, cluster.as_ref(), &metrics, &tasks);
    let link = cluster.map(|cluster| {
        cluster.spawn(ClusterTasks {
            persistence: persistence.clone(),
            store: storage.store.clone(),
            devices: storage.devices.clone(),
            jobs: &jobs_written,
            tracker: &tasks.tracker,
            shutdown: tasks.cancel.clone(),
        })
    });
    let auth = |metrics: &Arc<Metrics>| http::Auth {
        keys: storage.keys.clone(),
        cookie_name: config.auth.cookie_name.clone(),
        metrics: metrics.clone(),
    };
    let state = AppState {
        streams: Arc::new(Streams {
            auth: auth(&metrics),
            hub: hub.clone(),
            persistence: persistence.clone(),
            metrics: metrics.clone(),
            retry_ms: config.http.retry_ms,
            jmap_ids: config.jmap.id_scheme,
        }),
        ingest: Arc::new(Ingest {
            pipeline: pipeline.clone(),
            secret: config.ingest.secret.clone(),
        }),
        devices: Arc::new(Devices {
            auth: auth(&metrics),
            store: storage.store.clone(),
            cache: storage.devices.clone(),
            max_per_user: config.push.max_devices_per_user,
            vapid,
            endpoints: EndpointPolicy {
                allow_private: config.push.webpush.allow_private_endpoints,
            },
        }),
        operators: Arc::new(Operators {
            auth: auth(&metrics),
            metrics: metrics.clone(),
            metrics_token: config.http.metrics_token.clone(),
            store: storage.store.clone(),
            cluster: link,
            hub,
            push,
            budget: budget.clone(),
            retry_ms: config.http.retry_ms,
            shutdown: tasks.cancel.clone(),
        }),
    };
    start_http(&config, http_listener, state, pipeline, budget, &tasks);
    tracing::info!(
        http = %http_addr,
        cyrus = ?socket_files,
        ndjson = ?ndjson_addr,
        "mailpush listening"
    );

    shutdown.await;
    drain(&config, tasks, &persistence, &socket_files).await;
    Ok(())
}

/// Opens the database and loads what the node keeps of it in memory.
async fn open_storage(config: &Config) -> anyhow::Result<Storage> {
    let keys = Arc::new(TokenKeys::load(&config.auth, &config.storage.data_dir)?);
    let database_url = config.database.url.as_ref().map(|url| url.expose());
    let store = Store::connect_with(
        database_url,
        &config.default_database_file(),
        config.database.max_connections,
    )
    .await?;
    let devices = Arc::new(DeviceCache::new(
        store.all_devices().await.context("cannot load devices")?,
    ));
    tracing::info!(
        database = store.backend(),
        devices = devices.len(),
        "database ready"
    );
    Ok(Storage {
        keys,
        store,
        devices,
    })
}

/// Joins the cluster when `cluster.nats_url` is set (the connection is made in the
/// background: a node started while NATS is away serves its own users meanwhile).
async fn connect_cluster(
    config: &Config,
    hub: &Arc<StateHub>,
    storage: &Storage,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<Cluster>> {
    if !config.cluster.enabled() {
        return Ok(None);
    }
    let cluster = Cluster::connect(
        &config.cluster,
        hub.clone(),
        &storage.devices,
        metrics.clone(),
    )
    .await?;
    Ok(Some(cluster))
}

/// The VAPID key when Web Push is on (made on first start).
fn load_vapid(config: &Config) -> anyhow::Result<Option<Arc<Vapid>>> {
    let webpush = &config.push.webpush;
    if !webpush.enabled {
        return Ok(None);
    }
    let path = webpush
        .vapid_key_file
        .clone()
        .unwrap_or_else(|| config.storage.data_dir.join("vapid.pem"));
    let vapid = Vapid::load_or_generate(&path, webpush.subject.clone())?;
    if webpush.allow_private_endpoints {
        tracing::warn!(
            "push.webpush.allow_private_endpoints is on: subscriptions may point at loopback, private and plain-http addresses"
        );
    }
    tracing::info!(key = vapid.public_key(), "Web Push on");
    Ok(Some(Arc::new(vapid)))
}

/// Starts the device push senders.
fn start_push(
    config: &Config,
    storage: &Storage,
    vapid: Option<&Arc<Vapid>>,
    metrics: &Arc<Metrics>,
    tasks: &Tasks,
) -> anyhow::Result<PushHandle> {
    let providers = Providers::from_config(config, vapid)?;
    Ok(push::spawn(
        &config.push,
        providers,
        storage.store.clone(),
        storage.devices.clone(),
        metrics.clone(),
        &tasks.tracker,
        tasks.cancel.clone(),
    ))
}

/// Starts the blocking path: the job spool and its writer, then the workers (after the
/// delivery journal of a crashed run is applied), and the template reloads on SIGHUP.
async fn start_notify(
    config: &Config,
    storage: &Storage,
    metrics: &Arc<Metrics>,
    tasks: &Tasks,
) -> anyhow::Result<(JobHandle, JobsWritten)> {
    let spool_dir = config.storage.data_dir.join("spool");
    let spool =
        notify::spool::Spool::open(&spool_dir, config.notify.spool_max_bytes, metrics.clone())
            .with_context(|| format!("cannot open the job spool in {}", spool_dir.display()))?;
    let written = JobsWritten::default();
    let jobs = notify::enqueue::spawn(
        spool,
        storage.store.clone(),
        metrics.clone(),
        written.clone(),
        &tasks.tracker,
        tasks.cancel.clone(),
    );
    let workers = Workers::new(
        &config.notify,
        &config.storage.data_dir,
        storage.store.clone(),
        metrics.clone(),
        written.workers.clone(),
    )?;
    tasks.tracker.spawn(reload_on_hangup(
        workers.templates(),
        config.notify.templates_dir.clone(),
        tasks.cancel.clone(),
    ));
    workers.recover().await?;
    workers.spawn(config.notify.workers, &tasks.tracker, tasks.cancel.clone());
    Ok((jobs, written))
}

/// Starts a receive loop on every ingest socket; hands back the HTTP listener (served last)
/// and the socket files to remove at shutdown.
fn start_ingest(
    config: &Config,
    listeners: Listeners,
    pipeline: &Arc<Pipeline>,
    budget: &Arc<ConnectionBudget>,
    tasks: &Tasks,
) -> (TcpListener, Vec<PathBuf>) {
    let max_event_bytes = config.ingest.max_event_bytes;
    let mut socket_files = Vec::new();
    for (path, socket) in listeners.cyrus {
        socket_files.push(path);
        tasks.tracker.spawn(ingest::cyrus::run(
            socket,
            pipeline.clone(),
            max_event_bytes,
            tasks.cancel.clone(),
        ));
    }
    if let Some((path, listener)) = listeners.dlist {
        socket_files.push(path);
        tasks.tracker.spawn(ingest::dlist::run(
            listener,
            pipeline.clone(),
            max_event_bytes,
            budget.clone(),
            tasks.cancel.clone(),
            tasks.tracker.clone(),
        ));
    }
    if let (Some(listener), Some(secret)) = (listeners.ndjson, config.ingest.secret.clone()) {
        let limits = ingest::ndjson::NdjsonLimits {
            secret,
            max_bytes: max_event_bytes,
            events_per_sec: config.ingest.ndjson_max_events_per_sec,
        };
        tasks.tracker.spawn(ingest::ndjson::run(
            listener,
            pipeline.clone(),
            limits,
            budget.clone(),
            tasks.cancel.clone(),
            tasks.tracker.clone(),
        ));
    }
    if config.ingest.secret.is_none() {
        tracing::info!("POST /ingest is off: ingest.secret is not set");
    }
    (listeners.http, socket_files)
}

/// Starts what keeps live state: the record's writer (the database, or in a cluster the
/// bucket, written at once since its writes are what the other nodes hear), the evictor of
/// idle users and the keepalive clock.
fn start_streams(
    config: &Config,
    hub: &Arc<StateHub>,
    storage: &Storage,
    cluster: Option<&Cluster>,
    metrics: &Arc<Metrics>,
    tasks: &Tasks,
) -> Arc<Persistence> {
    let (persistence, spacing) = match cluster {
        Some(cluster) => (
            Persistence::new(hub.clone(), cluster.record.clone(), metrics.clone())
                .with_interest(cluster.relay.clone(), cluster.timeout()),
            Duration::ZERO,
        ),
        None => (
            Persistence::new(
                hub.clone(),
                Arc::new(storage.store.clone()),
                metrics.clone(),
            ),
            Duration::from_millis(config.storage.state_flush_ms),
        ),
    };
    let persistence = Arc::new(persistence);
    tasks
        .tracker
        .spawn(persistence.clone().run(spacing, tasks.cancel.clone()));
    tasks.tracker.spawn(persist::run_evictor(
        hub.clone(),
        Duration::from_secs(config.http.idle_user_secs),
        metrics.clone(),
        tasks.cancel.clone(),
    ));
    tasks.tracker.spawn(beat::run(
        hub.clone(),
        Duration::from_secs(config.http.keepalive_secs),
        tasks.cancel.clone(),
    ));
    persistence
}

/// Serves HTTP: the router, and the lean path for `POST /ingest` when it is on.
fn start_http(
    config: &Config,
    listener: TcpListener,
    state: AppState,
    pipeline: Arc<Pipeline>,
    budget: Arc<ConnectionBudget>,
    tasks: &Tasks,
) {
    let lean_ingest = config.ingest.secret.clone().map(|secret| {
        Arc::new(http::lean_ingest::LeanIngest {
            pipeline,
            secret,
            max_body_bytes: config.http.max_body_bytes,
        })
    });
    let router = http::router(state, config.http.max_body_bytes, &config.http.cors_origins);
    let timeouts = http::serve::Timeouts {
        idle: Duration::from_secs(config.connections.idle_secs),
        request: Duration::from_secs(config.connections.request_secs),
        send: Duration::from_secs(config.http.send_timeout_secs),
    };
    tasks.tracker.spawn(http::serve::serve(
        listener,
        router,
        lean_ingest,
        budget,
        timeouts,
        tasks.cancel.clone(),
        tasks.tracker.clone(),
    ));
}

/// Stops in order: every task is told to stop (listeners close, streams say goodbye), then
/// waited for under the grace period; the last states go to the record, and the socket files
/// go so that Cyrus sees "no listener" at once.
async fn drain(config: &Config, tasks: Tasks, persistence: &Persistence, socket_files: &[PathBuf]) {
    tracing::info!("shutting down");
    tasks.cancel.cancel();
    tasks.tracker.close();
    let grace = Duration::from_secs(config.shutdown.grace_secs);
    let drained = tokio::time::timeout(grace, tasks.tracker.wait()).await;
    // Nothing changes a state any more: the last ones go to the record.
    if !persistence.flush().await {
        tracing::error!("users' last states were not saved; they come back with the next events");
    }
    for path in socket_files {
        if let Err(err) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %err, "cannot remove socket file");
        }
    }
    match drained {
        Ok(()) => tracing::info!("stopped"),
        Err(_) => {
            tracing::warn!(?grace, "tasks still running at the shutdown deadline")
        }
    }
}

/// Reloads the templates on every SIGHUP (`main` reloads the log level on the same signal).
async fn reload_on_hangup(templates: TemplateReloader, dir: PathBuf, cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch SIGHUP; templates will not reload");
            return;
        }
    };
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            received = hangups.recv() => if received.is_none() { return },
        }
        match templates.reload(&dir) {
            Ok(()) => tracing::info!(dir = %dir.display(), "templates reloaded"),
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "templates not reloaded; keeping the current ones")
            }
        }
    }
}

/// The budget for every connection, sized from the open-file limit (raised to its maximum).
fn connection_budget(config: &ConnectionsConfig, metrics: Arc<Metrics>) -> Arc<ConnectionBudget> {
    let file_limit = listen::raise_file_limit();
    let max = ConnectionBudget::size(config.max, file_limit, config.reserve_fds);
    tracing::info!(file_limit, connections = max, "connection budget");
    ConnectionBudget::new(max, metrics)
}
