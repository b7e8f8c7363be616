//! `[[egress]]`, `[[ingress]]` and `[outbox]`: where published events go, the consumers that
//! feed the bindings, and where events an egress could not take wait (the entries are checked
//! by `egress::config`, which knows the built-in egresses).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Problem;

/// The built-in egress that publishes to the global topic (`sns.topic_arn`).
pub const BUILTIN_SNS: &str = "sns";
/// The built-in egress that sends to a queue (`config = { queue = "…" }`).
pub const BUILTIN_SQS: &str = "sqs";

/// One `[[egress]]` entry: where every published event also goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// `[publish]`: how published events are batched (SNS `PublishBatch`, SQS
/// `SendMessageBatch`); checked by `egress::batch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// How long an event waits for others to share its call before the batch goes out
    /// anyway (ms); a full batch goes at once.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Entries per call, 1–10 (the AWS limit).
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Batch calls in flight at once per destination.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Attempts per event (the first included) while a call or its entry fails with a
    /// retryable error.
    #[serde(default = "default_publish_attempts")]
    pub attempts: u32,
    /// First backoff before a retry (ms); doubles per attempt with jitter, up to 5 s.
    #[serde(default = "default_publish_min_backoff_ms")]
    pub min_backoff_ms: u64,
}

impl Default for PublishConfig {
    fn default() -> Self {
        Self {
            linger_ms: default_linger_ms(),
            max_batch: default_max_batch(),
            max_in_flight: default_max_in_flight(),
            attempts: default_publish_attempts(),
            min_backoff_ms: default_publish_min_backoff_ms(),
        }
    }
}

fn default_linger_ms() -> u64 {
    5
}
fn default_max_batch() -> usize {
    10
}
fn default_max_in_flight() -> usize {
    8
}
fn default_publish_attempts() -> u32 {
    5
}
fn default_publish_min_backoff_ms() -> u64 {
    50
}

/// `[outbox]`: where events an egress could not take wait, and how they are retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

impl OutboxConfig {
    /// The section's own shape: attempts, back-off and timeout ranges.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.attempts == 0 {
            problems.push(Problem::new(
                "outbox.attempts",
                "must be at least 1 (the first try counts)",
            ));
        }
        if self.min_backoff_ms == 0 {
            problems.push(Problem::new("outbox.min_backoff_ms", "must be above 0"));
        }
        if self.max_backoff_secs == 0 || self.max_backoff_secs * 1000 < self.min_backoff_ms {
            problems.push(Problem::new(
                "outbox.max_backoff_secs",
                "must be above 0 and at least outbox.min_backoff_ms",
            ));
        }
        if self.attempt_timeout_secs == 0 {
            problems.push(Problem::new(
                "outbox.attempt_timeout_secs",
                "must be above 0",
            ));
        }
        problems
    }
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
