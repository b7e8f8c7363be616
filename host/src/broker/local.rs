//! The embedded local broker: SNS topic, SQS queues and their semantics in one SQLite file.
//!
//! It keeps what AWS gives a consumer: a topic fans out to subscribed queues through filter
//! policies (the same [`crate::filter`] code that predicts SNS), queues have a visibility
//! timeout, a delivery delay, a receive count and a dead-letter queue after
//! `max_receive_count`, and deliveries are settled by receipt handle. Several processes can
//! share the file at once (WAL mode, immediate transactions), so `iniesta publish` in one
//! terminal reaches `iniesta run` in another.
//!
//! Queues whose name ends in `.fifo` behave like SQS FIFO queues: messages carry a group id
//! ([`super::fifo`]), a group with a message in flight delivers nothing else until that
//! message is settled or visible again, and a deduplication id seen on the queue within the
//! last five minutes makes a send return the first message's id without storing a copy.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio_util::sync::CancellationToken;

use super::fifo::{is_fifo, FifoSettings};
use super::{Broker, BrokerError, DeleteFailure, QueueDepth, Received};
use crate::config::{Config, InitializationType};
use crate::filter::{FilterPolicy, Scope};
use crate::wire::{Attributes, Outgoing};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS topics (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    visibility_timeout INTEGER NOT NULL,
    delay_seconds INTEGER NOT NULL DEFAULT 0,
    dead_letter_queue TEXT,
    max_receive_count INTEGER NOT NULL DEFAULT 5
);
CREATE TABLE IF NOT EXISTS subscriptions (
    topic TEXT NOT NULL,
    queue TEXT NOT NULL,
    filter_policy TEXT,
    filter_scope TEXT NOT NULL DEFAULT 'MessageAttributes',
    PRIMARY KEY (topic, queue)
);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    attributes TEXT NOT NULL,
    sent_ms INTEGER NOT NULL,
    visible_ms INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    first_receive_ms INTEGER,
    receipt TEXT,
    dead_letter_reason TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_queue ON messages (queue, visible_ms, seq);
CREATE INDEX IF NOT EXISTS messages_in_order ON messages (queue, seq);
CREATE TABLE IF NOT EXISTS fifo_dedup (
    queue TEXT NOT NULL,
    dedup_id TEXT NOT NULL,
    id TEXT NOT NULL,
    sent_ms INTEGER NOT NULL,
    PRIMARY KEY (queue, dedup_id)
);
";

/// The next visible messages of queue `?1` at time `?2`, oldest first, at most `?3`.
///
/// A FIFO group with a message in flight (received, not yet visible again)
/// delivers nothing else until that message is settled.
///
/// `+visible_ms` keeps SQLite from using `messages_by_queue` here: that range
/// (every visible message) then needs a sort by `seq`, which makes each receive
/// O(backlog). Walking `messages_in_order` instead stops after `?3` rows, skipping
/// only the messages in flight or delayed at the head. The subquery reads only
/// the messages in flight (`visible_ms > ?2`) and runs once per statement.
const RECEIVE_SQL: &str =
    "SELECT seq, id, body, attributes, sent_ms, receive_count, group_id FROM messages
     WHERE queue = ?1 AND +visible_ms <= ?2
       AND (group_id IS NULL OR group_id NOT IN (
            SELECT group_id FROM messages WHERE queue = ?1 AND group_id IS NOT NULL
              AND receipt IS NOT NULL AND visible_ms > ?2))
     ORDER BY seq LIMIT ?3";

/// How long a FIFO deduplication id is remembered (the SQS interval).
const DEDUP_WINDOW_MS: i64 = 5 * 60 * 1000;

/// The schema version this build writes into `PRAGMA user_version`. Files created before
/// versions were recorded read 0; raise it whenever [`SCHEMA`] or [`migrate`] changes.
pub const SCHEMA_VERSION: i64 = 1;

/// Create the schema and bring an older file up to [`SCHEMA_VERSION`], in one `IMMEDIATE`
/// transaction: several processes may open a fresh file at the same moment, and the write lock
/// taken up front (waiting out the busy timeout) makes each one see either no schema or all of
/// it, never half a migration. Every step is idempotent, so a file another process has just
/// migrated needs nothing more. Returns the version found before (a file of a newer version
/// is left as it is).
fn create_or_migrate(conn: &mut Connection) -> rusqlite::Result<i64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found < SCHEMA_VERSION {
        tx.execute_batch(SCHEMA)?;
        migrate(&tx)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()?;
    Ok(found)
}

