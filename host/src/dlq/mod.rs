//! Dead letters you can act on: list and search what is in this service's dead-letter queue,
//! send chosen messages back to the main queue (redrive), delete chosen ones, or empty it
//! (purge).
//!
//! Both brokers implement [`DeadLetterQueue`]: [`local`] works on the SQLite tables in one
//! transaction per batch; [`aws`] receives from the DLQ with a visibility timeout, sends each
//! chosen message to the main queue with its body and attributes, and deletes it from the DLQ
//! only after the send succeeded. SQS has no peek: listing receives and then makes the
//! messages visible again, so two operators listing at once each see only part of the queue.
//!
//! Which messages an action takes is a [`Selection`] (ids, event globs, reason texts); a
//! search ([`search`]) reads up to a number of dead letters, keeps those a selection takes and
//! returns one page of them with the count of all that matched.

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

/// Which dead letters an action or a search takes: those whose id is listed or whose event
/// matches any glob (every one when neither is given), and of those, when reason texts are
/// given, only the ones whose reason contains any of them (ignoring case). Nothing given
/// selects everything.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Event globs (`*` matches any run of characters, dots included).
    pub events: Vec<Pattern>,
    /// Message ids.
    pub ids: Vec<String>,
    /// Texts the reason must contain (one of them), lowercased.
    reasons: Vec<String>,
}

impl Selection {
    /// Parse `--event` globs, `--id`s and `--reason` texts; a bad glob or an empty text is
    /// named.
    pub fn new(
        events: &[String],
        ids: &[String],
        reasons: &[String],
    ) -> Result<Selection, DlqError> {
        let events = events
            .iter()
            .map(|e| Pattern::parse(e).map_err(|why| DlqError::BadGlob(e.clone(), why)))
            .collect::<Result<_, _>>()?;
        if ids.iter().any(|i| i.trim().is_empty()) {
            return Err(DlqError::BadSelection("an empty message id".into()));
        }
        let reasons = reasons
            .iter()
            .map(|r| {
                if r.trim().is_empty() {
                    Err(DlqError::BadSelection(
                        "an empty reason text (it would match every reason)".into(),
                    ))
                } else {
                    Ok(r.to_lowercase())
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Selection {
            events,
            ids: ids.to_vec(),
            reasons,
        })
    }

    /// Whether everything is selected.
    pub fn is_all(&self) -> bool {
        self.events.is_empty() && self.ids.is_empty() && self.reasons.is_empty()
    }

    /// This selection for a delete, which must choose something: deleting every dead letter
    /// is `purge`'s, with its confirmation.
    pub fn for_delete(self) -> Result<Selection, DlqError> {
        if self.is_all() {
            return Err(DlqError::BadSelection(
                "a delete needs ids, events or reasons; to delete every dead letter, run `iniesta dlq purge --yes`".into(),
            ));
        }
        Ok(self)
    }

    /// The listed ids none of `seen` (the ids of the letters an action took) has.
    pub fn missing(&self, seen: &std::collections::HashSet<String>) -> Vec<String> {
        self.ids
            .iter()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect()
    }

    /// Whether this dead letter is selected.
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        let named = (self.ids.is_empty() && self.events.is_empty())
            || self.ids.contains(&letter.id)
            || self.events.iter().any(|p| p.matches(&letter.event));
        let reason = self.reasons.is_empty()
            || letter.reason.as_deref().is_some_and(|r| {
                let r = r.to_lowercase();
                self.reasons.iter().any(|text| r.contains(text.as_str()))
            });
        named && reason
    }
}

/// Which action a walk through the queue takes on the selected dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send back to the main queue, then remove from the DLQ.
    Redrive,
    /// Remove from the DLQ for good.
    Delete,
}

/// What a redrive or a delete did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ActionReport {
    /// Messages redriven (sent back to the main queue and removed from the DLQ) or deleted.
    pub done: u64,
    /// Messages looked at and left in the DLQ (not selected).
    pub kept: u64,
    /// Messages the action failed for, with why (they stay in the DLQ, unless the text says
    /// otherwise).
    pub failed: Vec<String>,
    /// Ids asked for by `--id` that the action did not find (gone already, or, on SQS, held
    /// invisible by another listing or action at the time).
    pub missing: Vec<String>,
}

