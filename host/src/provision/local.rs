//! `check` and `setup` for the embedded local broker.

use rusqlite::{params, OptionalExtension};

use super::Report;
use crate::broker::local::{Db, LocalBroker};
use crate::broker::BrokerError;
use crate::config::{Config, InitializationType};

/// Create the resources (opening the broker does it), then check them.
pub async fn setup(config: &Config) -> Result<Report, BrokerError> {
    LocalBroker::open(config).await?;
    check(config).await
}

/// Check the local broker file holds this config's resources.
pub async fn check(config: &Config) -> Result<Report, BrokerError> {
    let path = config.broker_path();
    let mut report = Report::default();
    if !path.exists() {
        report.push(
            format!("local broker {}", path.display()),
            false,
            "file does not exist".into(),
            Some("iniesta setup"),
        );
        return Ok(report);
    }
    let db = Db::open(&path)?;
    let topic = config.topic_name();
    let queue = config.queue_name();
    let dlq = config.sqs.dead_letter_queue.clone();
    let wanted_policy = crate::filter::iniesta_policy(&config.sns.event_key, &config.sqs.filters);
    let event_polling = config.does(InitializationType::EventPolling);
    let needs_topic = event_polling || config.does(InitializationType::SnsProducer);
    let needs_queue = config.consumes();
    let found = db
        .call({
            let (topic, queue, dlq) = (topic.clone(), queue.clone(), dlq.clone());
            move |conn| {
                let topic_exists = match &topic {
                    Some(t) => conn
                        .query_row("SELECT 1 FROM topics WHERE name = ?1", params![t], |_| Ok(()))
                        .optional()?
                        .is_some(),
                    None => false,
                };
                let queue_row: Option<(Option<String>, u32)> = conn
                    .query_row(
                        "SELECT dead_letter_queue, max_receive_count FROM queues WHERE name = ?1",
                        params![queue],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                let dlq_exists = match &dlq {
                    Some(d) => conn
                        .query_row("SELECT 1 FROM queues WHERE name = ?1", params![d], |_| Ok(()))
                        .optional()?
                        .is_some(),
                    None => false,
                };
                let policy: Option<Option<String>> = match &topic {
                    Some(t) => conn
                        .query_row(
                            "SELECT filter_policy FROM subscriptions WHERE topic = ?1 AND queue = ?2",
                            params![t, queue],
                            |r| r.get(0),
                        )
                        .optional()?,
                    None => None,
                };
                Ok((topic_exists, queue_row, dlq_exists, policy))
            }
        })
        .await?;
    let (topic_exists, queue_row, dlq_exists, policy) = found;
    if needs_topic {
        let name = topic.unwrap_or_default();
        report.push(
            format!("topic {name}"),
            topic_exists,
            if topic_exists {
                "exists"
            } else {
                "does not exist"
            }
            .into(),
            Some("iniesta setup"),
        );
    }
    if needs_queue {
        report.push(
            format!("queue {queue}"),
            queue_row.is_some(),
            if queue_row.is_some() {
                "exists"
            } else {
                "does not exist"
            }
            .into(),
            Some("iniesta setup"),
        );
    }
    if let Some(d) = &dlq {
        report.push(
            format!("dead-letter queue {d}"),
            dlq_exists,
            if dlq_exists {
                "exists"
            } else {
                "does not exist"
            }
            .into(),
            Some("iniesta setup"),
        );
        if let Some((redrive, max)) = &queue_row {
            let ok = redrive.as_deref() == Some(d.as_str()) && *max == config.sqs.max_receive_count;
            report.push(
                format!("redrive policy of {queue}"),
                ok,
                format!(
                    "dead-letter queue {:?}, max_receive_count {max} (want {d:?}, {})",
                    redrive.as_deref().unwrap_or("none"),
                    config.sqs.max_receive_count
                ),
                Some("iniesta setup"),
            );
        }
    }
    if event_polling {
        let subscription = format!("subscription of {queue} to the topic");
        match policy {
            None => report.push(
                subscription,
                false,
                "does not exist".into(),
                Some("iniesta setup"),
            ),
            Some(found) => {
                let found_json: Option<serde_json::Value> =
                    found.as_deref().and_then(|p| serde_json::from_str(p).ok());
                let ok = found_json.as_ref() == Some(&wanted_policy);
                report.push(
                    subscription,
                    ok,
                    format!(
                        "filter policy {} (want {wanted_policy})",
                        found.as_deref().unwrap_or("none")
                    ),
                    Some("iniesta setup"),
                );
            }
        }
    }
    Ok(report)
}
