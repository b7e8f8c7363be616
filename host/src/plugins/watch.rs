//! Hot reload: watch the plugin directories and the config file, then reload safely.
//!
//! A change (or SIGHUP) is debounced for 300 ms, then the [`Reloader`] rescans: unchanged
//! plugin files keep their generation, changed ones load as new generations from private
//! copies (never from the file being written), and the config file is validated. Every
//! binding's handler is then constructed against the new generation; only if that succeeds is
//! the routing table swapped, atomically. In-flight calls finish on the generation they
//! started with. Anything refused — a file that is not a plugin, a bad ABI, a truncated file,
//! an insecure one, a constructor error, an invalid config — is logged once with the file and
//! the reason, counted (`iniesta_plugin_load_failures_total{plugin,reason}`), listed in the
//! host's state file for `iniesta plugins` and the console, and what was serving keeps
//! serving. Only a plugin file that is gone unbinds its plugin.
//!
//! A valid new config is compared with the running one section by section
//! ([`crate::config::change`]): the hot keys (bindings, plugin directories and isolation,
//! `sqs.filters`, `sqs.handler_timeout_secs`) apply; every other changed key keeps its running
//! value until a restart, is named in a warning, and is listed as pending in the state file, so
//! what the host reports is what it runs.

use crate::mutex::lock;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

use super::registry::PluginSet;
use super::LoadedPlugin;
use crate::config::change::Change;
use crate::config::{Config, Problem};
use crate::egress::Publisher;
use crate::route::Routes;

/// How long the files must be quiet before a reload.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// How often the state file is brought up to date with what handlers did between reloads
/// (self-publishes), when that changed.
pub const STATE_REFRESH: Duration = Duration::from_secs(2);

/// What one reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Plugins now served by a new generation: (name, old generation, new generation).
    pub reloaded: Vec<(String, Option<u64>, u64)>,
    /// Plugins that disappeared.
    pub removed: Vec<String>,
    /// Refusals, as logged.
    pub refused: Vec<String>,
    /// Whether a new config was accepted: its hot keys now run (its restart-only keys, in
    /// `needs_restart`, keep their running values).
    pub config_applied: bool,
    /// The new config's problems, if it was refused.
    pub config_refused: Vec<Problem>,
    /// Keys that changed but need a restart; the host keeps running their old values.
    pub needs_restart: Vec<String>,
    /// Whether the routing table was swapped.
    pub swapped: bool,
}

/// Running totals across reloads, per plugin name.
#[derive(Debug, Default, Clone)]
pub struct ReloadStats {
    /// Reloads per plugin.
    pub reloads: BTreeMap<String, u64>,
    /// Refused loads in total.
    pub refusals: u64,
    /// Bytes of old generations still mapped (libraries are never unloaded).
    pub retained_bytes: u64,
    /// Old generations still mapped.
    pub retained_generations: u64,
}

/// What a running host publishes about its plugins for `iniesta plugins` (a JSON file per
/// host process in `.iniesta/hosts/` beside the config; removed when the host stops).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HostState {
    /// The host's process id.
    pub pid: u32,
    /// The config it runs.
    pub config: PathBuf,
    /// When this was written (s since the Unix epoch).
    pub updated_at: u64,
    /// Serving plugins.
    pub plugins: Vec<PluginState>,
    /// Refused loads so far.
    pub refusals: u64,
    /// Bytes of old generations still mapped.
    pub retained_bytes: u64,
    /// Old generations still mapped.
    pub retained_generations: u64,
    /// Plugin files refused now (each until it is replaced by a good file or removed).
    #[serde(default)]
    pub load_failures: Vec<LoadFailure>,
    /// Config keys changed in the file that only take effect after a restart: the host runs
    /// their old values until then.
    #[serde(default)]
    pub pending_restart: Vec<String>,
    /// Bindings whose handler published an event the binding consumes itself (a loop).
    #[serde(default)]
    pub self_publishes: Vec<super::context::SelfPublish>,
    /// Isolated plugins' worker processes (read from their own state file).
    #[serde(default, skip_serializing)]
    pub workers: Vec<crate::isolate::WorkerStatus>,
    /// Bindings whose circuit is not closed (read from their own state file; in
    /// `iniesta plugins --output json` too).
    #[serde(default)]
    pub circuits: Vec<crate::policy::CircuitView>,
}

