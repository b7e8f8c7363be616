//! Operating a running host: Prometheus metrics and readiness over HTTP ([`metrics`],
//! [`health`], [`server`]), structured reports of handler failures ([`errors`]) and JSON
//! logs that stay JSON when plugins write to stderr ([`logs`]), and the operator web page
//! ([`console`]) on the same server; queue depths as gauges ([`depth`]).
//!
//! All of it is optional and off by default: `[metrics] listen` turns the endpoint on,
//! `[errors] webhook_url` and `[errors.sentry]` the reports. Without a listener no metrics recorder is installed and
//! every metric call in the pipeline is a no-op.

pub mod console;
pub mod depth;
pub mod errors;
pub mod health;
pub mod logs;
pub mod metrics;
pub mod server;
pub mod values;

/// Failures setting up the operations endpoints.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The metrics address could not be bound.
    #[error("metrics.listen = {addr}: cannot listen: {source} (pick a free port, or remove [metrics] listen)")]
    Bind {
        /// The configured address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The metrics address is not an address.
    #[error("metrics.listen = {0}: not an address and port, e.g. \"127.0.0.1:9090\"")]
    Address(String),
    /// The Prometheus recorder could not be installed.
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(String),
    /// The console cannot be served as configured.
    #[error("console: {0}")]
    Console(String),
    /// The webhook URL cannot be used.
    #[error("errors.webhook_url: {0}")]
    Webhook(String),
    /// Sentry reporting cannot start as configured.
    #[error("errors.sentry: {0}")]
    Sentry(String),
}
