//! Settling: the rules that decide a message's fate from its bindings' results ([`settle`]),
//! and carrying them out — delete (through the batch deleter), retry (visibility change),
//! dead letter — plus giving unstarted messages back and releasing locks.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Received};
use crate::lock::Held;
use crate::ops::metrics as m;
use crate::plugins::Outcome;
use crate::route::Binding;
use crate::wire::Envelope;

use super::invoke::CallResult;
use super::report::labels;
use super::state::{Delete, GiveBack, Shared, Slot};

/// What to do with a message once every binding has answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Every binding acked: delete.
    Delete,
    /// Make visible again after this many seconds.
    RetryAfter(u32),
    /// Leave it: it comes back after the visibility timeout.
    Leave,
    /// Move to the dead-letter queue with this reason.
    DeadLetter(String),
}

/// Decide a message's fate from its bindings' results.
pub fn settle(results: &[CallResult]) -> Settlement {
    if results.is_empty() {
        return Settlement::Leave;
    }
    if let Some(reason) = results.iter().find_map(|r| match r {
        CallResult::Outcome(Outcome::DeadLetter { reason }) => Some(reason.clone()),
        _ => None,
    }) {
        return Settlement::DeadLetter(reason);
    }
    if results
        .iter()
        .all(|r| matches!(r, CallResult::Outcome(Outcome::Ack)))
    {
        return Settlement::Delete;
    }
    let failed = results.iter().any(|r| {
        matches!(
            r,
            CallResult::TimedOut
                | CallResult::Crashed(_)
                | CallResult::Outcome(Outcome::Failed { .. } | Outcome::Panicked { .. })
        )
    });
    if failed {
        return Settlement::Leave;
    }
    let after = results
        .iter()
        .filter_map(|r| match r {
            CallResult::Outcome(Outcome::Retry { after_secs }) => Some(*after_secs),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    Settlement::RetryAfter(after)
}

impl Shared {
    /// Queue an acked message for the batch deleter; `false` if the deleter is gone.
    pub(super) fn delete(&self, message: &Received, envelope: &Envelope, slot: &Arc<Slot>) -> bool {
        let sent = self.deletes.send(Delete {
            receipt: message.receipt.clone(),
            message_id: envelope.message_id.clone(),
            event: envelope.event.clone(),
            _slot: slot.clone(),
        });
        if sent.is_err() {
            tracing::error!(message_id = %envelope.message_id, event = %envelope.event, "delete queue closed; the message will be redelivered");
            return false;
        }
        metrics::counter!(m::ACKED).increment(1);
        true
    }

    /// Settle a message by its results; `true` when it is gone from the queue.
    pub(super) async fn settle_message(
        &self,
        message: &Received,
        envelope: &Envelope,
        bindings: &[Arc<Binding>],
        results: &[CallResult],
        slot: &Arc<Slot>,
        held: &mut Option<Held>,
    ) -> bool {
        let id = &envelope.message_id;
        let event = &envelope.event;
        let labels = labels(bindings);
        match settle(results) {
            Settlement::Delete => {
                tracing::debug!(message_id = %id, event = %event, bindings = %labels, "every binding acked; deleting");
                self.delete(message, envelope, slot)
            }
            Settlement::Leave => {
                metrics::counter!(m::RETRIED, "reason" => "failed").increment(1);
                tracing::info!(message_id = %id, event = %event, bindings = %labels, receive_count = message.receive_count,
                    "not settled: left for redelivery after the visibility timeout");
                false
            }
            Settlement::RetryAfter(secs) => {
                metrics::counter!(m::RETRIED, "reason" => "retry").increment(1);
                // The lock goes first: with `after_secs` 0 the message is visible at once, and a
                // poller that took it while this lock still stood would have to leave it,
                // spending one of its deliveries.
                if let Some(held) = held.take() {
                    self.release(envelope, held).await;
                }
                if let Err(e) = self
                    .parts
                    .broker
                    .change_visibility(&message.receipt, secs)
                    .await
                {
                    tracing::warn!(message_id = %id, event = %event, bindings = %labels, error = %e, "cannot change visibility; the message returns after its visibility timeout");
                } else {
                    tracing::debug!(message_id = %id, event = %event, bindings = %labels, after_secs = secs, "retry: visible again after the delay");
                }
                false
            }
            Settlement::DeadLetter(reason) => {
                match self.parts.broker.dead_letter(message, &reason).await {
                    Ok(()) => {
                        metrics::counter!(m::DEAD_LETTERED).increment(1);
                        tracing::info!(message_id = %id, event = %event, bindings = %labels, reason = %reason, "moved to the dead-letter queue");
                        true
                    }
                    Err(e) => {
                        tracing::error!(message_id = %id, event = %event, bindings = %labels, error = %e, "cannot dead-letter the message; it stays on the queue for redelivery");
                        false
                    }
                }
            }
        }
    }

    /// Give received, unstarted messages back to the queue (visibility 0) so any consumer
    /// can take them now, and release their locks.
    pub(super) async fn give_back(
        &self,
        back: Vec<GiveBack>,
        held: Vec<Held>,
        reason: &'static str,
    ) {
        if back.is_empty() {
            return;
        }
        // The locks go first, while the messages are still invisible: a consumer that took one
        // the moment it is visible must not find it locked (and spend one of its deliveries).
        if !held.is_empty() {
            if let Err(e) = self.parts.locks.release(&held).await {
                tracing::warn!(count = held.len(), error = %e, "cannot release the message locks; they will expire");
            }
        }
        let receipts: Vec<String> = back.iter().map(|b| b.receipt.clone()).collect();
        let failed: HashMap<String, String> = match self
            .parts
            .broker
            .change_visibility_batch(&receipts, 0)
            .await
        {
            Ok(failures) => failures
                .into_iter()
                .map(|f| (f.receipt, f.reason))
                .collect(),
            Err(e) => receipts
                .iter()
                .map(|r| (r.clone(), e.to_string()))
                .collect(),
        };
        let mut given = 0u64;
        for b in &back {
            match failed.get(&b.receipt) {
                None => {
                    given += 1;
                    tracing::info!(message_id = %b.message_id, event = %b.event, reason, "given back unstarted: visible again at once");
                }
                Some(error) => {
                    tracing::warn!(message_id = %b.message_id, event = %b.event, reason, error = %error,
                        "cannot give the message back; it returns after its visibility timeout")
                }
            }
        }
        metrics::counter!(m::RELEASED, "reason" => reason).increment(given);
    }

    /// Release one message's lock (it expires otherwise).
    pub(super) async fn release(&self, envelope: &Envelope, held: Held) {
        if let Err(e) = self.parts.locks.release(&[held]).await {
            tracing::warn!(message_id = %envelope.message_id, event = %envelope.event, error = %e, "cannot release the message lock; it will expire");
        }
    }
}

/// Whether receiving has stopped because every in-flight slot holds an acked message whose
/// delete keeps failing: each message keeps its slot until its delete is done, so a broker
/// that refuses deletes stops the pollers, and without this nothing would say why.
struct DeleteStall {
    /// `sqs.max_in_flight`.
    slots: usize,
    stalled: bool,
}

impl DeleteStall {
    /// A delete attempt failed with `waiting` deletes queued or being retried.
    fn failed(&mut self, waiting: usize) {
        if self.stalled || waiting < self.slots {
            return;
        }
        self.stalled = true;
        metrics::counter!(m::DELETE_STALLS).increment(1);
        metrics::gauge!(m::DELETE_STALLED).set(1.0);
        tracing::warn!(
            slots = self.slots,
            waiting,
            "receiving has stopped: every in-flight slot holds an acked message whose delete keeps failing; it resumes when deletes succeed (or are given up and the messages redelivered)"
        );
    }

    /// A delete call succeeded (`deletes` = `"succeeded"`), or a batch was given up
    /// (`"given_up"`): its slots are free again.
    fn cleared(&mut self, waiting: usize, deletes: &'static str) {
        if !self.stalled || waiting >= self.slots {
            return;
        }
        self.stalled = false;
        metrics::gauge!(m::DELETE_STALLED).set(0.0);
        tracing::info!(
            slots = self.slots,
            waiting,
            deletes,
            "receiving resumes: in-flight slots are free again"
        );
    }
}

/// Batch deletes: up to 10 receipts per call, gathered for at most 20 ms; retryable failures
/// are retried with backoff, never dropped silently. `flush` ends it once what is queued is
/// sent. When every one of the `slots` in-flight slots waits on a delete that failed, it says
/// so once ([`DeleteStall`]).
pub(super) async fn run_deleter(
    broker: Arc<dyn Broker>,
    mut rx: mpsc::UnboundedReceiver<Delete>,
    flush: CancellationToken,
    slots: usize,
) {
    let mut stall = DeleteStall {
        slots,
        stalled: false,
    };
    loop {
        let first = tokio::select! {
            biased;
            next = rx.recv() => next,
            _ = flush.cancelled() => {
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else {
            break;
        };
        let mut batch = vec![first];
        let gather_until = Instant::now() + Duration::from_millis(20);
        while batch.len() < 10 {
            match tokio::time::timeout_at(gather_until, rx.recv()).await {
                Ok(Some(delete)) => batch.push(delete),
                _ => break,
            }
        }
        delete_with_retry(broker.as_ref(), batch, &rx, &mut stall).await;
    }
}

async fn delete_with_retry(
    broker: &dyn Broker,
    mut batch: Vec<Delete>,
    queued: &mpsc::UnboundedReceiver<Delete>,
    stall: &mut DeleteStall,
) {
    // A message delivered twice in one receive can bring the same receipt twice; SQS refuses
    // a batch with repeated entries (BatchEntryIdsNotDistinct), so send each receipt once.
    let mut seen = HashSet::new();
    batch.retain(|d| seen.insert(d.receipt.clone()));
    let mut backoff = Duration::from_millis(100);
    for attempt in 1..=8 {
        let receipts: Vec<String> = batch.iter().map(|d| d.receipt.clone()).collect();
        match broker.delete_batch(&receipts).await {
            Ok(failures) => {
                let mut failed: HashMap<String, (String, bool)> = failures
                    .into_iter()
                    .map(|f| (f.receipt, (f.reason, f.retryable)))
                    .collect();
                let mut retry = Vec::new();
                for delete in batch {
                    match failed.remove(&delete.receipt) {
                        None => {
                            tracing::debug!(message_id = %delete.message_id, event = %delete.event, "deleted")
                        }
                        Some((_, true)) => retry.push(delete),
                        Some((reason, false)) => {
                            metrics::counter!(m::DELETE_FAILURES).increment(1);
                            tracing::warn!(message_id = %delete.message_id, event = %delete.event, reason = %reason, "delete failed; the message will be redelivered");
                        }
                    }
                }
                if retry.is_empty() {
                    stall.cleared(queued.len(), "succeeded");
                    return;
                }
                batch = retry;
                stall.failed(batch.len() + queued.len());
            }
            Err(e) => {
                let ids: Vec<&str> = batch.iter().map(|d| d.message_id.as_str()).collect();
                tracing::warn!(attempt, message_ids = ?ids, error = %e, "batch delete failed; retrying");
                stall.failed(batch.len() + queued.len());
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    metrics::counter!(m::DELETE_FAILURES).increment(batch.len() as u64);
    for delete in &batch {
        tracing::error!(message_id = %delete.message_id, event = %delete.event,
            "giving up deleting an acked message; it will be redelivered");
    }
    // Their slots are free now.
    drop(batch);
    stall.cleared(queued.len(), "given_up");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> CallResult {
        CallResult::Outcome(Outcome::Ack)
    }

    #[test]
    fn settlement_rules() {
        assert_eq!(settle(&[ok(), ok()]), Settlement::Delete);
        assert_eq!(settle(&[]), Settlement::Leave);
        assert_eq!(
            settle(&[
                ok(),
                CallResult::Outcome(Outcome::Retry { after_secs: 3 }),
                CallResult::Outcome(Outcome::Retry { after_secs: 7 })
            ]),
            Settlement::RetryAfter(7)
        );
        assert_eq!(settle(&[ok(), CallResult::TimedOut]), Settlement::Leave);
        assert_eq!(
            settle(&[
                CallResult::Outcome(Outcome::Panicked {
                    message: "x".into()
                }),
                CallResult::Outcome(Outcome::Retry { after_secs: 1 })
            ]),
            Settlement::Leave
        );
        assert_eq!(
            settle(&[
                CallResult::TimedOut,
                CallResult::Outcome(Outcome::DeadLetter {
                    reason: "bad".into()
                })
            ]),
            Settlement::DeadLetter("bad".into())
        );
    }
}
