//! `[payloads]`: how large a message may be, and the S3 claim check for larger ones
//! (used by [`crate::claim_check`]).

use serde::{Deserialize, Serialize};

use super::Problem;
use crate::wire::pointer::valid_bucket_name;
use crate::wire::{MAX_SNS_BYTES, MAX_SQS_BYTES};

/// The smallest `max_message_bytes` accepted: room for a pointer and the attributes.
pub const MIN_MESSAGE_BYTES: usize = 1024;
/// The largest body sent through S3 (the extended clients' own limit: 2 GB).
pub const MAX_OFFLOADED_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// `[payloads]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadsConfig {
    /// The largest message (body and attributes) sent as it is; each destination's own limit
    /// applies too (SQS 1 MiB, SNS 256 KiB). A larger one goes through S3 when `s3_bucket` is
    /// set, else the publish is refused.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// The S3 bucket bodies too large to send are stored in (the claim check of the Amazon
    /// SQS/SNS Extended Client Libraries). Unset: nothing is offloaded, and received claim
    /// checks are handed to handlers as they arrive (the pointer as the body).
    #[serde(default)]
    pub s3_bucket: Option<String>,
    /// Prepended to the keys of stored bodies (`{prefix}{uuid}`).
    #[serde(default)]
    pub s3_key_prefix: String,
    /// Store every published body in S3, whatever its size.
    #[serde(default)]
    pub always_through_s3: bool,
    /// The largest body stored or fetched (bytes); a received claim check declaring more, or
    /// whose object is larger, is dead-lettered instead of read into memory.
    #[serde(default = "default_max_offloaded_bytes")]
    pub max_offloaded_bytes: u64,
    /// Buckets received claim checks may name (default: `s3_bucket` alone). A pointer to any
    /// other bucket is dead-lettered unread: a message cannot make the host read, hand to a
    /// handler, or delete an object of a bucket it was not told to trust.
    #[serde(default)]
    pub read_buckets: Vec<String>,
    /// Delete a claim check's S3 object once its message was handled and deleted. Off by
    /// default: with SNS fan-out every subscribed queue receives the same pointer, and the
    /// first consumer to finish would take the body from the others (expire objects with an
    /// S3 lifecycle rule instead). Dead-lettered messages always keep their object.
    #[serde(default)]
    pub delete_after_handling: bool,
}

impl Default for PayloadsConfig {
    fn default() -> Self {
        PayloadsConfig {
            max_message_bytes: default_max_message_bytes(),
            s3_bucket: None,
            s3_key_prefix: String::new(),
            always_through_s3: false,
            max_offloaded_bytes: default_max_offloaded_bytes(),
            read_buckets: Vec::new(),
            delete_after_handling: false,
        }
    }
}

fn default_max_message_bytes() -> usize {
    MAX_SQS_BYTES
}

fn default_max_offloaded_bytes() -> u64 {
    64 * 1024 * 1024
}

impl PayloadsConfig {
    /// Whether received claim checks are fetched (some bucket is trusted).
    pub fn reads_claim_checks(&self) -> bool {
        self.s3_bucket.is_some() || !self.read_buckets.is_empty()
    }

    /// Whether `bucket` may be read for a received claim check.
    pub fn may_read(&self, bucket: &str) -> bool {
        self.s3_bucket.as_deref() == Some(bucket) || self.read_buckets.iter().any(|b| b == bucket)
    }

    /// The largest message sent as it is to a destination that accepts `destination_max`.
    pub fn inline_limit(&self, destination_max: usize) -> usize {
        self.max_message_bytes.min(destination_max)
    }

    /// The section's own shape.
    pub fn problems(&self, aws: bool) -> Vec<Problem> {
        let mut problems = Vec::new();
        if !(MIN_MESSAGE_BYTES..=MAX_SQS_BYTES).contains(&self.max_message_bytes) {
            problems.push(Problem::new(
                "payloads.max_message_bytes",
                format!(
                    "{} is out of range: give {MIN_MESSAGE_BYTES} to {MAX_SQS_BYTES} (1 MiB, SQS's limit; SNS takes at most {MAX_SNS_BYTES} whatever this says)",
                    self.max_message_bytes
                ),
            ));
        }
        if !(1..=MAX_OFFLOADED_BYTES).contains(&self.max_offloaded_bytes) {
            problems.push(Problem::new(
                "payloads.max_offloaded_bytes",
                format!(
                    "{} is out of range: give 1 to {MAX_OFFLOADED_BYTES} (2 GiB, the extended clients' limit)",
                    self.max_offloaded_bytes
                ),
            ));
        }
        let buckets = self
            .s3_bucket
            .iter()
            .map(|b| ("payloads.s3_bucket".to_string(), b))
            .chain(
                self.read_buckets
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (format!("payloads.read_buckets[{i}]"), b)),
            );
        for (key, bucket) in buckets {
            if !valid_bucket_name(bucket) {
                problems.push(Problem::new(
                    key,
                    format!("`{bucket}` is not an S3 bucket name (3 to 63 lowercase letters, digits, dots and hyphens; older buckets may have up to 255 with capitals and underscores)"),
                ));
            }
        }
        if self.s3_key_prefix.len() > 512 {
            problems.push(Problem::new(
                "payloads.s3_key_prefix",
                "is over 512 bytes (S3 keys hold at most 1024)",
            ));
        }
        if self.s3_bucket.is_none() {
            for (flag, key) in [
                (self.always_through_s3, "payloads.always_through_s3"),
                (self.delete_after_handling, "payloads.delete_after_handling"),
            ] {
                if flag {
                    problems.push(Problem::new(key, "needs payloads.s3_bucket"));
                }
            }
        }
        if self.reads_claim_checks() && !aws {
            problems.push(Problem::new(
                "payloads.s3_bucket",
                "S3 claim checks need broker.kind = \"aws\" (the local broker takes messages of any size up to max_message_bytes)",
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_problems() {
        let p = PayloadsConfig::default();
        assert!(p.problems(false).is_empty());
        assert_eq!(p.inline_limit(MAX_SNS_BYTES), MAX_SNS_BYTES);
        assert_eq!(p.inline_limit(MAX_SQS_BYTES), MAX_SQS_BYTES);
        assert!(!p.reads_claim_checks());

        let p = PayloadsConfig {
            s3_bucket: Some("payloads".into()),
            read_buckets: vec!["partner-payloads".into()],
            max_message_bytes: 4096,
            ..PayloadsConfig::default()
        };
        assert!(p.problems(true).is_empty());
        assert!(p.may_read("payloads") && p.may_read("partner-payloads") && !p.may_read("other"));
        assert_eq!(p.inline_limit(MAX_SNS_BYTES), 4096);
        let keys = |p: &PayloadsConfig, aws| {
            p.problems(aws)
                .into_iter()
                .map(|p| p.key)
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&p, false), ["payloads.s3_bucket"]);

        let bad = PayloadsConfig {
            max_message_bytes: MAX_SQS_BYTES + 1,
            max_offloaded_bytes: 0,
            s3_bucket: None,
            read_buckets: vec!["a/b".into()],
            always_through_s3: true,
            delete_after_handling: true,
            s3_key_prefix: "x".repeat(513),
        };
        assert_eq!(
            keys(&bad, true),
            [
                "payloads.max_message_bytes",
                "payloads.max_offloaded_bytes",
                "payloads.read_buckets[0]",
                "payloads.s3_key_prefix",
                "payloads.always_through_s3",
                "payloads.delete_after_handling",
            ]
        );
    }
}
