//! `[plugins.isolate]`: plugins that run in a worker process of their own (run by `isolate`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Problem;

/// `[plugins.isolate]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsolateConfig {
    /// Plugins (by name) that run in a worker process each instead of inside the host.
    #[serde(default)]
    pub names: Vec<String>,
    /// The most worker processes per isolated plugin; each runs one call at a time, so a crash
    /// fails only the call that caused it. Calls beyond this wait for a free process.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Environment variables every worker gets besides the basics (`PATH`, `HOME`, `LANG`,
    /// `LC_*`, `TZ`, `TMPDIR`, `RUST_BACKTRACE`); nothing else is inherited.
    #[serde(default)]
    pub env: Vec<String>,
    /// Per plugin: more variables only that plugin's worker gets.
    #[serde(default)]
    pub plugin_env: BTreeMap<String, Vec<String>>,
    /// Address-space limit per worker (MiB, `RLIMIT_AS`: virtual memory, not resident).
    #[serde(default)]
    pub memory_limit_mb: Option<u64>,
    /// Open-file limit per worker (`RLIMIT_NOFILE`).
    #[serde(default)]
    pub open_files: Option<u64>,
    /// The longest wait between restarts of a worker that keeps dying (s); the wait starts at
    /// 100 ms and doubles with each crash in a row. Calls wait out the backoff when it ends
    /// before their handler timeout, so keep this below `sqs.handler_timeout_secs`: otherwise a
    /// good message that arrives during a long backoff fails (and is redelivered) unrun.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_secs: u64,
}

impl Default for IsolateConfig {
    fn default() -> Self {
        IsolateConfig {
            names: Vec::new(),
            workers: default_workers(),
            env: Vec::new(),
            plugin_env: BTreeMap::new(),
            memory_limit_mb: None,
            open_files: None,
            max_backoff_secs: default_max_backoff(),
        }
    }
}

fn default_workers() -> usize {
    4
}

fn default_max_backoff() -> u64 {
    5
}

/// The smallest memory limit accepted: the worker is the whole `iniesta` binary, and glibc
/// reserves address space per thread (stacks, malloc arenas).
pub const MIN_MEMORY_LIMIT_MB: u64 = 256;

impl IsolateConfig {
    /// Whether plugin `name` runs in a worker.
    pub fn isolates(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// Problems found without loading anything.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, message: String| problems.push(Problem::new(key, message));
        for (i, name) in self.names.iter().enumerate() {
            if name.trim().is_empty() {
                bad(
                    &format!("plugins.isolate.names[{i}]"),
                    "is empty: name a plugin as bindings do (`plugin = \"...\"`)".into(),
                );
            }
        }
        let variables = self
            .env
            .iter()
            .map(|v| ("plugins.isolate.env".to_string(), v))
            .chain(self.plugin_env.iter().flat_map(|(plugin, vars)| {
                vars.iter()
                    .map(move |v| (format!("plugins.isolate.plugin_env.{plugin}"), v))
            }));
        for (key, var) in variables {
            if var.is_empty() || var.contains('=') || var.contains('\0') {
                bad(
                    &key,
                    format!("`{var}` is not an environment variable name (give names only; values come from the host's environment)"),
                );
            }
        }
        for plugin in self.plugin_env.keys() {
            if !self.isolates(plugin) {
                bad(
                    &format!("plugins.isolate.plugin_env.{plugin}"),
                    format!("`{plugin}` is not in plugins.isolate.names, so it runs in the host and this has no effect"),
                );
            }
        }
        if let Some(mb) = self.memory_limit_mb {
            if mb < MIN_MEMORY_LIMIT_MB {
                bad(
                    "plugins.isolate.memory_limit_mb",
                    format!("{mb} MiB is below {MIN_MEMORY_LIMIT_MB}: it limits virtual memory (RLIMIT_AS), and the worker reserves more than that before it runs a handler"),
                );
            }
        }
        if self.workers == 0 || self.workers > 256 {
            bad(
                "plugins.isolate.workers",
                format!(
                    "{} is out of range: give 1 to 256 processes per plugin",
                    self.workers
                ),
            );
        }
        if self.open_files == Some(0) {
            bad(
                "plugins.isolate.open_files",
                "must be at least 1 (the worker needs its pipes)".into(),
            );
        }
        if self.max_backoff_secs == 0 {
            bad(
                "plugins.isolate.max_backoff_secs",
                "must be at least 1".into(),
            );
        }
        problems
    }
}
