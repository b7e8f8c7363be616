//! AWS SNS + SQS through the official SDK.
//!
//! Publishing is an SNS `Publish` of the body as `Message` with String/Number/Binary message
//! attributes; consuming is SQS long polling with all message and system attributes, batched
//! deletes, visibility changes, and dead letters sent to the configured DLQ then deleted.
//! Credentials and region come from the standard AWS chain (environment, profile, instance
//! role) with `broker.region` / `broker.endpoint_url` overrides. Credentials are never logged.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry,
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName,
};
use base64::Engine as _;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

pub use super::codes::{is_retryable_code, is_stale_receipt};
use super::fifo::{is_fifo, FifoSettings};
use super::sqs_http::SqsHttp;
use super::{Broker, BrokerError, DeleteFailure, QueueDepth, Received, Target};
use crate::config::{Config, SqsClient};
use crate::wire::{Attribute, Attributes, Outgoing};

/// The attribute a dead letter carries its reason in.
pub const DEAD_LETTER_REASON: &str = "iniesta_dead_letter_reason";

/// The attribute a dead letter iniesta moved carries its origin in: the original message id,
/// its deliveries before it was dead-lettered and when it was first sent (ms since the Unix
/// epoch), space-separated. The copy in the DLQ is a new SQS message with a new id and a
/// receive count of its own, so without this `dlq list` could not show them.
pub const DEAD_LETTER_ORIGIN: &str = "iniesta_dead_letter_origin";

/// A dead letter's origin (see [`DEAD_LETTER_ORIGIN`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterOrigin {
    /// The message id on the main queue.
    pub message_id: String,
    /// Deliveries before it was dead-lettered.
    pub receive_count: u32,
    /// When it was first sent to the main queue (ms since the Unix epoch).
    pub sent_ms: u64,
}

impl DeadLetterOrigin {
    /// The attribute's value.
    pub fn encode(&self) -> String {
        format!(
            "{} {} {}",
            self.message_id, self.receive_count, self.sent_ms
        )
    }

    /// Read an attribute's value; `None` if it is not one.
    pub fn decode(value: &str) -> Option<DeadLetterOrigin> {
        let mut parts = value.split(' ');
        let (Some(id), Some(count), Some(sent), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        Some(DeadLetterOrigin {
            message_id: id.to_string(),
            receive_count: count.parse().ok()?,
            sent_ms: sent.parse().ok()?,
        })
    }
}

/// SNS and SQS clients bound to one service's topic and queues.
pub struct AwsBroker {
    sns: aws_sdk_sns::Client,
    sqs: aws_sdk_sqs::Client,
    topic_arn: Option<String>,
    queue: String,
    dead_letter_queue: Option<String>,
    queue_url: OnceCell<String>,
    dead_letter_url: OnceCell<String>,
    endpoint: String,
    fifo: FifoSettings,
    /// The lean client of the per-message SQS calls (`broker.sqs_client = "lean"`); `None`:
    /// the SDK makes them.
    lean: Option<SqsHttp>,
}

/// Load the SDK configuration for a config: standard chain plus overrides, with timeouts that
/// outlast a long poll so a dead endpoint is noticed instead of hanging.
pub async fn sdk_config(config: &Config) -> aws_config::SdkConfig {
    let wait = u64::from(config.sqs.wait_time_seconds);
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(wait + 10))
        .operation_timeout(Duration::from_secs(wait + 30))
        .build();
    let mut loader =
        aws_config::defaults(aws_config::BehaviorVersion::latest()).timeout_config(timeouts);
    if let Some(region) = &config.broker.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(endpoint) = &config.broker.endpoint_url {
        loader = loader.endpoint_url(endpoint.clone());
    }
    loader.load().await
}

