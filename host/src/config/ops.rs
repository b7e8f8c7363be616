//! `[metrics]`, `[console]` and `[errors]`: what the host shows and reports to operators.

use serde::{Deserialize, Serialize};

use super::Problem;

/// `[metrics]`: Prometheus text at `/metrics` and readiness at `/health`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// The address to serve on, e.g. `"127.0.0.1:9090"`; none turns the endpoint off.
    #[serde(default)]
    pub listen: Option<String>,
}

impl MetricsConfig {
    /// The section's own shape: `listen` is an address and port.
    pub fn problems(&self) -> Vec<Problem> {
        match &self.listen {
            Some(listen) if listen.parse::<std::net::SocketAddr>().is_err() => vec![Problem::new(
                "metrics.listen",
                format!("`{listen}` is not an address and port, e.g. \"127.0.0.1:9090\" (remove the key to turn metrics off)"),
            )],
            _ => Vec::new(),
        }
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

/// `[errors]`: a structured record of every handler failure, POSTed as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl Default for ErrorsConfig {
    fn default() -> Self {
        Self {
            webhook_url: None,
            include_bodies: false,
            timeout_secs: default_webhook_timeout(),
        }
    }
}

fn default_webhook_timeout() -> u64 {
    5
}

impl ErrorsConfig {
    /// The section's own shape (the webhook URL is checked by `ops::errors`, which sends to it).
    pub fn problems(&self) -> Vec<Problem> {
        if self.timeout_secs == 0 {
            vec![Problem::new("errors.timeout_secs", "must be at least 1")]
        } else {
            Vec::new()
        }
    }
}
