//! `check` and `setup` against AWS SNS/SQS (or any endpoint that speaks their APIs).

use std::collections::HashMap;

use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::{json, Value};

use super::{Report, FIX};
use crate::broker::aws::{sdk_error, AwsBroker};
use crate::broker::BrokerError;
use crate::config::{Config, InitializationType};

/// What was found of one queue.
struct QueueFacts {
    url: String,
    arn: String,
    attributes: HashMap<QueueAttributeName, String>,
}

async fn queue_facts(broker: &AwsBroker, name: &str) -> Result<Option<QueueFacts>, BrokerError> {
    let url = match broker.url_of(name).await {
        Ok(url) => url,
        Err(BrokerError::NoSuchQueue(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let out = broker
        .sqs()
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .map_err(|e| sdk_error("GetQueueAttributes", e))?;
    let attributes = out.attributes().cloned().unwrap_or_default();
    let arn = attributes
        .get(&QueueAttributeName::QueueArn)
        .cloned()
        .unwrap_or_default();
    Ok(Some(QueueFacts {
        url,
        arn,
        attributes,
    }))
}

async fn topic_exists(broker: &AwsBroker, arn: &str) -> Result<bool, BrokerError> {
    match broker
        .sns()
        .get_topic_attributes()
        .topic_arn(arn)
        .send()
        .await
    {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error()
                .map(|s| s.is_not_found_exception())
                .unwrap_or(false) =>
        {
            Ok(false)
        }
        Err(e) => Err(sdk_error("GetTopicAttributes", e)),
    }
}

/// The subscription of `queue_arn` to `topic_arn`, if any: (subscription ARN, attributes).
async fn find_subscription(
    broker: &AwsBroker,
    topic_arn: &str,
    queue_arn: &str,
) -> Result<Option<(String, HashMap<String, String>)>, BrokerError> {
    let mut next: Option<String> = None;
    loop {
        let out = broker
            .sns()
            .list_subscriptions_by_topic()
            .topic_arn(topic_arn)
            .set_next_token(next.take())
            .send()
            .await
            .map_err(|e| sdk_error("ListSubscriptionsByTopic", e))?;
        for subscription in out.subscriptions() {
            if subscription.protocol() == Some("sqs") && subscription.endpoint() == Some(queue_arn)
            {
                let Some(arn) = subscription.subscription_arn() else {
                    continue;
                };
                let attributes = broker
                    .sns()
                    .get_subscription_attributes()
                    .subscription_arn(arn)
                    .send()
                    .await
                    .map_err(|e| sdk_error("GetSubscriptionAttributes", e))?
                    .attributes()
                    .cloned()
                    .unwrap_or_default();
                return Ok(Some((arn.to_string(), attributes)));
            }
        }
        match out.next_token() {
            Some(token) if !token.is_empty() => next = Some(token.to_string()),
            _ => return Ok(None),
        }
    }
}

/// The queue policy iniesta sets: the topic may send to the queue.
///
/// The action is spelt `SQS:SendMessage` (IAM compares actions case-insensitively) because
/// the Python iniesta's EVENT_POLLING start-up check looks for exactly that text in the first
/// statement's `Action`; [`policy_allows`] accepts any spelling.
pub fn queue_policy(queue_arn: &str, topic_arn: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "iniesta-sns-send",
            "Effect": "Allow",
            "Principal": { "Service": "sns.amazonaws.com" },
            "Action": "SQS:SendMessage",
            "Resource": queue_arn,
            "Condition": { "ArnEquals": { "aws:SourceArn": topic_arn } }
        }]
    })
}

