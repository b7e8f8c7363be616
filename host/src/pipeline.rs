//! The consumer: receive batches, decode, lock, route, run handlers, settle.
//!
//! Settling follows the delivery contract: a message is deleted only when every binding that
//! took it acked; any `Retry` makes it visible again after `after_secs`; a `DeadLetter` moves
//! it to the dead-letter queue with the reason; errors, panics and timeouts leave it for
//! redelivery after the visibility timeout. Nothing is deleted on error, and an event no
//! binding takes (and no default) is logged and left for the redrive policy.

use std::sync::Arc;
use std::time::Duration;

use abi_stable::std_types::{RString, RVec};
use arc_swap::ArcSwap;
use iniesta_plugin_api::ffi::{AttributeFfi, MessageFfi, OutcomeFfi};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Received};
use crate::lock::{self, Locks};
use crate::route::{Binding, Routes};
use crate::wire::{self, Envelope};

/// Pipeline settings, taken from `[sqs]` and `[lock]`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Receive loops.
    pub pollers: usize,
    /// Messages per receive.
    pub max_messages: u32,
    /// Long-poll wait.
    pub wait: Duration,
    /// Messages being handled at once.
    pub max_in_flight: usize,
    /// Time running handlers get on shutdown.
    pub shutdown_timeout: Duration,
    /// The event attribute.
    pub event_key: String,
    /// Lock validity.
    pub lock_ttl: Duration,
    /// Extra lock attempts.
    pub lock_retry_count: u32,
}

impl Settings {
    /// From a config.
    pub fn from_config(config: &crate::config::Config) -> Settings {
        Settings {
            pollers: config.sqs.pollers,
            max_messages: config.sqs.max_messages,
            wait: Duration::from_secs(u64::from(config.sqs.wait_time_seconds)),
            max_in_flight: config.sqs.max_in_flight,
            shutdown_timeout: Duration::from_secs(config.sqs.shutdown_timeout_secs),
            event_key: config.sns.event_key.clone(),
            lock_ttl: Duration::from_secs(config.lock.timeout_secs),
            lock_retry_count: config.lock.retry_count,
        }
    }
}

