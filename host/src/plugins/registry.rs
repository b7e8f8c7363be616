//! The merged plugin view: every plugin found in `plugins.dirs`, later dirs overriding earlier
//! ones by plugin name, with what was refused or skipped and why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::load::{is_library_name, load_file, Fingerprint, LoadError, LoadedPlugin};

/// A plugin file that was refused, with the reason.
#[derive(Debug)]
pub struct Refusal {
    /// The file.
    pub file: PathBuf,
    /// Why (names the file, both versions and the fix where relevant).
    pub error: LoadError,
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
}

impl PluginSet {
    /// Scan `dirs` in order and load every plugin.
    pub fn scan(dirs: &[PathBuf]) -> PluginSet {
        PluginSet::default().rescan(dirs)
    }

    /// Scan again: files unchanged since this set loaded them keep their generation; changed
    /// and new files are loaded as new generations; a changed file that is refused (broken,
    /// incompatible, still being written) keeps serving its previous generation.
    pub fn rescan(&self, dirs: &[PathBuf]) -> PluginSet {
        let mut set = PluginSet::default();
        for dir in dirs {
            set.scan_dir(dir, self);
        }
        set
    }

    fn scan_dir(&mut self, dir: &Path, previous: &PluginSet) {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot read plugin directory");
                return;
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_library_name(p))
            .collect();
        files.sort();
        for file in files {
            let old = previous.files.get(&file).filter(|p| p.origin_dir == dir);
            match old {
                Some(old)
                    if old.fingerprint.is_some() && old.fingerprint == Fingerprint::of(&file) =>
                {
                    self.insert(old.clone());
                }
                _ => self.add_file(&file, dir, old.cloned()),
            }
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
        match load_file(file, origin_dir) {
            Ok(plugin) => {
                tracing::info!(
                    plugin = %plugin.name, version = %plugin.version, generation = plugin.generation,
                    file = %file.display(), handlers = ?plugin.handlers,
                    load_ms = plugin.load_time.as_millis() as u64, "loaded plugin"
                );
                self.insert(Arc::new(plugin));
            }
            Err(error) if error.is_not_a_plugin() => {
                tracing::debug!(file = %file.display(), reason = %error, "skipping: not an iniesta plugin");
                self.skipped.push((file.to_path_buf(), error.to_string()));
            }
            Err(error) => {
                match (&error, &fallback) {
                    (LoadError::Incomplete { .. }, Some(old)) => tracing::info!(
                        plugin = %old.name, generation = old.generation,
                        "{error}; generation {} keeps serving until it is complete", old.generation
                    ),
                    (_, Some(old)) => tracing::error!(
                        plugin = %old.name, generation = old.generation,
                        "{error}; the previous generation {} keeps serving", old.generation
                    ),
                    (_, None) => tracing::error!("{error}"),
                }
                if let Some(old) = fallback {
                    self.insert(old);
                }
                self.refused.push(Refusal {
                    file: file.to_path_buf(),
                    error,
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
        if refused.is_empty() {
            hint.push_str("; check plugins.dirs and that the plugin is built");
        } else {
            hint.push_str(&format!("; refused: {}", refused.join("; ")));
        }
        hint
    }
}
