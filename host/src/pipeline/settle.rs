//! Settling: the rules that decide a message's fate from its bindings' results ([`settle`]),
//! and carrying them out — delete (through the batch deleter), retry (visibility change),
//! dead letter — plus giving unstarted messages back and releasing locks.
//!
//! The batch deleter gathers acked receipts into `DeleteMessageBatch` calls of up to ten and
//! keeps several calls in flight ([`delete_calls`]): at SQS's latency one call at a time would
//! cap the host at ten messages per round trip. An acked message gives up its in-flight slot
//! as soon as its delete is queued, so handlers never wait on deletes; what waits instead is
//! bounded by `delete_room` (`max_in_flight` pending deletes), and shutdown flushes the queue
//! and waits for every call.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Received};
use crate::config::policy::RetryConfig;
use crate::lock::{Held, Locks};
use crate::ops::metrics as m;
use crate::plugins::Outcome;
use crate::route::Binding;
use crate::wire::Envelope;

use super::invoke::CallResult;
use super::report::labels;
use super::state::{Delete, GiveBack, PendingDelete, Shared};

/// The fewest `DeleteMessageBatch` calls allowed in flight at once.
pub const MIN_DELETE_CALLS: usize = 16;

/// `DeleteMessageBatch` calls allowed in flight at once with room for `slots` pending
/// deletes: enough to have all of them out in full batches (so the call count never caps the
/// rate before the room does), and at least [`MIN_DELETE_CALLS`].
pub fn delete_calls(slots: usize) -> usize {
    slots.div_ceil(10).max(MIN_DELETE_CALLS)
}
/// Tries of one delete call before its messages are given up (and redelivered).
const DELETE_ATTEMPTS: u32 = 8;
/// How long the deleter waits to fill a batch of ten before it sends what it has.
pub const DELETE_LINGER: Duration = Duration::from_millis(20);

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

/// The binding a result came from, as settlement needs it: its label (for reasons) and its
/// retry policy.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// `bindings[0] (echo/echo)`.
    pub label: &'a str,
    /// `[bindings.retry]`, if any.
    pub retry: Option<&'a RetryConfig>,
}