/// Await a long poll to its end even when `cancel` fires: SQS may already have taken messages
/// for it, and dropping the request would strand them, invisible, until their visibility
/// timeout. What it brought is handed back for the caller to give back at once.
async fn unrecalled<F: std::future::Future>(
    request: F,
    cancel: &CancellationToken,
    wait: Duration,
) -> F::Output {
    tokio::pin!(request);
    tokio::select! {
        biased;
        out = &mut request => out,
        _ = cancel.cancelled() => {
            tracing::debug!(wait_secs = wait.as_secs(), "stopping: waiting for the pending long poll's answer so nothing it took is stranded");
            request.await
        }
    }
}

/// Map an SDK error to a broker error, keeping its context and whether a retry may help.
pub fn sdk_error<E, R>(operation: &'static str, error: SdkError<E, R>) -> BrokerError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let retryable = match &error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(service) => is_retryable_code(service.err().code().unwrap_or("")),
        _ => false,
    };
    BrokerError::Aws {
        operation,
        message: DisplayErrorContext(&error).to_string(),
        retryable,
    }
}

/// A batch entry the SDK refused to build (never retryable).
fn invalid_entry(operation: &'static str, error: impl std::fmt::Display) -> BrokerError {
    BrokerError::Aws {
        operation,
        message: error.to_string(),
        retryable: false,
    }
}

/// The failed entries of one batch request of `chunk`'s receipts (entry ids are positions).
fn batch_failures(chunk: &[String], failed: &[BatchResultErrorEntry]) -> Vec<DeleteFailure> {
    failed
        .iter()
        .map(|failed| DeleteFailure {
            receipt: failed
                .id()
                .parse::<usize>()
                .ok()
                .and_then(|i| chunk.get(i))
                .cloned()
                .unwrap_or_default(),
            reason: format!("{}: {}", failed.code(), failed.message().unwrap_or("")),
            retryable: !failed.sender_fault(),
            stale: is_stale_receipt(Some(failed.code()), failed.message()),
        })
        .collect()
}

impl AwsBroker {
    /// Build the clients (no network call yet).
    pub async fn connect(config: &Config) -> AwsBroker {
        AwsBroker::with_sdk_config(config, &sdk_config(config).await)
    }

    /// Build the clients from an SDK configuration already loaded (region, credentials,
    /// endpoint); `config` says which queues and topic, and which SQS client.
    pub fn with_sdk_config(config: &Config, sdk: &aws_config::SdkConfig) -> AwsBroker {
        let lean = match config.broker.sqs_client {
            SqsClient::Sdk => None,
            SqsClient::Lean => match SqsHttp::new(
                sdk,
                config.broker.endpoint_url.as_deref(),
                Duration::from_secs(10),
            ) {
                Ok(lean) => Some(lean),
                Err(e) => {
                    tracing::warn!(error = %e, "the lean SQS client cannot start; the SDK receives and deletes instead");
                    None
                }
            },
        };
        AwsBroker {
            sns: aws_sdk_sns::Client::new(sdk),
            sqs: aws_sdk_sqs::Client::new(sdk),
            topic_arn: config.sns.topic_arn.clone(),
            queue: config.queue_name(),
            dead_letter_queue: config.sqs.dead_letter_queue.clone(),
            queue_url: OnceCell::new(),
            dead_letter_url: OnceCell::new(),
            endpoint: config
                .broker
                .endpoint_url
                .clone()
                .unwrap_or_else(|| "the AWS default endpoint".into()),
            fifo: FifoSettings::from_config(config),
            lean,
        }
    }

    /// The SNS client.
    pub fn sns(&self) -> &aws_sdk_sns::Client {
        &self.sns
    }

    /// The SQS client.
    pub fn sqs(&self) -> &aws_sdk_sqs::Client {
        &self.sqs
    }

    /// The URL of a queue by name; `NoSuchQueue` names it when it does not exist.
    pub async fn url_of(&self, queue: &str) -> Result<String, BrokerError> {
        match self.sqs.get_queue_url().queue_name(queue).send().await {
            Ok(out) => out
                .queue_url()
                .map(str::to_string)
                .ok_or_else(|| BrokerError::NoSuchQueue(queue.to_string())),
            Err(e)
                if e.as_service_error()
                    .map(|s| s.is_queue_does_not_exist())
                    .unwrap_or(false) =>
            {
                Err(BrokerError::NoSuchQueue(queue.to_string()))
            }
            Err(e) => Err(sdk_error("GetQueueUrl", e)),
        }
    }

