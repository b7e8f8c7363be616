//! The background tasks of a running host, under one [`TaskTracker`] and one stop signal.
//!
//! Every task a host starts outside the pipeline and ingress (the ops servers, the console's
//! sampler, the error webhook's sender, the lock writes' flusher, the outbox drainer, the
//! reloader, the signal watcher) is spawned through a [`Tasks`], so shutdown can wait for all
//! of them: [`Tasks::stop`] fires the signal and closes the tracker, then waits (bounded) until
//! every task has ended. This module imports nothing from the crate.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A tracker for background tasks and the signal that tells them to end.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Tasks {
    /// An empty set of tasks, not stopping.
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// Spawn `task` on the current runtime, tracked: [`Tasks::stop`] waits for it.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// The signal that tells the tasks to end (cancelled by [`Tasks::stop`]); a task selects
    /// on `cancelled()` next to its work.
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Tasks still running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Whether no task is running.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Tell every task to end, and wait up to `limit` for them; `true` when all ended.
    pub async fn stop(&self, limit: Duration) -> bool {
        self.stop.cancel();
        self.tracker.close();
        tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_waits_for_tasks_that_watch_the_signal() {
        let tasks = Tasks::new();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let stopping = tasks.stopping();
        tasks.spawn(async move {
            stopping.cancelled().await;
            let _ = done_tx.send(());
        });
        assert_eq!(tasks.len(), 1);
        assert!(tasks.stop(Duration::from_secs(30)).await);
        assert!(tasks.is_empty());
        assert!(done_rx.await.is_ok(), "the task ran to its end");
    }

    #[tokio::test]
    async fn stop_gives_up_on_a_task_that_ignores_the_signal() {
        let tasks = Tasks::new();
        tasks.spawn(std::future::pending::<()>());
        // The task never ends, so the bound is reached whatever its length.
        assert!(!tasks.stop(Duration::from_millis(10)).await);
        assert_eq!(tasks.len(), 1);
    }
}