impl HostState {
    /// The loops this host saw, one sentence each: a binding whose handler published an event
    /// the binding consumes itself.
    pub fn loop_warnings(&self) -> Vec<String> {
        self.self_publishes
            .iter()
            .map(|l| {
                format!(
                    "{} published `{}`, which it consumes itself ({} time(s) in host pid {}): a loop; bind it to events it does not publish, or publish another name",
                    l.binding, l.event, l.count, self.pid
                )
            })
            .collect()
    }
}

/// One serving plugin in [`HostState`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PluginState {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Serving generation.
    pub generation: u64,
    /// File it was loaded from.
    pub file: PathBuf,
    /// When it was loaded (s since the Unix epoch).
    pub loaded_at: u64,
    /// How long loading took (ms).
    pub load_ms: u64,
    /// Reloads of this plugin since the host started.
    pub reloads: u64,
}

/// A plugin file the host refuses now, in [`HostState`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LoadFailure {
    /// The plugin whose file it replaced (else the file name): the metric's `plugin` label.
    pub plugin: String,
    /// The file.
    pub file: PathBuf,
    /// `not_a_plugin`, `incomplete`, `incompatible_version`, `incompatible_layout`,
    /// `insecure` or `broken`: the metric's `reason` label.
    pub reason: String,
    /// The full refusal, with the fix.
    pub error: String,
    /// The generation that keeps serving in its place, if the file replaced one.
    pub serving_generation: Option<u64>,
}

impl LoadFailure {
    fn of(refusal: &super::registry::Refusal) -> LoadFailure {
        LoadFailure {
            plugin: refusal.plugin_label(),
            file: refusal.file.clone(),
            reason: refusal.error.reason().to_string(),
            error: refusal.error.to_string(),
            serving_generation: refusal.serving.as_ref().map(|p| p.generation),
        }
    }
}

/// Count the refusals `plugins` made for the first time (carried-over ones were counted).
fn count_new_refusals(plugins: &PluginSet, stats: &mut ReloadStats) {
    for refusal in plugins.refused.iter().filter(|r| r.new) {
        stats.refusals += 1;
        metrics::counter!(crate::ops::metrics::PLUGIN_REFUSALS).increment(1);
        metrics::counter!(
            crate::ops::metrics::PLUGIN_LOAD_FAILURES,
            "plugin" => refusal.plugin_label(),
            "reason" => refusal.error.reason()
        )
        .increment(1);
    }
}

/// The directory host state files live in for a config.
pub fn state_dir(config: &Config) -> PathBuf {
    config.base_dir.join(".iniesta").join("hosts")
}

fn unix_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Host states of running hosts for this config (stale files of dead processes are removed).
pub fn running_hosts(config: &Config) -> Vec<HostState> {
    let Ok(entries) = std::fs::read_dir(state_dir(config)) else {
        return Vec::new();
    };
    let mut hosts = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let Ok(mut state) = serde_json::from_str::<HostState>(&text) else {
            continue;
        };
        if cfg!(target_os = "linux") && !Path::new(&format!("/proc/{}", state.pid)).exists() {
            let _ = std::fs::remove_file(&path);
            let _ =
                std::fs::remove_file(crate::isolate::status_path(&state_dir(config), state.pid));
            let _ = std::fs::remove_file(crate::policy::status_path(&state_dir(config), state.pid));
            continue;
        }
        state.workers = crate::isolate::read_status(&state_dir(config), state.pid);
        state.circuits = crate::policy::read_status(&state_dir(config), state.pid);
        hosts.push(state);
    }
    hosts.sort_by_key(|h| h.pid);
    hosts
}

/// Holds what is running and knows how to replace it.
pub struct Reloader {
    config_path: PathBuf,
    config: Config,
    plugins: PluginSet,
    routes: Arc<ArcSwap<Routes>>,
    publisher: Arc<Publisher>,
    runtime: tokio::runtime::Handle,
    /// The bindings' limits and circuit breakers, kept across reloads.
    guards: Arc<crate::policy::Guards>,
    stats: ReloadStats,
    pending_restart: Vec<String>,
    /// The last reload refused the config file (the `config` alert is raised).
    config_refused: bool,
    /// The last reload was refused as a whole (the `reload` alert is raised).
    reload_refused: bool,
}