    /// This service's queue URL (resolved once).
    pub async fn queue_url(&self) -> Result<&str, BrokerError> {
        self.queue_url
            .get_or_try_init(|| self.url_of(&self.queue))
            .await
            .map(String::as_str)
    }

    async fn dead_letter_url(&self) -> Result<&str, BrokerError> {
        let Some(dlq) = &self.dead_letter_queue else {
            return Err(BrokerError::NoDeadLetterQueue);
        };
        self.dead_letter_url
            .get_or_try_init(|| self.url_of(dlq))
            .await
            .map(String::as_str)
    }

    async fn send_to_url(&self, url: &str, message: &Outgoing) -> Result<String, BrokerError> {
        self.send_to_url_in_group(url, message, None, None).await
    }

    /// One SNS `PublishBatch` of at most 10 messages (the caller keeps within the limits).
    async fn publish_batch_to_topic(
        &self,
        messages: &[Outgoing],
    ) -> Result<Vec<Result<String, BrokerError>>, BrokerError> {
        use aws_sdk_sns::types::PublishBatchRequestEntry;
        let topic = self.topic_arn.as_deref().ok_or(BrokerError::NoTopic)?;
        let fifo = is_fifo(topic);
        let (entries, refused) = batch_entries(messages, |i, message| {
            let mut entry = PublishBatchRequestEntry::builder()
                .id(i.to_string())
                .message(body_text(message)?);
            for (name, attribute) in &message.attributes {
                entry = entry.message_attributes(name, sns_attribute(name, attribute)?);
            }
            if fifo {
                entry = entry
                    .message_group_id(self.fifo.group_of(message))
                    .message_deduplication_id(self.fifo.deduplication_id_of(message));
            } else if let Some(tenant) = self.fifo.fair_group_of(message) {
                entry = entry.message_group_id(tenant);
            }
            entry.build().map_err(|e| invalid_entry("PublishBatch", e))
        });
        if entries.is_empty() {
            return Ok(entry_results(
                "PublishBatch",
                messages.len(),
                refused,
                [],
                [],
            ));
        }
        let request = self
            .sns
            .publish_batch()
            .topic_arn(topic)
            .set_publish_batch_request_entries(Some(entries));
        let out = match request.send().await {
            Ok(out) => out,
            Err(e)
                if e.as_service_error()
                    .map(|s| s.is_not_found_exception())
                    .unwrap_or(false) =>
            {
                return Err(BrokerError::NoSuchTopic(topic.to_string()))
            }
            Err(e) => return Err(sdk_error("PublishBatch", e)),
        };
        Ok(entry_results(
            "PublishBatch",
            messages.len(),
            refused,
            out.successful().iter().map(|s| {
                (
                    s.id().unwrap_or_default().to_string(),
                    s.message_id().unwrap_or_default().to_string(),
                )
            }),
            out.failed().iter().map(|f| {
                (
                    f.id().to_string(),
                    format!("{}: {}", f.code(), f.message().unwrap_or("")),
                    f.sender_fault(),
                )
            }),
        ))
    }

