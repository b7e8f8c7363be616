//! FIFO queues and topics: the `MessageGroupId` and `MessageDeduplicationId` of what is sent;
//! and fair queues: the `MessageGroupId` (a tenant id) of what is sent to standard ones.
//!
//! A queue or topic whose name ends in `.fifo` is FIFO. Everything sent to one gets a group
//! id, from the `sqs.fifo_group_attribute` attribute, else the `sqs.fifo_group_field` body
//! field, else `sqs.fifo_default_group`; and a deduplication id, from the
//! `sqs.fifo_deduplication_attribute` attribute, else the SHA-256 of the event name and the
//! body (so the same event with the same body sent twice within five minutes is delivered
//! once, as SQS content-based deduplication does with the body alone). Values SQS would
//! refuse (over 128 characters, or characters outside printable ASCII) are replaced by their
//! SHA-256, so any value works as a key.
//!
//! On standard queues and topics a `MessageGroupId` asks for no order: SQS fair queues use it
//! to tell tenants apart, so one tenant's backlog does not hold up the others' messages (and
//! SNS standard topics pass it on to SQS subscriptions). It comes from the
//! `sqs.fair_group_attribute` attribute, else the `sqs.fair_group_field` body field; a message
//! with neither is sent without one.

use sha2::{Digest, Sha256};

use crate::config::{Config, InitializationType, Problem};
use crate::wire::Outgoing;

/// Whether a queue name, queue URL or topic ARN names a FIFO queue or topic.
pub fn is_fifo(name: &str) -> bool {
    name.ends_with(".fifo")
}

/// How group and deduplication ids are chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FifoSettings {
    /// The attribute holding the group id.
    pub group_attribute: Option<String>,
    /// The top-level body field holding the group id.
    pub group_field: Option<String>,
    /// The group id when neither gives one.
    pub default_group: String,
    /// The attribute holding the deduplication id.
    pub deduplication_attribute: Option<String>,
    /// Standard destinations: the attribute holding the fair-queue group (tenant) id.
    pub fair_attribute: Option<String>,
    /// Standard destinations: the top-level body field holding it.
    pub fair_field: Option<String>,
}

impl Default for FifoSettings {
    fn default() -> Self {
        FifoSettings {
            group_attribute: None,
            group_field: None,
            default_group: "default".into(),
            deduplication_attribute: None,
            fair_attribute: None,
            fair_field: None,
        }
    }
}

/// What is wrong with the FIFO settings: a FIFO queue needs a FIFO dead-letter queue and,
/// when subscribed, a FIFO topic (SNS delivers FIFO topics only to FIFO queues and standard
/// topics only to standard queues); the FIFO keys must be usable ids.
pub fn problems(config: &Config) -> Vec<Problem> {
    let queue = config.queue_name();
    let mut problems = pairing_problems(config, &queue);
    problems.extend(config.sqs.fifo_key_problems());
    let group = &config.sqs.fifo_default_group;
    if let Err(e) = check_id(group) {
        problems.push(Problem::new(
            "sqs.fifo_default_group",
            format!("`{group}` {e}"),
        ));
    }
    problems.extend(claim_check_problems(config, &queue));
    problems
}

/// Keys read from a body cannot be read once the body went to S3 (`payloads.s3_bucket`): the
/// message then carries a pointer with a fresh object key. Such keys must come from attributes,
/// which travel with the pointer.
fn claim_check_problems(config: &Config, queue: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    if config.payloads.s3_bucket.is_none() {
        return problems;
    }
    let why = "is read from the body, and a body offloaded to S3 (payloads.s3_bucket) is a pointer by then";
    for (key, set) in [
        (
            "sqs.fifo_group_field",
            config.sqs.fifo_group_field.is_some(),
        ),
        (
            "sqs.fair_group_field",
            config.sqs.fair_group_field.is_some(),
        ),
    ] {
        if set {
            let attribute = key.replace("_field", "_attribute");
            problems.push(Problem::new(
                key,
                format!("the group {why}: name an attribute instead ({attribute})"),
            ));
        }
    }
    let fifo_destination = is_fifo(queue) || config.topic_name().is_some_and(|t| is_fifo(&t));
    if fifo_destination && config.sqs.fifo_deduplication_attribute.is_none() {
        problems.push(Problem::new(
            "sqs.fifo_deduplication_attribute",
            format!("must be set on a FIFO topic or queue with payloads.s3_bucket: the default deduplication id {why}, so two publishes of one event would not be recognised as duplicates"),
        ));
    }
    problems
}

