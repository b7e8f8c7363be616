//! `[[egress]]`, `[[ingress]]` and `[outbox]` in `iniesta.toml`.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Deserialize;

use crate::config::{Config, Problem};

/// The built-in egress that publishes to the global topic (`sns.topic_arn`).
pub const BUILTIN_SNS: &str = "sns";
/// The built-in egress that sends to a queue (`config = { queue = "…" }`).
pub const BUILTIN_SQS: &str = "sqs";

/// One `[[egress]]` entry: where every published event also goes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// `sns`, `sqs`, or a plugin exporting an egress.
    pub plugin: String,
    /// Which of the plugin's egresses (optional when it exports one).
    #[serde(default)]
    pub egress: Option<String>,
    /// The name used in logs, metrics and the outbox (default `plugin`, or `plugin.profile`);
    /// unique among `[[egress]]` entries.
    #[serde(default)]
    pub name: Option<String>,
    /// A credential profile from the acct file (`[plugin.profile]`).
    #[serde(default)]
    pub profile: Option<String>,
    /// Settings handed to the constructor, over the profile's (not secret: this file is not
    /// encrypted).
    #[serde(default)]
    pub config: Option<toml::Value>,
    /// A media type written into the JSON object bodies this egress sends (`mediaType`, as
    /// microcosm-pubsub consumers require) and the `media_type` attribute.
    #[serde(default)]
    pub media_type: Option<String>,
}

/// One `[[ingress]]` entry: a consumer that feeds the bindings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressConfig {
    /// A plugin exporting an ingress.
    pub plugin: String,
    /// Which of the plugin's ingresses (optional when it exports one).
    #[serde(default)]
    pub ingress: Option<String>,
    /// The name used in logs and metrics (default `plugin`, or `plugin.profile`).
    #[serde(default)]
    pub name: Option<String>,
    /// A credential profile from the acct file (`[plugin.profile]`).
    #[serde(default)]
    pub profile: Option<String>,
    /// Settings handed to the constructor, over the profile's.
    #[serde(default)]
    pub config: Option<toml::Value>,
}

/// `[outbox]`: where events an egress could not take wait, and how they are retried.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// The SQLite file (relative to the config file's directory).
    #[serde(default = "default_outbox_path")]
    pub path: PathBuf,
    /// Attempts per egress while publishing, before the event goes to the outbox.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// First backoff delay (ms); doubles per attempt.
    #[serde(default = "default_min_backoff_ms")]
    pub min_backoff_ms: u64,
    /// Longest backoff delay between outbox redeliveries (s).
    #[serde(default = "default_max_backoff_secs")]
    pub max_backoff_secs: u64,
    /// How long one delivery attempt may take (s).
    #[serde(default = "default_attempt_timeout_secs")]
    pub attempt_timeout_secs: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            path: default_outbox_path(),
            attempts: default_attempts(),
            min_backoff_ms: default_min_backoff_ms(),
            max_backoff_secs: default_max_backoff_secs(),
            attempt_timeout_secs: default_attempt_timeout_secs(),
        }
    }
}

fn default_outbox_path() -> PathBuf {
    PathBuf::from(".iniesta/outbox.db")
}
fn default_attempts() -> u32 {
    3
}
fn default_min_backoff_ms() -> u64 {
    200
}
fn default_max_backoff_secs() -> u64 {
    60
}
fn default_attempt_timeout_secs() -> u64 {
    10
}

impl OutboxConfig {
    /// The longest a publish can wait for one failing egress before the event goes to the
    /// outbox: every inline attempt timing out, plus the back-off between them (s).
    pub fn worst_inline_secs(&self) -> u64 {
        let attempts = self.attempts.max(1);
        let backoff_ms: u64 = (1..attempts)
            .map(|i| {
                self.min_backoff_ms
                    .saturating_mul(1 << (i - 1).min(20))
                    .min(self.max_backoff_secs.saturating_mul(1000))
            })
            .sum();
        u64::from(attempts)
            .saturating_mul(self.attempt_timeout_secs)
            .saturating_add(backoff_ms / 1000)
    }
}

impl EgressConfig {
    /// The egress's name: `name`, else `plugin.profile`, else `plugin`.
    pub fn label(&self) -> String {
        label(&self.name, &self.plugin, &self.profile)
    }
}

impl IngressConfig {
    /// The ingress's name: `name`, else `plugin.profile`, else `plugin`.
    pub fn label(&self) -> String {
        label(&self.name, &self.plugin, &self.profile)
    }
}

fn label(name: &Option<String>, plugin: &str, profile: &Option<String>) -> String {
    match (name, profile) {
        (Some(name), _) => name.clone(),
        (None, Some(profile)) => format!("{plugin}.{profile}"),
        (None, None) => plugin.to_string(),
    }
}

