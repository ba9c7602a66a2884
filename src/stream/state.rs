//! Every user's live channel: the one place live state lives.
//!
//! Web clients need the newest modseqs, not the history, so each user has one
//! latest-value channel ([`super::latest`]) holding a [`Live`], and every EventSource
//! connection of that user waits on it. A slow client just sees a newer value when it catches
//! up: memory is O(users), whatever the event rate. Updates only raise values, so replays and
//! out-of-order datagrams from several Cyrus processes never move a client backwards.
//! Reminders, keepalive beats and shutdown ride in the same channel as [`super::signals`], so
//! a user costs one channel whatever their connections wait for.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use tokio::sync::Notify;

use super::latest;
use super::live::{Live, UserState};
use super::signals::SignalsSeen;
use super::stamp::{SecondStamp, Stamp};
use super::users::{SLICES, Users};
use crate::route::StateChange;

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("too many EventSource connections for this user")]
    UserLimit,
    #[error("too many EventSource connections on this server")]
    ServerLimit,
}

/// Every user's channel, and the connection caps.
pub struct StateHub {
    /// The channels. A std mutex: every critical section is a map lookup with no `.await`.
    users: Mutex<Users>,
    /// Set by [`StateHub::close_streams`]; channels made afterwards start closed.
    closing: AtomicBool,
    /// Open connections, and who hears when one closes.
    slots: Arc<Slots>,
    /// Woken when a user's state becomes unsaved, so the record's writer need not poll.
    dirtied: Notify,
    max_connections: usize,
    max_connections_per_user: usize,
}

/// Told the user's name each time one of their streams closes: the cluster stops listening
/// for a user once their last stream is gone.
pub type StreamClosed = Box<dyn Fn(&str) + Send + Sync>;

/// A live connection's view of its user's channel; dropping it frees the connection's slot.
pub struct Subscription {
    /// The user whose channel this is (the hub's own copy of the name).
    pub user: Arc<str>,
    pub receiver: latest::Receiver<Live>,
    /// How far the connection got through its user's signals.
    pub signals_seen: SignalsSeen,
    slots: Arc<Slots>,
}

/// The connection count, and the hook that hears about closed streams.
#[derive(Default)]
struct Slots {
    open: AtomicUsize,
    closed: OnceLock<StreamClosed>,
}

impl StateHub {
    /// An empty hub with the configured connection caps.
    pub fn new(max_connections: usize, max_connections_per_user: usize) -> StateHub {
        StateHub {
            users: Mutex::new(Users::default()),
            closing: AtomicBool::new(false),
            slots: Arc::new(Slots::default()),
            dirtied: Notify::new(),
            max_connections,
            max_connections_per_user,
        }
    }

    /// Raises a user's state and wakes their connections if it moved; returns whether it did.
    /// Never waits: this runs on the ingest path. A state that moved is marked for the record.
    pub fn apply(&self, user: &str, change: &StateChange) -> bool {
        let mut users = self.cells();
        let now = std::time::Instant::now();
        let mut newly_dirty = false;
        let mut raise = |live: &mut Live| {
            let moved = live.published.raise(change, Stamp::at(now));
            if moved {
                live.marks.touched_at = SecondStamp::at(now);
                newly_dirty = live.marks.mark_dirty();
            }
            moved
        };
        let moved = match users.get(user) {
            Some(sender) => sender.send_if_modified(&mut raise),
            None => {
                let mut cell = self.new_cell();
                let moved = raise(&mut cell);
                if moved {
                    users.insert(user, cell);
                }
                moved
            }
        };
        if newly_dirty {
            users.mark_dirty(user);
            self.dirtied.notify_one();
        }
        moved
    }

    /// Waits until a user's state becomes unsaved (at once if one did since the last wait).
    pub async fn dirtied(&self) {
        self.dirtied.notified().await;
    }

