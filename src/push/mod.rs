//! Device pushes on the non-blocking path: APNs ([`apns`]), FCM v1 ([`fcm`]) and Web Push
//! ([`webpush`]), each a [`provider::Client`].
//!
//! `route` decides what to push; [`PushHandle::enqueue`] turns it into one job per registered
//! device (found in the in-memory [`DeviceCache`], never the database). Badge and state
//! updates are held and merged per device ([`coalesce`]); what is sent passes the per-minute
//! caps ([`limits`]) and goes on a bounded [`queue`] without waiting. A sender task takes jobs off the queue and runs each
//! delivery as its own task, at most `max_in_flight` per provider, retrying with exponential
//! backoff and jitter. A provider that keeps failing trips its circuit [`breaker`] and is left
//! alone for a while. A dead token is removed from the store and the cache. Nothing here can
//! slow ingestion or EventSource delivery: the only link back is `enqueue`, which never waits.

pub mod apns;
pub mod breaker;
pub mod coalesce;
pub mod devices;
pub mod fcm;
pub mod limits;
pub mod provider;
pub mod queue;
mod sender;
pub mod webpush;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::backoff::RetryPolicy;
pub use devices::DeviceCache;

use crate::backoff::random_u64;
use crate::config::{Config, PushConfig};
use crate::metrics::Metrics;
use crate::route::{PushKind, PushRequest};
use crate::store::{Device, Platform, Store};
use crate::stream::UserState;
use breaker::Breaker;
use coalesce::Coalescer;
use limits::RateLimits;
use provider::Client;
use queue::{Droppable, Overflow, PushQueue};

/// One notification for one device.
#[derive(Debug, Clone)]
pub struct PushJob {
    /// A UUID, sent as `apns-id` and logged, so one push can be followed end to end.
    pub id: String,
    pub user: String,
    pub device: Device,
    pub kind: PushKind,
    /// The user's state when it was made, for payloads that carry it (Web Push).
    pub state: UserState,
    /// When the event that caused it was dispatched, for the push latency.
    pub received_at: std::time::Instant,
}

/// How a delivery failed, classified once by the provider client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Worth another try: 429, 5xx, timeouts, connection errors, a refreshed credential.
    /// `after` is the provider's Retry-After, when it gave one.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// The token is dead (APNs 410 or BadDeviceToken, FCM UNREGISTERED): remove the device,
    /// unless it registered again after `since` (seconds since the epoch).
    Unregistered { since: Option<i64>, reason: String },
    /// Anything else: retrying cannot help.
    Permanent { reason: String },
}

impl SendError {
    fn from_transport(err: reqwest::Error) -> SendError {
        let reason = if err.is_timeout() {
            "request timed out".to_owned()
        } else if err.is_connect() {
            format!("cannot connect: {err}")
        } else {
            format!("transport error: {err}")
        };
        SendError::Retry {
            after: None,
            reason,
        }
    }
}

impl Droppable for PushJob {
    fn is_alert(&self) -> bool {
        self.kind.is_alert()
    }
}

/// What the pipeline holds to hand pushes over.
#[derive(Clone)]
pub struct PushHandle {
    queue: Arc<PushQueue<PushJob>>,
    coalescer: Arc<Coalescer>,
    limits: Arc<RateLimits>,
    devices: Arc<DeviceCache>,
    providers: Arc<Providers>,
    metrics: Arc<Metrics>,
}

/// The configured provider clients, found by the platform and `app` a device registered
/// with.
#[derive(Default)]
pub struct Providers {
    by_app: HashMap<(Platform, String), Arc<Provider>>,
    /// Whether any provider takes state-only pushes: when none does (no Web Push), a state
    /// change costs the pipeline nothing here.
    takes_state: bool,
}

/// One provider client with its own concurrency limit and breaker.
pub struct Provider {
    /// `apns`, `fcm` or `webpush`, a metric label.
    kind: &'static str,
    /// The app (topic) it serves, a metric label.
    app: String,
    client: Box<dyn Client>,
    in_flight: Arc<Semaphore>,
    breaker: Breaker,
}

impl Providers {
    /// Builds a client for every provider section of the configuration: one line per platform.
    /// `vapid` is the Web Push key, loaded when `push.webpush` is on.
    pub fn from_config(
        config: &Config,
        vapid: Option<&Arc<webpush::Vapid>>,
    ) -> anyhow::Result<Providers> {
        let push = &config.push;
        let timeout = Duration::from_millis(push.request_timeout_ms);
        let jmap_ids = config.jmap.id_scheme;
        let mut providers = Providers::default();
        providers.add(push, Platform::Apns, apns::clients(&push.apns, timeout)?);
        providers.add(push, Platform::Fcm, fcm::clients(&push.fcm, timeout)?);
        let web = webpush::clients(&push.webpush, vapid, jmap_ids, timeout)?;
        providers.add(push, Platform::WebPush, web);
        Ok(providers)
    }

