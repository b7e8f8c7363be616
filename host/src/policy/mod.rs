//! A binding's delivery policies at run time: its limits ([`limit`]), its circuit breaker
//! ([`breaker`]) and, for a batch handler, how its batches are gathered ([`batch`]). Each binding's [`Guard`] is kept by name in [`Guards`], so a hot reload
//! that leaves a binding's policy as it was keeps its state (the calls in flight, the tokens,
//! an open circuit); a changed policy starts afresh. Retry policies need no state: the
//! pipeline's settlement applies them (`pipeline::settle`).
//!
//! Open and half-open circuits are written to `circuits-PID.json` in the state directory for
//! `iniesta plugins`, and removed when the host stops.

pub mod batch;
pub mod breaker;
pub mod limit;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use crate::config::policy::BreakerConfig;
use crate::config::BindingConfig;

pub use breaker::{Admission, Breaker, CircuitState, Health};
pub use limit::{Limits, Permit};

/// The settings a guard is made from: equal settings keep the guard across a reload.
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    max_concurrency: Option<u32>,
    max_per_second: Option<f64>,
    breaker: Option<BreakerConfig>,
}

impl Settings {
    fn of(binding: &BindingConfig) -> Settings {
        Settings {
            max_concurrency: binding.max_concurrency,
            max_per_second: binding.max_per_second,
            breaker: binding.circuit_breaker.clone(),
        }
    }
}

/// One binding's limits and circuit breaker.
#[derive(Debug)]
pub struct Guard {
    name: String,
    settings: Settings,
    /// At most so many calls at once, so many per second.
    pub limits: Limits,
    /// The circuit breaker, when configured.
    pub breaker: Option<Breaker>,
    registry: Weak<Guards>,
}

impl Guard {
    /// Whether a call may start now (see [`Breaker::admit`]); a circuit turning half-open is
    /// written to the status file.
    pub fn admit(&self) -> Admission {
        let Some(breaker) = &self.breaker else {
            return Admission::Go { probe: false };
        };
        let admission = breaker.admit();
        if admission == (Admission::Go { probe: true }) {
            self.changed();
        }
        admission
    }

    /// Count a call's result; a change of the circuit is written to the status file.
    pub fn record(&self, health: Health, probe: bool) {
        let Some(breaker) = &self.breaker else {
            return;
        };
        if breaker.record(health, probe).is_some() {
            self.changed();
        }
    }

    fn changed(&self) {
        if let Some(registry) = self.registry.upgrade() {
            registry.write_status();
        }
    }
}

/// A binding's circuit as `iniesta plugins` and the console show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CircuitView {
    /// The binding's name.
    pub binding: String,
    /// Its state.
    pub state: CircuitState,
    /// Until when an open circuit stays open (ms since the Unix epoch).
    #[serde(default)]
    pub open_until_ms: Option<u64>,
}

impl CircuitView {
    /// Seconds an open circuit still stays open, now.
    pub fn open_for_secs(&self) -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.open_until_ms
            .map(|until| until.saturating_sub(now).div_ceil(1000))
    }
}

/// Every binding's guard, by name.
#[derive(Debug, Default)]
pub struct Guards {
    guards: Mutex<HashMap<String, Arc<Guard>>>,
    /// Where open circuits are written (`circuits-PID.json`), if anywhere.
    status: Option<PathBuf>,
    /// Held while the status file is written (one writer at a time); `true` once the host
    /// stopped (nothing is written after its removal).
    writing: Mutex<bool>,
}

impl Guards {
    /// Guards that write open circuits to `circuits-PID.json` in `state_dir` (none: nowhere);
    /// a file an earlier process of this PID left is removed.
    pub fn new(state_dir: Option<PathBuf>) -> Arc<Guards> {
        let status = state_dir.map(|dir| status_path(&dir, std::process::id()));
        if let Some(path) = &status {
            let _ = std::fs::remove_file(path);
        }
        Arc::new(Guards {
            guards: Mutex::new(HashMap::new()),
            status,
            writing: Mutex::new(false),
        })
    }

    /// The guard for the binding named `name` configured as `binding`: the one it has when
    /// its policy is unchanged, else a new one. Nothing changes until [`Guards::install`]
    /// (a bind that fails leaves the running guards as they are).
    pub fn guard(self: &Arc<Self>, name: &str, binding: &BindingConfig) -> Arc<Guard> {
        let settings = Settings::of(binding);
        let guards = crate::mutex::lock(&self.guards);
        if let Some(guard) = guards.get(name).filter(|g| g.settings == settings) {
            return guard.clone();
        }
        Arc::new(Guard {
            name: name.to_string(),
            limits: Limits::new(settings.max_concurrency, settings.max_per_second),
            breaker: settings
                .breaker
                .clone()
                .map(|config| Breaker::new(name, config)),
            settings,
            registry: Arc::downgrade(self),
        })
    }