impl Reloader {
    /// A reloader for a running host.
    pub fn new(
        config_path: PathBuf,
        config: Config,
        plugins: PluginSet,
        routes: Arc<ArcSwap<Routes>>,
        publisher: Arc<Publisher>,
        runtime: tokio::runtime::Handle,
        guards: Arc<crate::policy::Guards>,
    ) -> Reloader {
        let mut stats = ReloadStats::default();
        count_new_refusals(&plugins, &mut stats);
        Reloader {
            config_path,
            config,
            plugins,
            routes,
            publisher,
            runtime,
            guards,
            stats,
            pending_restart: Vec::new(),
            config_refused: false,
            reload_refused: false,
        }
    }

    /// The config file loads again after a refusal: end the `config` alert.
    fn config_accepted(&mut self) {
        if std::mem::take(&mut self.config_refused) {
            tracing::info!(alert_cleared = "config", "the config file is valid again");
        }
    }

    /// Write this host's state file for `iniesta plugins`; failures are only logged.
    pub fn write_state(&self) {
        let state = HostState {
            pid: std::process::id(),
            config: self.config_path.clone(),
            updated_at: unix_secs(std::time::SystemTime::now()),
            plugins: self
                .plugins
                .plugins
                .values()
                .map(|p| PluginState {
                    name: p.name.clone(),
                    version: p.version.clone(),
                    generation: p.generation,
                    file: p.file.clone(),
                    loaded_at: unix_secs(p.loaded_at),
                    load_ms: p.load_time.as_millis() as u64,
                    reloads: self.stats.reloads.get(&p.name).copied().unwrap_or(0),
                })
                .collect(),
            refusals: self.stats.refusals,
            retained_bytes: self.stats.retained_bytes,
            retained_generations: self.stats.retained_generations,
            load_failures: self.plugins.refused.iter().map(LoadFailure::of).collect(),
            pending_restart: self.pending_restart.clone(),
            self_publishes: super::context::self_publishes(),
            workers: Vec::new(),
            circuits: Vec::new(),
        };
        let path = state_dir(&self.config).join(format!("host-{}.json", state.pid));
        if let Err(e) = crate::state_file::write(&path, &state) {
            tracing::debug!(path = %path.display(), error = %e, "cannot write the host state file");
        }
    }

    /// Remove this host's state file (on shutdown).
    pub fn remove_state(&self) {
        let path = state_dir(&self.config).join(format!("host-{}.json", std::process::id()));
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(crate::isolate::status_path(
            &state_dir(&self.config),
            std::process::id(),
        ));
        self.guards.remove_status();
    }

    /// The config being served: what the host runs (restart-only keys keep the values it
    /// started with, whatever the file says now).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Keys changed in the file that wait for a restart (their running values stay).
    pub fn pending_restart(&self) -> &[String] {
        &self.pending_restart
    }

    /// The plugins being served.
    pub fn plugins(&self) -> &PluginSet {
        &self.plugins
    }

    /// Totals so far.
    pub fn stats(&self) -> &ReloadStats {
        &self.stats
    }

