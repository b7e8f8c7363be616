//! Crash isolation: run a plugin that can't be trusted in a worker process of its own.
//!
//! `[plugins.isolate] names = ["risky"]` makes every binding of `risky` call a proxy
//! ([`supervisor::IsolatedHandler`]) instead of the cdylib in the host. The proxy talks to a
//! child process — this same binary's hidden `plugin-worker` subcommand ([`worker`]) — that
//! loads the plugin file and runs its handlers. Calls, outcomes, log lines and publishes cross
//! the worker's stdin/stdout as length-delimited `postcard` frames ([`protocol`]). A pool of up
//! to `workers` processes per plugin generation serves every binding of it, one call per
//! process at a time, so a crash fails only the call that caused it (the protocol carries
//! request ids and the worker runs calls on a thread pool, so one process could serve many
//! calls; the pool does not use that, on purpose).
//!
//! A worker that dies (segfault, abort, exit, OOM) or hangs past a binding's timeout fails
//! the call in flight on it (the messages are redelivered, their receive count grows, the
//! DLQ takes a true poison message) and is restarted with backoff; nothing else in the host
//! notices. Workers start with a cleared environment and optional resource limits
//! ([`sandbox`]); their stderr goes to the host's log with the plugin's name. A new generation
//! of the plugin (hot reload) gets a new worker; the old one finishes its calls and exits.

pub mod protocol;
pub mod sandbox;
pub mod supervisor;
pub mod worker;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use abi_stable::sabi_trait::TD_Opaque;
use iniesta_plugin_api::ffi::{HandlerBox, HandlerFfi_TO};
use serde::{Deserialize, Serialize};

pub use crate::config::isolate::{IsolateConfig, MIN_MEMORY_LIMIT_MB};
use crate::config::{BindingConfig, Config};
use crate::plugins::{ConstructError, LoadedPlugin};

/// What a worker is started with; workers with equal settings for the same plugin
/// generation are shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The binary with the `plugin-worker` subcommand (this one).
    pub binary: PathBuf,
    /// `plugins.isolate.workers`.
    pub max_workers: usize,
    /// `plugins.isolate.env`.
    pub env: Vec<String>,
    /// `plugins.isolate.plugin_env`.
    pub plugin_env: BTreeMap<String, Vec<String>>,
    /// `plugins.isolate.memory_limit_mb`.
    pub memory_limit_mb: Option<u64>,
    /// `plugins.isolate.open_files`.
    pub open_files: Option<u64>,
    /// `plugins.isolate.max_backoff_secs`.
    pub max_backoff: Duration,
    /// Where to write worker states for `iniesta plugins` (a running host only).
    pub state_dir: Option<PathBuf>,
}

impl Settings {
    /// Settings from the config; `binary` runs the workers.
    pub fn new(isolate: &IsolateConfig, binary: PathBuf, state_dir: Option<PathBuf>) -> Self {
        Settings {
            binary,
            max_workers: isolate.workers.max(1),
            env: isolate.env.clone(),
            plugin_env: isolate.plugin_env.clone(),
            memory_limit_mb: isolate.memory_limit_mb,
            open_files: isolate.open_files,
            max_backoff: Duration::from_secs(isolate.max_backoff_secs),
            state_dir,
        }
    }

    #[cfg(test)]
    fn for_tests() -> Self {
        Settings::new(&IsolateConfig::default(), PathBuf::from("iniesta"), None)
    }
}

/// Construct the handler for a binding: in the host, or — for an isolated plugin — in its
/// worker, returning a proxy. `running` says whether this is a running host (worker states
/// are then published for `iniesta plugins`).
pub fn new_handler(
    config: &Config,
    binding: &BindingConfig,
    plugin: &Arc<LoadedPlugin>,
    handler: &str,
    running: bool,
) -> Result<HandlerBox, ConstructError> {
    if !config.plugins.isolate.isolates(&plugin.name) {
        return plugin.new_handler(handler, &binding.config_json());
    }
    let binary = worker_binary().map_err(ConstructError::Worker)?;
    let state_dir = running.then(|| crate::plugins::watch::state_dir(config));
    let settings = Arc::new(Settings::new(&config.plugins.isolate, binary, state_dir));
    let timeout = Duration::from_secs(
        binding
            .timeout_secs
            .unwrap_or(config.sqs.handler_timeout_secs),
    );
    isolated_handler(plugin, &settings, handler, &binding.config_json(), timeout)
}