    /// Raises a user's state to one another node published, waking their streams; returns
    /// whether it moved. It is in the record already, so the user does not become unsaved, and
    /// a user this node no longer holds is left alone (their next stream reads the record).
    pub fn merge_remote(&self, user: &str, state: &UserState) -> bool {
        let users = self.cells();
        let Some(cell) = users.get(user) else {
            return false;
        };
        cell.send_if_modified(|live| {
            let moved = live.published.state.raise_to(state);
            if moved {
                live.published.frame = super::legacy::frame(&live.published.state);
                live.published.changed_at = Stamp::now();
            }
            moved
        })
    }

    /// Forgets that the record's state of `user` was read: memory may fall behind the record
    /// from now on (the cluster stopped listening for the user), so their next stream reads
    /// it again.
    pub fn unload(&self, user: &str) {
        let users = self.cells();
        if let Some(cell) = users.get(user) {
            cell.send_if_modified(|live| {
                live.marks.loaded = false;
                false
            });
        }
    }

    /// The streams open now for `user`.
    pub fn streams_of(&self, user: &str) -> usize {
        self.cells()
            .get(user)
            .map_or(0, |cell| cell.receiver_count())
    }

    /// Every user with at least one open stream.
    pub fn users_with_streams(&self) -> Vec<String> {
        let users = self.cells();
        (0..SLICES)
            .flat_map(|slice| users.slice(slice))
            .filter(|(_, cell)| cell.receiver_count() > 0)
            .map(|(name, _)| name.to_string())
            .collect()
    }

    /// Sets who hears each time a stream closes (once, at start-up).
    pub fn on_stream_closed(&self, hook: StreamClosed) {
        if self.slots.closed.set(hook).is_err() {
            tracing::warn!("a stream-closed hook was set twice; keeping the first");
        }
    }

    /// Whether the record's state of `user` is in memory already.
    pub fn is_loaded(&self, user: &str) -> bool {
        let users = self.cells();
        users
            .get(user)
            .is_some_and(|channel| channel.borrow().marks.loaded)
    }

    /// Merges the record's state of `user` (None: it has none) into memory. What is merged is
    /// stored already, so it does not make the user dirty.
    pub fn merge_loaded(&self, user: &str, stored: Option<&UserState>) {
        let mut users = self.cells();
        let cell = users.get_or_insert_with(user, || self.new_cell());
        cell.send_if_modified(|live| {
            live.marks.loaded = true;
            live.marks.touched_at = SecondStamp::now();
            let moved = stored.is_some_and(|stored| live.published.state.raise_to(stored));
            if moved {
                live.published.frame = super::legacy::frame(&live.published.state);
            }
            moved
        });
    }

    /// The states that moved since the last call, for the record; their cells are clean now.
    pub fn take_dirty(&self) -> Vec<(String, UserState)> {
        let mut users = self.cells();
        let names = users.take_dirty();
        let mut dirty = Vec::with_capacity(names.len());
        for name in names {
            let Some(cell) = users.get(&name) else {
                continue;
            };
            // A quiet change: the flag is not news to any stream.
            cell.send_if_modified(|live| {
                live.marks.dirty = false;
                dirty.push((name.to_string(), live.published.state));
                false
            });
        }
        dirty
    }

    /// Marks these users dirty again after the record failed to take them.
    pub fn mark_dirty_again(&self, states: &[(String, UserState)]) {
        let mut users = self.cells();
        for (user, _) in states {
            let Some(cell) = users.get(user) else {
                continue;
            };
            let mut newly_dirty = false;
            cell.send_if_modified(|live| {
                newly_dirty = live.marks.mark_dirty();
                false
            });
            if newly_dirty {
                users.mark_dirty(user);
                self.dirtied.notify_one();
            }
        }
    }

    /// The user's current state (all zero when nothing is known).
    pub fn current(&self, user: &str) -> UserState {
        let users = self.cells();
        users
            .get(user)
            .map(|channel| channel.borrow().published.state)
            .unwrap_or_default()
    }

