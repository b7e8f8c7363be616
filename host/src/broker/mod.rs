//! Brokers: where messages are published, queued and received.
//!
//! Two implementations share one contract: [`local`] (an embedded SQLite file, the default, no
//! AWS needed) and `aws` (SNS + SQS). A broker is bound to one service's config: its topic, its
//! queue and its dead-letter queue.
//!
//! [`aws`] is the real engine; [`local`] exists so the main job runs on a fresh machine.

pub mod aws;
pub mod codes;
pub mod fifo;
pub mod local;
pub mod sqs_http;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::config::{BrokerKind, Config};
use crate::wire::{Attributes, Outgoing};

/// A message taken from the queue, not yet settled.
#[derive(Debug, Clone)]
pub struct Received {
    /// The broker's message id.
    pub message_id: String,
    /// The handle that settles this delivery (delete, change visibility).
    pub receipt: String,
    /// The body as stored on the queue (may be an SNS envelope).
    pub body: Vec<u8>,
    /// The queue message's attributes.
    pub attributes: Attributes,
    /// Deliveries so far, this one included.
    pub receive_count: u32,
    /// When it was sent, ms since the Unix epoch.
    pub sent_timestamp_ms: u64,
    /// Its FIFO message group, when it came from a FIFO queue.
    pub group_id: Option<String>,
    /// SQS's `AWSTraceHeader` system attribute (an X-Ray trace context), if it carried one.
    pub aws_trace_header: Option<String>,
}

/// One receipt a batch call (delete, change visibility) could not settle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteFailure {
    /// The receipt handle.
    pub receipt: String,
    /// Why.
    pub reason: String,
    /// Whether trying again may help (throttling, server errors).
    pub retryable: bool,
    /// The receipt no longer names a delivery (redelivered or deleted).
    pub stale: bool,
}

/// What a batch call (delete, change visibility) left unsettled, by receipt: its failed
/// entries' reasons, or every receipt with the call's own error when the call failed whole.
pub fn unsettled_by_receipt<E: std::fmt::Display>(
    result: Result<Vec<DeleteFailure>, E>,
    receipts: &[String],
) -> std::collections::HashMap<String, String> {
    match result {
        Ok(failures) => failures
            .into_iter()
            .map(|f| (f.receipt, f.reason))
            .collect(),
        Err(e) => {
            let reason = e.to_string();
            receipts
                .iter()
                .map(|r| (r.clone(), reason.clone()))
                .collect()
        }
    }
}

/// How many messages a queue holds, by state (SQS's approximate counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Waiting to be received (`ApproximateNumberOfMessages`).
    pub visible: u64,
    /// Received and not yet deleted or visible again (`ApproximateNumberOfMessagesNotVisible`).
    pub in_flight: u64,
    /// Sent with a delay that has not passed (`ApproximateNumberOfMessagesDelayed`).
    pub delayed: u64,
}

/// Where a publish goes: the topic, or a queue (this service's own when `None`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// The global topic.
    Topic,
    /// A queue by name; this service's own when `None`.
    Queue(Option<String>),
}

/// Broker failures.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The local broker's SQLite file failed.
    #[error("local broker {path}: {source}")]
    Sqlite {
        /// The database file.
        path: String,
        /// The cause.
        source: rusqlite::Error,
    },
    /// The local broker's file was written by a newer iniesta.
    #[error("local broker {path}: schema version {found} was written by a newer iniesta (this one knows up to {supported}): upgrade iniesta, or point broker.path at another file")]
    NewerSchema {
        /// The database file.
        path: String,
        /// The version in the file.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// A queue does not exist.
    #[error("queue `{0}` does not exist (run `iniesta setup`, or check sqs.queue_name)")]
    NoSuchQueue(String),
    /// The topic does not exist.
    #[error("topic `{0}` does not exist (run `iniesta setup`, or check sns.topic_arn)")]
    NoSuchTopic(String),
    /// A dead letter was asked for but none is configured.
    #[error("no dead-letter queue is configured (set sqs.dead_letter_queue)")]
    NoDeadLetterQueue,
    /// The receipt handle no longer names a delivery (it was redelivered or deleted).
    #[error("receipt handle is stale: the message was redelivered or deleted")]
    StaleReceipt,
    /// Publishing needs a topic but the config names none.
    #[error("no topic configured (set sns.topic_arn)")]
    NoTopic,
    /// An AWS call failed.
    #[error("{operation}: {message}")]
    Aws {
        /// The SNS/SQS operation.
        operation: &'static str,
        /// The SDK's error with its context.
        message: String,
        /// Whether trying again may help.
        retryable: bool,
    },
    /// A broker worker thread failed.
    #[error("broker worker failed: {0}")]
    Worker(String),
    /// One entry of a batch call failed, or the whole call did (each entry gets this).
    #[error("{operation}: {reason}")]
    Entry {
        /// The batch operation.
        operation: &'static str,
        /// Why.
        reason: String,
        /// Whether trying again may help.
        retryable: bool,
    },
}

