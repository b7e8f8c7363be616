//! Resource checks and setup: `iniesta check` and `iniesta setup`.
//!
//! A check reports every resource by name — topic, queue, dead-letter queue, subscription and
//! its filter policy — with the command that fixes each problem.

use std::fmt;

use rusqlite::{params, OptionalExtension};

use crate::broker::local::{Db, LocalBroker};
use crate::broker::BrokerError;
use crate::config::{BrokerKind, Config, InitializationType};

/// One checked resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// What was checked, e.g. `queue iniesta-development-receiver`.
    pub resource: String,
    /// Whether it is as the config wants it.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// The command that fixes it.
    pub fix: Option<String>,
}

/// A check's findings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Every checked resource, in order.
    pub items: Vec<Item>,
}

impl Report {
    /// Whether every item is fine.
    pub fn ok(&self) -> bool {
        self.items.iter().all(|i| i.ok)
    }

    fn push(&mut self, resource: String, ok: bool, detail: String, fix: Option<&str>) {
        self.items.push(Item {
            resource,
            ok,
            detail,
            fix: fix.map(str::to_string),
        });
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for item in &self.items {
            let mark = if item.ok { "ok     " } else { "PROBLEM" };
            write!(f, "{mark} {}: {}", item.resource, item.detail)?;
            if let (false, Some(fix)) = (item.ok, &item.fix) {
                write!(f, " (fix: {fix})")?;
            }
            writeln!(f)?;
        }
        let problems = self.items.iter().filter(|i| !i.ok).count();
        if problems == 0 {
            write!(f, "all {} resources are in place", self.items.len())
        } else {
            write!(f, "{problems} problem(s)")
        }
    }
}

/// Check the resources a config needs.
pub async fn check(config: &Config) -> Result<Report, BrokerError> {
    match config.broker.kind {
        BrokerKind::Local => check_local(config).await,
        BrokerKind::Aws => Err(BrokerError::Aws {
            operation: "check",
            message: "the AWS broker is not built yet".into(),
            retryable: false,
        }),
    }
}

/// Create or update the resources a config needs; idempotent. Returns the check after.
pub async fn setup(config: &Config) -> Result<Report, BrokerError> {
    match config.broker.kind {
        BrokerKind::Local => {
            LocalBroker::open(config).await?;
            check_local(config).await
        }
        BrokerKind::Aws => Err(BrokerError::Aws {
            operation: "setup",
            message: "the AWS broker is not built yet".into(),
            retryable: false,
        }),
    }
}

async fn check_local(config: &Config) -> Result<Report, BrokerError> {
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