    /// Look at the files again and swap in whatever changed and is valid.
    pub fn reload(&mut self) -> ReloadReport {
        let mut report = ReloadReport::default();
        let candidate = match crate::validate::load(&self.config_path) {
            Ok(c) if c == self.config => {
                self.pending_restart.clear();
                self.config_accepted();
                None
            }
            // Cleared only once it binds too (below).
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(
                    alert = "config",
                    "config change refused; the running config keeps serving: {e}"
                );
                self.config_refused = true;
                metrics::counter!(crate::ops::metrics::CONFIG_REFUSALS).increment(1);
                if let crate::config::ConfigError::Invalid { problems, .. } = &e {
                    report.config_refused = problems.clone();
                } else {
                    report.config_refused = vec![Problem {
                        key: self.config_path.display().to_string(),
                        message: e.to_string(),
                    }];
                }
                None
            }
        };
        // What would run: the running config with the new one's hot keys; restart-only keys
        // keep their running values.
        let change = candidate
            .as_ref()
            .map(|new| Change::between(&self.config, new))
            .unwrap_or_default();
        report.needs_restart = change.restart.clone();
        if !change.restart.is_empty() {
            tracing::warn!(
                keys = ?change.restart,
                config = %self.config_path.display(),
                "these settings changed but only take effect after a restart; the host keeps running their old values until it is restarted"
            );
        }
        let config = match &candidate {
            Some(new) => Change::apply(&self.config, new),
            None => self.config.clone(),
        };
        let mut plugins = self.plugins.rescan(&config.plugin_dirs());
        report.refused = plugins
            .refused
            .iter()
            .map(|r| r.error.to_string())
            .collect();
        count_new_refusals(&plugins, &mut self.stats);

