//! Error reports (microcosm-pubsub's sentry role): a JSON record of every handler failure —
//! an error, a panic, a timeout, a dead letter — POSTed to `[errors] webhook_url`.
//!
//! Reporting never holds up the pipeline: records go into a bounded queue (a full queue drops
//! the record, counted and logged) and are POSTed in the background, a few at a time, each
//! within `errors.timeout_secs`. A failing webhook is only logged; the URL is never logged
//! (it may carry a token), only its host. Bodies are left out unless
//! `errors.include_bodies = true`.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};

use super::OpsError;
use crate::config::{Config, Problem};
use crate::tasks::Tasks;

/// How many records may wait to be sent.
const QUEUE: usize = 1024;
/// How many POSTs run at once.
const CONCURRENT: usize = 4;
/// The most body bytes a record carries (when bodies are included).
const MAX_BODY: usize = 64 * 1024;

/// What kind of failure a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The handler returned an error.
    Error,
    /// The handler panicked (caught at the plugin boundary).
    Panic,
    /// The handler ran past its timeout and was abandoned.
    Timeout,
    /// The message was dead-lettered (by a handler, or by schema validation).
    DeadLetter,
    /// The handler's task failed in the host.
    Crashed,
}

/// One failure, as POSTed.
#[derive(Debug, Clone, Serialize)]
pub struct FailureRecord {
    /// What happened.
    pub kind: FailureKind,
    /// This service (`service` in the config).
    pub service: String,
    /// The queue the message came from.
    pub queue: String,
    /// The binding's label (`bindings[0] (ledger/ledger)`); none for schema rejections.
    pub binding: Option<String>,
    /// The plugin serving the binding.
    pub plugin: Option<String>,
    /// Its version.
    pub plugin_version: Option<String>,
    /// The handler's name.
    pub handler: Option<String>,
    /// The event name.
    pub event: String,
    /// The message id.
    pub message_id: String,
    /// Deliveries so far, this one included.
    pub receive_count: u32,
    /// The error, panic message, timeout or dead-letter reason.
    pub reason: String,
    /// When it happened (RFC 3339, UTC).
    pub timestamp: String,
    /// The body as text (lossy UTF-8, at most 64 KiB) when bodies are included.
    pub body: Option<String>,
    /// Whether the body was left out (`errors.include_bodies = false`).
    pub body_redacted: bool,
    /// The reporting host's process id.
    pub pid: u32,
}

/// Hands failure records to the webhook in the background.
#[derive(Clone)]
pub struct ErrorReporter {
    tx: mpsc::Sender<FailureRecord>,
    include_bodies: bool,
    service: String,
    queue: String,
    task: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for ErrorReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ErrorReporter")
    }
}

/// A plain-HTTP or HTTP-and-HTTPS client.
#[derive(Clone)]
enum WebClient {
    Http(Client<HttpConnector, Full<Bytes>>),
    Https(Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>),
}

impl WebClient {
    fn new(https: bool) -> Result<WebClient, OpsError> {
        if !https {
            return Ok(WebClient::Http(
                Client::builder(TokioExecutor::new()).build_http(),
            ));
        }
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::aws_lc_rs::default_provider())
            .map_err(|e| {
                OpsError::Webhook(format!(
                    "an https:// webhook needs the system's CA certificates, which cannot be loaded ({e}); install them (e.g. the ca-certificates package) or use http:// through a proxy"
                ))
            })?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(WebClient::Https(
            Client::builder(TokioExecutor::new()).build(connector),
        ))
    }

    async fn post(&self, request: hyper::Request<Full<Bytes>>) -> Result<u16, String> {
        let response = match self {
            WebClient::Http(c) => c.request(request).await,
            WebClient::Https(c) => c.request(request).await,
        }
        .map_err(|e| {
            // The client's error names the failing step; its source says why.
            match std::error::Error::source(&e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            }
        })?;
        let status = response.status().as_u16();
        // Read (and drop) the answer so the connection can be reused.
        let _ = response.into_body().collect().await;
        Ok(status)
    }
}

