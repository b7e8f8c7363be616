//! `[sns]`: the global topic.

use serde::{Deserialize, Serialize};

use super::Problem;

/// `[sns]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnsConfig {
    /// The global topic's ARN.
    #[serde(default)]
    pub topic_arn: Option<String>,
    /// The attribute that carries the event name; keep the default (`iniesta_pass`) to stay
    /// compatible with the Python iniesta.
    #[serde(default = "default_event_key")]
    pub event_key: String,
}

impl Default for SnsConfig {
    fn default() -> Self {
        Self {
            topic_arn: None,
            event_key: default_event_key(),
        }
    }
}

fn default_event_key() -> String {
    "iniesta_pass".into()
}

impl SnsConfig {
    /// The section's own shape; `needs_topic` when this host produces or polls the topic.
    pub fn problems(&self, needs_topic: bool) -> Vec<Problem> {
        let mut problems = Vec::new();
        match self.topic_arn.as_deref() {
            None if needs_topic => problems.push(Problem::new(
                "sns.topic_arn",
                "is required for SNS_PRODUCER and EVENT_POLLING (e.g. \"arn:aws:sns:us-east-1:000000000000:global\")",
            )),
            Some(arn) if !arn.starts_with("arn:") || arn.split(':').count() < 6 => {
                problems.push(Problem::new(
                    "sns.topic_arn",
                    format!(
                        "`{arn}` is not a topic ARN (expected arn:aws:sns:REGION:ACCOUNT:NAME)"
                    ),
                ))
            }
            _ => {}
        }
        if self.event_key.trim().is_empty() {
            problems.push(Problem::new(
                "sns.event_key",
                "must not be empty (the Python iniesta uses \"iniesta_pass\")",
            ));
        }
        problems
    }
}
