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
//!
//! Production behaviour:
//!
//! - **Backpressure.** A poller asks for at most as many messages as there are free slots of
//!   `sqs.max_in_flight`; a message holds its slot from receipt until it is settled (its
//!   delete done), so a poller waits instead of receiving what it cannot run. Every message
//!   runs and settles in its own task: a slow handler never holds up its batch-mates.
//! - **Visibility heartbeat.** One keeper task per message extends its lock (with half of its
//!   lifetime left) and, while its handlers run, its visibility: at half the visibility
//!   timeout after receipt, and again at half of each extension, up to
//!   `sqs.max_visibility_extension_secs` after receipt. It stops the moment the handlers
//!   return, so a long handler is not run twice because its message reappeared.
//! - **Graceful drain.** On shutdown the pollers stop receiving at once; a long poll already
//!   sent is awaited (the broker cannot recall it) and whatever it brings is given back with
//!   visibility 0. Running handlers get `sqs.shutdown_timeout_secs` to finish and settle;
//!   every received message that has not started — waiting for a lock retry, or behind an
//!   earlier message of its FIFO group — is given back at once, so another host takes it now.
//! - **FIFO.** Messages carrying a group id (FIFO queues) run one at a time per group, in
//!   their order in the batch (the broker delivers nothing more of a group while some of it is
//!   in flight). When a message of a group is not settled (an error, a retry, a lock held
//!   elsewhere), the rest of its group in the batch is given back so the order holds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use abi_stable::std_types::{RString, RVec};
use arc_swap::ArcSwap;
use iniesta_plugin_api::ffi::{AttributeFfi, MessageFfi, OutcomeFfi};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, BrokerError, Received};
use crate::lock::{self, completion, Claim, Held, LockError, Locks};
use crate::ops::console::RecentFailures;
use crate::ops::errors::{ErrorReporter, FailureKind};
use crate::ops::health::Health;
use crate::ops::metrics as m;
use crate::route::{Binding, Routes};
use crate::wire::{self, DecodeError, Envelope};

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
    /// The topic whose SNS envelopes the queue receives (raw delivery off), if any.
    pub envelope_topic: Option<String>,
    /// Lock validity (extended while handlers run).
    pub lock_ttl: Duration,
    /// Lock attempts, as aioredlock counts `retry_count` (at least one).
    pub lock_retry_count: u32,
    /// How long completion records are kept; zero turns them off.
    pub completion_ttl: Duration,
    /// The queue's visibility timeout: the heartbeat extends by this much, at half of it.
    pub visibility_timeout: Duration,
    /// The longest a message is kept invisible by heartbeats, counted from its receipt; zero
    /// turns the heartbeat off.
    pub max_visibility_extension: Duration,
}

impl Settings {
    /// How the queue delivers, for decoding.
    pub fn delivery(&self) -> wire::DeliveryContext<'_> {
        wire::DeliveryContext {
            event_key: &self.event_key,
            envelope_topic: self.envelope_topic.as_deref(),
        }
    }

    /// From a config.
    pub fn from_config(config: &crate::config::Config) -> Settings {
        Settings {
            pollers: config.sqs.pollers,
            max_messages: config.sqs.max_messages,
            wait: Duration::from_secs(u64::from(config.sqs.wait_time_seconds)),
            max_in_flight: config.sqs.max_in_flight,
            shutdown_timeout: Duration::from_secs(config.sqs.shutdown_timeout_secs),
            event_key: config.sns.event_key.clone(),
            envelope_topic: config.envelope_topic().map(str::to_string),
            lock_ttl: lock::ttl_from_secs(config.lock.timeout_secs.max(1)),
            lock_retry_count: config.lock.retry_count,
            completion_ttl: lock::ttl_from_secs(config.lock.completion_ttl_secs),
            visibility_timeout: Duration::from_secs(u64::from(config.sqs.visibility_timeout)),
            max_visibility_extension: Duration::from_secs(config.sqs.max_visibility_extension_secs),
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
    health: Arc<Health>,
    errors: Option<ErrorReporter>,
    failures: Option<Arc<RecentFailures>>,
}

/// A running pipeline's shared state.
struct Inner {
    broker: Arc<dyn Broker>,
    routes: Arc<ArcSwap<Routes>>,
    locks: Arc<dyn Locks>,
    settings: Settings,
    health: Arc<Health>,
    errors: Option<ErrorReporter>,
    /// The console's list of recent failures.
    failures: Option<Arc<RecentFailures>>,
    /// Set while the lock service cannot decide: pollers stop receiving until it answers.
    lock_outage: AtomicBool,
    /// `max_in_flight` slots.
    in_flight: Arc<Semaphore>,
    /// Messages received and not yet settled or given back.
    messages: Arc<AtomicUsize>,
    /// To the batch deleter.
    deletes: mpsc::UnboundedSender<Delete>,
    /// Fires on the first shutdown signal.
    shutdown: CancellationToken,
}

/// A message's in-flight slot: one of the `max_in_flight` permits, counted in the in-flight
/// gauge. It is held from receipt until the message is settled (its delete included) or
/// given back; a timed-out handler's thread keeps a reference until it really returns.
struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
    count: Arc<AtomicUsize>,
}

