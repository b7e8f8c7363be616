//! The lean SQS client: the three calls made for every message — `ReceiveMessage`,
//! `DeleteMessageBatch` and `ChangeMessageVisibilityBatch` — over the SQS JSON protocol
//! (AWS JSON 1.0: `POST /` with `X-Amz-Target: AmazonSQS.<Operation>`), signed with SigV4 by
//! `aws-sigv4`, sent through the host's own HTTP client ([`crate::web`]) and read by a
//! deserializer that borrows from the response where it can.
//!
//! It is what `broker.sqs_client = "lean"` (the default) selects; the AWS SDK still makes
//! every other call (publish, send, dead letters, queue URLs, depths), and makes these three
//! too with `sqs_client = "sdk"`. Region, credentials and endpoint are the SDK's: the same
//! chain resolves the credentials ([`CredentialCache`] keeps and renews them), and the SDK's
//! own endpoint rules pick the endpoint. Requests are signed at SQS's time when the host's
//! clock is more than a minute off. Retries are the callers' (the receive loop and the settle
//! loop back off and try again on any retryable error), so a failing endpoint is reported at
//! once, not after the SDK's three attempts.

use std::borrow::Cow;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use http_body_util::Full;
use hyper::body::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::codes::{is_retryable_code, is_stale_receipt};
use super::{BrokerError, DeleteFailure, Received};
use crate::web::WebClient;
use crate::wire::{Attribute, Attributes};

/// Credentials without an expiry are asked for again after this long (the SDK's default).
const UNDATED_CREDENTIALS_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Credentials with an expiry are renewed this long before it.
const RENEW_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// The SQS calls made per message, without the SDK (see the module docs).
pub struct SqsHttp {
    web: WebClient,
    /// Where requests go: the endpoint the SDK's own resolver gives for this region and
    /// config (FIPS, dual stack, `AWS_ENDPOINT_URL_SQS`, `broker.endpoint_url`); `None` when it
    /// cannot say, and then each queue URL's origin.
    endpoint: Option<hyper::Uri>,
    region: Option<String>,
    credentials: CredentialCache,
    /// How long one call may take (a long poll's wait comes on top for receives).
    attempt_timeout: Duration,
    /// How far SQS's clock is ahead of this host's, in ms, when over a minute (else 0).
    skew_ms: AtomicI64,
}

impl SqsHttp {
    /// A client for the SDK's region and credentials, `endpoint_url` (if any) and calls that
    /// may take `attempt_timeout` (plus the wait, for receives).
    pub fn new(
        sdk: &aws_config::SdkConfig,
        endpoint_url: Option<&str>,
        attempt_timeout: Duration,
    ) -> Result<SqsHttp, BrokerError> {
        let endpoint = resolve_endpoint(sdk, endpoint_url)
            .map_err(|message| BrokerError::Aws {
                operation: "SQS",
                message,
                retryable: false,
            })?
            .map(|url| {
                url.parse::<hyper::Uri>().map_err(|e| BrokerError::Aws {
                    operation: "SQS",
                    message: format!("SQS endpoint `{url}` is not a URL: {e}"),
                    retryable: false,
                })
            })
            .transpose()?;
        // Plain-HTTP endpoints (local emulators) need no TLS; anything else may.
        let https = endpoint
            .as_ref()
            .is_none_or(|uri| uri.scheme_str() != Some("http"));
        let web = WebClient::new(https).map_err(|message| BrokerError::Aws {
            operation: "SQS",
            message,
            retryable: false,
        })?;
        Ok(SqsHttp {
            web,
            endpoint,
            region: sdk.region().map(|r| r.as_ref().to_string()),
            credentials: CredentialCache::new(sdk.credentials_provider()),
            attempt_timeout,
            skew_ms: AtomicI64::new(0),
        })
    }

    /// Receive up to `max` (1–10) messages from the queue at `queue_url`, waiting up to
    /// `wait_secs` (0–20) for the first, with every message and system attribute.
    pub async fn receive(
        &self,
        queue_url: &str,
        max: u32,
        wait_secs: u32,
        fifo: bool,
    ) -> Result<Vec<Received>, BrokerError> {
        let request = ReceiveMessageInput {
            queue_url,
            max_number_of_messages: max.clamp(1, 10),
            wait_time_seconds: wait_secs.min(20),
            message_attribute_names: ["All"],
            message_system_attribute_names: ["All"],
        };
        let body = self
            .call(
                "ReceiveMessage",
                queue_url,
                &request,
                self.attempt_timeout + Duration::from_secs(u64::from(wait_secs.min(20))),
            )
            .await?;
        decode_receive(&body, fifo)
    }

