//! A bounded queue that never blocks its producer: when full, a push drops the oldest
//! item and counts it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// Many producers (the evaluator), one consumer (a receiver's task).
#[derive(Debug)]
pub(crate) struct Queue<T> {
    items: Mutex<VecDeque<T>>,
    capacity: usize,
    /// Pushes so far, so that a waiter can tell whether anything came since it looked.
    pushes: AtomicU64,
    dropped: AtomicU64,
    wake: Notify,
}

impl<T> Queue<T> {
    /// A queue of at most `capacity` (at least 1) items.
    pub(crate) fn new(capacity: usize) -> Queue<T> {
        Queue {
            items: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            pushes: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            wake: Notify::new(),
        }
    }

    fn items(&self) -> MutexGuard<'_, VecDeque<T>> {
        // Every update under the lock is one push or pop: a panic cannot leave it torn.
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `item`; when full, drops the oldest first. Returns whether one was dropped.
    pub(crate) fn push(&self, item: T) -> bool {
        let dropped = {
            let mut items = self.items();
            let dropped = if items.len() >= self.capacity {
                items.pop_front();
                true
            } else {
                false
            };
            items.push_back(item);
            dropped
        };
        if dropped {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.pushes.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_waiters();
        dropped
    }

    /// The oldest item, if any.
    pub(crate) fn pop(&self) -> Option<T> {
        self.items().pop_front()
    }

    /// The oldest item, waiting for one.
    pub(crate) async fn next(&self) -> T {
        loop {
            let notified = self.wake.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before looking, so a push between the look and the wait wakes us.
            notified.as_mut().enable();
            if let Some(item) = self.pop() {
                return item;
            }
            notified.await;
        }
    }

    /// How many pushes so far.
    pub(crate) fn pushes(&self) -> u64 {
        self.pushes.load(Ordering::Acquire)
    }

    /// Returns once there were more than `seen` pushes.
    pub(crate) async fn pushed_since(&self, seen: u64) {
        loop {
            let notified = self.wake.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.pushes() != seen {
                return;
            }
            notified.await;
        }
    }

    /// Items waiting.
    pub(crate) fn len(&self) -> usize {
        self.items().len()
    }

    /// Items dropped so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts() {
        let q = Queue::new(2);
        assert!(!q.push(1));
        assert!(!q.push(2));
        assert!(q.push(3));
        assert!(q.push(4));
        assert_eq!((q.dropped(), q.len(), q.pushes()), (2, 2, 4));
        assert_eq!((q.pop(), q.pop(), q.pop()), (Some(3), Some(4), None));
    }

    #[tokio::test]
    async fn next_waits_for_a_push() -> Result<(), tokio::time::error::Elapsed> {
        let q = Arc::new(Queue::new(4));
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        tokio::task::yield_now().await;
        q.push("x");
        let got = tokio::time::timeout(Duration::from_secs(5), waiting).await?;
        assert_eq!(got.ok(), Some("x"));
        let seen = q.pushes();
        let since = tokio::spawn({
            let q = q.clone();
            async move { q.pushed_since(seen).await }
        });
        q.push("y");
        tokio::time::timeout(Duration::from_secs(5), since)
            .await?
            .ok();
        Ok(())
    }
}
