//! What handlers' results are told to: the log, the error reporter (webhook, Sentry) and the
//! console's recent failures.

use std::sync::Arc;

use crate::ops::console::RecentFailures;
use crate::ops::errors::{ErrorReporter, Failure, FailureKind};
use crate::plugins::Outcome;
use crate::route::Binding;
use crate::wire::Envelope;

use super::invoke::CallResult;

/// Report every failing result (error, panic, timeout, crash, dead letter) of one message's
/// calls to the error reporter and the console's recent failures, when they are configured.
/// Used for queue messages and ingress messages alike.
pub fn report_failures(
    errors: Option<&ErrorReporter>,
    failures: Option<&RecentFailures>,
    receive_count: u32,
    envelope: &Envelope,
    bindings: &[Arc<Binding>],
    results: &[CallResult],
) {
    for (binding, result) in bindings.iter().zip(results) {
        let (kind, reason) = match result {
            CallResult::Outcome(Outcome::Ack | Outcome::Retry { .. }) => continue,
            CallResult::Outcome(Outcome::DeadLetter { reason }) => {
                (FailureKind::DeadLetter, reason.clone())
            }
            CallResult::Outcome(Outcome::Failed { reason }) => (FailureKind::Error, reason.clone()),
            CallResult::Outcome(Outcome::Panicked { message }) => {
                (FailureKind::Panic, message.clone())
            }
            CallResult::TimedOut => (
                FailureKind::Timeout,
                format!("ran past its timeout of {} s", binding.timeout.as_secs()),
            ),
            CallResult::Crashed(e) => (FailureKind::Crashed, e.clone()),
        };
        report_failure(
            errors,
            failures,
            kind,
            Some(binding),
            receive_count,
            envelope,
            &reason,
        );
    }
}

/// Report one failure to the error reporter and the console's recent failures.
pub fn report_failure(
    errors: Option<&ErrorReporter>,
    failures: Option<&RecentFailures>,
    kind: FailureKind,
    binding: Option<&Arc<Binding>>,
    receive_count: u32,
    envelope: &Envelope,
    reason: &str,
) {
    if let Some(failures) = failures {
        failures.push(
            kind,
            binding.map(|b| b.label.as_str()),
            &envelope.event,
            &envelope.message_id,
            receive_count,
            reason,
        );
    }
    if let Some(errors) = errors {
        errors.report(&Failure {
            kind,
            binding: binding.map(|b| b.as_ref()),
            envelope,
            receive_count,
            reason,
        });
    }
}

/// The bindings' labels, for log lines.
pub fn labels(bindings: &[Arc<Binding>]) -> String {
    bindings
        .iter()
        .map(|b| b.label.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Log each binding's result for a queue message delivered for the `receive_count`th time.
pub fn log_results(
    receive_count: u32,
    envelope: &Envelope,
    bindings: &[Arc<Binding>],
    results: &[CallResult],
) {
    let id = &envelope.message_id;
    let event = &envelope.event;
    for (binding, result) in bindings.iter().zip(results) {
        match result {
            CallResult::Outcome(Outcome::Ack) => {
                tracing::debug!(message_id = %id, event = %event, binding = %binding.label, "acked")
            }
            CallResult::Outcome(Outcome::Retry { after_secs }) => {
                tracing::info!(message_id = %id, event = %event, binding = %binding.label, after_secs, "handler asked to retry")
            }
            CallResult::Outcome(Outcome::DeadLetter { reason }) => {
                tracing::warn!(message_id = %id, event = %event, binding = %binding.label, reason = %reason, "handler dead-lettered the message")
            }
            CallResult::Outcome(Outcome::Failed { reason }) => {
                tracing::warn!(message_id = %id, event = %event, binding = %binding.label, error = %reason, receive_count, "handler failed")
            }
            CallResult::Outcome(Outcome::Panicked { message: text }) => {
                tracing::error!(message_id = %id, event = %event, binding = %binding.label, panic = %text, receive_count, "handler panicked")
            }
            CallResult::TimedOut => {
                tracing::error!(message_id = %id, event = %event, binding = %binding.label, timeout_secs = binding.timeout.as_secs(), "handler timed out")
            }
            CallResult::Crashed(e) => {
                tracing::error!(message_id = %id, event = %event, binding = %binding.label, error = %e, "handler crashed")
            }
        }
    }
}
