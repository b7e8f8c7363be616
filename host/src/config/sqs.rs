//! `[sqs]`: this service's queue and how it is polled.

use serde::{Deserialize, Serialize};

use super::{BrokerKind, Config, InitializationType, Problem};

/// `[sqs]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqsConfig {
    /// Template for the queue name; `{env}` and `{service_name}` are filled in.
    #[serde(default = "default_queue_template")]
    pub queue_name_template: String,
    /// An explicit queue name; wins over the template.
    #[serde(default)]
    pub queue_name: Option<String>,
    /// Events this queue subscribes to: exact names or `Prefix.*`.
    #[serde(default)]
    pub filters: Vec<String>,
    /// Messages per receive (1–10).
    #[serde(default = "default_max_messages")]
    pub max_messages: u32,
    /// Long-poll wait (0–20 s).
    #[serde(default = "default_wait")]
    pub wait_time_seconds: u32,
    /// How long a received message stays invisible (s).
    #[serde(default = "default_visibility")]
    pub visibility_timeout: u32,
    /// Seconds a new message stays invisible before its first delivery (0–900).
    #[serde(default)]
    pub delay_seconds: u32,
    /// Whether the queue's subscription to the topic delivers raw messages (`true`: the body
    /// as published, the event in an SQS attribute) or SNS envelopes (`false`). `setup` sets
    /// the subscription's `RawMessageDelivery` to it and `check` compares them; the host
    /// unwraps envelopes only when this is `false` (see [`Config::envelope_topic`]).
    #[serde(default = "super::default_true")]
    pub raw_message_delivery: bool,
    /// Where dead letters go; none means dead letters stay on the queue, logged.
    #[serde(default)]
    pub dead_letter_queue: Option<String>,
    /// Deliveries before the broker moves a message to the dead-letter queue.
    #[serde(default = "default_max_receive_count")]
    pub max_receive_count: u32,
    /// Receive loops that always take turns (the fewest; at least 1).
    #[serde(default = "default_pollers")]
    pub pollers: usize,
    /// The most receive loops: more take turns while receives come back full and in-flight
    /// slots are free, fewer after empty receives, never under `pollers` (see
    /// [`SqsConfig::receive_loops`]). Unset: as many as `max_in_flight` fills with full
    /// receives (`max_in_flight / max_messages`), at least `pollers`.
    #[serde(default)]
    pub max_pollers: Option<usize>,
    /// Messages being handled at once, across pollers (one slot covers all of a message's
    /// bindings); receiving pauses while every slot is taken.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// A handler running longer than this is abandoned and its message retried (s).
    #[serde(default = "default_handler_timeout")]
    pub handler_timeout_secs: u64,
    /// On shutdown, how long running handlers get to finish (s).
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_secs: u64,
    /// The visibility heartbeat: a message whose handlers still run at half the visibility
    /// timeout gets its visibility extended, again and again, until its handlers return or it
    /// has been invisible this long since it was received (s); 0 turns the heartbeat off.
    #[serde(default = "default_max_visibility_extension")]
    pub max_visibility_extension_secs: u64,
    /// Every this many seconds in which handlers ran, one `info` line per binding counts its
    /// results since the last line (acked, failed, retried, dead-lettered); nothing while
    /// idle; 0 turns the lines off.
    #[serde(default = "default_summary_interval")]
    pub summary_interval_secs: u64,
    /// FIFO queues and topics: the message attribute whose value is a published message's
    /// `MessageGroupId` (checked first).
    #[serde(default)]
    pub fifo_group_attribute: Option<String>,
    /// FIFO: the top-level body field (JSON bodies) whose value is the `MessageGroupId`
    /// (checked when the attribute is absent).
    #[serde(default)]
    pub fifo_group_field: Option<String>,
    /// FIFO: the `MessageGroupId` when neither the attribute nor the field gives one.
    #[serde(default = "default_fifo_group")]
    pub fifo_default_group: String,
    /// FIFO: the message attribute whose value is the `MessageDeduplicationId`; without it (or
    /// when a message lacks it) the id is the SHA-256 of the event name and the body.
    #[serde(default)]
    pub fifo_deduplication_attribute: Option<String>,
    /// Fair queues: on standard queues and topics, the message attribute whose value (a tenant
    /// id) is sent as the `MessageGroupId` (checked first). Without it and `fair_group_field`,
    /// standard sends carry no group.
    #[serde(default)]
    pub fair_group_attribute: Option<String>,
    /// Fair queues: the top-level body field (JSON bodies) whose value is the `MessageGroupId`
    /// on standard queues and topics (checked when the attribute is absent). A message with
    /// neither is sent without a group.
    #[serde(default)]
    pub fair_group_field: Option<String>,
}

