//! `iniesta config check`: validate the config and its bindings against the loaded plugins.
//! `iniesta config show`: the effective config, each key with where its value came from (the
//! file, an `INIESTA_…` variable, or the default), secrets masked.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;

use super::Output;
use crate::config::Config;
use crate::plugins::PluginSet;

/// `iniesta config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the config and its bindings against the loaded plugins; warn about loops
    /// running hosts of this config saw (a handler publishing an event its own binding takes).
    Check,
    /// Print the effective config: every key with its value and where it came from (the file,
    /// an INIESTA_… environment variable, or the default); secrets are masked.
    Show {
        /// `human` (a table: key, value, from) or `json` (one object: `file`, `overrides`,
        /// `keys`).
        #[arg(long, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
}

/// `iniesta config ...`.
pub fn run(path: &Path, command: ConfigCommand) -> anyhow::Result<ExitCode> {
    match command {
        ConfigCommand::Check => check(path),
        ConfigCommand::Show { output } => show(path, output),
    }
}

/// Where a key's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum From {
    File,
    Env(String),
    Default,
}

/// One key of the effective config.
struct Row {
    key: String,
    value: toml::Value,
    from: From,
}

fn show(path: &Path, output: Output) -> anyhow::Result<ExitCode> {
    let config = Config::read(path)?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not TOML", path.display()))?;
    let effective = toml::Table::try_from(&config).context("the config does not serialise")?;
    let mut rows = Vec::new();
    flatten("", &toml::Value::Table(effective), &mut rows);
    // The error reports' scrubber, with the config's own `drop_keys`.
    let drop_keys = config
        .errors
        .sentry
        .as_ref()
        .map(|s| s.drop_keys.clone())
        .unwrap_or_default();
    let scrubber = crate::ops::errors::scrub::Scrubber::new(&drop_keys);
    let rows: Vec<Row> = rows
        .into_iter()
        .map(|(key, value)| {
            let from = match config.overrides.iter().find(|o| covers(&o.key, &key)) {
                Some(o) => From::Env(o.var.clone()),
                None if lookup(&file, &key) => From::File,
                None => From::Default,
            };
            let value = mask(&scrubber, &key, value);
            Row { key, value, from }
        })
        .collect();
    let file_name = path.display().to_string();
    match output {
        Output::Human => {
            let from = |f: &From| match f {
                From::File => file_name.clone(),
                From::Env(var) => format!("env {var}"),
                From::Default => "default".into(),
            };
            println!(
                "{}",
                super::table::render(
                    &["key", "value", "from"],
                    rows.iter()
                        .map(|r| vec![r.key.clone(), inline(&r.value), from(&r.from)])
                )
            );
        }
        Output::Json => {
            let keys: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "key": r.key,
                        "value": serde_json::to_value(&r.value).unwrap_or(serde_json::Value::Null),
                        "from": match &r.from {
                            From::File => "file".to_string(),
                            From::Env(var) => var.clone(),
                            From::Default => "default".into(),
                        },
                    })
                })
                .collect();
            let overrides: Vec<serde_json::Value> = config
                .overrides
                .iter()
                .map(|o| serde_json::json!({ "var": o.var, "key": o.key }))
                .collect();
            println!(
                "{}",
                serde_json::json!({ "file": file_name, "overrides": overrides, "keys": keys })
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Leaves of `value` as (dotted key, value): tables open into their keys, arrays of tables
/// into `key[i].…`; other arrays stay whole.
fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<(String, toml::Value)>) {
    let join = |key: &str| {
        if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        }
    };
    match value {
        toml::Value::Table(table) if !table.is_empty() => {
            for (key, value) in table {
                flatten(&join(key), value, out);
            }
        }
        toml::Value::Array(items) if !items.is_empty() && items.iter().all(|i| i.is_table()) => {
            for (i, item) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), item, out);
            }
        }
        other => out.push((prefix.to_string(), other.clone())),
    }
}

/// `key` without its array indices (`bindings[0].plugin` → `bindings.plugin`).
fn without_indices(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut skipping = false;
    for c in key.chars() {
        match c {
            '[' => skipping = true,
            ']' => skipping = false,
            _ if !skipping => out.push(c),
            _ => {}
        }
    }
    out
}

/// Whether an override of `set` (a dotted key) sets `key` (a leaf, maybe with indices).
fn covers(set: &str, key: &str) -> bool {
    let key = without_indices(key);
    key == set || key.starts_with(&format!("{set}."))
}

/// Whether the file's table has `key` (a leaf, maybe with indices).
fn lookup(file: &toml::Table, key: &str) -> bool {
    let mut current = toml::Value::Table(file.clone());
    for part in key.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some(next) = current.get(name).cloned() else {
            return false;
        };
        current = match index {
            Some(i) => match next.get(i) {
                Some(item) => item.clone(),
                None => return false,
            },
            None => next,
        };
    }
    true
}

/// The value with secrets masked: values under a secret-looking name at any level of the key
/// (passwords, tokens, DSNs, keys, `errors.sentry.drop_keys`, …; not `*_env`, which name a
/// variable), the error webhook's URL (a Slack or Teams webhook URL is itself the secret),
/// and, in any other text, credentials in URLs and secret-looking `name=value` parts (the
/// error reports' scrubber).
fn mask(
    scrubber: &crate::ops::errors::scrub::Scrubber,
    key: &str,
    value: toml::Value,
) -> toml::Value {
    const MASK: &str = "***";
    let secret_name = key.split('.').any(|part| {
        let name = part.split('[').next().unwrap_or(part);
        scrubber.is_secret_key(name) && !name.ends_with("_env")
    });
    match value {
        toml::Value::String(s) if s.is_empty() => toml::Value::String(s),
        _ if secret_name || key == "errors.webhook_url" => toml::Value::String(MASK.into()),
        toml::Value::String(s) => {
            let redacted = crate::lock::redact(&s);
            toml::Value::String(scrubber.text(&redacted).into_owned())
        }
        toml::Value::Array(items) => toml::Value::Array(
            items
                .into_iter()
                .map(|item| mask(scrubber, key, item))
                .collect(),
        ),
        other => other,
    }
}

/// A value on one line, as TOML writes it inline.
fn inline(value: &toml::Value) -> String {
    match value {
        toml::Value::Table(t) if t.is_empty() => "{}".into(),
        other => other.to_string(),
    }
}

fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let config = crate::validate::load(path)?;
    crate::egress::startup::check_exports(&config)?;
    if config.bindings.is_empty() {
        println!(
            "{}: ok (no bindings: this config only publishes)",
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let set = PluginSet::scan(&config.plugin_dirs());
    match crate::route::bind(&config, &set, None, None, &crate::policy::Guards::new(None)) {
        Ok(routes) => {
            // What no file says: loops the running hosts of this config saw.
            for host in crate::plugins::watch::running_hosts(&config) {
                for warning in host.loop_warnings() {
                    println!("warning: {warning}");
                }
            }
            for warning in crate::config::policy::warnings(&config) {
                println!("warning: {warning}");
            }
            println!(
                "{}: ok ({} binding(s){}, {} plugin(s) loaded)",
                path.display(),
                routes.bindings().len(),
                if routes.has_default() {
                    ", with a default"
                } else {
                    ""
                },
                set.plugins.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => {
            bail!(crate::config::ConfigError::Invalid {
                path: path.to_path_buf(),
                problems
            })
        }
    }
}