    /// One SQS `SendMessageBatch` of at most 10 messages (the caller keeps within the limits);
    /// on a FIFO queue each entry's group and deduplication ids are its own when given, else
    /// the configured rules'. Within one call SQS keeps a group's entries in their order.
    pub(crate) async fn send_batch_to_url(
        &self,
        url: &str,
        messages: &[ToQueue<'_>],
    ) -> Result<Vec<Result<String, BrokerError>>, BrokerError> {
        use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
        let fifo = is_fifo(url);
        let (entries, refused) = batch_entries(messages, |i, to| {
            let message = to.message;
            let mut entry = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(body_text(message)?);
            for (name, attribute) in &message.attributes {
                entry = entry.message_attributes(name, sqs_attribute(name, attribute)?);
            }
            if fifo {
                entry = entry
                    .message_group_id(
                        to.group
                            .map(str::to_string)
                            .unwrap_or_else(|| self.fifo.group_of(message)),
                    )
                    .message_deduplication_id(
                        to.deduplication_id
                            .map(str::to_string)
                            .unwrap_or_else(|| self.fifo.deduplication_id_of(message)),
                    );
            } else if let Some(tenant) = self.fifo.fair_group_of(message) {
                entry = entry.message_group_id(tenant);
            }
            entry
                .build()
                .map_err(|e| invalid_entry("SendMessageBatch", e))
        });
        if entries.is_empty() {
            return Ok(entry_results(
                "SendMessageBatch",
                messages.len(),
                refused,
                [],
                [],
            ));
        }
        let request = self
            .sqs
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries));
        let out = request.send().await.map_err(|e| {
            if e.as_service_error()
                .map(|s| s.is_queue_does_not_exist())
                .unwrap_or(false)
            {
                BrokerError::NoSuchQueue(url.rsplit('/').next().unwrap_or(url).to_string())
            } else {
                sdk_error("SendMessageBatch", e)
            }
        })?;
        Ok(entry_results(
            "SendMessageBatch",
            messages.len(),
            refused,
            out.successful()
                .iter()
                .map(|s| (s.id().to_string(), s.message_id().to_string())),
            out.failed().iter().map(|f| {
                (
                    f.id().to_string(),
                    format!("{}: {}", f.code(), f.message().unwrap_or("")),
                    f.sender_fault(),
                )
            }),
        ))
    }

    /// Send to a queue; a FIFO queue gets a group id (`group`, else the configured rule) and a
    /// deduplication id (`deduplication_id`, else the configured rule).
    pub(crate) async fn send_to_url_in_group(
        &self,
        url: &str,
        message: &Outgoing,
        group: Option<&str>,
        deduplication_id: Option<&str>,
    ) -> Result<String, BrokerError> {
        let body = body_text(message)?;
        let mut request = self.sqs.send_message().queue_url(url).message_body(body);
        for (name, attribute) in &message.attributes {
            request = request.message_attributes(name, sqs_attribute(name, attribute)?);
        }
        if is_fifo(url) {
            let group = group
                .map(str::to_string)
                .unwrap_or_else(|| self.fifo.group_of(message));
            request = request.message_group_id(group).message_deduplication_id(
                deduplication_id
                    .map(str::to_string)
                    .unwrap_or_else(|| self.fifo.deduplication_id_of(message)),
            );
        } else if let Some(tenant) = self.fifo.fair_group_of(message) {
            request = request.message_group_id(tenant);
        }
        let out = request
            .send()
            .await
            .map_err(|e| sdk_error("SendMessage", e))?;
        Ok(out.message_id().unwrap_or_default().to_string())
    }
}

impl AwsBroker {
    /// Delete `receipts` from the queue at `url` in `DeleteMessageBatch` calls of ten; returns
    /// the entries SQS refused (the own queue's deletes and the DLQ's redrive and purge).
    pub(crate) async fn delete_batch_at(
        &self,
        url: &str,
        receipts: &[String],
    ) -> Result<Vec<DeleteFailure>, BrokerError> {
        let mut failures = Vec::new();
        for chunk in receipts.chunks(10) {
            let mut request = self.sqs.delete_message_batch().queue_url(url);
            for (i, receipt) in chunk.iter().enumerate() {
                let entry = DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .build()
                    .map_err(|e| invalid_entry("DeleteMessageBatch", e))?;
                request = request.entries(entry);
            }
            let out = request
                .send()
                .await
                .map_err(|e| sdk_error("DeleteMessageBatch", e))?;
            failures.extend(batch_failures(chunk, out.failed()));
        }
        Ok(failures)
    }
}

