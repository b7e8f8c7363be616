//! Idempotency locks on `sqs:event:{message_id}`: one host runs a message at a time.
//!
//! With no `lock.urls` the locks are in-process (the embedded default): enough for one host
//! with several pollers. Redis and Redlock come with the lock issue.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

/// The lock key for a message, as the Python iniesta names it.
pub fn key_for(message_id: &str) -> String {
    format!("sqs:event:{message_id}")
}

/// A held lock; pass it back to release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The key.
    pub key: String,
    /// This holder's token (only the holder can release).
    pub token: String,
}

/// Lock failures (a lock held by someone else is not an error: it is `Ok(None)`).
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock service failed.
    #[error("lock service: {0}")]
    Service(String),
}

/// A lock service.
#[async_trait]
pub trait Locks: Send + Sync + 'static {
    /// Try once to take `key` for `ttl`.
    async fn try_acquire(&self, key: &str, ttl: Duration) -> Result<Option<Held>, LockError>;
    /// Release a lock this holder took (a no-op if it expired and someone else holds it).
    async fn release(&self, held: &Held) -> Result<(), LockError>;
}

/// Take `key`, trying `1 + retry_count` times with a short pause between attempts.
pub async fn acquire(
    locks: &dyn Locks,
    key: &str,
    ttl: Duration,
    retry_count: u32,
) -> Result<Option<Held>, LockError> {
    for attempt in 0..=retry_count {
        if let Some(held) = locks.try_acquire(key, ttl).await? {
            return Ok(Some(held));
        }
        if attempt < retry_count {
            tokio::time::sleep(Duration::from_millis(100 + 100 * u64::from(attempt))).await;
        }
    }
    Ok(None)
}

/// The lock service a config names: in-process for no URLs.
pub async fn from_config(
    config: &crate::config::LockConfig,
) -> Result<std::sync::Arc<dyn Locks>, LockError> {
    if config.urls.is_empty() {
        return Ok(std::sync::Arc::new(LocalLocks::new()));
    }
    Err(LockError::Service(
        "Redis locks are not built yet: leave lock.urls empty for in-process locks".into(),
    ))
}

/// In-process locks with expiry.
#[derive(Default)]
pub struct LocalLocks {
    held: Mutex<HashMap<String, (String, Instant)>>,
}

impl LocalLocks {
    /// Empty lock table.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Locks for LocalLocks {
    async fn try_acquire(&self, key: &str, ttl: Duration) -> Result<Option<Held>, LockError> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if let Some((_, expires)) = held.get(key) {
            if *expires > now {
                return Ok(None);
            }
        }
        // Drop expired entries now and then so the table cannot grow without bound.
        if held.len() > 10_000 {
            held.retain(|_, (_, expires)| *expires > now);
        }
        let token = uuid::Uuid::new_v4().to_string();
        held.insert(key.to_string(), (token.clone(), now + ttl));
        Ok(Some(Held {
            key: key.to_string(),
            token,
        }))
    }

    async fn release(&self, lock: &Held) -> Result<(), LockError> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held
            .get(&lock.key)
            .map(|(t, _)| t == &lock.token)
            .unwrap_or(false)
        {
            held.remove(&lock.key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exclusive_until_released_or_expired() {
        let locks = LocalLocks::new();
        let a = locks
            .try_acquire("k", Duration::from_secs(10))
            .await
            .expect("ok")
            .expect("free");
        assert!(locks
            .try_acquire("k", Duration::from_secs(10))
            .await
            .expect("ok")
            .is_none());
        let stranger = Held {
            key: "k".into(),
            token: "other".into(),
        };
        locks.release(&stranger).await.expect("ok");
        assert!(locks
            .try_acquire("k", Duration::from_secs(10))
            .await
            .expect("ok")
            .is_none());
        locks.release(&a).await.expect("ok");
        assert!(locks
            .try_acquire("k", Duration::from_millis(1))
            .await
            .expect("ok")
            .is_some());
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(locks
            .try_acquire("k", Duration::from_secs(1))
            .await
            .expect("ok")
            .is_some());
        assert_eq!(key_for("abc"), "sqs:event:abc");
    }
}
