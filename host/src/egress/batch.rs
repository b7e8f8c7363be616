//! The publish batcher: events bound for one destination share calls.
//!
//! Every publish to the topic or to a queue goes through a [`Batcher`] for that destination.
//! Entries wait up to `publish.linger_ms` for others, then go out in one SNS `PublishBatch` /
//! SQS `SendMessageBatch` ([`Broker::publish_batch`]) of at most `publish.max_batch` (≤ 10)
//! entries within [`max_batch_bytes`]; a full batch goes at once. The caller of
//! [`Batcher::publish`] awaits its own entry's outcome.
//!
//! Retries: when the call answers with per-entry failures, only the failed entries are tried
//! again (with exponential backoff and jitter, up to `publish.attempts` in all), never the
//! entries the call took — so nothing is lost and nothing is sent twice by us. When the whole
//! call fails with a retryable error, the whole batch is tried again the same way. A
//! non-retryable failure is the caller's answer.
//!
//! FIFO destinations keep each message group's order: a group has at most one batch in
//! flight, its entries go out in the order they were published, and an entry waiting for a
//! retry holds back every later entry of its group until it is taken. (Within one call SQS and
//! SNS answer per entry: if an entry fails while a later entry of the same group in that same
//! call is taken, the later one is already ahead; the batcher cannot undo that.)
//!
//! The local broker's `publish_batch` sends entry by entry, through the same interface.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::broker::fifo::FifoSettings;
use crate::broker::{Broker, BrokerError, Target};
use crate::config::{Problem, PublishConfig};
use crate::wire::Outgoing;

/// The most bytes one batch call to `target` may carry, all entries together: SNS's
/// `PublishBatch` 256 KiB, SQS's `SendMessageBatch` 1 MiB (the limits of one message).
pub const fn max_batch_bytes(target: &Target) -> usize {
    match target {
        Target::Topic => crate::wire::MAX_SNS_BYTES,
        Target::Queue(_) => crate::wire::MAX_SQS_BYTES,
    }
}

/// The most entries one batch call may carry (SNS and SQS).
pub const MAX_BATCH_ENTRIES: usize = 10;

/// The longest backoff between retries of one entry.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Problems in `[publish]`.
pub fn problems(config: &PublishConfig) -> Vec<Problem> {
    let mut problems = Vec::new();
    if config.linger_ms > 1000 {
        problems.push(Problem::new(
            "publish.linger_ms",
            format!(
                "{} is above 1000: every publish would wait that long for company; a few ms is enough",
                config.linger_ms
            ),
        ));
    }
    if !(1..=MAX_BATCH_ENTRIES).contains(&config.max_batch) {
        problems.push(Problem::new(
            "publish.max_batch",
            format!(
                "{} is outside 1..=10 (the SNS and SQS limit per batch call)",
                config.max_batch
            ),
        ));
    }
    if config.max_in_flight == 0 {
        problems.push(Problem::new("publish.max_in_flight", "must be at least 1"));
    }
    if config.attempts == 0 {
        problems.push(Problem::new(
            "publish.attempts",
            "must be at least 1 (the first try counts)",
        ));
    }
    if config.min_backoff_ms == 0 || config.min_backoff_ms > 5000 {
        problems.push(Problem::new(
            "publish.min_backoff_ms",
            "must be within 1..=5000",
        ));
    }
    problems
}

/// How a batcher batches and retries.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long an entry waits for company.
    pub linger: Duration,
    /// Entries per call.
    pub max_entries: usize,
    /// Bytes per call.
    pub max_bytes: usize,
    /// Calls in flight at once.
    pub max_in_flight: usize,
    /// Attempts per entry.
    pub attempts: u32,
    /// The first backoff.
    pub min_backoff: Duration,
}

