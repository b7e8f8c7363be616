//! The error webhook: a JSON record of every handler failure POSTed to `[errors] webhook_url`.
//!
//! Records go into a bounded queue (a full queue drops the record, counted and logged) and are
//! POSTed in the background, a few at a time, each within `errors.timeout_secs`. A failing
//! webhook is only logged; the URL is never logged (it may carry a token), only its host.
//! Bodies are left out unless `errors.include_bodies = true`.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};

use super::{Failure, FailureKind};
use crate::config::{Config, Problem};
use crate::ops::OpsError;
use crate::tasks::Tasks;
use crate::web::WebClient;

/// How many records may wait to be sent.
const QUEUE: usize = 1024;
/// How many POSTs run at once.
const CONCURRENT: usize = 4;
/// The most body bytes a record carries (when bodies are included).
const MAX_BODY: usize = 64 * 1024;

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
pub struct Webhook {
    tx: mpsc::Sender<FailureRecord>,
    include_bodies: bool,
    timeout: Duration,
    service: String,
    queue: String,
    task: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Webhook")
    }
}

impl Webhook {
    /// Start the background sender for `[errors] webhook_url` (a task of `tasks`, as is each
    /// POST); `None` when no webhook is configured.
    pub fn start(config: &Config, tasks: &Tasks) -> Result<Option<Webhook>, OpsError> {
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
        let client = WebClient::new(https).map_err(OpsError::Webhook)?;
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
        Ok(Some(Webhook {
            tx,
            include_bodies: config.errors.include_bodies,
            timeout,
            service: config.service.clone(),
            queue: config.queue_name(),
            task: Arc::new(std::sync::Mutex::new(Some(task))),
        }))
    }

    /// The record of `failure` for this service; the body is left out unless bodies are
    /// included.
    pub fn record(&self, failure: &Failure<'_>) -> FailureRecord {
        let body = self.include_bodies.then(|| {
            let body = &failure.envelope.body;
            let cut = &body[..body.len().min(MAX_BODY)];
            String::from_utf8_lossy(cut).into_owned()
        });
        let binding = failure.binding;
        FailureRecord {
            kind: failure.kind,
            service: self.service.clone(),
            queue: self.queue.clone(),
            binding: binding.map(|b| b.label.clone()),
            plugin: binding.map(|b| b.plugin.name.clone()),
            plugin_version: binding.map(|b| b.plugin.version.clone()),
            handler: binding.map(|b| b.handler_name.clone()),
            event: failure.envelope.event.clone(),
            message_id: failure.envelope.message_id.clone(),
            receive_count: failure.receive_count,
            reason: failure.reason.to_string(),
            timestamp: super::now_rfc3339(),
            body_redacted: body.is_none(),
            body,
            pid: std::process::id(),
        }
    }

    /// Queue the record of `failure`; never waits. A full queue drops it (logged and counted).
    pub fn report(&self, failure: &Failure<'_>) {
        let record = self.record(failure);
        if let Err(e) = self.tx.try_send(record) {
            let record = match e {
                mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r,
            };
            super::count("webhook", "dropped");
            tracing::warn!(message_id = %record.message_id, event = %record.event, binding = record.binding.as_deref().unwrap_or(""),
                "the error webhook is behind: failure record dropped");
        }
    }

    /// Wait (up to `errors.timeout_secs`) for the queued records to be sent, once every other
    /// clone of this reporter is gone (the pipeline has stopped); for shutdown.
    pub async fn flush(self) {
        let limit = self.timeout;
        let task = crate::mutex::lock(&self.task).take();
        drop(self.tx);
        if let Some(task) = task {
            if tokio::time::timeout(limit, task).await.is_err() {
                tracing::warn!("error webhook: records still unsent at shutdown are dropped");
            }
        }
    }
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
    let request = match crate::web::post_request(uri, "application/json", &[], body) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(webhook_host = %host, error = %e, "cannot build the error webhook request");
            return;
        }
    };
    let outcome = match client.post(request, timeout).await {
        Ok(answer) if (200..300).contains(&answer.status) => Ok(()),
        Ok(answer) => Err(format!("answered HTTP {}", answer.status)),
        Err(e) => Err(e.to_string()),
    };
    match outcome {
        Ok(()) => {
            super::count("webhook", "sent");
            tracing::debug!(message_id = %record.message_id, webhook_host = %host, "failure reported");
        }
        Err(e) => {
            super::count("webhook", "failed");
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
