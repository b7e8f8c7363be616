//! One Redis server: the lock primitives, each one pipelined round trip, and the single-node
//! lock service ([`RedisLocks`], `lock.urls` with one entry).
//!
//! - take: `SET key token NX PX ttl` per key, MULTI-less, with `HKEYS` of each message's
//!   completion hash in the same pipeline (read after the `SET` on that server);
//! - release: a Lua compare-and-delete (delete only if the value is still our token);
//! - extend: a Lua compare-and-extend (re-arm only our own token; re-create the key if the
//!   server lost it, e.g. after a restart, which is safe while our validity has not passed);
//! - record: `HSET sqs:event:{id}:done binding now` + `PEXPIRE`, atomically in one Lua call.
//!
//! A [`Node`] keeps one multiplexed connection, made lazily and remade after any failure,
//! with a short back-off while the server is down so a dead node costs nothing per batch.
//! A node's health is logged when it changes — once when it becomes unreachable or starts
//! answering errors, once when it is back (for errors: after 10 s without one, as a node at
//! its memory limit refuses some requests and not others) — and every failed request in
//! between is counted in `iniesta_lock_node_errors_total{node}` (lost deferred writes in
//! `iniesta_lock_writes_lost_total{node}`) rather than logged: with one Redlock node down, a
//! busy host would otherwise write a warning per lock attempt.
//!
//! **Deferred writes.** A node made with [`Node::defer_writes`] (what `iniesta run` uses) does
//! not send completion records and releases on their own: it queues them, in order, and sends
//! them at the head of the next batch's acquire pipeline, so a steady consumer costs one round
//! trip per node per receive batch. Queued writes are also sent by [`Node::flush`], which the
//! lock service's flusher calls [`LINGER`] after the first write queued into an empty buffer
//! (an idle consumer's releases are not held back longer than that) and the pipeline calls at
//! shutdown. Order is what makes this safe: a binding's record always precedes its message's
//! release, and both precede any later `SET NX`/`HKEYS` for the same message on that server,
//! so a duplicate never sees the lock free without also seeing the record.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, Pipeline, Value};

use super::tls::{is_tls_url, TlsFiles};
use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{completion_key_for, redact, validity, Claim, Held, LockError, Locks};
use crate::ops::metrics as m;

/// Compare-and-delete: release only our own lock.
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// Compare-and-extend: re-arm our own lock; re-create it if the key is gone; else 0.
const EXTEND: &str = "local v = redis.call('GET', KEYS[1]) \
if v == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) \
elseif not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 \
else return 0 end";

/// Record completions: `HSET KEYS[1]` with the (field, time) pairs in `ARGV[2..]`, then
/// `PEXPIRE KEYS[1] ARGV[1]`, atomically (a record never outlives its expiry by accident).
const RECORD: &str = "redis.call('HSET', KEYS[1], unpack(ARGV, 2)) \
return redis.call('PEXPIRE', KEYS[1], ARGV[1])";

/// How long a deferred write may wait for the next acquire before it is sent on its own.
pub const LINGER: Duration = Duration::from_millis(10);

/// A write that can ride along with the next acquire ([`Node::defer_writes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Write {
    /// Completion records of one message.
    Record {
        key: String,
        /// `field, now_ms` pairs, flattened.
        pairs: Vec<String>,
        ttl_ms: u64,
    },
    /// Compare-and-delete of one lock.
    Release { key: String, token: String },
}

impl Write {
    fn add_to(&self, pipe: &mut Pipeline) {
        match self {
            Write::Record { key, pairs, ttl_ms } => {
                pipe.cmd("EVAL")
                    .arg(RECORD)
                    .arg(1)
                    .arg(key)
                    .arg(*ttl_ms)
                    .arg(pairs);
            }
            Write::Release { key, token } => {
                pipe.cmd("EVAL").arg(RELEASE).arg(1).arg(key).arg(token);
            }
        }
    }
}

/// Writes queued for the next acquire or flush, and who to wake when the queue fills.
struct Deferred {
    writes: std::sync::Mutex<Vec<Write>>,
    wake: Arc<Notify>,
}