    /// Delete the deliveries `receipts` names, ten per call; the ones SQS refused, with why.
    pub async fn delete_batch(
        &self,
        queue_url: &str,
        receipts: &[String],
    ) -> Result<Vec<DeleteFailure>, BrokerError> {
        self.batches("DeleteMessageBatch", queue_url, receipts, None)
            .await
    }

    /// Make the deliveries `receipts` names visible again after `secs` seconds (at most 12
    /// hours), ten per call; the ones SQS refused, with why.
    pub async fn change_visibility_batch(
        &self,
        queue_url: &str,
        receipts: &[String],
        secs: u32,
    ) -> Result<Vec<DeleteFailure>, BrokerError> {
        self.batches(
            "ChangeMessageVisibilityBatch",
            queue_url,
            receipts,
            Some(secs.min(43_200)),
        )
        .await
    }

    /// `operation` on `receipts`, ten per call (with `visibility_timeout` on each entry when
    /// given); the entries SQS refused, with why.
    async fn batches(
        &self,
        operation: &'static str,
        queue_url: &str,
        receipts: &[String],
        visibility_timeout: Option<u32>,
    ) -> Result<Vec<DeleteFailure>, BrokerError> {
        let mut failures = Vec::new();
        for chunk in receipts.chunks(10) {
            let request = BatchInput {
                queue_url,
                entries: chunk
                    .iter()
                    .enumerate()
                    .map(|(i, receipt)| BatchEntry {
                        id: i,
                        receipt_handle: receipt,
                        visibility_timeout,
                    })
                    .collect(),
            };
            let body = self
                .call(operation, queue_url, &request, self.attempt_timeout)
                .await?;
            failures.extend(decode_batch(operation, &body, chunk)?);
        }
        Ok(failures)
    }

    /// One signed call of `operation` with `input`; the answer's body when it succeeded.
    async fn call(
        &self,
        operation: &'static str,
        queue_url: &str,
        input: &impl Serialize,
        timeout: Duration,
    ) -> Result<Bytes, BrokerError> {
        let request = self.request(operation, queue_url, input).await?;
        let answer = self
            .web
            .post(request, timeout)
            .await
            .map_err(|e| BrokerError::Aws {
                operation,
                message: format!("cannot reach SQS: {e}"),
                retryable: true,
            })?;
        self.note_clock(&answer.headers);
        let Some(body) = answer.body else {
            return Err(BrokerError::Aws {
                operation,
                message: format!(
                    "SQS answered HTTP {} with a body that could not be read whole",
                    answer.status
                ),
                retryable: true,
            });
        };
        if (200..300).contains(&answer.status) {
            return Ok(body);
        }
        let (error, credentials_refused) =
            service_error(operation, queue_url, answer.status, &answer.headers, &body);
        if credentials_refused {
            self.credentials.forget().await;
        }
        Err(error)
    }

