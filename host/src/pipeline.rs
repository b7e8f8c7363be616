//! The consumer: receive batches, decode, lock, route, run handlers, settle.
//!
//! Settling follows the delivery contract: a message is deleted only when every binding that
//! took it acked; any `Retry` makes it visible again after `after_secs`; a `DeadLetter` moves
//! it to the dead-letter queue with the reason; errors, panics and timeouts leave it for
//! redelivery after the visibility timeout. Nothing is deleted on error, and an event no
//! binding takes (and no default) is logged and left for the redrive policy.
//!
//! Idempotency (see [`crate::lock`]): each receive batch takes its messages' locks in one
//! round trip per Redis node, which also reads their completion records. A message whose lock
//! is held elsewhere is left for redelivery, never run or deleted; a binding that already
//! acked a message (a completion record) is not run again for a duplicate. While handlers
//! run, the lock is extended; if it is lost, the message is not settled. When the lock
//! service cannot decide (too few Redis nodes), pollers stop receiving until it answers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use abi_stable::std_types::{RString, RVec};
use arc_swap::ArcSwap;
use iniesta_plugin_api::ffi::{AttributeFfi, MessageFfi, OutcomeFfi};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Received};
use crate::lock::{self, completion, Claim, Held, LockError, Locks};
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
    /// Lock validity (extended while handlers run).
    pub lock_ttl: Duration,
    /// Lock attempts, as aioredlock counts `retry_count` (at least one).
    pub lock_retry_count: u32,
    /// How long completion records are kept; zero turns them off.
    pub completion_ttl: Duration,
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
            lock_ttl: lock::ttl_from_secs(config.lock.timeout_secs.max(1)),
            lock_retry_count: config.lock.retry_count,
            completion_ttl: lock::ttl_from_secs(config.lock.completion_ttl_secs),
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
    /// Set while the lock service cannot decide: pollers stop receiving until it answers.
    lock_outage: AtomicBool,
}