impl Settings {
    /// From `[publish]`, clamped to the AWS limits of `target`.
    pub fn from_config(config: &PublishConfig, target: &Target) -> Settings {
        Settings {
            linger: Duration::from_millis(config.linger_ms.min(1000)),
            max_entries: config.max_batch.clamp(1, MAX_BATCH_ENTRIES),
            max_bytes: max_batch_bytes(target),
            max_in_flight: config.max_in_flight.max(1),
            attempts: config.attempts.max(1),
            min_backoff: Duration::from_millis(config.min_backoff_ms.clamp(1, 5000)),
        }
    }

    /// One call in flight at a time when `ordered` (the local broker, which sends a batch
    /// entry by entry: so its queue keeps publish order, as before batching).
    pub fn in_order(mut self, ordered: bool) -> Settings {
        if ordered {
            self.max_in_flight = 1;
        }
        self
    }

    /// The delay before attempt `attempt + 1` (`attempt` ≥ 1), with jitter.
    fn backoff(&self, attempt: u32) -> Duration {
        crate::backoff::nth(self.min_backoff, MAX_BACKOFF, attempt)
    }
}

/// What sends one batch: a broker, or a test's recorder.
#[async_trait::async_trait]
pub trait Sink: Send + Sync + 'static {
    /// One batch call; see [`Broker::publish_batch`].
    async fn send(
        &self,
        target: &Target,
        messages: &[Outgoing],
    ) -> Result<Vec<Result<String, BrokerError>>, BrokerError>;
}

/// A broker as a sink.
pub struct BrokerSink(pub Arc<dyn Broker>);

#[async_trait::async_trait]
impl Sink for BrokerSink {
    async fn send(
        &self,
        target: &Target,
        messages: &[Outgoing],
    ) -> Result<Vec<Result<String, BrokerError>>, BrokerError> {
        self.0.publish_batch(target, messages).await
    }
}

/// One event waiting in a batcher.
pub(crate) struct Entry {
    /// Publish order (the batcher's own count).
    seq: u64,
    message: Outgoing,
    /// Its FIFO message group (`None`: a standard destination, no order kept).
    group: Option<String>,
    size: usize,
    /// Attempts made so far.
    attempts: u32,
    /// Not to be sent before this (a retry's backoff).
    not_before: Instant,
    /// When it must go even if the batch is not full.
    flush_at: Instant,
    /// To be sent in a call of its own (its batch failed as a whole, for a reason that may
    /// be this entry's alone).
    alone: bool,
    reply: Option<oneshot::Sender<Result<String, BrokerError>>>,
}

impl Entry {
    fn answer(&mut self, result: Result<String, BrokerError>) {
        if let Some(reply) = self.reply.take() {
            // A caller that stopped waiting no longer needs the answer.
            let _ = reply.send(result);
        }
    }
}

/// The next batch the queue would give: positions of its entries, and whether it is full.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Positions in the queue, in order.
    pub positions: Vec<usize>,
    /// Full: no further entry would fit (count or bytes).
    pub full: bool,
    /// The earliest `flush_at` among the planned entries.
    pub flush_at: Option<Instant>,
}

/// The entries waiting to be sent, in publish order, and the groups with a batch in flight.
#[derive(Default)]
pub(crate) struct Queue {
    entries: VecDeque<Entry>,
    busy: HashSet<String>,
}

