//! The SQS dead-letter queue.
//!
//! SQS has no peek, so `list` receives with a visibility timeout and then makes every message
//! it saw visible again at once (`ChangeMessageVisibility` to 0): the messages stay in the
//! DLQ, but while a listing runs they are invisible to other listers and redrives, and each
//! listing adds one to their receive count. A redrive receives ten at a time, sends the
//! chosen ones to the main queue in one `SendMessageBatch` with their bodies, attributes (less
//! `iniesta_dead_letter_reason`) and FIFO groups, and deletes from the DLQ, in one
//! `DeleteMessageBatch`, only those whose send succeeded; messages not chosen or not sent are
//! made visible again when it ends. A delete walks the queue the same way and deletes the
//! chosen ones in one `DeleteMessageBatch` per receive.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, Message, MessageSystemAttributeName,
};

use super::{
    event_of, Action, ActionReport, DeadLetter, DeadLetterQueue, DlqError, Progress, Selection,
};
use crate::broker::aws::{
    from_sqs_attributes, sdk_error, AwsBroker, DeadLetterOrigin, ToQueue, DEAD_LETTER_ORIGIN,
    DEAD_LETTER_REASON,
};
use crate::broker::BrokerError;
use crate::config::Config;
use crate::wire::{DeliveryContext, Outgoing};

/// How long messages stay invisible while a listing or redrive pages through the queue (s).
const HOLD_SECS: i32 = 120;

/// Split `chosen` (in order) into groups whose bodies and attributes fit one
/// `SendMessageBatch` (1 MiB); a letter too big for any batch goes alone (SQS answers for it).
fn within_batch_bytes(chosen: Vec<Taken>) -> Vec<Vec<Taken>> {
    let mut parts: Vec<Vec<Taken>> = Vec::new();
    let mut bytes = 0usize;
    for taken in chosen {
        let size = crate::wire::size_of(&taken.letter.body, &taken.letter.attributes);
        match parts.last_mut() {
            Some(part) if bytes + size <= crate::wire::MAX_SQS_BYTES => {
                bytes += size;
                part.push(taken);
            }
            _ => {
                bytes = size;
                parts.push(vec![taken]);
            }
        }
    }
    parts
}

/// The dead-letter queue on SQS.
pub struct AwsDlq {
    broker: AwsBroker,
    dlq: String,
    event_key: String,
    /// The topic whose envelopes the main queue receives (raw delivery off), if any.
    envelope_topic: Option<String>,
    fifo: bool,
}

/// A received DLQ message.
struct Taken {
    /// Its own id in the DLQ (`letter.id` is the original's when known).
    dlq_id: String,
    receipt: String,
    group: Option<String>,
    letter: DeadLetter,
}

impl AwsDlq {
    /// SQS clients for the config (no network call yet).
    pub async fn connect(config: &Config, dlq: String) -> AwsDlq {
        AwsDlq {
            broker: AwsBroker::connect(config).await,
            fifo: crate::broker::fifo::is_fifo(&dlq),
            dlq,
            event_key: config.sns.event_key.clone(),
            envelope_topic: config.envelope_topic().map(str::to_string),
        }
    }

