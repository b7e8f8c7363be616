//! How Sentry events leave the host: the `sentry` client hands each envelope to
//! [`QueueTransport`], which puts it in a bounded queue and never waits; one background task
//! POSTs the queue to the DSN's envelope endpoint with hyper (the client the error webhook
//! uses), honouring Sentry's rate limits (`429`, `Retry-After`, `X-Sentry-Rate-Limits`).
//!
//! A full queue drops the envelope (`iniesta_error_reports_total{sink="sentry",
//! result="dropped"}`, and a client report so Sentry's stats show the loss). A DSN that can't
//! be reached is logged once, with its host only (never the key), until it answers again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sentry::client_report::{Reason, Recorder};
use sentry::transports::{RateLimiter, RateLimitingCategory};
use sentry::{Envelope, Transport, TransportFactory, TransportOptions};
use tokio::sync::mpsc;

use crate::web::WebClient;

/// How many envelopes may wait to be sent.
pub const QUEUE: usize = 256;

/// The `sentry` client's transport: a bounded queue in front of [`send_loop`].
pub struct QueueTransport {
    tx: Mutex<Option<mpsc::Sender<Envelope>>>,
    recorder: Recorder,
    /// The queue overflowed and has not taken an event since (warned once per episode).
    overflowing: AtomicBool,
}

impl QueueTransport {
    /// An envelope the queue could not take: counted, reported to Sentry as lost, and warned
    /// about once until the queue takes one again.
    fn lost(&self, e: mpsc::error::TrySendError<Envelope>) {
        let envelope = match e {
            mpsc::error::TrySendError::Full(e) | mpsc::error::TrySendError::Closed(e) => e,
        };
        self.recorder
            .record_lost_data(&envelope, Reason::QueueOverflow);
        count("dropped");
        if !self.overflowing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                queue = QUEUE,
                "Sentry is behind: events are dropped until the queue has room (iniesta_error_reports_total{{sink=\"sentry\",result=\"dropped\"}} counts them)"
            );
        }
    }
}

impl Transport for QueueTransport {
    fn send_envelope(&self, envelope: Envelope) {
        let tx = crate::mutex::lock(&self.tx);
        let Some(tx) = tx.as_ref() else {
            // Shut down: what arrives now is the pipeline's last word after the flush.
            count("dropped");
            return;
        };
        match tx.try_send(envelope) {
            Ok(()) => {
                self.overflowing.store(false, Ordering::Relaxed);
            }
            Err(e) => self.lost(e),
        }
    }

    /// Sending is the background task's business; the host waits for it asynchronously
    /// ([`Sending::finish`]), never on a blocking call from the runtime.
    fn flush(&self, _timeout: Duration) -> bool {
        true
    }

    /// Close the queue: the background task sends what is in it and stops.
    fn shutdown(&self, _timeout: Duration) -> bool {
        crate::mutex::lock(&self.tx).take();
        true
    }
}

/// The receiving end, until the client creates its transport.
pub struct Factory {
    parts: Mutex<
        Option<(
            mpsc::Sender<Envelope>,
            tokio::sync::oneshot::Sender<Recorder>,
        )>,
    >,
}

impl TransportFactory for Factory {
    fn create_transport_with_options(&self, options: TransportOptions) -> Arc<dyn Transport> {
        let parts = crate::mutex::lock(&self.parts).take();
        let tx = parts.map(|(tx, recorder_tx)| {
            let _ = recorder_tx.send(options.client_report_recorder.clone());
            tx
        });
        Arc::new(QueueTransport {
            tx: Mutex::new(tx),
            recorder: options.client_report_recorder,
            overflowing: AtomicBool::new(false),
        })
    }
}

/// Where and how envelopes are POSTed.
pub struct Endpoint {
    /// `https://HOST/api/PROJECT/envelope/`.
    pub url: hyper::Uri,
    /// The `X-Sentry-Auth` header (holds the public key: never logged).
    pub auth: String,
    /// The DSN's host, for logs.
    pub host: String,
    /// The client.
    pub client: WebClient,
    /// How long one POST may take.
    pub timeout: Duration,
}

/// The transport factory for the client's options, and the receiving end for [`send_loop`].
pub fn queue() -> (
    Factory,
    mpsc::Receiver<Envelope>,
    tokio::sync::oneshot::Receiver<Recorder>,
) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let (recorder_tx, recorder_rx) = tokio::sync::oneshot::channel();
    (
        Factory {
            parts: Mutex::new(Some((tx, recorder_tx))),
        },
        rx,
        recorder_rx,
    )
}

fn count(result: &'static str) {
    super::count("sentry", result);
}

