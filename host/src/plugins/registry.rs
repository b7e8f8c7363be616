//! The merged plugin view: every plugin found in `plugins.dirs`, later dirs overriding earlier
//! ones by plugin name, with what was refused or skipped and why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::load::{is_library_name, load_file, Fingerprint, LoadError, LoadedPlugin};

/// A plugin file that was refused, with the reason.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The file.
    pub file: PathBuf,
    /// Why (names the file, both versions and the fix where relevant).
    pub error: LoadError,
    /// The refused file's identity: the same file is not tried (or reported) again.
    pub fingerprint: Option<Fingerprint>,
    /// The generation the file replaced, which keeps serving; `None` if nothing was loaded
    /// from this file before.
    pub serving: Option<Arc<LoadedPlugin>>,
    /// Whether this scan refused it for the first time (so it is logged and counted); `false`
    /// when carried over from the previous scan unchanged.
    pub new: bool,
}

impl Refusal {
    /// The plugin name for labels: the plugin whose file this replaced, else the file name.
    pub fn plugin_label(&self) -> String {
        match &self.serving {
            Some(old) => old.name.clone(),
            None => self
                .file
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| self.file.display().to_string()),
        }
    }
}

/// Every plugin from every directory, merged.
#[derive(Debug, Default)]
pub struct PluginSet {
    /// Active plugins by name.
    pub plugins: BTreeMap<String, Arc<LoadedPlugin>>,
    /// Plugins shadowed by a later directory (or a later file) with the same name.
    pub overridden: Vec<Arc<LoadedPlugin>>,
    /// Files refused: incompatible, incomplete or broken.
    pub refused: Vec<Refusal>,
    /// Library files that are not iniesta plugins.
    pub skipped: Vec<(PathBuf, String)>,
    /// Every loaded plugin by file, overridden ones included.
    pub files: BTreeMap<PathBuf, Arc<LoadedPlugin>>,
    /// Plugin directories that could not be listed (wholly or in part), with the error: the
    /// plugins loaded from them before keep serving, and the error is logged once.
    pub unreadable_dirs: BTreeMap<PathBuf, String>,
    /// The directories scanned, in order.
    pub dirs: Vec<PathBuf>,
}

impl PluginSet {
    /// Scan `dirs` in order and load every plugin.
    pub fn scan(dirs: &[PathBuf]) -> PluginSet {
        PluginSet::default().rescan(dirs)
    }

    /// Scan again: files unchanged since this set loaded them keep their generation; changed
    /// and new files are loaded as new generations; a changed file that fails to load, for
    /// any reason (not a plugin at all, broken, incompatible, still being written, insecure),
    /// keeps its previous generation serving. A refused file that has not changed since is not
    /// tried again: its refusal carries over, neither logged nor counted again.
    pub fn rescan(&self, dirs: &[PathBuf]) -> PluginSet {
        let mut set = PluginSet {
            dirs: dirs.to_vec(),
            ..PluginSet::default()
        };
        for dir in dirs {
            set.scan_dir(dir, self);
        }
        set
    }