/// What one binding's call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallResult {
    /// The plugin's outcome.
    Outcome(OutcomeFfi),
    /// The call ran past its timeout; it was abandoned.
    TimedOut,
    /// The blocking task failed (should not happen: plugins catch their panics).
    Crashed(String),
}

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
        CallResult::Outcome(OutcomeFfi::DeadLetter { reason }) => Some(reason.to_string()),
        _ => None,
    }) {
        return Settlement::DeadLetter(reason);
    }
    if results
        .iter()
        .all(|r| matches!(r, CallResult::Outcome(OutcomeFfi::Ack)))
    {
        return Settlement::Delete;
    }
    let failed = results.iter().any(|r| {
        matches!(
            r,
            CallResult::TimedOut
                | CallResult::Crashed(_)
                | CallResult::Outcome(OutcomeFfi::Failed { .. } | OutcomeFfi::Panicked { .. })
        )
    });
    if failed {
        return Settlement::Leave;
    }
    let after = results
        .iter()
        .filter_map(|r| match r {
            CallResult::Outcome(OutcomeFfi::Retry { after_secs }) => Some(*after_secs),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    Settlement::RetryAfter(after)
}

/// The consumer for one service.
pub struct Pipeline {
    broker: Arc<dyn Broker>,
    routes: Arc<ArcSwap<Routes>>,
    locks: Arc<dyn Locks>,
    settings: Settings,
}

impl Pipeline {
    /// A pipeline over a broker, a swappable routing table and a lock service.
    pub fn new(
        broker: Arc<dyn Broker>,
        routes: Arc<ArcSwap<Routes>>,
        locks: Arc<dyn Locks>,
        settings: Settings,
    ) -> Pipeline {
        Pipeline {
            broker,
            routes,
            locks,
            settings,
        }
    }

    /// Run until `shutdown` fires, then stop receiving, let running handlers finish (up to the
    /// shutdown timeout), flush pending deletes and return.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let in_flight = Arc::new(Semaphore::new(this.settings.max_in_flight));
        let (delete_tx, delete_rx) = mpsc::unbounded_channel::<String>();
        let deleter = tokio::spawn(run_deleter(this.broker.clone(), delete_rx));
        let mut pollers = Vec::new();
        for poller in 0..this.settings.pollers {
            pollers.push(tokio::spawn(this.clone().poll(
                poller,
                in_flight.clone(),
                delete_tx.clone(),
                shutdown.clone(),
            )));
        }
        drop(delete_tx);
        tracing::info!(broker = %this.broker.describe(), pollers = this.settings.pollers, max_in_flight = this.settings.max_in_flight, "consuming");
        for poller in pollers {
            let _ = poller.await;
        }
        let all = u32::try_from(this.settings.max_in_flight).unwrap_or(u32::MAX);
        match tokio::time::timeout(this.settings.shutdown_timeout, in_flight.acquire_many(all))
            .await
        {
            Ok(_) => tracing::info!("all running handlers finished"),
            Err(_) => tracing::warn!(
                timeout_secs = this.settings.shutdown_timeout.as_secs(),
                "handlers still running at the shutdown timeout; their messages will be redelivered"
            ),
        }
        // The deleter ends when every sender (pollers and message tasks) is gone.
        let _ = tokio::time::timeout(Duration::from_secs(10), deleter).await;
    }

    async fn poll(
        self: Arc<Self>,
        poller: usize,
        in_flight: Arc<Semaphore>,
        deletes: mpsc::UnboundedSender<String>,
        shutdown: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(100);
        loop {
            // Receive only as many messages as there is room to run.
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = in_flight.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let mut permits = vec![first];
            while permits.len() < self.settings.max_messages as usize {
                match in_flight.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let want = u32::try_from(permits.len()).unwrap_or(1);
            let batch = match self
                .broker
                .receive(want, self.settings.wait, &shutdown)
                .await
            {
                Ok(batch) => {
                    backoff = Duration::from_millis(100);
                    batch
                }
                Err(e) => {
                    tracing::error!(poller, error = %e, retry_in_ms = backoff.as_millis() as u64, "receive failed; retrying");
                    drop(permits);
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            for message in batch {
                let Some(permit) = permits.pop() else {
                    // Never more than asked for; if a broker overdelivers, handle it anyway.
                    tracing::warn!("broker returned more messages than asked for");
                    let this = self.clone();
                    let deletes = deletes.clone();
                    tokio::spawn(async move { this.process(message, None, deletes).await });
                    continue;
                };
                let this = self.clone();
                let deletes = deletes.clone();
                tokio::spawn(async move { this.process(message, Some(permit), deletes).await });
            }
        }
        tracing::debug!(poller, "poller stopped");
    }

    async fn process(
        &self,
        message: Received,
        permit: Option<OwnedSemaphorePermit>,
        deletes: mpsc::UnboundedSender<String>,
    ) {
        let permit = permit.map(Arc::new);
        let envelope = match wire::decode(
            &message.message_id,
            &message.body,
            &message.attributes,
            message.sent_timestamp_ms,
            &self.settings.event_key,
        ) {
            Ok(envelope) => envelope,
            Err(e) => {
                tracing::error!(message_id = %message.message_id, receive_count = message.receive_count, error = %e,
                    "cannot decode message; left on the queue for the redrive policy");
                return;
            }
        };
        let key = lock::key_for(&envelope.message_id);
        let held = match lock::acquire(
            self.locks.as_ref(),
            &key,
            self.settings.lock_ttl,
            self.settings.lock_retry_count,
        )
        .await
        {
            Ok(Some(held)) => held,
            Ok(None) => {
                tracing::info!(message_id = %envelope.message_id, "message is locked by another consumer; leaving it");
                return;
            }
            Err(e) => {
                tracing::error!(message_id = %envelope.message_id, error = %e, "cannot take the message lock; leaving it for redelivery");
                return;
            }
        };
        let routes = self.routes.load_full();
        let bindings: Vec<Arc<Binding>> =
            routes.route(&envelope.event).into_iter().cloned().collect();
        if bindings.is_empty() {
            tracing::warn!(message_id = %envelope.message_id, event = %envelope.event, receive_count = message.receive_count,
                "no binding takes this event and there is no default binding; left on the queue for the redrive policy (add a binding or a default)");
        } else {
            let results = self.call_all(&envelope, &message, &bindings, &permit).await;
            self.apply(&message, &envelope, &bindings, &results, &deletes)
                .await;
        }
        if let Err(e) = self.locks.release(&held).await {
            tracing::warn!(message_id = %envelope.message_id, error = %e, "cannot release the message lock; it will expire");
        }
    }

    async fn call_all(
        &self,
        envelope: &Envelope,
        message: &Received,
        bindings: &[Arc<Binding>],
        permit: &Option<Arc<OwnedSemaphorePermit>>,
    ) -> Vec<CallResult> {
        let ffi = Arc::new(MessageFfi {
            id: RString::from(envelope.message_id.as_str()),
            event: RString::from(envelope.event.as_str()),
            body: RVec::from(envelope.body.clone()),
            attributes: envelope
                .attributes
                .iter()
                .map(|(name, a)| AttributeFfi {
                    name: name.as_str().into(),
                    data_type: a.data_type.as_str().into(),
                    value: a.value.as_str().into(),
                })
                .collect(),
            receive_count: message.receive_count,
            sent_timestamp_ms: envelope.sent_timestamp_ms,
        });
        // Start every binding's call at once on the blocking pool, then collect them in order.
        let started = tokio::time::Instant::now();
        let calls: Vec<_> = bindings
            .iter()
            .map(|binding| {
                let call_binding = binding.clone();
                let ffi = ffi.clone();
                // The permit travels with the call: a timed-out handler keeps its slot until
                // its thread really returns, so stuck handlers cannot pile up threads.
                let permit = permit.clone();
                let span = tracing::info_span!("handle", message_id = %envelope.message_id, event = %envelope.event, binding = %binding.label);
                let task = tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    let _entered = span.enter();
                    call_binding.handler.handle(&ffi, &call_binding.context)
                });
                (started + binding.timeout, task)
            })
            .collect();
        let mut results = Vec::with_capacity(calls.len());
        for (deadline, task) in calls {
            results.push(match tokio::time::timeout_at(deadline, task).await {
                Ok(Ok(outcome)) => CallResult::Outcome(outcome),
                Ok(Err(e)) => CallResult::Crashed(e.to_string()),
                Err(_) => CallResult::TimedOut,
            });
        }
        results
    }

    async fn apply(
        &self,
        message: &Received,
        envelope: &Envelope,
        bindings: &[Arc<Binding>],
        results: &[CallResult],
        deletes: &mpsc::UnboundedSender<String>,
    ) {
        let id = &envelope.message_id;
        for (binding, result) in bindings.iter().zip(results) {
            match result {
                CallResult::Outcome(OutcomeFfi::Ack) => {
                    tracing::debug!(message_id = %id, binding = %binding.label, "acked")
                }
                CallResult::Outcome(OutcomeFfi::Retry { after_secs }) => {
                    tracing::info!(message_id = %id, binding = %binding.label, after_secs, "handler asked to retry")
                }
                CallResult::Outcome(OutcomeFfi::DeadLetter { reason }) => {
                    tracing::warn!(message_id = %id, binding = %binding.label, reason = %reason, "handler dead-lettered the message")
                }
                CallResult::Outcome(OutcomeFfi::Failed { reason }) => {
                    tracing::warn!(message_id = %id, binding = %binding.label, error = %reason, receive_count = message.receive_count, "handler failed; the message will be redelivered")
                }
                CallResult::Outcome(OutcomeFfi::Panicked { message: text }) => {
                    tracing::error!(message_id = %id, binding = %binding.label, panic = %text, receive_count = message.receive_count, "handler panicked; the message will be redelivered")
                }
                CallResult::TimedOut => {
                    tracing::error!(message_id = %id, binding = %binding.label, timeout_secs = binding.timeout.as_secs(), "handler timed out; the message will be redelivered")
                }
                CallResult::Crashed(e) => {
                    tracing::error!(message_id = %id, binding = %binding.label, error = %e, "handler task failed; the message will be redelivered")
                }
            }
        }
        match settle(results) {
            Settlement::Delete => {
                if deletes.send(message.receipt.clone()).is_err() {
                    tracing::error!(message_id = %id, "delete queue closed; the message will be redelivered");
                }
            }
            Settlement::Leave => {}
            Settlement::RetryAfter(secs) => {
                if let Err(e) = self.broker.change_visibility(&message.receipt, secs).await {
                    tracing::warn!(message_id = %id, error = %e, "cannot change visibility; the message returns after its visibility timeout");
                }
            }
            Settlement::DeadLetter(reason) => match self.broker.dead_letter(message, &reason).await
            {
                Ok(()) => {
                    tracing::info!(message_id = %id, event = %envelope.event, reason = %reason, "moved to the dead-letter queue")
                }
                Err(e) => {
                    tracing::error!(message_id = %id, error = %e, "cannot dead-letter the message; it stays on the queue for redelivery")
                }
            },
        }
    }
}

/// Batch deletes: up to 10 receipts per call, gathered for at most 20 ms; retryable failures
/// are retried with backoff, never dropped silently.
async fn run_deleter(broker: Arc<dyn Broker>, mut rx: mpsc::UnboundedReceiver<String>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let gather_until = tokio::time::Instant::now() + Duration::from_millis(20);
        while batch.len() < 10 {
            match tokio::time::timeout_at(gather_until, rx.recv()).await {
                Ok(Some(receipt)) => batch.push(receipt),
                _ => break,
            }
        }
        delete_with_retry(broker.as_ref(), batch).await;
    }
}

