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
//! - **Backpressure.** A receive loop asks for a full batch once there are that many free
//!   slots of `sqs.max_in_flight` (or, after a short wait without, for what is free); a
//!   message holds its slot from receipt until its fate is carried out (an acked message's
//!   delete queued), so a loop waits instead of receiving what it cannot run. Acked messages
//!   waiting on their delete have room of their own (`max_in_flight` more), so failing
//!   deletes stop receiving rather than pile up. Every message runs and settles in its own
//!   task: a slow handler never holds up its batch-mates.
//! - **Throughput at latency.** The number of receive loops taking turns adapts between
//!   `sqs.pollers` and `sqs.max_pollers` ([`receivers`]), and several delete calls are in
//!   flight at once ([`settle`]).
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

//!
//! The modules: [`receive`] (poll loops, backpressure, locks, dispatch), [`receivers`] (how
//! many loops take turns), [`message`] (one
//! message from routing to settlement), [`claim`] (S3 claim checks fetched before routing), [`invoke`] (the one place handlers run, used by
//! ingress too), [`settle`] (settlement rules, the batch deleter), [`keepalive`] (lock
//! renewal and visibility heartbeats), [`heartbeats`] (their calls, batched), [`report`] (logs, error webhook, console),
//! [`summary`] (the periodic `info` line of handler results per binding) and [`state`] (what
//! the tasks of a run share).

mod claim;
mod heartbeats;
pub mod invoke;
mod keepalive;
mod message;
mod receive;
mod receivers;
pub mod report;
mod settings;
mod settle;
mod state;
pub mod summary;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Broker;
use crate::lock::Locks;
use crate::ops::console::RecentFailures;
use crate::ops::errors::ErrorReporter;
use crate::ops::health::Health;
use crate::route::Routes;

pub use invoke::CallResult;
pub use keepalive::LockLost;
pub use settings::Settings;
pub use settle::{settle, Policy, Settlement};

use state::{spawn_tracked, Delete, Parts, Shared};

/// How long the end of a run waits for the tasks it dropped after the drain (they end at once
/// unless a task is blocked inside an inline handler that has not returned).
const ABANDON_GRACE: Duration = Duration::from_secs(1);

/// The least time the drain gives queued deletes to go out after the handlers are done.
const FLUSH_GRACE: Duration = Duration::from_secs(10);

