//! The pipeline's settings, taken from `[sqs]` and `[lock]`.

use std::time::Duration;

use crate::lock;
use crate::wire;

/// Pipeline settings, taken from `[sqs]` and `[lock]`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Receive loops that always take turns (the fewest).
    pub pollers: usize,
    /// The most receive loops (grown into while receives come back full).
    pub max_pollers: usize,
    /// Messages per receive.
    pub max_messages: u32,
    /// Long-poll wait.
    pub wait: Duration,
    /// Messages being handled at once.
    pub max_in_flight: usize,
    /// Time running handlers get on shutdown.
    pub shutdown_timeout: Duration,
    /// The event attribute.
    pub event_key: String,
    /// The topic whose SNS envelopes the queue receives (raw delivery off), if any.
    pub envelope_topic: Option<String>,
    /// Lock validity (extended while handlers run).
    pub lock_ttl: Duration,
    /// Lock attempts, as aioredlock counts `retry_count` (at least one).
    pub lock_retry_count: u32,
    /// How long completion records are kept; zero turns them off.
    pub completion_ttl: Duration,
    /// The queue's visibility timeout: the heartbeat extends by this much, at half of it.
    pub visibility_timeout: Duration,
    /// The longest a message is kept invisible by heartbeats, counted from its receipt; zero
    /// turns the heartbeat off.
    pub max_visibility_extension: Duration,
    /// How often the summary line is logged (zero: never).
    pub summary_interval: Duration,
}

impl Settings {
    /// How the queue delivers, for decoding.
    pub fn delivery(&self) -> wire::DeliveryContext<'_> {
        wire::DeliveryContext {
            event_key: &self.event_key,
            envelope_topic: self.envelope_topic.as_deref(),
            claim_checks: false,
        }
    }

    /// From a config.
    pub fn from_config(config: &crate::config::Config) -> Settings {
        let (pollers, max_pollers) = config.sqs.receive_loops();
        Settings {
            pollers,
            max_pollers,
            max_messages: config.sqs.max_messages,
            wait: Duration::from_secs(u64::from(config.sqs.wait_time_seconds)),
            max_in_flight: config.sqs.max_in_flight,
            shutdown_timeout: Duration::from_secs(config.sqs.shutdown_timeout_secs),
            event_key: config.sns.event_key.clone(),
            envelope_topic: config.envelope_topic().map(str::to_string),
            lock_ttl: lock::ttl_from_secs(config.lock.timeout_secs.max(1)),
            lock_retry_count: config.lock.retry_count,
            completion_ttl: lock::ttl_from_secs(config.lock.completion_ttl_secs),
            visibility_timeout: Duration::from_secs(u64::from(config.sqs.visibility_timeout)),
            max_visibility_extension: Duration::from_secs(config.sqs.max_visibility_extension_secs),
            summary_interval: Duration::from_secs(config.sqs.summary_interval_secs),
        }
    }
}
