//! The built-in egresses: `sns` (the global topic) and `sqs` (a named queue), both through
//! the config's broker (AWS or the embedded local one), each through a batcher of its own, so
//! concurrent deliveries share `PublishBatch` / `SendMessageBatch` calls — the outbox drain's
//! too: to a standard destination it has a batch's worth under way at once (a FIFO one gets
//! its events one at a time, in order).

use async_trait::async_trait;

use super::batch::LazyBatcher;
use super::fanout::Egress;
use crate::wire::Outgoing;

/// `plugin = "sns"`: publish to `sns.topic_arn`.
pub struct SnsEgress {
    batcher: LazyBatcher,
    topic: String,
    window: usize,
}

impl SnsEgress {
    /// Through `batcher` (on the topic) to `topic` (for descriptions); the outbox drain may
    /// have `window` of its events under way at once.
    pub fn new(batcher: LazyBatcher, topic: String, window: usize) -> SnsEgress {
        SnsEgress {
            batcher,
            topic,
            window,
        }
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

    fn window(&self) -> usize {
        self.window
    }
}

/// `plugin = "sqs"`, `config = { queue = "name" }`: send straight to that queue.
pub struct SqsEgress {
    batcher: LazyBatcher,
    queue: String,
    window: usize,
}

impl SqsEgress {
    /// Through `batcher` (on the queue) to `queue` (for descriptions); the outbox drain may
    /// have `window` of its events under way at once.
    pub fn new(batcher: LazyBatcher, queue: String, window: usize) -> SqsEgress {
        SqsEgress {
            batcher,
            queue,
            window,
        }
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

    fn window(&self) -> usize {
        self.window
    }
}