    /// Make `guards` (a successful bind's, by binding name) the running ones: a replaced or
    /// removed circuit breaker is retired (its state no longer shown), a new one shown closed.
    pub fn install(&self, guards: Vec<(String, Arc<Guard>)>) {
        {
            let mut running = crate::mutex::lock(&self.guards);
            let new: HashMap<String, Arc<Guard>> = guards.into_iter().collect();
            for (name, old) in running.iter() {
                let kept = new.get(name).is_some_and(|g| Arc::ptr_eq(g, old));
                if let (false, Some(breaker)) = (kept, &old.breaker) {
                    breaker.retire();
                }
            }
            for (name, guard) in &new {
                let fresh = running.get(name).is_none_or(|old| !Arc::ptr_eq(old, guard));
                if let (true, Some(breaker)) = (fresh, &guard.breaker) {
                    breaker.show();
                }
            }
            *running = new;
        }
        self.write_status();
    }

    /// Every circuit that is not closed.
    pub fn circuits(&self) -> Vec<CircuitView> {
        let guards = crate::mutex::lock(&self.guards);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut views: Vec<CircuitView> = guards
            .values()
            .filter_map(|g| {
                let (state, open_for) = g.breaker.as_ref()?.state();
                (state != CircuitState::Closed).then(|| CircuitView {
                    binding: g.name.clone(),
                    state,
                    open_until_ms: open_for.map(|d| now_ms + d.as_millis() as u64),
                })
            })
            .collect();
        views.sort_by(|a, b| a.binding.cmp(&b.binding));
        views
    }

    /// Write the open circuits to the status file (removed when none is open), one writer at
    /// a time; failures are only logged. Nothing is written once the host stopped.
    pub fn write_status(&self) {
        let Some(path) = &self.status else {
            return;
        };
        let stopped = crate::mutex::lock(&self.writing);
        if *stopped {
            return;
        }
        let circuits = self.circuits();
        let result = if circuits.is_empty() {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        } else {
            crate::state_file::write(path, &circuits)
        };
        drop(stopped);
        if let Err(e) = result {
            tracing::debug!(path = %path.display(), error = %e, "cannot write the circuit status file");
        }
    }

    /// Remove the status file for good (the host stops: a circuit changing during the drain
    /// writes nothing).
    pub fn remove_status(&self) {
        let mut stopped = crate::mutex::lock(&self.writing);
        *stopped = true;
        if let Some(path) = &self.status {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The circuit status file of host `pid` in `state_dir`.
pub fn status_path(state_dir: &std::path::Path, pid: u32) -> PathBuf {
    state_dir.join(format!("circuits-{pid}.json"))
}

/// The open circuits host `pid` wrote (none when it wrote nothing or the file is unreadable).
pub fn read_status(state_dir: &std::path::Path, pid: u32) -> Vec<CircuitView> {
    crate::state_file::read(&status_path(state_dir, pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(cooldown: u32) -> BindingConfig {
        toml::from_str(&format!(
            "plugin = \"p\"\nevents = [\"E\"]\nmax_concurrency = 2\n[circuit_breaker]\ncooldown_secs = {cooldown}\n"
        ))
        .expect("a binding")
    }

    #[test]
    fn a_bind_that_fails_leaves_the_running_guards_and_a_success_swaps_them() {
        let guards = Guards::new(None);
        let running = guards.guard("a", &binding(30));
        guards.install(vec![("a".into(), running.clone())]);
        assert!(
            Arc::ptr_eq(&guards.guard("a", &binding(30)), &running),
            "same policy, same guard"
        );
        // A bind with a changed policy that then fails: nothing installed, nothing changed.
        let staged = guards.guard("a", &binding(60));
        assert!(!Arc::ptr_eq(&staged, &running));
        assert!(Arc::ptr_eq(&guards.guard("a", &binding(30)), &running));
        // It succeeds: the new guard runs, the old one is retired.
        guards.install(vec![("a".into(), staged.clone())]);
        assert!(Arc::ptr_eq(&guards.guard("a", &binding(60)), &staged));
        assert!(!Arc::ptr_eq(&guards.guard("a", &binding(30)), &running));
        guards.install(Vec::new());
        assert!(guards.circuits().is_empty());
    }
}
