//! What a reload may change in a running host, worked out by comparing configs.
//!
//! Both configs are serialized and compared key by key down to the leaves (`sqs.max_messages`;
//! a list such as `bindings` or `egress` is one leaf). A changed key is hot when [`HOT`] lists
//! it or a section above it; every other key needs a restart, so a key added to the config
//! later is restart-only until someone puts it in [`HOT`] (and makes the reload apply it).
//! [`Change::apply`] builds what a reload runs: the running config with the hot keys of the
//! new one, every restart-only key keeping its running value.

use serde_json::Value;

use super::Config;

/// A key a reload applies to the running host, and how: copy it from the new config.
pub struct HotKey {
    /// The dotted key (a section or a leaf).
    pub key: &'static str,
    /// Copy this key's value from `new` into `running`.
    pub apply: fn(running: &mut Config, new: &Config),
}

/// The keys a reload applies live: the bindings (rebound against the plugins), where the
/// plugins come from and which run isolated, the subscription's filters (its filter policy is
/// updated) and the default handler timeout (each binding's timeout is fixed when it is bound).
/// Everything else is set up once at start.
pub const HOT: &[HotKey] = &[
    HotKey {
        key: "bindings",
        apply: |running, new| running.bindings = new.bindings.clone(),
    },
    HotKey {
        key: "plugins.dirs",
        apply: |running, new| running.plugins.dirs = new.plugins.dirs.clone(),
    },
    HotKey {
        key: "plugins.isolate",
        apply: |running, new| running.plugins.isolate = new.plugins.isolate.clone(),
    },
    HotKey {
        key: "sqs.filters",
        apply: |running, new| running.sqs.filters = new.sqs.filters.clone(),
    },
    HotKey {
        key: "sqs.handler_timeout_secs",
        apply: |running, new| running.sqs.handler_timeout_secs = new.sqs.handler_timeout_secs,
    },
];

/// The keys that differ between a running config and a new one, split by what a reload can do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// Changed keys a reload applies ([`HOT`]).
    pub hot: Vec<String>,
    /// Changed keys that only take effect after a restart; the running values stay.
    pub restart: Vec<String>,
}

impl Change {
    /// Compare `running` with `new`.
    pub fn between(running: &Config, new: &Config) -> Change {
        let mut change = Change::default();
        for key in changed_keys(running, new) {
            if is_hot(&key) {
                change.hot.push(key);
            } else {
                change.restart.push(key);
            }
        }
        change
    }

    /// Whether nothing differs.
    pub fn is_empty(&self) -> bool {
        self.hot.is_empty() && self.restart.is_empty()
    }

    /// What to run: `running` with every [`HOT`] key taken from `new`; restart-only keys keep
    /// their running values.
    pub fn apply(running: &Config, new: &Config) -> Config {
        let mut next = running.clone();
        for hot in HOT {
            (hot.apply)(&mut next, new);
        }
        next
    }
}

