//! Live state beyond the process: each user's state is written behind the hub to a
//! [`StateRecord`] (the database now; a shared key-value store when several nodes serve the
//! same users), and read back before a stream opens for a user the hub has not loaded.
//!
//! Why: the state is what a reconnecting client's `Last-Event-ID` is compared with. Held only
//! in memory, a restart started every user at zero, so the next change came with calendar and
//! contacts modseqs of 0 and clients resynced for nothing. Now ids and modseqs never go back
//! across a clean restart (the last changes are written at shutdown), and across a crash only
//! the changes of the last flush period (`storage.state_flush_ms`, 1 s) can be missing from the
//! record until the next event carries them again.
//!
//! Nothing here is on the ingest path: `apply` marks a user dirty under the lock it already
//! holds, and the writer task takes the dirty users once a period and saves them in one batch.
//! A record that is away keeps them dirty until it is back.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::live::UserState;
use super::state::StateHub;
use crate::metrics::Metrics;

/// What a [`StateRecord`] call returns.
pub type RecordFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, RecordError>> + Send + 'a>>;

/// A record that could not be read or written (the database is away, say).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RecordError(pub String);

/// Where users' states are kept beyond the process. Saving only ever raises a stored value,
/// whatever the order of writers.
pub trait StateRecord: Send + Sync {
    /// The stored state of `user`, if any.
    fn load<'a>(&'a self, user: &'a str) -> RecordFuture<'a, Option<UserState>>;
    /// Raises the stored states of these users to these values.
    fn save<'a>(&'a self, states: &'a [(String, UserState)]) -> RecordFuture<'a, ()>;
}

/// Where a node learns which users it serves. In a cluster, other nodes change the states of
/// this node's users: the node listens for those changes while a user has a stream here.
pub trait Interest: Send + Sync {
    /// Makes sure this node hears of `user`'s changes made elsewhere; true when it has just
    /// started to, so memory may be behind the record and the record must be read again.
    fn watch<'a>(&'a self, user: &'a str) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>>;
}

/// The hub and its record, for the handlers that open streams and the writer task.
pub struct Persistence {
    hub: Arc<StateHub>,
    record: Arc<dyn StateRecord>,
    interest: Option<Arc<dyn Interest>>,
    /// How long a stream's opening waits for the record before it goes on with what is in
    /// memory.
    load_timeout: Duration,
    /// Wakes the writer from its pause after a failure (the record is back).
    retry: Notify,
    metrics: Arc<Metrics>,
}

/// The writer's pause after a failed write, at least.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

impl Persistence {
    /// Connects the hub to its record.
    pub fn new(
        hub: Arc<StateHub>,
        record: Arc<dyn StateRecord>,
        metrics: Arc<Metrics>,
    ) -> Persistence {
        Persistence {
            hub,
            record,
            interest: None,
            load_timeout: Duration::from_secs(2),
            retry: Notify::new(),
            metrics,
        }
    }

    /// Reads through `interest` which users other nodes may change, and waits `load_timeout`
    /// at most for the record (the cluster's request timeout).
    pub fn with_interest(
        mut self,
        interest: Arc<dyn Interest>,
        load_timeout: Duration,
    ) -> Persistence {
        self.interest = Some(interest);
        self.load_timeout = load_timeout;
        self
    }

    /// Gets `user`'s state ready for a stream that has just subscribed: listens for changes
    /// made elsewhere (in a cluster), then merges the record's state if memory may be behind
    /// it. Subscribing first and reading second means no change falls between the two. A
    /// record that does not answer is logged and skipped: the stream opens on what memory
    /// knows, and the next opening tries again.
    pub async fn prepare(&self, user: &str) {
        let fresh = match &self.interest {
            Some(interest) => interest.watch(user).await,
            None => false,
        };
        if fresh || !self.hub.is_loaded(user) {
            self.load(user).await;
        }
    }

    /// Reads `user`'s state from the record and merges it into memory, whatever memory holds.
    pub async fn load(&self, user: &str) {
        match tokio::time::timeout(self.load_timeout, self.record.load(user)).await {
            Ok(Ok(stored)) => self.hub.merge_loaded(user, stored.as_ref()),
            Ok(Err(err)) => {
                self.metrics.state_record_failed("load");
                tracing::warn!(user = %user, error = %err, "cannot read the user's stored state");
            }
            Err(_) => {
                self.metrics.state_record_failed("load");
                tracing::warn!(user = %user, timeout = ?self.load_timeout, "the state record did not answer");
            }
        }
    }

    /// Writes every dirty user's state; true when there was nothing to write or it was written.
    pub async fn flush(&self) -> bool {
        let dirty = self.hub.take_dirty();
        if dirty.is_empty() {
            return true;
        }
        match self.record.save(&dirty).await {
            Ok(()) => {
                self.metrics.states_saved(dirty.len());
                true
            }
            Err(err) => {
                self.metrics.state_record_failed("save");
                tracing::error!(users = dirty.len(), error = %err, "cannot save users' states; keeping them for the next try");
                self.hub.mark_dirty_again(&dirty);
                false
            }
        }
    }

    /// Cuts short the pause after a failed write: the record is back.
    pub fn retry_now(&self) {
        self.retry.notify_one();
    }

