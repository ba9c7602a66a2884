//! Device caches that follow the shared `devices` table: a registration or removal on one node
//! (or a token a provider refused) is announced on `<prefix>.devices` with the users it
//! touched, and every other node reads those users' devices back from the table. A removed
//! token is thus gone from every cache within a round trip, and the node beside the mail
//! store never pushes to it again.
//!
//! Announcements wait in a set while NATS is away and go out once it is back; a node that was
//! cut off itself reloads its whole cache on reconnection, since it may have missed some.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Link;
use crate::push::DeviceCache;
use crate::store::Store;

/// Users per announcement, so that one stays far below NATS's message size limit.
const USERS_PER_MESSAGE: usize = 500;
/// Users an announcement set holds while NATS is away; past that it says "reload everything".
const MAX_PENDING: usize = 10_000;
/// How often a node whose reload failed (the database was away) tries again.
const RELOAD_RETRY: Duration = Duration::from_secs(5);

/// What goes on the devices subject.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Announcement {
    /// Users whose devices changed.
    #[serde(default)]
    users: Vec<String>,
    /// Too many changed to name: every node reloads its whole cache.
    #[serde(default)]
    all: bool,
}

/// This node's side of the announcements.
pub struct DeviceNews {
    link: Arc<Link>,
    /// Users to announce. A std mutex: set operations only.
    pending: Mutex<Pending>,
    wake: Notify,
}

#[derive(Default)]
struct Pending {
    users: HashSet<String>,
    all: bool,
}

impl DeviceNews {
    /// Announces the changes `cache` makes from now on.
    pub fn new(link: Arc<Link>, cache: &DeviceCache) -> Arc<DeviceNews> {
        let news = Arc::new(DeviceNews {
            link,
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
        });
        let weak = Arc::downgrade(&news);
        cache.on_change(Box::new(move |users| {
            if let Some(news) = weak.upgrade() {
                news.announce(users);
            }
        }));
        news
    }

    /// Queues `users` for the next announcement; never waits.
    pub fn announce(&self, users: &[&str]) {
        {
            let mut pending = self.lock_pending();
            for user in users {
                if pending.users.len() >= MAX_PENDING {
                    pending.all = true;
                    pending.users.clear();
                }
                if !pending.all {
                    pending.users.insert((*user).to_owned());
                }
            }
        }
        self.wake.notify_one();
    }

    /// Publishes what is queued until shutdown; what fails waits for the next connection.
    pub async fn run_publisher(self: Arc<Self>, shutdown: CancellationToken) {
        let mut connects = self.link.connects();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
            }
            let taken = std::mem::take(&mut *self.lock_pending());
            if let Err(err) = self.publish(&taken).await {
                tracing::warn!(error = %err, "cluster: device changes not announced yet; trying again once NATS is back");
                {
                    let mut pending = self.lock_pending();
                    pending.all |= taken.all;
                    pending.users.extend(taken.users);
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = connects.changed() => {}
                    () = tokio::time::sleep(RELOAD_RETRY) => {}
                }
                self.wake.notify_one();
            }
        }
    }

    async fn publish(&self, pending: &Pending) -> Result<(), String> {
        let subject = self.link.names.devices_subject();
        let mut messages = Vec::new();
        if pending.all {
            messages.push(Announcement {
                all: true,
                ..Announcement::default()
            });
        } else {
            let users: Vec<&String> = pending.users.iter().collect();
            for chunk in users.chunks(USERS_PER_MESSAGE) {
                messages.push(Announcement {
                    users: chunk.iter().map(|user| (*user).clone()).collect(),
                    all: false,
                });
            }
        }
        for message in messages {
            // A struct of strings and a bool: serializing cannot fail.
            let payload = Bytes::from(serde_json::to_vec(&message).unwrap_or_default());
            self.link.publish(subject.clone(), payload).await?;
            self.link.metrics.cluster.message_sent("devices");
        }
        Ok(())
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Reads the other nodes' announcements until shutdown and brings `cache` up to date from the
/// table; a read that fails (the database is away) turns into a whole reload, tried again
/// every few seconds until it works.
pub async fn run_listener(
    link: Arc<Link>,
    store: Store,
    cache: Arc<DeviceCache>,
    shutdown: CancellationToken,
) {
    let subject = link.names.devices_subject();
    let Some(mut subscriber) = link.subscribe_until_done(subject, &shutdown).await else {
        return;
    };
    let mut stale = false;
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return,
            message = subscriber.next() => match message {
                Some(message) => message,
                None => return,
            },
            () = tokio::time::sleep(RELOAD_RETRY), if stale => {
                stale = reload_all(&store, &cache).await.is_err();
                continue;
            }
        };
        let Ok(announcement) = serde_json::from_slice::<Announcement>(&message.payload) else {
            link.metrics.cluster.message_received("invalid");
            tracing::warn!("cluster: a device announcement does not read; ignored");
            continue;
        };
        link.metrics.cluster.message_received("devices");
        let refreshed = if announcement.all {
            reload_all(&store, &cache).await
        } else {
            refresh(&store, &cache, &announcement.users).await
        };
        stale |= refreshed.is_err();
    }
}

/// Reads every device into `cache`.
pub async fn reload_all(store: &Store, cache: &DeviceCache) -> Result<(), sqlx::Error> {
    match store.all_devices().await {
        Ok(devices) => {
            let count = devices.len();
            cache.replace_all(devices);
            tracing::info!(devices = count, "cluster: device cache reloaded");
            Ok(())
        }
        Err(err) => {
            tracing::warn!(error = %err, "cluster: cannot reload the device cache; trying again");
            Err(err)
        }
    }
}

async fn refresh(store: &Store, cache: &DeviceCache, users: &[String]) -> Result<(), sqlx::Error> {
    for user in users {
        match store.devices_of(user).await {
            Ok(devices) => cache.replace_user(user, devices),
            Err(err) => {
                tracing::warn!(user = %user, error = %err, "cluster: cannot read the user's devices; reloading all soon");
                return Err(err);
            }
        }
    }
    Ok(())
}