impl Slot {
    fn new(permit: Option<OwnedSemaphorePermit>, count: &Arc<AtomicUsize>) -> Arc<Slot> {
        count.fetch_add(1, Ordering::AcqRel);
        metrics::gauge!(m::IN_FLIGHT).increment(1.0);
        Arc::new(Slot {
            _permit: permit,
            count: count.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(m::IN_FLIGHT).decrement(1.0);
    }
}

/// A received, decoded message waiting for its lock, with its in-flight slot.
struct Taken {
    message: Received,
    envelope: Envelope,
    slot: Arc<Slot>,
    /// Taken just before the receive call: the visibility timeout runs from (after) here.
    received_at: Instant,
}

/// An acked message for the batch deleter.
struct Delete {
    receipt: String,
    message_id: String,
    event: String,
    _slot: Arc<Slot>,
}

/// A received message to give back (visibility 0).
struct GiveBack {
    receipt: String,
    message_id: String,
    event: String,
}

impl From<&Taken> for GiveBack {
    fn from(t: &Taken) -> GiveBack {
        GiveBack {
            receipt: t.message.receipt.clone(),
            message_id: t.envelope.message_id.clone(),
            event: t.envelope.event.clone(),
        }
    }
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
            health: Health::new(),
            errors: None,
            failures: None,
        }
    }

    /// Report readiness through `health` (`/health`).
    pub fn with_health(mut self, health: Arc<Health>) -> Pipeline {
        self.health = health;
        self
    }

    /// Report handler failures through `errors` (`[errors] webhook_url`).
    pub fn with_error_reporter(mut self, errors: Option<ErrorReporter>) -> Pipeline {
        self.errors = errors;
        self
    }

    /// Keep the latest handler failures for the operator console.
    pub fn with_recent_failures(mut self, failures: Option<Arc<RecentFailures>>) -> Pipeline {
        self.failures = failures;
        self
    }

    /// Run until `shutdown` fires, then drain: stop receiving, give back what has not
    /// started, let running handlers finish and settle (up to the shutdown timeout), flush
    /// pending deletes and return.
    pub async fn run(self, shutdown: CancellationToken) {
        let in_flight = Arc::new(Semaphore::new(self.settings.max_in_flight));
        let (delete_tx, delete_rx) = mpsc::unbounded_channel::<Delete>();
        let flush = CancellationToken::new();
        let messages = Arc::new(AtomicUsize::new(0));
        let deleter = tokio::spawn(run_deleter(
            self.broker.clone(),
            delete_rx,
            flush.clone(),
            self.settings.max_in_flight,
        ));
        let inner = Arc::new(Inner {
            broker: self.broker,
            routes: self.routes,
            locks: self.locks,
            settings: self.settings,
            health: self.health,
            errors: self.errors,
            failures: self.failures,
            lock_outage: AtomicBool::new(false),
            in_flight: in_flight.clone(),
            messages: messages.clone(),
            deletes: delete_tx,
            shutdown: shutdown.clone(),
        });
        let mut pollers = Vec::new();
        for poller in 0..inner.settings.pollers {
            pollers.push(tokio::spawn(inner.clone().poll(poller)));
        }
        inner.health.polling_started();
        tracing::info!(broker = %inner.broker.describe(), locks = %inner.locks.describe(), pollers = inner.settings.pollers, max_in_flight = inner.settings.max_in_flight, "consuming");
        shutdown.cancelled().await;

        inner.health.draining();
        let settings = inner.settings.clone();
        let started = Instant::now();
        let deadline = started + settings.shutdown_timeout;
        tracing::info!(
            in_flight = messages.load(Ordering::Acquire),
            shutdown_timeout_secs = settings.shutdown_timeout.as_secs(),
            "draining: receiving stopped; running handlers may finish, and unstarted messages go back to the queue"
        );
        let locks = inner.locks.clone();
        drop(inner);
        // A poller waiting for a long poll's answer stops when it comes (at most the poll's
        // wait), giving back what it brought; the handlers drain meanwhile.
        let pollers_done = async {
            let bound = settings.wait + Duration::from_secs(15);
            if tokio::time::timeout(bound, futures_util::future::join_all(pollers))
                .await
                .is_err()
            {
                tracing::warn!("a receive did not answer after shutdown; what it took returns after its visibility timeout");
            }
        };
        let all = u32::try_from(settings.max_in_flight).unwrap_or(u32::MAX);
        let handlers_done = tokio::time::timeout_at(deadline, in_flight.acquire_many(all));
        let ((), drained) = tokio::join!(pollers_done, handlers_done);
        match drained {
            Ok(_) => tracing::info!(
                drain_ms = started.elapsed().as_millis() as u64,
                "drained: all running handlers finished and their messages are settled"
            ),
            Err(_) => tracing::warn!(
                still_running = messages.load(Ordering::Acquire),
                timeout_secs = settings.shutdown_timeout.as_secs(),
                "handlers still running at the shutdown timeout; their messages will be redelivered after their visibility timeout"
            ),
        }
        // Send what is queued for deletion, then stop the deleter.
        flush.cancel();
        if tokio::time::timeout(Duration::from_secs(10), deleter)
            .await
            .is_err()
        {
            tracing::warn!("pending deletes did not finish; those messages will be redelivered");
        }
        // Releases and completion records still queued for the next acquire.
        locks.flush().await;
    }
}

