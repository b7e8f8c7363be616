//! `[tracing]`: distributed tracing over OTLP (used by [`crate::telemetry`]).

use serde::{Deserialize, Serialize};

use super::Problem;

/// `[tracing]`. Off unless `otlp_endpoint` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// Where spans are exported, over OTLP/HTTP with protobuf bodies: the collector's traces
    /// URL, e.g. `http://127.0.0.1:4318/v1/traces`. Unset: no spans, no trace attributes.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The share of new traces recorded, 0.0–1.0 (a trace a message already belongs to follows
    /// its producer's sampling decision).
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// The `service.name` of the spans (default: `service`).
    #[serde(default)]
    pub service_name: Option<String>,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: None,
            sample_ratio: default_sample_ratio(),
            service_name: None,
        }
    }
}

fn default_sample_ratio() -> f64 {
    1.0
}

impl TracingConfig {
    /// The section's own shape.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Some(endpoint) = &self.otlp_endpoint {
            let scheme = endpoint
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| u.scheme_str().map(str::to_string));
            if !matches!(scheme.as_deref(), Some("http" | "https")) {
                problems.push(Problem::new(
                    "tracing.otlp_endpoint",
                    format!("`{endpoint}` is not an http:// or https:// URL, e.g. \"http://127.0.0.1:4318/v1/traces\""),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            problems.push(Problem::new(
                "tracing.sample_ratio",
                format!("{} is outside 0.0–1.0", self.sample_ratio),
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems() {
        assert!(TracingConfig::default().problems().is_empty());
        let bad = TracingConfig {
            otlp_endpoint: Some("collector:4318".into()),
            sample_ratio: 1.5,
            service_name: None,
        };
        let keys: Vec<String> = bad.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["tracing.otlp_endpoint", "tracing.sample_ratio"]);
        let good = TracingConfig {
            otlp_endpoint: Some("https://otel.example.com/v1/traces".into()),
            sample_ratio: 0.1,
            service_name: Some("orders".into()),
        };
        assert!(good.problems().is_empty());
    }
}
