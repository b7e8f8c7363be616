//! `[plugins]` and `[[bindings]]`: where plugins are loaded from and which handler runs for
//! which events (patterns, `match` and schemas are checked by `route`, which compiles them).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Config, IsolateConfig, Problem};

/// `[plugins]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Directories scanned for plugins, merged in order: a later one overrides a plugin of the
    /// same name from an earlier one.
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
    /// Reload plugins and config when their files change.
    #[serde(default = "super::default_true")]
    pub watch: bool,
    /// `[plugins.isolate]`: plugins that run in a worker process of their own.
    #[serde(default)]
    pub isolate: IsolateConfig,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            dirs: Vec::new(),
            watch: true,
            isolate: Default::default(),
        }
    }
}

impl PluginsConfig {
    /// The plugin directories a consuming host needs (`config` resolves relative ones).
    pub fn dir_problems(&self, config: &Config) -> Vec<Problem> {
        let mut problems = Vec::new();
        if !config.consumes() {
            return problems;
        }
        if self.dirs.is_empty() {
            problems.push(Problem::new(
                "plugins.dirs",
                "lists no directory: add the directory your plugins are built into, e.g. [\"target/release\"]",
            ));
        }
        for (i, dir) in self.dirs.iter().enumerate() {
            let resolved = config.resolve(dir);
            if !resolved.is_dir() {
                problems.push(Problem::new(
                    format!("plugins.dirs[{i}]"),
                    format!(
                        "directory {} does not exist (build the plugins first: cargo build --release)",
                        resolved.display()
                    ),
                ));
            }
        }
        problems
    }
}

/// One `[[bindings]]` entry: events → a plugin's handler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingConfig {
    /// The binding's name in metrics (`binding` label) and the console: stable when bindings
    /// are reordered. Default `PLUGIN/HANDLER` (or `PLUGIN`), `#2`, `#3`, … on later bindings
    /// that would share one (see [`binding_names`]).
    #[serde(default)]
    pub name: Option<String>,
    /// Exact event names or globs (`*` matches any run of characters, dots included).
    #[serde(default)]
    pub events: Vec<String>,
    /// Take events no other binding takes.
    #[serde(default)]
    pub default: bool,
    /// The plugin's name.
    pub plugin: String,
    /// The handler's name; optional when the plugin exports exactly one.
    #[serde(default)]
    pub handler: Option<String>,
    /// Handed to the handler's constructor as JSON.
    #[serde(default)]
    pub config: Option<toml::Value>,
    /// Per-binding handler timeout (s), overriding `sqs.handler_timeout_secs`.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Call the handler on the async worker thread that holds the message, with no hand-off
    /// to the blocking pool: faster for handlers that return in microseconds and never block,
    /// but its timeout cannot be enforced and a slow call holds up that thread.
    #[serde(default)]
    pub inline: bool,
    /// Set by a hot reload when the binding's plugin was removed: the binding keeps its
    /// position (and so its identity) but takes no events until the plugin returns.
    #[serde(skip)]
    pub disabled: bool,
    /// The match DSL: conditions on the body (on the event for MEGA payloads) that must all
    /// hold for this binding to take a message (see `route::matcher`).
    #[serde(default, rename = "match")]
    pub r#match: Option<toml::Table>,
    /// Media types this binding takes, matched against a `media_type` attribute or body field.
    #[serde(default)]
    pub media_types: Vec<String>,
    /// A JSON Schema file (relative to the config file) bodies must satisfy; failing ones are
    /// dead-lettered before any handler runs.
    #[serde(default)]
    pub schema: Option<PathBuf>,
    /// At most this many of this binding's calls at once; messages over it wait (their
    /// visibility extended), they do not fail.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// At most this many of this binding's calls per second (a token bucket holding one
    /// second's worth); messages over it wait.
    #[serde(default)]
    pub max_per_second: Option<f64>,
    /// `[bindings.retry]`: backoff, attempts and what is not worth retrying.
    #[serde(default)]
    pub retry: Option<super::policy::RetryConfig>,
    /// `[bindings.circuit_breaker]`: stop handing a failing binding messages for a while.
    #[serde(default)]
    pub circuit_breaker: Option<super::policy::BreakerConfig>,
    /// `[bindings.batch]`: how a batch handler's batches are gathered (a batch handler only).
    #[serde(default)]
    pub batch: Option<super::policy::BatchConfig>,
}

/// Each binding's name, in order: its `name`, else `PLUGIN/HANDLER` (`PLUGIN` without a
/// `handler`); a default name already taken gets `#2`, `#3`, … in file order.
pub fn binding_names(bindings: &[BindingConfig]) -> Vec<String> {
    let explicit: std::collections::BTreeSet<&str> =
        bindings.iter().filter_map(|b| b.name.as_deref()).collect();
    let mut taken: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    bindings
        .iter()
        .map(|b| {
            if let Some(name) = &b.name {
                taken.insert(name.clone());
                return name.clone();
            }
            let base = match &b.handler {
                Some(handler) => format!("{}/{handler}", b.plugin),
                None => b.plugin.clone(),
            };
            let mut name = base.clone();
            let mut n = 1;
            while taken.contains(&name) || explicit.contains(name.as_str()) {
                n += 1;
                name = format!("{base}#{n}");
            }
            taken.insert(name.clone());
            name
        })
        .collect()
}

