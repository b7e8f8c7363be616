//! The local broker's dead-letter queue: the same SQLite tables the broker uses.
//!
//! A redrive moves rows back to the main queue in one transaction per batch (so a message is
//! never in both queues, nor in neither), visible at once, with its body, attributes and FIFO
//! group kept and its receive count reset, as SQS counts a redriven message as a new one. A
//! delete removes the selected rows, in one transaction per batch too.

use async_trait::async_trait;
use rusqlite::{params, TransactionBehavior};

use super::{
    event_of, Action, ActionReport, DeadLetter, DeadLetterQueue, DlqError, Progress, Selection,
};
use crate::broker::local::{Db, LocalBroker};
use crate::config::Config;
use crate::wire::DeliveryContext;

/// Rows moved per transaction.
const BATCH: usize = 100;

/// The dead-letter queue in the local broker's file.
pub struct LocalDlq {
    db: Db,
    queue: String,
    dlq: String,
    event_key: String,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn ms(value: Option<i64>) -> Option<u64> {
    value.and_then(|v| u64::try_from(v).ok())
}

/// A stored dead letter with its row number.
struct Row {
    seq: i64,
    letter: DeadLetter,
}

impl LocalDlq {
    /// Open the broker file (creating this service's queues, as the broker does).
    pub async fn open(config: &Config, dlq: String) -> Result<LocalDlq, DlqError> {
        let broker = LocalBroker::open(config).await?;
        Ok(LocalDlq {
            db: broker.db().clone(),
            queue: broker.queue().to_string(),
            dlq,
            event_key: config.sns.event_key.clone(),
        })
    }

    async fn rows(&self, limit: Option<usize>) -> Result<Vec<Row>, DlqError> {
        let dlq = self.dlq.clone();
        let limit = limit
            .map(|l| i64::try_from(l).unwrap_or(i64::MAX))
            .unwrap_or(-1);
        let rows = self
            .db
            .call(move |conn| {
                let mut stmt = conn.prepare(
                    "SELECT seq, id, body, attributes, receive_count, sent_ms, first_receive_ms,
                            last_receive_ms, dead_lettered_ms, dead_letter_reason
                     FROM messages WHERE queue = ?1 ORDER BY seq LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![dlq, limit], |r| {
                    let attributes: String = r.get(3)?;
                    let sent: Option<i64> = r.get(5)?;
                    let first: Option<i64> = r.get(6)?;
                    let last: Option<i64> = r.get(7)?;
                    let dead: Option<i64> = r.get(8)?;
                    Ok(Row {
                        seq: r.get(0)?,
                        letter: DeadLetter {
                            id: r.get(1)?,
                            event: String::new(),
                            receive_count: r.get(4)?,
                            first_seen_ms: ms(first.or(sent)),
                            last_seen_ms: ms(last.max(dead).or(first)),
                            reason: r.get(9)?,
                            body: r.get(2)?,
                            attributes: serde_json::from_str(&attributes).unwrap_or_default(),
                        },
                    })
                })?;
                rows.collect::<rusqlite::Result<Vec<Row>>>()
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|mut row| {
                row.letter.event = event_of(
                    &row.letter.id,
                    &row.letter.body,
                    &row.letter.attributes,
                    DeliveryContext::raw(&self.event_key),
                );
                row
            })
            .collect())
    }
}

#[async_trait]
impl DeadLetterQueue for LocalDlq {
    async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, DlqError> {
        Ok(self
            .rows(Some(limit))
            .await?
            .into_iter()
            .map(|r| r.letter)
            .collect())
    }

    async fn act(
        &self,
        action: Action,
        selection: &Selection,
        progress: &dyn Progress,
    ) -> Result<ActionReport, DlqError> {
        let rows = self.rows(None).await?;
        progress.total(rows.len() as u64);
        let mut report = ActionReport::default();
        let mut chosen = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for row in &rows {
            if selection.matches(&row.letter) {
                chosen.push(row.seq);
                seen.insert(row.letter.id.clone());
            } else {
                report.kept += 1;
                progress.advance(1);
            }
        }
        for batch in chosen.chunks(BATCH) {
            let (seqs, queue, dlq) = (batch.to_vec(), self.queue.clone(), self.dlq.clone());
            let done = self
                .db
                .call(move |conn| {
                    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let now = now_ms();
                    let mut done = 0u64;
                    for seq in seqs {
                        // Only if it is still in the DLQ (another operator may have taken it).
                        done += match action {
                            Action::Redrive => tx.execute(
                                "UPDATE messages SET queue = ?1, visible_ms = ?2, receipt = NULL,
                                    receive_count = 0, first_receive_ms = NULL, last_receive_ms = NULL,
                                    dead_letter_reason = NULL, dead_lettered_ms = NULL
                                 WHERE seq = ?3 AND queue = ?4",
                                params![queue, now, seq, dlq],
                            )?,
                            Action::Delete => tx.execute(
                                "DELETE FROM messages WHERE seq = ?1 AND queue = ?2",
                                params![seq, dlq],
                            )?,
                        } as u64;
                    }
                    tx.commit()?;
                    Ok(done)
                })
                .await?;
            let gone = batch.len() as u64 - done;
            if gone > 0 {
                report.failed.push(format!(
                    "{gone} message(s) were no longer in the dead-letter queue"
                ));
            }
            report.done += done;
            progress.advance(batch.len() as u64);
        }
        report.missing = selection.missing(&seen);
        tracing::info!(?action, done = report.done, kept = report.kept, missing = report.missing.len(), dead_letter_queue = %self.dlq, queue = %self.queue, "dead-letter action finished");
        Ok(report)
    }

    async fn purge(&self) -> Result<u64, DlqError> {
        let dlq = self.dlq.clone();
        let deleted = self
            .db
            .call(move |conn| conn.execute("DELETE FROM messages WHERE queue = ?1", params![dlq]))
            .await?;
        tracing::info!(deleted, dead_letter_queue = %self.dlq, "dead-letter queue purged");
        Ok(deleted as u64)
    }

    async fn depth(&self) -> Option<u64> {
        let dlq = self.dlq.clone();
        self.db
            .call(move |conn| {
                conn.query_row(
                    "SELECT COUNT(*) FROM messages WHERE queue = ?1",
                    params![dlq],
                    |r| r.get::<_, i64>(0),
                )
            })
            .await
            .ok()
            .and_then(|n| u64::try_from(n).ok())
    }

    fn describe(&self) -> String {
        format!(
            "dead-letter queue {} of the local broker {}",
            self.dlq,
            self.db.path().display()
        )
    }
}
