//! Visibility heartbeats share calls: every extension a keeper asks for goes through one task
//! that gathers the requests arriving within [`LINGER`] and sends them as
//! `ChangeMessageVisibilityBatch` calls of up to ten receipts asking for the same timeout. The
//! messages of one receive were received together, so their heartbeats fall due together: ten
//! long handlers cost one call per beat, not ten. Each keeper still gets its own answer
//! (a stale receipt stays [`BrokerError::StaleReceipt`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::broker::{Broker, BrokerError};

/// How long the first request waits for company before its batch goes out.
pub const LINGER: Duration = Duration::from_millis(10);
/// Receipts per call (the SQS limit).
const MAX_ENTRIES: usize = 10;
/// Requests gathered at most before sending (several calls, in flight together).
const MAX_GATHERED: usize = 100;

const OPERATION: &str = "ChangeMessageVisibilityBatch";

struct Request {
    receipt: String,
    secs: u32,
    reply: oneshot::Sender<Result<(), BrokerError>>,
}

/// The handle keepers extend visibility through; the task ends when every handle is dropped
/// and what it holds is answered.
pub struct Heartbeats {
    tx: mpsc::UnboundedSender<Request>,
}

impl Heartbeats {
    /// The batching task (to be spawned on the pipeline's tracker) and its handle.
    pub fn new(
        broker: Arc<dyn Broker>,
    ) -> (Heartbeats, impl std::future::Future<Output = ()> + Send) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Heartbeats { tx }, run(broker, rx))
    }

    /// Make `receipt` invisible for `secs` more seconds, in a batch with whatever else is
    /// due now.
    pub async fn extend(&self, receipt: &str, secs: u32) -> Result<(), BrokerError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            receipt: receipt.to_string(),
            secs,
            reply,
        };
        if self.tx.send(request).is_err() {
            return Err(BrokerError::Worker("the heartbeat task has stopped".into()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(BrokerError::Worker("the heartbeat task has stopped".into())))
    }
}

async fn run(broker: Arc<dyn Broker>, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut calls = JoinSet::new();
    while let Some(first) = rx.recv().await {
        let mut gathered = vec![first];
        let until = Instant::now() + LINGER;
        while gathered.len() < MAX_GATHERED {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(request)) => gathered.push(request),
                _ => break,
            }
        }
        // One call per timeout asked for, per ten receipts.
        let mut by_secs: BTreeMap<u32, Vec<Request>> = BTreeMap::new();
        for request in gathered {
            by_secs.entry(request.secs).or_default().push(request);
        }
        for (secs, mut requests) in by_secs {
            while !requests.is_empty() {
                let rest = requests.split_off(requests.len().min(MAX_ENTRIES));
                let chunk = std::mem::replace(&mut requests, rest);
                let broker = broker.clone();
                calls.spawn(async move { send(broker.as_ref(), chunk, secs).await });
            }
        }
        while calls.try_join_next().is_some() {}
    }
    while calls.join_next().await.is_some() {}
}

/// One batch call; every request gets its own answer.
async fn send(broker: &dyn Broker, requests: Vec<Request>, secs: u32) {
    let receipts: Vec<String> = requests.iter().map(|r| r.receipt.clone()).collect();
    match broker.change_visibility_batch(&receipts, secs).await {
        Ok(failures) => {
            let mut failed: std::collections::HashMap<String, _> = failures
                .into_iter()
                .map(|f| (f.receipt.clone(), f))
                .collect();
            for request in requests {
                let answer = match failed.remove(&request.receipt) {
                    None => Ok(()),
                    Some(f) if f.stale => Err(BrokerError::StaleReceipt),
                    Some(f) => Err(BrokerError::Entry {
                        operation: OPERATION,
                        reason: f.reason,
                        retryable: f.retryable,
                    }),
                };
                let _ = request.reply.send(answer);
            }
        }
        Err(e) => {
            let (reason, retryable) = (e.to_string(), e.is_retryable());
            for request in requests {
                let _ = request.reply.send(Err(BrokerError::Entry {
                    operation: OPERATION,
                    reason: reason.clone(),
                    retryable,
                }));
            }
        }
    }
}
