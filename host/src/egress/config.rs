//! `[[egress]]`, `[[ingress]]` and `[outbox]` in `iniesta.toml`: the data lives in
//! [`crate::config::egress`] (re-exported here); this checks the entries against the built-in
//! egresses and merges constructor configs.

use std::collections::HashSet;

pub use crate::config::egress::{
    EgressConfig, IngressConfig, OutboxConfig, BUILTIN_SNS, BUILTIN_SQS,
};
use crate::config::{Config, Problem};

/// Problems in `[[egress]]`, `[[ingress]]` and `[outbox]` that need no plugin to find.
pub fn problems(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut bad = |key: String, message: String| problems.push(Problem { key, message });
    let mut names = HashSet::new();
    for (i, e) in config.egress.iter().enumerate() {
        let key = format!("egress[{i}]");
        if e.plugin.trim().is_empty() {
            bad(
                format!("{key}.plugin"),
                "must name `sns`, `sqs` or an egress plugin".into(),
            );
        }
        if !names.insert(e.label()) {
            bad(
                format!("{key}.name"),
                format!(
                    "`{}` names two egresses; give one a distinct `name = \"…\"` (the outbox keeps events per name)",
                    e.label()
                ),
            );
        }
        if let Some(c) = &e.config {
            if !c.is_table() {
                bad(
                    format!("{key}.config"),
                    "must be a table, e.g. config = { path = \"events.jsonl\" }".into(),
                );
            }
        }
        if let Some(media_type) = &e.media_type {
            if media_type.trim().is_empty() || media_type.chars().any(char::is_whitespace) {
                bad(
                    format!("{key}.media_type"),
                    "must be a media type without spaces, e.g. \"application/vnd.globality.pubsub._.created.order\"".into(),
                );
            }
        }
        match e.plugin.as_str() {
            BUILTIN_SNS if config.sns.topic_arn.is_none() => bad(
                format!("{key}.plugin"),
                "the built-in `sns` egress publishes to sns.topic_arn, which is not set".into(),
            ),
            BUILTIN_SQS => {
                let queue = e
                    .config
                    .as_ref()
                    .and_then(|c| c.get("queue"))
                    .and_then(|q| q.as_str());
                if queue.is_none_or(|q| q.trim().is_empty()) {
                    bad(
                        format!("{key}.config"),
                        "the built-in `sqs` egress needs the queue: config = { queue = \"name\" }"
                            .into(),
                    );
                }
            }
            _ => {}
        }
    }
    let mut names = HashSet::new();
    for (i, e) in config.ingress.iter().enumerate() {
        let key = format!("ingress[{i}]");
        if e.plugin.trim().is_empty() {
            bad(
                format!("{key}.plugin"),
                "must name an ingress plugin".into(),
            );
        }
        if !names.insert(e.label()) {
            bad(
                format!("{key}.name"),
                format!(
                    "`{}` names two ingresses; give one a distinct `name = \"…\"`",
                    e.label()
                ),
            );
        }
        if let Some(c) = &e.config {
            if !c.is_table() {
                bad(format!("{key}.config"), "must be a table".into());
            }
        }
    }
    problems.extend(config.outbox.problems());
    problems.extend(super::batch::problems(&config.publish));
    problems
}

/// An entry's constructor config: its profile's settings with its own `config` table over
/// them, as JSON text. Never log the result: it holds the profile's secrets.
pub fn constructor_config(
    profile: Option<&serde_json::Map<String, serde_json::Value>>,
    own: Option<&toml::Value>,
) -> String {
    let mut merged = profile.cloned().unwrap_or_default();
    if let Some(toml::Value::Table(own)) = own {
        if let Ok(serde_json::Value::Object(own)) = serde_json::to_value(own) {
            merged.extend(own);
        }
    }
    serde_json::Value::Object(merged).to_string()
}
