//! Dead letters you can act on: list what is in this service's dead-letter queue, send chosen
//! messages back to the main queue (redrive), or empty it (purge).
//!
//! Both brokers implement [`DeadLetterQueue`]: [`local`] works on the SQLite tables in one
//! transaction per batch; [`aws`] receives from the DLQ with a visibility timeout, sends each
//! chosen message to the main queue with its body and attributes, and deletes it from the DLQ
//! only after the send succeeded. SQS has no peek: listing receives and then makes the
//! messages visible again, so two operators listing at once each see only part of the queue.

pub mod aws;
pub mod local;

use std::sync::Arc;

use async_trait::async_trait;

use crate::broker::BrokerError;
use crate::config::{BrokerKind, Config};
use crate::route::Pattern;
use crate::wire::Attributes;

/// One message in the dead-letter queue.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    /// The broker's message id (in the dead-letter queue).
    pub id: String,
    /// The event name, from the event-key attribute or, where the main queue receives SNS
    /// envelopes, the envelope of the subscribed topic; empty if none.
    pub event: String,
    /// Deliveries counted by the broker (on SQS this includes receives by `dlq list`).
    pub receive_count: u32,
    /// When the message was first delivered (ms since the Unix epoch), else when it was sent.
    pub first_seen_ms: Option<u64>,
    /// When it was last delivered or dead-lettered (ms since the Unix epoch), when known.
    pub last_seen_ms: Option<u64>,
    /// Why it was dead-lettered (the handler's `DeadLetter` reason, schema errors, or the
    /// receive count), when iniesta put it there.
    pub reason: Option<String>,
    /// The body as stored.
    #[serde(skip)]
    pub body: Vec<u8>,
    /// The attributes as stored.
    #[serde(skip)]
    pub attributes: Attributes,
}

impl DeadLetter {
    /// A one-line preview of the body: `<N bytes hidden>` unless `show`, else at most `max`
    /// characters of text with control characters escaped.
    pub fn body_preview(&self, show: bool, max: usize) -> String {
        preview(&self.body, show, max)
    }
}

/// A body preview (see [`DeadLetter::body_preview`]).
pub fn preview(body: &[u8], show: bool, max: usize) -> String {
    if !show {
        return format!("<{} bytes hidden>", body.len());
    }
    let text = String::from_utf8_lossy(body);
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n >= max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Which dead letters a redrive takes: those whose event matches any glob or whose id is
/// listed; everything when both are empty.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Event globs (`*` matches any run of characters, dots included).
    pub events: Vec<Pattern>,
    /// Message ids.
    pub ids: Vec<String>,
}

impl Selection {
    /// Parse `--event` globs and `--id`s; a bad glob is named.
    pub fn new(events: &[String], ids: &[String]) -> Result<Selection, DlqError> {
        let events = events
            .iter()
            .map(|e| Pattern::parse(e).map_err(|why| DlqError::BadGlob(e.clone(), why)))
            .collect::<Result<_, _>>()?;
        Ok(Selection {
            events,
            ids: ids.to_vec(),
        })
    }

    /// Whether everything is selected.
    pub fn is_all(&self) -> bool {
        self.events.is_empty() && self.ids.is_empty()
    }

    /// Whether a message with this id and event is selected.
    pub fn matches(&self, id: &str, event: &str) -> bool {
        self.is_all()
            || self.ids.iter().any(|i| i == id)
            || self.events.iter().any(|p| p.matches(event))
    }
}

/// What a redrive did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RedriveReport {
    /// Messages sent back to the main queue (and removed from the DLQ).
    pub redriven: u64,
    /// Messages looked at and left in the DLQ (not selected).
    pub kept: u64,
    /// Messages that could not be moved, with why (they stay in the DLQ).
    pub failed: Vec<String>,
}

/// Progress of a long redrive, for a progress bar.
pub trait Progress: Send + Sync {
    /// The total to expect (an estimate on SQS).
    fn total(&self, total: u64);
    /// `n` more messages were looked at.
    fn advance(&self, n: u64);
}

/// No progress reporting.
pub struct NoProgress;

impl Progress for NoProgress {
    fn total(&self, _total: u64) {}
    fn advance(&self, _n: u64) {}
}

/// Dead-letter queue failures.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The config names no dead-letter queue.
    #[error("no dead-letter queue is configured (set sqs.dead_letter_queue)")]
    NotConfigured,
    /// An `--event` glob is not a pattern.
    #[error("--event `{0}`: {1}")]
    BadGlob(String, String),
}

/// A service's dead-letter queue.
#[async_trait]
pub trait DeadLetterQueue: Send + Sync + 'static {
    /// Up to `limit` dead letters, oldest first where the broker knows the order.
    async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, DlqError>;

    /// Move the selected dead letters back to the main queue, keeping body and attributes;
    /// each is removed from the DLQ only once it is on the main queue.
    async fn redrive(
        &self,
        selection: &Selection,
        progress: &dyn Progress,
    ) -> Result<RedriveReport, DlqError>;

    /// Delete every dead letter; returns how many.
    async fn purge(&self) -> Result<u64, DlqError>;

    /// `dead-letter queue q of local broker f`, for messages.
    fn describe(&self) -> String;
}

/// The dead-letter queue of the broker a config names.
pub async fn open(config: &Config) -> Result<Arc<dyn DeadLetterQueue>, DlqError> {
    let Some(dlq) = config.sqs.dead_letter_queue.clone() else {
        return Err(DlqError::NotConfigured);
    };
    match config.broker.kind {
        BrokerKind::Local => Ok(Arc::new(local::LocalDlq::open(config, dlq).await?)),
        BrokerKind::Aws => Ok(Arc::new(aws::AwsDlq::connect(config, dlq).await)),
    }
}

/// The event name of a stored message (empty when it carries none or cannot be decoded),
/// decoded as the main queue delivers it.
pub fn event_of(
    id: &str,
    body: &[u8],
    attributes: &Attributes,
    delivery: crate::wire::DeliveryContext<'_>,
) -> String {
    crate::wire::decode(id, body, attributes, 0, delivery)
        .map(|e| e.event)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_by_glob_and_id() {
        let all = Selection::new(&[], &[]).expect("ok");
        assert!(all.matches("x", "anything"));
        let some = Selection::new(&["Order.*".into()], &["m-7".into()]).expect("ok");
        assert!(some.matches("m-1", "Order.Created.shop"));
        assert!(some.matches("m-7", "Invoice.Paid.shop"));
        assert!(!some.matches("m-2", "Invoice.Paid.shop"));
        assert!(Selection::new(&[String::new()], &[]).is_err());
    }

    #[test]
    fn previews_are_redacted_unless_shown() {
        assert_eq!(preview(b"secret", false, 10), "<6 bytes hidden>");
        assert_eq!(preview(b"a\nb", true, 10), "a\\nb");
        assert_eq!(preview(b"abcdef", true, 3), "abc…");
    }
}