impl<'a> Policy<'a> {
    /// The policies of `bindings`, in order.
    pub fn of(bindings: &'a [Arc<Binding>]) -> Vec<Policy<'a>> {
        bindings
            .iter()
            .map(|b| Policy {
                label: &b.label,
                retry: b.retry.as_ref(),
            })
            .collect()
    }
}

/// What one binding's result asks for, under its retry policy, on delivery `receive_count`.
fn verdict(result: &CallResult, policy: &Policy<'_>, receive_count: u32) -> Settlement {
    let label = policy.label;
    match (result, policy.retry) {
        (CallResult::Outcome(Outcome::Ack), _) => Settlement::Delete,
        (CallResult::Outcome(Outcome::DeadLetter { reason }), _) => {
            Settlement::DeadLetter(reason.clone())
        }
        (CallResult::Outcome(Outcome::Retry { after_secs }), retry) => match retry {
            Some(retry) if receive_count >= retry.max_attempts => Settlement::DeadLetter(format!(
                "{label}: asked for a retry on delivery {receive_count} of retry.max_attempts {}",
                retry.max_attempts
            )),
            _ => Settlement::RetryAfter(*after_secs),
        },
        (_, None) => Settlement::Leave,
        (failed, Some(retry)) => {
            let Some((kind, text)) = failed.failure() else {
                return Settlement::Leave;
            };
            if retry.dead_letter_on.iter().any(|k| k == kind) {
                return Settlement::DeadLetter(format!(
                    "{label}: {text} (not retried: retry.dead_letter_on has `{kind}`)"
                ));
            }
            if kind == "error" {
                if let Some(matched) = retry
                    .dead_letter_on_errors
                    .iter()
                    .find(|t| text.contains(t.as_str()))
                {
                    return Settlement::DeadLetter(format!(
                        "{label}: {text} (not retried: retry.dead_letter_on_errors has {matched:?})"
                    ));
                }
            }
            if receive_count >= retry.max_attempts {
                return Settlement::DeadLetter(format!(
                    "{label}: {text} (failed on delivery {receive_count} of retry.max_attempts {})",
                    retry.max_attempts
                ));
            }
            Settlement::RetryAfter(crate::backoff::full_jitter(
                retry.backoff_base_secs,
                retry.backoff_max_secs,
                receive_count.max(1),
            ))
        }
    }
}

/// Decide a message's fate from its bindings' results (one per policy, in order), on
/// delivery `receive_count`: a dead letter wins (the first one's reason), then every binding
/// acking deletes, then a failure without a retry policy leaves the message for the
/// visibility timeout, else it is retried after the longest delay asked for (a handler's own
/// `Retry`, or its binding's backoff).
pub fn settle(results: &[CallResult], policies: &[Policy<'_>], receive_count: u32) -> Settlement {
    if results.is_empty() {
        return Settlement::Leave;
    }
    let verdicts: Vec<Settlement> = results
        .iter()
        .enumerate()
        .map(|(i, result)| {
            let policy = policies.get(i).copied().unwrap_or(Policy {
                label: "",
                retry: None,
            });
            verdict(result, &policy, receive_count)
        })
        .collect();
    if let Some(dead) = verdicts
        .iter()
        .find(|v| matches!(v, Settlement::DeadLetter(_)))
    {
        return dead.clone();
    }
    if verdicts.iter().all(|v| *v == Settlement::Delete) {
        return Settlement::Delete;
    }
    if verdicts.contains(&Settlement::Leave) {
        return Settlement::Leave;
    }
    let after = verdicts
        .iter()
        .filter_map(|v| match v {
            Settlement::RetryAfter(secs) => Some(*secs),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    Settlement::RetryAfter(after)
}

impl Shared {
    /// Queue an acked message for the batch deleter; `false` if the deleter is gone. It waits
    /// while `max_in_flight` deletes are pending (deletes failing): the message keeps its
    /// in-flight slot meanwhile, so receiving stops rather than deletes piling up.
    pub(super) async fn delete(
        &self,
        message: &Received,
        envelope: &Envelope,
        held: &mut Option<Held>,
    ) -> bool {
        let Ok(permit) = self.delete_room.clone().acquire_owned().await else {
            tracing::error!(message_id = %envelope.message_id, event = %envelope.event, "delete queue closed; the message will be redelivered");
            return false;
        };
        let sent = self.deletes.send(Delete {
            receipt: message.receipt.clone(),
            message_id: envelope.message_id.clone(),
            event: envelope.event.clone(),
            after: self.after_delete(envelope),
            _pending: PendingDelete::new(permit),
            lock: held.take(),
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
        held: &mut Option<Held>,
    ) -> bool {
        let id = &envelope.message_id;
        let event = &envelope.event;
        let labels = labels(bindings);
        match settle(results, &Policy::of(bindings), message.receive_count) {
            Settlement::Delete => {
                tracing::debug!(message_id = %id, event = %event, bindings = %labels, "every binding acked; deleting");
                self.delete(message, envelope, held).await
            }
            Settlement::Leave => {
                metrics::counter!(m::RETRIED, "reason" => "failed").increment(1);
                tracing::info!(message_id = %id, event = %event, bindings = %labels, receive_count = message.receive_count,
                    "not settled: left for redelivery after the visibility timeout");
                false
            }
            Settlement::RetryAfter(secs) => {
                self.retry_later(message, envelope, &labels, secs, "retry", held)
                    .await;
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

    /// Make a message visible again after `secs` (a retry, or an open circuit: `reason` labels
    /// `iniesta_messages_retried_total`), its lock released first.
    pub(super) async fn retry_later(
        &self,
        message: &Received,
        envelope: &Envelope,
        labels: &str,
        secs: u32,
        reason: &'static str,
        held: &mut Option<Held>,
    ) {
        let (id, event) = (&envelope.message_id, &envelope.event);
        metrics::counter!(m::RETRIED, "reason" => reason).increment(1);
        // The lock goes first: with `after_secs` 0 the message is visible at once, and a
        // poller that took it while this lock still stood would have to leave it, spending
        // one of its deliveries.
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
            tracing::debug!(message_id = %id, event = %event, bindings = %labels, after_secs = secs, reason, "visible again after the delay");
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
        let failed = crate::broker::unsettled_by_receipt(
            self.parts
                .broker
                .change_visibility_batch(&receipts, 0)
                .await,
            &receipts,
        );
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

/// Whether receiving has stopped because `max_in_flight` acked messages wait on deletes that
/// keep failing: the next acked message then keeps its slot until there is room, so a broker
/// that refuses deletes stops the pollers, and without this nothing would say why. It clears
/// when no delete call is failing any more (each succeeded or was given up).
struct DeleteStall {
    /// `sqs.max_in_flight`: the room for pending deletes.
    slots: usize,
    /// Delete calls whose last attempt failed and that are still being retried.
    failing: usize,
    stalled: bool,
}

impl DeleteStall {
    /// An attempt of a delete call failed (`first`: its first failure) with `waiting` acked
    /// messages pending.
    fn failed(&mut self, first: bool, waiting: usize) {
        if first {
            self.failing += 1;
        }
        if self.stalled || waiting < self.slots {
            return;
        }
        self.stalled = true;
        metrics::counter!(m::DELETE_STALLS).increment(1);
        metrics::gauge!(m::DELETE_STALLED).set(1.0);
        tracing::warn!(
            slots = self.slots,
            waiting,
            "receiving has stopped, or will once the slots in use are done: max_in_flight acked messages wait on deletes that keep failing, so the next ones keep their slots; it resumes when deletes succeed (or are given up and the messages redelivered)"
        );
    }

    /// A delete call ended: it succeeded (`deletes` = `"succeeded"`) or was given up
    /// (`"given_up"`); `was_failing` when an attempt of it had failed.
    fn ended(&mut self, was_failing: bool, waiting: usize, deletes: &'static str) {
        if was_failing {
            self.failing = self.failing.saturating_sub(1);
        }
        if !self.stalled || self.failing > 0 {
            return;
        }
        self.stalled = false;
        metrics::gauge!(m::DELETE_STALLED).set(0.0);
        tracing::info!(
            slots = self.slots,
            waiting,
            deletes,
            "receiving resumes: deletes go through again"
        );
    }
}

/// Batch deletes: up to 10 receipts per call, gathered for at most [`DELETE_LINGER`], with up
/// to [`delete_calls`] calls in flight; retryable failures are retried with backoff, never
/// dropped silently. `flush` ends it once everything queued is sent and every call has
/// answered. When the `room` for pending deletes (`slots` places) is full and a delete fails,
/// it says so once ([`DeleteStall`]).
pub(super) async fn run_deleter(
    broker: Arc<dyn Broker>,
    locks: Arc<dyn Locks>,
    mut rx: mpsc::UnboundedReceiver<Delete>,
    flush: CancellationToken,
    room: Arc<Semaphore>,
    slots: usize,
) {
    let waiting = Waiting { room, slots };
    let stall = Arc::new(Mutex::new(DeleteStall {
        slots,
        failing: 0,
        stalled: false,
    }));
    let calls = Arc::new(Semaphore::new(delete_calls(slots)));
    let mut sending = JoinSet::new();
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
        let gather_until = Instant::now() + DELETE_LINGER;
        while batch.len() < 10 {
            match tokio::time::timeout_at(gather_until, rx.recv()).await {
                Ok(Some(delete)) => batch.push(delete),
                _ => break,
            }
        }
        // Never closed: a permit always comes once a call in flight answers.
        let Ok(call) = calls.clone().acquire_owned().await else {
            break;
        };
        let (broker, locks) = (broker.clone(), locks.clone());
        let (stall, waiting) = (stall.clone(), waiting.clone());
        sending.spawn(async move {
            // The batch's locks go once every delete in it is done or given up, in one call.
            let held: Vec<Held> = batch.iter_mut().filter_map(|d| d.lock.take()).collect();
            delete_with_retry(broker.as_ref(), batch, &waiting, &stall).await;
            if !held.is_empty() {
                if let Err(e) = locks.release(&held).await {
                    tracing::warn!(count = held.len(), error = %e, "cannot release the message locks; they will expire");
                }
            }
            drop(call);
        });
        while sending.try_join_next().is_some() {}
    }
    while sending.join_next().await.is_some() {}
}

/// How many acked messages wait on their delete.
#[derive(Clone)]
struct Waiting {
    room: Arc<Semaphore>,
    slots: usize,
}

impl Waiting {
    fn now(&self) -> usize {
        self.slots.saturating_sub(self.room.available_permits())
    }
}

async fn delete_with_retry(
    broker: &dyn Broker,
    mut batch: Vec<Delete>,
    waiting: &Waiting,
    stall: &Mutex<DeleteStall>,
) {
    // A message delivered twice in one receive can bring the same receipt twice; SQS refuses
    // a batch with repeated entries (BatchEntryIdsNotDistinct), so send each receipt once.
    let mut seen = HashSet::new();
    batch.retain(|d| seen.insert(d.receipt.clone()));
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut failing = false;
    for attempt in 1..=DELETE_ATTEMPTS {
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
                            tracing::debug!(message_id = %delete.message_id, event = %delete.event, "deleted");
                            if let Some(after) = delete.after {
                                after.start();
                            }
                        }
                        Some((_, true)) => retry.push(delete),
                        Some((reason, false)) => {
                            metrics::counter!(m::DELETE_FAILURES).increment(1);
                            tracing::warn!(message_id = %delete.message_id, event = %delete.event, reason = %reason, "delete failed; the message will be redelivered");
                        }
                    }
                }
                if retry.is_empty() {
                    crate::mutex::lock(stall).ended(failing, waiting.now(), "succeeded");
                    return;
                }
                batch = retry;
                crate::mutex::lock(stall).failed(!failing, waiting.now());
                failing = true;
            }
            Err(e) => {
                let ids: Vec<&str> = batch.iter().map(|d| d.message_id.as_str()).collect();
                tracing::warn!(attempt, message_ids = ?ids, error = %e, "batch delete failed; retrying");
                crate::mutex::lock(stall).failed(!failing, waiting.now());
                failing = true;
            }
        }
        if attempt < DELETE_ATTEMPTS {
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
    metrics::counter!(m::DELETE_FAILURES).increment(batch.len() as u64);
    for delete in &batch {
        tracing::error!(message_id = %delete.message_id, event = %delete.event,
            "giving up deleting an acked message; it will be redelivered");
    }
    // Their places are free now.
    drop(batch);
    crate::mutex::lock(stall).ended(failing, waiting.now(), "given_up");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> CallResult {
        CallResult::Outcome(Outcome::Ack)
    }

    /// Settle without any retry policy.
    fn plain(results: &[CallResult]) -> Settlement {
        settle(results, &[], 1)
    }

    #[test]
    fn settlement_rules() {
        assert_eq!(plain(&[ok(), ok()]), Settlement::Delete);
        assert_eq!(plain(&[]), Settlement::Leave);
        assert_eq!(
            plain(&[
                ok(),
                CallResult::Outcome(Outcome::Retry { after_secs: 3 }),
                CallResult::Outcome(Outcome::Retry { after_secs: 7 })
            ]),
            Settlement::RetryAfter(7)
        );
        assert_eq!(plain(&[ok(), CallResult::TimedOut]), Settlement::Leave);
        assert_eq!(
            plain(&[
                CallResult::Outcome(Outcome::Panicked {
                    message: "x".into()
                }),
                CallResult::Outcome(Outcome::Retry { after_secs: 1 })
            ]),
            Settlement::Leave
        );
        assert_eq!(
            plain(&[
                CallResult::TimedOut,
                CallResult::Outcome(Outcome::DeadLetter {
                    reason: "bad".into()
                })
            ]),
            Settlement::DeadLetter("bad".into())
        );
    }

    fn retry(text: &str) -> RetryConfig {
        toml::from_str(text).expect("a retry table")
    }

    fn error(text: &str) -> CallResult {
        CallResult::Outcome(Outcome::Failed {
            reason: text.into(),
        })
    }

    #[test]
    fn retry_policies_back_off_give_up_and_skip_what_is_not_worth_retrying() {
        let policy = retry("max_attempts = 4\nbackoff_base_secs = 10\nbackoff_max_secs = 25\ndead_letter_on = [\"panic\"]\ndead_letter_on_errors = [\"invalid order\"]");
        let p = [Policy {
            label: "bindings[0] (x)",
            retry: Some(&policy),
        }];
        // Backoff with full jitter: up to 10, 20, then 25 (the cap).
        for (delivery, bound) in [(1, 10), (2, 20), (3, 25)] {
            for _ in 0..50 {
                match settle(&[error("db down")], &p, delivery) {
                    Settlement::RetryAfter(secs) => assert!(secs <= bound, "{delivery}: {secs}"),
                    other => panic!("delivery {delivery}: {other:?}"),
                }
            }
        }
        // The last attempt dead-letters, with the error and the policy in the reason.
        let Settlement::DeadLetter(reason) = settle(&[error("db down")], &p, 4) else {
            panic!("the fourth delivery is the last")
        };
        assert!(
            reason.contains("db down")
                && reason.contains("retry.max_attempts 4")
                && reason.contains("bindings[0] (x)"),
            "{reason}"
        );
        // Not worth retrying: a panic, an error text; straight to the DLQ on delivery 1.
        let panic = CallResult::Outcome(Outcome::Panicked {
            message: "index out of bounds".into(),
        });
        let Settlement::DeadLetter(reason) = settle(&[panic], &p, 1) else {
            panic!("a panic is not retried")
        };
        assert!(
            reason.contains("dead_letter_on has `panic`") && reason.contains("index out of bounds"),
            "{reason}"
        );
        let Settlement::DeadLetter(reason) = settle(&[error("invalid order 7")], &p, 1) else {
            panic!("not retried")
        };
        assert!(reason.contains("dead_letter_on_errors"), "{reason}");
        assert!(
            matches!(settle(&[CallResult::TimedOut], &p, 1), Settlement::RetryAfter(s) if s <= 10)
        );
        // A handler's own retry wins on the delay, but not past max_attempts.
        assert_eq!(
            settle(
                &[CallResult::Outcome(Outcome::Retry { after_secs: 600 })],
                &p,
                3
            ),
            Settlement::RetryAfter(600)
        );
        assert!(matches!(
            settle(
                &[CallResult::Outcome(Outcome::Retry { after_secs: 600 })],
                &p,
                4
            ),
            Settlement::DeadLetter(_)
        ));
        // Beside a binding without a policy, a failure there leaves the message as before.
        let two = [
            p[0],
            Policy {
                label: "bindings[1] (y)",
                retry: None,
            },
        ];
        assert_eq!(
            settle(&[error("db down"), CallResult::TimedOut], &two, 1),
            Settlement::Leave
        );
        assert!(
            matches!(settle(&[error("db down"), ok()], &two, 1), Settlement::RetryAfter(s) if s <= 10)
        );
    }
}
