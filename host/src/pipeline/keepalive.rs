//! Keeping a message alive while it waits or its handlers run: its lock is extended with
//! half of its lifetime left, and its visibility — the heartbeat — at half the visibility
//! timeout after receipt and at half of each extension, up to
//! `sqs.max_visibility_extension_secs`. One task per message ([`Keeper`]); the visibility
//! extensions of messages due together share `ChangeMessageVisibilityBatch` calls
//! ([`super::heartbeats`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::BrokerError;
use crate::lock::{Held, LockError, Locks};
use crate::ops::metrics as m;

use super::heartbeats::Heartbeats;
use super::settings::Settings;
use super::state::{Shared, Taken};

/// Why a message's lock is no longer ours.
#[derive(Debug, thiserror::Error)]
pub enum LockLost {
    /// The lock service said another consumer holds it, or it expired.
    #[error("another consumer holds it, or it expired")]
    Taken,
    /// Extending kept failing until the lock expired.
    #[error("it could not be extended before it expired ({0})")]
    NotExtended(#[source] LockError),
    /// The handlers outlasted the lock's validity.
    #[error("its validity ran out before the handlers finished")]
    RanOut,
}

/// Keeps a message alive while it waits or its handlers run, in one task: extends its lock
/// when half of the lock's lifetime is left (retrying a failed extension while the lock is
/// still valid), and its visibility — the heartbeat — at half the visibility timeout after
/// receipt and at half of each extension, up to the configured maximum. It reports whether
/// the lock was still ours at the end.
pub struct Keeper {
    state: Arc<std::sync::Mutex<KeepState>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

struct KeepState {
    lock_valid_until: Instant,
    lost: Option<LockLost>,
}

impl Keeper {
    /// Start keeping `taken` (locked by `held`) alive.
    pub fn start(shared: &Shared, taken: &Taken, held: Held) -> Keeper {
        let state = Arc::new(std::sync::Mutex::new(KeepState {
            lock_valid_until: held.valid_until,
            lost: None,
        }));
        // Stopped by the caller, or when the drain is abandoned.
        let stop = shared.abandon.child_token();
        let heartbeat = Heartbeat::new(&shared.parts.settings, taken);
        let services = KeepServices {
            locks: shared.parts.locks.clone(),
            heartbeats: shared.heartbeats.clone(),
            event: taken.envelope.event.clone(),
            ttl: shared.parts.settings.lock_ttl,
        };
        let task = shared.tasks.spawn(keep_alive(
            services,
            held,
            heartbeat,
            state.clone(),
            stop.clone(),
        ));
        Keeper { state, stop, task }
    }

    /// Stop extending; an error if the lock was lost or ran out.
    pub async fn finish(self) -> Result<(), LockLost> {
        self.stop.cancel();
        let _ = self.task.await;
        let mut state = crate::mutex::lock(&self.state);
        if let Some(lost) = state.lost.take() {
            return Err(lost);
        }
        if Instant::now() >= state.lock_valid_until {
            return Err(LockLost::RanOut);
        }
        Ok(())
    }

    /// Stop extending (the message is settled or given back another way).
    pub async fn stop(self) {
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
    async fn beat(&mut self, heartbeats: &Heartbeats) -> bool {
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
        let answer = heartbeats.extend(&self.receipt, secs).await;
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
    heartbeats: Arc<Heartbeats>,
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
        heartbeats,
        event,
        ttl,
    } = services;
    let retry = (ttl / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut lock_next = Some(renew_at(held.valid_until, ttl));
    let lose = |lost: LockLost| {
        crate::mutex::lock(&state).lost = Some(lost);
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
                        crate::mutex::lock(&state).lock_valid_until = valid_until;
                        lock_next = Some(renew_at(valid_until, ttl));
                        tracing::debug!(message_id = %held.message_id, event = %event, "message lock extended");
                    }
                    Ok(None) => {
                        tracing::warn!(message_id = %held.message_id, event = %event, "the message lock was lost: it expired or another consumer holds it");
                        lose(LockLost::Taken);
                        lock_next = None;
                    }
                    Err(e) => {
                        let now = Instant::now();
                        if now >= held.valid_until {
                            tracing::error!(message_id = %held.message_id, event = %event, error = %e, "the message lock expired: it could not be extended in time");
                            lose(LockLost::NotExtended(e));
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
                    if !beat.beat(&heartbeats).await {
                        heartbeat = None;
                    }
                }
            }
        }
    }
}
