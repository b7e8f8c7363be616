//! Idempotency: message locks on `sqs:event:{message_id}` and completion records beside them.
//!
//! The lock stops two consumers running the same message at once; a completion record per
//! (message id, binding) stops a redelivered duplicate from running a handler that already
//! acked. Both live in one store, chosen by `[lock] urls`:
//!
//! - none: in-process ([`local::LocalLocks`]), enough for one host with several pollers;
//! - one: a single Redis ([`redis::RedisLocks`]): `SET NX PX`, compare-and-delete release,
//!   compare-and-extend;
//! - three or more: the Redlock quorum over independent Redis servers ([`redlock::Redlock`]).
//!
//! `rediss://` URLs reach Redis over TLS ([`tls`], `[lock.tls]` for a private CA or a client
//! certificate), and `redis://USER:PASSWORD@HOST` logs in as a Redis ACL user.
//!
//! `[lock] server` is the shortcut for the Python iniesta's layout: Redlock over databases
//! 1, 2 and 3 of one server ([`nodes::node_urls`]), so both sides take the
//! same locks.
//!
//! A receive batch takes all its locks in one pipelined round trip per Redis node, and the
//! same round trip reads the batch's completion records and carries the releases and
//! completion records queued since the previous batch (see [`redis`], "Deferred writes"). Redis only ever sees message ids,
//! random tokens and binding ids, never a message body.
//!
//! Settings follow the Python iniesta (aioredlock): `retry_count` is the number of attempts
//! (at least one) with a random 100–300 ms pause between them, and `timeout_secs` is the
//! lock's lifetime, extended while a handler runs.

pub mod completion;
pub mod local;
pub mod nodes;
pub mod redis;
pub mod redlock;
pub mod tls;
pub mod url;
pub mod validity;

pub use url::redact;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::tasks::Tasks;

pub use completion::binding_id;
pub use local::LocalLocks;

/// The lock key for a message, as the Python iniesta names it.
pub fn key_for(message_id: &str) -> String {
    format!("sqs:event:{message_id}")
}

/// The Redis hash holding a message's completion records (field = binding id).
pub fn completion_key_for(message_id: &str) -> String {
    format!("sqs:event:{message_id}:done")
}

/// A held lock; pass it back to extend or release it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The message the lock guards.
    pub message_id: String,
    /// The key (`sqs:event:{message_id}`).
    pub key: String,
    /// This holder's random token: only the holder can extend or release.
    pub token: String,
    /// Until when the lock is surely ours (the Redlock validity time, drift deducted).
    pub valid_until: Instant,
}

impl Held {
    /// A new lock on `message_id` with a fresh random token.
    pub fn new(message_id: &str, valid_until: Instant) -> Held {
        Held {
            message_id: message_id.to_string(),
            key: key_for(message_id),
            token: uuid::Uuid::new_v4().to_string(),
            valid_until,
        }
    }
}

/// A taken lock together with the bindings already completed for its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The lock.
    pub held: Held,
    /// Binding ids ([`binding_id`]) recorded as completed for this message.
    pub completed: BTreeSet<String>,
}

/// Lock failures. A lock held by someone else is not an error: it is `Ok(None)`.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Too few Redis nodes answered to decide anything.
    #[error("lock service unavailable: {reachable} of {nodes} Redis node(s) answered, {needed} needed ({detail})")]
    Unavailable {
        /// Nodes that answered.
        reachable: usize,
        /// Nodes configured.
        nodes: usize,
        /// Nodes needed (the quorum).
        needed: usize,
        /// What the others said (node addresses only, never credentials).
        detail: String,
    },
    /// A `lock.urls` entry cannot be used.
    #[error("lock.urls[{index}] `{url}`: {reason}")]
    BadUrl {
        /// Position in `lock.urls`.
        index: usize,
        /// The URL with any password replaced by `***`.
        url: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// Any other lock service failure.
    #[error("lock service: {0}")]
    Service(String),
}

/// A lock service with completion records.
#[async_trait]
pub trait Locks: Send + Sync + 'static {
    /// Try once to take the lock of every message for `ttl`, and read the completion records
    /// of each; one answer per id, in order (`None`: someone else holds it). A message id may
    /// appear twice (a duplicate in one batch): only one of them gets the lock. An error means
    /// the service could not decide (too few nodes reachable); nothing is held then.
    async fn try_acquire(
        &self,
        message_ids: &[String],
        ttl: Duration,
    ) -> Result<Vec<Option<Claim>>, LockError>;

    /// Extend a held lock to `ttl` from now. `Ok(Some(valid_until))`: still ours;
    /// `Ok(None)`: lost (expired, or someone else holds it); an error: undecided, try again
    /// while `held.valid_until` has not passed.
    async fn extend(&self, held: &Held, ttl: Duration) -> Result<Option<Instant>, LockError>;

    /// Release locks this holder took (a lock that expired and was taken by someone else is
    /// left alone).
    async fn release(&self, held: &[Held]) -> Result<(), LockError>;

    /// Record that `bindings` completed (acked) `message_id`; the records expire after `ttl`.
    async fn record_completions(
        &self,
        message_id: &str,
        bindings: &[String],
        ttl: Duration,
    ) -> Result<(), LockError>;

    /// Whether enough of the service is reachable to take locks.
    async fn check(&self) -> Result<(), LockError>;

    /// Send any releases and completion records held back to ride along with the next
    /// acquire ([`redis::Node::defer_writes`]). Called by the flusher and at shutdown.
    async fn flush(&self) {}

    /// One line for logs: `in-process locks`, `Redis 127.0.0.1:6379`, `Redlock over 3 ...`.
    fn describe(&self) -> String;
}