/// The queue, its dead-letter queue and the topic must all be FIFO or all standard.
fn pairing_problems(config: &Config, queue: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    let fifo_queue = is_fifo(queue);
    if let Some(dlq) = &config.sqs.dead_letter_queue {
        if config.consumes() && is_fifo(dlq) != fifo_queue {
            problems.push(Problem::new(
                "sqs.dead_letter_queue",
                if fifo_queue {
                    format!("`{dlq}` must be a FIFO queue too (end in `.fifo`): the dead-letter queue of a FIFO queue is a FIFO queue")
                } else {
                    format!("`{dlq}` is a FIFO queue but `{queue}` is not; use a standard dead-letter queue")
                },
            ));
        }
    }
    let fifo_topic = config.topic_name().is_some_and(|t| is_fifo(&t));
    if config.does(InitializationType::EventPolling) && config.sns.topic_arn.is_some() {
        if fifo_queue && !fifo_topic {
            problems.push(Problem::new(
                "sns.topic_arn",
                format!("the queue `{queue}` is a FIFO queue, which only a FIFO topic (a name ending in `.fifo`) can deliver to; use a FIFO topic or QUEUE_POLLING"),
            ));
        } else if fifo_topic && !fifo_queue {
            problems.push(Problem::new(
                "sqs.queue_name",
                format!("`{queue}` must be a FIFO queue (end in `.fifo`): a FIFO topic only delivers to FIFO queues"),
            ));
        }
    }
    problems
}

/// Why a value cannot be a group or deduplication id as it is.
pub fn check_id(value: &str) -> Result<(), &'static str> {
    if value.is_empty() || value.len() > 128 {
        return Err("must be 1 to 128 characters");
    }
    if !value.chars().all(|c| c.is_ascii_graphic()) {
        return Err("may only hold printable ASCII characters without spaces");
    }
    Ok(())
}

/// A key from the `attribute` (checked first) or the top-level body `field` (a non-empty
/// string, a number or a boolean), made usable as an id.
fn key_of(attribute: Option<&str>, field: Option<&str>, message: &Outgoing) -> Option<String> {
    if let Some(value) = attribute
        .and_then(|name| message.attributes.get(name))
        .filter(|a| !a.value.is_empty())
    {
        return Some(usable(&value.value));
    }
    let field = field?;
    let Ok(serde_json::Value::Object(body)) =
        serde_json::from_slice::<serde_json::Value>(&message.body)
    else {
        return None;
    };
    match body.get(field) {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(usable(s)),
        Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
            Some(usable(&v.to_string()))
        }
        _ => None,
    }
}

fn usable(value: &str) -> String {
    match check_id(value) {
        Ok(()) => value.to_string(),
        Err(_) => hex_sha256(&[value.as_bytes()]),
    }
}