fn one_or_many(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether a queue policy lets `topic_arn` call `SQS:SendMessage` (the action in any case,
/// as IAM compares it: `sqs:SendMessage` passes too).
pub fn policy_allows(policy: &str, topic_arn: &str) -> bool {
    let Ok(policy) = serde_json::from_str::<Value>(policy) else {
        return false;
    };
    let statements = match policy.get("Statement") {
        Some(Value::Array(items)) => items.clone(),
        Some(single @ Value::Object(_)) => vec![single.clone()],
        _ => return false,
    };
    statements.iter().any(|statement| {
        let allows = statement.get("Effect").and_then(|e| e.as_str()) == Some("Allow");
        let sends = one_or_many(statement.get("Action")).iter().any(|a| {
            let a = a.to_ascii_lowercase();
            a == "sqs:sendmessage" || a == "sqs:*" || a == "*"
        });
        let condition = statement.get("Condition");
        let from_topic = ["ArnEquals", "ArnLike", "StringEquals", "StringLike"]
            .iter()
            .any(|op| {
                let values = condition
                    .and_then(|c| c.get(*op))
                    .and_then(|c| c.get("aws:SourceArn").or_else(|| c.get("aws:sourcearn")));
                one_or_many(values).iter().any(|v| v == topic_arn)
            });
        allows && sends && from_topic
    })
}

/// Whether a Python iniesta service's EVENT_POLLING start-up check (insanic-iniesta 0.4.0,
/// `SQSClient.confirm_permission`) accepts the queue policy: it reads only `Statement[0]`,
/// wants `Effect` `Allow`, and looks for the exact text `SQS:SendMessage` in its `Action`
/// (a substring of a string, an element of a list; case-sensitive).
pub fn python_iniesta_accepts(policy: &str) -> bool {
    let Ok(policy) = serde_json::from_str::<Value>(policy) else {
        return false;
    };
    let Some(statement) = policy.get("Statement").and_then(|s| s.get(0)) else {
        return false;
    };
    let allows = statement.get("Effect").and_then(|e| e.as_str()) == Some("Allow");
    let sends = match statement.get("Action") {
        Some(Value::String(text)) => text.contains("SQS:SendMessage"),
        Some(Value::Array(items)) => items.iter().any(|a| a == "SQS:SendMessage"),
        _ => false,
    };
    allows && sends
}

fn redrive_matches(redrive: Option<&String>, dlq_arn: &str, max: u32) -> bool {
    let Some(redrive) = redrive.and_then(|r| serde_json::from_str::<Value>(r).ok()) else {
        return false;
    };
    let target = redrive.get("deadLetterTargetArn").and_then(|v| v.as_str());
    let count = redrive.get("maxReceiveCount").and_then(|v| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    });
    target == Some(dlq_arn) && count == Some(u64::from(max))
}

/// Check every resource the config needs.
pub async fn check(config: &Config) -> Result<Report, BrokerError> {
    let broker = AwsBroker::connect(config).await;
    let mut report = Report::default();
    let event_polling = config.does(InitializationType::EventPolling);
    let needs_topic = event_polling || config.does(InitializationType::SnsProducer);
    let topic_arn = config.sns.topic_arn.clone().unwrap_or_default();
    let mut topic_ok = false;
    if needs_topic {
        topic_ok = topic_exists(&broker, &topic_arn).await?;
        report.push(
            format!("topic {topic_arn}"),
            topic_ok,
            if topic_ok { "exists" } else { "does not exist" }.into(),
            Some(FIX),
        );
    }
    super::bucket::check(config, &mut report).await;
    if !config.consumes() {
        return Ok(report);
    }
    let queue_name = config.queue_name();
    let queue = queue_facts(&broker, &queue_name).await?;
    report.push(
        format!("queue {queue_name}"),
        queue.is_some(),
        match &queue {
            Some(q) => format!("exists ({})", q.url),
            None => "does not exist".into(),
        },
        Some(FIX),
    );
    if let Some(dlq_name) = &config.sqs.dead_letter_queue {
        let dlq = queue_facts(&broker, dlq_name).await?;
        report.push(
            format!("dead-letter queue {dlq_name}"),
            dlq.is_some(),
            if dlq.is_some() {
                "exists"
            } else {
                "does not exist"
            }
            .into(),
            Some(FIX),
        );
        if let (Some(q), Some(d)) = (&queue, &dlq) {
            let redrive = q.attributes.get(&QueueAttributeName::RedrivePolicy);
            let ok = redrive_matches(redrive, &d.arn, config.sqs.max_receive_count);
            report.push(
                format!("redrive policy of {queue_name}"),
                ok,
                format!(
                    "{} (want dead-letter target {} after {} receives)",
                    redrive.map(String::as_str).unwrap_or("none"),
                    d.arn,
                    config.sqs.max_receive_count
                ),
                Some(FIX),
            );
        }
    }
    let (Some(queue), true, true) = (&queue, event_polling, topic_ok) else {
        return Ok(report);
    };
    let wanted = crate::filter::iniesta_policy(&config.sns.event_key, &config.sqs.filters);
    match find_subscription(&broker, &topic_arn, &queue.arn).await? {
        None => report.push(
            format!("subscription of {queue_name} to {topic_arn}"),
            false,
            "does not exist".into(),
            Some(FIX),
        ),
        Some((arn, attributes)) => {
            report.push(format!("subscription {arn}"), true, "exists".into(), None);
            // Absent means false (the SNS default). Decoding relies on it: the host reads
            // bodies as envelopes only when the config says raw delivery is off.
            let raw_found = attributes
                .get("RawMessageDelivery")
                .map(String::as_str)
                .unwrap_or("false");
            let raw_wanted = config.sqs.raw_message_delivery;
            report.push(
                "raw message delivery".into(),
                raw_found.eq_ignore_ascii_case(&raw_wanted.to_string()),
                format!(
                    "RawMessageDelivery = {raw_found} (want {raw_wanted}, sqs.raw_message_delivery)"
                ),
                Some(FIX),
            );
            let found = attributes.get("FilterPolicy");
            let found_json = found.and_then(|p| serde_json::from_str::<Value>(p).ok());
            let scope_ok = attributes
                .get("FilterPolicyScope")
                .map(|s| s == "MessageAttributes")
                .unwrap_or(true);
            report.push(
                "filter policy".into(),
                found_json.as_ref() == Some(&wanted) && scope_ok,
                format!(
                    "{} (want {wanted} on MessageAttributes)",
                    found.map(String::as_str).unwrap_or("none")
                ),
                Some(FIX),
            );
        }
    }
    let policy = queue.attributes.get(&QueueAttributeName::Policy);
    let allowed = policy
        .map(|p| policy_allows(p, &topic_arn))
        .unwrap_or(false);
    report.push(
        format!("queue policy of {queue_name}"),
        allowed,
        if allowed {
            format!("lets {topic_arn} send messages")
        } else {
            format!("does not let {topic_arn} call SQS:SendMessage")
        },
        Some(FIX),
    );
    if allowed && !policy.is_some_and(|p| python_iniesta_accepts(p)) {
        // IAM reads the action in any case, so the queue works for SNS; but a Python iniesta
        // service polling the same queue refuses to start (its check compares the text).
        report.warnings.push((
            format!("queue policy of {queue_name}"),
            "a Python iniesta service polling this queue would refuse to start: its start-up check wants the exact text `SQS:SendMessage` in the first statement's Action (run `iniesta setup` to write the policy that way)".into(),
        ));
    }
    Ok(report)
}

async fn ensure_queue(
    broker: &AwsBroker,
    name: &str,
    attributes: &[(QueueAttributeName, String)],
) -> Result<QueueFacts, BrokerError> {
    let mut create = broker.sqs().create_queue().queue_name(name);
    for (key, value) in attributes {
        create = create.attributes(key.clone(), value);
    }
    if crate::broker::fifo::is_fifo(name) {
        // Only settable at creation; deduplication ids are always sent (broker/fifo.rs).
        create = create.attributes(QueueAttributeName::FifoQueue, "true");
    }
    match create.send().await {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .map(|s| s.is_queue_name_exists())
                .unwrap_or(false) => {}
        Err(e) => return Err(sdk_error("CreateQueue", e)),
    }
    let url = broker.url_of(name).await?;
    if !attributes.is_empty() {
        // Update a queue that existed with other settings.
        let mut set = broker.sqs().set_queue_attributes().queue_url(&url);
        for (key, value) in attributes {
            set = set.attributes(key.clone(), value);
        }
        set.send()
            .await
            .map_err(|e| sdk_error("SetQueueAttributes", e))?;
    }
    queue_facts(broker, name)
        .await?
        .ok_or_else(|| BrokerError::NoSuchQueue(name.to_string()))
}

/// Create or update every resource; idempotent. Returns the check afterwards.
pub async fn setup(config: &Config) -> Result<Report, BrokerError> {
    let broker = AwsBroker::connect(config).await;
    let event_polling = config.does(InitializationType::EventPolling);
    let needs_topic = event_polling || config.does(InitializationType::SnsProducer);
    let topic_arn = config.sns.topic_arn.clone().unwrap_or_default();
    if needs_topic {
        let name = config.topic_name().unwrap_or_default();
        let mut create = broker.sns().create_topic().name(&name);
        if crate::broker::fifo::is_fifo(&name) {
            create = create.attributes("FifoTopic", "true");
        }
        let created = create
            .send()
            .await
            .map_err(|e| sdk_error("CreateTopic", e))?;
        let arn = created.topic_arn().unwrap_or_default();
        if arn != topic_arn {
            tracing::warn!(created = %arn, configured = %topic_arn, "the topic's ARN differs from sns.topic_arn; set sns.topic_arn to the created ARN");
        }
        tracing::info!(topic = %arn, "topic in place");
    }
    super::bucket::setup(config).await?;
    if !config.consumes() {
        return check(config).await;
    }
    let mut dlq_arn = None;
    if let Some(dlq) = &config.sqs.dead_letter_queue {
        let facts = ensure_queue(&broker, dlq, &[]).await?;
        tracing::info!(queue = %dlq, "dead-letter queue in place");
        dlq_arn = Some(facts.arn);
    }
    let queue_name = config.queue_name();
    let mut attributes = vec![
        (
            QueueAttributeName::VisibilityTimeout,
            config.sqs.visibility_timeout.to_string(),
        ),
        (
            QueueAttributeName::DelaySeconds,
            config.sqs.delay_seconds.to_string(),
        ),
    ];
    if let Some(arn) = &dlq_arn {
        attributes.push((
            QueueAttributeName::RedrivePolicy,
            json!({ "deadLetterTargetArn": arn, "maxReceiveCount": config.sqs.max_receive_count.to_string() }).to_string(),
        ));
    }
    let queue = ensure_queue(&broker, &queue_name, &attributes).await?;
    tracing::info!(queue = %queue_name, "queue in place");
    if event_polling {
        broker
            .sqs()
            .set_queue_attributes()
            .queue_url(&queue.url)
            .attributes(
                QueueAttributeName::Policy,
                queue_policy(&queue.arn, &topic_arn).to_string(),
            )
            .send()
            .await
            .map_err(|e| sdk_error("SetQueueAttributes", e))?;
        let policy =
            crate::filter::iniesta_policy(&config.sns.event_key, &config.sqs.filters).to_string();
        let raw = config.sqs.raw_message_delivery.to_string();
        match find_subscription(&broker, &topic_arn, &queue.arn).await? {
            Some((arn, _)) => {
                for (name, value) in [
                    ("RawMessageDelivery", raw.clone()),
                    ("FilterPolicyScope", "MessageAttributes".to_string()),
                    ("FilterPolicy", policy.clone()),
                ] {
                    broker
                        .sns()
                        .set_subscription_attributes()
                        .subscription_arn(&arn)
                        .attribute_name(name)
                        .attribute_value(value)
                        .send()
                        .await
                        .map_err(|e| sdk_error("SetSubscriptionAttributes", e))?;
                }
                tracing::info!(subscription = %arn, "subscription updated");
            }
            None => {
                let out = broker
                    .sns()
                    .subscribe()
                    .topic_arn(&topic_arn)
                    .protocol("sqs")
                    .endpoint(&queue.arn)
                    .attributes("RawMessageDelivery", raw)
                    .attributes("FilterPolicyScope", "MessageAttributes")
                    .attributes("FilterPolicy", policy)
                    .return_subscription_arn(true)
                    .send()
                    .await
                    .map_err(|e| sdk_error("Subscribe", e))?;
                tracing::info!(subscription = %out.subscription_arn().unwrap_or_default(), "subscribed");
            }
        }
    }
    check(config).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_policy_passes_our_check_and_others_do_not() {
        let topic = "arn:aws:sns:us-east-1:123456789012:global";
        let ours = queue_policy("arn:aws:sqs:us-east-1:123456789012:q", topic);
        assert_eq!(
            ours["Statement"][0]["Action"], "SQS:SendMessage",
            "the spelling the Python iniesta's start-up check looks for"
        );
        let ours = ours.to_string();
        assert!(policy_allows(&ours, topic));
        assert!(policy_allows(&ours.replace("SQS:", "sqs:"), topic));
        assert!(!policy_allows(
            &ours,
            "arn:aws:sns:us-east-1:123456789012:other"
        ));
        let python_style = json!({"Statement": {"Effect": "Allow", "Action": ["SQS:SendMessage"],
            "Condition": {"ArnLike": {"aws:SourceArn": [topic]}}}})
        .to_string();
        assert!(policy_allows(&python_style, topic));
        let deny = json!({"Statement": [{"Effect": "Deny", "Action": "sqs:SendMessage",
            "Condition": {"ArnEquals": {"aws:SourceArn": topic}}}]})
        .to_string();
        assert!(!policy_allows(&deny, topic));
        assert!(!policy_allows("not json", topic));
    }

    #[test]
    fn the_python_iniesta_check_reads_the_first_statement_and_the_exact_text() {
        let topic = "arn:aws:sns:us-east-1:123456789012:global";
        let ours = queue_policy("arn:aws:sqs:us-east-1:123456789012:q", topic).to_string();
        assert!(python_iniesta_accepts(&ours));
        // An older iniesta-rs wrote the lower-case spelling: IAM accepts it, Python does not.
        assert!(policy_allows(&ours.replace("SQS:", "sqs:"), topic));
        assert!(!python_iniesta_accepts(&ours.replace("SQS:", "sqs:")));
        // Someone else's statement first.
        let other_first = json!({"Statement": [
            {"Effect": "Allow", "Action": "sqs:ReceiveMessage", "Principal": "*"},
            {"Effect": "Allow", "Action": "SQS:SendMessage",
             "Condition": {"ArnEquals": {"aws:SourceArn": topic}}}]})
        .to_string();
        assert!(policy_allows(&other_first, topic));
        assert!(!python_iniesta_accepts(&other_first));
        assert!(!python_iniesta_accepts("not json"));
    }

    #[test]
    fn redrive_policy_comparison_accepts_string_or_number_counts() {
        let arn = "arn:aws:sqs:us-east-1:1:dlq";
        let s = json!({"deadLetterTargetArn": arn, "maxReceiveCount": "5"}).to_string();
        let n = json!({"deadLetterTargetArn": arn, "maxReceiveCount": 5}).to_string();
        assert!(redrive_matches(Some(&s), arn, 5));
        assert!(redrive_matches(Some(&n), arn, 5));
        assert!(!redrive_matches(Some(&n), arn, 3));
        assert!(!redrive_matches(None, arn, 5));
    }
}
