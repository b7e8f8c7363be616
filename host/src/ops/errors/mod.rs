//! Error reporting (microcosm-pubsub's Sentry role): every handler failure — an error, a
//! panic, a timeout, a worker crash, a dead letter, a schema rejection — goes to the sinks
//! `[errors]` configures:
//!
//! - [`webhook`]: a JSON record POSTed to `errors.webhook_url`;
//! - [`sentry`]: a Sentry event sent to `errors.sentry.dsn`, grouped per binding, failure kind
//!   and error type, scrubbed by [`scrub`], queued by [`sentry_transport`]; host-level
//!   incidents (a broker or lock outage, a refused plugin or config) reach Sentry through the
//!   tracing layer in [`alerts`], once per state change.
//!
//! Reporting never holds up or fails the pipeline: each sink has a bounded queue whose
//! overflow is dropped and counted (`iniesta_error_reports_total{sink, result="dropped"}`), and
//! shutdown flushes what is queued within the sink's timeout.

pub mod alerts;
pub mod scrub;
pub mod sentry;
pub mod sentry_transport;
pub mod webhook;

use serde::Serialize;

use super::OpsError;
use crate::config::{Config, Problem};
use crate::route::Binding;
use crate::tasks::Tasks;
use crate::wire::Envelope;

/// What kind of failure a report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The handler returned an error.
    Error,
    /// The handler panicked (caught at the plugin boundary).
    Panic,
    /// The handler ran past its timeout and was abandoned.
    Timeout,
    /// A handler dead-lettered the message.
    DeadLetter,
    /// The body failed a binding's JSON Schema and was dead-lettered before any handler ran.
    Schema,
    /// The handler's task (or its isolated worker) failed in the host.
    Crashed,
    /// The message's S3 claim check could not be read (bucket not trusted, object gone or too
    /// large) and it was dead-lettered before any handler ran.
    ClaimCheck,
}

impl FailureKind {
    /// The kind as written in reports and tags (`error`, `panic`, `timeout`, `dead_letter`,
    /// `schema`, `crashed`, `claim_check`).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Error => "error",
            FailureKind::Panic => "panic",
            FailureKind::Timeout => "timeout",
            FailureKind::DeadLetter => "dead_letter",
            FailureKind::Schema => "schema",
            FailureKind::Crashed => "crashed",
            FailureKind::ClaimCheck => "claim_check",
        }
    }
}

/// One failure, as the pipeline saw it.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    /// What happened.
    pub kind: FailureKind,
    /// The binding whose handler failed; none for a schema rejection.
    pub binding: Option<&'a Binding>,
    /// The message.
    pub envelope: &'a Envelope,
    /// Deliveries so far, this one included.
    pub receive_count: u32,
    /// The error, panic message, timeout or dead-letter reason.
    pub reason: &'a str,
}

/// Hands failures to the configured sinks in the background; cheap to clone.
#[derive(Clone, Debug)]
pub struct ErrorReporter {
    webhook: Option<webhook::Webhook>,
    sentry: Option<sentry::SentryReporter>,
}

impl ErrorReporter {
    /// Start the sinks `[errors]` configures (their senders are tasks of `tasks`); `None` when
    /// none is.
    pub fn start(config: &Config, tasks: &Tasks) -> Result<Option<ErrorReporter>, OpsError> {
        let webhook = webhook::Webhook::start(config, tasks)?;
        let sentry = sentry::SentryReporter::start(config, tasks)?;
        if webhook.is_none() && sentry.is_none() {
            return Ok(None);
        }
        // Host-level incidents logged from now on reach Sentry too.
        alerts::register(sentry.clone());
        Ok(Some(ErrorReporter { webhook, sentry }))
    }

    /// Queue a failure for every sink; never waits (a full queue drops it, counted).
    pub fn report(&self, failure: &Failure<'_>) {
        if let Some(webhook) = &self.webhook {
            webhook.report(failure);
        }
        if let Some(sentry) = &self.sentry {
            sentry.report(failure);
        }
    }

    /// Wait (each sink up to its own `timeout_secs`) for the queued reports to be sent, once
    /// the pipeline has stopped; for shutdown.
    pub async fn flush(self) {
        let webhook = async {
            if let Some(webhook) = self.webhook {
                webhook.flush().await;
            }
        };
        alerts::register(None);
        let sentry = async {
            if let Some(sentry) = self.sentry {
                sentry.flush().await;
            }
        };
        tokio::join!(webhook, sentry);
    }
}

/// Problems with the sinks' settings: the webhook URL, the Sentry DSN and sources.
pub fn problems(config: &Config) -> Vec<Problem> {
    let mut problems = webhook::problems(config);
    problems.extend(sentry::problems(config));
    problems
}

/// Now, as RFC 3339 (UTC).
fn now_rfc3339() -> String {
    aws_smithy_types::DateTime::from(std::time::SystemTime::now())
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_default()
}

/// Count one report of `sink` (`webhook`, `sentry`) by `result` in
/// `iniesta_error_reports_total`.
pub(crate) fn count(sink: &'static str, result: &'static str) {
    metrics::counter!(crate::ops::metrics::ERROR_REPORTS, "sink" => sink, "result" => result)
        .increment(1);
}
