//! Message size limits and the S3 claim check for larger bodies (`[payloads]`).
//!
//! SQS takes messages up to 1 MiB, SNS up to 256 KiB (body and attributes together). A
//! publish larger than its destination takes — or than `payloads.max_message_bytes` — is
//! refused before any call, unless `payloads.s3_bucket` is set: then the body is stored as an
//! S3 object and the message carries a pointer to it, in the format of the Amazon SQS/SNS
//! Extended Client Libraries ([`crate::wire::pointer`]), so Java and Python extended clients
//! read what we publish and we read what they publish.
//!
//! On receive, a message marked as a claim check is fetched after its lock is taken and
//! before it is routed: routing, schemas and handlers see the stored body. A pointer naming a
//! bucket that is not trusted (`s3_bucket`, `read_buckets`), declaring or holding more than
//! `max_offloaded_bytes`, or whose object is gone is dead-lettered with the reason, never
//! lost and never read; an S3 failure leaves the message for redelivery. With
//! `delete_after_handling` the object is deleted once its message is.

use std::sync::Arc;

use aws_sdk_s3::error::ProvideErrorMetadata as _;
use aws_sdk_s3::primitives::ByteStream;

use crate::config::{Config, PayloadsConfig};
use crate::ops::metrics as m;
use crate::wire::pointer::{self, Pointer};
use crate::wire::{Outgoing, SizeLimit};

/// Where a message is sent, for its size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// An SNS topic (256 KiB).
    Sns,
    /// An SQS queue (1 MiB).
    Sqs,
}

impl Service {
    /// The most bytes the service takes in one message.
    pub const fn max_bytes(self) -> usize {
        match self {
            Service::Sns => crate::wire::MAX_SNS_BYTES,
            Service::Sqs => crate::wire::MAX_SQS_BYTES,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Service::Sns => "SNS",
            Service::Sqs => "SQS",
        }
    }
}

/// The limit a publish to `service` is refused above: the inline limit without a bucket, the
/// largest body S3 may take with one.
pub fn size_limit(payloads: &PayloadsConfig, service: Service) -> SizeLimit {
    if payloads.s3_bucket.is_some() {
        return SizeLimit {
            max_bytes: usize::try_from(payloads.max_offloaded_bytes).unwrap_or(usize::MAX),
            explained: format!(
                "at most {} go through S3 (payloads.max_offloaded_bytes)",
                payloads.max_offloaded_bytes
            ),
        };
    }
    let max_bytes = payloads.inline_limit(service.max_bytes());
    let why = if max_bytes < service.max_bytes() {
        format!("payloads.max_message_bytes is {max_bytes}")
    } else {
        format!("{} accepts at most {max_bytes}", service.name())
    };
    SizeLimit {
        max_bytes,
        explained: format!(
            "{why}; set payloads.s3_bucket to send larger bodies through S3 (a claim check the extended client libraries read)"
        ),
    }
}

/// Why a body could not be stored.
#[derive(Debug, thiserror::Error)]
#[error("cannot store the body of `{event}` ({size} bytes) in s3://{bucket}: {message}")]
pub struct StoreError {
    event: String,
    size: usize,
    bucket: String,
    message: String,
}

/// Why a claim check could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// It never will be: the message is dead-lettered with this reason.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    /// Its object is gone (S3 answered `NoSuchKey` or `NoSuchBucket`): dead-lettered, unless
    /// the message was handled before (its object deleted after handling).
    Gone(String),
    /// S3 failed; a redelivery may succeed.
    #[error("{0}")]
    Unavailable(String),
}

/// How long reading one stored body may take, request and body together.
const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The S3 side of `[payloads]`: stores, fetches and deletes claim-check bodies.
pub struct ClaimCheck {
    s3: aws_sdk_s3::Client,
    config: PayloadsConfig,
}

