//! A broker that answers like a real region: the local broker behind a per-call latency on
//! tokio's clock (so under a paused clock 20 ms a call costs no real time and the timings are
//! exact), counting what the pipeline asks of it — how many messages each receive asked for
//! and got, how many receive and delete calls were in flight at once — and able to hold every
//! delete until the test lets them through.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use iniesta::broker::local::LocalBroker;
use iniesta::broker::{Broker, BrokerError, DeleteFailure, Received};
use iniesta::wire::Outgoing;
use tokio_util::sync::CancellationToken;

/// What the pipeline asked of a [`Paced`] broker.
#[derive(Debug, Default)]
pub struct Calls {
    /// Each receive that returned messages: (asked for, got).
    pub receives: Mutex<Vec<(u32, usize)>>,
    receiving: AtomicUsize,
    /// The most receive calls in flight at once.
    pub max_receiving: AtomicUsize,
    deleting: AtomicUsize,
    /// The most `delete_batch` calls in flight at once.
    pub max_deleting: AtomicUsize,
    /// Every `delete_batch` call.
    pub delete_calls: AtomicUsize,
    /// While set, every delete waits.
    pub hold_deletes: AtomicBool,
    /// While set, every receive waits (before it asks the broker).
    pub hold_receives: AtomicBool,
    /// Single `change_visibility` calls.
    pub visibility_calls: AtomicUsize,
    /// Receipts per `change_visibility_batch` call.
    pub visibility_batches: Mutex<Vec<usize>>,
    /// Messages per `publish_batch` call (sends to the topic or a queue).
    pub send_batches: Mutex<Vec<usize>>,
    /// While set, every `publish_batch` call fails whole.
    pub fail_sends: AtomicBool,
}

impl Calls {
    fn enter(now: &AtomicUsize, max: &AtomicUsize) {
        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
        max.fetch_max(n, Ordering::SeqCst);
    }
}

/// The local broker with `latency` added to every receive and delete call.
pub struct Paced {
    inner: Arc<LocalBroker>,
    latency: Duration,
    /// What was asked of it.
    pub calls: Arc<Calls>,
}

impl Paced {
    /// Wrap `inner`.
    pub fn new(inner: Arc<LocalBroker>, latency: Duration) -> Paced {
        Paced {
            inner,
            latency,
            calls: Arc::new(Calls::default()),
        }
    }
}

#[async_trait]
impl Broker for Paced {
    async fn publish_batch(
        &self,
        target: &iniesta::broker::Target,
        messages: &[Outgoing],
    ) -> Result<Vec<Result<String, BrokerError>>, BrokerError> {
        self.calls
            .send_batches
            .lock()
            .expect("not poisoned")
            .push(messages.len());
        if self.calls.fail_sends.load(Ordering::SeqCst) {
            return Err(BrokerError::Worker("sends refused on purpose".into()));
        }
        self.inner.publish_batch(target, messages).await
    }

    async fn publish(&self, message: &Outgoing) -> Result<String, BrokerError> {
        self.inner.publish(message).await
    }

    async fn send_to_queue(
        &self,
        queue: Option<&str>,
        message: &Outgoing,
    ) -> Result<String, BrokerError> {
        self.inner.send_to_queue(queue, message).await
    }

    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> Result<Vec<Received>, BrokerError> {
        Calls::enter(&self.calls.receiving, &self.calls.max_receiving);
        tokio::time::sleep(self.latency).await;
        while self.calls.hold_receives.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let got = self.inner.receive(max, wait, cancel).await;
        self.calls.receiving.fetch_sub(1, Ordering::SeqCst);
        if let Ok(batch) = &got {
            if !batch.is_empty() {
                self.calls
                    .receives
                    .lock()
                    .expect("not poisoned")
                    .push((max, batch.len()));
            }
        }
        got
    }

    async fn delete_batch(&self, receipts: &[String]) -> Result<Vec<DeleteFailure>, BrokerError> {
        Calls::enter(&self.calls.deleting, &self.calls.max_deleting);
        self.calls.delete_calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.latency).await;
        while self.calls.hold_deletes.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let done = self.inner.delete_batch(receipts).await;
        self.calls.deleting.fetch_sub(1, Ordering::SeqCst);
        done
    }

    async fn change_visibility(&self, receipt: &str, secs: u32) -> Result<(), BrokerError> {
        self.calls.visibility_calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.latency).await;
        self.inner.change_visibility(receipt, secs).await
    }

    async fn change_visibility_batch(
        &self,
        receipts: &[String],
        secs: u32,
    ) -> Result<Vec<DeleteFailure>, BrokerError> {
        self.calls
            .visibility_batches
            .lock()
            .expect("not poisoned")
            .push(receipts.len());
        tokio::time::sleep(self.latency).await;
        self.inner.change_visibility_batch(receipts, secs).await
    }

    async fn dead_letter(&self, message: &Received, reason: &str) -> Result<(), BrokerError> {
        self.inner.dead_letter(message, reason).await
    }

    fn describe(&self) -> String {
        format!("{} (+{:?} a call)", self.inner.describe(), self.latency)
    }
}
