//! What a running pipeline's tasks share ([`Shared`]: the parts it was built from plus the
//! run's own state) and the records a message travels in between them.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Broker, Received};
use crate::lock::{Held, Locks};
use crate::ops::console::RecentFailures;
use crate::ops::errors::ErrorReporter;
use crate::ops::health::Health;
use crate::ops::metrics as m;
use crate::route::Routes;
use crate::wire::Envelope;

use super::settings::Settings;

/// What a pipeline is built from (and its tasks share while it runs).
pub struct Parts {
    /// Where messages come from and are settled.
    pub broker: Arc<dyn Broker>,
    /// The live routing table.
    pub routes: Arc<ArcSwap<Routes>>,
    /// The idempotency locks.
    pub locks: Arc<dyn Locks>,
    /// The pipeline's settings.
    pub settings: Settings,
    /// Readiness (`/health`).
    pub health: Arc<Health>,
    /// The error webhook, if configured.
    pub errors: Option<ErrorReporter>,
    /// The console's list of recent failures, if enabled.
    pub failures: Option<Arc<RecentFailures>>,
    /// Reads received S3 claim checks (`[payloads]`), if configured.
    pub claim_check: Option<Arc<crate::claim_check::ClaimCheck>>,
}

/// A running pipeline's shared state: its parts and the run's own state.
pub struct Shared {
    /// What the pipeline was built from.
    pub parts: Parts,
    /// Set while the lock service cannot decide: pollers stop receiving until it answers.
    pub lock_outage: AtomicBool,
    /// How many pollers' last receive failed: the `broker` alert is raised while any does.
    /// (A mutex, not an atomic: the count and the clearing log line go together, so a poller
    /// failing just then cannot be left behind a cleared alert.)
    pub receive_failing: std::sync::Mutex<usize>,
    /// `max_in_flight` slots.
    pub in_flight: Arc<Semaphore>,
    /// Messages received and not yet settled or given back.
    pub messages: Arc<AtomicUsize>,
    /// To the batch deleter.
    pub deletes: mpsc::UnboundedSender<Delete>,
    /// Room for acked messages whose delete has not succeeded (`max_in_flight` places): a
    /// message takes one before it gives up its slot, so deletes that keep failing stop
    /// receiving instead of piling up.
    pub delete_room: Arc<Semaphore>,
    /// How many receive loops take turns.
    pub receivers: super::receivers::Receivers,
    /// Visibility extensions, batched.
    pub heartbeats: Arc<super::heartbeats::Heartbeats>,
    /// Fires on the first shutdown signal.
    pub shutdown: CancellationToken,
    /// Fires when the drain is over: every task still running is dropped (its message is not
    /// settled and comes back after its visibility timeout).
    pub abandon: CancellationToken,
    /// Every task this run started, so `run` returns only when they are all done.
    pub tasks: TaskTracker,
    /// Handler results for the periodic summary line.
    pub summary: Arc<super::summary::Summary>,
}

impl Shared {
    /// Start a task of this run: tracked, and dropped when the drain is abandoned.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        spawn_tracked(&self.tasks, &self.abandon, task)
    }
}

/// Start a task on `tasks` that ends early when `abandon` fires.
///
/// The task moves whole through each wrapper on its way into tokio's task cell (this select,
/// the tracker's counter, the cell): a caller with a big future boxes it where it makes it
/// (a message's run is a ~10 KB state machine, and copying it at each step cost about a
/// tenth of the host's CPU on the SQS path).
pub fn spawn_tracked<F>(tasks: &TaskTracker, abandon: &CancellationToken, task: F) -> JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let abandon = abandon.clone();
    tasks.spawn(async move {
        tokio::select! {
            biased;
            () = task => {}
            () = abandon.cancelled() => {}
        }
    })
}

/// A message's in-flight slot: one of the `max_in_flight` permits, counted in the in-flight
/// gauge. It is held from receipt until the message's fate is decided and carried out (an
/// acked message's delete queued, a retry's visibility changed, a dead letter sent) or it is
/// given back; a timed-out handler's thread keeps a reference until it really returns.
pub struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
    count: Arc<AtomicUsize>,
}

impl Slot {
    /// Take a slot (with its permit, when there was one free) and count it.
    pub fn new(permit: Option<OwnedSemaphorePermit>, count: &Arc<AtomicUsize>) -> Arc<Slot> {
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
pub struct Taken {
    /// The message as received.
    pub message: Received,
    /// The message decoded.
    pub envelope: Envelope,
    /// Its in-flight slot.
    pub slot: Arc<Slot>,
    /// Taken just before the receive call: the visibility timeout runs from (after) here.
    pub received_at: Instant,
}

/// An acked message for the batch deleter.
pub struct Delete {
    /// The receipt to delete by.
    pub receipt: String,
    /// For log lines.
    pub message_id: String,
    /// For log lines.
    pub event: String,
    /// What to do once the message is deleted (not if the delete is given up).
    pub after: Option<AfterDelete>,
    /// Held until the delete is done (or given up).
    pub _pending: PendingDelete,
    /// The message's lock, released by the deleter when the delete is done or given up:
    /// released at once, a delete still waiting past the visibility timeout would let another
    /// consumer (a Python iniesta, which keeps no completion records) take and run the message
    /// again.
    pub lock: Option<Held>,
}

/// Work that waits for a message's delete: the S3 object of its claim check is deleted
/// (`payloads.delete_after_handling`), never before the message is gone, so a redelivery
/// never finds its body missing.
pub struct AfterDelete {
    /// Where the object is deleted.
    pub claim_check: Arc<crate::claim_check::ClaimCheck>,
    /// The object.
    pub pointer: crate::wire::pointer::Pointer,
}

impl AfterDelete {
    /// Start it (in the background: the deleter does not wait for S3).
    pub fn start(self) {
        tokio::spawn(async move { self.claim_check.discard(&self.pointer).await });
    }
}

/// An acked message's place among the pending deletes (one of `delete_room`'s), counted in
/// the pending-deletes gauge.
pub struct PendingDelete {
    _permit: OwnedSemaphorePermit,
}

impl PendingDelete {
    /// Count a pending delete holding `permit`.
    pub fn new(permit: OwnedSemaphorePermit) -> PendingDelete {
        metrics::gauge!(m::DELETES_PENDING).increment(1.0);
        PendingDelete { _permit: permit }
    }
}

impl Drop for PendingDelete {
    fn drop(&mut self) {
        metrics::gauge!(m::DELETES_PENDING).decrement(1.0);
    }
}

/// A received message to give back (visibility 0).
pub struct GiveBack {
    /// The receipt to change the visibility by.
    pub receipt: String,
    /// For log lines.
    pub message_id: String,
    /// For log lines (empty when not decoded).
    pub event: String,
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