/// A message for a queue, with the FIFO group and deduplication ids to send it with (`None`:
/// the configured rules decide).
pub(crate) struct ToQueue<'a> {
    /// The message.
    pub message: &'a Outgoing,
    /// Its `MessageGroupId` on a FIFO queue.
    pub group: Option<&'a str>,
    /// Its `MessageDeduplicationId` on a FIFO queue.
    pub deduplication_id: Option<&'a str>,
}

impl<'a> ToQueue<'a> {
    /// `message`, grouped and deduplicated by the configured rules.
    pub(crate) fn by_rules(message: &'a Outgoing) -> ToQueue<'a> {
        ToQueue {
            message,
            group: None,
            deduplication_id: None,
        }
    }
}

/// A batch call's entries, built by `build` from each message and its position (the entry
/// id), and the positions whose entry could not be built, with why.
fn batch_entries<T, E>(
    messages: &[T],
    mut build: impl FnMut(usize, &T) -> Result<E, BrokerError>,
) -> (Vec<E>, HashMap<usize, BrokerError>) {
    let mut entries = Vec::with_capacity(messages.len());
    let mut refused = HashMap::new();
    for (i, message) in messages.iter().enumerate() {
        match build(i, message) {
            Ok(entry) => entries.push(entry),
            Err(e) => {
                refused.insert(i, e);
            }
        }
    }
    (entries, refused)
}

/// The per-entry answer of a batch publish: for each of `count` entries, its message id, the
/// failure the service reported for it, or the error that kept it out of the request. Entry
/// ids are positions. An entry the answer does not mention is reported as a retryable
/// failure (the service did not say it took it).
fn entry_results(
    operation: &'static str,
    count: usize,
    mut refused: HashMap<usize, BrokerError>,
    successful: impl IntoIterator<Item = (String, String)>,
    failed: impl IntoIterator<Item = (String, String, bool)>,
) -> Vec<Result<String, BrokerError>> {
    let mut results: Vec<Option<Result<String, BrokerError>>> = (0..count).map(|_| None).collect();
    for (index, error) in refused.drain() {
        if let Some(slot) = results.get_mut(index) {
            *slot = Some(Err(error));
        }
    }
    for (id, message_id) in successful {
        if let Some(slot) = id.parse::<usize>().ok().and_then(|i| results.get_mut(i)) {
            *slot = Some(Ok(message_id));
        }
    }
    for (id, message, sender_fault) in failed {
        if let Some(slot) = id.parse::<usize>().ok().and_then(|i| results.get_mut(i)) {
            *slot = Some(Err(BrokerError::Aws {
                operation,
                message,
                retryable: !sender_fault,
            }));
        }
    }
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(BrokerError::Aws {
                    operation,
                    message: "the answer does not mention this entry".into(),
                    retryable: true,
                })
            })
        })
        .collect()
}

fn body_text(message: &Outgoing) -> Result<String, BrokerError> {
    String::from_utf8(message.body.clone()).map_err(|_| BrokerError::Aws {
        operation: "Publish",
        message: format!(
            "the body of `{}` is not UTF-8 text; SNS and SQS carry text (base64-encode binary payloads)",
            message.event
        ),
        retryable: false,
    })
}

fn bad_attribute(name: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Aws {
        operation: "Publish",
        message: format!("attribute `{name}`: {e}"),
        retryable: false,
    }
}

fn decode_binary(name: &str, value: &str) -> Result<Vec<u8>, BrokerError> {
    base64::engine::general_purpose::STANDARD
        .decode(value)
        .map_err(|e| bad_attribute(name, format!("Binary values are base64: {e}")))
}

fn sqs_attribute(
    name: &str,
    attribute: &Attribute,
) -> Result<aws_sdk_sqs::types::MessageAttributeValue, BrokerError> {
    let mut builder =
        aws_sdk_sqs::types::MessageAttributeValue::builder().data_type(&attribute.data_type);
    builder = if attribute.base_type() == "Binary" {
        builder.binary_value(aws_sdk_sqs::primitives::Blob::new(decode_binary(
            name,
            &attribute.value,
        )?))
    } else {
        builder.string_value(&attribute.value)
    };
    builder.build().map_err(|e| bad_attribute(name, e))
}