fn hex_sha256(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hasher.update([0u8]);
        }
        hasher.update(part);
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl FifoSettings {
    /// From `[sqs]`.
    pub fn from_config(config: &Config) -> FifoSettings {
        FifoSettings {
            group_attribute: config.sqs.fifo_group_attribute.clone(),
            group_field: config.sqs.fifo_group_field.clone(),
            default_group: config.sqs.fifo_default_group.clone(),
            deduplication_attribute: config.sqs.fifo_deduplication_attribute.clone(),
            fair_attribute: config.sqs.fair_group_attribute.clone(),
            fair_field: config.sqs.fair_group_field.clone(),
        }
    }

    /// The `MessageGroupId` of a message to a FIFO destination.
    pub fn group_of(&self, message: &Outgoing) -> String {
        key_of(
            self.group_attribute.as_deref(),
            self.group_field.as_deref(),
            message,
        )
        .unwrap_or_else(|| usable(&self.default_group))
    }

    /// The `MessageGroupId` of a message to a standard destination (a fair queue's tenant),
    /// if the config names where it is and the message has it.
    pub fn fair_group_of(&self, message: &Outgoing) -> Option<String> {
        key_of(
            self.fair_attribute.as_deref(),
            self.fair_field.as_deref(),
            message,
        )
    }

    /// The `MessageDeduplicationId` of a message.
    pub fn deduplication_id_of(&self, message: &Outgoing) -> String {
        if let Some(value) = self
            .deduplication_attribute
            .as_ref()
            .and_then(|name| message.attributes.get(name))
            .filter(|a| !a.value.is_empty())
        {
            return usable(&value.value);
        }
        hex_sha256(&[message.event.as_bytes(), &message.body])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Attribute, Attributes};

    fn outgoing(body: &str, attributes: &[(&str, &str)]) -> Outgoing {
        let mut attrs = Attributes::new();
        for (k, v) in attributes {
            attrs.insert((*k).to_string(), Attribute::string(*v));
        }
        Outgoing {
            event: "Order.Created.shop".into(),
            body: body.as_bytes().to_vec(),
            attributes: attrs,
        }
    }

    #[test]
    fn group_from_attribute_then_field_then_default() {
        let fifo = FifoSettings {
            group_attribute: Some("tenant".into()),
            group_field: Some("customer".into()),
            default_group: "all".into(),
            ..FifoSettings::default()
        };
        assert_eq!(
            fifo.group_of(&outgoing(r#"{"customer":"c1"}"#, &[("tenant", "t9")])),
            "t9"
        );
        assert_eq!(fifo.group_of(&outgoing(r#"{"customer":"c1"}"#, &[])), "c1");
        assert_eq!(fifo.group_of(&outgoing(r#"{"customer":42}"#, &[])), "42");
        assert_eq!(fifo.group_of(&outgoing("not json", &[])), "all");
        assert_eq!(fifo.group_of(&outgoing(r#"{"other":1}"#, &[])), "all");
        // Unusable values become their hash.
        let spaced = fifo.group_of(&outgoing(r#"{"customer":"a b"}"#, &[]));
        assert_eq!(spaced.len(), 64);
        assert!(check_id(&spaced).is_ok());
    }

    #[test]
    fn fair_groups_from_attribute_then_field_else_none() {
        let fair = FifoSettings {
            fair_attribute: Some("tenant".into()),
            fair_field: Some("customer".into()),
            ..FifoSettings::default()
        };
        let tenant = outgoing(r#"{"customer":"c1"}"#, &[("tenant", "t9")]);
        assert_eq!(fair.fair_group_of(&tenant).as_deref(), Some("t9"));
        assert_eq!(
            fair.fair_group_of(&outgoing(r#"{"customer":7}"#, &[]))
                .as_deref(),
            Some("7")
        );
        assert_eq!(
            fair.fair_group_of(&outgoing(r#"{"other":1}"#, &[])),
            None,
            "no tenant, no group"
        );
        // FIFO destinations use the FIFO rules (here: the default group).
        assert_eq!(fair.group_of(&tenant), "default");
        assert_eq!(FifoSettings::default().fair_group_of(&tenant), None);
    }

    #[test]
    fn deduplication_by_content_or_attribute() {
        let fifo = FifoSettings {
            deduplication_attribute: Some("request_id".into()),
            ..FifoSettings::default()
        };
        let a = fifo.deduplication_id_of(&outgoing(r#"{"n":1}"#, &[]));
        let b = fifo.deduplication_id_of(&outgoing(r#"{"n":1}"#, &[]));
        let c = fifo.deduplication_id_of(&outgoing(r#"{"n":2}"#, &[]));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            fifo.deduplication_id_of(&outgoing(r#"{"n":1}"#, &[("request_id", "r-1")])),
            "r-1"
        );
        assert!(is_fifo("q.fifo") && !is_fifo("q"));
        assert!(check_id("").is_err() && check_id(&"x".repeat(129)).is_err());
    }

    #[test]
    fn keys_from_the_body_are_refused_when_bodies_may_go_to_s3() {
        let parse = |text: &str| {
            crate::config::Config::parse(text, std::path::Path::new(".")).expect("parses")
        };
        let keys = |config: &Config| -> Vec<String> {
            claim_check_problems(config, &config.queue_name())
                .into_iter()
                .map(|p| p.key)
                .collect()
        };
        let base = "service = \"s\"\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:1:t.fifo\"\n";
        // Without a bucket, nothing to say.
        assert!(keys(&parse(&format!("{base}[sqs]\nfifo_group_field = \"id\"\n"))).is_empty());
        let with_bucket = parse(&format!(
            "{base}[sqs]\nfifo_group_field = \"id\"\nfair_group_field = \"t\"\n[payloads]\ns3_bucket = \"b-1\"\n"
        ));
        assert_eq!(
            keys(&with_bucket),
            [
                "sqs.fifo_group_field",
                "sqs.fair_group_field",
                "sqs.fifo_deduplication_attribute"
            ]
        );
        let from_attributes = parse(&format!(
            "{base}[sqs]\nfifo_group_attribute = \"id\"\nfifo_deduplication_attribute = \"req\"\n[payloads]\ns3_bucket = \"b-1\"\n"
        ));
        assert!(keys(&from_attributes).is_empty());
    }
}