impl Inner {
    async fn poll(self: Arc<Self>, poller: usize) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            // While the lock service is down, receiving would only raise receive counts
            // towards the redrive policy: wait for it instead.
            if self.lock_outage.load(Ordering::Acquire) && !self.wait_for_locks(poller).await {
                break;
            }
            // Receive only as many messages as there is room to run.
            let first = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                permit = self.in_flight.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let mut permits = vec![first];
            while permits.len() < self.settings.max_messages as usize {
                match self.in_flight.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let want = u32::try_from(permits.len()).unwrap_or(1);
            let received_at = Instant::now();
            let batch = match self
                .broker
                .receive(want, self.settings.wait, &self.shutdown)
                .await
            {
                Ok(batch) => {
                    self.health.broker_answered();
                    backoff = Duration::from_millis(100);
                    batch
                }
                Err(e) => {
                    self.health.broker_failed();
                    metrics::counter!(m::POLL_ERRORS).increment(1);
                    tracing::error!(poller, error = %e, retry_in_ms = backoff.as_millis() as u64, "receive failed; retrying");
                    drop(permits);
                    tokio::select! {
                        biased;
                        _ = self.shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            if batch.is_empty() {
                continue;
            }
            metrics::counter!(m::RECEIVED).increment(batch.len() as u64);
            if self.shutdown.is_cancelled() {
                // The long poll pending at shutdown brought these: none has started.
                let back = batch
                    .iter()
                    .map(|r| GiveBack {
                        receipt: r.receipt.clone(),
                        message_id: r.message_id.clone(),
                        event: String::new(),
                    })
                    .collect();
                self.give_back(back, Vec::new(), "shutdown").await;
                break;
            }
            let count = batch.len();
            if let Err(e) = self.dispatch(batch, permits, received_at).await {
                metrics::counter!(m::LOCK_FAILURES, "reason" => "unavailable")
                    .increment(count as u64);
                self.health.lock_outage(true);
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
    async fn wait_for_locks(&self, poller: usize) -> bool {
        let mut pause = Duration::from_millis(250);
        let mut last_report = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return false,
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
                    self.health.lock_outage(false);
                    return true;
                }
                Err(e) => {
                    if last_report.elapsed() >= Duration::from_secs(30) {
                        tracing::warn!(poller, error = %e, "the lock service is still unavailable; messages wait on the queue");
                        last_report = Instant::now();
                    }
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Decode a receive batch, take all its locks (one round trip per Redis node, which also
    /// reads the completion records), and start a task per locked message, or per FIFO group.
    /// An error means the lock service could not decide: every message of the batch is left
    /// on the queue.
    async fn dispatch(
        self: &Arc<Self>,
        batch: Vec<Received>,
        mut permits: Vec<OwnedSemaphorePermit>,
        received_at: Instant,
    ) -> Result<(), LockError> {
        let mut taken = Vec::with_capacity(batch.len());
        // FIFO groups whose order is already broken in this batch: the rest of them go back.
        let mut broken: HashSet<String> = HashSet::new();
        let mut back: Vec<GiveBack> = Vec::new();
        for message in batch {
            let permit = permits.pop();
            if permit.is_none() {
                // Never more than asked for; if a broker overdelivers, handle it anyway.
                tracing::warn!(message_id = %message.message_id, "broker returned more messages than asked for");
            }
            let slot = Slot::new(permit, &self.messages);
            match wire::decode(
                &message.message_id,
                &message.body,
                &message.attributes,
                message.sent_timestamp_ms,
                self.settings.delivery(),
            ) {
                Ok(envelope) => {
                    let t = Taken {
                        message,
                        envelope,
                        slot,
                        received_at,
                    };
                    match &t.message.group_id {
                        Some(group) if broken.contains(group) => back.push(GiveBack::from(&t)),
                        _ => taken.push(t),
                    }
                }
                Err(e @ DecodeError::ForeignTopic { .. }) => {
                    // Never meant for this queue: no redelivery can change that.
                    if let Some(group) = &message.group_id {
                        broken.insert(group.clone());
                    }
                    tokio::spawn(self.clone().refuse(message, e.to_string(), slot));
                }
                Err(e) => {
                    metrics::counter!(m::RETRIED, "reason" => "undecodable").increment(1);
                    tracing::error!(message_id = %message.message_id, receive_count = message.receive_count, error = %e,
                        "cannot decode message; left on the queue for the redrive policy");
                    if let Some(group) = &message.group_id {
                        broken.insert(group.clone());
                    }
                }
            }
        }
        drop(permits);
        if !back.is_empty() {
            self.give_back(back, Vec::new(), "fifo_order").await;
        }
        if taken.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = taken
            .iter()
            .map(|t| t.envelope.message_id.clone())
            .collect();
        let claims = self.locks.try_acquire(&ids, self.settings.lock_ttl).await?;
        let mut claims = claims.into_iter();
        let mut busy = Vec::new();
        let mut groups: Vec<(String, Vec<(Taken, Claim)>)> = Vec::new();
        let mut back = Vec::new();
        let mut back_held = Vec::new();
        for t in taken {
            let claim = claims.next().flatten();
            let Some(group) = t.message.group_id.clone() else {
                match claim {
                    Some(claim) => self.start(t, claim),
                    None => busy.push(t),
                }
                continue;
            };
            if broken.contains(&group) {
                if let Some(claim) = claim {
                    back_held.push(claim.held);
                }
                back.push(GiveBack::from(&t));
                continue;
            }
            match claim {
                Some(claim) => match groups.iter_mut().find(|(g, _)| *g == group) {
                    Some((_, entries)) => entries.push((t, claim)),
                    None => groups.push((group, vec![(t, claim)])),
                },
                None => {
                    // Locked elsewhere: left; what follows it in its group must wait for it.
                    leave_locked(&t);
                    broken.insert(group);
                }
            }
        }
        if !back.is_empty() {
            self.give_back(back, back_held, "fifo_order").await;
        }
        for (group, entries) in groups {
            tokio::spawn(self.clone().run_group(group, entries));
        }
        if busy.is_empty() {
            return Ok(());
        }
        let attempts = lock::attempts(self.settings.lock_retry_count);
        if attempts > 1 {
            tokio::spawn(self.clone().retry_busy(busy, attempts - 1));
        } else {
            busy.iter().for_each(leave_locked);
        }
        Ok(())
    }

    /// Dead-letter a message refused before any handler (an envelope from a foreign topic);
    /// without a dead-letter queue it stays on the queue, logged.
    async fn refuse(self: Arc<Self>, message: Received, reason: String, slot: Arc<Slot>) {
        match self.broker.dead_letter(&message, &reason).await {
            Ok(()) => {
                metrics::counter!(m::DEAD_LETTERED).increment(1);
                tracing::warn!(message_id = %message.message_id, reason = %reason, "refused before any handler: moved to the dead-letter queue");
            }
            Err(e) => {
                metrics::counter!(m::RETRIED, "reason" => "undecodable").increment(1);
                tracing::error!(message_id = %message.message_id, reason = %reason, error = %e, "refused before any handler, but cannot dead-letter it; it stays on the queue for redelivery");
            }
        }
        drop(slot);
    }

    /// Run one (non-FIFO) locked message in its own task.
    fn start(self: &Arc<Self>, taken: Taken, claim: Claim) {
        let keeper = Keeper::start(self, &taken, claim.held.clone());
        let this = self.clone();
        tokio::spawn(async move {
            this.run_message(taken, claim, keeper).await;
        });
    }

    /// Start a task for every message whose lock was taken; return the others.
    fn start_claimed(
        self: &Arc<Self>,
        taken: Vec<Taken>,
        claims: Vec<Option<Claim>>,
    ) -> Vec<Taken> {
        let mut busy = Vec::new();
        let mut claims = claims.into_iter();
        for t in taken {
            match claims.next().flatten() {
                Some(claim) => self.start(t, claim),
                None => busy.push(t),
            }
        }
        busy
    }

    /// Try again, after a random pause, the locks another consumer held (aioredlock's
    /// `retry_count`); what is still held after the last attempt is left for redelivery. At
    /// shutdown, what still waits is given back at once.
    async fn retry_busy(self: Arc<Self>, mut busy: Vec<Taken>, attempts: u32) {
        for _ in 0..attempts {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => {
                    let back = busy.iter().map(GiveBack::from).collect();
                    self.give_back(back, Vec::new(), "shutdown").await;
                    return;
                }
                _ = tokio::time::sleep(lock::retry_delay()) => {}
            }
            let ids: Vec<String> = busy.iter().map(|t| t.envelope.message_id.clone()).collect();
            match self.locks.try_acquire(&ids, self.settings.lock_ttl).await {
                Ok(claims) => busy = self.start_claimed(busy, claims),
                Err(e) => {
                    tracing::warn!(count = busy.len(), message_ids = ?ids, error = %e, "cannot retry the message locks; the messages are left for redelivery");
                    return;
                }
            }
            if busy.is_empty() {
                return;
            }
        }
        busy.iter().for_each(leave_locked);
    }

    /// Run a FIFO group's messages of one batch one after another, in order. Their locks and
    /// visibility are kept alive while they wait. When one is not settled, or at shutdown,
    /// the ones still waiting are given back.
    async fn run_group(self: Arc<Self>, group: String, entries: Vec<(Taken, Claim)>) {
        let mut waiting: VecDeque<(Taken, Claim, Keeper)> = entries
            .into_iter()
            .map(|(t, claim)| {
                let keeper = Keeper::start(&self, &t, claim.held.clone());
                (t, claim, keeper)
            })
            .collect();
        while let Some((t, claim, keeper)) = waiting.pop_front() {
            let message_id = t.envelope.message_id.clone();
            let run = self.run_message(t, claim, keeper);
            tokio::pin!(run);
            let gone = tokio::select! {
                gone = &mut run => gone,
                _ = self.shutdown.cancelled(), if !waiting.is_empty() => {
                    self.give_back_waiting(std::mem::take(&mut waiting), "shutdown").await;
                    run.await
                }
            };
            if !gone && !waiting.is_empty() {
                tracing::info!(group = %group, message_id = %message_id, waiting = waiting.len(),
                    "FIFO: the message was not settled, so the rest of its group in this batch is given back to keep the group's order");
                self.give_back_waiting(std::mem::take(&mut waiting), "fifo_order")
                    .await;
            }
        }
    }

    async fn give_back_waiting(
        &self,
        waiting: VecDeque<(Taken, Claim, Keeper)>,
        reason: &'static str,
    ) {
        let mut back = Vec::new();
        let mut held = Vec::new();
        let mut slots = Vec::new();
        for (t, claim, keeper) in waiting {
            // Stopped first, so no late heartbeat hides the message again.
            keeper.stop().await;
            back.push(GiveBack::from(&t));
            held.push(claim.held);
            slots.push(t.slot);
        }
        self.give_back(back, held, reason).await;
        drop(slots);
    }

    /// Give received, unstarted messages back to the queue (visibility 0) so any consumer
    /// can take them now, and release their locks.
    async fn give_back(&self, back: Vec<GiveBack>, held: Vec<Held>, reason: &'static str) {
        if back.is_empty() {
            return;
        }
        // The locks go first, while the messages are still invisible: a consumer that took one
        // the moment it is visible must not find it locked (and spend one of its deliveries).
        if !held.is_empty() {
            if let Err(e) = self.locks.release(&held).await {
                tracing::warn!(count = held.len(), error = %e, "cannot release the message locks; they will expire");
            }
        }
        let receipts: Vec<String> = back.iter().map(|b| b.receipt.clone()).collect();
        let failed: HashMap<String, String> =
            match self.broker.change_visibility_batch(&receipts, 0).await {
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

    /// Route, run and settle one locked message; `true` when it is gone from the queue
    /// (deleted or dead-lettered), which lets the rest of its FIFO group go on.
    async fn run_message(self: &Arc<Self>, taken: Taken, claim: Claim, keeper: Keeper) -> bool {
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
        let routes = self.routes.load_full();
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
            self.report(FailureKind::DeadLetter, None, &message, &envelope, &reason);
            let invalid = CallResult::Outcome(OutcomeFfi::DeadLetter {
                reason: reason.into(),
            });
            self.settle(&message, &envelope, &bindings, &[invalid], &slot, &mut held)
                .await
        } else {
            let records = !self.settings.completion_ttl.is_zero();
            let (done, todo): (Vec<_>, Vec<_>) = bindings
                .into_iter()
                .partition(|b| records && claim.completed.contains(&completion::id_of(b)));
            if todo.is_empty() {
                keeper.stop().await;
                tracing::info!(message_id = %envelope.message_id, event = %envelope.event, receive_count = message.receive_count, bindings = %labels(&done),
                    "every binding already completed this message (a redelivered duplicate); deleting it without running anything");
                self.delete(&message, &envelope, &slot)
            } else {
                if !done.is_empty() {
                    tracing::info!(message_id = %envelope.message_id, event = %envelope.event, receive_count = message.receive_count, skipped = %labels(&done),
                        "bindings that already completed this message are not run again");
                }
                let results = self.call_all(&envelope, &message, &todo, &slot).await;
                log_results(&message, &envelope, &todo, &results);
                self.report_results(&message, &envelope, &todo, &results);
                // The heartbeat stops the moment the handlers return.
                match keeper.finish().await {
                    Ok(()) => {
                        self.settle(&message, &envelope, &todo, &results, &slot, &mut held)
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

    async fn release(&self, envelope: &Envelope, held: Held) {
        if let Err(e) = self.locks.release(&[held]).await {
            tracing::warn!(message_id = %envelope.message_id, event = %envelope.event, error = %e, "cannot release the message lock; it will expire");
        }
    }

    async fn call_all(
        &self,
        envelope: &Envelope,
        message: &Received,
        bindings: &[Arc<Binding>],
        slot: &Arc<Slot>,
    ) -> Vec<CallResult> {
        let ffi = Arc::new(message_ffi(envelope, message.receive_count));
        let records = !self.settings.completion_ttl.is_zero();
        // Every binding's call at once, collected in order; they are futures of this task, so
        // no task is spawned per call. The blocking-pool calls are all started (in this
        // closure) before any inline call runs (when `join_all` first polls), so an inline
        // sibling cannot eat into their timeouts.
        let started = Instant::now();
        let calls: Vec<_> = bindings.iter().map(|binding| {
            let span = tracing::info_span!("handle", message_id = %envelope.message_id, event = %envelope.event, binding = %binding.label);
            // Each ack is recorded as soon as it comes, before the lock is released, so a
            // duplicate delivered later skips this binding even if a sibling fails.
            let record = records.then(|| Completion {
                locks: self.locks.clone(),
                message_id: envelope.message_id.clone(),
                event: envelope.event.clone(),
                binding: completion::id_of(binding),
                label: binding.label.clone(),
                ttl: self.settings.completion_ttl,
            });
            let call = if binding.inline {
                Call::Inline(ffi.clone(), span)
            } else {
                Call::Blocking(call_blocking(binding, ffi.clone(), slot.clone(), span))
            };
            async move {
                let result = match call {
                    Call::Blocking(task) => match tokio::time::timeout_at(started + binding.timeout, task).await {
                        Ok(Ok(outcome)) => CallResult::Outcome(outcome),
                        Ok(Err(e)) => CallResult::Crashed(e.to_string()),
                        Err(_) => CallResult::TimedOut,
                    },
                    Call::Inline(ffi, span) => call_inline(binding, &ffi, span),
                };
                metrics::histogram!(m::HANDLER_DURATION, "binding" => binding.label.clone())
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!(m::HANDLER_CALLS, "binding" => binding.label.clone(), "result" => result_label(&result))
                    .increment(1);
                if let (CallResult::Outcome(OutcomeFfi::Ack), Some(record)) = (&result, record) {
                    record.write().await;
                }
                result
            }
        }).collect();
        futures_util::future::join_all(calls).await
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
            self.errors.as_ref(),
            self.failures.as_deref(),
            message.receive_count,
            envelope,
            bindings,
            results,
        );
    }

    fn report(
        &self,
        kind: FailureKind,
        binding: Option<&Arc<Binding>>,
        message: &Received,
        envelope: &Envelope,
        reason: &str,
    ) {
        report_failure(
            self.errors.as_ref(),
            self.failures.as_deref(),
            kind,
            binding,
            message.receive_count,
            envelope,
            reason,
        );
    }

    /// Queue an acked message for the batch deleter; `false` if the deleter is gone.
    fn delete(&self, message: &Received, envelope: &Envelope, slot: &Arc<Slot>) -> bool {
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
    async fn settle(
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
                if let Err(e) = self.broker.change_visibility(&message.receipt, secs).await {
                    tracing::warn!(message_id = %id, event = %event, bindings = %labels, error = %e, "cannot change visibility; the message returns after its visibility timeout");
                } else {
                    tracing::debug!(message_id = %id, event = %event, bindings = %labels, after_secs = secs, "retry: visible again after the delay");
                }
                false
            }
            Settlement::DeadLetter(reason) => match self.broker.dead_letter(message, &reason).await
            {
                Ok(()) => {
                    metrics::counter!(m::DEAD_LETTERED).increment(1);
                    tracing::info!(message_id = %id, event = %event, bindings = %labels, reason = %reason, "moved to the dead-letter queue");
                    true
                }
                Err(e) => {
                    tracing::error!(message_id = %id, event = %event, bindings = %labels, error = %e, "cannot dead-letter the message; it stays on the queue for redelivery");
                    false
                }
            },
        }
    }
}

/// A decoded message as handlers receive it across the plugin boundary.
pub(crate) fn message_ffi(envelope: &Envelope, receive_count: u32) -> MessageFfi {
    MessageFfi {
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
        receive_count,
        sent_timestamp_ms: envelope.sent_timestamp_ms,
    }
}

/// Report every failing result (error, panic, timeout, crash, dead letter) of one message's
/// calls to the error webhook and the console's recent failures, when they are configured.
/// Used for queue messages and ingress messages alike.
pub(crate) fn report_failures(
    errors: Option<&ErrorReporter>,
    failures: Option<&RecentFailures>,
    receive_count: u32,
    envelope: &Envelope,
    bindings: &[Arc<Binding>],
    results: &[CallResult],
) {
    for (binding, result) in bindings.iter().zip(results) {
        let (kind, reason) = match result {
            CallResult::Outcome(OutcomeFfi::Ack | OutcomeFfi::Retry { .. }) => continue,
            CallResult::Outcome(OutcomeFfi::DeadLetter { reason }) => {
                (FailureKind::DeadLetter, reason.to_string())
            }
            CallResult::Outcome(OutcomeFfi::Failed { reason }) => {
                (FailureKind::Error, reason.to_string())
            }
            CallResult::Outcome(OutcomeFfi::Panicked { message }) => {
                (FailureKind::Panic, message.to_string())
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

/// Report one failure to the error webhook and the console's recent failures.
pub(crate) fn report_failure(
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
        errors.report(errors.record(
            kind,
            binding.map(|b| b.as_ref()),
            &envelope.event,
            &envelope.message_id,
            receive_count,
            reason,
            &envelope.body,
        ));
    }
}

/// One binding's call: started on the blocking pool, or to be made inline when polled.
enum Call {
    Blocking(tokio::task::JoinHandle<OutcomeFfi>),
    Inline(Arc<MessageFfi>, tracing::Span),
}

/// Start a handler call on the blocking pool (the caller abandons it at its timeout). The slot
/// travels with the call: a timed-out handler keeps it until its thread really returns, so
/// stuck handlers cannot pile up threads.
fn call_blocking(
    binding: &Arc<Binding>,
    ffi: Arc<MessageFfi>,
    slot: Arc<Slot>,
    span: tracing::Span,
) -> tokio::task::JoinHandle<OutcomeFfi> {
    let binding = binding.clone();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let _entered = span.enter();
        binding.handler.handle(&ffi, &binding.context)
    })
}

/// Call an `inline = true` handler right here, on the async worker. It cannot be abandoned,
/// so a call past its timeout is only reported (its outcome still counts).
fn call_inline(binding: &Binding, ffi: &MessageFfi, span: tracing::Span) -> CallResult {
    let started = std::time::Instant::now();
    let outcome = {
        let _entered = span.enter();
        binding.handler.handle(ffi, &binding.context)
    };
    let took = started.elapsed();
    if took > binding.timeout {
        metrics::counter!(m::INLINE_OVERRUNS, "binding" => binding.label.clone()).increment(1);
        tracing::warn!(binding = %binding.label, took_ms = took.as_millis() as u64, timeout_secs = binding.timeout.as_secs(),
            "an inline handler ran past its timeout, holding up an async worker thread all along; bind handlers that can block without `inline`");
    }
    CallResult::Outcome(outcome)
}

/// The `result` label of a handler call in `iniesta_handler_calls_total`.
pub(crate) fn result_label(result: &CallResult) -> &'static str {
    match result {
        CallResult::Outcome(OutcomeFfi::Ack) => "ack",
        CallResult::Outcome(OutcomeFfi::Retry { .. }) => "retry",
        CallResult::Outcome(OutcomeFfi::DeadLetter { .. }) => "dead_letter",
        CallResult::Outcome(OutcomeFfi::Failed { .. }) => "error",
        CallResult::Outcome(OutcomeFfi::Panicked { .. }) => "panic",
        CallResult::TimedOut => "timeout",
        CallResult::Crashed(_) => "crashed",
    }
}

fn leave_locked(taken: &Taken) {
    metrics::counter!(m::LOCK_FAILURES, "reason" => "held_elsewhere").increment(1);
    tracing::info!(message_id = %taken.envelope.message_id, event = %taken.envelope.event, receive_count = taken.message.receive_count,
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
    let event = &envelope.event;
    for (binding, result) in bindings.iter().zip(results) {
        match result {
            CallResult::Outcome(OutcomeFfi::Ack) => {
                tracing::debug!(message_id = %id, event = %event, binding = %binding.label, "acked")
            }
            CallResult::Outcome(OutcomeFfi::Retry { after_secs }) => {
                tracing::info!(message_id = %id, event = %event, binding = %binding.label, after_secs, "handler asked to retry")
            }
            CallResult::Outcome(OutcomeFfi::DeadLetter { reason }) => {
                tracing::warn!(message_id = %id, event = %event, binding = %binding.label, reason = %reason, "handler dead-lettered the message")
            }
            CallResult::Outcome(OutcomeFfi::Failed { reason }) => {
                tracing::warn!(message_id = %id, event = %event, binding = %binding.label, error = %reason, receive_count = message.receive_count, "handler failed; the message will be redelivered")
            }
            CallResult::Outcome(OutcomeFfi::Panicked { message: text }) => {
                tracing::error!(message_id = %id, event = %event, binding = %binding.label, panic = %text, receive_count = message.receive_count, "handler panicked; the message will be redelivered")
            }
            CallResult::TimedOut => {
                tracing::error!(message_id = %id, event = %event, binding = %binding.label, timeout_secs = binding.timeout.as_secs(), "handler timed out; the message will be redelivered")
            }
            CallResult::Crashed(e) => {
                tracing::error!(message_id = %id, event = %event, binding = %binding.label, error = %e, "handler task failed; the message will be redelivered")
            }
        }
    }
}

/// A completion record to write once a binding acked.
struct Completion {
    locks: Arc<dyn Locks>,
    message_id: String,
    event: String,
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
            tracing::warn!(message_id = %self.message_id, event = %self.event, binding = %self.label, error = %e,
                "cannot record the completion; a redelivered duplicate may run this binding again");
        }
    }
}

/// Keeps a message alive while it waits or its handlers run, in one task: extends its lock
/// when half of the lock's lifetime is left (retrying a failed extension while the lock is
/// still valid), and its visibility — the heartbeat — at half the visibility timeout after
/// receipt and at half of each extension, up to the configured maximum. It reports whether
/// the lock was still ours at the end.
struct Keeper {
    state: Arc<std::sync::Mutex<KeepState>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

struct KeepState {
    lock_valid_until: Instant,
    lost: Option<String>,
}

impl Keeper {
    fn start(inner: &Inner, taken: &Taken, held: Held) -> Keeper {
        let state = Arc::new(std::sync::Mutex::new(KeepState {
            lock_valid_until: held.valid_until,
            lost: None,
        }));
        let stop = CancellationToken::new();
        let heartbeat = Heartbeat::new(&inner.settings, taken);
        let services = KeepServices {
            locks: inner.locks.clone(),
            broker: inner.broker.clone(),
            event: taken.envelope.event.clone(),
            ttl: inner.settings.lock_ttl,
        };
        let task = tokio::spawn(keep_alive(
            services,
            held,
            heartbeat,
            state.clone(),
            stop.clone(),
        ));
        Keeper { state, stop, task }
    }

    /// Stop extending; `Err(reason)` if the lock was lost or ran out.
    async fn finish(self) -> Result<(), String> {
        self.stop.cancel();
        let _ = self.task.await;
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(reason) = &state.lost {
            return Err(reason.clone());
        }
        if Instant::now() >= state.lock_valid_until {
            return Err("its validity ran out before the handlers finished".into());
        }
        Ok(())
    }

    /// Stop extending (the message is settled or given back another way).
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// When to extend a lock valid until `valid_until`: with half its lifetime left.
fn renew_at(valid_until: Instant, ttl: Duration) -> Instant {
    valid_until.checked_sub(ttl / 2).unwrap_or(valid_until)
}

/// The visibility heartbeat of one delivery.
struct Heartbeat {
    receipt: String,
    message_id: String,
    event: String,
    /// The visibility timeout: each extension asks for this much.
    visibility: Duration,
    /// No extension past this (receipt + the maximum).
    until_max: Instant,
    /// Until when the message is surely invisible (as far as we know).
    invisible_until: Instant,
    /// The next extension.
    next: Instant,
    max_secs: u64,
}

impl Heartbeat {
    fn new(settings: &Settings, taken: &Taken) -> Option<Heartbeat> {
        let visibility = settings.visibility_timeout;
        if visibility.is_zero() || settings.max_visibility_extension.is_zero() {
            return None;
        }
        Some(Heartbeat {
            receipt: taken.message.receipt.clone(),
            message_id: taken.envelope.message_id.clone(),
            event: taken.envelope.event.clone(),
            visibility,
            until_max: taken.received_at + settings.max_visibility_extension,
            invisible_until: taken.received_at + visibility,
            next: taken.received_at + visibility / 2,
            max_secs: settings.max_visibility_extension.as_secs(),
        })
    }

    /// Extend the visibility once (or retry); `false` when the heartbeat is over.
    async fn beat(&mut self, broker: &dyn Broker) -> bool {
        let now = Instant::now();
        let left = self.until_max.saturating_duration_since(now);
        if left.as_secs() == 0 {
            tracing::warn!(message_id = %self.message_id, event = %self.event, max_visibility_extension_secs = self.max_secs,
                "handlers still running at sqs.max_visibility_extension_secs: no more visibility extensions, so the message may be delivered again while they run");
            return false;
        }
        let extension = Duration::from_secs(self.visibility.min(left).as_secs().max(1));
        let secs = u32::try_from(extension.as_secs()).unwrap_or(u32::MAX);
        // Not cancelled midway: a request already sent could land after the message is
        // settled or given back and hide it again, so stopping waits for its answer.
        let answer = broker.change_visibility(&self.receipt, secs).await;
        match answer {
            Ok(()) => {
                metrics::counter!(m::VISIBILITY_EXTENSIONS).increment(1);
                tracing::debug!(message_id = %self.message_id, event = %self.event, visibility_secs = secs, "handlers still running: message visibility extended");
                self.invisible_until = now + extension;
                self.next = if extension < self.visibility {
                    // The last one: the next tick finds the maximum reached.
                    self.invisible_until
                } else {
                    now + extension / 2
                };
                true
            }
            Err(BrokerError::StaleReceipt) => {
                tracing::warn!(message_id = %self.message_id, event = %self.event,
                    "cannot extend the message's visibility: its receipt is stale (it was redelivered or deleted)");
                false
            }
            Err(e) => {
                let now = Instant::now();
                if now >= self.invisible_until {
                    tracing::warn!(message_id = %self.message_id, event = %self.event, error = %e,
                        "could not extend the message's visibility in time; it may be delivered again while its handlers run");
                    return false;
                }
                tracing::warn!(message_id = %self.message_id, event = %self.event, error = %e,
                    "cannot extend the message's visibility yet; retrying while it is invisible");
                let retry = (self.visibility / 10)
                    .clamp(Duration::from_millis(100), Duration::from_secs(1));
                self.next = (now + retry).min(self.invisible_until);
                true
            }
        }
    }
}

/// What a keeper task extends through.
struct KeepServices {
    locks: Arc<dyn Locks>,
    broker: Arc<dyn Broker>,
    /// The message's event, for log lines.
    event: String,
    /// The lock's lifetime.
    ttl: Duration,
}

async fn keep_alive(
    services: KeepServices,
    mut held: Held,
    mut heartbeat: Option<Heartbeat>,
    state: Arc<std::sync::Mutex<KeepState>>,
    stop: CancellationToken,
) {
    let KeepServices {
        locks,
        broker,
        event,
        ttl,
    } = services;
    let retry = (ttl / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut lock_next = Some(renew_at(held.valid_until, ttl));
    let lose = |reason: String| {
        state.lock().unwrap_or_else(|p| p.into_inner()).lost = Some(reason);
    };
    loop {
        let beat_next = heartbeat.as_ref().map(|h| h.next);
        if lock_next.is_none() && beat_next.is_none() {
            // Nothing left to extend: wait to be stopped.
            stop.cancelled().await;
            return;
        }
        let far = Instant::now() + Duration::from_secs(86_400);
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(lock_next.unwrap_or(far)), if lock_next.is_some() => {
                let answer = tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    answer = locks.extend(&held, ttl) => answer,
                };
                match answer {
                    Ok(Some(valid_until)) => {
                        held.valid_until = valid_until;
                        state.lock().unwrap_or_else(|p| p.into_inner()).lock_valid_until = valid_until;
                        lock_next = Some(renew_at(valid_until, ttl));
                        tracing::debug!(message_id = %held.message_id, event = %event, "message lock extended");
                    }
                    Ok(None) => {
                        tracing::warn!(message_id = %held.message_id, event = %event, "the message lock was lost: it expired or another consumer holds it");
                        lose("another consumer holds it, or it expired".into());
                        lock_next = None;
                    }
                    Err(e) => {
                        let now = Instant::now();
                        if now >= held.valid_until {
                            tracing::error!(message_id = %held.message_id, event = %event, error = %e, "the message lock expired: it could not be extended in time");
                            lose(format!("it could not be extended before it expired ({e})"));
                            lock_next = None;
                        } else {
                            tracing::warn!(message_id = %held.message_id, event = %event, error = %e, "cannot extend the message lock yet; retrying while it is valid");
                            lock_next = Some((now + retry).min(held.valid_until));
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(beat_next.unwrap_or(far)), if beat_next.is_some() => {
                if let Some(beat) = heartbeat.as_mut() {
                    if !beat.beat(broker.as_ref()).await {
                        heartbeat = None;
                    }
                }
            }
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
async fn run_deleter(
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
    let mut seen = std::collections::HashSet::new();
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