async fn delete_with_retry(broker: &dyn Broker, mut batch: Vec<String>) {
    let mut backoff = Duration::from_millis(100);
    for attempt in 1..=8 {
        match broker.delete_batch(&batch).await {
            Ok(failures) => {
                let mut retry = Vec::new();
                for failure in failures {
                    if failure.retryable {
                        retry.push(failure.receipt);
                    } else {
                        tracing::warn!(reason = %failure.reason, "delete failed; the message will be redelivered");
                    }
                }
                if retry.is_empty() {
                    return;
                }
                batch = retry;
            }
            Err(e) => {
                tracing::warn!(attempt, error = %e, "batch delete failed; retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    tracing::error!(
        count = batch.len(),
        "giving up deleting acked messages; they will be redelivered"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> CallResult {
        CallResult::Outcome(OutcomeFfi::Ack)
    }

    #[test]
    fn settlement_rules() {
        assert_eq!(settle(&[ok(), ok()]), Settlement::Delete);
        assert_eq!(settle(&[]), Settlement::Leave);
        assert_eq!(
            settle(&[
                ok(),
                CallResult::Outcome(OutcomeFfi::Retry { after_secs: 3 }),
                CallResult::Outcome(OutcomeFfi::Retry { after_secs: 7 })
            ]),
            Settlement::RetryAfter(7)
        );
        assert_eq!(settle(&[ok(), CallResult::TimedOut]), Settlement::Leave);
        assert_eq!(
            settle(&[
                CallResult::Outcome(OutcomeFfi::Panicked {
                    message: "x".into()
                }),
                CallResult::Outcome(OutcomeFfi::Retry { after_secs: 1 })
            ]),
            Settlement::Leave
        );
        assert_eq!(
            settle(&[
                CallResult::TimedOut,
                CallResult::Outcome(OutcomeFfi::DeadLetter {
                    reason: "bad".into()
                })
            ]),
            Settlement::DeadLetter("bad".into())
        );
    }
}