impl ActionReport {
    /// Whether everything asked for was done.
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.missing.is_empty()
    }
}

/// What to list: dead letters a selection takes, one page of them.
#[derive(Debug, Clone)]
pub struct Query {
    /// Which dead letters.
    pub selection: Selection,
    /// How many matching ones to skip (in listing order).
    pub offset: usize,
    /// How many to return at most.
    pub limit: usize,
    /// How many dead letters to read at most (at least `offset + limit`; default: just that
    /// without a search, [`DEFAULT_SCAN`] with one); on SQS each one read is received and made
    /// visible again.
    pub scan: Option<usize>,
}

/// The most dead letters one search reads.
pub const MAX_SCAN: usize = 10_000;
/// How many dead letters a search (a selection) reads when no `scan` is given.
pub const DEFAULT_SCAN: usize = 1000;

/// One page of a search.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The page: at most `limit` matching dead letters from `offset` on.
    pub letters: Vec<DeadLetter>,
    /// How many of those read matched.
    pub matching: usize,
    /// How many dead letters were read.
    pub scanned: usize,
    /// Whether every dead letter was read (else the queue holds more than was read, or, on
    /// SQS, may: a FIFO queue shows one message per group, other listings hide what they
    /// hold; `matching` counts only those read).
    pub complete: bool,
}

/// Read up to `query.scan` dead letters (oldest first where the broker knows the order) and
/// return the page of those the selection takes.
pub async fn search(dlq: &dyn DeadLetterQueue, query: &Query) -> Result<Listing, DlqError> {
    let wanted = query.offset.saturating_add(query.limit);
    let scan = query
        .scan
        .unwrap_or(if query.selection.is_all() {
            wanted
        } else {
            DEFAULT_SCAN
        })
        .max(wanted)
        .clamp(1, MAX_SCAN);
    // What the queue held before the listing (its messages are invisible during it).
    let held = dlq.depth().await;
    // One more than asked: whether the queue holds more than `scan` is then known.
    let mut letters = dlq.list(scan + 1).await?;
    let complete = letters.len() <= scan
        && dlq.listing_sees_all()
        && held.is_none_or(|held| letters.len() as u64 >= held);
    letters.truncate(scan);
    Ok(page(letters, query, complete))
}

/// The page of `letters` (everything read) that `query` asks for.
fn page(letters: Vec<DeadLetter>, query: &Query, complete: bool) -> Listing {
    let scanned = letters.len();
    let matching: Vec<DeadLetter> = letters
        .into_iter()
        .filter(|l| query.selection.matches(l))
        .collect();
    let count = matching.len();
    Listing {
        letters: matching
            .into_iter()
            .skip(query.offset)
            .take(query.limit)
            .collect(),
        matching: count,
        scanned,
        complete,
    }
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
    /// A selection that cannot be meant (an empty id or reason text).
    #[error("bad selection: {0}")]
    BadSelection(String),
}

