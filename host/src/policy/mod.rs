//! A binding's delivery policies at run time: its limits ([`limit`]) and its circuit breaker
//! ([`breaker`]). Each binding's [`Guard`] is kept by name in [`Guards`], so a hot reload
//! that leaves a binding's policy as it was keeps its state (the calls in flight, the tokens,
//! an open circuit); a changed policy starts afresh. Retry policies need no state: the
//! pipeline's settlement applies them (`pipeline::settle`).
//!
//! Open and half-open circuits are written to `circuits-PID.json` in the state directory for
//! `iniesta plugins`, and removed when the host stops.

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
    /// A guard with no policy (for bindings built outside a host, e.g. `config show`).
    pub fn none(name: &str) -> Arc<Guard> {
        Arc::new(Guard {
            name: name.to_string(),
            settings: Settings {
                max_concurrency: None,
                max_per_second: None,
                breaker: None,
            },
            limits: Limits::new(None, None),
            breaker: None,
            registry: Weak::new(),
        })
    }

    /// Count a call's result; a change of the circuit is written to the status file.
    pub fn record(&self, health: Health, probe: bool) {
        let Some(breaker) = &self.breaker else {
            return;
        };
        if breaker.record(health, probe).is_some() {
            if let Some(registry) = self.registry.upgrade() {
                registry.write_status();
            }
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
    /// Seconds an open circuit stays open.
    #[serde(default)]
    pub open_for_secs: Option<u64>,
}

/// Every binding's guard, by name.
#[derive(Debug, Default)]
pub struct Guards {
    guards: Mutex<HashMap<String, Arc<Guard>>>,
    /// Where open circuits are written (`circuits-PID.json`), if anywhere.
    status: Option<PathBuf>,
}

impl Guards {
    /// Guards that write open circuits to `circuits-PID.json` in `state_dir` (none: nowhere).
    pub fn new(state_dir: Option<PathBuf>) -> Arc<Guards> {
        Arc::new(Guards {
            guards: Mutex::new(HashMap::new()),
            status: state_dir.map(|dir| status_path(&dir, std::process::id())),
        })
    }

    /// The guard of the binding named `name` configured as `binding`: the one it had when its
    /// policy is unchanged, else a new one.
    pub fn guard(self: &Arc<Self>, name: &str, binding: &BindingConfig) -> Arc<Guard> {
        let settings = Settings::of(binding);
        let mut guards = crate::mutex::lock(&self.guards);
        if let Some(guard) = guards.get(name).filter(|g| g.settings == settings) {
            return guard.clone();
        }
        let guard = Arc::new(Guard {
            name: name.to_string(),
            limits: Limits::new(settings.max_concurrency, settings.max_per_second),
            breaker: settings
                .breaker
                .clone()
                .map(|config| Breaker::new(name, config)),
            settings,
            registry: Arc::downgrade(self),
        });
        guards.insert(name.to_string(), guard.clone());
        guard
    }

    /// Forget the guards of bindings no longer configured.
    pub fn retain(&self, names: &[String]) {
        crate::mutex::lock(&self.guards).retain(|name, _| names.contains(name));
        self.write_status();
    }

    /// Every circuit that is not closed.
    pub fn circuits(&self) -> Vec<CircuitView> {
        let guards = crate::mutex::lock(&self.guards);
        let mut views: Vec<CircuitView> = guards
            .values()
            .filter_map(|g| {
                let (state, open_for) = g.breaker.as_ref()?.state();
                (state != CircuitState::Closed).then(|| CircuitView {
                    binding: g.name.clone(),
                    state,
                    open_for_secs: open_for.map(|d| d.as_secs()),
                })
            })
            .collect();
        views.sort_by(|a, b| a.binding.cmp(&b.binding));
        views
    }

    /// Write the open circuits to the status file (removed when none is open); failures are
    /// only logged.
    pub fn write_status(&self) {
        let Some(path) = &self.status else {
            return;
        };
        let circuits = self.circuits();
        let result = if circuits.is_empty() {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        } else {
            let tmp = path.with_extension("json.tmp");
            path.parent()
                .map(std::fs::create_dir_all)
                .unwrap_or(Ok(()))
                .and_then(|()| {
                    std::fs::write(
                        &tmp,
                        serde_json::to_vec_pretty(&circuits).unwrap_or_default(),
                    )
                })
                .and_then(|()| std::fs::rename(&tmp, path))
        };
        if let Err(e) = result {
            tracing::debug!(path = %path.display(), error = %e, "cannot write the circuit status file");
        }
    }

    /// Remove the status file (on shutdown).
    pub fn remove_status(&self) {
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
    std::fs::read_to_string(status_path(state_dir, pid))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}