    /// Take the server's clock from an answer's `Date`: when it is more than a minute off
    /// this host's, requests are signed at the server's time from then on (SigV4 refuses a
    /// signature more than five minutes off; the SDK corrects the same way).
    fn note_clock(&self, headers: &hyper::HeaderMap) {
        let Some(server) = headers
            .get(hyper::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                aws_smithy_types::DateTime::from_str(
                    v,
                    aws_smithy_types::date_time::Format::HttpDate,
                )
                .ok()
            })
            .and_then(|t| SystemTime::try_from(t).ok())
        else {
            return;
        };
        let now = SystemTime::now();
        let skew_ms = match server.duration_since(now) {
            Ok(ahead) => i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX),
            Err(behind) => -i64::try_from(behind.duration().as_millis()).unwrap_or(i64::MAX),
        };
        let skew_ms = if skew_ms.abs() > 60_000 { skew_ms } else { 0 };
        if self.skew_ms.swap(skew_ms, Ordering::Relaxed) != skew_ms && skew_ms != 0 {
            tracing::warn!(
                skew_ms,
                "this host's clock is off from SQS's; signing at SQS's time"
            );
        }
    }

    /// The time to sign at: this host's clock, corrected by the skew [`Self::note_clock`] saw.
    fn signing_time(&self) -> SystemTime {
        let skew_ms = self.skew_ms.load(Ordering::Relaxed);
        let skew = Duration::from_millis(skew_ms.unsigned_abs());
        let now = SystemTime::now();
        if skew_ms >= 0 {
            now + skew
        } else {
            now.checked_sub(skew).unwrap_or(now)
        }
    }

    /// The signed HTTP request of one call.
    async fn request(
        &self,
        operation: &'static str,
        queue_url: &str,
        input: &impl Serialize,
    ) -> Result<hyper::Request<Full<Bytes>>, BrokerError> {
        let fail = |message: String| BrokerError::Aws {
            operation,
            message,
            retryable: false,
        };
        let body = serde_json::to_vec(input).map_err(|e| fail(e.to_string()))?;
        let uri = match &self.endpoint {
            Some(endpoint) => endpoint.clone(),
            None => origin_of(queue_url).map_err(&fail)?,
        };
        let host = host_header(&uri).ok_or_else(|| fail(format!("no host in `{uri}`")))?;
        let region = self.region.as_deref().ok_or_else(|| {
            fail("no AWS region: set broker.region, AWS_REGION or a profile's region".into())
        })?;
        let credentials = self.credentials.get(operation).await?;
        let target = format!("AmazonSQS.{operation}");
        let mut request = hyper::Request::post(uri)
            .header(hyper::header::HOST, &host)
            .header(hyper::header::CONTENT_TYPE, "application/x-amz-json-1.0")
            .header("x-amz-target", &target)
            .header(hyper::header::USER_AGENT, crate::web::USER_AGENT)
            .body(Full::new(Bytes::new()))
            .map_err(|e| fail(e.to_string()))?;
        let identity = credentials.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name("sqs")
            .time(self.signing_time())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| fail(format!("cannot sign: {e}")))?
            .into();
        let uri = request.uri().to_string();
        let headers = request
            .headers()
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
        let signable = SignableRequest::new("POST", &uri, headers, SignableBody::Bytes(&body))
            .map_err(|e| fail(format!("cannot sign: {e}")))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| fail(format!("cannot sign: {e}")))?
            .into_parts();
        instructions.apply_to_request_http1x(&mut request);
        *request.body_mut() = Full::new(Bytes::from(body));
        Ok(request)
    }
}

/// The SQS endpoint the SDK would call, by its own endpoint rules: `endpoint_url` (the
/// config's override) or the service-specific `AWS_ENDPOINT_URL_SQS` / profile
/// `endpoint_url`, else the global one, else the region's endpoint with the config's FIPS
/// and dual-stack choices. `Ok(None)` without a region (the caller then uses each queue URL's
/// origin, and signing reports the missing region).
fn resolve_endpoint(
    sdk: &aws_config::SdkConfig,
    endpoint_url: Option<&str>,
) -> Result<Option<String>, String> {
    use aws_sdk_sqs::config::endpoint::{DefaultResolver, Params, ResolveEndpoint as _};
    use futures_util::FutureExt as _;
    let from_service_config = || {
        let key = aws_types::service_config::ServiceConfigKey::builder()
            .service_id("SQS")
            .env("AWS_ENDPOINT_URL")
            .profile("endpoint_url")
            .build()
            .ok()?;
        sdk.service_config()?.load_config(key)
    };
    let endpoint = endpoint_url
        .map(str::to_string)
        .or_else(from_service_config)
        .or_else(|| sdk.endpoint_url().map(str::to_string));
    let Some(region) = sdk.region() else {
        return Ok(endpoint);
    };
    let params = Params::builder()
        .region(region.as_ref())
        .use_fips(sdk.use_fips().unwrap_or(false))
        .use_dual_stack(sdk.use_dual_stack().unwrap_or(false))
        .set_endpoint(endpoint)
        .build()
        .map_err(|e| format!("cannot resolve the SQS endpoint: {e}"))?;
    let resolver = DefaultResolver::new();
    match resolver.resolve_endpoint(&params).now_or_never() {
        Some(Ok(resolved)) => Ok(Some(resolved.url().to_string())),
        Some(Err(e)) => Err(format!("cannot resolve the SQS endpoint: {e}")),
        None => Err("cannot resolve the SQS endpoint: the resolver did not answer at once".into()),
    }
}

/// The scheme and authority of a queue URL, as the URI to POST to.
fn origin_of(queue_url: &str) -> Result<hyper::Uri, String> {
    let url = queue_url
        .parse::<hyper::Uri>()
        .map_err(|e| format!("queue URL `{queue_url}` is not a URL: {e}"))?;
    let (Some(scheme), Some(authority)) = (url.scheme(), url.authority()) else {
        return Err(format!("queue URL `{queue_url}` has no scheme or host"));
    };
    hyper::Uri::builder()
        .scheme(scheme.clone())
        .authority(authority.clone())
        .path_and_query("/")
        .build()
        .map_err(|e| format!("queue URL `{queue_url}`: {e}"))
}