/// Problems in `[[egress]]`, `[[ingress]]` and `[outbox]` that need no plugin to find.
pub fn problems(config: &Config, problems: &mut Vec<Problem>) {
    let mut bad = |key: String, message: String| problems.push(Problem { key, message });
    let mut names = HashSet::new();
    for (i, e) in config.egress.iter().enumerate() {
        let key = format!("egress[{i}]");
        if e.plugin.trim().is_empty() {
            bad(
                format!("{key}.plugin"),
                "must name `sns`, `sqs` or an egress plugin".into(),
            );
        }
        if !names.insert(e.label()) {
            bad(
                format!("{key}.name"),
                format!(
                    "`{}` names two egresses; give one a distinct `name = \"…\"` (the outbox keeps events per name)",
                    e.label()
                ),
            );
        }
        if let Some(c) = &e.config {
            if !c.is_table() {
                bad(
                    format!("{key}.config"),
                    "must be a table, e.g. config = { path = \"events.jsonl\" }".into(),
                );
            }
        }
        if let Some(media_type) = &e.media_type {
            if media_type.trim().is_empty() || media_type.chars().any(char::is_whitespace) {
                bad(
                    format!("{key}.media_type"),
                    "must be a media type without spaces, e.g. \"application/vnd.globality.pubsub._.created.order\"".into(),
                );
            }
        }
        match e.plugin.as_str() {
            BUILTIN_SNS if config.sns.topic_arn.is_none() => bad(
                format!("{key}.plugin"),
                "the built-in `sns` egress publishes to sns.topic_arn, which is not set".into(),
            ),
            BUILTIN_SQS => {
                let queue = e
                    .config
                    .as_ref()
                    .and_then(|c| c.get("queue"))
                    .and_then(|q| q.as_str());
                if queue.is_none_or(|q| q.trim().is_empty()) {
                    bad(
                        format!("{key}.config"),
                        "the built-in `sqs` egress needs the queue: config = { queue = \"name\" }"
                            .into(),
                    );
                }
            }
            _ => {}
        }
    }
    let mut names = HashSet::new();
    for (i, e) in config.ingress.iter().enumerate() {
        let key = format!("ingress[{i}]");
        if e.plugin.trim().is_empty() {
            bad(
                format!("{key}.plugin"),
                "must name an ingress plugin".into(),
            );
        }
        if !names.insert(e.label()) {
            bad(
                format!("{key}.name"),
                format!(
                    "`{}` names two ingresses; give one a distinct `name = \"…\"`",
                    e.label()
                ),
            );
        }
        if let Some(c) = &e.config {
            if !c.is_table() {
                bad(format!("{key}.config"), "must be a table".into());
            }
        }
    }
    let o = &config.outbox;
    if o.attempts == 0 {
        bad(
            "outbox.attempts".into(),
            "must be at least 1 (the first try counts)".into(),
        );
    }
    if o.min_backoff_ms == 0 {
        bad("outbox.min_backoff_ms".into(), "must be above 0".into());
    }
    if o.max_backoff_secs == 0 || o.max_backoff_secs * 1000 < o.min_backoff_ms {
        bad(
            "outbox.max_backoff_secs".into(),
            "must be above 0 and at least outbox.min_backoff_ms".into(),
        );
    }
    if o.attempt_timeout_secs == 0 {
        bad(
            "outbox.attempt_timeout_secs".into(),
            "must be above 0".into(),
        );
    }
}

/// An entry's constructor config: its profile's settings with its own `config` table over
/// them, as JSON text. Never log the result: it holds the profile's secrets.
pub fn constructor_config(
    profile: Option<&serde_json::Map<String, serde_json::Value>>,
    own: Option<&toml::Value>,
) -> String {
    let mut merged = profile.cloned().unwrap_or_default();
    if let Some(toml::Value::Table(own)) = own {
        if let Ok(serde_json::Value::Object(own)) = serde_json::to_value(own) {
            merged.extend(own);
        }
    }
    serde_json::Value::Object(merged).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_inline_publish_time_adds_attempts_and_back_off() {
        let o = OutboxConfig::default();
        // 3 attempts of 10 s, back-off 200 ms + 400 ms.
        assert_eq!(o.worst_inline_secs(), 30);
        let o = OutboxConfig {
            attempts: 4,
            min_backoff_ms: 1000,
            max_backoff_secs: 3,
            attempt_timeout_secs: 2,
            ..OutboxConfig::default()
        };
        // 4 × 2 s + (1 + 2 + 3) s.
        assert_eq!(o.worst_inline_secs(), 14);
    }
}
