//! Gathering a batch handler's messages into batches (`[bindings.batch]`).
//!
//! No task of its own: the first message to arrive opens a batch and leads it — it waits up
//! to `max_wait` (less if the batch fills), then takes the batch and runs it; the messages
//! that joined meanwhile follow, each waiting for its own answer. A full batch closes at
//! once; the next message opens a new one. Nothing is shared between batches, so several can
//! run at once (a binding's `max_concurrency` still bounds its messages in handlers).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::policy::BatchConfig;

/// The batch being gathered for one binding.
pub struct Gatherer<T> {
    max_size: usize,
    max_wait: Duration,
    /// The batch open for joining; a batch leaves here the moment it is full (or its leader
    /// takes it), so nothing joins a batch past its size.
    open: Mutex<Option<Arc<Pending<T>>>>,
}

struct Pending<T> {
    items: Mutex<Vec<T>>,
    /// Told when the batch is full, so its leader takes it without waiting longer.
    full: Notify,
}

/// What joining a batch came to.
pub enum Joined<T> {
    /// This item opened the batch and waited for it: here it is, this item first, in the
    /// order the items joined. The caller runs it and answers every item.
    Lead(Vec<T>),
    /// The item joined a batch another item leads; the leader answers it.
    Follow,
}

impl<T> Gatherer<T> {
    /// A gatherer with `settings` (validated by the config check: a size of 0 counts as 1).
    pub fn new(settings: &BatchConfig) -> Gatherer<T> {
        Gatherer {
            max_size: usize::try_from(settings.max_size)
                .unwrap_or(usize::MAX)
                .max(1),
            max_wait: Duration::from_millis(settings.max_wait_ms),
            open: Mutex::new(None),
        }
    }

    /// Add `item` to the open batch, or open one and lead it.
    pub async fn join(&self, item: T) -> Joined<T> {
        let pending = {
            let mut open = crate::mutex::lock(&self.open);
            if let Some(pending) = open.as_ref() {
                let mut items = crate::mutex::lock(&pending.items);
                items.push(item);
                if items.len() >= self.max_size {
                    // `notify_one` keeps a permit: a leader not yet waiting sees it at once.
                    pending.full.notify_one();
                    drop(items);
                    *open = None;
                }
                return Joined::Follow;
            }
            if self.max_size == 1 {
                return Joined::Lead(vec![item]);
            }
            let pending = Arc::new(Pending {
                items: Mutex::new(vec![item]),
                full: Notify::new(),
            });
            *open = Some(pending.clone());
            pending
        };
        let _ = tokio::time::timeout(self.max_wait, pending.full.notified()).await;
        {
            let mut open = crate::mutex::lock(&self.open);
            if open.as_ref().is_some_and(|o| Arc::ptr_eq(o, &pending)) {
                *open = None;
            }
        }
        let items = std::mem::take(&mut *crate::mutex::lock(&pending.items));
        Joined::Lead(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gatherer(max_size: u32, max_wait_ms: u64) -> Arc<Gatherer<u32>> {
        Arc::new(Gatherer::new(&BatchConfig {
            max_size,
            max_wait_ms,
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_closes_when_full_and_the_next_item_opens_another() {
        let g = gatherer(3, 1_000);
        let started = tokio::time::Instant::now();
        let leader = tokio::spawn({
            let g = g.clone();
            async move { g.join(1).await }
        });
        tokio::task::yield_now().await;
        assert!(matches!(g.join(2).await, Joined::Follow));
        assert!(matches!(g.join(3).await, Joined::Follow));
        let next = tokio::spawn({
            let g = g.clone();
            async move { g.join(4).await }
        });
        match leader.await.expect("leader") {
            Joined::Lead(items) => assert_eq!(items, vec![1, 2, 3]),
            Joined::Follow => panic!("the first item leads"),
        }
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "a full batch does not wait"
        );
        match next.await.expect("next") {
            Joined::Lead(items) => assert_eq!(items, vec![4]),
            Joined::Follow => panic!("4 opens a new batch"),
        }
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(1),
            "alone, it waited max_wait"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_of_one_never_waits() {
        let g = gatherer(1, 1_000);
        let started = tokio::time::Instant::now();
        assert!(matches!(g.join(7).await, Joined::Lead(items) if items == vec![7]));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
