//! Start-up and shutdown: builds the shared state, spawns every task, and stops them in order.
//!
//! [`run`] takes listeners that are already bound ([`Listeners::bind`]), so `main` binds the
//! configured addresses and tests bind ephemeral ones. Shutdown order: stop accepting, cancel
//! the token (EventSource streams end, receive loops return), then wait for the tasks under a
//! deadline and remove the socket files so Cyrus sees "no listener" at once.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, UnixDatagram, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::TokenKeys;
use crate::config::{Config, ConnectionsConfig};
use crate::http::{self, HttpState};
use crate::ingest::{self, socket::SocketAccess};
use crate::listen::{self, ConnectionBudget};
use crate::metrics::Metrics;
use crate::notify::{
    self,
    worker::{TemplateReloader, Workers},
};
use crate::pipeline::Pipeline;
use crate::push::{self, DeviceCache, Providers};
use crate::store::Store;
use crate::stream::persist::{self, Persistence};
use crate::stream::{StateHub, beat};

/// Every listener mailpush serves, bound before [`run`] starts.
pub struct Listeners {
    pub http: TcpListener,
    /// The Cyrus datagram sockets, with their paths (removed at shutdown).
    pub cyrus: Vec<(PathBuf, UnixDatagram)>,
    pub dlist: Option<(PathBuf, UnixListener)>,
    pub ndjson: Option<TcpListener>,
}

