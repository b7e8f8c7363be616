//! The built-in egresses: `sns` (the global topic) and `sqs` (a named queue), both through
//! the config's broker (AWS or the embedded local one).

use std::sync::Arc;

use async_trait::async_trait;

use super::fanout::Egress;
use crate::broker::Broker;
use crate::wire::Outgoing;

/// `plugin = "sns"`: publish to `sns.topic_arn`.
pub struct SnsEgress {
    broker: Arc<dyn Broker>,
    topic: String,
}

impl SnsEgress {
    /// Through `broker` to `topic` (for descriptions).
    pub fn new(broker: Arc<dyn Broker>, topic: String) -> SnsEgress {
        SnsEgress { broker, topic }
    }
}

#[async_trait]
impl Egress for SnsEgress {
    async fn deliver(&self, _event_id: &str, message: &Outgoing) -> Result<String, String> {
        self.broker
            .publish(message)
            .await
            .map_err(|e| e.to_string())
    }

    fn describe(&self) -> String {
        format!("built-in sns: topic {}", self.topic)
    }
}

/// `plugin = "sqs"`, `config = { queue = "name" }`: send straight to that queue.
pub struct SqsEgress {
    broker: Arc<dyn Broker>,
    queue: String,
}

impl SqsEgress {
    /// Through `broker` to `queue`.
    pub fn new(broker: Arc<dyn Broker>, queue: String) -> SqsEgress {
        SqsEgress { broker, queue }
    }
}

#[async_trait]
impl Egress for SqsEgress {
    async fn deliver(&self, _event_id: &str, message: &Outgoing) -> Result<String, String> {
        self.broker
            .send_to_queue(Some(&self.queue), message)
            .await
            .map_err(|e| e.to_string())
    }

    fn describe(&self) -> String {
        format!("built-in sqs: queue {}", self.queue)
    }
}