impl Queue {
    /// Add an entry in publish order (a retry goes back to its place).
    fn insert(&mut self, entry: Entry) {
        let at = self.entries.partition_point(|e| e.seq < entry.seq);
        self.entries.insert(at, entry);
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drop the entries whose caller stopped waiting (an egress attempt that timed out: the
    /// fan-out retries the event itself, so sending it here too would send it twice).
    fn drop_abandoned(&mut self, target: &Target) {
        self.entries.retain(|entry| {
            let gone = entry.reply.as_ref().is_some_and(|r| r.is_closed());
            if gone {
                tracing::debug!(target = ?target, event = %entry.message.event, "publish entry dropped: its caller stopped waiting");
            }
            !gone
        });
    }

    /// Which entries the next batch takes at `now`: in order, those due whose group has no
    /// batch in flight and no earlier entry held back, within the count and byte limits.
    pub(crate) fn plan(&self, now: Instant, settings: &Settings) -> Plan {
        let mut positions = Vec::new();
        let mut bytes = 0usize;
        let mut held: HashSet<&str> = HashSet::new();
        let mut full = false;
        let mut flush_at: Option<Instant> = None;
        for (i, entry) in self.entries.iter().enumerate() {
            if positions.len() == settings.max_entries {
                full = true;
                break;
            }
            let group = entry.group.as_deref();
            if let Some(g) = group {
                if self.busy.contains(g) || held.contains(g) {
                    continue;
                }
            }
            let fits = bytes + entry.size <= settings.max_bytes;
            if entry.not_before > now || !fits {
                if !fits && entry.not_before <= now {
                    full = true;
                }
                // Later entries of its group wait behind it.
                if let Some(g) = group {
                    held.insert(g);
                }
                continue;
            }
            if entry.alone {
                // Tried again on its own (its batch failed as a whole): the batch so far goes
                // without it, and it goes next, by itself.
                if positions.is_empty() {
                    positions.push(i);
                    flush_at = Some(entry.flush_at);
                }
                full = true;
                break;
            }
            bytes += entry.size;
            positions.push(i);
            flush_at = Some(flush_at.map_or(entry.flush_at, |f| f.min(entry.flush_at)));
            if positions.len() == settings.max_entries {
                full = true;
                break;
            }
        }
        Plan {
            positions,
            full,
            flush_at,
        }
    }

    /// Remove the planned entries and mark their groups busy.
    fn take(&mut self, plan: &Plan) -> Vec<Entry> {
        let mut taken = Vec::with_capacity(plan.positions.len());
        for &i in plan.positions.iter().rev() {
            if let Some(entry) = self.entries.remove(i) {
                taken.push(entry);
            }
        }
        taken.reverse();
        for entry in &taken {
            if let Some(g) = &entry.group {
                self.busy.insert(g.clone());
            }
        }
        taken
    }

    /// The batch's groups may send again.
    fn release(&mut self, batch: &[Entry]) {
        for entry in batch {
            if let Some(g) = &entry.group {
                self.busy.remove(g);
            }
        }
    }

    /// The earliest retry still in backoff.
    fn next_not_before(&self, now: Instant) -> Option<Instant> {
        self.entries
            .iter()
            .map(|e| e.not_before)
            .filter(|t| *t > now)
            .min()
    }
}

/// A copy of an error for each entry of a failed call (the error types are not `Clone`).
fn copy_error(error: &BrokerError) -> BrokerError {
    match error {
        BrokerError::NoSuchQueue(q) => BrokerError::NoSuchQueue(q.clone()),
        BrokerError::NoSuchTopic(t) => BrokerError::NoSuchTopic(t.clone()),
        BrokerError::NoTopic => BrokerError::NoTopic,
        BrokerError::NoDeadLetterQueue => BrokerError::NoDeadLetterQueue,
        BrokerError::Aws {
            operation,
            message,
            retryable,
        } => BrokerError::Aws {
            operation,
            message: message.clone(),
            retryable: *retryable,
        },
        other => BrokerError::Aws {
            operation: "publish batch",
            message: other.to_string(),
            retryable: other.is_retryable(),
        },
    }
}

/// A destination's batcher, started on first use (starting one needs a runtime): the
/// publisher's topic and own-queue batchers and the built-in egresses each hold one.
pub struct LazyBatcher {
    broker: Arc<dyn Broker>,
    target: Target,
    settings: Settings,
    fifo: Option<FifoSettings>,
    started: OnceLock<Batcher>,
}

impl LazyBatcher {
    /// A batcher for `target` through `broker`, not started yet; see [`Batcher::spawn`].
    pub fn new(
        broker: Arc<dyn Broker>,
        target: Target,
        settings: Settings,
        fifo: Option<FifoSettings>,
    ) -> LazyBatcher {
        LazyBatcher {
            broker,
            target,
            settings,
            fifo,
            started: OnceLock::new(),
        }
    }

    /// Publish one message through the batcher (started now if it is not yet).
    pub async fn publish(&self, message: Outgoing) -> Result<String, BrokerError> {
        self.started
            .get_or_init(|| {
                Batcher::spawn(
                    Arc::new(BrokerSink(self.broker.clone())),
                    self.target.clone(),
                    self.settings.clone(),
                    self.fifo.clone(),
                )
            })
            .publish(message)
            .await
    }
}

/// One destination's batcher: hand it events, await each one's id.
pub struct Batcher {
    tx: mpsc::UnboundedSender<Entry>,
    fifo: Option<FifoSettings>,
    seq: std::sync::atomic::AtomicU64,
    linger: Duration,
}

impl Batcher {
    /// Start a batcher for `target` on the current runtime. `fifo`: the destination is FIFO
    /// and these settings name each message's group. The task ends when the batcher is
    /// dropped and every entry it holds is answered.
    pub fn spawn(
        sink: Arc<dyn Sink>,
        target: Target,
        settings: Settings,
        fifo: Option<FifoSettings>,
    ) -> Batcher {
        let (tx, rx) = mpsc::unbounded_channel();
        let linger = settings.linger;
        tokio::spawn(run(sink, target, settings, rx));
        Batcher {
            tx,
            fifo,
            seq: std::sync::atomic::AtomicU64::new(0),
            linger,
        }
    }

    /// Publish one message; its id once a batch call took it, or why not.
    pub async fn publish(&self, message: Outgoing) -> Result<String, BrokerError> {
        let (reply, answer) = oneshot::channel();
        let now = Instant::now();
        let entry = Entry {
            seq: self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            group: self.fifo.as_ref().map(|f| f.group_of(&message)),
            size: message.size(),
            message,
            attempts: 0,
            not_before: now,
            flush_at: now + self.linger,
            alone: false,
            reply: Some(reply),
        };
        self.tx
            .send(entry)
            .map_err(|_| BrokerError::Worker("the publish batcher has stopped".into()))?;
        answer.await.map_err(|_| {
            BrokerError::Worker("the publish batcher stopped before answering".into())
        })?
    }
}

type Sent = (
    Vec<Entry>,
    Result<Vec<Result<String, BrokerError>>, BrokerError>,
);

/// The batcher's loop: gather, flush when full or lingered, settle each call's answer.
async fn run(
    sink: Arc<dyn Sink>,
    target: Target,
    settings: Settings,
    mut rx: mpsc::UnboundedReceiver<Entry>,
) {
    let mut queue = Queue::default();
    let mut calls: JoinSet<Sent> = JoinSet::new();
    let mut open = true;
    loop {
        queue.drop_abandoned(&target);
        // Send every batch that is ready.
        while calls.len() < settings.max_in_flight {
            let now = Instant::now();
            let plan = queue.plan(now, &settings);
            let lingered = plan.flush_at.is_some_and(|f| f <= now);
            if plan.positions.is_empty() || !(plan.full || lingered || !open) {
                break;
            }
            let mut batch = queue.take(&plan);
            tracing::debug!(target = ?target, entries = batch.len(), bytes = batch.iter().map(|e| e.size).sum::<usize>(), "sending a publish batch");
            let (sink, target) = (sink.clone(), target.clone());
            calls.spawn(async move {
                // The messages are lent to the call (moved out and back, not copied: a body
                // may be 1 MiB), and stay with their entries for a retry.
                let messages: Vec<Outgoing> = batch
                    .iter_mut()
                    .map(|e| std::mem::take(&mut e.message))
                    .collect();
                // A panic in the call is its failure: the entries come back and are answered,
                // and their FIFO groups are released.
                let result = std::panic::AssertUnwindSafe(sink.send(&target, &messages))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| {
                        Err(BrokerError::Aws {
                            operation: "publish batch",
                            message: "the batch call panicked".into(),
                            retryable: false,
                        })
                    });
                for (entry, message) in batch.iter_mut().zip(messages) {
                    entry.message = message;
                }
                (batch, result)
            });
        }
        if !open && queue.is_empty() && calls.is_empty() {
            break;
        }
        let now = Instant::now();
        let wake = if calls.len() < settings.max_in_flight {
            let plan = queue.plan(now, &settings);
            [plan.flush_at, queue.next_not_before(now)]
                .into_iter()
                .flatten()
                .min()
        } else {
            None
        };
        tokio::select! {
            entry = rx.recv(), if open => match entry {
                Some(entry) => queue.insert(entry),
                None => open = false,
            },
            Some(done) = calls.join_next(), if !calls.is_empty() => match done {
                Ok((batch, result)) => settle(&mut queue, &settings, &target, batch, result),
                Err(e) => tracing::error!(target = ?target, error = %e, "a publish batch task failed; its callers get an error"),
            },
            _ = sleep_until(wake), if wake.is_some() => {}
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Answer or requeue every entry of a finished call.
fn settle(
    queue: &mut Queue,
    settings: &Settings,
    target: &Target,
    batch: Vec<Entry>,
    result: Result<Vec<Result<String, BrokerError>>, BrokerError>,
) {
    queue.release(&batch);
    let now = Instant::now();
    // `delay`: the backoff shared by the entries of a failed call (they go again together);
    // `None` draws the entry's own.
    let retry = |mut entry: Entry,
                 error: BrokerError,
                 queue: &mut Queue,
                 delay: Option<Duration>| {
        entry.attempts += 1;
        if error.is_retryable() && entry.attempts < settings.attempts {
            let delay = delay.unwrap_or_else(|| settings.backoff(entry.attempts));
            tracing::warn!(target = ?target, event = %entry.message.event, attempt = entry.attempts, delay_ms = delay.as_millis() as u64, error = %error, "publish entry failed; retrying it alone");
            entry.not_before = now + delay;
            entry.flush_at = entry.not_before;
            queue.insert(entry);
        } else {
            tracing::warn!(target = ?target, event = %entry.message.event, attempts = entry.attempts, error = %error, "publish failed");
            entry.answer(Err(error));
        }
    };
    match result {
        Ok(results) => {
            let mut results = results.into_iter();
            for mut entry in batch {
                match results.next() {
                    Some(Ok(id)) => {
                        entry.attempts += 1;
                        entry.answer(Ok(id));
                    }
                    Some(Err(error)) => retry(entry, error, queue, None),
                    None => retry(
                        entry,
                        BrokerError::Aws {
                            operation: "publish batch",
                            message: "the broker gave no result for this entry".into(),
                            retryable: true,
                        },
                        queue,
                        None,
                    ),
                }
            }
        }
        Err(error) => {
            tracing::warn!(target = ?target, entries = batch.len(), error = %error, retryable = error.is_retryable(), "publish batch call failed");
            let attempt = batch.iter().map(|e| e.attempts + 1).max().unwrap_or(1);
            let delay = settings.backoff(attempt);
            // Refused as a whole for good: the reason may be one entry's (an attribute the
            // service rejects), so each entry of a shared call is tried once more on its own
            // before its caller gets the error.
            let split = !error.is_retryable() && batch.len() > 1;
            for mut entry in batch {
                let copy = copy_error(&error);
                if split {
                    entry.alone = true;
                    entry.not_before = now;
                    entry.flush_at = now;
                    queue.insert(entry);
                } else {
                    retry(entry, copy, queue, Some(delay));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use crate::wire::Attributes;

    fn message(event: &str, body_len: usize) -> Outgoing {
        Outgoing {
            event: event.into(),
            body: vec![b'x'; body_len],
            attributes: Attributes::new(),
        }
    }

    fn settings(linger_ms: u64) -> Settings {
        Settings {
            linger: Duration::from_millis(linger_ms),
            max_entries: 10,
            max_bytes: max_batch_bytes(&Target::Topic),
            max_in_flight: 4,
            attempts: 5,
            min_backoff: Duration::from_millis(10),
        }
    }

    fn entry(seq: u64, group: Option<&str>, size: usize, now: Instant) -> Entry {
        Entry {
            seq,
            message: message(&format!("e{seq}"), size),
            group: group.map(str::to_string),
            size,
            attempts: 0,
            not_before: now,
            flush_at: now,
            alone: false,
            reply: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_takes_at_most_ten_entries_and_the_byte_limit() {
        let now = Instant::now();
        let mut queue = Queue::default();
        for seq in 0..25 {
            queue.insert(entry(seq, None, 10, now));
        }
        let plan = queue.plan(now, &settings(5));
        assert_eq!(plan.positions, (0..10).collect::<Vec<_>>());
        assert!(plan.full);
        let mut queue = Queue::default();
        // 100 KiB each: two fit in 256 KiB, the third does not; a small one after it does.
        for seq in 0..3 {
            queue.insert(entry(seq, None, 100 * 1024, now));
        }
        queue.insert(entry(3, None, 10, now));
        let plan = queue.plan(now, &settings(5));
        assert_eq!(plan.positions, vec![0, 1, 3]);
        assert!(plan.full);
    }

    #[tokio::test(start_paused = true)]
    async fn fifo_groups_keep_their_order_across_batches() {
        let now = Instant::now();
        let mut queue = Queue::default();
        // A 200 KiB entry of group a, then a small one of a, then one of b.
        queue.insert(entry(0, Some("a"), 200 * 1024, now));
        queue.insert(entry(1, Some("a"), 100 * 1024, now));
        queue.insert(entry(2, Some("b"), 10, now));
        let s = settings(5);
        let plan = queue.plan(now, &s);
        // The second `a` does not fit, so it waits; `b` goes along.
        assert_eq!(plan.positions, vec![0, 2]);
        let first = queue.take(&plan);
        // While `a`'s batch is in flight, the rest of `a` waits even though it would fit.
        queue.insert(entry(3, Some("c"), 10, now));
        let plan = queue.plan(now, &s);
        assert_eq!(
            plan.positions
                .iter()
                .map(|&i| queue.entries[i].seq)
                .collect::<Vec<_>>(),
            vec![3]
        );
        queue.release(&first);
        let plan = queue.plan(now, &s);
        assert_eq!(
            plan.positions
                .iter()
                .map(|&i| queue.entries[i].seq)
                .collect::<Vec<_>>(),
            vec![1, 3]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_in_backoff_holds_back_its_group_only() {
        let now = Instant::now();
        let mut queue = Queue::default();
        let mut failed = entry(0, Some("a"), 10, now);
        failed.not_before = now + Duration::from_millis(100);
        queue.insert(entry(1, Some("a"), 10, now));
        queue.insert(entry(2, Some("b"), 10, now));
        queue.insert(failed);
        let plan = queue.plan(now, &settings(5));
        assert_eq!(
            plan.positions
                .iter()
                .map(|&i| queue.entries[i].seq)
                .collect::<Vec<_>>(),
            vec![2]
        );
        let later = queue.plan(now + Duration::from_millis(100), &settings(5));
        assert_eq!(
            later
                .positions
                .iter()
                .map(|&i| queue.entries[i].seq)
                .collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        // Without groups nothing is held back.
        let mut queue = Queue::default();
        let mut failed = entry(0, None, 10, now);
        failed.not_before = now + Duration::from_millis(100);
        queue.insert(failed);
        queue.insert(entry(1, None, 10, now));
        assert_eq!(queue.plan(now, &settings(5)).positions, vec![1]);
    }

    /// Records every call; fails the entries it is told to, once each.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<Vec<String>>>,
        fail_once: Mutex<HashSet<String>>,
        fail_call_once: Mutex<bool>,
        /// A call carrying this event is refused as a whole, for good.
        poison: Mutex<Option<String>>,
        /// The next call panics.
        panic_once: Mutex<bool>,
    }

    #[async_trait::async_trait]
    impl Sink for Recorder {
        async fn send(
            &self,
            _target: &Target,
            messages: &[Outgoing],
        ) -> Result<Vec<Result<String, BrokerError>>, BrokerError> {
            self.calls
                .lock()
                .expect("lock")
                .push(messages.iter().map(|m| m.event.clone()).collect());
            if std::mem::take(&mut *self.panic_once.lock().expect("lock")) {
                panic!("the sink panics on purpose");
            }
            let poison = self.poison.lock().expect("lock").clone();
            if messages.iter().any(|m| Some(&m.event) == poison.as_ref()) {
                return Err(BrokerError::Aws {
                    operation: "PublishBatch",
                    message: "InvalidParameter".into(),
                    retryable: false,
                });
            }
            if std::mem::take(&mut *self.fail_call_once.lock().expect("lock")) {
                return Err(BrokerError::Aws {
                    operation: "PublishBatch",
                    message: "throttled".into(),
                    retryable: true,
                });
            }
            let mut fail = self.fail_once.lock().expect("lock");
            Ok(messages
                .iter()
                .map(|m| {
                    if fail.remove(&m.event) {
                        Err(BrokerError::Aws {
                            operation: "PublishBatch",
                            message: "InternalError".into(),
                            retryable: true,
                        })
                    } else {
                        Ok(format!("id-{}", m.event))
                    }
                })
                .collect())
        }
    }

    /// A batcher on the topic that sends to `recorder`.
    fn start(recorder: &Arc<Recorder>, linger_ms: u64, fifo: Option<FifoSettings>) -> Arc<Batcher> {
        Arc::new(Batcher::spawn(
            recorder.clone(),
            Target::Topic,
            settings(linger_ms),
            fifo,
        ))
    }

    async fn publish_all(batcher: &Arc<Batcher>, events: &[&str]) -> Vec<Result<String, String>> {
        let calls = events.iter().map(|e| {
            let batcher = batcher.clone();
            let m = message(e, 10);
            async move { batcher.publish(m).await.map_err(|e| e.to_string()) }
        });
        futures_util::future::join_all(calls).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_waits_the_linger_then_goes() {
        let recorder = Arc::new(Recorder::default());
        let batcher = start(&recorder, 5, None);
        let start = Instant::now();
        let results = publish_all(&batcher, &["a", "b", "c"]).await;
        assert_eq!(start.elapsed(), Duration::from_millis(5));
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(
            *recorder.calls.lock().expect("lock"),
            vec![vec!["a", "b", "c"]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn full_batches_go_at_once_and_the_rest_after_the_linger() {
        let recorder = Arc::new(Recorder::default());
        let batcher = start(&recorder, 50, None);
        let events: Vec<String> = (0..25).map(|i| format!("e{i}")).collect();
        let names: Vec<&str> = events.iter().map(String::as_str).collect();
        let results = publish_all(&batcher, &names).await;
        assert!(results.iter().all(Result::is_ok));
        let calls = recorder.calls.lock().expect("lock").clone();
        assert_eq!(
            calls.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![10, 10, 5]
        );
        assert_eq!(calls.concat(), events);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_entry_is_retried_alone_and_a_failed_call_whole() {
        let recorder = Arc::new(Recorder::default());
        recorder.fail_once.lock().expect("lock").insert("b".into());
        let batcher = start(&recorder, 5, None);
        let results = publish_all(&batcher, &["a", "b", "c"]).await;
        assert_eq!(
            results,
            vec![Ok("id-a".into()), Ok("id-b".into()), Ok("id-c".into())]
        );
        assert_eq!(
            *recorder.calls.lock().expect("lock"),
            vec![vec!["a", "b", "c"], vec!["b"]]
        );
        *recorder.fail_call_once.lock().expect("lock") = true;
        recorder.calls.lock().expect("lock").clear();
        let results = publish_all(&batcher, &["d", "e"]).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(
            *recorder.calls.lock().expect("lock"),
            vec![vec!["d", "e"], vec!["d", "e"]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_fifo_entry_holds_its_group_until_it_is_taken() {
        let recorder = Arc::new(Recorder::default());
        recorder.fail_once.lock().expect("lock").insert("a1".into());
        let s = Settings {
            max_entries: 2,
            ..settings(5)
        };
        let fifo = FifoSettings {
            group_field: Some("g".into()),
            ..FifoSettings::default()
        };
        let batcher = Arc::new(Batcher::spawn(
            recorder.clone(),
            Target::Topic,
            s,
            Some(fifo),
        ));
        let publish = |event: &str, group: &str| {
            let batcher = batcher.clone();
            let m = Outgoing {
                event: event.into(),
                body: format!(r#"{{"g":"{group}"}}"#).into_bytes(),
                attributes: Attributes::new(),
            };
            async move { batcher.publish(m).await.map_err(|e| e.to_string()) }
        };
        let results = futures_util::future::join_all([
            publish("a1", "a"),
            publish("a2", "a"),
            publish("b1", "b"),
            publish("a3", "a"),
            publish("b2", "b"),
        ])
        .await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let calls = recorder.calls.lock().expect("lock").clone();
        // a1 fails in the first call; a3 must not go before a1 is taken again.
        let order: Vec<String> = calls.concat();
        let position = |e: &str| order.iter().rposition(|x| x == e).expect("sent");
        assert!(position("a1") < position("a3"), "{calls:?}");
        assert!(position("b1") < position("b2"), "{calls:?}");
        assert_eq!(order.iter().filter(|e| *e == "a1").count(), 2, "{calls:?}");
        assert_eq!(order.len(), 6, "{calls:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_refused_as_a_whole_is_split_so_only_the_bad_entry_fails() {
        let recorder = Arc::new(Recorder::default());
        *recorder.poison.lock().expect("lock") = Some("bad".into());
        let batcher = start(&recorder, 5, None);
        let results = publish_all(&batcher, &["a", "bad", "c"]).await;
        assert_eq!(results[0], Ok("id-a".into()));
        assert!(results[1].is_err(), "{results:?}");
        assert_eq!(results[2], Ok("id-c".into()));
        assert_eq!(
            *recorder.calls.lock().expect("lock"),
            vec![vec!["a", "bad", "c"], vec!["a"], vec!["bad"], vec!["c"]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_call_answers_its_callers_and_frees_their_group() {
        let recorder = Arc::new(Recorder::default());
        *recorder.panic_once.lock().expect("lock") = true;
        let fifo = FifoSettings::default();
        let batcher = start(&recorder, 5, Some(fifo));
        let first = publish_all(&batcher, &["a"]).await;
        assert!(first[0].is_err(), "the panicked call's caller is answered");
        // The same (default) group publishes again: it was released.
        let again = publish_all(&batcher, &["b"]).await;
        assert_eq!(again, vec![Ok("id-b".into())]);
    }

    #[tokio::test(start_paused = true)]
    async fn exactly_a_full_batch_goes_without_waiting_the_linger() {
        let recorder = Arc::new(Recorder::default());
        let batcher = start(&recorder, 1000, None);
        let started = Instant::now();
        let events: Vec<String> = (0..10).map(|i| format!("e{i}")).collect();
        let names: Vec<&str> = events.iter().map(String::as_str).collect();
        let results = publish_all(&batcher, &names).await;
        assert!(results.iter().all(Result::is_ok));
        assert!(
            Instant::now() - started < Duration::from_millis(1000),
            "a full batch does not wait the linger"
        );
        assert_eq!(recorder.calls.lock().expect("lock").len(), 1);
    }

    #[test]
    fn backoff_never_exceeds_its_maximum() {
        let settings = settings(5);
        for attempt in 1..20 {
            assert!(
                settings.backoff(attempt) <= MAX_BACKOFF,
                "attempt {attempt}"
            );
        }
    }
}
