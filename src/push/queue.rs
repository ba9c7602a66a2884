//! The bounded queue between `route` and the provider senders.
//!
//! Ingest pushes without waiting; senders pop. When the queue is full, a badge-only update is
//! the first thing to go: a new one is dropped, and a new alert evicts the oldest queued badge
//! update (a later badge will carry the right count anyway). Only when the queue holds nothing
//! but alerts is a new alert dropped. Every drop is reported to the caller, who counts it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// Anything the queue can hold; it only needs to tell alerts from badge-only updates.
pub trait Droppable {
    /// Whether losing this would lose something the user reads (an alert), not just a count.
    fn is_alert(&self) -> bool;
}

/// What `push` had to give up to stay within capacity.
#[derive(Debug, PartialEq, Eq)]
pub enum Overflow<T> {
    /// Everything fit.
    None,
    /// This item (the new one, or an evicted older badge update) was dropped.
    Dropped(T),
}

/// A bounded FIFO with the drop policy above.
pub struct PushQueue<T> {
    /// A std mutex: pushes and pops are O(1) except an eviction scan, never across `.await`.
    items: Mutex<VecDeque<T>>,
    capacity: usize,
    ready: Notify,
    closed: AtomicBool,
}

impl<T: Droppable> PushQueue<T> {
    /// An empty queue holding at most `capacity` items.
    pub fn new(capacity: usize) -> PushQueue<T> {
        PushQueue {
            items: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity: capacity.max(1),
            ready: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Adds an item, never waiting; says what was dropped if the queue was full.
    pub fn push(&self, item: T) -> Overflow<T> {
        let overflow = {
            let mut items = self
                .items
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if items.len() < self.capacity {
                items.push_back(item);
                Overflow::None
            } else if !item.is_alert() {
                Overflow::Dropped(item)
            } else if let Some(at) = items.iter().position(|queued| !queued.is_alert()) {
                let evicted = items.remove(at);
                items.push_back(item);
                evicted.map_or(Overflow::None, Overflow::Dropped)
            } else {
                Overflow::Dropped(item)
            }
        };
        self.ready.notify_one();
        overflow
    }

    /// Takes the oldest item, waiting for one; None once closed and drained.
    pub async fn pop(&self) -> Option<T> {
        loop {
            let notified = self.ready.notified();
            if let Some(item) = self.try_pop() {
                return Some(item);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            notified.await;
        }
    }

    /// Takes the oldest item if there is one.
    pub fn try_pop(&self) -> Option<T> {
        self.items
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop_front()
    }

    /// Items waiting now.
    pub fn len(&self) -> usize {
        self.items
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wakes the consumer for the last time: `pop` returns None once the queue is empty.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_waiters();
        self.ready.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Item {
        Alert(u32),
        Badge(u32),
    }

    impl Droppable for Item {
        fn is_alert(&self) -> bool {
            matches!(self, Item::Alert(_))
        }
    }

    #[test]
    fn badges_go_first_when_full() {
        let queue = PushQueue::new(3);
        assert_eq!(queue.push(Item::Badge(1)), Overflow::None);
        assert_eq!(queue.push(Item::Alert(2)), Overflow::None);
        assert_eq!(queue.push(Item::Badge(3)), Overflow::None);
        // Full: a new badge is dropped, a new alert evicts the oldest badge.
        assert_eq!(
            queue.push(Item::Badge(4)),
            Overflow::Dropped(Item::Badge(4))
        );
        assert_eq!(
            queue.push(Item::Alert(5)),
            Overflow::Dropped(Item::Badge(1))
        );
        assert_eq!(
            queue.push(Item::Alert(6)),
            Overflow::Dropped(Item::Badge(3))
        );
        // Only alerts left: a new alert is dropped.
        assert_eq!(
            queue.push(Item::Alert(7)),
            Overflow::Dropped(Item::Alert(7))
        );
        assert_eq!(queue.len(), 3);
        let order: Vec<Item> = std::iter::from_fn(|| queue.try_pop()).collect();
        assert_eq!(order, [Item::Alert(2), Item::Alert(5), Item::Alert(6)]);
    }

    #[tokio::test]
    async fn pop_waits_and_close_ends() {
        let queue = std::sync::Arc::new(PushQueue::new(10));
        let consumer = {
            let queue = queue.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while let Some(item) = queue.pop().await {
                    seen.push(item);
                }
                seen
            })
        };
        tokio::task::yield_now().await;
        queue.push(Item::Alert(1));
        queue.push(Item::Badge(2));
        queue.close();
        assert_eq!(consumer.await.unwrap(), [Item::Alert(1), Item::Badge(2)]);
    }
}