/// POST every queued envelope, one at a time, until the queue is closed and empty.
pub async fn send_loop(
    mut rx: mpsc::Receiver<Envelope>,
    recorder: tokio::sync::oneshot::Receiver<Recorder>,
    endpoint: Endpoint,
) {
    let recorder = recorder.await.ok();
    let mut limits = RateLimiter::new();
    // The last POST failed: Sentry could not be reached, or refused the event (HTTP status).
    let mut trouble: Option<Trouble> = None;
    while let Some(envelope) = rx.recv().await {
        // What we send are error events (with the client's loss reports riding along).
        if limits.is_disabled(RateLimitingCategory::Error).is_some() {
            if let Some(r) = &recorder {
                r.record_lost_data(&envelope, Reason::RatelimitBackoff);
            }
            count("rate_limited");
            continue;
        }
        let mut body = Vec::new();
        if let Err(e) = envelope.to_writer(&mut body) {
            if let Some(r) = &recorder {
                r.record_lost_data(&envelope, Reason::InternalError);
            }
            count("failed");
            tracing::warn!(error = %e, "cannot encode a Sentry envelope; the event is dropped");
            continue;
        }
        let request = match crate::web::post_request(
            endpoint.url.clone(),
            "application/x-sentry-envelope",
            &[("X-Sentry-Auth", &endpoint.auth)],
            body,
        ) {
            Ok(r) => r,
            Err(e) => {
                count("failed");
                tracing::warn!(sentry_host = %endpoint.host, error = %e, "cannot build a Sentry request");
                continue;
            }
        };
        let outcome = match endpoint.client.post(request, endpoint.timeout).await {
            Ok(answer) => {
                if let Some(header) = answer
                    .headers
                    .get("x-sentry-rate-limits")
                    .and_then(|v| v.to_str().ok())
                {
                    limits.update_from_sentry_header(header);
                } else if let Some(header) = answer
                    .headers
                    .get(hyper::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                {
                    limits.update_from_retry_after(header);
                } else if answer.status == 429 {
                    limits.update_from_429();
                }
                match answer.status {
                    200..=299 => Ok(()),
                    // Sentry counts what it refuses for rate limits itself.
                    429 => {
                        count("rate_limited");
                        continue;
                    }
                    status @ 400..=499 => Err(Trouble::Refused(status)),
                    status => Err(Trouble::Unreachable(format!("answered HTTP {status}"))),
                }
            }
            Err(e) => Err(Trouble::Unreachable(e.to_string())),
        };
        match outcome {
            Ok(()) => {
                count("sent");
                if trouble.take().is_some() {
                    tracing::info!(sentry_host = %endpoint.host, "Sentry answers again");
                }
            }
            Err(now) => {
                count("failed");
                if let Some(r) = &recorder {
                    r.record_lost_data(&envelope, Reason::SendError);
                }
                // Logged once per kind of trouble, until an event gets through.
                let same = trouble.as_ref().is_some_and(|t| t.same_kind(&now));
                if same {
                    tracing::debug!(sentry_host = %endpoint.host, error = %now, "Sentry event not sent");
                } else {
                    match &now {
                        Trouble::Unreachable(error) => {
                            tracing::warn!(sentry_host = %endpoint.host, error = %error,
                            "Sentry cannot be reached; failure events are dropped until it answers (the messages themselves are unaffected; iniesta_error_reports_total{{sink=\"sentry\",result=\"failed\"}} counts them)")
                        }
                        Trouble::Refused(status) => {
                            let hint = match status {
                                401 | 403 => "check the DSN's key and project",
                                413 => "the event is too large",
                                _ => "Sentry did not accept it as sent",
                            };
                            tracing::warn!(sentry_host = %endpoint.host, status = *status,
                            "Sentry refused the event (HTTP {status}): {hint}; refused events are dropped (iniesta_error_reports_total{{sink=\"sentry\",result=\"failed\"}})")
                        }
                    }
                }
                trouble = Some(now);
            }
        }
    }
}

/// Why the last POST did not deliver its event.
#[derive(Debug)]
enum Trouble {
    /// No answer, or a server error.
    Unreachable(String),
    /// A 4xx other than 429: Sentry got the event and refused it.
    Refused(u16),
}

impl Trouble {
    fn same_kind(&self, other: &Trouble) -> bool {
        match (self, other) {
            (Trouble::Unreachable(_), Trouble::Unreachable(_)) => true,
            (Trouble::Refused(a), Trouble::Refused(b)) => a == b,
            _ => false,
        }
    }
}

impl std::fmt::Display for Trouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trouble::Unreachable(e) => f.write_str(e),
            Trouble::Refused(status) => write!(f, "refused with HTTP {status}"),
        }
    }
}