/// The `Host` header a URI is sent with (its port only when it is not the scheme's default),
/// set before signing: SigV4 signs it.
fn host_header(uri: &hyper::Uri) -> Option<String> {
    let host = uri.host()?;
    let default_port = match uri.scheme_str() {
        Some("http") => 80,
        _ => 443,
    };
    Some(match uri.port_u16() {
        Some(port) if port != default_port => format!("{host}:{port}"),
        _ => host.to_string(),
    })
}

/// The SDK's credentials, kept until they are due for renewal.
///
/// Renewal starts [`RENEW_BEFORE_EXPIRY`] before they expire (at most every
/// [`RENEW_RETRY`]); a renewal that fails or takes over [`LOAD_TIMEOUT`] keeps the credentials
/// held while they are still valid, so a slow or failing provider (STS, SSO,
/// `credential_process`) costs nothing until they really run out.
struct CredentialCache {
    provider: Option<SharedCredentialsProvider>,
    current: Mutex<Option<Held>>,
}

/// Credentials held, when to renew them and until when they may still be used.
struct Held {
    credentials: Credentials,
    renew_at: Instant,
    valid_until: Option<Instant>,
}

/// How long the provider chain may take for one renewal.
const LOAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How soon a failed (or too short-lived) renewal is tried again.
const RENEW_RETRY: Duration = Duration::from_secs(10);

impl CredentialCache {
    fn new(provider: Option<SharedCredentialsProvider>) -> CredentialCache {
        CredentialCache {
            provider,
            current: Mutex::new(None),
        }
    }

    /// Credentials good for a call now. Concurrent callers wait for one renewal.
    async fn get(&self, operation: &'static str) -> Result<Credentials, BrokerError> {
        let mut current = self.current.lock().await;
        let now = Instant::now();
        if let Some(held) = current.as_ref() {
            if now < held.renew_at {
                return Ok(held.credentials.clone());
            }
        }
        let Some(provider) = &self.provider else {
            return Err(BrokerError::Aws {
                operation,
                message: "no AWS credentials provider is configured".into(),
                retryable: false,
            });
        };
        let loaded = match tokio::time::timeout(LOAD_TIMEOUT, provider.provide_credentials()).await
        {
            Ok(Ok(credentials)) => Ok(credentials),
            Ok(Err(e)) => Err(format!(
                "no AWS credentials: {}",
                aws_sdk_sqs::error::DisplayErrorContext(&e)
            )),
            Err(_) => Err(format!(
                "no AWS credentials: the provider chain took over {} s",
                LOAD_TIMEOUT.as_secs()
            )),
        };
        match loaded {
            Ok(credentials) => {
                let held = Held::of(credentials, Instant::now());
                let credentials = held.credentials.clone();
                *current = Some(held);
                Ok(credentials)
            }
            Err(message) => match current.as_mut() {
                // Still valid: keep using them, try again soon.
                Some(held) if held.valid_until.is_none_or(|until| now < until) => {
                    tracing::warn!(error = %message, "cannot renew the AWS credentials; the ones held are still valid and stay in use");
                    held.renew_at = now + RENEW_RETRY;
                    Ok(held.credentials.clone())
                }
                _ => Err(BrokerError::Aws {
                    operation,
                    message,
                    retryable: true,
                }),
            },
        }
    }

    /// Forget the credentials held (SQS said they are expired or unknown): the next call asks
    /// the provider chain again.
    async fn forget(&self) {
        *self.current.lock().await = None;
    }
}

impl Held {
    /// `credentials` loaded at `now`: renewed five minutes before they expire, or in fifteen
    /// minutes when undated; never sooner than [`RENEW_RETRY`] (a provider handing out
    /// credentials about to expire is not asked again on every call).
    fn of(credentials: Credentials, now: Instant) -> Held {
        let left = credentials
            .expiry()
            .map(|expiry| expiry.duration_since(SystemTime::now()).unwrap_or_default());
        let renew_in = match left {
            Some(left) => left
                .saturating_sub(RENEW_BEFORE_EXPIRY)
                .max(RENEW_RETRY.min(left)),
            None => UNDATED_CREDENTIALS_LIFETIME,
        };
        Held {
            credentials,
            renew_at: now + renew_in,
            valid_until: left.map(|left| now + left),
        }
    }
}