/// The consumer for one service.
pub struct Pipeline {
    parts: Parts,
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
            parts: Parts {
                broker,
                routes,
                locks,
                settings,
                health: Health::new(),
                errors: None,
                failures: None,
                claim_check: None,
            },
        }
    }

    /// Report readiness through `health` (`/health`).
    pub fn with_health(mut self, health: Arc<Health>) -> Pipeline {
        self.parts.health = health;
        self
    }

    /// Report handler failures through `errors` (`[errors] webhook_url`).
    pub fn with_error_reporter(mut self, errors: Option<ErrorReporter>) -> Pipeline {
        self.parts.errors = errors;
        self
    }

    /// Fetch received S3 claim checks before routing them (`[payloads]`).
    pub fn with_claim_check(
        mut self,
        claim_check: Option<Arc<crate::claim_check::ClaimCheck>>,
    ) -> Pipeline {
        self.parts.claim_check = claim_check;
        self
    }

    /// Keep the latest handler failures for the operator console.
    pub fn with_recent_failures(mut self, failures: Option<Arc<RecentFailures>>) -> Pipeline {
        self.parts.failures = failures;
        self
    }

    /// Run until `shutdown` fires, then drain: stop receiving, give back what has not
    /// started, let running handlers finish and settle (up to the shutdown timeout), flush
    /// pending deletes and return.
    ///
    /// Every task it starts is tracked: it returns only when they are all done. Those still
    /// running when the drain is over (a handler past the shutdown timeout, a receive that
    /// never answered) are dropped then; their messages are not settled and come back after
    /// their visibility timeout.
    pub async fn run(self, shutdown: CancellationToken) {
        let settings = self.parts.settings.clone();
        let in_flight = Arc::new(Semaphore::new(settings.max_in_flight));
        let (delete_tx, delete_rx) = mpsc::unbounded_channel::<Delete>();
        let delete_room = Arc::new(Semaphore::new(settings.max_in_flight));
        let flush = CancellationToken::new();
        let messages = Arc::new(AtomicUsize::new(0));
        let tasks = TaskTracker::new();
        let abandon = CancellationToken::new();
        let health = self.parts.health.clone();
        let deleter = spawn_tracked(
            &tasks,
            &abandon,
            health.alive_while(
                "deleter",
                &shutdown,
                settle::run_deleter(
                    self.parts.broker.clone(),
                    self.parts.locks.clone(),
                    delete_rx,
                    flush.clone(),
                    delete_room.clone(),
                    settings.max_in_flight,
                ),
            ),
        );
        let (heartbeats, heartbeat_task) = heartbeats::Heartbeats::new(self.parts.broker.clone());
        spawn_tracked(
            &tasks,
            &abandon,
            health.alive_while("heartbeat batcher", &shutdown, heartbeat_task),
        );
        let locks = self.parts.locks.clone();
        let summary = Arc::new(summary::Summary::default());
        let summary_stop = CancellationToken::new();
        let summary_task = tokio::spawn(summary::run(
            summary.clone(),
            settings.summary_interval,
            summary_stop.clone(),
        ));
        let shared = Arc::new(Shared {
            parts: self.parts,
            lock_outage: AtomicBool::new(false),
            receive_failing: std::sync::Mutex::new(0),
            in_flight: in_flight.clone(),
            messages: messages.clone(),
            deletes: delete_tx,
            delete_room,
            receivers: receivers::Receivers::new(settings.pollers, settings.max_pollers),
            heartbeats: Arc::new(heartbeats),
            shutdown: shutdown.clone(),
            abandon: abandon.clone(),
            tasks: tasks.clone(),
            summary,
        });
        let pollers: Vec<_> = (0..shared.receivers.max())
            .map(|poller| {
                shared.spawn(health.alive_while(
                    format!("receive loop {poller}"),
                    &shutdown,
                    shared.clone().poll(poller),
                ))
            })
            .collect();
        health.polling_started();
        tracing::info!(broker = %shared.parts.broker.describe(), locks = %locks.describe(), pollers = settings.pollers, max_pollers = shared.receivers.max(), max_in_flight = settings.max_in_flight, "consuming");
        drop(shared);
        shutdown.cancelled().await;

        health.draining();
        let started = Instant::now();
        let deadline = started + settings.shutdown_timeout;
        tracing::info!(
            in_flight = messages.load(Ordering::Acquire),
            shutdown_timeout_secs = settings.shutdown_timeout.as_secs(),
            "draining: receiving stopped; running handlers may finish, and unstarted messages go back to the queue"
        );
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
                "drained: all running handlers finished; queued deletes go out now"
            ),
            Err(_) => tracing::warn!(
                still_running = messages.load(Ordering::Acquire),
                timeout_secs = settings.shutdown_timeout.as_secs(),
                "handlers still running at the shutdown timeout; their messages will be redelivered after their visibility timeout"
            ),
        }
        // Send what is queued for deletion, then stop the deleter: the rest of the shutdown
        // timeout, and at least FLUSH_GRACE (a failing delete call is retried for ~20 s).
        flush.cancel();
        let flush_until = deadline.max(Instant::now() + FLUSH_GRACE);
        if tokio::time::timeout_at(flush_until, deleter).await.is_err() {
            tracing::warn!("pending deletes did not finish; those messages will be redelivered");
        }
        // The last summary line: what the drain settled.
        summary_stop.cancel();
        let _ = summary_task.await;
        // Whatever still runs is dropped now, and waited for briefly: a task blocked inside an
        // inline handler only notices when the handler returns, so the host goes on without
        // it (its message was not settled: it comes back after its visibility timeout).
        abandon.cancel();
        tasks.close();
        if tokio::time::timeout(ABANDON_GRACE, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                still_running = tasks.len(),
                "tasks still running after the drain (an inline handler that has not returned); stopping without them"
            );
        }
        // Releases and completion records still queued for the next acquire.
        locks.flush().await;
    }
}
