//! Readiness and liveness: whether this host is consuming (`/health`, `/readyz`) and whether
//! its process and core loops are alive (`/livez`).
//!
//! Alive means every core loop the pipeline started (each receive loop, the deleter, the
//! heartbeat batcher) is still running, or the host is shutting down (loops end on purpose
//! then; `/livez` stays 200 through the drain): a loop that returned or panicked before the
//! stop signal makes `/livez` fail,
//! so an orchestrator restarts a host that can no longer consume. A wedged runtime answers
//! `/livez` not at all, which probes count as a failure too.
//!
//! Ready means all of: the pollers are running and not draining, the broker answers (the
//! start-up resource check passed, or a receive succeeded since; a failed receive makes the
//! host not ready until the next one succeeds), the lock service can decide, and at least one
//! binding is served by a loaded plugin.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::route::Routes;

/// Shared readiness flags.
#[derive(Default)]
pub struct Health {
    polling: AtomicBool,
    draining: AtomicBool,
    broker_ok: AtomicBool,
    lock_outage: AtomicBool,
    routes: OnceLock<Arc<ArcSwap<Routes>>>,
    /// Core loops that ended while the host was not draining.
    ended: Mutex<Vec<String>>,
}

/// Held by a running core loop (see [`Health::alive_while`]); dropped before the host's stop
/// signal fired, it records the loop as ended.
struct LoopGuard {
    health: Arc<Health>,
    name: String,
    stop: CancellationToken,
}

impl Drop for LoopGuard {
    fn drop(&mut self) {
        if !self.stop.is_cancelled() {
            let panicked = std::thread::panicking();
            tracing::error!(
                target: "iniesta::health",
                core_loop = %self.name,
                panicked,
                "a core loop ended while the host was running: /livez fails from now on"
            );
            self.health
                .ended
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(self.name.clone());
        }
    }
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&match self.status() {
            Ok(()) => "ready".to_string(),
            Err(reason) => format!("not ready: {reason}"),
        })
    }
}

impl Health {
    /// Nothing ready yet.
    pub fn new() -> Arc<Health> {
        Arc::new(Health::default())
    }

    /// The routing table whose bindings count as "plugins loaded" (it may be swapped by hot
    /// reload; an empty one is not ready).
    pub fn watch_routes(&self, routes: Arc<ArcSwap<Routes>>) {
        let _ = self.routes.set(routes);
    }

    /// The broker's resources were verified (start-up check) or a receive succeeded.
    pub fn broker_answered(&self) {
        self.broker_ok.store(true, Ordering::Release);
    }

    /// A receive failed.
    pub fn broker_failed(&self) {
        self.broker_ok.store(false, Ordering::Release);
    }

    /// The pollers started.
    pub fn polling_started(&self) {
        self.polling.store(true, Ordering::Release);
    }

    /// Shutdown began: no longer receiving.
    pub fn draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// The lock service cannot decide (`true`) or answers again (`false`).
    pub fn lock_outage(&self, down: bool) {
        self.lock_outage.store(down, Ordering::Release);
    }

    /// `task`, with `/livez` failing if it ends (returns or panics) before `stop` fires (the
    /// signal that ends it on purpose).
    pub fn alive_while<F: Future>(
        self: &Arc<Self>,
        name: impl Into<String>,
        stop: &CancellationToken,
        task: F,
    ) -> impl Future<Output = F::Output> {
        let guard = LoopGuard {
            health: self.clone(),
            name: name.into(),
            stop: stop.clone(),
        };
        async move {
            let _guard = guard;
            task.await
        }
    }

    /// `Ok` while the core loops run (or the host drains), else which loops ended.
    pub fn liveness(&self) -> Result<(), String> {
        let ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        if ended.is_empty() {
            Ok(())
        } else {
            Err(format!("core loops ended: {}", ended.join(", ")))
        }
    }

    /// `Ok` when ready, else why not.
    pub fn status(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Acquire) {
            return Err("draining: shutting down, not receiving".into());
        }
        let bindings = self
            .routes
            .get()
            .map(|r| r.load().bindings().len())
            .unwrap_or(0);
        if bindings == 0 {
            return Err("no plugins loaded: no binding is served".into());
        }
        if !self.polling.load(Ordering::Acquire) {
            return Err("starting: not polling yet".into());
        }
        if !self.broker_ok.load(Ordering::Acquire) {
            return Err("the broker has not answered a receive yet, or the last one failed".into());
        }
        if self.lock_outage.load(Ordering::Acquire) {
            return Err("the lock service is unavailable: receiving is paused".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_without_bindings_or_before_polling() {
        let health = Health::new();
        assert!(health.status().is_err());
        health.polling_started();
        health.broker_answered();
        // No routing table: no plugin is loaded.
        assert!(health.status().unwrap_err().contains("no plugins"));
        health.draining();
        assert!(health.status().unwrap_err().contains("draining"));
    }

    #[tokio::test]
    async fn a_core_loop_that_ends_before_the_drain_fails_liveness() {
        let health = Health::new();
        let stop = CancellationToken::new();
        health.alive_while("receive loop 0", &stop, async {}).await;
        assert_eq!(
            health.liveness(),
            Err("core loops ended: receive loop 0".to_string())
        );
        let panicked = tokio::spawn(health.alive_while("deleter", &stop, async { panic!("boom") }));
        assert!(panicked.await.is_err());
        assert_eq!(
            health.liveness(),
            Err("core loops ended: receive loop 0, deleter".to_string())
        );
    }

    #[tokio::test]
    async fn loops_ending_after_the_stop_signal_keep_the_host_alive() {
        let health = Health::new();
        let stop = CancellationToken::new();
        let running = health.alive_while("receive loop 0", &stop, std::future::pending::<()>());
        assert_eq!(health.liveness(), Ok(()));
        stop.cancel();
        drop(running);
        health.alive_while("deleter", &stop, async {}).await;
        assert_eq!(health.liveness(), Ok(()));
    }
}