impl Default for SqsConfig {
    fn default() -> Self {
        Self {
            queue_name_template: default_queue_template(),
            queue_name: None,
            filters: Vec::new(),
            max_messages: default_max_messages(),
            wait_time_seconds: default_wait(),
            visibility_timeout: default_visibility(),
            delay_seconds: 0,
            raw_message_delivery: true,
            dead_letter_queue: None,
            max_receive_count: default_max_receive_count(),
            pollers: default_pollers(),
            max_pollers: None,
            max_in_flight: default_max_in_flight(),
            handler_timeout_secs: default_handler_timeout(),
            shutdown_timeout_secs: default_shutdown_timeout(),
            max_visibility_extension_secs: default_max_visibility_extension(),
            summary_interval_secs: default_summary_interval(),
            fifo_group_attribute: None,
            fifo_group_field: None,
            fifo_default_group: default_fifo_group(),
            fifo_deduplication_attribute: None,
            fair_group_attribute: None,
            fair_group_field: None,
        }
    }
}

impl SqsConfig {
    /// The fewest and the most receive loops: `pollers`, and `max_pollers` or else as many as
    /// `max_in_flight` fills with full receives (never under `pollers`).
    pub fn receive_loops(&self) -> (usize, usize) {
        let min = self.pollers.max(1);
        let max = self
            .max_pollers
            .unwrap_or_else(|| self.max_in_flight / (self.max_messages.clamp(1, 10) as usize));
        (min, max.max(min))
    }
}

fn default_queue_template() -> String {
    "iniesta-{env}-{service_name}".into()
}
fn default_max_messages() -> u32 {
    10
}
fn default_wait() -> u32 {
    20
}
fn default_visibility() -> u32 {
    30
}
fn default_max_receive_count() -> u32 {
    5
}
fn default_pollers() -> usize {
    1
}
fn default_max_in_flight() -> usize {
    16
}
fn default_handler_timeout() -> u64 {
    30
}
fn default_shutdown_timeout() -> u64 {
    30
}
fn default_max_visibility_extension() -> u64 {
    43_200
}
fn default_summary_interval() -> u64 {
    60
}
fn default_fifo_group() -> String {
    "default".into()
}

impl SqsConfig {
    /// The section's own shape: filters, delivery, names and the SQS value ranges. `config`
    /// is the whole file, for what depends on other sections (the broker kind, the
    /// initialization types, the queue name filled in).
    pub fn problems(&self, config: &Config) -> Vec<Problem> {
        let mut problems = self.filter_problems(config);
        problems.extend(self.delivery_problems(config));
        problems.extend(self.name_problems(&config.queue_name()));
        problems.extend(self.range_problems());
        problems
    }

    /// FIFO keys that are set but empty (the ids themselves are checked by the broker).
    pub fn fifo_key_problems(&self) -> Vec<Problem> {
        [
            ("sqs.fifo_group_attribute", &self.fifo_group_attribute),
            ("sqs.fifo_group_field", &self.fifo_group_field),
            (
                "sqs.fifo_deduplication_attribute",
                &self.fifo_deduplication_attribute,
            ),
            ("sqs.fair_group_attribute", &self.fair_group_attribute),
            ("sqs.fair_group_field", &self.fair_group_field),
        ]
        .into_iter()
        .filter(|(_, value)| value.as_deref().is_some_and(|v| v.trim().is_empty()))
        .map(|(key, _)| Problem::new(key, "must not be empty (remove the key instead)"))
        .collect()
    }

    fn filter_problems(&self, config: &Config) -> Vec<Problem> {
        let mut problems = Vec::new();
        if config.does(InitializationType::EventPolling) && self.filters.is_empty() {
            problems.push(Problem::new(
                "sqs.filters",
                "EVENT_POLLING needs at least one filter, e.g. [\"Order.*\"] (or use QUEUE_POLLING)",
            ));
        }
        for (i, filter) in self.filters.iter().enumerate() {
            if let Some(e) = filter_problem(filter) {
                problems.push(Problem::new(format!("sqs.filters[{i}]"), e));
            }
        }
        problems
    }