/// A failure talking to one node.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{node}: {detail}")]
pub struct NodeError {
    /// The node's address (never its credentials).
    pub node: String,
    /// What went wrong.
    pub detail: String,
}

#[derive(Default)]
struct Connection {
    conn: Option<MultiplexedConnection>,
    generation: u64,
    /// While the server is down: no new attempt before this.
    retry_at: Option<Instant>,
    /// The reconnect delays while it is down (`None` while it is up).
    backoff: Option<crate::backoff::Backoff>,
    last_error: String,
    down: bool,
}

/// One Redis server.
pub struct Node {
    label: String,
    client: Client,
    timeout: Duration,
    connection: tokio::sync::Mutex<Connection>,
    round_trips: AtomicU64,
    /// While the server answers errors to our requests (it is reachable, so this is not
    /// `Connection::down`): when it last did. Logged when it starts, and when it has answered
    /// without an error for [`ERRORS_SETTLE`].
    answering_errors: std::sync::Mutex<Option<Instant>>,
    deferred: Option<Deferred>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label)
    }
}

/// How one lock's answer came back from one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAnswer {
    /// Whether `SET NX` took the key.
    pub acquired: bool,
    /// The completion records this node holds for the message.
    pub completed: BTreeSet<String>,
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// How long a node that answered errors must answer without one to be logged as normal again.
const ERRORS_SETTLE: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Node {
    /// The per-request timeout for a lock lifetime: a quarter of it, within 250 ms–1 s, so a
    /// hung node cannot eat the lock's validity.
    pub fn timeout_for(ttl: Duration) -> Duration {
        (ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(1))
    }

    /// A node for `lock.urls[index]`; nothing is connected yet. A `rediss://` URL connects
    /// over TLS, trusting `tls`'s roots (else the system's) and presenting its client
    /// certificate if it has one.
    pub fn open(
        index: usize,
        url: &str,
        tls: Option<&TlsFiles>,
        timeout: Duration,
    ) -> Result<Node, LockError> {
        let bad = |reason: String| LockError::BadUrl {
            index,
            url: redact(url),
            reason,
        };
        let opened = if is_tls_url(url) {
            if url.contains("#insecure") {
                return Err(bad(
                    "certificate checks cannot be turned off (#insecure): trust the server's CA with lock.tls.ca_file".into(),
                ));
            }
            match tls {
                Some(files) => files.client(url),
                None => {
                    super::tls::install_crypto_provider();
                    Client::open(url)
                }
            }
        } else {
            Client::open(url)
        };
        let client = opened.map_err(|e| {
            bad(format!(
                "not a usable Redis URL ({e}); expected redis[s]://[[USER]:PASSWORD@]HOST[:PORT][/DB]"
            ))
        })?;
        let info = client.get_connection_info();
        let db = info.redis_settings().db();
        let label = if db == 0 {
            info.addr().to_string()
        } else {
            format!("{}/{db}", info.addr())
        };
        Ok(Node {
            label,
            client,
            timeout,
            connection: tokio::sync::Mutex::new(Connection::default()),
            round_trips: AtomicU64::new(0),
            answering_errors: std::sync::Mutex::new(None),
            deferred: None,
        })
    }

    /// Queue completion records and releases for the next acquire instead of sending each
    /// on its own (see the module docs); `wake` is notified when a write is queued into an
    /// empty queue, so a flusher can send it after [`LINGER`] if no acquire comes first.
    pub fn defer_writes(mut self, wake: Arc<Notify>) -> Node {
        self.deferred = Some(Deferred {
            writes: std::sync::Mutex::new(Vec::new()),
            wake,
        });
        self
    }

    /// Queue `writes` when deferring, else send them now.
    async fn write(&self, writes: Vec<Write>) -> Result<(), NodeError> {
        if let Some(deferred) = &self.deferred {
            let mut queue = deferred
                .writes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let was_empty = queue.is_empty();
            queue.extend(writes);
            if was_empty {
                deferred.wake.notify_one();
            }
            return Ok(());
        }
        self.send_writes(&writes).await
    }

    fn take_deferred(&self) -> Vec<Write> {
        match &self.deferred {
            Some(deferred) => std::mem::take(
                &mut *deferred
                    .writes
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            ),
            None => Vec::new(),
        }
    }

    async fn send_writes(&self, writes: &[Write]) -> Result<(), NodeError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut pipe = ::redis::pipe();
        pipe.ignore_errors();
        for write in writes {
            write.add_to(&mut pipe);
        }
        self.send(&pipe).await.map(|_| ())
    }

    /// Writes this node could not send (a failed pipeline): counted, never fatal. Unsent
    /// releases expire with their locks; unsent records mean a duplicate may run again. The
    /// failure itself was logged when the node's state changed (down, or answering errors),
    /// so this is not logged again on every attempt.
    fn lost(&self, writes: &[Write], error: &str) {
        if writes.is_empty() {
            return;
        }
        let records = writes
            .iter()
            .filter(|w| matches!(w, Write::Record { .. }))
            .count();
        metrics::counter!(m::LOCK_WRITES_LOST, "node" => self.label.clone())
            .increment(writes.len() as u64);
        tracing::debug!(node = %self.label, records, releases = writes.len() - records, error,
            "deferred lock writes not stored; those locks expire on their own and a duplicate of those messages may run again");
    }

    /// Send the queued writes now (no-op when nothing is queued or not deferring).
    pub async fn flush(&self) {
        let writes = self.take_deferred();
        if let Err(e) = self.send_writes(&writes).await {
            self.lost(&writes, &e.detail);
        }
    }

    /// Writes queued and not yet sent.
    pub fn pending_writes(&self) -> usize {
        self.deferred.as_ref().map_or(0, |d| {
            d.writes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .len()
        })
    }

    /// `host:port` (with `/db` when not 0): safe to log.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Pipelines sent to this node so far (each is one network round trip).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// A failed request: counted per node (see the module docs for what is logged).
    fn error(&self, detail: impl Into<String>) -> NodeError {
        metrics::counter!(m::LOCK_NODE_ERRORS, "node" => self.label.clone()).increment(1);
        NodeError {
            node: self.label.clone(),
            detail: detail.into(),
        }
    }

    async fn connect(&self) -> Result<(MultiplexedConnection, u64), NodeError> {
        let mut state = self.connection.lock().await;
        if let Some(conn) = &state.conn {
            return Ok((conn.clone(), state.generation));
        }
        if let Some(at) = state.retry_at {
            if Instant::now() < at {
                return Err(self.error(format!("down ({})", state.last_error)));
            }
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let attempt = tokio::time::timeout(
            self.timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await;
        let failure = match attempt {
            Ok(Ok(conn)) => {
                if state.down {
                    tracing::info!(node = %self.label, "Redis node reachable again");
                }
                state.generation += 1;
                state.conn = Some(conn.clone());
                state.retry_at = None;
                state.backoff = None;
                state.down = false;
                return Ok((conn, state.generation));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no connection within {} ms", self.timeout.as_millis()),
        };
        self.mark_down(&mut state, failure.clone());
        Err(self.error(failure))
    }

    fn mark_down(&self, state: &mut Connection, failure: String) {
        state.conn = None;
        let pause = state
            .backoff
            .get_or_insert_with(|| crate::backoff::Backoff::new(MIN_BACKOFF, MAX_BACKOFF))
            .next_delay();
        state.retry_at = Some(Instant::now() + pause);
        if !state.down {
            tracing::warn!(node = %self.label, error = %failure, "Redis node unreachable; reconnecting on later requests, with back-off (failed requests are counted in iniesta_lock_node_errors_total until it is back)");
        }
        state.down = true;
        state.last_error = failure;
    }

    /// Send one pipeline: one round trip. A server error in any reply fails the whole call.
    async fn send(&self, pipe: &Pipeline) -> Result<Vec<Value>, NodeError> {
        let values = self.send_raw(pipe).await?;
        self.no_server_error(&values)?;
        Ok(values)
    }

    fn no_server_error(&self, values: &[Value]) -> Result<(), NodeError> {
        match values.iter().find(|v| matches!(v, Value::ServerError(_))) {
            Some(Value::ServerError(e)) => Err(self.error(format!("server error: {e}"))),
            _ => Ok(()),
        }
    }

    /// Log when the node starts or stops answering errors (a whole round trip's replies). It
    /// has stopped only after [`ERRORS_SETTLE`] without one: a node at its memory limit refuses
    /// writes but still answers releases and reads, and each such round trip must not log it
    /// as normal again (and the next refused write as a new failure).
    fn note_replies(&self, values: &[Value]) {
        let mut last_error = self
            .answering_errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match values.iter().find(|v| matches!(v, Value::ServerError(_))) {
            Some(Value::ServerError(e)) => {
                if last_error.is_none() {
                    tracing::warn!(node = %self.label, error = %e, "Redis node answers with errors (failed requests are counted in iniesta_lock_node_errors_total until it answers normally)");
                }
                *last_error = Some(Instant::now());
            }
            _ => {
                if last_error.is_some_and(|at| at.elapsed() >= ERRORS_SETTLE) {
                    *last_error = None;
                    tracing::info!(node = %self.label, quiet_secs = ERRORS_SETTLE.as_secs(), "Redis node answers normally again");
                }
            }
        }
    }

    /// Send one pipeline: one round trip; replies as they came (server errors included). Any
    /// transport failure drops the connection so the next request reconnects.
    async fn send_raw(&self, pipe: &Pipeline) -> Result<Vec<Value>, NodeError> {
        let (mut conn, generation) = self.connect().await?;
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let outcome = tokio::time::timeout(self.timeout, pipe.query_async::<Vec<Value>>(&mut conn))
            .await
            .map_err(|_| format!("no answer within {} ms", self.timeout.as_millis()))
            .and_then(|r| r.map_err(|e| e.to_string()));
        match outcome {
            Ok(values) => {
                self.note_replies(&values);
                Ok(values)
            }
            Err(failure) => {
                let mut state = self.connection.lock().await;
                if state.generation == generation && state.conn.is_some() {
                    self.mark_down(&mut state, failure.clone());
                }
                Err(self.error(failure))
            }
        }
    }

    /// `SET NX PX` every `(key, token)`, then `HKEYS` every completion hash, in one round trip,
    /// preceded by any deferred writes.
    pub async fn acquire(
        &self,
        locks: &[(&str, &str, &str)],
        ttl: Duration,
    ) -> Result<Vec<NodeAnswer>, NodeError> {
        let writes = self.take_deferred();
        let mut pipe = ::redis::pipe();
        pipe.ignore_errors();
        for write in &writes {
            write.add_to(&mut pipe);
        }
        let ttl_ms = millis(ttl);
        for (key, token, _) in locks {
            pipe.cmd("SET")
                .arg(*key)
                .arg(*token)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms);
        }
        for (_, _, done) in locks {
            pipe.cmd("HKEYS").arg(*done);
        }
        let values = match self.send_raw(&pipe).await {
            Ok(values) => values,
            Err(e) => {
                self.lost(&writes, &e.detail);
                return Err(e);
            }
        };
        if values.len() != writes.len() + locks.len() * 2 {
            self.lost(&writes, "unexpected reply count");
            return Err(self.error(format!(
                "expected {} replies, got {}",
                writes.len() + locks.len() * 2,
                values.len()
            )));
        }
        let (written, values) = values.split_at(writes.len());
        if let Err(e) = self.no_server_error(written) {
            self.lost(&writes, &e.detail);
        }
        self.no_server_error(values)?;
        let (sets, hkeys) = values.split_at(locks.len());
        Ok(sets
            .iter()
            .zip(hkeys)
            .map(|(set, done)| NodeAnswer {
                acquired: is_ok(set),
                completed: strings(done),
            })
            .collect())
    }

    /// Compare-and-extend one lock; `true` if it is ours for `ttl` from now.
    pub async fn extend(&self, key: &str, token: &str, ttl: Duration) -> Result<bool, NodeError> {
        let mut pipe = ::redis::pipe();
        pipe.ignore_errors();
        pipe.cmd("EVAL")
            .arg(EXTEND)
            .arg(1)
            .arg(key)
            .arg(token)
            .arg(millis(ttl));
        let values = self.send(&pipe).await?;
        Ok(matches!(values.first(), Some(Value::Int(1))))
    }

    /// Compare-and-delete every `(key, token)` now, in one round trip (with any deferred
    /// writes ahead of them, to keep their order).
    pub async fn release(&self, locks: &[(&str, &str)]) -> Result<(), NodeError> {
        if locks.is_empty() {
            return Ok(());
        }
        let mut writes = self.take_deferred();
        let deferred = writes.len();
        writes.extend(releases(locks));
        let result = self.send_writes(&writes).await;
        if let Err(e) = &result {
            self.lost(&writes[..deferred], &e.detail);
        }
        result
    }

    /// Compare-and-delete every `(key, token)`: queued when deferring, else now.
    pub async fn release_later(&self, locks: &[(&str, &str)]) -> Result<(), NodeError> {
        self.write(releases(locks)).await
    }

    /// Record completions of `message_id` by `bindings`, expiring after `ttl`: queued when
    /// deferring, else now.
    pub async fn record(
        &self,
        message_id: &str,
        bindings: &[String],
        ttl: Duration,
    ) -> Result<(), NodeError> {
        if bindings.is_empty() {
            return Ok(());
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis().to_string())
            .unwrap_or_else(|_| "0".into());
        let pairs = bindings
            .iter()
            .flat_map(|binding| [binding.clone(), now_ms.clone()])
            .collect();
        self.write(vec![Write::Record {
            key: completion_key_for(message_id),
            pairs,
            ttl_ms: millis(ttl),
        }])
        .await
    }

    /// `PING`.
    pub async fn ping(&self) -> Result<(), NodeError> {
        let mut pipe = ::redis::pipe();
        pipe.ignore_errors().cmd("PING");
        self.send(&pipe).await.map(|_| ())
    }
}

fn releases(locks: &[(&str, &str)]) -> Vec<Write> {
    locks
        .iter()
        .map(|(key, token)| Write::Release {
            key: (*key).to_string(),
            token: (*token).to_string(),
        })
        .collect()
}

fn is_ok(value: &Value) -> bool {
    match value {
        Value::Okay => true,
        Value::SimpleString(s) => s == "OK",
        _ => false,
    }
}

fn strings(value: &Value) -> BTreeSet<String> {
    match value {
        Value::Array(items) | Value::Set(items) => items
            .iter()
            .filter_map(|v| match v {
                Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
                Value::SimpleString(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => BTreeSet::new(),
    }
}

/// Locks on one Redis server (`lock.urls` with one entry).
#[derive(Debug)]
pub struct RedisLocks {
    node: Node,
}

impl RedisLocks {
    /// Locks on `node`.
    pub fn new(node: Node) -> RedisLocks {
        RedisLocks { node }
    }

    /// The server.
    pub fn node(&self) -> &Node {
        &self.node
    }

    fn unavailable(&self, e: NodeError) -> LockError {
        LockError::Unavailable {
            reachable: 0,
            nodes: 1,
            needed: 1,
            detail: e.to_string(),
        }
    }
}

#[async_trait]
impl Locks for RedisLocks {
    async fn try_acquire(
        &self,
        message_ids: &[String],
        ttl: Duration,
    ) -> Result<Vec<Option<Claim>>, LockError> {
        if message_ids.is_empty() {
            return Ok(Vec::new());
        }
        let start = Instant::now();
        let candidates: Vec<(Held, String)> = message_ids
            .iter()
            .map(|id| (Held::new(id, start), completion_key_for(id)))
            .collect();
        let requests: Vec<(&str, &str, &str)> = candidates
            .iter()
            .map(|(h, done)| (h.key.as_str(), h.token.as_str(), done.as_str()))
            .collect();
        let answers = self
            .node
            .acquire(&requests, ttl)
            .await
            .map_err(|e| self.unavailable(e))?;
        let left = validity::validity(ttl, start.elapsed());
        let mut claims = Vec::with_capacity(answers.len());
        let mut undo = Vec::new();
        for ((mut held, _), answer) in candidates.into_iter().zip(answers) {
            match (answer.acquired, left) {
                (true, Some(_)) => {
                    held.valid_until = start + validity::valid_for(ttl);
                    claims.push(Some(Claim {
                        held,
                        completed: answer.completed,
                    }));
                }
                (true, None) => {
                    undo.push(held);
                    claims.push(None);
                }
                (false, _) => claims.push(None),
            }
        }
        if !undo.is_empty() {
            let pairs: Vec<(&str, &str)> = undo
                .iter()
                .map(|h| (h.key.as_str(), h.token.as_str()))
                .collect();
            let _ = self.node.release(&pairs).await;
        }
        Ok(claims)
    }

    async fn extend(&self, held: &Held, ttl: Duration) -> Result<Option<Instant>, LockError> {
        let start = Instant::now();
        if start >= held.valid_until {
            return Ok(None);
        }
        let ours = self
            .node
            .extend(&held.key, &held.token, ttl)
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(validity::extended(
            usize::from(ours),
            1,
            ttl,
            start,
            Instant::now(),
            held.valid_until,
        ))
    }

    async fn release(&self, held: &[Held]) -> Result<(), LockError> {
        let pairs: Vec<(&str, &str)> = held
            .iter()
            .map(|h| (h.key.as_str(), h.token.as_str()))
            .collect();
        self.node
            .release_later(&pairs)
            .await
            .map_err(|e| self.unavailable(e))
    }

    async fn record_completions(
        &self,
        message_id: &str,
        bindings: &[String],
        ttl: Duration,
    ) -> Result<(), LockError> {
        self.node
            .record(message_id, bindings, ttl)
            .await
            .map_err(|e| self.unavailable(e))
    }

    async fn check(&self) -> Result<(), LockError> {
        self.node.ping().await.map_err(|e| self.unavailable(e))
    }

    async fn flush(&self) {
        self.node.flush().await;
    }

    fn describe(&self) -> String {
        format!("Redis {}", self.node.label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_never_leak_a_password() {
        let t = Duration::from_secs(1);
        let node = Node::open(0, "redis://:s3cret@127.0.0.1:6390/2", None, t).expect("valid");
        assert_eq!(node.label(), "127.0.0.1:6390/2");
        let err = Node::open(1, "redis://:s3cret@", None, t).expect_err("no host");
        let text = err.to_string();
        assert!(text.contains("lock.urls[1]"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        let tls = Node::open(0, "rediss://u:s3cret@h:1", None, t).expect("TLS with system roots");
        assert_eq!(tls.label(), "h:1");
        let insecure =
            Node::open(0, "rediss://u:s3cret@h:1/#insecure", None, t).expect_err("no checks");
        let text = insecure.to_string();
        assert!(
            !text.contains("s3cret") && text.contains("ca_file"),
            "{text}"
        );
        assert!(Node::open(0, "http://h:1", None, t).is_err());
        // A Unix socket's password is a query parameter.
        let unix = Node::open(2, "redis+unix:///tmp/r.sock?pass=s3cret&db=x", None, t)
            .expect_err("bad db number");
        let text = unix.to_string();
        assert!(text.contains("lock.urls[2]"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn request_timeout_scales_with_the_lock() {
        assert_eq!(
            Node::timeout_for(Duration::from_secs(10)),
            Duration::from_secs(1)
        );
        assert_eq!(
            Node::timeout_for(Duration::from_secs(1)),
            Duration::from_millis(250)
        );
        assert_eq!(
            Node::timeout_for(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
    }

    #[tokio::test]
    async fn a_dead_node_fails_fast_and_never_panics() {
        // Port 1 on loopback: nothing listens there.
        let locks = RedisLocks::new(
            Node::open(0, "redis://127.0.0.1:1", None, Duration::from_millis(250)).expect("valid"),
        );
        let err = locks
            .try_acquire(&["m".into()], Duration::from_secs(5))
            .await
            .expect_err("down");
        assert!(matches!(err, LockError::Unavailable { .. }), "{err}");
        assert!(locks.check().await.is_err());
        // Within the back-off the node is not even dialled.
        let before = locks.node().round_trips();
        assert!(locks.check().await.is_err());
        assert_eq!(locks.node().round_trips(), before);
    }
}