    /// Adds one platform's clients, each under the `app` its devices register with.
    fn add(
        &mut self,
        config: &PushConfig,
        platform: Platform,
        clients: Vec<(String, Box<dyn Client>)>,
    ) {
        if clients.is_empty() {
            tracing::info!(
                platform = platform.as_str(),
                "push provider is off: not configured"
            );
        }
        for (app, client) in clients {
            let breaker = Breaker::new(
                config.breaker_threshold,
                Duration::from_millis(config.breaker_cooldown_ms),
            );
            let provider = Provider::new(
                platform.as_str(),
                app.clone(),
                client,
                config.max_in_flight,
                breaker,
            );
            self.takes_state |= provider.client.takes(&PushKind::State);
            self.by_app.insert((platform, app), Arc::new(provider));
        }
    }

    fn for_device(&self, device: &Device) -> Option<&Arc<Provider>> {
        self.by_app.get(&(device.platform, device.app.clone()))
    }
}

impl Provider {
    fn new(
        kind: &'static str,
        app: String,
        client: Box<dyn Client>,
        max_in_flight: usize,
        breaker: Breaker,
    ) -> Provider {
        Provider {
            kind,
            app,
            client,
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
            breaker,
        }
    }

    async fn send(&self, job: &PushJob) -> Result<(), SendError> {
        self.client.send(job).await
    }
}

impl PushHandle {
    /// Makes the push for each of the user's devices whose provider takes it; `state` gives
    /// the user's state after the event (asked only when the user has a device). Alerts are
    /// queued at once, updates held to be merged. Never waits.
    pub fn enqueue(&self, request: PushRequest, state: impl FnOnce(&str) -> UserState) {
        if matches!(request.kind, PushKind::State) && !self.providers.takes_state {
            return;
        }
        let devices = self.devices.devices_of(&request.user);
        if devices.is_empty() {
            return;
        }
        let state = state(&request.user);
        let now = tokio::time::Instant::now();
        for device in devices {
            let Some(provider) = self.providers.for_device(&device) else {
                if !matches!(request.kind, PushKind::State) {
                    self.metrics
                        .push_outcome(device.platform.as_str(), "-", "no_provider");
                }
                continue;
            };
            if !provider.client.takes(&request.kind) {
                continue;
            }
            let job = PushJob {
                received_at: std::time::Instant::now(),
                id: uuid_v4(),
                user: request.user.clone(),
                kind: request.kind.clone(),
                state,
                device,
            };
            let offered = self.coalescer.offer(job, now);
            if offered.superseded.is_some() {
                self.metrics
                    .push_outcome(provider.kind, &provider.app, "coalesced");
            }
            if let Some(job) = offered.send {
                self.submit(job);
            }
        }
    }

    /// Queues a push that is due, within the per-minute caps.
    fn submit(&self, job: PushJob) {
        let provider = job.device.platform.as_str();
        let now = tokio::time::Instant::now();
        if let Err(refused) = self.limits.admit(&job.user, job.device.id, now) {
            self.metrics
                .push_outcome(provider, &job.device.app, refused.outcome());
            tracing::debug!(push = %job.id, user = %job.user, device = job.device.id, cap = refused.outcome(), "push over the per-minute cap: dropped");
            return;
        }
        if let Overflow::Dropped(dropped) = self.queue.push(job) {
            let what = if dropped.is_alert() {
                "dropped_alert"
            } else {
                "dropped_badge"
            };
            self.metrics
                .push_outcome(dropped.device.platform.as_str(), &dropped.device.app, what);
            tracing::warn!(push = %dropped.id, user = %dropped.user, "push queue full: dropped");
        }
    }

    /// Badge and state updates held to be merged.
    pub fn held(&self) -> usize {
        self.coalescer.len()
    }

    /// Pushes waiting for a sender.
    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }
}