    fn delivery_problems(&self, config: &Config) -> Vec<Problem> {
        if self.raw_message_delivery {
            return Vec::new();
        }
        let message = if config.broker.kind == BrokerKind::Local {
            "the local broker always delivers raw messages; `false` applies to broker.kind = \"aws\" only"
        } else if !config.does(InitializationType::EventPolling) {
            "`false` describes the queue's subscription to sns.topic_arn, which only EVENT_POLLING has"
        } else if config.does(InitializationType::QueuePolling) {
            // Producers send straight to a QUEUE_POLLING queue by design, and an envelope's
            // TopicArn is only body text: on a queue that unwraps envelopes, such a sender
            // could write one naming sns.topic_arn and choose the event.
            "`false` cannot be combined with QUEUE_POLLING: messages sent straight to the queue could pass as SNS envelopes and choose their event; keep raw delivery (the default) or drop QUEUE_POLLING"
        } else {
            return Vec::new();
        };
        vec![Problem::new("sqs.raw_message_delivery", message)]
    }

    fn name_problems(&self, queue: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.queue_name.is_none() {
            let stripped = self
                .queue_name_template
                .replace("{env}", "")
                .replace("{service_name}", "");
            if stripped.contains('{') || stripped.contains('}') {
                problems.push(Problem::new(
                    "sqs.queue_name_template",
                    "only {env} and {service_name} can be filled in",
                ));
            }
        }
        if let Some(e) = queue_name_problem(queue) {
            problems.push(Problem::new("sqs.queue_name", format!("`{queue}` {e}")));
        }
        if let Some(dlq) = &self.dead_letter_queue {
            if let Some(e) = queue_name_problem(dlq) {
                problems.push(Problem::new(
                    "sqs.dead_letter_queue",
                    format!("`{dlq}` {e}"),
                ));
            }
            if dlq == queue {
                problems.push(Problem::new(
                    "sqs.dead_letter_queue",
                    "must differ from the queue itself",
                ));
            }
        }
        problems
    }

    fn range_problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, message: String| problems.push(Problem::new(key, message));
        if !(1..=10).contains(&self.max_messages) {
            bad(
                "sqs.max_messages",
                format!("{} is outside 1..=10 (the SQS limit)", self.max_messages),
            );
        }
        if self.wait_time_seconds > 20 {
            bad(
                "sqs.wait_time_seconds",
                format!("{} is over 20 (the SQS limit)", self.wait_time_seconds),
            );
        }
        if self.visibility_timeout > 43_200 {
            bad(
                "sqs.visibility_timeout",
                format!(
                    "{} is over 43200 s (12 h, the SQS limit)",
                    self.visibility_timeout
                ),
            );
        }
        if self.delay_seconds > 900 {
            bad(
                "sqs.delay_seconds",
                format!("{} is over 900 (the SQS limit)", self.delay_seconds),
            );
        }
        if !(1..=1000).contains(&self.max_receive_count) {
            bad(
                "sqs.max_receive_count",
                format!("{} is outside 1..=1000", self.max_receive_count),
            );
        }
        if self.pollers == 0 {
            bad("sqs.pollers", "must be at least 1".into());
        }
        if self.max_in_flight == 0 {
            bad("sqs.max_in_flight", "must be at least 1".into());
        }
        if let Some(max) = self.max_pollers {
            if max < self.pollers {
                bad(
                    "sqs.max_pollers",
                    format!(
                        "{max} is under sqs.pollers ({}): it is the most receive loops, pollers the fewest",
                        self.pollers
                    ),
                );
            }
        }
        if self.handler_timeout_secs == 0 {
            bad("sqs.handler_timeout_secs", "must be at least 1".into());
        }
        if self.max_visibility_extension_secs > 43_200 {
            bad(
                "sqs.max_visibility_extension_secs",
                format!(
                    "{} is over 43200 s (12 h, the longest SQS keeps a received message invisible); 0 turns the heartbeat off",
                    self.max_visibility_extension_secs
                ),
            );
        }
        problems
    }
}

/// What is wrong with one `sqs.filters` entry, if anything.
fn filter_problem(filter: &str) -> Option<String> {
    if filter.trim().is_empty() {
        return Some("is empty".into());
    }
    let head = filter.strip_suffix(".*").unwrap_or(filter);
    if head.contains('*') {
        return Some(format!(
            "`{filter}`: only a trailing `.*` subscribes by prefix (`Order.*` -> {{\"prefix\": \"Order.\"}}, as the Python iniesta builds it); any other `*` would be matched literally by SNS"
        ));
    }
    None
}

/// What is wrong with a queue name, if anything.
fn queue_name_problem(name: &str) -> Option<&'static str> {
    let base = name.strip_suffix(".fifo").unwrap_or(name);
    if base.is_empty() || name.len() > 80 {
        return Some("must be 1 to 80 characters");
    }
    if !base
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Some("may only hold letters, digits, `-` and `_` (plus a `.fifo` suffix)");
    }
    None
}