/// Problems with the bindings' `name`s: the characters, and two bindings with one name.
pub fn name_problems(bindings: &[BindingConfig]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeMap::new();
    for (i, b) in bindings.iter().enumerate() {
        let Some(name) = &b.name else { continue };
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/'));
        if !ok {
            problems.push(Problem::new(
                format!("bindings[{i}].name"),
                format!("`{name}`: use 1–64 of A-Z a-z 0-9 _ - . : / (it is a metric label)"),
            ));
        }
        if let Some(first) = seen.insert(name.clone(), i) {
            problems.push(Problem::new(
                format!("bindings[{i}].name"),
                format!("`{name}` is also bindings[{first}]'s name: names must be unique"),
            ));
        }
    }
    problems
}

impl BindingConfig {
    /// The binding's config as JSON text for the plugin's constructor.
    pub fn config_json(&self) -> String {
        match &self.config {
            None => String::new(),
            Some(value) => serde_json::to_string(value).unwrap_or_default(),
        }
    }

    /// The entry's own shape, keyed under `key` (`bindings[2]`), in `config` (whether its
    /// plugin runs in a worker; the queue a retry policy must fit).
    pub fn problems(&self, key: &str, config: &Config) -> Vec<Problem> {
        let isolate = &config.plugins.isolate;
        let mut problems = super::policy::problems(
            key,
            self.max_concurrency,
            self.max_per_second,
            self.retry.as_ref(),
            self.circuit_breaker.as_ref(),
            self.batch.as_ref(),
            &config.sqs,
        );
        let mut bad = |key: String, message: String| problems.push(Problem::new(key, message));
        if self.plugin.trim().is_empty() {
            bad(format!("{key}.plugin"), "must name a plugin".into());
        }
        if self.default && !self.events.is_empty() {
            bad(
                key.to_string(),
                "has both `default = true` and `events`; a default binding takes every event no other binding takes, so drop `events`".into(),
            );
        }
        if !self.default && self.events.is_empty() {
            bad(
                format!("{key}.events"),
                "is empty: list event names or globs, or set `default = true`".into(),
            );
        }
        if self.timeout_secs == Some(0) {
            bad(format!("{key}.timeout_secs"), "must be at least 1".into());
        }
        if self.inline && isolate.isolates(&self.plugin) {
            bad(
                format!("{key}.inline"),
                format!(
                    "plugin `{}` is isolated: its calls wait on a worker process, which must not happen on an async thread; remove `inline` (or the plugin from plugins.isolate.names)",
                    self.plugin
                ),
            );
        }
        if self.config.as_ref().is_some_and(|c| !c.is_table()) {
            bad(
                format!("{key}.config"),
                "must be a table, e.g. config = { path = \"x\" }".into(),
            );
        }
        problems
    }
}

/// The bindings as a whole: a consuming host needs one, and only one may be the default.
pub fn bindings_problems(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    if config.consumes() && config.bindings.is_empty() {
        problems.push(Problem::new(
            "bindings",
            "no binding and no default: add a [[bindings]] entry with `events = [...]` or `default = true`",
        ));
    }
    let defaults = config.bindings.iter().filter(|b| b.default).count();
    if defaults > 1 {
        problems.push(Problem::new(
            "bindings",
            format!("{defaults} bindings say `default = true`; only one may"),
        ));
    }
    problems.extend(name_problems(&config.bindings));
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(name: Option<&str>, plugin: &str, handler: Option<&str>) -> BindingConfig {
        let mut text = format!("plugin = \"{plugin}\"\nevents = [\"E.*\"]\n");
        if let Some(name) = name {
            text.push_str(&format!("name = \"{name}\"\n"));
        }
        if let Some(handler) = handler {
            text.push_str(&format!("handler = \"{handler}\"\n"));
        }
        toml::from_str(&text).expect("a binding")
    }

    #[test]
    fn names_are_given_or_derived_and_stay_unique() {
        let bindings = vec![
            binding(None, "echo", None),
            binding(Some("orders"), "ledger", None),
            binding(None, "echo", None),
            binding(None, "seeds", Some("shipper")),
            // An explicit name wins over a derived one it would collide with.
            binding(Some("ledger"), "flaky", None),
            binding(None, "ledger", None),
        ];
        assert_eq!(
            binding_names(&bindings),
            [
                "echo",
                "orders",
                "echo#2",
                "seeds/shipper",
                "ledger",
                "ledger#2"
            ]
        );
        assert!(name_problems(&bindings).is_empty());
        let clash = vec![binding(Some("x"), "a", None), binding(Some("x"), "b", None)];
        let problems = name_problems(&clash);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].to_string().contains("bindings[1].name"),
            "{}",
            problems[0]
        );
        let bad = vec![
            binding(Some("has space"), "a", None),
            binding(Some("a#2"), "b", None),
        ];
        assert_eq!(name_problems(&bad).len(), 2);
    }
}