impl BrokerError {
    /// Whether a later retry may succeed (network, throttling, locked database).
    pub fn is_retryable(&self) -> bool {
        match self {
            BrokerError::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            BrokerError::Aws { retryable, .. } | BrokerError::Entry { retryable, .. } => *retryable,
            BrokerError::Worker(_) => true,
            _ => false,
        }
    }
}

/// What a broker does for one service.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Publish to the global topic; returns the message id.
    async fn publish(&self, message: &Outgoing) -> Result<String, BrokerError>;

    /// Send straight to a queue (this service's own when `queue` is `None`); returns the id.
    async fn send_to_queue(
        &self,
        queue: Option<&str>,
        message: &Outgoing,
    ) -> Result<String, BrokerError>;

    /// Publish several messages to `target` in as few calls as the broker allows (SNS
    /// `PublishBatch`, SQS `SendMessageBatch`: one call for at most 10 messages within the
    /// total size, 256 KiB for SNS, 1 MiB for SQS). `Err` when the whole call failed (nothing was taken); otherwise one
    /// result per message, in order: its id, or why that entry alone was refused. The default
    /// sends them one by one (the local broker).
    async fn publish_batch(
        &self,
        target: &Target,
        messages: &[Outgoing],
    ) -> Result<Vec<Result<String, BrokerError>>, BrokerError> {
        let mut out = Vec::with_capacity(messages.len());
        for message in messages {
            out.push(match target {
                Target::Topic => self.publish(message).await,
                Target::Queue(queue) => self.send_to_queue(queue.as_deref(), message).await,
            });
        }
        Ok(out)
    }

    /// Receive up to `max` messages, waiting up to `wait` for the first. When `cancel` fires
    /// it stops waiting as soon as it can, but never drops a message it already took: a
    /// request already sent is awaited (at most `wait`) and what it brought is returned, for
    /// the caller to run or give back.
    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> Result<Vec<Received>, BrokerError>;

    /// Delete settled deliveries; returns the ones that could not be deleted.
    async fn delete_batch(&self, receipts: &[String]) -> Result<Vec<DeleteFailure>, BrokerError>;

    /// Make a delivery visible again after `secs` seconds.
    async fn change_visibility(&self, receipt: &str, secs: u32) -> Result<(), BrokerError>;

    /// Make several deliveries visible again after `secs` seconds (0: at once); returns the
    /// receipts that could not be changed, with why.
    async fn change_visibility_batch(
        &self,
        receipts: &[String],
        secs: u32,
    ) -> Result<Vec<DeleteFailure>, BrokerError> {
        let mut failures = Vec::new();
        for receipt in receipts {
            if let Err(e) = self.change_visibility(receipt, secs).await {
                failures.push(DeleteFailure {
                    receipt: receipt.clone(),
                    retryable: e.is_retryable(),
                    stale: matches!(e, BrokerError::StaleReceipt),
                    reason: e.to_string(),
                });
            }
        }
        Ok(failures)
    }

    /// Move a delivery to the dead-letter queue with `reason`, then delete it.
    async fn dead_letter(&self, message: &Received, reason: &str) -> Result<(), BrokerError>;

    /// How many messages `queue` holds (this service's own when `None`), by state.
    async fn depth(&self, queue: Option<&str>) -> Result<QueueDepth, BrokerError> {
        let _ = queue;
        Err(BrokerError::Worker(
            "this broker does not report queue depths".into(),
        ))
    }

    /// A one-line description for logs (`local broker .iniesta/broker.db, queue q`).
    fn describe(&self) -> String;
}

/// Open the broker a config names, creating local resources when it is the local one.
pub async fn open(config: &Config) -> Result<Arc<dyn Broker>, BrokerError> {
    match config.broker.kind {
        BrokerKind::Local => Ok(Arc::new(local::LocalBroker::open(config).await?)),
        BrokerKind::Aws => Ok(Arc::new(aws::AwsBroker::connect(config).await)),
    }
}