/// Whether a reload applies a change to `key` (it, or a section above it, is in [`HOT`]).
pub fn is_hot(key: &str) -> bool {
    HOT.iter().any(|hot| {
        key == hot.key
            || key
                .strip_prefix(hot.key)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// The dotted keys whose values differ, down to the leaves, sorted (section by section).
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    diff("", &view(old), &view(new), &mut keys);
    keys
}

/// The config as the comparison sees it: the queue by the name it resolves to (a template
/// edit that leaves the name alone changes nothing), every other key as written.
fn view(config: &Config) -> Value {
    let mut value = serde_json::to_value(config).unwrap_or_else(|e| {
        // Cannot happen for plain data; comparing as unknown makes every change restart-only.
        tracing::error!(error = %e, "cannot compare configs");
        Value::String(format!("{config:?}"))
    });
    if let Some(sqs) = value.get_mut("sqs").and_then(Value::as_object_mut) {
        sqs.remove("queue_name_template");
        sqs.insert("queue_name".into(), Value::String(config.queue_name()));
    }
    value
}

fn diff(prefix: &str, old: &Value, new: &Value, keys: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            let names = old
                .keys()
                .chain(new.keys().filter(|k| !old.contains_key(*k)));
            for name in names {
                let key = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}.{name}")
                };
                let missing = Value::Null;
                diff(
                    &key,
                    old.get(name).unwrap_or(&missing),
                    new.get(name).unwrap_or(&missing),
                    keys,
                );
            }
        }
        (old, new) if old != new => {
            keys.push(if prefix.is_empty() {
                "<config>".to_string()
            } else {
                prefix.to_string()
            });
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(extra_sqs: &str, rest: &str) -> Config {
        let text = format!(
            "service = \"s\"\n[broker]\nkind = \"aws\"\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:1:global\"\n[sqs]\nfilters = [\"Order.*\"]\n{extra_sqs}{rest}"
        );
        Config::parse(&text, Path::new(".")).expect("parses")
    }

    #[test]
    fn keys_are_named_down_to_the_leaf() {
        let old = parse("", "");
        let new = parse(
            "max_messages = 3\nraw_message_delivery = false\n",
            "[lock]\ntimeout_secs = 20\n[[egress]]\nplugin = \"sns\"\n",
        );
        assert_eq!(
            changed_keys(&old, &new),
            vec![
                "egress",
                "lock.timeout_secs",
                "sqs.max_messages",
                "sqs.raw_message_delivery",
            ]
        );
        assert!(changed_keys(&old, &old).is_empty());
    }

    #[test]
    fn hot_and_restart_only_keys_are_split_and_only_hot_ones_apply() {
        let old = parse("", "[plugins]\ndirs = [\"a\"]\n");
        let mut new = parse(
            "pollers = 3\nhandler_timeout_secs = 9\n",
            "[plugins]\ndirs = [\"b\"]\nwatch = false\n[plugins.isolate]\nworkers = 2\n[[bindings]]\nevents = [\"Other.*\"]\nplugin = \"echo\"\n",
        );
        new.sqs.filters.push("Other.*".into());
        let change = Change::between(&old, &new);
        assert_eq!(
            change.hot,
            vec![
                "bindings",
                "plugins.dirs",
                "plugins.isolate.workers",
                "sqs.filters",
                "sqs.handler_timeout_secs",
            ]
        );
        assert_eq!(change.restart, vec!["plugins.watch", "sqs.pollers"]);
        let next = Change::apply(&old, &new);
        assert_eq!(next.sqs.pollers, 1, "restart-only: the running value stays");
        assert!(next.plugins.watch, "restart-only: the running value stays");
        assert_eq!(next.sqs.handler_timeout_secs, 9);
        assert_eq!(next.sqs.filters, new.sqs.filters);
        assert_eq!(next.plugins.dirs, new.plugins.dirs);
        assert_eq!(next.plugins.isolate, new.plugins.isolate);
        assert_eq!(next.bindings, new.bindings);
        assert!(
            Change::between(&next, &new).hot.is_empty(),
            "after applying, only the restart-only keys still differ"
        );
    }

    #[test]
    fn a_key_not_in_the_hot_table_needs_a_restart() {
        // Any key the table does not name (such as one added to the config later) is
        // restart-only by default.
        for key in [
            "service",
            "sqs.some_new_key",
            "metrics.listen",
            "plugins.watch",
            "bindingsx",
        ] {
            assert!(!is_hot(key), "{key}");
        }
        for key in ["bindings", "sqs.filters", "plugins.isolate.names"] {
            assert!(is_hot(key), "{key}");
        }
        let old = parse("", "");
        let mut new = old.clone();
        new.errors.include_bodies = true;
        assert_eq!(
            Change::between(&old, &new).restart,
            vec!["errors.include_bodies"]
        );
    }

    #[test]
    fn the_queue_is_compared_by_the_name_it_resolves_to() {
        let old = parse("", "");
        let same = parse("queue_name = \"iniesta-development-s\"\n", "");
        assert!(Change::between(&old, &same).is_empty());
        let renamed = parse("queue_name = \"other\"\n", "");
        assert_eq!(
            Change::between(&old, &renamed).restart,
            vec!["sqs.queue_name"]
        );
    }

    #[test]
    fn a_changed_raw_delivery_setting_needs_a_restart() {
        // The pipeline decodes with the delivery context it started with: a reload that
        // changed it would run with the old one while `config` reported the new.
        let raw = parse("", "");
        let wrapped = parse("raw_message_delivery = false\n", "");
        assert_eq!(
            Change::between(&raw, &wrapped).restart,
            vec!["sqs.raw_message_delivery".to_string()]
        );
    }
}