    /// Opens a connection's view of the user's cell, within the caps.
    pub fn subscribe(&self, user: &str) -> Result<Subscription, SubscribeError> {
        let slot = self.take_slot()?;
        let mut users = self.cells();
        let (name, cell) = users.entry(user, || self.new_cell());
        if cell.receiver_count() >= self.max_connections_per_user {
            return Err(SubscribeError::UserLimit);
        }
        // A quiet change: the stream opening is no news to the others.
        cell.send_if_modified(|live| {
            live.marks.touched_at = SecondStamp::now();
            false
        });
        let receiver = cell.subscribe();
        let signals_seen = receiver.borrow().signals.seen_now();
        // The slot is the subscription's from here on: its drop gives the slot back.
        std::mem::forget(slot);
        Ok(Subscription {
            user: name.clone(),
            receiver,
            signals_seen,
            slots: self.slots.clone(),
        })
    }

    /// Writes a one-off frame to every open stream of `user`; returns how many there were. A
    /// user with no open stream gets nothing: a reminder is now or never.
    pub fn remind(&self, user: &str, frame: Bytes) -> usize {
        let users = self.cells();
        let Some(cell) = users.get(user) else {
            return 0;
        };
        let reached = cell.receiver_count();
        if reached > 0 {
            cell.send_modify(|live| live.signals.remind(frame));
        }
        reached
    }

    /// A keepalive tick for every user with open streams: each stream that wrote nothing since
    /// the last tick writes a comment. Touching the cells that streams wait on anyway means a
    /// stream waits on one thing only.
    pub fn beat(&self) {
        (0..SLICES).for_each(|slice| self.beat_slice(slice));
    }

    /// A keepalive tick for one slice of the users ([`super::users`]): the clock beats one
    /// slice at a time, so a period's comments are spread over the period.
    pub fn beat_slice(&self, slice: usize) {
        for cell in self.cells_with_streams(slice) {
            cell.send_modify(|live| live.signals.beat());
        }
    }

    /// Drops the cells of one slice whose users have no stream, nothing unsaved, and nothing
    /// that touched them since `cutoff`: their state is in the record, and memory holds only
    /// users who are active. Returns how many left.
    pub fn evict_idle(&self, slice: usize, cutoff: std::time::Instant) -> usize {
        let mut users = self.cells();
        users.evict(slice, |sender| {
            if sender.receiver_count() > 0 {
                return false;
            }
            let marks = &sender.borrow().marks;
            !marks.dirty && marks.touched_at.is_before(cutoff)
        })
    }

    /// Users in memory now.
    pub fn users(&self) -> usize {
        self.cells().len()
    }

    /// Ends every stream, now and to come: each writes its goodbye (`retry:`) and closes.
    pub fn close_streams(&self) {
        let users = self.cells();
        self.closing.store(true, Ordering::Release);
        for cell in users.all() {
            cell.send_modify(|live| live.signals.close());
        }
    }

    /// The cells of a slice that someone waits on, taken out of the lock so that waking them
    /// does not hold up `apply`.
    fn cells_with_streams(&self, slice: usize) -> Vec<latest::Sender<Live>> {
        let users = self.cells();
        users
            .slice(slice)
            .filter(|(_, cell)| cell.receiver_count() > 0)
            .map(|(_, cell)| cell.clone())
            .collect()
    }

    /// The cells, locked. A panic elsewhere while holding the lock left them consistent (every
    /// critical section is one map operation), so a poisoned lock is taken as it is.
    fn cells(&self) -> std::sync::MutexGuard<'_, Users> {
        self.users
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn new_cell(&self) -> Live {
        let mut live = Live::default();
        if self.closing.load(Ordering::Acquire) {
            live.signals.close();
        }
        live
    }

    /// EventSource connections open now.
    pub fn connections(&self) -> usize {
        self.slots.open.load(Ordering::Relaxed)
    }

    fn take_slot(&self) -> Result<SlotTaken<'_>, SubscribeError> {
        let taken = self
            .slots
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max_connections).then_some(open + 1)
            });
        match taken {
            Ok(_) => Ok(SlotTaken(&self.slots)),
            Err(_) => Err(SubscribeError::ServerLimit),
        }
    }
}

/// A slot taken for a subscription still being made: given back if the making fails.
struct SlotTaken<'a>(&'a Slots);

impl Drop for SlotTaken<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.slots.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(closed) = self.slots.closed.get() {
            closed(&self.user);
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
