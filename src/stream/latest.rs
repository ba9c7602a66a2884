//! A latest-value channel, one per user: the value, a version, and one `Notify` for every
//! stream waiting on it.
//!
//! tokio's `watch` has the same contract, but it carries eight notifiers per channel (to spread
//! contention among many receivers), about 500 bytes a user. A user has a handful of streams at
//! most, so one notifier does, and the cell costs about 200 bytes. A receiver that falls behind
//! sees only the newest value, and waking never allocates.

use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use tokio::sync::Notify;

/// The writing side, kept by the hub.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// A stream's side: the value, and whether it moved since this receiver last looked.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// The version this receiver last read.
    seen: u64,
}

struct Shared<T> {
    value: RwLock<T>,
    /// Raised under the write lock on every change.
    version: AtomicU64,
    changed: Notify,
    receivers: AtomicUsize,
}

impl<T> Sender<T> {
    /// A cell holding `value`, with no receivers.
    pub fn new(value: T) -> Sender<T> {
        Sender {
            shared: Arc::new(Shared {
                value: RwLock::new(value),
                version: AtomicU64::new(0),
                changed: Notify::new(),
                receivers: AtomicUsize::new(0),
            }),
        }
    }

    /// Lets `modify` change the value; when it returns true, every receiver is woken.
    pub fn send_if_modified(&self, modify: impl FnOnce(&mut T) -> bool) -> bool {
        let mut value = self
            .shared
            .value
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !modify(&mut value) {
            return false;
        }
        self.shared.version.fetch_add(1, Ordering::Release);
        drop(value);
        self.shared.changed.notify_waiters();
        true
    }

    /// Changes the value and wakes every receiver.
    pub fn send_modify(&self, modify: impl FnOnce(&mut T)) {
        self.send_if_modified(|value| {
            modify(value);
            true
        });
    }

    /// A receiver that has seen the current value.
    pub fn subscribe(&self) -> Receiver<T> {
        self.shared.receivers.fetch_add(1, Ordering::AcqRel);
        Receiver {
            seen: self.shared.version.load(Ordering::Acquire),
            shared: self.shared.clone(),
        }
    }

    /// Receivers alive now.
    pub fn receiver_count(&self) -> usize {
        self.shared.receivers.load(Ordering::Acquire)
    }

    /// The current value.
    pub fn borrow(&self) -> RwLockReadGuard<'_, T> {
        read(&self.shared.value)
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Receiver<T> {
    /// The current value, without marking it seen.
    pub fn borrow(&self) -> RwLockReadGuard<'_, T> {
        read(&self.shared.value)
    }

    /// The current value, marked seen.
    pub fn borrow_and_update(&mut self) -> RwLockReadGuard<'_, T> {
        let value = read(&self.shared.value);
        // Read under the lock that every change holds while it raises the version.
        self.seen = self.shared.version.load(Ordering::Acquire);
        value
    }

    /// Whether the value changed since this receiver last read it.
    pub fn has_changed(&self) -> bool {
        self.shared.version.load(Ordering::Acquire) != self.seen
    }

    /// Waits until the value changes (returns at once if it already has). Cancel-safe.
    pub async fn changed(&self) {
        loop {
            // Registered before the version is checked, so a change in between still wakes it.
            let mut notified = pin!(self.shared.changed.notified());
            notified.as_mut().enable();
            if self.has_changed() {
                return;
            }
            notified.await;
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.receivers.fetch_sub(1, Ordering::AcqRel);
    }
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn receivers_see_changes_once_and_only_the_newest() {
        let sender = Sender::new(0u64);
        let mut receiver = sender.subscribe();
        assert!(!receiver.has_changed());
        assert!(!sender.send_if_modified(|_| false), "no change, no wake");
        assert!(!receiver.has_changed());
        sender.send_modify(|value| *value = 1);
        sender.send_modify(|value| *value = 2);
        assert!(receiver.has_changed());
        assert_eq!(*receiver.borrow_and_update(), 2);
        assert!(!receiver.has_changed());
        assert_eq!(sender.receiver_count(), 1);
        let late = sender.subscribe();
        assert!(
            !late.has_changed(),
            "a new receiver has seen the current value"
        );
        drop((receiver, late));
        assert_eq!(sender.receiver_count(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_receiver_is_woken_from_another_thread() {
        let sender = Sender::new(0u64);
        let mut receiver = sender.subscribe();
        let waiter = tokio::spawn(async move {
            // Reads, then waits only when the value is not there yet: a change between the
            // two must still end the wait.
            while *receiver.borrow_and_update() < 100 {
                receiver.changed().await;
            }
        });
        for value in 1..=100u64 {
            sender.send_modify(|current| *current = value);
            tokio::task::yield_now().await;
        }
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("every change reached the waiter")
            .unwrap();
    }
}