impl Listeners {
    /// Binds every configured address and socket file.
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let access = SocketAccess {
            mode: config.socket_mode(),
            group: config.ingest.cyrus_socket_group.clone(),
        };
        let backlog = config.connections.backlog;
        let http = listen::bind_tcp(config.http.listen, backlog)
            .with_context(|| format!("cannot listen on http.listen {}", config.http.listen))?;
        let mut cyrus = Vec::new();
        for path in &config.ingest.cyrus_socket {
            cyrus.push((path.clone(), ingest::cyrus::bind(path, &access)?));
        }
        let dlist = match &config.ingest.cyrus_dlist_socket {
            Some(path) => Some((path.clone(), ingest::dlist::bind(path, &access, backlog)?)),
            None => None,
        };
        let ndjson = match config.ingest.ndjson_listen {
            Some(addr) => Some(
                listen::bind_tcp(addr, backlog)
                    .with_context(|| format!("cannot listen on ingest.ndjson_listen {addr}"))?,
            ),
            None => None,
        };
        Ok(Listeners {
            http,
            cyrus,
            dlist,
            ndjson,
        })
    }

    /// The bound HTTP address (the real port when the config said port 0).
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// The bound NDJSON address, when that listener is on.
    pub fn ndjson_addr(&self) -> Option<SocketAddr> {
        self.ndjson
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
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

/// Runs mailpush until `shutdown` completes, then drains.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let keys = Arc::new(TokenKeys::load(&config.auth, &config.storage.data_dir)?);
    let database_url = config.database.url.as_ref().map(|url| url.expose());
    let store = Store::connect(database_url, &config.default_database_file()).await?;
    let devices = Arc::new(DeviceCache::new(
        store.all_devices().await.context("cannot load devices")?,
    ));
    tracing::info!(
        database = store.backend(),
        devices = devices.len(),
        "database ready"
    );
    let metrics = Arc::new(Metrics::new());
    let budget = connection_budget(&config.connections, metrics.clone());
    let hub = Arc::new(StateHub::new(
        config.http.max_connections,
        config.http.max_connections_per_user,
    ));
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let providers = Providers::from_config(&config.push)?;
    let push = push::spawn(
        &config.push,
        providers,
        store.clone(),
        devices.clone(),
        metrics.clone(),
        &tracker,
        cancel.clone(),
    );
    let job_written = Arc::new(tokio::sync::Notify::new());
    let spool = notify::spool::Spool::open(
        &config.storage.data_dir.join("spool"),
        config.notify.spool_max_bytes,
        metrics.clone(),
    )
    .with_context(|| {
        format!(
            "cannot open the job spool in {}",
            config.storage.data_dir.join("spool").display()
        )
    })?;
    let jobs = notify::enqueue::spawn(
        spool,
        store.clone(),
        metrics.clone(),
        job_written.clone(),
        &tracker,
        cancel.clone(),
    );
    let workers = Workers::new(
        &config.notify,
        &config.storage.data_dir,
        store.clone(),
        metrics.clone(),
        job_written,
    )?;
    tracker.spawn(reload_on_hangup(
        workers.templates(),
        config.notify.templates_dir.clone(),
        cancel.clone(),
    ));
    workers.recover().await?;
    workers.spawn(config.notify.workers, &tracker, cancel.clone());
    let pipeline = Arc::new(Pipeline::new(
        hub.clone(),
        push.clone(),
        jobs,
        metrics.clone(),
    ));
    let max_event_bytes = config.ingest.max_event_bytes;

    let http_addr = listeners.http_addr()?;
    let ndjson_addr = listeners.ndjson_addr();
    let mut socket_files = Vec::new();
    for (path, socket) in listeners.cyrus {
        socket_files.push(path);
        tracker.spawn(ingest::cyrus::run(
            socket,
            pipeline.clone(),
            max_event_bytes,
            cancel.clone(),
        ));
    }
    if let Some((path, listener)) = listeners.dlist {
        socket_files.push(path);
        tracker.spawn(ingest::dlist::run(
            listener,
            pipeline.clone(),
            max_event_bytes,
            budget.clone(),
            cancel.clone(),
            tracker.clone(),
        ));
    }
    if let (Some(listener), Some(secret)) = (listeners.ndjson, config.ingest.secret.clone()) {
        let limits = ingest::ndjson::NdjsonLimits {
            secret,
            max_bytes: max_event_bytes,
            events_per_sec: config.ingest.ndjson_max_events_per_sec,
        };
        tracker.spawn(ingest::ndjson::run(
            listener,
            pipeline.clone(),
            limits,
            budget.clone(),
            cancel.clone(),
            tracker.clone(),
        ));
    }
    if config.ingest.secret.is_none() {
        tracing::info!("POST /ingest is off: ingest.secret is not set");
    }
    let persistence = Arc::new(Persistence::new(
        hub.clone(),
        Arc::new(store.clone()),
        metrics.clone(),
    ));
    tracker.spawn(persistence.clone().run(
        Duration::from_millis(config.storage.state_flush_ms),
        cancel.clone(),
    ));
    tracker.spawn(persist::run_evictor(
        hub.clone(),
        Duration::from_secs(config.http.idle_user_secs),
        metrics.clone(),
        cancel.clone(),
    ));
    tracker.spawn(beat::run(
        hub.clone(),
        Duration::from_secs(config.http.keepalive_secs),
        cancel.clone(),
    ));
    let state = Arc::new(HttpState {
        hub,
        keys,
        pipeline,
        metrics,
        ingest_secret: config.ingest.secret.clone(),
        cookie_name: config.auth.cookie_name.clone(),
        retry_ms: config.http.retry_ms,
        shutdown: cancel.clone(),
        store,
        devices,
        max_devices_per_user: config.push.max_devices_per_user,
        push,
        budget: budget.clone(),
        metrics_token: config.http.metrics_token.clone(),
        persistence: persistence.clone(),
        jmap_ids: config.jmap.id_scheme,
    });
    let lean_ingest = config.ingest.secret.clone().map(|secret| {
        Arc::new(http::lean_ingest::LeanIngest {
            pipeline: state.pipeline.clone(),
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
    tracker.spawn(http::serve::serve(
        listeners.http,
        router,
        lean_ingest,
        budget.clone(),
        timeouts,
        cancel.clone(),
        tracker.clone(),
    ));
    tracing::info!(
        http = %http_addr,
        cyrus = ?socket_files,
        ndjson = ?ndjson_addr,
        "mailpush listening"
    );

    shutdown.await;
    tracing::info!("shutting down");
    cancel.cancel();
    tracker.close();
    let grace = Duration::from_secs(config.shutdown.grace_secs);
    let drained = tokio::time::timeout(grace, tracker.wait()).await;
    // Nothing changes a state any more: the last ones go to the record.
    if !persistence.flush().await {
        tracing::error!("users' last states were not saved; they come back with the next events");
    }
    for path in &socket_files {
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
    Ok(())
}