/// The binary that runs plugin workers: this very one. On Linux that is `/proc/self/exe`, which
/// stays this process's executable even when the file on disk is upgraded or deleted while the
/// host runs (a worker from a different build would speak a different protocol).
fn worker_binary() -> Result<PathBuf, String> {
    let this = std::path::Path::new("/proc/self/exe");
    if this.exists() {
        return Ok(this.to_path_buf());
    }
    std::env::current_exe()
        .map_err(|e| format!("cannot find this binary to start a plugin worker: {e}"))
}

/// A proxy handler for `handler` of `plugin` running in a worker started with `settings`.
pub fn isolated_handler(
    plugin: &LoadedPlugin,
    settings: &Arc<Settings>,
    handler: &str,
    config_json: &str,
    timeout: Duration,
) -> Result<HandlerBox, ConstructError> {
    let worker = supervisor::worker_for(plugin, settings).map_err(ConstructError::Worker)?;
    let id = worker
        .construct(handler, config_json)
        .map_err(|e| ConstructError::Refused(format!("(in its isolated worker) {e}")))?;
    Ok(HandlerFfi_TO::from_value(
        supervisor::IsolatedHandler::new(worker, id, timeout),
        TD_Opaque,
    ))
}

/// One worker in `iniesta plugins` output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// The plugin.
    pub plugin: String,
    /// The plugin generation it serves.
    pub generation: u64,
    /// Its processes' ids.
    pub pids: Vec<u32>,
    /// The most processes it runs at once (`plugins.isolate.workers`).
    pub max_workers: u64,
    /// `running`, `restarting` (waiting out the backoff) or `stopped` (no process now).
    pub state: String,
    /// Restarts after a death.
    pub restarts: u64,
    /// Deaths (crash, abort, exit, OOM, killed after a hang, failed start).
    pub crashes: u64,
    /// Deaths since the last call that returned; 3 or more is a crash loop.
    pub crashes_in_a_row: u32,
    /// What the last death was.
    pub last_crash: Option<String>,
    /// When (s since the Unix epoch).
    pub last_crash_at: Option<u64>,
    /// Calls running in it now.
    pub in_flight: u64,
}

fn unix_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The worker state file of host `pid` in `dir`.
pub fn status_path(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("workers-{pid}.json"))
}

/// Write this host's worker states (failures are only logged).
pub fn write_status(dir: &Path, workers: &[WorkerStatus]) {
    let path = status_path(dir, std::process::id());
    if let Err(e) = crate::state_file::write(&path, workers) {
        tracing::debug!(path = %path.display(), error = %e, "cannot write the worker state file");
    }
}

/// Host `pid`'s worker states, if it wrote any.
pub fn read_status(dir: &Path, pid: u32) -> Vec<WorkerStatus> {
    crate::state_file::read(&status_path(dir, pid))
}

/// Lines for `iniesta plugins` under a running host.
pub fn render_status(workers: &[WorkerStatus]) -> String {
    let mut out = String::new();
    for w in workers {
        out.push_str(&format!(
            "  isolated {} generation {}: {}{}, {} restart(s), {} crash(es){}{}\n",
            w.plugin,
            w.generation,
            w.state,
            if w.pids.is_empty() {
                String::new()
            } else {
                format!(
                    " pid {} ({} of at most {} processes)",
                    w.pids
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                    w.pids.len(),
                    w.max_workers
                )
            },
            w.restarts,
            w.crashes,
            if w.crashes_in_a_row >= 3 {
                format!(", CRASH LOOP ({} in a row)", w.crashes_in_a_row)
            } else {
                String::new()
            },
            w.last_crash
                .as_ref()
                .map(|c| format!(", last: {c}"))
                .unwrap_or_default()
        ));
    }
    out
}