/// The longest lifetime taken from the config for a lock or a completion record (a year):
/// larger values are clamped so time arithmetic cannot overflow.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// A configured lifetime in seconds as a [`Duration`], at most [`MAX_TTL`].
pub fn ttl_from_secs(secs: u64) -> Duration {
    Duration::from_secs(secs).min(MAX_TTL)
}

/// Attempts per lock, as aioredlock counts `retry_count`: the total number of tries, at least 1.
pub fn attempts(retry_count: u32) -> u32 {
    retry_count.max(1)
}

/// The pause before another attempt: random in 100–300 ms (aioredlock's defaults), so that
/// contending hosts do not retry in lock step.
pub fn retry_delay() -> Duration {
    let random = uuid::Uuid::new_v4().as_u128();
    Duration::from_millis(100 + (random % 201) as u64)
}

/// The lock service a config names: in-process for no URLs, a single Redis for one, the
/// Redlock quorum for three or more. Connections are made lazily: a Redis that is down at
/// start is logged, not fatal, and used once it answers. The flusher of deferred writes is a
/// task of `tasks`: it ends when they stop (sending what waits) or when the locks are dropped.
///
/// `base_dir` resolves the relative paths of `[lock.tls]` (the config file's directory).
pub async fn from_config(
    config: &crate::config::LockConfig,
    base_dir: &std::path::Path,
    tasks: &Tasks,
) -> Result<Arc<dyn Locks>, LockError> {
    let tls = tls::TlsFiles::load(config.tls.as_ref(), base_dir)?;
    let ttl = ttl_from_secs(config.timeout_secs.max(1));
    // Releases and completion records ride along with the next acquire; the flusher below
    // sends them when none comes within `redis::LINGER`.
    let wake = Arc::new(tokio::sync::Notify::new());
    // `urls`, or the `server` shortcut expanded to one URL per database.
    let urls = config
        .node_urls()
        .map_err(|problem| LockError::Service(problem.to_string()))?;
    let locks: Arc<dyn Locks> = match urls.as_slice() {
        [] => Arc::new(LocalLocks::new()),
        [url] => Arc::new(redis::RedisLocks::new(
            redis::Node::open(0, url, tls.as_ref(), redis::Node::timeout_for(ttl))?
                .defer_writes(wake.clone()),
        )),
        [_, _] => return Err(LockError::Service(
            "two Redis servers cannot form a quorum: use none (in-process), one, or three or more"
                .into(),
        )),
        _ => {
            let nodes = urls
                .iter()
                .enumerate()
                .map(|(i, url)| {
                    redis::Node::open(i, url, tls.as_ref(), redis::Node::timeout_for(ttl))
                        .map(|node| node.defer_writes(wake.clone()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Arc::new(redlock::Redlock::new(nodes))
        }
    };
    if !urls.is_empty() {
        spawn_flusher(Arc::downgrade(&locks), wake, tasks);
    }
    match locks.check().await {
        Ok(()) => tracing::info!(locks = %locks.describe(), "idempotency locks ready"),
        Err(e) => tracing::error!(locks = %locks.describe(), error = %e,
            "the lock service is not reachable yet; messages wait (not run, not deleted) until it is"),
    }
    Ok(locks)
}

/// Send deferred writes [`redis::LINGER`] after the first one queued into an empty queue,
/// until the lock service is dropped or `tasks` stop (then once more, if it is still there).
fn spawn_flusher(locks: std::sync::Weak<dyn Locks>, wake: Arc<tokio::sync::Notify>, tasks: &Tasks) {
    let stopping = tasks.stopping();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = stopping.cancelled() => {
                    if let Some(locks) = locks.upgrade() {
                        locks.flush().await;
                    }
                    return;
                }
                _ = wake.notified() => {}
            }
            tokio::time::sleep(redis::LINGER).await;
            match locks.upgrade() {
                Some(locks) => locks.flush().await,
                None => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_redaction() {
        assert_eq!(key_for("abc"), "sqs:event:abc");
        assert_eq!(completion_key_for("abc"), "sqs:event:abc:done");
        assert_eq!(
            redact("redis://user:s3cret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact("redis://:p@ss@h:1"), "redis://***@h:1");
        assert_eq!(redact("redis://h:1/2"), "redis://h:1/2");
        assert_eq!(redact("not a url"), "not a url");
        // Unix sockets: the credentials are query parameters.
        assert_eq!(
            redact("redis+unix:///run/redis.sock?user=u&pass=s3cret&db=2"),
            "redis+unix:///run/redis.sock?user=***&pass=***&db=2"
        );
        assert_eq!(
            redact("unix:///r.sock?db=1&pass=s3cret#x"),
            "unix:///r.sock?db=1&pass=***#x"
        );
    }

    #[test]
    fn retry_count_counts_attempts_like_aioredlock() {
        assert_eq!(attempts(0), 1);
        assert_eq!(attempts(1), 1);
        assert_eq!(attempts(3), 3);
        for _ in 0..100 {
            let d = retry_delay();
            assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(300));
        }
    }
}