/// An SQS error answer as a broker error ([`BrokerError::NoSuchQueue`] when the queue is
/// gone), and whether it refused the credentials (expired or unknown): the error code from the `x-amzn-query-error`
/// header (the code the query protocol used, which the SDK reports too) or the body's
/// `__type`, and its message.
fn service_error(
    operation: &'static str,
    queue_url: &str,
    status: u16,
    headers: &hyper::HeaderMap,
    body: &[u8],
) -> (BrokerError, bool) {
    let answer: ErrorAnswer<'_> = serde_json::from_slice(body).unwrap_or_default();
    let query_code = headers
        .get("x-amzn-query-error")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .filter(|code| !code.is_empty());
    let type_code = answer
        .kind
        .as_deref()
        .map(|kind| kind.rsplit('#').next().unwrap_or(kind));
    // An error raised before the request reached SQS (a front end refusing the signature,
    // an emulator's own checks) may come as the query protocol's XML instead.
    let text = String::from_utf8_lossy(body);
    let code = query_code
        .or(type_code)
        .or_else(|| xml_element(&text, "Code"))
        .unwrap_or("");
    let message = answer
        .message
        .as_deref()
        .or(answer.message_capitalised.as_deref())
        .or_else(|| xml_element(&text, "Message"))
        .unwrap_or("");
    if code.ends_with("NonExistentQueue") || code.ends_with("QueueDoesNotExist") {
        let name = queue_url.rsplit('/').next().unwrap_or(queue_url);
        return (BrokerError::NoSuchQueue(name.to_string()), false);
    }
    // Expired or unknown credentials are renewed before the next call
    // ([`SqsHttp::call`] forgets them), and a skewed clock is corrected from the answer's
    // `Date`: both may succeed on the next try.
    let retryable = status >= 500
        || status == 429
        || is_retryable_code(code)
        || is_credential_code(code)
        || code == "RequestTimeTooSkewed";
    let what = if code.is_empty() {
        format!("HTTP {status}")
    } else {
        code.to_string()
    };
    let error = BrokerError::Aws {
        operation,
        message: if message.is_empty() {
            format!("service error: {what}")
        } else {
            format!("service error: {what}: {message}")
        },
        retryable,
    };
    (error, is_credential_code(code))
}

/// Whether an error code says the credentials signed with are expired or unknown.
fn is_credential_code(code: &str) -> bool {
    matches!(
        code,
        "ExpiredToken" | "ExpiredTokenException" | "InvalidClientTokenId" | "RequestExpired"
    )
}

/// The text of the first `<name>…</name>` element in `xml`, if any.
fn xml_element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let len = xml[start..].find(&format!("</{name}>"))?;
    Some(xml[start..start + len].trim())
}

/// Read a `ReceiveMessage` answer; `fifo` keeps each message's group (only FIFO queues
/// order by group).
fn decode_receive(body: &[u8], fifo: bool) -> Result<Vec<Received>, BrokerError> {
    let answer: ReceiveAnswer<'_> = serde_json::from_slice(body).map_err(|e| BrokerError::Aws {
        operation: "ReceiveMessage",
        message: format!("SQS answered something that is not a ReceiveMessage result: {e}"),
        retryable: true,
    })?;
    let mut received = Vec::with_capacity(answer.messages.len());
    for message in answer.messages {
        let (Some(id), Some(receipt)) = (message.message_id, message.receipt_handle) else {
            tracing::warn!("SQS returned a message without id or receipt handle; skipping it");
            continue;
        };
        let system = message.attributes;
        let mut attributes = Attributes::new();
        for (name, value) in message.message_attributes {
            let WireAttribute {
                data_type,
                string_value,
                binary_value,
            } = value;
            let text = match (string_value, binary_value) {
                (Some(text), _) => text,
                // The JSON protocol carries binary values as base64 already: the text iniesta
                // keeps binary attributes as.
                (None, Some(base64)) => base64,
                (None, None) => Cow::Borrowed(""),
            };
            attributes.insert(
                name.into_owned(),
                Attribute {
                    data_type: data_type.into_owned(),
                    value: text.into_owned(),
                },
            );
        }
        received.push(Received {
            message_id: id.into_owned(),
            receipt: receipt.into_owned(),
            body: message
                .body
                .map(Cow::into_owned)
                .unwrap_or_default()
                .into_bytes(),
            attributes,
            receive_count: system
                .approximate_receive_count
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(1),
            sent_timestamp_ms: system
                .sent_timestamp
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0),
            group_id: system
                .message_group_id
                .filter(|_| fifo)
                .map(Cow::into_owned),
            aws_trace_header: system.aws_trace_header.map(Cow::into_owned),
        });
    }
    Ok(received)
}