fn sns_attribute(
    name: &str,
    attribute: &Attribute,
) -> Result<aws_sdk_sns::types::MessageAttributeValue, BrokerError> {
    let mut builder =
        aws_sdk_sns::types::MessageAttributeValue::builder().data_type(&attribute.data_type);
    builder = if attribute.base_type() == "Binary" {
        builder.binary_value(aws_sdk_sns::primitives::Blob::new(decode_binary(
            name,
            &attribute.value,
        )?))
    } else {
        builder.string_value(&attribute.value)
    };
    builder.build().map_err(|e| bad_attribute(name, e))
}

pub(crate) fn from_sqs_attributes(
    attributes: Option<&HashMap<String, aws_sdk_sqs::types::MessageAttributeValue>>,
) -> Attributes {
    let mut out = Attributes::new();
    for (name, value) in attributes.into_iter().flatten() {
        let text = match (value.string_value(), value.binary_value()) {
            (Some(s), _) => s.to_string(),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD.encode(b.as_ref()),
            (None, None) => String::new(),
        };
        out.insert(
            name.clone(),
            Attribute {
                data_type: value.data_type().to_string(),
                value: text,
            },
        );
    }
    out
}

#[async_trait]
impl Broker for AwsBroker {
    async fn publish(&self, message: &Outgoing) -> Result<String, BrokerError> {
        let topic = self.topic_arn.as_deref().ok_or(BrokerError::NoTopic)?;
        let mut request = self
            .sns
            .publish()
            .topic_arn(topic)
            .message(body_text(message)?);
        for (name, attribute) in &message.attributes {
            request = request.message_attributes(name, sns_attribute(name, attribute)?);
        }
        if is_fifo(topic) {
            request = request
                .message_group_id(self.fifo.group_of(message))
                .message_deduplication_id(self.fifo.deduplication_id_of(message));
        } else if let Some(tenant) = self.fifo.fair_group_of(message) {
            request = request.message_group_id(tenant);
        }
        match request.send().await {
            Ok(out) => Ok(out.message_id().unwrap_or_default().to_string()),
            Err(e)
                if e.as_service_error()
                    .map(|s| s.is_not_found_exception())
                    .unwrap_or(false) =>
            {
                Err(BrokerError::NoSuchTopic(topic.to_string()))
            }
            Err(e) => Err(sdk_error("Publish", e)),
        }
    }

    async fn publish_batch(
        &self,
        target: &Target,
        messages: &[Outgoing],
    ) -> Result<Vec<Result<String, BrokerError>>, BrokerError> {
        match target {
            Target::Topic => self.publish_batch_to_topic(messages).await,
            Target::Queue(queue) => {
                let url = match queue {
                    None => self.queue_url().await?.to_string(),
                    Some(name) => self.url_of(name).await?,
                };
                let messages: Vec<ToQueue<'_>> = messages.iter().map(ToQueue::by_rules).collect();
                self.send_batch_to_url(&url, &messages).await
            }
        }
    }