        // Bind; on failure, fall back step by step: keep old generations of plugins whose new
        // generation failed to construct, unbind removed plugins, then keep the old config.
        let mut bound = self.try_bind(&config, &mut plugins);
        let mut applied_config = candidate.is_some();
        if let (Err(problems), Some(_)) = (&bound, &candidate) {
            self.config_refused = true;
            tracing::error!(
                alert = "config",
                "config change refused; the running config keeps serving:\n{}",
                problems
                    .iter()
                    .map(|p| format!("  - {p}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            report.config_refused = problems.clone();
            metrics::counter!(crate::ops::metrics::CONFIG_REFUSALS).increment(1);
            applied_config = false;
            let old = self.config.clone();
            plugins = self.plugins.rescan(&old.plugin_dirs());
            bound = self.try_bind(&old, &mut plugins);
        }
        let routes = match bound {
            Ok(routes) => routes,
            Err(problems) => {
                // Not the config's fault alone (the old config failed to bind too): a plugin
                // removed or refused that a binding needs. One incident until a reload swaps.
                self.reload_refused = true;
                tracing::error!(
                    alert = "reload",
                    "reload refused; everything that was serving keeps serving:\n{}",
                    problems
                        .iter()
                        .map(|p| format!("  - {p}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                return report;
            }
        };
        for (name, plugin) in &plugins.plugins {
            let old = self.plugins.plugins.get(name);
            if old.map(|o| o.generation) != Some(plugin.generation) {
                report
                    .reloaded
                    .push((name.clone(), old.map(|o| o.generation), plugin.generation));
                if let Some(old) = old {
                    *self.stats.reloads.entry(name.clone()).or_default() += 1;
                    metrics::counter!(crate::ops::metrics::PLUGIN_RELOADS, "plugin" => name.clone())
                        .increment(1);
                    self.stats.retained_bytes += old.file_size;
                    self.stats.retained_generations += 1;
                    tracing::info!(
                        plugin = %name, from = old.generation, to = plugin.generation,
                        file = %plugin.file.display(), load_ms = plugin.load_time.as_millis() as u64,
                        reloads = self.stats.reloads[name], retained_mb = self.stats.retained_bytes as f64 / 1e6,
                        "plugin reloaded; new deliveries go to the new generation"
                    );
                } else {
                    tracing::info!(plugin = %name, generation = plugin.generation, file = %plugin.file.display(),
                        "new plugin available");
                }
            }
        }
        for name in self.plugins.plugins.keys() {
            if !plugins.plugins.contains_key(name) {
                report.removed.push(name.clone());
                tracing::warn!(plugin = %name, "plugin removed (its file is gone, or now holds a plugin of another name); its bindings are unbound (their events go to the default binding, or wait on the queue)");
            }
        }
        self.routes.store(Arc::new(routes));
        report.swapped = true;
        if std::mem::take(&mut self.reload_refused) {
            tracing::info!(alert_cleared = "reload", "reloading works again");
        }
        if applied_config || !report.reloaded.is_empty() || !report.removed.is_empty() {
            // New bindings or handlers: the loops seen are old news until they happen again.
            super::context::forget_self_publishes();
        }
        report.config_applied = applied_config;
        if applied_config {
            self.config_accepted();
            // Only a config that was accepted may change the subscription.
            if config.sqs.filters != self.config.sqs.filters {
                self.update_subscription(&config);
            }
            self.config = config;
            self.pending_restart = change.restart;
            tracing::info!(
                config = %self.config_path.display(),
                applied = ?change.hot,
                pending_restart = ?self.pending_restart,
                "config reloaded; bindings swapped"
            );
        }
        self.plugins = plugins;
        self.write_state();
        report
    }

    /// Bind `config` to `plugins`, reverting plugins whose new generation was refused by a
    /// constructor and unbinding bindings whose plugin was removed.
    fn try_bind(&self, config: &Config, plugins: &mut PluginSet) -> Result<Routes, Vec<Problem>> {
        let mut config = config.clone();
        for _ in 0..3 {
            let problems = match crate::route::bind(
                &config,
                plugins,
                Some(self.publisher.clone()),
                Some(self.runtime.clone()),
                &self.guards,
            ) {
                Ok(routes) => return Ok(routes),
                Err(problems) => problems,
            };
            let mut changed = false;
            let failing: BTreeSet<usize> = problems
                .iter()
                .filter_map(|p| binding_index(&p.key))
                .collect();
            let mut unbind = BTreeSet::new();
            for index in &failing {
                let Some(binding) = config.bindings.get(*index) else {
                    continue;
                };
                let name = binding.plugin.clone();
                let new = plugins.plugins.get(&name).cloned();
                let old = self.plugins.plugins.get(&name).cloned();
                match (new, old) {
                    (Some(new), Some(old)) if new.generation != old.generation => {
                        let why = new
                            .in_process_refusal()
                            .unwrap_or_else(|| "its handlers refused their config".to_string());
                        tracing::error!(
                            plugin = %name, generation = new.generation, file = %new.file.display(),
                            "the new generation cannot serve: {why}; generation {} keeps serving", old.generation
                        );
                        plugins.plugins.insert(name, old);
                        changed = true;
                    }
                    (None, Some(_)) => {
                        unbind.insert(*index);
                    }
                    _ => {}
                }
            }
            if !unbind.is_empty() {
                // Disable rather than remove: a binding's position is part of its identity
                // (log labels, completion records), so the others must keep theirs.
                for index in &unbind {
                    if let Some(binding) = config.bindings.get_mut(*index) {
                        binding.disabled = true;
                    }
                }
                changed = true;
            }
            if !changed {
                return Err(problems);
            }
        }
        crate::route::bind(
            &config,
            plugins,
            Some(self.publisher.clone()),
            Some(self.runtime.clone()),
            &self.guards,
        )
    }

    fn update_subscription(&self, new: &Config) {
        match new.broker.kind {
            crate::config::BrokerKind::Local => {
                let new = new.clone();
                let result = self.runtime.block_on(async move {
                    crate::broker::local::LocalBroker::open(&new).await.map(|_| ())
                });
                match result {
                    Ok(()) => tracing::info!("sqs.filters changed: the local subscription's filter policy is updated"),
                    Err(e) => tracing::error!(error = %e, "sqs.filters changed but the local subscription could not be updated"),
                }
            }
            crate::config::BrokerKind::Aws => tracing::warn!(
                "sqs.filters changed: run `iniesta setup` to update the SNS subscription's filter policy (until then the queue receives what the old policy lets through)"
            ),
        }
    }

    /// Directories and the config file to watch.
    fn watched(&self) -> (Vec<PathBuf>, PathBuf) {
        (self.config.plugin_dirs(), self.config_path.clone())
    }
}

fn binding_index(key: &str) -> Option<usize> {
    let rest = key.strip_prefix("bindings[")?;
    rest.split(']').next()?.parse().ok()
}

fn relevant(event: &notify::Event, config_name: Option<&std::ffi::OsStr>) -> bool {
    use notify::event::{AccessKind, AccessMode};
    let kind_matters = matches!(
        event.kind,
        EventKind::Create(_)
            | EventKind::Modify(_)
            | EventKind::Remove(_)
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    );
    kind_matters
        && event.paths.iter().any(|p| {
            super::load::is_library_name(p)
                || (config_name.is_some() && p.file_name() == config_name)
        })
}

/// Start the reloader: the file watches are registered before this returns (so no change
/// made after it is missed); reloads then run on file changes (when `plugins.watch`) and on
/// SIGHUP, until `shutdown`. Both tasks (SIGHUP, reloads) are tasks of `tasks`.
pub fn start(
    reloader: Reloader,
    shutdown: CancellationToken,
    tasks: &crate::tasks::Tasks,
) -> tokio::task::JoinHandle<()> {
    reloader.write_state();
    let reloader = Arc::new(Mutex::new(reloader));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watch = lock(&reloader).config.plugins.watch;
    let (dirs, config_path) = lock(&reloader).watched();
    let config_name = config_path.file_name().map(|n| n.to_os_string());
    let mut watcher = if watch {
        let tx = tx.clone();
        let name = config_name.clone();
        match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                if relevant(&event, name.as_deref()) {
                    let _ = tx.send(());
                }
            }
        }) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(error = %e, "cannot watch files; reload with SIGHUP instead");
                None
            }
        }
    } else {
        None
    };
    let mut watching: BTreeSet<PathBuf> = BTreeSet::new();
    if let Some(w) = watcher.as_mut() {
        let config_dir = config_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        for dir in dirs.iter().chain(std::iter::once(&config_dir)) {
            watch_dir(w, dir, &mut watching);
        }
        tracing::info!(dirs = ?watching, "watching plugins and config for changes (SIGHUP also reloads)");
    }
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let tx = tx.clone();
        let shutdown = shutdown.clone();
        // Registered here, before start returns, so an early SIGHUP is not the default (exit).
        let hup = signal(SignalKind::hangup());
        tasks.spawn(async move {
            let Ok(mut hup) = hup else {
                tracing::error!("cannot listen for SIGHUP");
                return;
            };
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    got = hup.recv() => {
                        if got.is_none() { return; }
                        tracing::info!("SIGHUP: reloading");
                        let _ = tx.send(());
                    }
                }
            }
        });
    }
    tasks.spawn(reload_loop(reloader, rx, watcher, watching, shutdown))
}

