//! In-process locks and completion records: the embedded default (`lock.urls = []`).
//!
//! Enough for one host with several pollers; two hosts on one queue need Redis.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::completion::LocalRecords;
use super::{Claim, Held, LockError, Locks};

/// In-process locks with expiry, plus in-process completion records.
#[derive(Default)]
pub struct LocalLocks {
    held: Mutex<HashMap<String, (String, Instant)>>,
    records: Mutex<LocalRecords>,
}

impl LocalLocks {
    /// Empty lock table, no records.
    pub fn new() -> Self {
        Self::default()
    }

    /// Completion records held now (for tests and metrics).
    pub fn records(&self) -> usize {
        crate::mutex::lock(&self.records).len()
    }
}

#[async_trait]
impl Locks for LocalLocks {
    async fn try_acquire(
        &self,
        message_ids: &[String],
        ttl: Duration,
    ) -> Result<Vec<Option<Claim>>, LockError> {
        let now = Instant::now();
        let mut answers = Vec::with_capacity(message_ids.len());
        {
            let mut held = crate::mutex::lock(&self.held);
            // Drop expired entries now and then so the table cannot grow without bound.
            if held.len() > 10_000 {
                held.retain(|_, (_, expires)| *expires > now);
            }
            for id in message_ids {
                let lock = Held::new(id, now + ttl);
                if held
                    .get(&lock.key)
                    .is_some_and(|(_, expires)| *expires > now)
                {
                    answers.push(None);
                    continue;
                }
                held.insert(lock.key.clone(), (lock.token.clone(), lock.valid_until));
                answers.push(Some(lock));
            }
        }
        let mut records = crate::mutex::lock(&self.records);
        Ok(answers
            .into_iter()
            .map(|lock| {
                lock.map(|held| Claim {
                    completed: records.completed(&held.message_id),
                    held,
                })
            })
            .collect())
    }

    async fn extend(&self, lock: &Held, ttl: Duration) -> Result<Option<Instant>, LockError> {
        let now = Instant::now();
        let mut held = crate::mutex::lock(&self.held);
        match held.get_mut(&lock.key) {
            Some((token, expires)) if *token == lock.token && *expires > now => {
                *expires = now + ttl;
                Ok(Some(*expires))
            }
            _ => Ok(None),
        }
    }

    async fn release(&self, locks: &[Held]) -> Result<(), LockError> {
        let mut held = crate::mutex::lock(&self.held);
        for lock in locks {
            if held
                .get(&lock.key)
                .is_some_and(|(token, _)| *token == lock.token)
            {
                held.remove(&lock.key);
            }
        }
        Ok(())
    }

    async fn record_completions(
        &self,
        message_id: &str,
        bindings: &[String],
        ttl: Duration,
    ) -> Result<(), LockError> {
        crate::mutex::lock(&self.records).record(message_id, bindings, ttl);
        Ok(())
    }

    async fn check(&self) -> Result<(), LockError> {
        Ok(())
    }

    fn describe(&self) -> String {
        "in-process locks".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn one(locks: &LocalLocks, id: &str, ttl: Duration) -> Option<Claim> {
        locks
            .try_acquire(&[id.to_string()], ttl)
            .await
            .expect("ok")
            .pop()
            .flatten()
    }

    #[tokio::test]
    async fn exclusive_until_released_or_expired() {
        let locks = LocalLocks::new();
        let ten = Duration::from_secs(10);
        let a = one(&locks, "k", ten).await.expect("free");
        assert_eq!(a.held.key, "sqs:event:k");
        assert!(one(&locks, "k", ten).await.is_none());
        let stranger = Held {
            token: "other".into(),
            ..a.held.clone()
        };
        locks
            .release(std::slice::from_ref(&stranger))
            .await
            .expect("ok");
        assert_eq!(locks.extend(&stranger, ten).await.expect("ok"), None);
        assert!(one(&locks, "k", ten).await.is_none());
        assert!(locks.extend(&a.held, ten).await.expect("ok").is_some());
        locks.release(&[a.held]).await.expect("ok");
        assert!(one(&locks, "k", Duration::from_millis(1)).await.is_some());
        tokio::time::sleep(Duration::from_millis(5)).await;
        let b = one(&locks, "k", ten).await.expect("expired lock is free");
        // A duplicate id in one batch: only the first copy gets the lock.
        locks.release(&[b.held]).await.expect("ok");
        let both = locks
            .try_acquire(&["d".into(), "d".into()], ten)
            .await
            .expect("ok");
        assert!(both[0].is_some() && both[1].is_none());
    }

    #[tokio::test]
    async fn completion_records_come_back_with_the_lock() {
        let locks = LocalLocks::new();
        let ten = Duration::from_secs(10);
        let claim = one(&locks, "m", ten).await.expect("free");
        assert!(claim.completed.is_empty());
        locks
            .record_completions("m", &["0:ledger/ledger".into()], Duration::from_secs(60))
            .await
            .expect("ok");
        locks.release(&[claim.held]).await.expect("ok");
        let again = one(&locks, "m", ten).await.expect("free");
        assert!(again.completed.contains("0:ledger/ledger"));
        assert_eq!(locks.records(), 1);
    }
}
