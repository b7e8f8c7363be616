//! Receiving: the poll loops (taking turns as [`super::receivers`] decides, each asking for a
//! full batch once there are that many free in-flight slots), decoding, taking a batch's locks
//! in one round trip (waiting out a lock-service outage, retrying locks held elsewhere) and
//! dispatching each locked message to its own task, or a FIFO group's messages to one task in
//! order.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::broker::Received;
use crate::lock::{self, Claim, LockError};
use crate::ops::metrics as m;
use crate::wire::{self, DecodeError};

use super::keepalive::Keeper;
use super::receivers;
use super::state::{GiveBack, Shared, Slot, Taken};

/// How long a receive loop waits for room for a full batch before it asks for what is free:
/// long enough that loops never split freed slots one by one while handlers are quick, short
/// enough that a few slow handlers do not leave the rest of the slots idle.
const FILL_WAIT: Duration = Duration::from_millis(50);
/// After a failed receive, a loop waits from 100 ms, doubling to 30 s, with jitter.
const RECEIVE_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(30));
/// While the lock service is down, a loop asks it again from 250 ms, doubling to 2 s.
const LOCK_WAIT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(250), Duration::from_secs(2));

impl Shared {
    /// One receive loop, until shutdown.
    pub(super) async fn poll(self: Arc<Self>, poller: usize) {
        let mut backoff = Backoff::new(RECEIVE_BACKOFF.0, RECEIVE_BACKOFF.1);
        // This poller's last receive failed (counted in `receive_failing`; the `broker` alert
        // is raised while any poller's is).
        let mut failing = false;
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            // While the lock service is down, receiving would only raise receive counts
            // towards the redrive policy: wait for it instead.
            if self.lock_outage.load(Ordering::Acquire) && !self.wait_for_locks(poller).await {
                break;
            }
            // Only the loops the adaptive count lets take turns receive.
            if !self.receivers.turn(poller, &self.shutdown).await {
                break;
            }
            // Receive only as many messages as there is room to run: a full batch, once there
            // is room for one.
            let Some(permits) = self.room_for_a_batch().await else {
                break;
            };
            let want = u32::try_from(permits.len()).unwrap_or(1);
            let received_at = Instant::now();
            let counted = ReceiveInFlight::count();
            let received = self
                .parts
                .broker
                .receive(want, self.parts.settings.wait, &self.shutdown)
                .await;
            drop(counted);
            let batch = match received {
                Ok(batch) => {
                    self.parts.health.broker_answered();
                    if std::mem::take(&mut failing) {
                        let mut failing_pollers = crate::mutex::lock(&self.receive_failing);
                        *failing_pollers = failing_pollers.saturating_sub(1);
                        if *failing_pollers == 0 {
                            // Logged under the lock: a poller failing now counts itself after
                            // this line, so its alert is a new incident, never lost behind it.
                            tracing::info!(
                                poller,
                                alert_cleared = "broker",
                                "receiving works again"
                            );
                        }
                    }
                    backoff.reset();
                    batch
                }
                Err(e) => {
                    self.parts.health.broker_failed();
                    if !std::mem::replace(&mut failing, true) {
                        *crate::mutex::lock(&self.receive_failing) += 1;
                    }
                    metrics::counter!(m::POLL_ERRORS).increment(1);
                    let pause = backoff.next_delay();
                    tracing::error!(poller, error = %e, alert = "broker", retry_in_ms = pause.as_millis() as u64, "receive failed; retrying");
                    drop(permits);
                    tokio::select! {
                        biased;
                        _ = self.shutdown.cancelled() => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    continue;
                }
            };
            self.receivers.after_receive(receivers::Received {
                asked: permits.len(),
                got: batch.len(),
                full: self.full_batch(),
                free_slots: self.in_flight.available_permits(),
            });
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
                self.parts.health.lock_outage(true);
                if !self.lock_outage.swap(true, Ordering::AcqRel) {
                    tracing::error!(poller, count, locks = %self.parts.locks.describe(), error = %e, alert = "lock",
                        "the lock service is unavailable: the received messages are left on the queue (not run, not deleted) and receiving pauses until it answers again");
                } else {
                    tracing::warn!(poller, count, error = %e, "the lock service is still unavailable; messages left on the queue");
                }
            }
        }
        tracing::debug!(poller, "poller stopped");
    }

    /// A full receive: `max_messages`, or `max_in_flight` when that is smaller.
    fn full_batch(&self) -> usize {
        (self.parts.settings.max_messages as usize)
            .min(self.parts.settings.max_in_flight)
            .max(1)
    }

    /// In-flight slots for one receive, one permit per message: a full batch once there is
    /// room for one, or — after [`FILL_WAIT`] without — whatever is free (at least one slot).
    /// `None` at shutdown.
    async fn room_for_a_batch(&self) -> Option<Vec<OwnedSemaphorePermit>> {
        let full = self.full_batch();
        let whole = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => return None,
            whole = tokio::time::timeout(
                FILL_WAIT,
                self.in_flight.clone().acquire_many_owned(u32::try_from(full).unwrap_or(1)),
            ) => whole,
        };
        let mut permit = match whole {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return None,
            Err(_) => {
                // Not room for a full batch in FILL_WAIT: take what is free, waiting for one.
                let mut first = tokio::select! {
                    biased;
                    _ = self.shutdown.cancelled() => return None,
                    first = self.in_flight.clone().acquire_owned() => first.ok()?,
                };
                while first.num_permits() < full {
                    match self.in_flight.clone().try_acquire_owned() {
                        Ok(more) => first.merge(more),
                        Err(_) => break,
                    }
                }
                first
            }
        };
        let mut permits = Vec::with_capacity(permit.num_permits());
        while permit.num_permits() > 1 {
            let Some(one) = permit.split(1) else {
                break;
            };
            permits.push(one);
        }
        permits.push(permit);
        Some(permits)
    }

    /// Wait until the lock service answers again; `false` if shutdown came first.
    async fn wait_for_locks(&self, poller: usize) -> bool {
        let mut backoff = Backoff::new(LOCK_WAIT_BACKOFF.0, LOCK_WAIT_BACKOFF.1);
        let mut last_report = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return false,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
            if !self.lock_outage.load(Ordering::Acquire) {
                return true;
            }
            match self.parts.locks.check().await {
                Ok(()) => {
                    if self.lock_outage.swap(false, Ordering::AcqRel) {
                        tracing::info!(poller, locks = %self.parts.locks.describe(), alert_cleared = "lock", "the lock service answers again; receiving resumes");
                    }
                    self.parts.health.lock_outage(false);
                    return true;
                }
                Err(e) => {
                    if last_report.elapsed() >= Duration::from_secs(30) {
                        tracing::warn!(poller, error = %e, "the lock service is still unavailable; messages wait on the queue");
                        last_report = Instant::now();
                    }
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
                self.parts
                    .settings
                    .delivery()
                    .with_claim_checks(self.parts.claim_check.is_some()),
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
                Err(e @ (DecodeError::ForeignTopic { .. } | DecodeError::BadPointer(_))) => {
                    // Never meant for this queue, or a claim check that is not one: no
                    // redelivery can change that.
                    if let Some(group) = &message.group_id {
                        broken.insert(group.clone());
                    }
                    self.spawn(self.clone().refuse(message, e.to_string(), slot));
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
        let claims = self
            .parts
            .locks
            .try_acquire(&ids, self.parts.settings.lock_ttl)
            .await?;
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
            self.spawn(Box::pin(self.clone().run_group(group, entries)));
        }
        if busy.is_empty() {
            return Ok(());
        }
        let attempts = lock::attempts(self.parts.settings.lock_retry_count);
        if attempts > 1 {
            self.spawn(self.clone().retry_busy(busy, attempts - 1));
        } else {
            busy.iter().for_each(leave_locked);
        }
        Ok(())
    }

    /// Dead-letter a message refused before any handler (an envelope from a foreign topic, a
    /// malformed claim check); without a dead-letter queue it stays on the queue, logged.
    async fn refuse(self: Arc<Self>, message: Received, reason: String, slot: Arc<Slot>) {
        self.dead_letter_unhandled(&message, "", &reason).await;
        drop(slot);
    }

    /// Run one (non-FIFO) locked message in its own task.
    fn start(self: &Arc<Self>, taken: Taken, claim: Claim) {
        let keeper = Keeper::start(self, &taken, claim.held.clone());
        let this = self.clone();
        // Boxed where it is made: the ~10 KB state machine is copied once, into the box,
        // instead of once per function and wrapper on its way into the task.
        self.spawn(Box::pin(async move {
            this.run_message(taken, claim, keeper).await;
        }));
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
            match self
                .parts
                .locks
                .try_acquire(&ids, self.parts.settings.lock_ttl)
                .await
            {
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
}

/// One receive call in the receives-in-flight gauge, until dropped (also when the loop is
/// dropped mid-call at the end of a drain).
struct ReceiveInFlight;

impl ReceiveInFlight {
    fn count() -> ReceiveInFlight {
        metrics::gauge!(m::RECEIVES_IN_FLIGHT).increment(1.0);
        ReceiveInFlight
    }
}

impl Drop for ReceiveInFlight {
    fn drop(&mut self) {
        metrics::gauge!(m::RECEIVES_IN_FLIGHT).decrement(1.0);
    }
}

/// Log (and count) a message left because another consumer holds its lock.
fn leave_locked(taken: &Taken) {
    metrics::counter!(m::LOCK_FAILURES, "reason" => "held_elsewhere").increment(1);
    tracing::info!(message_id = %taken.envelope.message_id, event = %taken.envelope.event, receive_count = taken.message.receive_count,
        "message is locked by another consumer; leaving it");
}