impl std::fmt::Debug for ClaimCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimCheck")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ClaimCheck {
    /// The claim check of an AWS config that stores or reads S3 bodies; `None` otherwise (no
    /// network call is made).
    pub async fn connect(config: &Config) -> Option<Arc<ClaimCheck>> {
        if config.broker.kind != crate::config::BrokerKind::Aws
            || !config.payloads.reads_claim_checks()
        {
            return None;
        }
        let sdk = crate::broker::aws::sdk_config(config).await;
        // Path-style addressing for a custom endpoint (moto, MinIO, LocalStack): their
        // buckets are not DNS names.
        let s3 = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(config.broker.endpoint_url.is_some())
            .build();
        Some(Arc::new(ClaimCheck {
            s3: aws_sdk_s3::Client::from_conf(s3),
            config: config.payloads.clone(),
        }))
    }

    /// The S3 client (for `setup` and `check`).
    pub fn s3(&self) -> &aws_sdk_s3::Client {
        &self.s3
    }

    /// `message` as it is sent to `service`: unchanged when it fits inline, else (or always,
    /// with `always_through_s3`) its body stored in S3 and replaced by a pointer. Without a
    /// bucket it is returned unchanged (the size was checked when it was encoded).
    pub async fn offload(
        &self,
        mut message: Outgoing,
        service: Service,
    ) -> Result<Outgoing, StoreError> {
        let Some(bucket) = &self.config.s3_bucket else {
            return Ok(message);
        };
        if !self.config.always_through_s3
            && message.size() <= self.config.inline_limit(service.max_bytes())
        {
            return Ok(message);
        }
        if message.attributes.len() >= crate::wire::MAX_ATTRIBUTES {
            return Err(StoreError {
                event: message.event,
                size: message.body.len(),
                bucket: bucket.clone(),
                message: format!(
                    "a claim check adds the `{}` attribute, and the message already has {} (SQS takes at most {})",
                    pointer::SIZE_ATTRIBUTE,
                    message.attributes.len(),
                    crate::wire::MAX_ATTRIBUTES
                ),
            });
        }
        let key = format!("{}{}", self.config.s3_key_prefix, uuid::Uuid::new_v4());
        let size = message.body.len();
        let body = std::mem::take(&mut message.body);
        let stored = self
            .s3
            .put_object()
            .bucket(bucket)
            .key(&key)
            .body(ByteStream::from(body))
            .send()
            .await;
        if let Err(e) = stored {
            metrics::counter!(m::CLAIM_CHECKS, "operation" => "store", "result" => "error")
                .increment(1);
            return Err(StoreError {
                event: message.event,
                size,
                bucket: bucket.clone(),
                message: describe(&e),
            });
        }
        metrics::counter!(m::CLAIM_CHECKS, "operation" => "store", "result" => "ok").increment(1);
        tracing::debug!(event = %message.event, size, bucket = %bucket, key = %key, "body stored in S3; publishing its pointer");
        message.body = pointer::write(bucket, &key, size, &mut message.attributes);
        Ok(message)
    }

    /// The stored body of a received claim check, read whole (at most
    /// `max_offloaded_bytes`).
    pub async fn fetch(&self, pointer: &Pointer) -> Result<Vec<u8>, FetchError> {
        let result = match tokio::time::timeout(FETCH_TIMEOUT, self.read(pointer)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Unavailable(format!(
                "reading s3://{}/{} took over {} s",
                pointer.bucket,
                pointer.key,
                FETCH_TIMEOUT.as_secs()
            ))),
        };
        let label = match &result {
            Ok(_) => "ok",
            Err(FetchError::Refused(_) | FetchError::Gone(_)) => "refused",
            Err(FetchError::Unavailable(_)) => "error",
        };
        metrics::counter!(m::CLAIM_CHECKS, "operation" => "fetch", "result" => label).increment(1);
        result
    }

    async fn read(&self, pointer: &Pointer) -> Result<Vec<u8>, FetchError> {
        let location = format!("s3://{}/{}", pointer.bucket, pointer.key);
        if !self.config.may_read(&pointer.bucket) {
            return Err(FetchError::Refused(format!(
                "the claim check points to {location}, a bucket this host does not read (payloads.s3_bucket, payloads.read_buckets)"
            )));
        }
        if !self.is_own(pointer) && self.config.s3_bucket.as_deref() == Some(&pointer.bucket) {
            return Err(FetchError::Refused(format!(
                "the claim check points to {location}, outside payloads.s3_key_prefix `{}`",
                self.config.s3_key_prefix
            )));
        }
        let max = self.config.max_offloaded_bytes;
        let too_large = |size: u64| {
            FetchError::Refused(format!(
                "the claim check's body at {location} is {size} bytes, over payloads.max_offloaded_bytes ({max})"
            ))
        };
        if pointer.declared_size > max {
            return Err(too_large(pointer.declared_size));
        }
        let object = self
            .s3
            .get_object()
            .bucket(&pointer.bucket)
            .key(&pointer.key)
            .send()
            .await
            .map_err(|e| match e.code() {
                Some("NoSuchKey" | "NoSuchBucket") => FetchError::Gone(format!(
                    "the claim check's body is gone: {location} ({})",
                    describe(&e)
                )),
                _ => FetchError::Unavailable(format!("cannot read {location}: {}", describe(&e))),
            })?;
        let length = object
            .content_length()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0);
        if length > max {
            return Err(too_large(length));
        }
        let mut body = Vec::with_capacity(usize::try_from(length).unwrap_or(0));
        let mut stream = object.body;
        loop {
            match stream.try_next().await {
                Ok(Some(chunk)) => {
                    if u64::try_from(body.len() + chunk.len()).unwrap_or(u64::MAX) > max {
                        return Err(too_large(
                            u64::try_from(body.len() + chunk.len()).unwrap_or(u64::MAX),
                        ));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(e) => {
                    return Err(FetchError::Unavailable(format!(
                        "reading {location} broke off: {e}"
                    )))
                }
            }
        }
    }

    /// Whether handled claim checks' objects are deleted.
    pub fn deletes_after_handling(&self) -> bool {
        self.config.delete_after_handling
    }

    /// Whether an object is in this host's own bucket, under its key prefix: the only objects
    /// it deletes (never another service's `read_buckets`).
    fn is_own(&self, pointer: &Pointer) -> bool {
        self.config.s3_bucket.as_deref() == Some(&pointer.bucket)
            && pointer.key.starts_with(&self.config.s3_key_prefix)
    }

    /// Delete a handled claim check's object (only one of this host's own: `s3_bucket`, under
    /// `s3_key_prefix`; a failure is logged and counted, the object stays).
    pub async fn discard(&self, pointer: &Pointer) {
        if !self.is_own(pointer) {
            return;
        }
        let result = self
            .s3
            .delete_object()
            .bucket(&pointer.bucket)
            .key(&pointer.key)
            .send()
            .await;
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => {
                tracing::warn!(bucket = %pointer.bucket, key = %pointer.key, error = %describe(e),
                    "cannot delete a handled claim check's S3 object; it stays (an S3 lifecycle rule can expire it)");
                "error"
            }
        };
        metrics::counter!(m::CLAIM_CHECKS, "operation" => "delete", "result" => label).increment(1);
    }
}

/// An SDK error with its code and message, for logs and reasons (never credentials: the SDK
/// errors carry none).
fn describe<E, R>(error: &aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match (error.code(), error.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_string(),
        _ => aws_smithy_types::error::display::DisplayErrorContext(error).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_say_what_to_do() {
        let mut payloads = PayloadsConfig::default();
        let sns = size_limit(&payloads, Service::Sns);
        assert_eq!(sns.max_bytes, 262_144);
        assert!(
            sns.explained.contains("SNS accepts at most 262144")
                && sns.explained.contains("payloads.s3_bucket"),
            "{}",
            sns.explained
        );
        assert_eq!(size_limit(&payloads, Service::Sqs).max_bytes, 1_048_576);
        payloads.max_message_bytes = 4096;
        let low = size_limit(&payloads, Service::Sqs);
        assert_eq!(low.max_bytes, 4096);
        assert!(
            low.explained.contains("payloads.max_message_bytes is 4096"),
            "{}",
            low.explained
        );
        payloads.s3_bucket = Some("b-1".into());
        assert_eq!(
            size_limit(&payloads, Service::Sns).max_bytes,
            64 * 1024 * 1024
        );
    }
}