/// A service's dead-letter queue.
#[async_trait]
pub trait DeadLetterQueue: Send + Sync + 'static {
    /// Up to `limit` dead letters, oldest first where the broker knows the order.
    async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, DlqError>;

    /// Redrive or delete the selected dead letters. A redrive moves them back to the main
    /// queue, keeping body and attributes; each is removed from the DLQ only once it is on the
    /// main queue.
    async fn act(
        &self,
        action: Action,
        selection: &Selection,
        progress: &dyn Progress,
    ) -> Result<ActionReport, DlqError>;

    /// Delete every dead letter; returns how many.
    async fn purge(&self) -> Result<u64, DlqError>;

    /// How many dead letters the queue holds (on SQS approximately: visible plus in flight),
    /// when known.
    async fn depth(&self) -> Option<u64>;

    /// Whether a listing that runs dry has seen every dead letter (not on a FIFO queue on SQS,
    /// which hands out one message per group at a time).
    fn listing_sees_all(&self) -> bool {
        true
    }

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

    fn letter(id: &str, event: &str, reason: Option<&str>) -> DeadLetter {
        DeadLetter {
            id: id.into(),
            event: event.into(),
            receive_count: 1,
            first_seen_ms: None,
            last_seen_ms: None,
            reason: reason.map(str::to_string),
            body: Vec::new(),
            attributes: Attributes::default(),
        }
    }

    #[test]
    fn selection_by_glob_and_id() {
        let all = Selection::new(&[], &[], &[]).expect("ok");
        assert!(all.is_all());
        assert!(all.matches(&letter("x", "anything", None)));
        let some = Selection::new(&["Order.*".into()], &["m-7".into()], &[]).expect("ok");
        assert!(some.matches(&letter("m-1", "Order.Created.shop", None)));
        assert!(some.matches(&letter("m-7", "Invoice.Paid.shop", None)));
        assert!(!some.matches(&letter("m-2", "Invoice.Paid.shop", None)));
        assert!(Selection::new(&[String::new()], &[], &[]).is_err());
        assert!(Selection::new(&[], &[" ".into()], &[]).is_err());
    }

    #[test]
    fn a_reason_text_narrows_the_selection_ignoring_case() {
        let timeouts = Selection::new(&[], &[], &["TIMED OUT".into()]).expect("ok");
        assert!(!timeouts.is_all());
        assert!(timeouts.matches(&letter("a", "E", Some("handler timed out after 30s"))));
        assert!(!timeouts.matches(&letter("b", "E", Some("schema: missing field"))));
        assert!(
            !timeouts.matches(&letter("c", "E", None)),
            "no reason, no match"
        );
        // Events or ids first, then the reason: both must hold.
        let orders = Selection::new(&["Order.*".into()], &[], &["schema".into(), "timed".into()])
            .expect("ok");
        assert!(orders.matches(&letter("a", "Order.Paid", Some("schema: x"))));
        assert!(!orders.matches(&letter("a", "Invoice.Paid", Some("schema: x"))));
        assert!(!orders.matches(&letter("a", "Order.Paid", Some("refused"))));
        assert!(Selection::new(&[], &[], &["".into()]).is_err());
    }

    #[test]
    fn a_delete_must_choose_and_missing_ids_are_named() {
        assert!(Selection::new(&[], &[], &[])
            .expect("ok")
            .for_delete()
            .is_err());
        let some = Selection::new(&[], &["a".into(), "b".into()], &[])
            .expect("ok")
            .for_delete()
            .expect("ids choose");
        let seen: std::collections::HashSet<String> = ["a".to_string()].into();
        assert_eq!(some.missing(&seen), ["b"]);
    }

    #[test]
    fn a_page_counts_every_match_and_returns_its_slice() {
        let letters: Vec<DeadLetter> = (0..10)
            .map(|n| {
                let event = if n % 2 == 0 {
                    "Order.Paid"
                } else {
                    "Invoice.Sent"
                };
                letter(&format!("m-{n}"), event, Some("boom"))
            })
            .collect();
        let query = |events: &[String], offset, limit| Query {
            selection: Selection::new(events, &[], &[]).expect("ok"),
            offset,
            limit,
            scan: None,
        };
        let orders = page(letters.clone(), &query(&["Order.*".into()], 1, 2), true);
        assert_eq!(orders.matching, 5);
        assert_eq!(orders.scanned, 10);
        let ids: Vec<&str> = orders.letters.iter().map(|l| l.id.as_str()).collect();
        assert_eq!(ids, ["m-2", "m-4"]);
        let past_the_end = page(letters, &query(&[], 20, 5), false);
        assert_eq!(past_the_end.matching, 10);
        assert!(past_the_end.letters.is_empty());
    }

    #[test]
    fn previews_are_redacted_unless_shown() {
        assert_eq!(preview(b"secret", false, 10), "<6 bytes hidden>");
        assert_eq!(preview(b"a\nb", true, 10), "a\\nb");
        assert_eq!(preview(b"abcdef", true, 3), "abc…");
    }
}
