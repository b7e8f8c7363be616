//! One locked message from routing to settlement: route it, skip the bindings that already
//! completed it, run the rest (through [`super::invoke`]), report and settle.

use std::sync::Arc;

use crate::broker::Received;
use crate::lock::{completion, Claim};
use crate::ops::errors::FailureKind;
use crate::ops::metrics as m;
use crate::plugins::Outcome;
use crate::route::Binding;
use crate::wire::Envelope;

use super::invoke::{self, CallResult, Hold, Recorder};
use super::keepalive::Keeper;
use super::report::{labels, log_results, report_failure, report_failures};
use super::state::{GiveBack, Shared, Taken};

impl Shared {
    /// Route, run and settle one locked message; `true` when it is gone from the queue
    /// (deleted or dead-lettered), which lets the rest of its FIFO group go on.
    pub(super) async fn run_message(
        self: &Arc<Self>,
        taken: Taken,
        claim: Claim,
        keeper: Keeper,
    ) -> bool {
        let Taken {
            message,
            envelope,
            slot,
            ..
        } = taken;
        if self.shutdown.is_cancelled() {
            // Unstarted at shutdown: give it back at once.
            keeper.stop().await;
            self.give_back(
                vec![GiveBack {
                    receipt: message.receipt.clone(),
                    message_id: envelope.message_id.clone(),
                    event: envelope.event.clone(),
                }],
                vec![claim.held.clone()],
                "shutdown",
            )
            .await;
            return false;
        }
        // Taken (`None`) when a retry releases it early.
        let mut held = Some(claim.held.clone());
        let (envelope, keeper) = match self
            .fetch_claim(
                &message,
                envelope,
                keeper,
                &mut held,
                !claim.completed.is_empty(),
            )
            .await
        {
            Ok(fetched) => fetched,
            Err(gone) => return gone,
        };
        let routes = self.parts.routes.load_full();
        let bindings: Vec<Arc<Binding>> = routes.route(&envelope).into_iter().cloned().collect();
        let gone = if bindings.is_empty() {
            keeper.stop().await;
            metrics::counter!(m::RETRIED, "reason" => "unbound").increment(1);
            tracing::warn!(message_id = %envelope.message_id, event = %envelope.event, receive_count = message.receive_count,
                "no binding takes this event and there is no default binding; left on the queue for the redrive policy (add a binding or a default)");
            false
        } else if let Some(reason) = crate::route::schema::rejection(&envelope, &bindings) {
            // Validation (route/schema.rs): a body failing a binding's JSON Schema is
            // dead-lettered with the errors as the reason; no handler runs.
            keeper.stop().await;
            self.report(FailureKind::Schema, None, &message, &envelope, &reason);
            let invalid = CallResult::Outcome(Outcome::DeadLetter { reason });
            self.settle_message(&message, &envelope, &bindings, &[invalid], &mut held)
                .await
        } else {
            let records = !self.parts.settings.completion_ttl.is_zero();
            let (done, todo): (Vec<_>, Vec<_>) = bindings
                .into_iter()
                .partition(|b| records && claim.completed.contains(&completion::id_of(b)));
            if todo.is_empty() {
                keeper.stop().await;
                tracing::info!(message_id = %envelope.message_id, event = %envelope.event, receive_count = message.receive_count, bindings = %labels(&done),
                    "every binding already completed this message (a redelivered duplicate); deleting it without running anything");
                self.delete(&message, &envelope, &mut held).await
            } else {
                if !done.is_empty() {
                    tracing::info!(message_id = %envelope.message_id, event = %envelope.event, receive_count = message.receive_count, skipped = %labels(&done),
                        "bindings that already completed this message are not run again");
                }
                // An open circuit: the message goes back, unhandled, until the cooldown ends.
                let probes = match invoke::admit(&todo) {
                    Ok(probes) => probes,
                    Err((wait, open)) => {
                        keeper.stop().await;
                        let secs = invoke::wait_secs(wait);
                        tracing::info!(message_id = %envelope.message_id, event = %envelope.event, receive_count = message.receive_count, open = ?open, after_secs = secs,
                            "a binding's circuit is open: the message goes back to the queue unhandled, visible again after the cooldown");
                        self.retry_later(
                            &message,
                            &envelope,
                            &labels(&todo),
                            secs,
                            "circuit_open",
                            &mut held,
                        )
                        .await;
                        // (retry_later released the lock.)
                        return false;
                    }
                };
                let record = records.then(|| Recorder {
                    locks: self.parts.locks.clone(),
                    ttl: self.parts.settings.completion_ttl,
                });
                let hold: Hold = slot.clone();
                let results = invoke::call_all(
                    &envelope,
                    message.receive_count,
                    &todo,
                    &hold,
                    record.as_ref(),
                    &probes,
                    crate::telemetry::parent_of(
                        &envelope.attributes,
                        message.aws_trace_header.as_deref(),
                    )
                    .as_ref(),
                )
                .await;
                log_results(message.receive_count, &envelope, &todo, &results);
                self.summary.record(&todo, &results);
                self.report_results(&message, &envelope, &todo, &results);
                // The heartbeat stops the moment the handlers return.
                match keeper.finish().await {
                    Ok(()) => {
                        self.settle_message(&message, &envelope, &todo, &results, &mut held)
                            .await
                    }
                    Err(reason) => {
                        metrics::counter!(m::LOCK_FAILURES, "reason" => "lost").increment(1);
                        metrics::counter!(m::RETRIED, "reason" => "lock_lost").increment(1);
                        tracing::error!(message_id = %envelope.message_id, event = %envelope.event, bindings = %labels(&todo), reason = %reason,
                            "the message lock was lost while its handlers ran; not settling the message (no delete, retry or dead letter): it will be redelivered, and bindings that acked will not run again");
                        false
                    }
                }
            }
        };
        if let Some(held) = held {
            self.release(&envelope, held).await;
        }
        gone
    }

    /// Send every failing result to the error webhook and the console (when configured).
    fn report_results(
        &self,
        message: &Received,
        envelope: &Envelope,
        bindings: &[Arc<Binding>],
        results: &[CallResult],
    ) {
        report_failures(
            self.parts.errors.as_ref(),
            self.parts.failures.as_deref(),
            message.receive_count,
            envelope,
            bindings,
            results,
        );
    }

    pub(super) fn report(
        &self,
        kind: FailureKind,
        binding: Option<&Arc<Binding>>,
        message: &Received,
        envelope: &Envelope,
        reason: &str,
    ) {
        report_failure(
            self.parts.errors.as_ref(),
            self.parts.failures.as_deref(),
            kind,
            binding,
            message.receive_count,
            envelope,
            reason,
        );
    }
}