impl ErrorReporter {
    /// Start the background sender for `[errors]` (a task of `tasks`, as is each POST);
    /// `None` when no webhook is configured.
    pub fn start(config: &Config, tasks: &Tasks) -> Result<Option<ErrorReporter>, OpsError> {
        let Some(url) = config.errors.webhook_url.clone() else {
            return Ok(None);
        };
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| OpsError::Webhook(format!("not a URL: {e}")))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(OpsError::Webhook(
                    "must start with http:// or https://".into(),
                ))
            }
        };
        let client = WebClient::new(https)?;
        let host = uri.host().unwrap_or("?").to_string();
        let timeout = Duration::from_secs(config.errors.timeout_secs.max(1));
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tasks.spawn(send_loop(
            rx,
            client,
            uri,
            host.clone(),
            timeout,
            tasks.clone(),
        ));
        tracing::info!(webhook_host = %host, include_bodies = config.errors.include_bodies, "handler failures are reported to the error webhook");
        Ok(Some(ErrorReporter {
            tx,
            include_bodies: config.errors.include_bodies,
            service: config.service.clone(),
            queue: config.queue_name(),
            task: Arc::new(std::sync::Mutex::new(Some(task))),
        }))
    }

    /// Whether records carry bodies.
    pub fn include_bodies(&self) -> bool {
        self.include_bodies
    }

    /// A record for this service with the common fields filled in; `body` is dropped unless
    /// bodies are included.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        kind: FailureKind,
        binding: Option<&crate::route::Binding>,
        event: &str,
        message_id: &str,
        receive_count: u32,
        reason: &str,
        body: &[u8],
    ) -> FailureRecord {
        let body = self.include_bodies.then(|| {
            let cut = &body[..body.len().min(MAX_BODY)];
            String::from_utf8_lossy(cut).into_owned()
        });
        FailureRecord {
            kind,
            service: self.service.clone(),
            queue: self.queue.clone(),
            binding: binding.map(|b| b.label.clone()),
            plugin: binding.map(|b| b.plugin.name.clone()),
            plugin_version: binding.map(|b| b.plugin.version.clone()),
            handler: binding.map(|b| b.handler_name.clone()),
            event: event.to_string(),
            message_id: message_id.to_string(),
            receive_count,
            reason: reason.to_string(),
            timestamp: now_rfc3339(),
            body_redacted: body.is_none(),
            body,
            pid: std::process::id(),
        }
    }

    /// Queue a record; never waits. A full queue drops it (logged and counted).
    pub fn report(&self, record: FailureRecord) {
        if let Err(e) = self.tx.try_send(record) {
            let record = match e {
                mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r,
            };
            metrics::counter!(super::metrics::ERROR_REPORTS, "result" => "dropped").increment(1);
            tracing::warn!(message_id = %record.message_id, event = %record.event, binding = record.binding.as_deref().unwrap_or(""),
                "the error webhook is behind: failure record dropped");
        }
    }

    /// Wait (up to `limit`) for the queued records to be sent, once every other clone of
    /// this reporter is gone (the pipeline has stopped); for shutdown.
    pub async fn flush(self, limit: Duration) {
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(self.tx);
        if let Some(task) = task {
            if tokio::time::timeout(limit, task).await.is_err() {
                tracing::warn!("error webhook: records still unsent at shutdown are dropped");
            }
        }
    }
}

fn now_rfc3339() -> String {
    aws_smithy_types::DateTime::from(std::time::SystemTime::now())
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_default()
}

async fn send_loop(
    mut rx: mpsc::Receiver<FailureRecord>,
    client: WebClient,
    uri: hyper::Uri,
    host: String,
    timeout: Duration,
    tasks: Tasks,
) {
    let slots = Arc::new(Semaphore::new(CONCURRENT));
    while let Some(record) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let (client, uri, host) = (client.clone(), uri.clone(), host.clone());
        tasks.spawn(async move {
            let _slot = slot;
            send_one(&client, uri, &host, timeout, &record).await;
        });
    }
    // Let the POSTs in progress finish.
    let _ = slots.acquire_many(CONCURRENT as u32).await;
}

async fn send_one(
    client: &WebClient,
    uri: hyper::Uri,
    host: &str,
    timeout: Duration,
    record: &FailureRecord,
) {
    let body = match serde_json::to_vec(record) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(message_id = %record.message_id, error = %e, "cannot encode a failure record");
            return;
        }
    };
    let request = hyper::Request::post(uri)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("iniesta/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::from(body)));
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(webhook_host = %host, error = %e, "cannot build the error webhook request");
            return;
        }
    };
    let outcome = match tokio::time::timeout(timeout, client.post(request)).await {
        Ok(Ok(status)) if (200..300).contains(&status) => Ok(()),
        Ok(Ok(status)) => Err(format!("answered HTTP {status}")),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no answer within {} s", timeout.as_secs())),
    };
    match outcome {
        Ok(()) => {
            metrics::counter!(super::metrics::ERROR_REPORTS, "result" => "sent").increment(1);
            tracing::debug!(message_id = %record.message_id, webhook_host = %host, "failure reported");
        }
        Err(e) => {
            metrics::counter!(super::metrics::ERROR_REPORTS, "result" => "failed").increment(1);
            tracing::warn!(message_id = %record.message_id, event = %record.event, webhook_host = %host, error = %e,
                "the error webhook failed; the failure record is dropped (the message itself is unaffected)");
        }
    }
}

/// Problems with `errors.webhook_url`: an `http://` or `https://` URL with a host.
pub fn problems(config: &Config) -> Vec<Problem> {
    match &config.errors.webhook_url {
        Some(url) => match webhook_url_problem(url) {
            Some(message) => vec![Problem::new("errors.webhook_url", message)],
            None => Vec::new(),
        },
        None => Vec::new(),
    }
}

fn webhook_url_problem(url: &str) -> Option<String> {
    let parsed = match url.parse::<hyper::Uri>() {
        Ok(parsed) => parsed,
        Err(e) => {
            return Some(format!(
                "is not a URL ({e}); e.g. \"http://127.0.0.1:8080/iniesta-errors\""
            ))
        }
    };
    match parsed.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Some(
            "must start with http:// or https:// (e.g. \"http://127.0.0.1:8080/iniesta-errors\")"
                .into(),
        ),
    }
    if parsed.host().is_none_or(str::is_empty) {
        return Some("names no host".into());
    }
    None
}