/// Columns added after the first release, for files created before them (a no-op for a
/// file that has them). Runs inside [`create_or_migrate`]'s transaction.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    // For FIFO queues; for `iniesta dlq list`: when a message was last delivered and when it
    // was dead-lettered.
    for (column, kind) in [
        ("group_id", "TEXT"),
        ("last_receive_ms", "INTEGER"),
        ("dead_lettered_ms", "INTEGER"),
    ] {
        let has: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('messages') WHERE name = ?1")?
            .exists(params![column])?;
        if !has {
            conn.execute_batch(&format!("ALTER TABLE messages ADD COLUMN {column} {kind};"))?;
        }
    }
    Ok(())
}

/// A queue's settings as the local broker stores them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    /// Seconds a received message stays invisible.
    pub visibility_timeout: u32,
    /// Seconds before a new message is first visible.
    pub delay_seconds: u32,
    /// Where messages go after `max_receive_count` deliveries.
    pub dead_letter_queue: Option<String>,
    /// Deliveries before redrive to the dead-letter queue.
    pub max_receive_count: u32,
}

/// A message as stored, for inspection (tests, operators).
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Message id.
    pub id: String,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Attributes.
    pub attributes: Attributes,
    /// Deliveries so far.
    pub receive_count: u32,
    /// Why it was dead-lettered, if it was.
    pub dead_letter_reason: Option<String>,
    /// Whether it is visible now.
    pub visible: bool,
}

/// The local broker, bound to one service's topic and queue.
pub struct LocalBroker {
    db: Db,
    topic: Option<String>,
    queue: String,
    dead_letter_queue: Option<String>,
    fifo: FifoSettings,
    clock: Clock,
}

/// A shared SQLite connection used from blocking threads.
#[derive(Clone)]
pub struct Db {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

/// The system clock: milliseconds since the Unix epoch.
fn system_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Where the local broker reads the time it stores and compares (send times, visibility,
/// FIFO deduplication windows, dead-lettering), in milliseconds since the Unix epoch.
///
/// Production uses the system clock. Tests use [`Clock::manual`] and move it with
/// [`Clock::advance`], so a visibility timeout expires when the test says so, not after a
/// real wait; or [`Clock::tokio`], which follows tokio's (pausable) clock, so a test on a
/// paused runtime covers visibility timeouts in no real time.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// `SystemTime::now()`.
    #[default]
    System,
    /// A time that moves only when [`Clock::advance`] is called (shared by its clones).
    Manual(Arc<AtomicI64>),
    /// The system time at creation plus the time tokio's clock has moved since.
    Tokio {
        /// Milliseconds since the Unix epoch when the clock was created.
        base_ms: i64,
        /// Tokio's instant at creation.
        start: tokio::time::Instant,
    },
}

impl Clock {
    /// A manual clock starting at the system clock's now.
    pub fn manual() -> Clock {
        Clock::Manual(Arc::new(AtomicI64::new(system_now_ms())))
    }

    /// A clock following tokio's: on a paused runtime (`start_paused`) it moves when tokio's
    /// time is advanced (automatically when the runtime is idle, or by `advance`).
    pub fn tokio() -> Clock {
        Clock::Tokio {
            base_ms: system_now_ms(),
            start: tokio::time::Instant::now(),
        }
    }

    /// Move a manual clock forward by `by` (the system and tokio clocks move by themselves:
    /// no effect).
    pub fn advance(&self, by: Duration) {
        if let Clock::Manual(now) = self {
            let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
            now.fetch_add(by, Ordering::SeqCst);
        }
    }

    /// Now, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => system_now_ms(),
            Clock::Manual(now) => now.load(Ordering::SeqCst),
            Clock::Tokio { base_ms, start } => {
                let elapsed = i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX);
                base_ms.saturating_add(elapsed)
            }
        }
    }
}