    async fn send_to_queue(
        &self,
        queue: Option<&str>,
        message: &Outgoing,
    ) -> Result<String, BrokerError> {
        match queue {
            None => {
                let url = self.queue_url().await?.to_string();
                self.send_to_url(&url, message).await
            }
            Some(name) => {
                let url = self.url_of(name).await?;
                self.send_to_url(&url, message).await
            }
        }
    }

    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> Result<Vec<Received>, BrokerError> {
        if let Some(lean) = &self.lean {
            let url = self.queue_url().await?;
            let wait_secs = u32::try_from(wait.as_secs().min(20)).unwrap_or(20);
            let request = lean.receive(url, max, wait_secs, is_fifo(&self.queue));
            return unrecalled(request, cancel, wait).await;
        }
        let url = self.queue_url().await?.to_string();
        let request = self
            .sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(i32::try_from(max.clamp(1, 10)).unwrap_or(10))
            .wait_time_seconds(i32::try_from(wait.as_secs().min(20)).unwrap_or(20))
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send();
        let out = unrecalled(request, cancel, wait).await.map_err(|e| {
            if e.as_service_error()
                .map(|s| s.is_queue_does_not_exist())
                .unwrap_or(false)
            {
                BrokerError::NoSuchQueue(self.queue.clone())
            } else {
                sdk_error("ReceiveMessage", e)
            }
        })?;
        let mut received = Vec::new();
        for message in out.messages() {
            let (Some(id), Some(receipt)) = (message.message_id(), message.receipt_handle()) else {
                tracing::warn!("SQS returned a message without id or receipt handle; skipping it");
                continue;
            };
            let system = message.attributes();
            let system_value = |name: MessageSystemAttributeName| {
                system
                    .and_then(|a| a.get(&name))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            received.push(Received {
                message_id: id.to_string(),
                receipt: receipt.to_string(),
                body: message.body().unwrap_or_default().as_bytes().to_vec(),
                attributes: from_sqs_attributes(message.message_attributes()),
                receive_count: system_value(MessageSystemAttributeName::ApproximateReceiveCount)
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(1),
                sent_timestamp_ms: system_value(MessageSystemAttributeName::SentTimestamp)
                    .unwrap_or(0),
                // Only FIFO queues order by group (a standard queue may carry group ids
                // for fairness, which do not ask for order).
                group_id: system
                    .filter(|_| is_fifo(&self.queue))
                    .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                    .cloned(),
                aws_trace_header: system
                    .and_then(|a| a.get(&MessageSystemAttributeName::AwsTraceHeader))
                    .cloned(),
            });
        }
        Ok(received)
    }

    async fn delete_batch(&self, receipts: &[String]) -> Result<Vec<DeleteFailure>, BrokerError> {
        let url = self.queue_url().await?;
        if let Some(lean) = &self.lean {
            return lean.delete_batch(url, receipts).await;
        }
        self.delete_batch_at(url, receipts).await
    }

    async fn change_visibility(&self, receipt: &str, secs: u32) -> Result<(), BrokerError> {
        let url = self.queue_url().await?.to_string();
        self.sqs
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt)
            .visibility_timeout(i32::try_from(secs.min(43_200)).unwrap_or(43_200))
            .send()
            .await
            .map_err(|e| {
                if is_stale_receipt(e.code(), e.message()) {
                    BrokerError::StaleReceipt
                } else {
                    sdk_error("ChangeMessageVisibility", e)
                }
            })?;
        Ok(())
    }

    async fn change_visibility_batch(
        &self,
        receipts: &[String],
        secs: u32,
    ) -> Result<Vec<DeleteFailure>, BrokerError> {
        let url = self.queue_url().await?;
        if let Some(lean) = &self.lean {
            return lean.change_visibility_batch(url, receipts, secs).await;
        }
        let secs = i32::try_from(secs.min(43_200)).unwrap_or(43_200);
        let mut failures = Vec::new();
        for chunk in receipts.chunks(10) {
            let mut request = self.sqs.change_message_visibility_batch().queue_url(url);
            for (i, receipt) in chunk.iter().enumerate() {
                let entry = ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .visibility_timeout(secs)
                    .build()
                    .map_err(|e| invalid_entry("ChangeMessageVisibilityBatch", e))?;
                request = request.entries(entry);
            }
            let out = request
                .send()
                .await
                .map_err(|e| sdk_error("ChangeMessageVisibilityBatch", e))?;
            failures.extend(batch_failures(chunk, out.failed()));
        }
        Ok(failures)
    }

