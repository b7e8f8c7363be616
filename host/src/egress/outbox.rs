//! The durable outbox: events an egress could not take, kept per egress in one SQLite file
//! until they are delivered.
//!
//! A row is one (egress, event) pair. It is written before `publish` returns when the egress
//! failed, so neither a crash nor a restart loses it. Any process with the same config (a
//! running host, the next `iniesta publish`) delivers it: a row is leased before each attempt
//! so two processes do not send it at once, and deleted once the egress took it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection};

use crate::wire::{Attributes, Outgoing};

/// Outbox failures.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The SQLite file failed.
    #[error("outbox {path}: {source}")]
    Sqlite {
        /// The database file.
        path: String,
        /// The cause.
        source: rusqlite::Error,
    },
    /// The directory could not be created.
    #[error("outbox: cannot create {path}: {source}")]
    Dir {
        /// The directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The blocking task failed.
    #[error("outbox worker failed: {0}")]
    Worker(String),
}

/// One event waiting for one egress.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Row id (order of arrival).
    pub seq: i64,
    /// The egress's name.
    pub egress: String,
    /// The event's id (the same for every egress and every attempt).
    pub event_id: String,
    /// The message.
    pub message: Outgoing,
    /// Attempts so far.
    pub attempts: u32,
}

/// Per egress: how many events wait, and the last error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    /// The egress's name.
    pub egress: String,
    /// Events waiting.
    pub pending: u64,
    /// The most attempts any of them has had.
    pub max_attempts: u32,
    /// The latest error text.
    pub last_error: Option<String>,
}