/// Starts the sender task and the coalescer's flusher; returns the handle ingest pushes
/// through.
pub fn spawn(
    config: &PushConfig,
    providers: Providers,
    store: Store,
    devices: Arc<DeviceCache>,
    metrics: Arc<Metrics>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> PushHandle {
    let handle = PushHandle {
        queue: Arc::new(PushQueue::new(config.queue_capacity)),
        coalescer: Arc::new(Coalescer::new(Duration::from_millis(config.coalesce_ms))),
        limits: Arc::new(RateLimits::new(
            config.max_per_device_per_minute,
            config.max_per_user_per_minute,
        )),
        devices,
        providers: Arc::new(providers),
        metrics,
    };
    let policy = RetryPolicy {
        max_attempts: config.max_attempts.max(1),
        base: Duration::from_millis(config.retry_base_ms),
        cap: Duration::from_secs(60),
    };
    let sender = sender::Sender {
        handle: handle.clone(),
        store,
        policy,
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
    };
    tracker.spawn(sender.run());
    let flusher = handle.clone();
    tracker.spawn(async move {
        let coalescer = flusher.coalescer.clone();
        coalescer
            .run(move |job| flusher.submit(job), shutdown)
            .await;
    });
    handle
}

/// An HTTP/2 client for a provider; `ca_file` adds a trusted CA to the platform's.
fn http_client(ca_file: Option<&Path>, timeout: Duration) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read ca_file {}", path.display()))?;
        let certificate = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("ca_file {} is not a PEM certificate", path.display()))?;
        builder = builder.tls_certs_merge([certificate]);
    }
    builder.build().context("cannot build the HTTP client")
}

/// A `Retry-After` given in seconds.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds.min(3600)))
}

/// A random (version 4) UUID in its canonical lowercase form, as `apns-id` wants. It names
/// a push in logs and at the provider, so it must be unique, not secret: the process's
/// keyed hasher gives that without a system call per push.
fn uuid_v4() -> String {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&random_u64().to_le_bytes());
    bytes[8..].copy_from_slice(&random_u64().to_le_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::store::Environment;

    /// A provider that answers from a script and records the (paused) time of each call.
    pub(super) struct Scripted {
        answers: Mutex<VecDeque<Result<(), SendError>>>,
        pub(super) calls: Mutex<Vec<tokio::time::Instant>>,
    }

    impl Client for Arc<Scripted> {
        fn send<'a>(&'a self, _job: &'a PushJob) -> provider::Sending<'a> {
            self.calls.lock().unwrap().push(tokio::time::Instant::now());
            let answer = self.answers.lock().unwrap().pop_front().unwrap_or(Ok(()));
            Box::pin(std::future::ready(answer))
        }
    }

    fn retry() -> Result<(), SendError> {
        Err(SendError::Retry {
            after: None,
            reason: "503".into(),
        })
    }

    #[tokio::test]
    async fn retries_wait_longer_each_time_and_stop_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(None, &dir.path().join("db.sqlite"))
            .await
            .unwrap();
        // The store's pool runs on real time; everything after this on paused time.
        tokio::time::pause();
        let scripted = Arc::new(Scripted {
            answers: Mutex::new(VecDeque::from([
                retry(),
                retry(),
                retry(),
                retry(),
                retry(),
                Ok(()),
            ])),
            calls: Mutex::new(Vec::new()),
        });
        let policy = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
        };
        let provider = Arc::new(Provider::new(
            "apns",
            "app".into(),
            Box::new(scripted.clone()),
            1,
            Breaker::new(100, Duration::from_secs(1)),
        ));
        let device = Device {
            id: 1,
            user_id: "alice".into(),
            platform: Platform::Apns,
            token: "aa".into(),
            app: "app".into(),
            environment: Environment::Production,
            created_at: 0,
            registered_at: 0,
            webpush: None,
        };
        let delivery = sender::Delivery {
            job: PushJob {
                id: uuid_v4(),
                user: "alice".into(),
                device,
                kind: PushKind::Badge { unseen: 1 },
                state: UserState::default(),
                received_at: std::time::Instant::now(),
            },
            provider: provider.clone(),
            store,
            devices: Arc::new(DeviceCache::default()),
            metrics: Arc::new(Metrics::new()),
            policy,
            shutdown: CancellationToken::new(),
        };
        let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
        delivery.run(permit).await;
        let calls = scripted.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 5, "five attempts, then given up");
        let gaps: Vec<Duration> = calls.windows(2).map(|pair| pair[1] - pair[0]).collect();
        for (index, gap) in gaps.iter().enumerate() {
            let full = Duration::from_secs(1 << index);
            // Tokio's timer fires on whole milliseconds, so a sleep may end up to 1 ms late.
            assert!(
                *gap >= full / 2 && *gap <= full + Duration::from_millis(1),
                "gap {index}: {gap:?} of {gaps:?}"
            );
        }
        assert!(gaps.windows(2).all(|pair| pair[1] >= pair[0]), "{gaps:?}");
    }

    #[test]
    fn uuids_are_canonical_v4() {
        let id = uuid_v4();
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4');
        assert!(
            id.chars()
                .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
            "{id}"
        );
        assert_ne!(uuid_v4(), id);
        let fraction = crate::backoff::random_fraction();
        assert!((0.0..1.0).contains(&fraction));
    }
}
