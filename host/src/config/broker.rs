//! `[broker]`: where messages live.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Problem;

/// `[broker]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// `local` (embedded SQLite) or `aws`.
    #[serde(default)]
    pub kind: BrokerKind,
    /// The SQLite file of the local broker.
    #[serde(default = "default_broker_path")]
    pub path: PathBuf,
    /// AWS region; else the standard AWS chain decides.
    #[serde(default)]
    pub region: Option<String>,
    /// AWS endpoint override (local emulators).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Which client receives, deletes and changes visibility on the queue.
    #[serde(default)]
    pub sqs_client: SqsClient,
}

/// The client of the SQS calls made per message (`ReceiveMessage`, `DeleteMessageBatch`,
/// `ChangeMessageVisibilityBatch`); every other AWS call goes through the SDK either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqsClient {
    /// Our own: the SQS JSON protocol over the host's HTTP client, signed with aws-sigv4,
    /// read without copying what it need not copy.
    #[default]
    Lean,
    /// The AWS SDK for Rust.
    Sdk,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            kind: BrokerKind::default(),
            path: default_broker_path(),
            region: None,
            endpoint_url: None,
            sqs_client: SqsClient::default(),
        }
    }
}

fn default_broker_path() -> PathBuf {
    PathBuf::from(".iniesta/broker.db")
}

/// Which broker carries the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// The embedded SQLite broker: no AWS needed.
    #[default]
    Local,
    /// AWS SNS and SQS.
    Aws,
}

impl BrokerConfig {
    /// The section's own shape: the local broker needs its file.
    pub fn problems(&self) -> Vec<Problem> {
        if self.kind == BrokerKind::Local && self.path.as_os_str().is_empty() {
            vec![Problem::new(
                "broker.path",
                "must name the local broker's SQLite file",
            )]
        } else {
            Vec::new()
        }
    }
}