impl Db {
    /// Open (creating) the database file and its schema.
    pub fn open(path: &Path) -> Result<Db, BrokerError> {
        let err = |source| BrokerError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| BrokerError::Sqlite {
                    path: path.display().to_string(),
                    source: rusqlite::Error::InvalidPath(PathBuf::from(format!(
                        "cannot create {}: {e}",
                        parent.display()
                    ))),
                })?;
            }
        }
        let mut conn = Connection::open(path).map_err(err)?;
        // Before anything that takes a lock: other processes may be opening the same file.
        conn.busy_timeout(crate::sqlite::BUSY_TIMEOUT)
            .map_err(err)?;
        crate::sqlite::enable_wal(&conn).map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        let found = create_or_migrate(&mut conn).map_err(err)?;
        if found > SCHEMA_VERSION {
            return Err(BrokerError::NewerSchema {
                path: path.display().to_string(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found < SCHEMA_VERSION {
            tracing::debug!(path = %path.display(), from = found, to = SCHEMA_VERSION, "local broker schema created or migrated");
        }
        Ok(Db {
            path: path.to_path_buf(),
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Run `f` on the connection in a blocking thread.
    pub async fn call<T, F>(&self, f: F) -> Result<T, BrokerError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        let path = self.path.display().to_string();
        tokio::task::spawn_blocking(move || {
            let mut guard = crate::mutex::lock(&conn);
            f(&mut guard)
        })
        .await
        .map_err(|e| BrokerError::Worker(e.to_string()))?
        .map_err(|source| BrokerError::Sqlite { path, source })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn encode_attributes(attributes: &Attributes) -> String {
    serde_json::to_string(attributes).unwrap_or_else(|_| "{}".into())
}

fn decode_attributes(text: &str) -> Attributes {
    serde_json::from_str(text).unwrap_or_default()
}

fn insert_message(
    tx: &rusqlite::Transaction<'_>,
    queue: &str,
    message: &Outgoing,
    now: i64,
    fifo: &FifoSettings,
) -> rusqlite::Result<Option<String>> {
    let delay: Option<i64> = tx
        .query_row(
            "SELECT delay_seconds FROM queues WHERE name = ?1",
            params![queue],
            |r| r.get(0),
        )
        .optional()?;
    let Some(delay) = delay else {
        return Ok(None);
    };
    let id = uuid::Uuid::new_v4().to_string();
    let group = if is_fifo(queue) {
        let dedup = fifo.deduplication_id_of(message);
        tx.execute(
            "DELETE FROM fifo_dedup WHERE sent_ms <= ?1",
            params![now - DEDUP_WINDOW_MS],
        )?;
        let seen: Option<String> = tx
            .query_row(
                "SELECT id FROM fifo_dedup WHERE queue = ?1 AND dedup_id = ?2",
                params![queue, dedup],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(first) = seen {
            tracing::debug!(queue, message_id = %first, "duplicate FIFO message (same deduplication id within five minutes): not stored again");
            return Ok(Some(first));
        }
        tx.execute(
            "INSERT INTO fifo_dedup (queue, dedup_id, id, sent_ms) VALUES (?1, ?2, ?3, ?4)",
            params![queue, dedup, id, now],
        )?;
        Some(fifo.group_of(message))
    } else {
        None
    };
    tx.execute(
        "INSERT INTO messages (id, queue, body, attributes, sent_ms, visible_ms, group_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![id, queue, message.body, encode_attributes(&message.attributes), now, now + delay * 1000, group],
    )?;
    Ok(Some(id))
}

impl LocalBroker {
    /// Open the broker file a config names and make sure this service's topic, queue,
    /// dead-letter queue and subscription exist (the local equivalent of `iniesta setup`).
    pub async fn open(config: &Config) -> Result<LocalBroker, BrokerError> {
        let db = Db::open(&config.broker_path())?;
        let broker = LocalBroker {
            db,
            topic: config.topic_name(),
            queue: config.queue_name(),
            dead_letter_queue: config.sqs.dead_letter_queue.clone(),
            fifo: FifoSettings::from_config(config),
            clock: Clock::System,
        };
        broker.setup(config).await?;
        Ok(broker)
    }

    /// Read the time from `clock` instead of the system clock (tests).
    pub fn with_clock(mut self, clock: Clock) -> LocalBroker {
        self.clock = clock;
        self
    }

    /// Create or update this service's resources; idempotent.
    pub async fn setup(&self, config: &Config) -> Result<(), BrokerError> {
        let topic = self.topic.clone();
        let queue = self.queue.clone();
        let dlq = self.dead_letter_queue.clone();
        let settings = QueueSettings {
            visibility_timeout: config.sqs.visibility_timeout,
            delay_seconds: config.sqs.delay_seconds,
            dead_letter_queue: dlq.clone(),
            max_receive_count: config.sqs.max_receive_count,
        };
        let policy = if config.does(InitializationType::EventPolling) {
            Some(
                crate::filter::iniesta_policy(&config.sns.event_key, &config.sqs.filters)
                    .to_string(),
            )
        } else {
            None
        };
        let subscribe = config.does(InitializationType::EventPolling);
        let consumes = config.consumes();
        self.db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                if let Some(topic) = &topic {
                    tx.execute("INSERT OR IGNORE INTO topics (name) VALUES (?1)", params![topic])?;
                }
                if !consumes {
                    // A producer has no queue of its own.
                    return tx.commit();
                }
                if let Some(dlq) = &dlq {
                    tx.execute(
                        "INSERT OR IGNORE INTO queues (name, visibility_timeout) VALUES (?1, ?2)",
                        params![dlq, settings.visibility_timeout],
                    )?;
                }
                tx.execute(
                    "INSERT INTO queues (name, visibility_timeout, delay_seconds, dead_letter_queue, max_receive_count)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(name) DO UPDATE SET visibility_timeout = excluded.visibility_timeout,
                        delay_seconds = excluded.delay_seconds, dead_letter_queue = excluded.dead_letter_queue,
                        max_receive_count = excluded.max_receive_count",
                    params![queue, settings.visibility_timeout, settings.delay_seconds, settings.dead_letter_queue, settings.max_receive_count],
                )?;
                if let (true, Some(topic)) = (subscribe, &topic) {
                    tx.execute(
                        "INSERT INTO subscriptions (topic, queue, filter_policy) VALUES (?1, ?2, ?3)
                         ON CONFLICT(topic, queue) DO UPDATE SET filter_policy = excluded.filter_policy",
                        params![topic, queue, policy],
                    )?;
                }
                tx.commit()
            })
            .await
    }

    /// The underlying database, for inspection.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// This service's queue name.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Subscribe `queue` to `topic` with a filter policy (JSON text) and scope; creates both.
    pub async fn subscribe(
        &self,
        topic: &str,
        queue: &str,
        policy: Option<&str>,
        scope: Scope,
    ) -> Result<(), BrokerError> {
        let (topic, queue) = (topic.to_string(), queue.to_string());
        let policy = policy.map(str::to_string);
        let scope = match scope {
            Scope::MessageAttributes => "MessageAttributes",
            Scope::MessageBody => "MessageBody",
        };
        self.db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute("INSERT OR IGNORE INTO topics (name) VALUES (?1)", params![topic])?;
                tx.execute(
                    "INSERT OR IGNORE INTO queues (name, visibility_timeout) VALUES (?1, 30)",
                    params![queue],
                )?;
                tx.execute(
                    "INSERT INTO subscriptions (topic, queue, filter_policy, filter_scope) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(topic, queue) DO UPDATE SET filter_policy = excluded.filter_policy,
                        filter_scope = excluded.filter_scope",
                    params![topic, queue, policy, scope],
                )?;
                tx.commit()
            })
            .await
    }

    /// Publish to any topic by name; returns the message id and the queues it reached.
    pub async fn publish_to(
        &self,
        topic: &str,
        message: &Outgoing,
    ) -> Result<(String, Vec<String>), BrokerError> {
        let topic = topic.to_string();
        let message = message.clone();
        let missing = topic.clone();
        let fifo = self.fifo.clone();
        let clock = self.clock.clone();
        let result = self
            .db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let exists: Option<String> = tx
                    .query_row("SELECT name FROM topics WHERE name = ?1", params![topic], |r| r.get(0))
                    .optional()?;
                if exists.is_none() {
                    return Ok(None);
                }
                let subscriptions: Vec<(String, Option<String>, String)> = {
                    let mut stmt = tx.prepare_cached(
                        "SELECT queue, filter_policy, filter_scope FROM subscriptions WHERE topic = ?1 ORDER BY queue",
                    )?;
                    let rows = stmt.query_map(params![topic], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                    rows.collect::<rusqlite::Result<_>>()?
                };
                let now = clock.now_ms();
                let mut reached = Vec::new();
                for (queue, policy, scope) in subscriptions {
                    if accepts(policy.as_deref(), &scope, &message) {
                        insert_message(&tx, &queue, &message, now, &fifo)?;
                        reached.push(queue);
                    }
                }
                tx.commit()?;
                Ok(Some(reached))
            })
            .await?;
        match result {
            Some(reached) => Ok((uuid::Uuid::new_v4().to_string(), reached)),
            None => Err(BrokerError::NoSuchTopic(missing)),
        }
    }

    /// Messages on `queue`, oldest first (dead-letter queues included), for inspection.
    pub async fn messages(&self, queue: &str) -> Result<Vec<StoredMessage>, BrokerError> {
        let queue = queue.to_string();
        let clock = self.clock.clone();
        self.db
            .call(move |conn| {
                let now = clock.now_ms();
                let mut stmt = conn.prepare(
                    "SELECT id, body, attributes, receive_count, dead_letter_reason, visible_ms FROM messages WHERE queue = ?1 ORDER BY seq",
                )?;
                let rows = stmt.query_map(params![queue], |r| {
                    let attributes: String = r.get(2)?;
                    let visible_ms: i64 = r.get(5)?;
                    Ok(StoredMessage {
                        id: r.get(0)?,
                        body: r.get(1)?,
                        attributes: decode_attributes(&attributes),
                        receive_count: r.get(3)?,
                        dead_letter_reason: r.get(4)?,
                        visible: visible_ms <= now,
                    })
                })?;
                rows.collect()
            })
            .await
    }

    fn try_receive(
        conn: &mut Connection,
        queue: &str,
        max: u32,
        clock: &Clock,
    ) -> rusqlite::Result<Option<Vec<Received>>> {
        // An idle poll only reads: the write lock (shared with every publisher and other
        // host on this file) is taken only when something is there to receive.
        let ready: bool = conn
            .prepare_cached(
                "SELECT EXISTS(SELECT 1 FROM messages WHERE queue = ?1 AND +visible_ms <= ?2)",
            )?
            .query_row(params![queue, clock.now_ms()], |r| r.get(0))?;
        if !ready {
            let exists = conn
                .prepare_cached("SELECT 1 FROM queues WHERE name = ?1")?
                .exists(params![queue])?;
            return Ok(exists.then(Vec::new));
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let settings: Option<(u32, Option<String>, u32)> = tx
            .query_row(
                "SELECT visibility_timeout, dead_letter_queue, max_receive_count FROM queues WHERE name = ?1",
                params![queue],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((visibility, dlq, max_receive)) = settings else {
            return Ok(None);
        };
        let now = clock.now_ms();
        type Row = (i64, String, Vec<u8>, String, i64, u32, Option<String>);
        let candidates: Vec<Row> = {
            let mut stmt = tx.prepare_cached(RECEIVE_SQL)?;
            // Ask for more than `max` so messages redriven to the DLQ don't shrink the batch.
            let rows = stmt.query_map(params![queue, now, i64::from(max) * 2], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut out = Vec::new();
        for (seq, id, body, attributes, sent_ms, receive_count, group_id) in candidates {
            if out.len() >= max as usize {
                break;
            }
            if let Some(dlq) = &dlq {
                if receive_count >= max_receive {
                    tx.execute(
                        "UPDATE messages SET queue = ?1, visible_ms = ?2, receipt = NULL,
                            dead_letter_reason = COALESCE(dead_letter_reason, ?3), dead_lettered_ms = ?2 WHERE seq = ?4",
                        params![
                            dlq,
                            now,
                            format!(
                                "received {receive_count} times (max_receive_count {max_receive})"
                            ),
                            seq
                        ],
                    )?;
                    tracing::warn!(message_id = %id, queue, dead_letter_queue = %dlq, receive_count, "redriven to the dead-letter queue after max_receive_count deliveries");
                    continue;
                }
            }
            let receipt = format!("{seq}:{}", uuid::Uuid::new_v4());
            tx.execute(
                "UPDATE messages SET receive_count = receive_count + 1, visible_ms = ?1, receipt = ?2,
                    first_receive_ms = COALESCE(first_receive_ms, ?3), last_receive_ms = ?3 WHERE seq = ?4",
                params![now + i64::from(visibility) * 1000, receipt, now, seq],
            )?;
            out.push(Received {
                message_id: id,
                receipt,
                body,
                attributes: decode_attributes(&attributes),
                receive_count: receive_count + 1,
                sent_timestamp_ms: u64::try_from(sent_ms).unwrap_or(0),
                group_id,
                aws_trace_header: None,
            });
        }
        tx.commit()?;
        Ok(Some(out))
    }
}

fn accepts(policy: Option<&str>, scope: &str, message: &Outgoing) -> bool {
    let Some(policy) = policy else {
        return true;
    };
    let Ok(policy) = FilterPolicy::parse_str(policy) else {
        tracing::error!(
            policy,
            "stored filter policy is invalid; delivering nothing through it"
        );
        return false;
    };
    match Scope::parse(scope) {
        Ok(Scope::MessageBody) => serde_json::from_slice::<serde_json::Value>(&message.body)
            .map(|body| policy.matches_body(&body))
            .unwrap_or(false),
        _ => policy.matches_attributes(&message.attributes),
    }
}

fn split_receipt(receipt: &str) -> Option<(i64, &str)> {
    let (seq, _) = receipt.split_once(':')?;
    Some((seq.parse().ok()?, receipt))
}

#[async_trait]
impl Broker for LocalBroker {
    async fn publish(&self, message: &Outgoing) -> Result<String, BrokerError> {
        let topic = self.topic.clone().ok_or(BrokerError::NoTopic)?;
        let (id, reached) = self.publish_to(&topic, message).await?;
        tracing::debug!(message_id = %id, event = %message.event, queues = ?reached, "published to local topic");
        Ok(id)
    }

    async fn send_to_queue(
        &self,
        queue: Option<&str>,
        message: &Outgoing,
    ) -> Result<String, BrokerError> {
        let queue = queue.unwrap_or(&self.queue).to_string();
        let missing = queue.clone();
        let message = message.clone();
        let fifo = self.fifo.clone();
        let clock = self.clock.clone();
        let id = self
            .db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let id = insert_message(&tx, &queue, &message, clock.now_ms(), &fifo)?;
                tx.commit()?;
                Ok(id)
            })
            .await?;
        id.ok_or(BrokerError::NoSuchQueue(missing))
    }

    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> Result<Vec<Received>, BrokerError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(5);
        loop {
            let queue = self.queue.clone();
            let clock = self.clock.clone();
            let got = self
                .db
                .call(move |conn| LocalBroker::try_receive(conn, &queue, max, &clock))
                .await?;
            let Some(got) = got else {
                return Err(BrokerError::NoSuchQueue(self.queue.clone()));
            };
            if !got.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(got);
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(Vec::new()),
                _ = tokio::time::sleep(pause.min(deadline.saturating_duration_since(tokio::time::Instant::now()))) => {}
            }
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    async fn delete_batch(&self, receipts: &[String]) -> Result<Vec<DeleteFailure>, BrokerError> {
        let receipts = receipts.to_vec();
        self.db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let mut failures = Vec::new();
                for receipt in receipts {
                    let deleted = match split_receipt(&receipt) {
                        Some((seq, full)) => tx.execute(
                            "DELETE FROM messages WHERE seq = ?1 AND receipt = ?2",
                            params![seq, full],
                        )?,
                        None => 0,
                    };
                    if deleted == 0 {
                        failures.push(DeleteFailure {
                            receipt,
                            reason: "receipt handle is stale or unknown".into(),
                            retryable: false,
                            stale: true,
                        });
                    }
                }
                tx.commit()?;
                Ok(failures)
            })
            .await
    }

    async fn change_visibility(&self, receipt: &str, secs: u32) -> Result<(), BrokerError> {
        let Some((seq, full)) = split_receipt(receipt) else {
            return Err(BrokerError::StaleReceipt);
        };
        let full = full.to_string();
        let clock = self.clock.clone();
        let changed = self
            .db
            .call(move |conn| {
                conn.execute(
                    "UPDATE messages SET visible_ms = ?1 WHERE seq = ?2 AND receipt = ?3",
                    params![clock.now_ms() + i64::from(secs) * 1000, seq, full],
                )
            })
            .await?;
        if changed == 0 {
            return Err(BrokerError::StaleReceipt);
        }
        Ok(())
    }

    async fn dead_letter(&self, message: &Received, reason: &str) -> Result<(), BrokerError> {
        let dlq = self
            .dead_letter_queue
            .clone()
            .ok_or(BrokerError::NoDeadLetterQueue)?;
        let Some((seq, full)) = split_receipt(&message.receipt) else {
            return Err(BrokerError::StaleReceipt);
        };
        let (full, reason) = (full.to_string(), reason.to_string());
        let clock = self.clock.clone();
        let moved = self
            .db
            .call(move |conn| {
                conn.execute(
                    "UPDATE messages SET queue = ?1, visible_ms = ?2, receipt = NULL, dead_letter_reason = ?3,
                        dead_lettered_ms = ?2
                     WHERE seq = ?4 AND receipt = ?5",
                    params![dlq, clock.now_ms(), reason, seq, full],
                )
            })
            .await?;
        if moved == 0 {
            return Err(BrokerError::StaleReceipt);
        }
        Ok(())
    }

    async fn depth(&self, queue: Option<&str>) -> Result<QueueDepth, BrokerError> {
        let queue = queue.unwrap_or(&self.queue).to_string();
        let clock = self.clock.clone();
        self.db
            .call(move |conn| {
                let now = clock.now_ms();
                // Not visible yet: received (in flight) or never received (a delay).
                conn.query_row(
                    "SELECT COALESCE(SUM(visible_ms <= ?2), 0), \
                            COALESCE(SUM(visible_ms > ?2 AND receive_count > 0), 0), \
                            COALESCE(SUM(visible_ms > ?2 AND receive_count = 0), 0) \
                     FROM messages WHERE queue = ?1",
                    params![queue, now],
                    |r| {
                        let n =
                            |i: usize| r.get::<_, i64>(i).map(|v| u64::try_from(v).unwrap_or(0));
                        Ok(QueueDepth {
                            visible: n(0)?,
                            in_flight: n(1)?,
                            delayed: n(2)?,
                        })
                    },
                )
            })
            .await
    }

    fn describe(&self) -> String {
        format!(
            "local broker {} (queue {}, topic {})",
            self.db.path().display(),
            self.queue,
            self.topic.as_deref().unwrap_or("none")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT name FROM pragma_table_info('messages')")
            .expect("table info");
        let names = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .expect("columns")
            .collect::<Result<Vec<_>, _>>()
            .expect("names");
        names
    }

    /// A file from before schema versions (user_version 0, no later columns) is migrated once
    /// and stamped; opening it again changes nothing; a file stamped by a newer iniesta is
    /// refused, untouched.
    #[test]
    fn old_files_are_migrated_once_and_newer_files_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(
                "CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL,
                 queue TEXT NOT NULL, body BLOB NOT NULL, attributes TEXT NOT NULL,
                 sent_ms INTEGER NOT NULL, visible_ms INTEGER NOT NULL,
                 receive_count INTEGER NOT NULL DEFAULT 0, first_receive_ms INTEGER,
                 receipt TEXT, dead_letter_reason TEXT);",
            )
            .expect("an old schema");
        }
        for _ in 0..2 {
            drop(Db::open(&path).expect("opens and migrates"));
            let conn = Connection::open(&path).expect("open");
            let version: i64 = conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .expect("version");
            assert_eq!(version, SCHEMA_VERSION);
            let have = columns(&conn);
            for column in ["group_id", "last_receive_ms", "dead_lettered_ms"] {
                assert_eq!(have.iter().filter(|c| *c == column).count(), 1, "{have:?}");
            }
        }
        let newer = SCHEMA_VERSION + 1;
        Connection::open(&path)
            .expect("open")
            .pragma_update(None, "user_version", newer)
            .expect("stamp");
        let err = Db::open(&path).err().expect("a newer file is refused");
        assert!(
            matches!(err, BrokerError::NewerSchema { found, .. } if found == newer),
            "{err}"
        );
        assert!(err.to_string().contains("upgrade iniesta"), "{err}");
    }

    /// The receive query must walk the queue in `seq` order and stop at its limit: a plan
    /// with a temporary B-tree sorts the whole visible backlog on every receive.
    #[test]
    fn receive_walks_the_queue_in_order_without_sorting() {
        let conn = Connection::open_in_memory().expect("in-memory database");
        conn.execute_batch(SCHEMA).expect("schema");
        migrate(&conn).expect("migrate");
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {RECEIVE_SQL}"))
            .expect("plan");
        let plan: Vec<String> = stmt
            .query_map(params!["q", 0_i64, 10_i64], |r| r.get::<_, String>(3))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert!(
            plan.iter().any(|step| step.contains("messages_in_order")),
            "{plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.contains("TEMP B-TREE")),
            "{plan:?}"
        );
    }
}
