//! `[metrics]`, `[console]` and `[errors]`: what the host shows and reports to operators.

use serde::{Deserialize, Serialize};

use super::Problem;

/// `[metrics]`: Prometheus text at `/metrics` and readiness at `/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// The address to serve on, e.g. `"127.0.0.1:9090"`; none turns the endpoint off.
    #[serde(default)]
    pub listen: Option<String>,
    /// How often the queue and dead-letter queue depths are read for
    /// `iniesta_queue_messages` (s); 0 turns it off.
    #[serde(default = "default_queue_depth_interval")]
    pub queue_depth_interval_secs: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: None,
            queue_depth_interval_secs: default_queue_depth_interval(),
        }
    }
}

fn default_queue_depth_interval() -> u64 {
    30
}

impl MetricsConfig {
    /// The section's own shape: `listen` is an address and port.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Some(listen) = &self.listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                problems.push(Problem::new(
                    "metrics.listen",
                    format!("`{listen}` is not an address and port, e.g. \"127.0.0.1:9090\" (remove the key to turn metrics off)"),
                ));
            }
        }
        if self.queue_depth_interval_secs > 3600 {
            problems.push(Problem::new(
                "metrics.queue_depth_interval_secs",
                format!(
                    "{} is over 3600 (an hour); 0 turns the queue depth gauges off",
                    self.queue_depth_interval_secs
                ),
            ));
        }
        problems
    }
}

/// `[console]`: the operator page at `/` of the metrics server (plugins, bindings, throughput,
/// failures, the dead-letter queue with redrive). Served on `metrics.listen`, or on
/// `127.0.0.1:9090` when that is unset.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve the console.
    #[serde(default)]
    pub enabled: bool,
    /// The environment variable holding the access token; required when the server listens
    /// on a non-loopback address. Every console request must carry it.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Show message bodies in the dead-letter list (hidden by default).
    #[serde(default)]
    pub show_bodies: bool,
}

/// `[errors]`: every handler failure reported — as a JSON record POSTed to `webhook_url`,
/// and/or as a Sentry event (`[errors.sentry]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorsConfig {
    /// Where records are POSTed (`http://` or `https://`); none turns reporting off.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Whether records carry the message body (redacted by default).
    #[serde(default)]
    pub include_bodies: bool,
    /// How long one POST may take (s).
    #[serde(default = "default_webhook_timeout")]
    pub timeout_secs: u64,
    /// `[errors.sentry]`: native Sentry reporting (microcosm-pubsub's `sentry_logging`).
    #[serde(default)]
    pub sentry: Option<SentryConfig>,
}

impl Default for ErrorsConfig {
    fn default() -> Self {
        Self {
            webhook_url: None,
            include_bodies: false,
            timeout_secs: default_webhook_timeout(),
            sentry: None,
        }
    }
}

/// `[errors.sentry]`: one Sentry event per handler failure, and one per host-level incident
/// (a broker or lock outage, a refused plugin or config), sent to a Sentry project's DSN.
///
/// The names follow microcosm-pubsub's `sentry_logging`: `enabled`, `dsn`, `tags` (its
/// `custom_tags_mapping`), `user_id` (its `custom_user_id`). A source in `tags` / `user_id` is
/// `attributes.NAME` (a message attribute), `body.PATH` (a field of a JSON body, dotted for
/// nested objects), or a bare `NAME`, looked up as microcosm does in the body's `opaqueData`
/// object and then among the message attributes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentryConfig {
    /// Report to Sentry (default `true` once the section is there).
    #[serde(default = "super::default_true")]
    pub enabled: bool,
    /// The project's DSN (`https://KEY@HOST/PROJECT_ID`); when absent, `SENTRY_DSN` from the
    /// environment. Never logged.
    #[serde(default)]
    pub dsn: Option<String>,
    /// The Sentry environment; default: the top-level `env`.
    #[serde(default)]
    pub environment: Option<String>,
    /// The release; default `iniesta@VERSION` (the plugin's name and version are tags).
    #[serde(default)]
    pub release: Option<String>,
    /// The share of failure events sent, from 0.0 to 1.0 (host-level events are always sent).
    #[serde(default = "default_sample_rate")]
    pub sample_rate: f64,
    /// Which message data becomes which Sentry tag: `source = "tag-name"`.
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
    /// The source of the Sentry `user.id`.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Send the message body (scrubbed of secret-looking fields) with the event; off by default.
    #[serde(default)]
    pub include_bodies: bool,
    /// More attribute, body-field and tag names never sent (on top of the secret-looking ones).
    #[serde(default)]
    pub drop_keys: Vec<String>,
    /// How long one delivery to Sentry may take (s), and how long shutdown waits for the queue.
    #[serde(default = "default_webhook_timeout")]
    pub timeout_secs: u64,
}

fn default_sample_rate() -> f64 {
    1.0
}

fn default_webhook_timeout() -> u64 {
    5
}

impl ErrorsConfig {
    /// The section's own shape (the webhook URL is checked by `ops::errors`, which sends to it).
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.timeout_secs == 0 {
            problems.push(Problem::new("errors.timeout_secs", "must be at least 1"));
        }
        if let Some(sentry) = &self.sentry {
            if !(0.0..=1.0).contains(&sentry.sample_rate) {
                problems.push(Problem::new(
                    "errors.sentry.sample_rate",
                    format!("{} is not between 0.0 and 1.0", sentry.sample_rate),
                ));
            }
            if sentry.timeout_secs == 0 {
                problems.push(Problem::new(
                    "errors.sentry.timeout_secs",
                    "must be at least 1",
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_depth_interval_is_bounded_and_zero_turns_it_off() {
        let mut m = MetricsConfig::default();
        assert_eq!(m.queue_depth_interval_secs, 30);
        assert!(m.problems().is_empty());
        m.queue_depth_interval_secs = 0;
        assert!(m.problems().is_empty(), "0 turns it off");
        m.queue_depth_interval_secs = 3601;
        let problems = m.problems();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "metrics.queue_depth_interval_secs");
        m.listen = Some("nowhere".into());
        assert_eq!(m.problems().len(), 2, "both keys are reported");
    }
}
