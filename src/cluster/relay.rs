//! Live fan-out by interest: a node listens to a user's subject (`<prefix>.u.<user>.*`, core
//! NATS) while it holds at least one stream of theirs, and stops when the last one closes.
//! It never hears of users it does not serve.
//!
//! A stream's opening subscribes first (its SUB written to the socket) and reads the record
//! second ([`crate::stream::persist::Persistence::prepare`]), on the same connection: the
//! server handles a connection's messages in order, so it has the subscription before it
//! handles the read, and any state stored after the read is republished to a subscription
//! that already exists; nothing falls in between. The client's flush writes the socket and
//! waits for no answer: with the server frozen, the subscription is written, the read times
//! out, and the stream opens on what the node knows until the next state arrives.
//!
//! What the node hears is merged into its hub, which only ever raises a state, so a value
//! heard twice or late changes nothing; a reminder is written to the user's streams.
//!
//! Each listening user has one subscription and one small task that reads it. When a stream
//! closes, the hub tells the relay the user's name; the sweeper then unsubscribes every such
//! user that has no stream left, and marks their state as one memory may fall behind, so the
//! next stream reads the record again.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use async_nats::Subscriber;
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use super::Link;
use super::names::UserSubject;
use super::record::decode;
use crate::stream::StateHub;
use crate::stream::persist::{Interest, Persistence};

/// The users this node listens for.
pub struct Relay {
    link: Arc<Link>,
    hub: Arc<StateHub>,
    /// Each listened-for user's subscription, or the fact that one is being made. A std
    /// mutex: map operations only, and the hub's lock may be taken inside it, never the
    /// other way round.
    watched: Mutex<HashMap<String, Watch>>,
    /// Users who lost a stream since the sweeper last looked.
    released: Mutex<HashSet<String>>,
    release: Notify,
}

enum Watch {
    Subscribing,
    Listening(AbortHandle),
}

/// How many users a resync reads at once after a reconnection.
const RESYNC_IN_FLIGHT: usize = 64;

impl Relay {
    /// A relay for `hub`'s users; the hub tells it when a stream closes.
    pub fn new(link: Arc<Link>, hub: Arc<StateHub>) -> Arc<Relay> {
        let relay = Arc::new(Relay {
            link,
            hub: hub.clone(),
            watched: Mutex::new(HashMap::new()),
            released: Mutex::new(HashSet::new()),
            release: Notify::new(),
        });
        let weak = Arc::downgrade(&relay);
        hub.on_stream_closed(Box::new(move |user| {
            if let Some(relay) = weak.upgrade() {
                relay.stream_closed(user);
            }
        }));
        relay
    }

    /// Users listened for now.
    pub fn watched(&self) -> usize {
        self.lock_watched().len()
    }

    /// Unsubscribes users whose last stream closed, until shutdown.
    pub async fn run_sweeper(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.release.notified() => {}
            }
            let released = std::mem::take(&mut *self.lock_released());
            for user in released {
                self.release_if_unused(&user);
            }
        }
    }

    /// After a reconnection: listens for every user with a stream here (subscriptions made
    /// while NATS was away failed) and reads each one's state again, since what was stored
    /// meanwhile was published to nobody here.
    pub async fn resync(&self, persistence: &Persistence) -> usize {
        let users = self.hub.users_with_streams();
        let count = users.len();
        futures_util::stream::iter(users)
            .for_each_concurrent(RESYNC_IN_FLIGHT, |user| async move {
                self.watch_user(&user).await;
                persistence.load(&user).await;
            })
            .await;
        count
    }

    fn stream_closed(&self, user: &str) {
        let mut released = self.lock_released();
        if !released.contains(user) {
            released.insert(user.to_owned());
        }
        drop(released);
        self.release.notify_one();
    }

    /// Stops listening for `user` if no stream of theirs is open.
    fn release_if_unused(&self, user: &str) {
        let mut watched = self.lock_watched();
        if self.hub.streams_of(user) > 0 {
            return;
        }
        match watched.get(user) {
            Some(Watch::Listening(task)) => {
                task.abort();
                watched.remove(user);
                self.hub.unload(user);
                self.link
                    .metrics
                    .cluster
                    .users_watched(watched.len() as i64);
            }
            // The subscriber looks again once it is done.
            Some(Watch::Subscribing) | None => {}
        }
    }

    /// Subscribes to `user`'s subject unless this node already does; true when it has just
    /// done so.
    async fn watch_user(&self, user: &str) -> bool {
        if !self.link.is_connected() {
            // Cut off: the resync after reconnecting subscribes for every user with a stream.
            return false;
        }
        {
            let mut watched = self.lock_watched();
            if watched.contains_key(user) {
                return false;
            }
            watched.insert(user.to_owned(), Watch::Subscribing);
        }
        let subject = self.link.names.user_subjects(user);
        let subscribed = tokio::time::timeout(self.link.timeout, async {
            let subscriber = self.link.client.subscribe(subject).await?;
            // Written to the socket before the record's read: the server, which takes a
            // connection's messages in order, has the subscription when it reads.
            self.link.client.flush().await?;
            Ok::<_, async_nats::Error>(subscriber)
        })
        .await;
        let mut watched = self.lock_watched();
        let subscriber = match subscribed {
            Ok(Ok(subscriber)) => subscriber,
            failed => {
                watched.remove(user);
                let reason = match failed {
                    Ok(Err(err)) => err.to_string(),
                    _ => format!("no answer from NATS within {:?}", self.link.timeout),
                };
                tracing::warn!(user = %user, error = %reason, "cluster: cannot listen for the user's changes; serving what this node knows");
                return false;
            }
        };
        let task = tokio::spawn(listen(
            self.hub.clone(),
            self.link.clone(),
            user.to_owned(),
            subscriber,
        ));
        watched.insert(user.to_owned(), Watch::Listening(task.abort_handle()));
        self.link
            .metrics
            .cluster
            .users_watched(watched.len() as i64);
        drop(watched);
        // The stream may have closed while the subscription was being made.
        self.release_if_unused(user);
        true
    }

    fn lock_watched(&self) -> std::sync::MutexGuard<'_, HashMap<String, Watch>> {
        self.watched
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_released(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.released
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Interest for Relay {
    fn watch<'a>(&'a self, user: &'a str) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(self.watch_user(user))
    }
}

/// Reads one user's subscription until it is dropped (the relay aborts this task) and merges
/// what it hears into the hub.
async fn listen(hub: Arc<StateHub>, link: Arc<Link>, user: String, mut subscriber: Subscriber) {
    let metrics = &link.metrics.cluster;
    while let Some(message) = subscriber.next().await {
        match UserSubject::of(message.subject.as_str()) {
            UserSubject::State => {
                // A deleted or purged key (an operator's doing) carries no state.
                let operation = message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get("KV-Operation"));
                if operation.is_some() {
                    continue;
                }
                match decode(&message.payload) {
                    Some(state) => {
                        metrics.message_received("state");
                        hub.merge_remote(&user, &state);
                    }
                    None => {
                        metrics.message_received("invalid");
                        tracing::warn!(user = %user, "cluster: a published state does not read; ignored");
                    }
                }
            }
            UserSubject::Reminder => {
                metrics.message_received("reminder");
                hub.remind(&user, message.payload);
            }
            UserSubject::Other => metrics.message_received("invalid"),
        }
    }
}