    async fn dead_letter(&self, message: &Received, reason: &str) -> Result<(), BrokerError> {
        let dlq = self.dead_letter_url().await?.to_string();
        let mut attributes = message.attributes.clone();
        // SQS allows 10 message attributes; keep the reason and the origin when there is room.
        let origin = DeadLetterOrigin {
            message_id: message.message_id.clone(),
            receive_count: message.receive_count,
            sent_ms: message.sent_timestamp_ms,
        };
        for (name, value) in [
            (DEAD_LETTER_REASON, reason.to_string()),
            (DEAD_LETTER_ORIGIN, origin.encode()),
        ] {
            if attributes.len() < 10 {
                attributes.insert(name.into(), Attribute::string(&value));
            } else {
                tracing::warn!(message_id = %message.message_id, attribute = name, "no room for this dead-letter attribute (10 attributes already)");
            }
        }
        let outgoing = Outgoing {
            event: message.message_id.clone(),
            body: message.body.clone(),
            attributes,
        };
        // A FIFO dead-letter queue keeps the message's group.
        self.send_to_url_in_group(&dlq, &outgoing, message.group_id.as_deref(), None)
            .await?;
        // Only after the copy is safely in the DLQ is the original deleted.
        let url = self.queue_url().await?.to_string();
        self.sqs
            .delete_message()
            .queue_url(url)
            .receipt_handle(&message.receipt)
            .send()
            .await
            .map_err(|e| sdk_error("DeleteMessage", e))?;
        Ok(())
    }

    async fn depth(&self, queue: Option<&str>) -> Result<QueueDepth, BrokerError> {
        use aws_sdk_sqs::types::QueueAttributeName as Name;
        let url = match queue {
            None => self.queue_url().await?.to_string(),
            Some(name) => self.url_of(name).await?,
        };
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(Name::ApproximateNumberOfMessages)
            .attribute_names(Name::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(Name::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| sdk_error("GetQueueAttributes", e))?;
        let count = |name: Name| {
            out.attributes()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(QueueDepth {
            visible: count(Name::ApproximateNumberOfMessages),
            in_flight: count(Name::ApproximateNumberOfMessagesNotVisible),
            delayed: count(Name::ApproximateNumberOfMessagesDelayed),
        })
    }

    fn describe(&self) -> String {
        format!(
            "AWS SNS/SQS at {} (queue {}, topic {})",
            self.endpoint,
            self.queue,
            self.topic_arn.as_deref().unwrap_or("none")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_origins_round_trip_and_other_values_are_not_origins() {
        let origin = DeadLetterOrigin {
            message_id: "5fea7756-0ea4-451a-a703-a558b933e274".into(),
            receive_count: 3,
            sent_ms: 1_764_000_000_123,
        };
        assert_eq!(DeadLetterOrigin::decode(&origin.encode()), Some(origin));
        for bad in ["", "id", "id 3", "id x 5", "id 3 5 extra", "id -1 5"] {
            assert_eq!(DeadLetterOrigin::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn stale_receipts_are_recognised_and_nothing_else() {
        assert!(is_stale_receipt(Some("ReceiptHandleIsInvalid"), None));
        assert!(is_stale_receipt(
            Some("AWS.SimpleQueueService.MessageNotInflight"),
            Some("Message not inflight")
        ));
        // What SQS answers for a deleted message or an expired receipt.
        assert!(is_stale_receipt(
            Some("InvalidParameterValue"),
            Some("Value abc for parameter ReceiptHandle is invalid. Reason: Message does not exist or is not available for visibility timeout change.")
        ));
        assert!(is_stale_receipt(
            Some("InvalidParameterValue"),
            Some("Value abc for parameter ReceiptHandle is invalid. Reason: The receipt handle has expired.")
        ));
        assert!(!is_stale_receipt(
            Some("InvalidParameterValue"),
            Some("Value 50000 for parameter VisibilityTimeout is invalid.")
        ));
        assert!(!is_stale_receipt(Some("ServiceUnavailable"), None));
        assert!(!is_stale_receipt(None, None));
    }
}
