//! Readiness: whether this host is consuming, as `/health` reports it.
//!
//! Ready means all of: the pollers are running and not draining, the broker answers (the
//! start-up resource check passed, or a receive succeeded since; a failed receive makes the
//! host not ready until the next one succeeds), the lock service can decide, and at least one
//! binding is served by a loaded plugin.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;

use crate::route::Routes;

/// Shared readiness flags.
#[derive(Default)]
pub struct Health {
    polling: AtomicBool,
    draining: AtomicBool,
    broker_ok: AtomicBool,
    lock_outage: AtomicBool,
    routes: OnceLock<Arc<ArcSwap<Routes>>>,
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
}