/// The outbox file.
#[derive(Clone)]
pub struct Outbox {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Outbox {
    /// Open (creating) the outbox at `path`.
    pub fn open(path: &Path) -> Result<Outbox, OutboxError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| OutboxError::Dir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let err = |source| OutboxError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        // Several processes (`run`, each `publish`) may open a fresh file at once: the WAL
        // switch does not wait on the busy handler, so it is retried like the broker's.
        crate::sqlite::enable_wal(&conn).map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS outbox (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                egress TEXT NOT NULL,
                event_id TEXT NOT NULL,
                event TEXT NOT NULL,
                body BLOB NOT NULL,
                attributes TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                next_attempt_at INTEGER NOT NULL DEFAULT 0,
                leased_until INTEGER NOT NULL DEFAULT 0,
                last_error TEXT
            );
            CREATE INDEX IF NOT EXISTS outbox_by_egress ON outbox (egress, seq);",
        )
        .map_err(err)?;
        Ok(Outbox {
            path: path.to_path_buf(),
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, OutboxError> {
        let conn = self.conn.clone();
        let path = self.path.display().to_string();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| OutboxError::Worker("outbox lock poisoned".into()))?;
            f(&mut conn).map_err(|source| OutboxError::Sqlite { path, source })
        })
        .await
        .map_err(|e| OutboxError::Worker(e.to_string()))?
    }

    /// Keep `message` for each of `egresses` (name, last error — none when it was not tried;
    /// one transaction) after `attempts` failed attempts, due after `retry_after`.
    pub async fn put(
        &self,
        egresses: Vec<(String, Option<String>)>,
        event_id: &str,
        message: &Outgoing,
        attempts: u32,
        retry_after: Duration,
    ) -> Result<(), OutboxError> {
        let event_id = event_id.to_string();
        let event = message.event.clone();
        let body = message.body.clone();
        let attributes = serde_json::to_string(&message.attributes).unwrap_or_default();
        self.with(move |conn| {
            let now = now_ms();
            let due = now + retry_after.as_millis() as i64;
            // Immediate: take the write lock up front, so a concurrent drainer waits (busy
            // timeout) instead of failing when its read turns into a write.
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for (egress, error) in &egresses {
                // Never due before the rows already waiting for this egress: they go first.
                tx.execute(
                    "INSERT INTO outbox (egress, event_id, event, body, attributes, created_at, attempts, next_attempt_at, last_error)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7,
                             MAX(?8, COALESCE((SELECT MAX(next_attempt_at) FROM outbox WHERE egress = ?1), 0)), ?9)",
                    params![egress, event_id, event, body, attributes, now, attempts, due, error],
                )?;
            }
            tx.commit()
        })
        .await
    }

    /// Lease the oldest row of `egress` that is due (or every unleased row when `due_only` is
    /// false) for `lease`; `None` when there is none.
    pub async fn lease_next(
        &self,
        egress: &str,
        due_only: bool,
        lease: Duration,
    ) -> Result<Option<Pending>, OutboxError> {
        Ok(self.lease(egress, due_only, lease, 1).await?.pop())
    }

    /// Lease up to `max` of the oldest rows of `egress` that are due (or every unleased row
    /// when `due_only` is false) for `lease`, oldest first, in one transaction.
    pub async fn lease(
        &self,
        egress: &str,
        due_only: bool,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<Pending>, OutboxError> {
        let egress = egress.to_string();
        let max = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
        self.with(move |conn| {
            let now = now_ms();
            // Immediate: take the write lock up front, so a concurrent drainer waits (busy
            // timeout) instead of failing when its read turns into a write.
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let rows = {
                let mut stmt = tx.prepare(
                    "SELECT seq, event_id, event, body, attributes, attempts FROM outbox
                     WHERE egress = ?1 AND leased_until <= ?2 AND (?3 = 0 OR next_attempt_at <= ?2)
                     ORDER BY seq LIMIT ?4",
                )?;
                let rows = stmt.query_map(params![egress, now, i64::from(due_only), max], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, u32>(5)?,
                    ))
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            };
            let mut leased = Vec::with_capacity(rows.len());
            for (seq, event_id, event, body, attributes, attempts) in rows {
                tx.execute(
                    "UPDATE outbox SET leased_until = ?1 WHERE seq = ?2",
                    params![now + lease.as_millis() as i64, seq],
                )?;
                let attributes: Attributes = serde_json::from_str(&attributes).unwrap_or_default();
                leased.push(Pending {
                    seq,
                    egress: egress.clone(),
                    event_id,
                    message: Outgoing {
                        event,
                        body,
                        attributes,
                    },
                    attempts,
                });
            }
            tx.commit()?;
            Ok(leased)
        })
        .await
    }

    /// The egress took the row: remove it.
    pub async fn delivered(&self, seq: i64) -> Result<(), OutboxError> {
        self.with(move |conn| {
            conn.execute("DELETE FROM outbox WHERE seq = ?1", params![seq])
                .map(|_| ())
        })
        .await
    }

    /// Another attempt failed: count it, keep the error, and make the row due after
    /// `retry_after`; the egress's other rows wait at least as long (it is down).
    pub async fn failed(
        &self,
        pending: &Pending,
        error: &str,
        retry_after: Duration,
    ) -> Result<(), OutboxError> {
        let error = error.to_string();
        let (seq, egress) = (pending.seq, pending.egress.clone());
        self.with(move |conn| {
            let due = now_ms() + retry_after.as_millis() as i64;
            // Immediate: take the write lock up front, so a concurrent drainer waits (busy
            // timeout) instead of failing when its read turns into a write.
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = MAX(next_attempt_at, ?1), leased_until = 0, last_error = ?2 WHERE seq = ?3",
                params![due, error, seq],
            )?;
            tx.execute(
                "UPDATE outbox SET next_attempt_at = ?1 WHERE egress = ?2 AND next_attempt_at < ?1",
                params![due, egress],
            )?;
            tx.commit()
        })
        .await
    }

    /// Which of `egresses` have events waiting (one index lookup each, however long the
    /// backlog: a publish asks this every time).
    pub async fn backlogged(&self, egresses: Vec<String>) -> Result<Vec<String>, OutboxError> {
        self.with(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM outbox WHERE egress = ?1)")?;
            let mut found = Vec::new();
            for egress in egresses {
                if stmt.query_row(params![egress], |r| r.get::<_, bool>(0))? {
                    found.push(egress);
                }
            }
            Ok(found)
        })
        .await
    }

    /// Every egress with events waiting: how many, and when the next is due.
    pub async fn waiting(&self) -> Result<Vec<Waiting>, OutboxError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT egress, COUNT(*), MIN(MAX(next_attempt_at, leased_until)) FROM outbox GROUP BY egress",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(Waiting {
                    egress: r.get(0)?,
                    pending: r.get::<_, i64>(1)? as u64,
                    next_due_ms: r.get(2)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// What waits, per egress.
    pub async fn backlog(&self) -> Result<Vec<Backlog>, OutboxError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT egress, COUNT(*), MAX(attempts),
                        (SELECT last_error FROM outbox o2 WHERE o2.egress = o.egress AND last_error IS NOT NULL ORDER BY seq DESC LIMIT 1)
                 FROM outbox o GROUP BY egress ORDER BY egress",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(Backlog {
                    egress: r.get(0)?,
                    pending: r.get::<_, i64>(1)? as u64,
                    max_attempts: r.get(2)?,
                    last_error: r.get(3)?,
                })
            })?;
            rows.collect()
        })
        .await
    }
}

/// Events waiting for one egress (see [`Outbox::waiting`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// The egress's name.
    pub egress: String,
    /// How many events wait for it.
    pub pending: u64,
    /// When the next one is due (ms since the epoch).
    pub next_due_ms: i64,
}

