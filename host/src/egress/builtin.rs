//! The built-in egresses: `sns` (the global topic) and `sqs` (a named queue), both through
//! the config's broker (AWS or the embedded local one), each through a batcher of its own, so
//! concurrent deliveries share `PublishBatch` / `SendMessageBatch` calls.

use async_trait::async_trait;

use super::batch::LazyBatcher;
use super::fanout::Egress;
use crate::wire::Outgoing;

/// `plugin = "sns"`: publish to `sns.topic_arn`.
pub struct SnsEgress {
    batcher: LazyBatcher,
    topic: String,
}

impl SnsEgress {
    /// Through `batcher` (on the topic) to `topic` (for descriptions).
    pub fn new(batcher: LazyBatcher, topic: String) -> SnsEgress {
        SnsEgress { batcher, topic }
    }
}

#[async_trait]
impl Egress for SnsEgress {
    async fn deliver(&self, _event_id: &str, message: &Outgoing) -> Result<String, String> {
        self.batcher
            .publish(message.clone())
            .await
            .map_err(|e| e.to_string())
    }

    fn describe(&self) -> String {
        format!("built-in sns: topic {}", self.topic)
    }
}

/// `plugin = "sqs"`, `config = { queue = "name" }`: send straight to that queue.
pub struct SqsEgress {
    batcher: LazyBatcher,
    queue: String,
}

impl SqsEgress {
    /// Through `batcher` (on the queue) to `queue` (for descriptions).
    pub fn new(batcher: LazyBatcher, queue: String) -> SqsEgress {
        SqsEgress { batcher, queue }
    }
}

#[async_trait]
impl Egress for SqsEgress {
    async fn deliver(&self, _event_id: &str, message: &Outgoing) -> Result<String, String> {
        self.batcher
            .publish(message.clone())
            .await
            .map_err(|e| e.to_string())
    }

    fn describe(&self) -> String {
        format!("built-in sqs: queue {}", self.queue)
    }
}