async fn reload_loop(
    reloader: Arc<Mutex<Reloader>>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<()>,
    mut watcher: Option<notify::RecommendedWatcher>,
    mut watching: BTreeSet<PathBuf>,
    shutdown: CancellationToken,
) {
    // Self-publishes (see `super::context`) reach the state file within STATE_REFRESH.
    let mut refresh = tokio::time::interval(STATE_REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut written = super::context::self_publishes();
    'serve: loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            got = rx.recv() => if got.is_none() { break; },
            _ = refresh.tick() => {
                let now = super::context::self_publishes();
                if now != written {
                    lock(&reloader).write_state();
                    written = now;
                }
                continue;
            }
        }
        // Debounce: wait until nothing has changed for DEBOUNCE.
        loop {
            match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => break 'serve,
                Err(_) => break,
            }
        }
        let worker = reloader.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut reloader = lock(&worker);
            let report = reloader.reload();
            (report, reloader.config.plugin_dirs())
        })
        .await;
        match result {
            Ok((_report, dirs)) => {
                if let Some(w) = watcher.as_mut() {
                    for dir in &dirs {
                        watch_dir(w, dir, &mut watching);
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "reload task failed; the running plugins keep serving")
            }
        }
    }
    // The host is stopping: `iniesta plugins` no longer lists it.
    lock(&reloader).remove_state();
}

fn watch_dir(
    watcher: &mut notify::RecommendedWatcher,
    dir: &Path,
    watching: &mut BTreeSet<PathBuf>,
) {
    if watching.contains(dir) {
        return;
    }
    match watcher.watch(dir, RecursiveMode::NonRecursive) {
        Ok(()) => {
            watching.insert(dir.to_path_buf());
        }
        Err(e) => tracing::error!(dir = %dir.display(), error = %e, "cannot watch directory"),
    }
}

/// A one-line summary of a plugin generation for logs and `iniesta plugins`.
pub fn describe(plugin: &LoadedPlugin) -> String {
    format!(
        "{} {} generation {} from {}",
        plugin.name,
        plugin.version,
        plugin.generation,
        plugin.file.display()
    )
}