    /// Writes states as they become unsaved, at most once every `spacing` (the database takes
    /// a second's changes in one batch; a cluster's record writes at once, since its writes
    /// are what other nodes hear), and after a failure waits a second or a [`retry_now`]
    /// before trying again. The last flush is the caller's, once nothing can change a state.
    ///
    /// [`retry_now`]: Persistence::retry_now
    pub async fn run(self: Arc<Self>, spacing: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.hub.dirtied() => {}
            }
            let pause = if self.flush().await {
                spacing
            } else {
                spacing.max(RETRY_PAUSE)
            };
            if pause.is_zero() {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
                () = self.retry.notified() => {}
            }
        }
    }
}

/// Lets idle users leave memory until shutdown: one keepalive-sized slice of the users at a
/// time, so a whole pass takes `idle` and no pass holds the hub's lock for long. A user with
/// no stream, nothing unsaved and nothing new for `idle` is dropped; their state stays in the
/// record, and is read back before their next stream opens.
pub async fn run_evictor(
    hub: Arc<StateHub>,
    idle: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let step = (idle / super::users::SLICES as u32).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(step);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut slice = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(cutoff) = std::time::Instant::now().checked_sub(idle) {
            let evicted = hub.evict_idle(slice, cutoff);
            metrics.users_evicted(evicted);
        }
        slice = (slice + 1) % super::users::SLICES;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::StateChange;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// A record in memory, that can be told to fail.
    #[derive(Default)]
    struct Memory {
        states: Mutex<HashMap<String, UserState>>,
        failing: std::sync::atomic::AtomicBool,
    }

    impl StateRecord for Memory {
        fn load<'a>(&'a self, user: &'a str) -> RecordFuture<'a, Option<UserState>> {
            Box::pin(async move { Ok(self.states.lock().unwrap().get(user).copied()) })
        }

        fn save<'a>(&'a self, states: &'a [(String, UserState)]) -> RecordFuture<'a, ()> {
            Box::pin(async move {
                if self.failing.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err(RecordError("away".into()));
                }
                let mut stored = self.states.lock().unwrap();
                for (user, state) in states {
                    stored.entry(user.clone()).or_default().raise_to(state);
                }
                Ok(())
            })
        }
    }

    fn change(mail: u64, calendar: u64) -> StateChange {
        StateChange {
            mail: Some(mail),
            calendar: Some(calendar),
            ..StateChange::default()
        }
    }

    #[tokio::test]
    async fn states_are_written_behind_and_read_back_after_a_restart() {
        let record = Arc::new(Memory::default());
        let hub = Arc::new(StateHub::new(10, 10));
        let persistence = Persistence::new(hub.clone(), record.clone(), Default::default());
        hub.apply("alice", &change(6, 71));
        hub.apply("alice", &change(7, 71));
        hub.apply("bob", &change(1, 0));
        assert!(persistence.flush().await);
        assert_eq!(record.states.lock().unwrap()["alice"].mail, 7, "coalesced");
        assert_eq!(record.states.lock().unwrap().len(), 2);
        assert!(hub.take_dirty().is_empty(), "nothing dirty after a flush");

        // A new process: an event for alice's mail alone must not put calendar back to 0 once
        // a stream opens.
        let hub = Arc::new(StateHub::new(10, 10));
        let persistence = Persistence::new(hub.clone(), record.clone(), Default::default());
        hub.apply("alice", &change(8, 0));
        assert!(!hub.is_loaded("alice"));
        persistence.prepare("alice").await;
        let state = hub.current("alice");
        assert_eq!((state.mail, state.calendar), (8, 71));
        assert!(hub.is_loaded("alice"));
        persistence.prepare("carol").await;
        assert_eq!(hub.current("carol"), UserState::default());
    }

    #[tokio::test]
    async fn idle_users_leave_memory_and_come_back_from_the_record() {
        let record = Arc::new(Memory::default());
        let hub = Arc::new(StateHub::new(10, 10));
        let persistence = Persistence::new(hub.clone(), record.clone(), Default::default());
        hub.apply("alice", &change(6, 71));
        hub.apply("bob", &change(2, 0));
        let streaming = hub.subscribe("bob").unwrap();
        let later = std::time::Instant::now() + Duration::from_secs(3600);
        let evict_all = |hub: &StateHub| -> usize {
            (0..crate::stream::users::SLICES)
                .map(|slice| hub.evict_idle(slice, later))
                .sum()
        };
        assert_eq!(evict_all(&hub), 0, "unsaved states stay");
        assert!(persistence.flush().await);
        assert_eq!(evict_all(&hub), 1, "alice leaves; bob has a stream");
        assert_eq!(hub.users(), 1);
        drop(streaming);
        assert_eq!(evict_all(&hub), 1);
        assert_eq!(hub.users(), 0);
        // Alice's next change comes with her mail modseq only; her stream still sees 71.
        hub.apply("alice", &change(7, 0));
        persistence.prepare("alice").await;
        assert_eq!(hub.current("alice").calendar, 71);
    }

    #[tokio::test]
    async fn a_record_that_is_away_keeps_the_states_dirty() {
        let record = Arc::new(Memory::default());
        record
            .failing
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let hub = Arc::new(StateHub::new(10, 10));
        let persistence = Persistence::new(hub.clone(), record.clone(), Default::default());
        hub.apply("alice", &change(3, 0));
        assert!(!persistence.flush().await);
        hub.apply("alice", &change(4, 0));
        record
            .failing
            .store(false, std::sync::atomic::Ordering::Relaxed);
        assert!(persistence.flush().await);
        assert_eq!(record.states.lock().unwrap()["alice"].mail, 4);
    }
}
