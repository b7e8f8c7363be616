//! Publishing: turning an event into a wire message and sending it out.
//!
//! Every publish — from the CLI or from a handler through its context — goes through a
//! [`Publisher`], which applies the wire format (`{event}.{service}` under the event key,
//! `version`) and the size limit before any broker call.

use std::sync::Arc;

use crate::broker::{Broker, BrokerError};
use crate::config::{Config, InitializationType};
use crate::wire::{self, Attributes, EncodeError};

/// Where a publish goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The global topic (SNS_PRODUCER).
    Topic,
    /// Straight to this service's queue (`publish --queue`).
    OwnQueue,
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The message is not valid (empty event, too large, bad attribute).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The broker refused or failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// Publishing to the topic needs SNS_PRODUCER.
    #[error("this config does not publish: add \"SNS_PRODUCER\" to `initialization` (or use --queue to send to the queue)")]
    NotProducer,
}

/// A published message: its id and full event name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The broker's message id.
    pub message_id: String,
    /// `{event}.{service}`.
    pub event: String,
}

/// Publishes events for one service.
pub struct Publisher {
    broker: Arc<dyn Broker>,
    service: String,
    event_key: String,
    producer: bool,
}

impl Publisher {
    /// A publisher for `config`'s service on `broker`.
    pub fn new(config: &Config, broker: Arc<dyn Broker>) -> Publisher {
        Publisher {
            broker,
            service: config.service.clone(),
            event_key: config.sns.event_key.clone(),
            producer: config.does(InitializationType::SnsProducer),
        }
    }

    /// Publish one event.
    pub async fn publish(
        &self,
        destination: Destination,
        event: &str,
        body: Vec<u8>,
        attributes: Attributes,
    ) -> Result<Published, PublishError> {
        if destination == Destination::Topic && !self.producer {
            return Err(PublishError::NotProducer);
        }
        let message = wire::encode(event, &self.service, &self.event_key, body, attributes)?;
        let message_id = match destination {
            Destination::Topic => self.broker.publish(&message).await?,
            Destination::OwnQueue => self.broker.send_to_queue(None, &message).await?,
        };
        tracing::info!(message_id = %message_id, event = %message.event, ?destination, "published");
        Ok(Published {
            message_id,
            event: message.event,
        })
    }
}