/// Read a batch call's answer: the failed entries of `chunk` (entry ids are positions).
fn decode_batch(
    operation: &'static str,
    body: &[u8],
    chunk: &[String],
) -> Result<Vec<DeleteFailure>, BrokerError> {
    let answer: BatchAnswer<'_> = serde_json::from_slice(body).map_err(|e| BrokerError::Aws {
        operation,
        message: format!("SQS answered something that is not a {operation} result: {e}"),
        retryable: true,
    })?;
    Ok(answer
        .failed
        .into_iter()
        .map(|failed| DeleteFailure {
            receipt: failed
                .id
                .parse::<usize>()
                .ok()
                .and_then(|i| chunk.get(i))
                .cloned()
                .unwrap_or_default(),
            reason: format!(
                "{}: {}",
                failed.code,
                failed.message.as_deref().unwrap_or("")
            ),
            retryable: !failed.sender_fault,
            stale: is_stale_receipt(Some(&failed.code), failed.message.as_deref()),
        })
        .collect())
}

/// `ReceiveMessage`'s input.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ReceiveMessageInput<'a> {
    queue_url: &'a str,
    max_number_of_messages: u32,
    wait_time_seconds: u32,
    message_attribute_names: [&'static str; 1],
    message_system_attribute_names: [&'static str; 1],
}

/// `DeleteMessageBatch`'s and `ChangeMessageVisibilityBatch`'s input.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct BatchInput<'a> {
    queue_url: &'a str,
    entries: Vec<BatchEntry<'a>>,
}

/// One entry of a batch call: its position is its id.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct BatchEntry<'a> {
    #[serde(serialize_with = "position_as_id")]
    id: usize,
    receipt_handle: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    visibility_timeout: Option<u32>,
}

fn position_as_id<S: serde::Serializer>(id: &usize, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

/// `ReceiveMessage`'s answer.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ReceiveAnswer<'a> {
    #[serde(default, borrow)]
    messages: Vec<WireMessage<'a>>,
}

/// One received message.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireMessage<'a> {
    #[serde(default, borrow)]
    message_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    receipt_handle: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    body: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    attributes: SystemAttributes<'a>,
    #[serde(default, borrow)]
    message_attributes: std::collections::BTreeMap<Cow<'a, str>, WireAttribute<'a>>,
}

/// The system attributes iniesta reads (the others are skipped unread).
#[derive(Deserialize, Default)]
struct SystemAttributes<'a> {
    #[serde(rename = "ApproximateReceiveCount", default, borrow)]
    approximate_receive_count: Option<Cow<'a, str>>,
    #[serde(rename = "SentTimestamp", default, borrow)]
    sent_timestamp: Option<Cow<'a, str>>,
    #[serde(rename = "MessageGroupId", default, borrow)]
    message_group_id: Option<Cow<'a, str>>,
    #[serde(rename = "AWSTraceHeader", default, borrow)]
    aws_trace_header: Option<Cow<'a, str>>,
}

/// One message attribute.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireAttribute<'a> {
    #[serde(borrow)]
    data_type: Cow<'a, str>,
    #[serde(default, borrow)]
    string_value: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    binary_value: Option<Cow<'a, str>>,
}

/// A batch call's answer (only the failures are read).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct BatchAnswer<'a> {
    #[serde(default, borrow)]
    failed: Vec<FailedEntry<'a>>,
}

/// One entry a batch call refused.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct FailedEntry<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(default)]
    sender_fault: bool,
    #[serde(borrow)]
    code: Cow<'a, str>,
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
}