    fn taken(&self, message: &Message) -> Option<Taken> {
        let id = message.message_id()?.to_string();
        let receipt = message.receipt_handle()?.to_string();
        let system = message.attributes();
        let number = |name: MessageSystemAttributeName| {
            system
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse::<u64>().ok())
        };
        let body = message.body().unwrap_or_default().as_bytes().to_vec();
        let attributes = from_sqs_attributes(message.message_attributes());
        let reason = attributes.get(DEAD_LETTER_REASON).map(|a| a.value.clone());
        let origin = attributes
            .get(DEAD_LETTER_ORIGIN)
            .and_then(|a| DeadLetterOrigin::decode(&a.value));
        let sent = number(MessageSystemAttributeName::SentTimestamp);
        // This receive is counted too; show the ones before it.
        let receives = number(MessageSystemAttributeName::ApproximateReceiveCount)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(1)
            .saturating_sub(1);
        // A copy iniesta dead-lettered was sent to the DLQ when it was dead-lettered, with its
        // origin (the original id, deliveries and send time) in an attribute; a message SQS
        // moved by its redrive policy keeps its id and original send time.
        let dlq_id = id;
        let (id, receive_count, first_seen_ms, last_seen_ms) = match (&origin, &reason) {
            (Some(origin), _) => (
                origin.message_id.clone(),
                origin.receive_count,
                Some(origin.sent_ms),
                sent,
            ),
            (None, Some(_)) => (dlq_id.clone(), receives, None, sent),
            (None, None) => (dlq_id.clone(), receives, sent, None),
        };
        let delivery = DeliveryContext {
            event_key: &self.event_key,
            envelope_topic: self.envelope_topic.as_deref(),
            // A letter is listed as it is kept: a claim check shows its pointer.
            claim_checks: false,
        };
        let event = event_of(&id, &body, &attributes, delivery);
        Some(Taken {
            dlq_id,
            receipt,
            group: system
                .filter(|_| self.fifo)
                .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                .cloned(),
            letter: DeadLetter {
                id,
                event,
                receive_count,
                first_seen_ms,
                last_seen_ms,
                reason,
                body,
                attributes,
            },
        })
    }

    async fn receive(&self, url: &str, max: usize) -> Result<Vec<Message>, BrokerError> {
        let out = self
            .broker
            .sqs()
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(i32::try_from(max.clamp(1, 10)).unwrap_or(10))
            .wait_time_seconds(1)
            .visibility_timeout(HOLD_SECS)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .map_err(|e| sdk_error("ReceiveMessage", e))?;
        Ok(out.messages().to_vec())
    }

    /// Make messages visible again at once; failures are only logged (they come back by
    /// themselves after the hold).
    async fn release(&self, url: &str, receipts: &[String]) {
        for chunk in receipts.chunks(10) {
            let mut request = self
                .broker
                .sqs()
                .change_message_visibility_batch()
                .queue_url(url);
            for (i, receipt) in chunk.iter().enumerate() {
                if let Ok(entry) = ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .visibility_timeout(0)
                    .build()
                {
                    request = request.entries(entry);
                }
            }
            match request.send().await {
                Ok(out) if out.failed().is_empty() => {}
                Ok(out) => {
                    tracing::warn!(failed = out.failed().len(), hold_secs = HOLD_SECS, "some dead letters could not be made visible again; they will be after the hold")
                }
                Err(e) => {
                    let e = sdk_error("ChangeMessageVisibilityBatch", e);
                    tracing::warn!(error = %e, hold_secs = HOLD_SECS, "dead letters could not be made visible again; they will be after the hold");
                }
            }
        }
    }

    /// Send `chosen` (at most ten) to the main queue in one call, then delete from the DLQ the
    /// ones sent; what was not sent stays in the DLQ (`keep`), and every failure is reported.
    async fn redrive_batch(
        &self,
        url: &str,
        main: &str,
        chosen: Vec<Taken>,
        report: &mut ActionReport,
        keep: &mut Vec<String>,
    ) {
        if chosen.is_empty() {
            return;
        }
        let outgoing: Vec<Outgoing> = chosen
            .iter()
            .map(|taken| {
                let mut attributes = taken.letter.attributes.clone();
                attributes.remove(DEAD_LETTER_REASON);
                attributes.remove(DEAD_LETTER_ORIGIN);
                Outgoing {
                    event: taken.letter.event.clone(),
                    body: taken.letter.body.clone(),
                    attributes,
                }
            })
            .collect();
        // On a FIFO queue, the DLQ copy's own id as the deduplication id: the original's may
        // still be in SQS's 5-minute window (SQS would accept the send and drop the message,
        // which is then deleted here), while a second redrive of this same copy (its delete
        // failed) is rightly dropped.
        let sends: Vec<ToQueue<'_>> = chosen
            .iter()
            .zip(&outgoing)
            .map(|(taken, message)| ToQueue {
                message,
                group: taken.group.as_deref(),
                deduplication_id: self.fifo.then_some(taken.dlq_id.as_str()),
            })
            .collect();
        let sent = match self.broker.send_batch_to_url(main, &sends).await {
            Ok(sent) => sent,
            Err(e) => {
                for taken in chosen {
                    report.failed.push(format!(
                        "{}: not sent, left in the DLQ: {e}",
                        taken.letter.id
                    ));
                    keep.push(taken.receipt);
                }
                return;
            }
        };
        let mut delivered = Vec::new();
        for (taken, result) in chosen.into_iter().zip(sent) {
            match result {
                Ok(new_id) => delivered.push((taken, new_id)),
                Err(e) => {
                    report.failed.push(format!(
                        "{}: not sent, left in the DLQ: {e}",
                        taken.letter.id
                    ));
                    keep.push(taken.receipt);
                }
            }
        }
        self.remove(
            url,
            delivered
                .into_iter()
                .map(|(taken, new_id)| (taken, Some(new_id)))
                .collect(),
            report,
            keep,
        )
        .await;
    }

    /// Delete `done` from the DLQ in `DeleteMessageBatch` calls and count each deleted one.
    /// Each comes with its new id on the main queue when a redrive sent it there (a failed
    /// delete is then reported as a possible duplicate); a deleted-only one that SQS refuses
    /// stays in the DLQ (`keep`).
    async fn remove(
        &self,
        url: &str,
        done: Vec<(Taken, Option<String>)>,
        report: &mut ActionReport,
        keep: &mut Vec<String>,
    ) {
        if done.is_empty() {
            return;
        }
        let receipts: Vec<String> = done.iter().map(|(t, _)| t.receipt.clone()).collect();
        let mut not_deleted = crate::broker::unsettled_by_receipt(
            self.broker.delete_batch_at(url, &receipts).await,
            &receipts,
        );
        for (taken, new_id) in done {
            match (not_deleted.remove(&taken.receipt), new_id) {
                (None, new_id) => {
                    tracing::debug!(message_id = %taken.letter.id, new_message_id = ?new_id, event = %taken.letter.event, "removed from the dead-letter queue");
                    report.done += 1;
                }
                (Some(e), Some(new_id)) => report.failed.push(format!(
                    "{}: sent to the main queue as {new_id} but not deleted from the dead-letter queue ({e}); it may be handled twice",
                    taken.letter.id
                )),
                (Some(e), None) => {
                    report.failed.push(format!(
                        "{}: not deleted, left in the DLQ: {e}",
                        taken.letter.id
                    ));
                    keep.push(taken.receipt);
                }
            }
        }
    }
}