    fn scan_dir(&mut self, dir: &Path, previous: &PluginSet) {
        // Every entry that is there at all is listed, whatever it is (a directory, a FIFO, a
        // dangling link): the loader refuses what is not a regular file, and a refused file
        // keeps its previous generation serving. Only a file that is gone drops out.
        let mut unreadable: Option<String> = None;
        let mut files: Vec<PathBuf> = Vec::new();
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                for entry in entries {
                    match entry {
                        Ok(entry) => {
                            let path = entry.path();
                            if is_library_name(&path) && std::fs::symlink_metadata(&path).is_ok() {
                                files.push(path);
                            }
                        }
                        Err(e) => {
                            unreadable
                                .get_or_insert_with(|| format!("listing failed part way: {e}"));
                        }
                    }
                }
            }
            // A directory that is gone takes its plugins with it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot read plugin directory");
                return;
            }
            // Anything else (EACCES, EMFILE, EIO) says nothing about the files in it.
            Err(e) => unreadable = Some(e.to_string()),
        }
        files.sort();
        for file in &files {
            let old = previous.files.get(file).filter(|p| p.origin_dir == dir);
            let now = Fingerprint::of(file);
            let refused_before = previous
                .refused
                .iter()
                .find(|r| r.file == *file && r.fingerprint.is_some() && r.fingerprint == now);
            match (old, refused_before) {
                // Trust is about the directories too, which can change without the file
                // changing: check again (cheap: nothing is read or mapped before it).
                (_, Some(before)) if !matches!(before.error, LoadError::Insecure { .. }) => {
                    if let Some(serving) = &before.serving {
                        self.insert(serving.clone());
                    }
                    self.refused.push(Refusal {
                        new: false,
                        ..before.clone()
                    });
                }
                (Some(old), None) if old.fingerprint.is_some() && old.fingerprint == now => {
                    self.insert(old.clone());
                }
                (old, before) => {
                    let fallback = before.and_then(|b| b.serving.clone()).or(old.cloned());
                    self.load(file, dir, fallback, before);
                }
            }
        }
        if let Some(error) = unreadable {
            let kept: Vec<Arc<LoadedPlugin>> = previous
                .files
                .values()
                .filter(|p| p.origin_dir == dir && !files.contains(&p.file))
                .cloned()
                .collect();
            if previous.unreadable_dirs.get(dir) != Some(&error) {
                tracing::error!(
                    dir = %dir.display(), error = %error, kept = kept.len(),
                    "cannot list plugin directory; the plugins loaded from it before keep serving until it can be listed again (check its permissions and the process's open-file limit)"
                );
            }
            for plugin in kept {
                self.insert(plugin);
            }
            self.unreadable_dirs.insert(dir.to_path_buf(), error);
        } else if previous.unreadable_dirs.contains_key(dir) {
            tracing::info!(dir = %dir.display(), "plugin directory can be listed again");
        }
    }

    fn insert(&mut self, plugin: Arc<LoadedPlugin>) {
        self.files.insert(plugin.file.clone(), plugin.clone());
        if let Some(previous) = self.plugins.insert(plugin.name.clone(), plugin.clone()) {
            tracing::debug!(
                plugin = %plugin.name, file = %plugin.file.display(),
                overrides = %previous.file.display(), "plugin overrides one of the same name from an earlier directory"
            );
            self.overridden.push(previous);
        }
    }

    /// Load one file into the set; a same-named plugin already present is overridden. If the
    /// file is refused and `fallback` (its previous generation) is given, that keeps serving.
    pub fn add_file(
        &mut self,
        file: &Path,
        origin_dir: &Path,
        fallback: Option<Arc<LoadedPlugin>>,
    ) {
        self.load(file, origin_dir, fallback, None);
    }

    fn load(
        &mut self,
        file: &Path,
        origin_dir: &Path,
        fallback: Option<Arc<LoadedPlugin>>,
        before: Option<&Refusal>,
    ) {
        let fingerprint = Fingerprint::of(file);
        match load_file(file, origin_dir) {
            Ok(plugin) => {
                // Clears the file's `plugin:FILE` alert, only when one was raised for it (an
                // Option field that is `None` is left out of the line).
                let cleared = lock_alerted()
                    .remove(file)
                    .then(|| format!("plugin:{}", file.display()));
                tracing::info!(
                    plugin = %plugin.name, version = %plugin.version, generation = plugin.generation,
                    file = %file.display(), handlers = ?plugin.handlers,
                    load_ms = plugin.load_time.as_millis() as u64,
                    alert_cleared = cleared.as_deref(), "loaded plugin"
                );
                self.insert(Arc::new(plugin));
            }
            // A file that is no plugin at all is skipped quietly, unless it replaced one.
            Err(error) if error.is_not_a_plugin() && fallback.is_none() => {
                tracing::debug!(file = %file.display(), reason = %error, "skipping: not an iniesta plugin");
                self.skipped.push((file.to_path_buf(), error.to_string()));
            }
            Err(error) => {
                // The same refusal as last time (an insecure file checked again) is not news.
                let new = before.is_none_or(|b| b.error.to_string() != error.to_string());
                if new {
                    log_refusal(&error, fallback.as_deref());
                }
                if let Some(old) = &fallback {
                    self.insert(old.clone());
                }
                self.refused.push(Refusal {
                    file: file.to_path_buf(),
                    error,
                    fingerprint,
                    serving: fallback,
                    new,
                });
            }
        }
    }

    /// A plugin by name.
    pub fn get(&self, name: &str) -> Option<&Arc<LoadedPlugin>> {
        self.plugins.get(name)
    }

    /// A hint for a plugin name that is not loaded: what is loaded, and refusals that may be it.
    pub fn missing_hint(&self, name: &str) -> String {
        let loaded: Vec<&str> = self.plugins.keys().map(String::as_str).collect();
        let mut hint = format!(
            "no plugin named `{name}` is loaded (loaded: {})",
            if loaded.is_empty() {
                "none".to_string()
            } else {
                loaded.join(", ")
            }
        );
        let refused: Vec<String> = self
            .refused
            .iter()
            .filter(|r| r.file.to_string_lossy().contains(name))
            .map(|r| r.error.to_string())
            .collect();
        if let Some(missing) = super::crate_type::diagnose_missing(&self.dirs, name) {
            hint.push_str(&format!("; {missing}"));
        } else if refused.is_empty() {
            hint.push_str("; check plugins.dirs and that the plugin is built");
        } else {
            hint.push_str(&format!("; refused: {}", refused.join("; ")));
        }
        hint
    }
}

/// The files whose refusal raised a `plugin:FILE` alert that no load has cleared yet.
static ALERTED: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<PathBuf>>> =
    std::sync::LazyLock::new(Default::default);

fn lock_alerted() -> std::sync::MutexGuard<'static, std::collections::HashSet<PathBuf>> {
    crate::mutex::lock(&ALERTED)
}

/// Log a refusal once, with what keeps serving and how to fix it. A refusal (not a file still
/// being written) raises the host-level alert `plugin:FILE` (ops/errors/alerts.rs), cleared
/// when that file loads (`loaded plugin`).
fn log_refusal(error: &LoadError, serving: Option<&LoadedPlugin>) {
    let reason = error.reason();
    let alert = format!("plugin:{}", error.file().display());
    if !matches!(error, LoadError::Incomplete { .. }) {
        lock_alerted().insert(error.file().to_path_buf());
    }
    match (error, serving) {
        (LoadError::Incomplete { .. }, Some(old)) => tracing::info!(
            plugin = %old.name, generation = old.generation, reason,
            "{error}; generation {} keeps serving until it is complete", old.generation
        ),
        (LoadError::NotAPlugin { .. }, Some(old)) => tracing::error!(
            plugin = %old.name, generation = old.generation, reason, alert,
            "{error}; it replaced plugin `{}`, whose generation {} keeps serving: deploy a build of the plugin there (a cdylib that calls export_plugin!), or remove the file to unbind it",
            old.name, old.generation
        ),
        (_, Some(old)) => tracing::error!(
            plugin = %old.name, generation = old.generation, reason, alert,
            "{error}; the previous generation {} keeps serving", old.generation
        ),
        (LoadError::Incomplete { .. }, None) => tracing::error!(reason, "{error}"),
        (_, None) => tracing::error!(reason, alert, "{error}"),
    }
}
