//! The sending side: a task that takes jobs off the queue and starts one delivery task per job
//! (at most `max_in_flight` per provider), and the delivery itself with its retries, breaker
//! bookkeeping and dead-token removal.

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{DeviceCache, Provider, PushHandle, PushJob, RetryPolicy, SendError};
use crate::auth::unix_now;
use crate::backoff::random_fraction;
use crate::metrics::Metrics;
use crate::store::Store;

/// Takes jobs off the queue and starts their deliveries.
pub(super) struct Sender {
    pub(super) handle: PushHandle,
    pub(super) store: Store,
    pub(super) policy: RetryPolicy,
    pub(super) tracker: TaskTracker,
    pub(super) shutdown: CancellationToken,
}

impl Sender {
    pub(super) async fn run(self) {
        loop {
            let job = tokio::select! {
                () = self.shutdown.cancelled() => break,
                job = self.handle.queue.pop() => match job {
                    Some(job) => job,
                    None => break,
                },
            };
            let Some(provider) = self.handle.providers.for_device(&job.device).cloned() else {
                continue;
            };
            if !provider.breaker.allow() {
                self.handle.metrics.push_outcome(
                    provider.kind,
                    &provider.app,
                    "dropped_breaker_open",
                );
                continue;
            }
            let permit = tokio::select! {
                () = self.shutdown.cancelled() => break,
                permit = provider.in_flight.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    // The semaphore is never closed.
                    Err(_) => break,
                },
            };
            let delivery = Delivery {
                job,
                provider,
                store: self.store.clone(),
                devices: self.handle.devices.clone(),
                metrics: self.handle.metrics.clone(),
                policy: self.policy,
                shutdown: self.shutdown.clone(),
            };
            self.tracker.spawn(delivery.run(permit));
        }
        let left = self.handle.queue.len();
        if left > 0 {
            tracing::warn!(pushes = left, "shutting down with pushes still queued");
        }
    }
}

/// One job's delivery, with its retries.
pub(super) struct Delivery {
    pub(super) job: PushJob,
    pub(super) provider: Arc<Provider>,
    pub(super) store: Store,
    pub(super) devices: Arc<DeviceCache>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) policy: RetryPolicy,
    pub(super) shutdown: CancellationToken,
}

impl Delivery {
    pub(super) async fn run(self, _permit: OwnedSemaphorePermit) {
        let (kind, app) = (self.provider.kind, self.provider.app.as_str());
        for attempt in 1..=self.policy.max_attempts {
            let result = self.provider.send(&self.job).await;
            let last = attempt == self.policy.max_attempts;
            if result.is_ok() || !matches!(result, Err(SendError::Retry { .. })) || last {
                self.metrics
                    .push_latency(kind, self.job.received_at.elapsed());
            }
            match result {
                Ok(()) => {
                    self.provider.breaker.success();
                    self.metrics.push_outcome(kind, app, "sent");
                    tracing::debug!(push = %self.job.id, provider = kind, app, attempt, "pushed");
                    return;
                }
                Err(SendError::Unregistered { since, reason }) => {
                    self.provider.breaker.success();
                    // Boxed, as is the retry's timer: every push's task is spawned with room
                    // for its future, and the database query's would make it kilobytes.
                    Box::pin(self.remove_device(since, &reason)).await;
                    return;
                }
                Err(SendError::Permanent { reason }) => {
                    self.provider.breaker.success();
                    self.metrics.push_outcome(kind, app, "failed");
                    tracing::warn!(push = %self.job.id, provider = kind, app, reason, "push refused");
                    return;
                }
                Err(SendError::Retry { after, reason }) => {
                    self.provider.breaker.failure();
                    if attempt == self.policy.max_attempts {
                        self.metrics.push_outcome(kind, app, "failed");
                        tracing::warn!(push = %self.job.id, provider = kind, app, attempts = attempt, reason, "push given up");
                        return;
                    }
                    self.metrics.push_outcome(kind, app, "retried");
                    let delay =
                        after.unwrap_or_else(|| self.policy.delay(attempt, random_fraction()));
                    tracing::debug!(push = %self.job.id, provider = kind, attempt, ?delay, reason, "push will be retried");
                    tokio::select! {
                        () = self.shutdown.cancelled() => {
                            self.metrics.push_outcome(kind, app, "dropped_shutdown");
                            return;
                        }
                        () = Box::pin(tokio::time::sleep(delay)) => {}
                    }
                }
            }
        }
    }

    async fn remove_device(&self, since: Option<i64>, reason: &str) {
        let (kind, app) = (self.provider.kind, self.provider.app.as_str());
        let device = &self.job.device;
        let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
        match self
            .store
            .remove_dead_token(device.platform, &device.token, since, reason, now)
            .await
        {
            Ok(Some(removed)) => {
                self.devices.remove(&removed);
                self.metrics.push_outcome(kind, app, "token_removed");
                tracing::info!(push = %self.job.id, provider = kind, device = removed.id, reason, "removed dead device token");
            }
            Ok(None) => {
                // Registered again after the provider's "dead since": keep it.
                self.metrics.push_outcome(kind, app, "failed");
            }
            Err(err) => {
                self.metrics.push_outcome(kind, app, "failed");
                tracing::error!(error = %err, device = device.id, "cannot remove dead device token");
            }
        }
    }
}