/// An error answer's body.
#[derive(Deserialize, Default)]
struct ErrorAnswer<'a> {
    #[serde(rename = "__type", default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
    #[serde(rename = "Message", default, borrow)]
    message_capitalised: Option<Cow<'a, str>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receive_answer_is_read_with_its_escapes_attributes_and_system_attributes() {
        let body = br#"{"Messages":[{"MessageId":"m1","ReceiptHandle":"r1","MD5OfBody":"x",
            "Body":"{\"a\":\"\u00e9\\n\"}",
            "Attributes":{"SentTimestamp":"1700000000123","ApproximateReceiveCount":"3",
                "MessageGroupId":"g","AWSTraceHeader":"Root=1-a-b","SenderId":"AID"},
            "MessageAttributes":{"kind":{"DataType":"String","StringValue":"Order.Created"},
                "bin":{"DataType":"Binary","BinaryValue":"AAEC/w=="},
                "n":{"DataType":"Number.int","StringValue":"7"}}},
            {"MessageId":"m2","ReceiptHandle":"r2","Body":"plain"}]}"#;
        let got = decode_receive(body, true).expect("decodes");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].body, "{\"a\":\"é\\n\"}".as_bytes());
        assert_eq!(got[0].receive_count, 3);
        assert_eq!(got[0].sent_timestamp_ms, 1_700_000_000_123);
        assert_eq!(got[0].group_id.as_deref(), Some("g"));
        assert_eq!(got[0].aws_trace_header.as_deref(), Some("Root=1-a-b"));
        let kind = &got[0].attributes["kind"];
        assert_eq!(
            (kind.data_type.as_str(), kind.value.as_str()),
            ("String", "Order.Created")
        );
        assert_eq!(got[0].attributes["bin"].value, "AAEC/w==");
        assert_eq!(got[0].attributes["n"].data_type, "Number.int");
        // Defaults when SQS leaves them out; a standard queue keeps no group.
        assert_eq!(got[1].receive_count, 1);
        assert_eq!(got[1].sent_timestamp_ms, 0);
        assert!(got[1].attributes.is_empty());
        let standard = decode_receive(body, false).expect("decodes");
        assert_eq!(standard[0].group_id, None);
    }

    #[test]
    fn an_empty_receive_and_a_message_without_receipt_yield_nothing() {
        assert!(decode_receive(b"{}", false).expect("decodes").is_empty());
        let got = decode_receive(br#"{"Messages":[{"MessageId":"m","Body":"b"}]}"#, false)
            .expect("decodes");
        assert!(got.is_empty());
        let err = decode_receive(b"<html>", false).expect_err("not JSON");
        assert!(err.is_retryable());
    }

    #[test]
    fn batch_failures_name_their_receipts_and_whether_to_retry() {
        let chunk = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let body = br#"{"Successful":[{"Id":"0"}],"Failed":[
            {"Id":"1","SenderFault":true,"Code":"ReceiptHandleIsInvalid","Message":"bad"},
            {"Id":"2","SenderFault":false,"Code":"InternalError"}]}"#;
        let failures = decode_batch("DeleteMessageBatch", body, &chunk).expect("decodes");
        assert_eq!(failures.len(), 2);
        assert_eq!(failures[0].receipt, "b");
        assert!(failures[0].stale && !failures[0].retryable);
        assert_eq!(failures[1].receipt, "c");
        assert!(!failures[1].stale && failures[1].retryable);
        assert!(decode_batch("DeleteMessageBatch", b"{}", &chunk)
            .expect("decodes")
            .is_empty());
    }

    #[test]
    fn error_answers_keep_their_code_and_retryability() {
        let url = "https://sqs.eu-west-1.amazonaws.com/123456789012/orders";
        let mut headers = hyper::HeaderMap::new();
        headers.insert(
            "x-amzn-query-error",
            hyper::header::HeaderValue::from_static(
                "AWS.SimpleQueueService.NonExistentQueue;Sender",
            ),
        );
        let gone = service_error(
            "ReceiveMessage",
            url,
            400,
            &headers,
            br#"{"__type":"com.amazonaws.sqs#QueueDoesNotExist","message":"gone"}"#,
        )
        .0;
        assert!(
            matches!(&gone, BrokerError::NoSuchQueue(q) if q == "orders"),
            "{gone:?}"
        );
        let none = hyper::HeaderMap::new();
        let throttled = service_error(
            "DeleteMessageBatch",
            url,
            400,
            &none,
            br#"{"__type":"com.amazonaws.sqs#RequestThrottled","message":"slow down"}"#,
        )
        .0;
        assert!(throttled.is_retryable(), "{throttled:?}");
        assert!(
            throttled.to_string().contains("RequestThrottled"),
            "{throttled}"
        );
        let denied = service_error(
            "ReceiveMessage",
            url,
            403,
            &none,
            br#"{"__type":"com.amazon.coral.service#AccessDeniedException","Message":"no"}"#,
        )
        .0;
        assert!(!denied.is_retryable(), "{denied:?}");
        let xml = service_error(
            "ReceiveMessage",
            url,
            403,
            &none,
            b"<ErrorResponse><Errors><Error><Code>SignatureDoesNotMatch</Code><Message>no match</Message></Error></Errors></ErrorResponse>",
        ).0;
        assert!(!xml.is_retryable(), "{xml:?}");
        assert!(
            xml.to_string().contains("SignatureDoesNotMatch: no match"),
            "{xml}"
        );
        let unreadable = service_error("ReceiveMessage", url, 503, &none, b"<html>").0;
        assert!(unreadable.is_retryable(), "{unreadable:?}");
        // Expired credentials: retryable, and the caller renews them before the next try.
        let (expired, refused) = service_error(
            "ReceiveMessage",
            url,
            403,
            &none,
            br#"{"__type":"com.amazon.coral.service#ExpiredTokenException","message":"expired"}"#,
        );
        assert!(expired.is_retryable() && refused, "{expired:?}");
        let (_, refused) = service_error(
            "ReceiveMessage",
            url,
            403,
            &none,
            br#"{"__type":"com.amazon.coral.service#AccessDeniedException"}"#,
        );
        assert!(!refused);
    }

    #[test]
    fn credentials_are_renewed_before_they_expire_and_expired_ones_are_never_kept() {
        let now = Instant::now();
        let dated = |secs: u64| {
            Credentials::new(
                "AKID",
                "secret",
                Some("token".into()),
                Some(SystemTime::now() + Duration::from_secs(secs)),
                "test",
            )
        };
        let hour = Held::of(dated(3600), now);
        let renew = hour.renew_at.duration_since(now).as_secs();
        assert!(
            (3290..=3300).contains(&renew),
            "five minutes early: {renew}"
        );
        assert!(hour.valid_until.is_some_and(|u| u > hour.renew_at));
        let short = Held::of(dated(60), now);
        assert_eq!(
            short.renew_at,
            now + RENEW_RETRY,
            "not renewed on every call"
        );
        let expired = Credentials::new(
            "AKID",
            "secret",
            None,
            Some(SystemTime::now() - Duration::from_secs(1)),
            "test",
        );
        let expired = Held::of(expired, now);
        assert_eq!(expired.renew_at, now, "renewed at once");
        assert_eq!(expired.valid_until, Some(now), "and never used");
        let undated = Held::of(Credentials::new("AKID", "s", None, None, "test"), now);
        assert_eq!(undated.renew_at, now + UNDATED_CREDENTIALS_LIFETIME);
        assert_eq!(undated.valid_until, None);
    }

    #[test]
    fn the_sdk_s_endpoint_rules_pick_the_endpoint() {
        let sdk = |fips: bool, url: Option<&str>| {
            let mut b = aws_config::SdkConfig::builder()
                .behavior_version(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new("us-east-1"))
                .use_fips(fips);
            if let Some(url) = url {
                b = b.endpoint_url(url);
            }
            b.build()
        };
        assert_eq!(
            resolve_endpoint(&sdk(false, None), None)
                .expect("resolves")
                .as_deref(),
            Some("https://sqs.us-east-1.amazonaws.com")
        );
        let fips = resolve_endpoint(&sdk(true, None), None).expect("resolves");
        assert!(
            fips.as_deref().is_some_and(|u| u.contains("fips")),
            "{fips:?}"
        );
        assert_eq!(
            resolve_endpoint(&sdk(false, Some("http://sdk:1")), Some("http://ours:2"))
                .expect("resolves")
                .as_deref(),
            Some("http://ours:2"),
            "broker.endpoint_url first"
        );
        assert_eq!(
            resolve_endpoint(&sdk(false, Some("http://sdk:1")), None)
                .expect("resolves")
                .as_deref(),
            Some("http://sdk:1")
        );
    }

    #[test]
    fn requests_go_to_the_queue_urls_origin_with_its_host_header() {
        let origin = origin_of("https://sqs.us-east-1.amazonaws.com/1234/q").expect("origin");
        assert_eq!(origin.to_string(), "https://sqs.us-east-1.amazonaws.com/");
        assert_eq!(
            host_header(&origin).as_deref(),
            Some("sqs.us-east-1.amazonaws.com")
        );
        let local: hyper::Uri = "http://127.0.0.1:4566".parse().expect("uri");
        assert_eq!(host_header(&local).as_deref(), Some("127.0.0.1:4566"));
        let default_port: hyper::Uri = "https://h:443/".parse().expect("uri");
        assert_eq!(host_header(&default_port).as_deref(), Some("h"));
        assert!(origin_of("not a url").is_err());
        assert!(origin_of("/1234/q").is_err());
    }
}
