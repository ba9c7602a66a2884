//! A latest-value channel, one per user: the value, a version, and the wakers of the streams
//! waiting on it.
//!
//! tokio's `watch` has the same contract, but it carries eight notifiers per channel (to spread
//! contention among many receivers), about 500 bytes a user, and its `changed()` future holds a
//! waiter of its own (about 100 bytes), which an idle stream keeps for its whole life. Here the
//! cell keeps one waker per waiting receiver in a short list, under the value's own lock, so
//! the waiting future is a reference and the cell fits mimalloc's 192-byte class (a unit test
//! holds it there). A receiver that falls behind sees only the newest value.

use std::future::Future;
use std::ops::Deref;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::{Context, Poll, Waker};

use smallvec::SmallVec;

/// The writing side, kept by the hub.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// A stream's side: the value, and whether it moved since this receiver last looked.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// The version this receiver last read.
    seen: u64,
    /// This receiver's name in the cell's list of waiting wakers.
    id: u32,
}

/// A read of the value; changes wait until it is dropped.
pub struct Ref<'a, T>(RwLockReadGuard<'a, Inner<T>>);

struct Shared<T> {
    inner: RwLock<Inner<T>>,
    /// Raised under the write lock on every change, and read without it.
    version: AtomicU64,
    receivers: AtomicU32,
    next_id: AtomicU32,
}

/// What the lock guards: the value, and the receivers waiting for its next change, each with
/// the waker of its latest wait. A change wakes and empties the list. One lock for both: a
/// change and a wait never race (the version moves under the lock a wait registers under),
/// and the cell carries one lock's room, not two. Room for one waker in place: most users
/// have one stream.
struct Inner<T> {
    value: T,
    waiting: SmallVec<[(u32, Waker); 1]>,
}

impl<T> Sender<T> {
    /// A cell holding `value`, with no receivers.
    pub fn new(value: T) -> Sender<T> {
        Sender {
            shared: Arc::new(Shared {
                inner: RwLock::new(Inner {
                    value,
                    waiting: SmallVec::new(),
                }),
                version: AtomicU64::new(0),
                receivers: AtomicU32::new(0),
                next_id: AtomicU32::new(0),
            }),
        }
    }

    /// Lets `modify` change the value; when it returns true, every receiver is woken.
    pub fn send_if_modified(&self, modify: impl FnOnce(&mut T) -> bool) -> bool {
        let mut inner = write(&self.shared.inner);
        if !modify(&mut inner.value) {
            return false;
        }
        self.shared.version.fetch_add(1, Ordering::Release);
        // Woken outside the lock, so a woken stream on another thread does not wait on it;
        // taking a list of one (the usual user) moves it out of its place and allocates
        // nothing.
        let waiting = std::mem::take(&mut inner.waiting);
        drop(inner);
        for (_, waker) in waiting {
            waker.wake();
        }
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
            id: self.shared.next_id.fetch_add(1, Ordering::Relaxed),
            shared: self.shared.clone(),
        }
    }

    /// Receivers alive now.
    pub fn receiver_count(&self) -> usize {
        self.shared.receivers.load(Ordering::Acquire) as usize
    }

    /// The current value.
    pub fn borrow(&self) -> Ref<'_, T> {
        Ref(read(&self.shared.inner))
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
    pub fn borrow(&self) -> Ref<'_, T> {
        Ref(read(&self.shared.inner))
    }

    /// The current value, marked seen.
    pub fn borrow_and_update(&mut self) -> Ref<'_, T> {
        let inner = read(&self.shared.inner);
        // Read under the lock that every change holds while it raises the version.
        self.seen = self.shared.version.load(Ordering::Acquire);
        Ref(inner)
    }

    /// Whether the value changed since this receiver last read it.
    pub fn has_changed(&self) -> bool {
        self.shared.version.load(Ordering::Acquire) != self.seen
    }

    /// Ready once the value changed since this receiver last read it; else the task is woken
    /// at the next change. A wait given up leaves its waker listed until then: the task is
    /// woken for nothing once, which costs less than a waiter in every waiting future. Not to
    /// be called while this thread holds a [`Ref`] of the same cell.
    pub fn poll_changed(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.has_changed() {
            return Poll::Ready(());
        }
        let mut inner = write(&self.shared.inner);
        // Again under the lock: a change before it took the list this waker would have joined.
        if self.has_changed() {
            return Poll::Ready(());
        }
        match inner.waiting.iter_mut().find(|(id, _)| *id == self.id) {
            Some((_, waker)) if waker.will_wake(cx.waker()) => {}
            Some((_, waker)) => *waker = cx.waker().clone(),
            None => inner.waiting.push((self.id, cx.waker().clone())),
        }
        Poll::Pending
    }

    /// Waits until the value changes (returns at once if it already has). Cancel-safe.
    pub fn changed(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.poll_changed(cx))
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        write(&self.shared.inner)
            .waiting
            .retain(|(id, _)| *id != self.id);
        self.shared.receivers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<T> Deref for Ref<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0.value
    }
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
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

    /// Every user in memory has a cell: keep a user's (its `Arc` counts included) in
    /// mimalloc's 192-byte size class, where it was 256 (a field of 8 more bytes in `Live`, a
    /// second lock, a `u64` count or a spilled `SmallVec` layout would put it back).
    #[test]
    fn a_users_cell_fits_192_bytes() {
        let cell = size_of::<Shared<crate::stream::Live>>() + 2 * size_of::<usize>();
        assert!(cell <= 192, "a user's cell grew to {cell} bytes");
    }

    /// A waker that counts its wakes.
    struct Wakes(AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_waiting_receiver_is_listed_once_and_unlisted_when_dropped() {
        let sender = Sender::new(0u64);
        let mut receiver = sender.subscribe();
        let other = sender.subscribe();
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        for _ in 0..3 {
            assert!(receiver.poll_changed(&mut cx).is_pending());
        }
        assert!(other.poll_changed(&mut cx).is_pending());
        assert_eq!(
            read(&sender.shared.inner).waiting.len(),
            2,
            "one entry a receiver"
        );

        sender.send_modify(|value| *value = 1);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2, "each waiter woken once");
        assert!(read(&sender.shared.inner).waiting.is_empty());
        assert!(receiver.poll_changed(&mut cx).is_ready());
        assert_eq!(*receiver.borrow_and_update(), 1);

        assert!(receiver.poll_changed(&mut cx).is_pending());
        drop(receiver);
        assert!(
            read(&sender.shared.inner).waiting.is_empty(),
            "a dropped receiver's waker does not stay behind"
        );
        sender.send_modify(|value| *value = 2);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2, "nobody left to wake");
        drop(other);
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
