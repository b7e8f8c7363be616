//! Gathering a batch handler's messages into batches (`[bindings.batch]`).
//!
//! The first message to arrive opens a batch and starts its task: the task waits up to
//! `max_wait` (less if the batch fills), takes the batch and runs it; every message, the first
//! included, waits for its own answer. A full batch closes at once; the next message opens a
//! new one. The batch runs in a task of its own, so no message's task — cancelled, or held up
//! by another binding's call — can strand the others. Batches share nothing, so several can run
//! at once (a binding's `max_concurrency` still bounds its messages in handlers).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::policy::BatchConfig;

/// The batch being gathered for one binding.
pub struct Gatherer<T> {
    max_size: usize,
    max_wait: Duration,
    /// The batch open for joining; a batch leaves here the moment it is full (or its task
    /// takes it), so nothing joins a batch past its size.
    open: Arc<Mutex<Option<Arc<Pending<T>>>>>,
}

struct Pending<T> {
    items: Mutex<Vec<T>>,
    /// Told when the batch is full, so its task takes it without waiting longer.
    full: Notify,
}

impl<T: Send + 'static> Gatherer<T> {
    /// A gatherer with `settings` (validated by the config check: a size of 0 counts as 1).
    pub fn new(settings: &BatchConfig) -> Gatherer<T> {
        Gatherer {
            max_size: usize::try_from(settings.max_size)
                .unwrap_or(usize::MAX)
                .max(1),
            max_wait: Duration::from_millis(settings.max_wait_ms),
            open: Arc::new(Mutex::new(None)),
        }
    }

    /// Add `item` to the open batch; or open one, with a task that gathers it and then hands
    /// it to `run` (items in the order they joined). Call from within a tokio runtime.
    pub fn join<R, F>(&self, item: T, run: R)
    where
        R: FnOnce(Vec<T>) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let pending = {
            let mut open = crate::mutex::lock(&self.open);
            if let Some(pending) = open.as_ref() {
                let mut items = crate::mutex::lock(&pending.items);
                items.push(item);
                if items.len() >= self.max_size {
                    // `notify_one` keeps a permit: a task not yet waiting sees it at once.
                    pending.full.notify_one();
                    drop(items);
                    *open = None;
                }
                return;
            }
            let pending = Arc::new(Pending {
                items: Mutex::new(vec![item]),
                full: Notify::new(),
            });
            if self.max_size > 1 {
                *open = Some(pending.clone());
            }
            pending
        };
        let (open, max_wait, alone) = (self.open.clone(), self.max_wait, self.max_size == 1);
        tokio::spawn(async move {
            if !alone {
                let _ = tokio::time::timeout(max_wait, pending.full.notified()).await;
                let mut open = crate::mutex::lock(&open);
                if open.as_ref().is_some_and(|o| Arc::ptr_eq(o, &pending)) {
                    *open = None;
                }
            }
            let items = std::mem::take(&mut *crate::mutex::lock(&pending.items));
            run(items).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn gatherer(max_size: u32, max_wait_ms: u64) -> Gatherer<u32> {
        Gatherer::new(&BatchConfig {
            max_size,
            max_wait_ms,
        })
    }

    /// Join `item`, its batch (when it opens one) sent to `batches` with the time it ran.
    fn join(g: &Gatherer<u32>, item: u32, batches: &mpsc::UnboundedSender<(Vec<u32>, Duration)>) {
        let (batches, started) = (batches.clone(), tokio::time::Instant::now());
        g.join(item, move |batch| async move {
            let _ = batches.send((batch, started.elapsed()));
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_closes_when_full_and_the_next_item_opens_another() {
        let g = gatherer(3, 1_000);
        let (tx, mut rx) = mpsc::unbounded_channel();
        for item in 1..=4 {
            join(&g, item, &tx);
        }
        let (first, waited) = rx.recv().await.expect("a batch");
        assert_eq!(first, vec![1, 2, 3]);
        assert_eq!(waited, Duration::ZERO, "a full batch does not wait");
        let (second, waited) = rx.recv().await.expect("a batch");
        assert_eq!(second, vec![4]);
        assert_eq!(waited, Duration::from_secs(1), "alone, it waited max_wait");
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_of_one_never_waits() {
        let g = gatherer(1, 1_000);
        let (tx, mut rx) = mpsc::unbounded_channel();
        join(&g, 7, &tx);
        join(&g, 8, &tx);
        assert_eq!(rx.recv().await.expect("a batch"), (vec![7], Duration::ZERO));
        assert_eq!(rx.recv().await.expect("a batch"), (vec![8], Duration::ZERO));
    }
}