/// Milliseconds since the epoch, as the outbox stores times.
pub fn epoch_ms() -> i64 {
    now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Attribute;

    fn message(event: &str) -> Outgoing {
        let mut attributes = Attributes::new();
        attributes.insert("k".into(), Attribute::string("v"));
        Outgoing {
            event: event.into(),
            body: b"{}".to_vec(),
            attributes,
        }
    }

    /// Many connections open one fresh outbox file at the same moment (as `run` and several
    /// `publish` do): every open succeeds. The switch to WAL answers "database is locked" at
    /// once, without the busy handler, while another connection holds the file.
    #[test]
    fn many_opens_of_a_fresh_file_at_once_all_succeed() {
        const OPENERS: usize = 32;
        for round in 0..100 {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("outbox.db");
            let gate = std::sync::Arc::new(std::sync::Barrier::new(OPENERS));
            let openers: Vec<_> = (0..OPENERS)
                .map(|_| {
                    let (path, gate) = (path.clone(), gate.clone());
                    std::thread::spawn(move || {
                        gate.wait();
                        Outbox::open(&path).map(drop).map_err(|e| e.to_string())
                    })
                })
                .collect();
            for opener in openers {
                let opened = opener.join().expect("opener thread");
                assert!(opened.is_ok(), "round {round}: {opened:?}");
            }
        }
    }

    #[tokio::test]
    async fn rows_are_leased_in_order_held_back_together_and_removed_once_delivered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = Outbox::open(&dir.path().join("sub/outbox.db")).expect("opens");
        let now = Duration::ZERO;
        for (id, event) in [("e1", "A"), ("e2", "B")] {
            outbox
                .put(
                    vec![("x".into(), Some("down".into()))],
                    id,
                    &message(event),
                    3,
                    now,
                )
                .await
                .expect("put");
        }
        let lease = Duration::from_secs(60);
        let first = outbox
            .lease_next("x", true, lease)
            .await
            .expect("ok")
            .expect("A");
        assert_eq!((first.event_id.as_str(), first.attempts), ("e1", 3));
        assert_eq!(first.message, message("A"));
        // A leased row is not handed out again; the next one is.
        let second = outbox
            .lease_next("x", true, lease)
            .await
            .expect("ok")
            .expect("B");
        assert_eq!(second.event_id, "e2");
        assert!(outbox
            .lease_next("x", false, lease)
            .await
            .expect("ok")
            .is_none());
        assert!(outbox
            .lease_next("other", false, lease)
            .await
            .expect("ok")
            .is_none());
        // A failure pushes the egress's whole backlog back.
        outbox
            .failed(&first, "still down", Duration::from_secs(60))
            .await
            .expect("failed");
        outbox
            .failed(&second, "still down", Duration::ZERO)
            .await
            .expect("failed");
        assert!(outbox
            .lease_next("x", true, lease)
            .await
            .expect("ok")
            .is_none());
        // ...but not for a drain that ignores the schedule (`iniesta publish`).
        let again = outbox
            .lease_next("x", false, lease)
            .await
            .expect("ok")
            .expect("A");
        assert_eq!((again.event_id.as_str(), again.attempts), ("e1", 4));
        outbox.delivered(again.seq).await.expect("delivered");
        let backlog = outbox.backlog().await.expect("backlog");
        assert_eq!(backlog.len(), 1);
        assert_eq!(backlog[0].pending, 1);
        assert_eq!(backlog[0].last_error.as_deref(), Some("still down"));
    }

    #[tokio::test]
    async fn a_row_put_behind_a_backlog_is_never_due_before_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = Outbox::open(&dir.path().join("outbox.db")).expect("opens");
        assert!(outbox.waiting().await.expect("waiting").is_empty());
        let down = || vec![("x".to_string(), Some("down".to_string()))];
        outbox
            .put(down(), "e1", &message("A"), 3, Duration::from_secs(60))
            .await
            .expect("put");
        // Due now by itself, but queued behind A: due with A, and handed out after it.
        outbox
            .put(down(), "e2", &message("B"), 0, Duration::ZERO)
            .await
            .expect("put");
        let waiting = outbox.waiting().await.expect("waiting");
        assert_eq!(waiting.len(), 1);
        assert_eq!((waiting[0].egress.as_str(), waiting[0].pending), ("x", 2));
        assert!(waiting[0].next_due_ms > epoch_ms() + 50_000, "{waiting:?}");
        let lease = Duration::from_secs(60);
        assert!(
            outbox
                .lease_next("x", true, lease)
                .await
                .expect("ok")
                .is_none(),
            "B is not due before A"
        );
        let first = outbox
            .lease_next("x", false, lease)
            .await
            .expect("ok")
            .expect("A first");
        assert_eq!(first.event_id, "e1");
        // Another egress's rows are its own.
        outbox
            .put(
                vec![("y".into(), Some("down".into()))],
                "e3",
                &message("C"),
                1,
                Duration::ZERO,
            )
            .await
            .expect("put");
        let waiting = outbox.waiting().await.expect("waiting");
        let y = waiting.iter().find(|w| w.egress == "y").expect("y waits");
        assert!(y.next_due_ms <= epoch_ms(), "{waiting:?}");
    }
}