#[async_trait]
impl DeadLetterQueue for AwsDlq {
    async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, DlqError> {
        let url = self.broker.url_of(&self.dlq).await?;
        let mut letters: Vec<DeadLetter> = Vec::new();
        let mut seen = HashSet::new();
        let mut receipts = Vec::new();
        let result = async {
            while letters.len() < limit {
                let batch = self.receive(&url, limit - letters.len()).await?;
                if batch.is_empty() {
                    break;
                }
                for message in &batch {
                    let Some(taken) = self.taken(message) else {
                        continue;
                    };
                    receipts.push(taken.receipt);
                    // Seen before when its hold ran out during a long listing.
                    if seen.insert(taken.dlq_id) {
                        letters.push(taken.letter);
                    }
                }
            }
            Ok::<(), BrokerError>(())
        }
        .await;
        // Whatever happened, what was taken goes back at once.
        self.release(&url, &receipts).await;
        result?;
        letters.sort_by_key(|l| (l.first_seen_ms.or(l.last_seen_ms), l.id.clone()));
        Ok(letters)
    }

    async fn act(
        &self,
        action: Action,
        selection: &Selection,
        progress: &dyn Progress,
    ) -> Result<ActionReport, DlqError> {
        let url = self.broker.url_of(&self.dlq).await?;
        // The main queue, where a redrive sends to (a delete needs none).
        let main = match action {
            Action::Redrive => self.broker.queue_url().await?.to_string(),
            Action::Delete => String::new(),
        };
        if let Some(total) = self.depth().await {
            progress.total(total);
        }
        let mut report = ActionReport::default();
        let mut keep: Vec<String> = Vec::new();
        let mut seen: HashMap<String, ()> = HashMap::new();
        let mut taken_ids = HashSet::new();
        let result = async {
            loop {
                let batch = self.receive(&url, 10).await?;
                if batch.is_empty() {
                    break;
                }
                let mut new = 0;
                let mut chosen = Vec::new();
                for message in &batch {
                    let Some(taken) = self.taken(message) else {
                        continue;
                    };
                    if seen.insert(taken.dlq_id.clone(), ()).is_some() {
                        // Seen before (its hold ran out during a long redrive): leave it.
                        keep.push(taken.receipt);
                        continue;
                    }
                    new += 1;
                    progress.advance(1);
                    if !selection.matches(&taken.letter) {
                        report.kept += 1;
                        keep.push(taken.receipt);
                        continue;
                    }
                    taken_ids.insert(taken.letter.id.clone());
                    chosen.push(taken);
                }
                match action {
                    // One call per group of letters within SendMessageBatch's 1 MiB.
                    Action::Redrive => {
                        for part in within_batch_bytes(chosen) {
                            self.redrive_batch(&url, &main, part, &mut report, &mut keep)
                                .await;
                        }
                    }
                    Action::Delete => {
                        let chosen = chosen.into_iter().map(|t| (t, None)).collect();
                        self.remove(&url, chosen, &mut report, &mut keep).await
                    }
                }
                if new == 0 {
                    break;
                }
            }
            Ok::<(), BrokerError>(())
        }
        .await;
        self.release(&url, &keep).await;
        result?;
        report.missing = selection.missing(&taken_ids);
        tracing::info!(?action, done = report.done, kept = report.kept, failed = report.failed.len(), dead_letter_queue = %self.dlq, "dead-letter action finished");
        Ok(report)
    }

    async fn purge(&self) -> Result<u64, DlqError> {
        let url = self.broker.url_of(&self.dlq).await?;
        let mut deleted = 0u64;
        loop {
            let batch = self.receive(&url, 10).await?;
            if batch.is_empty() {
                break;
            }
            let receipts: Vec<String> = batch
                .iter()
                .filter_map(|m| m.receipt_handle().map(str::to_string))
                .collect();
            let failures = self.broker.delete_batch_at(&url, &receipts).await?;
            deleted += (receipts.len() - failures.len()) as u64;
        }
        tracing::info!(deleted, dead_letter_queue = %self.dlq, "dead-letter queue purged");
        Ok(deleted)
    }

    async fn depth(&self) -> Option<u64> {
        use crate::broker::Broker as _;
        let depth = self.broker.depth(Some(&self.dlq)).await.ok()?;
        Some(depth.visible + depth.in_flight + depth.delayed)
    }

    fn listing_sees_all(&self) -> bool {
        !self.fifo
    }

    fn describe(&self) -> String {
        format!("dead-letter queue {} on SQS", self.dlq)
    }
}