/// A received, decoded message waiting for its lock, with its in-flight slot.
struct Taken {
    message: Received,
    envelope: Envelope,
    permit: Option<OwnedSemaphorePermit>,
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
            lock_outage: AtomicBool::new(false),
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
        tracing::info!(broker = %this.broker.describe(), locks = %this.locks.describe(), pollers = this.settings.pollers, max_in_flight = this.settings.max_in_flight, "consuming");
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
            // While the lock service is down, receiving would only raise receive counts
            // towards the redrive policy: wait for it instead.
            if self.lock_outage.load(Ordering::Acquire)
                && !self.wait_for_locks(poller, &shutdown).await
            {
                break;
            }
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
            if batch.is_empty() {
                continue;
            }
            let count = batch.len();
            if let Err(e) = self.dispatch(batch, permits, &deletes).await {
                if !self.lock_outage.swap(true, Ordering::AcqRel) {
                    tracing::error!(poller, count, locks = %self.locks.describe(), error = %e,
                        "the lock service is unavailable: the received messages are left on the queue (not run, not deleted) and receiving pauses until it answers again");
                } else {
                    tracing::warn!(poller, count, error = %e, "the lock service is still unavailable; messages left on the queue");
                }
            }
        }
        tracing::debug!(poller, "poller stopped");
    }

    /// Wait until the lock service answers again; `false` if shutdown came first.
    async fn wait_for_locks(&self, poller: usize, shutdown: &CancellationToken) -> bool {
        let mut pause = Duration::from_millis(250);
        let mut last_report = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(pause) => {}
            }
            if !self.lock_outage.load(Ordering::Acquire) {
                return true;
            }
            match self.locks.check().await {
                Ok(()) => {
                    if self.lock_outage.swap(false, Ordering::AcqRel) {
                        tracing::info!(poller, locks = %self.locks.describe(), "the lock service answers again; receiving resumes");
                    }
                    return true;
                }
                Err(e) => {
                    if last_report.elapsed() >= Duration::from_secs(30) {
                        tracing::warn!(poller, error = %e, "the lock service is still unavailable; messages wait on the queue");
                        last_report = tokio::time::Instant::now();
                    }
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Decode a receive batch, take all its locks (one round trip per Redis node, which also
    /// reads the completion records), and start a task per locked message. An error means
    /// the lock service could not decide: every message of the batch is left on the queue.
    async fn dispatch(
        self: &Arc<Self>,
        batch: Vec<Received>,
        mut permits: Vec<OwnedSemaphorePermit>,
        deletes: &mpsc::UnboundedSender<String>,
    ) -> Result<(), LockError> {
        let mut taken = Vec::with_capacity(batch.len());
        for message in batch {
            let permit = permits.pop();
            if permit.is_none() {
                // Never more than asked for; if a broker overdelivers, handle it anyway.
                tracing::warn!("broker returned more messages than asked for");
            }
            match wire::decode(
                &message.message_id,
                &message.body,
                &message.attributes,
                message.sent_timestamp_ms,
                &self.settings.event_key,
            ) {
                Ok(envelope) => taken.push(Taken {
                    message,
                    envelope,
                    permit,
                }),
                Err(e) => {
                    tracing::error!(message_id = %message.message_id, receive_count = message.receive_count, error = %e,
                        "cannot decode message; left on the queue for the redrive policy");
                }
            }
        }
        drop(permits);
        if taken.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = taken
            .iter()
            .map(|t| t.envelope.message_id.clone())
            .collect();
        let claims = self.locks.try_acquire(&ids, self.settings.lock_ttl).await?;
        let busy = self.start_claimed(taken, claims, deletes);
        if busy.is_empty() {
            return Ok(());
        }
        let attempts = lock::attempts(self.settings.lock_retry_count);
        if attempts > 1 {
            tokio::spawn(self.clone().retry_busy(busy, attempts - 1, deletes.clone()));
        } else {
            busy.iter().for_each(leave_locked);
        }
        Ok(())
    }

    /// Start a task for every message whose lock was taken; return the others.
    fn start_claimed(
        self: &Arc<Self>,
        taken: Vec<Taken>,
        claims: Vec<Option<Claim>>,
        deletes: &mpsc::UnboundedSender<String>,
    ) -> Vec<Taken> {
        let mut busy = Vec::new();
        let mut claims = claims.into_iter();
        for t in taken {
            match claims.next().flatten() {
                Some(claim) => {
                    let this = self.clone();
                    let deletes = deletes.clone();
                    tokio::spawn(async move { this.process(t, claim, deletes).await });
                }
                None => busy.push(t),
            }
        }
        busy
    }

    /// Try again, after a random pause, the locks another consumer held (aioredlock's
    /// `retry_count`); what is still held after the last attempt is left for redelivery.
    async fn retry_busy(
        self: Arc<Self>,
        mut busy: Vec<Taken>,
        attempts: u32,
        deletes: mpsc::UnboundedSender<String>,
    ) {
        for _ in 0..attempts {
            tokio::time::sleep(lock::retry_delay()).await;
            let ids: Vec<String> = busy.iter().map(|t| t.envelope.message_id.clone()).collect();
            match self.locks.try_acquire(&ids, self.settings.lock_ttl).await {
                Ok(claims) => busy = self.start_claimed(busy, claims, &deletes),
                Err(e) => {
                    tracing::warn!(count = busy.len(), error = %e, "cannot retry the message locks; the messages are left for redelivery");
                    return;
                }
            }
            if busy.is_empty() {
                return;
            }
        }
        busy.iter().for_each(leave_locked);
    }

    async fn process(
        self: Arc<Self>,
        taken: Taken,
        claim: Claim,
        deletes: mpsc::UnboundedSender<String>,
    ) {
        let Taken {
            message,
            envelope,
            permit,
        } = taken;
        let permit = permit.map(Arc::new);
        let held = claim.held.clone();
        let routes = self.routes.load_full();
        let bindings: Vec<Arc<Binding>> = routes.route(&envelope).into_iter().cloned().collect();
        if bindings.is_empty() {
            tracing::warn!(message_id = %envelope.message_id, event = %envelope.event, receive_count = message.receive_count,
                "no binding takes this event and there is no default binding; left on the queue for the redrive policy (add a binding or a default)");
        } else if let Some(reason) = crate::route::schema::rejection(&envelope, &bindings) {
            // Validation (route/schema.rs): a body failing a binding's JSON Schema is
            // dead-lettered with the errors as the reason; no handler runs.
            let invalid = CallResult::Outcome(OutcomeFfi::DeadLetter {
                reason: reason.into(),
            });
            self.settle(&message, &envelope, &[invalid], &deletes).await;
        } else {
            let records = !self.settings.completion_ttl.is_zero();
            let (done, todo): (Vec<_>, Vec<_>) = bindings
                .into_iter()
                .partition(|b| records && claim.completed.contains(&completion::id_of(b)));
            if todo.is_empty() {
                tracing::info!(message_id = %envelope.message_id, receive_count = message.receive_count, bindings = %labels(&done),
                    "every binding already completed this message (a redelivered duplicate); deleting it without running anything");
                if deletes.send(message.receipt.clone()).is_err() {
                    tracing::error!(message_id = %envelope.message_id, "delete queue closed; the message will be redelivered");
                }
            } else {
                if !done.is_empty() {
                    tracing::info!(message_id = %envelope.message_id, receive_count = message.receive_count, skipped = %labels(&done),
                        "bindings that already completed this message are not run again");
                }
                let lease = Lease::keep(self.locks.clone(), held.clone(), self.settings.lock_ttl);
                let results = self.call_all(&envelope, &message, &todo, &permit).await;
                log_results(&message, &envelope, &todo, &results);
                match lease.finish().await {
                    Ok(()) => self.settle(&message, &envelope, &results, &deletes).await,
                    Err(reason) => {
                        tracing::error!(message_id = %envelope.message_id, reason = %reason,
                        "the message lock was lost while its handlers ran; not settling the message (no delete, retry or dead letter): it will be redelivered, and bindings that acked will not run again")
                    }
                }
            }
        }
        if let Err(e) = self.locks.release(&[held]).await {
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
        let records = !self.settings.completion_ttl.is_zero();
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
                let deadline = started + binding.timeout;
                // Each ack is recorded as soon as it comes, before the lock is released, so a
                // duplicate delivered later skips this binding even if a sibling fails.
                let record = records.then(|| Completion {
                    locks: self.locks.clone(),
                    message_id: envelope.message_id.clone(),
                    binding: completion::id_of(binding),
                    label: binding.label.clone(),
                    ttl: self.settings.completion_ttl,
                });
                tokio::spawn(async move {
                    let result = match tokio::time::timeout_at(deadline, task).await {
                        Ok(Ok(outcome)) => CallResult::Outcome(outcome),
                        Ok(Err(e)) => CallResult::Crashed(e.to_string()),
                        Err(_) => CallResult::TimedOut,
                    };
                    if let (CallResult::Outcome(OutcomeFfi::Ack), Some(record)) = (&result, record)
                    {
                        record.write().await;
                    }
                    result
                })
            })
            .collect();
        let mut results = Vec::with_capacity(calls.len());
        for call in calls {
            results.push(match call.await {
                Ok(result) => result,
                Err(e) => CallResult::Crashed(e.to_string()),
            });
        }
        results
    }

    async fn settle(
        &self,
        message: &Received,
        envelope: &Envelope,
        results: &[CallResult],
        deletes: &mpsc::UnboundedSender<String>,
    ) {
        let id = &envelope.message_id;
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

fn leave_locked(taken: &Taken) {
    tracing::info!(message_id = %taken.envelope.message_id, receive_count = taken.message.receive_count,
        "message is locked by another consumer; leaving it");
}

fn labels(bindings: &[Arc<Binding>]) -> String {
    bindings
        .iter()
        .map(|b| b.label.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn log_results(
    message: &Received,
    envelope: &Envelope,
    bindings: &[Arc<Binding>],
    results: &[CallResult],
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
}

/// A completion record to write once a binding acked.
struct Completion {
    locks: Arc<dyn Locks>,
    message_id: String,
    binding: String,
    label: String,
    ttl: Duration,
}

impl Completion {
    async fn write(self) {
        if let Err(e) = self
            .locks
            .record_completions(&self.message_id, &[self.binding], self.ttl)
            .await
        {
            tracing::warn!(message_id = %self.message_id, binding = %self.label, error = %e,
                "cannot record the completion; a redelivered duplicate may run this binding again");
        }
    }
}

/// Keeps a message lock alive while its handlers run: extends it when half of its lifetime
/// is left, retries a failed extension while the lock is still valid, and reports whether the
/// lock was still ours at the end.
struct Lease {
    state: Arc<std::sync::Mutex<LeaseState>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

struct LeaseState {
    valid_until: tokio::time::Instant,
    lost: Option<String>,
}

impl Lease {
    fn keep(locks: Arc<dyn Locks>, held: Held, ttl: Duration) -> Lease {
        let state = Arc::new(std::sync::Mutex::new(LeaseState {
            valid_until: held.valid_until,
            lost: None,
        }));
        let stop = CancellationToken::new();
        let task = tokio::spawn(keep_alive(locks, held, ttl, state.clone(), stop.clone()));
        Lease { state, stop, task }
    }

    /// Stop extending; `Err(reason)` if the lock was lost or ran out.
    async fn finish(self) -> Result<(), String> {
        self.stop.cancel();
        let _ = self.task.await;
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(reason) = &state.lost {
            return Err(reason.clone());
        }
        if tokio::time::Instant::now() >= state.valid_until {
            return Err("its validity ran out before the handlers finished".into());
        }
        Ok(())
    }
}

/// When to extend a lock valid until `valid_until`: with half its lifetime left.
fn renew_at(valid_until: tokio::time::Instant, ttl: Duration) -> tokio::time::Instant {
    valid_until.checked_sub(ttl / 2).unwrap_or(valid_until)
}

async fn keep_alive(
    locks: Arc<dyn Locks>,
    mut held: Held,
    ttl: Duration,
    state: Arc<std::sync::Mutex<LeaseState>>,
    stop: CancellationToken,
) {
    let retry = (ttl / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut next = renew_at(held.valid_until, ttl);
    let lose = |reason: String| {
        state.lock().unwrap_or_else(|p| p.into_inner()).lost = Some(reason);
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            answer = locks.extend(&held, ttl) => answer,
        };
        match answer {
            Ok(Some(valid_until)) => {
                held.valid_until = valid_until;
                state.lock().unwrap_or_else(|p| p.into_inner()).valid_until = valid_until;
                next = renew_at(valid_until, ttl);
                tracing::debug!(message_id = %held.message_id, "message lock extended");
            }
            Ok(None) => {
                tracing::warn!(message_id = %held.message_id, "the message lock was lost: it expired or another consumer holds it");
                lose("another consumer holds it, or it expired".into());
                return;
            }
            Err(e) => {
                let now = tokio::time::Instant::now();
                if now >= held.valid_until {
                    tracing::error!(message_id = %held.message_id, error = %e, "the message lock expired: it could not be extended in time");
                    lose(format!("it could not be extended before it expired ({e})"));
                    return;
                }
                tracing::warn!(message_id = %held.message_id, error = %e, "cannot extend the message lock yet; retrying while it is valid");
                next = (now + retry).min(held.valid_until);
            }
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
