//! The Redlock algorithm over N independent Redis servers, as the Redis documentation
//! ("Distributed Locks with Redis") specifies it:
//!
//! 1. note the start time;
//! 2. try every node with the same key and random token, each with a short timeout (here:
//!    every key of a receive batch in one pipeline per node, all nodes at once);
//! 3. the lock is taken if a majority (N/2+1) of nodes took it and the time spent is below
//!    the lock's lifetime; its validity is `ttl - elapsed - drift`, where the clock drift
//!    allowance is 1% of the lifetime plus 2 ms;
//! 4. a lock not taken is released on every node (even those that seemed not to take it);
//! 5. retries wait a random delay so contending clients do not collide again
//!    ([`super::retry_delay`]).
//!
//! Extending sends the compare-and-extend script to every node; the lock stays ours only if a
//! majority extended it before the old validity ran out.
//!
//! Why not a crate: `rslock` (the maintained Rust Redlock) takes one resource per call, so a
//! batch of ten would cost ten round trips per node, and it pulls a second TLS stack. The
//! algorithm is small; the math is below with its tests.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use tokio::time::Instant;

use super::redis::{Node, NodeError};
use super::validity::{extended, quorum, valid_for, validity};
use super::{completion_key_for, Claim, Held, LockError, Locks};

/// Locks over three or more Redis servers.
#[derive(Debug)]
pub struct Redlock {
    nodes: Vec<Node>,
}

impl Redlock {
    /// Redlock over `nodes` (three or more for it to tolerate a failure).
    pub fn new(nodes: Vec<Node>) -> Redlock {
        Redlock { nodes }
    }

    /// The servers.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The quorum.
    pub fn quorum(&self) -> usize {
        quorum(self.nodes.len())
    }

    fn unavailable(&self, reachable: usize, errors: &[NodeError]) -> LockError {
        LockError::Unavailable {
            reachable,
            nodes: self.nodes.len(),
            needed: self.quorum(),
            detail: errors
                .iter()
                .map(NodeError::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        }
    }

    async fn release_pairs(&self, pairs: &[(&str, &str)]) -> (usize, Vec<NodeError>) {
        let replies = join_all(self.nodes.iter().map(|n| n.release(pairs))).await;
        split(replies)
    }
}

fn split<T>(replies: Vec<Result<T, NodeError>>) -> (usize, Vec<NodeError>) {
    let mut ok = 0;
    let mut errors = Vec::new();
    for reply in replies {
        match reply {
            Ok(_) => ok += 1,
            Err(e) => errors.push(e),
        }
    }
    (ok, errors)
}

#[async_trait]
impl Locks for Redlock {
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
        let replies = join_all(self.nodes.iter().map(|n| n.acquire(&requests, ttl))).await;
        let elapsed = start.elapsed();
        let mut answers = Vec::new();
        let mut errors = Vec::new();
        for reply in replies {
            match reply {
                Ok(a) => answers.push(a),
                Err(e) => errors.push(e),
            }
        }
        if answers.len() < self.quorum() {
            // Undecidable: undo whatever the reachable (or slow) nodes took.
            let pairs: Vec<(&str, &str)> = requests.iter().map(|(k, t, _)| (*k, *t)).collect();
            let _ = self.release_pairs(&pairs).await;
            return Err(self.unavailable(answers.len(), &errors));
        }
        let validity = validity(ttl, elapsed);
        let mut claims = Vec::with_capacity(candidates.len());
        let mut undo = Vec::new();
        for (i, (mut held, _)) in candidates.into_iter().enumerate() {
            let acks = answers.iter().filter(|a| a[i].acquired).count();
            if acks >= self.quorum() && validity.is_some() {
                let completed: BTreeSet<String> = answers
                    .iter()
                    .flat_map(|a| a[i].completed.iter().cloned())
                    .collect();
                held.valid_until = start + valid_for(ttl);
                claims.push(Some(Claim { held, completed }));
            } else {
                if acks > 0 || !errors.is_empty() {
                    undo.push(held);
                }
                claims.push(None);
            }
        }
        if !undo.is_empty() {
            let pairs: Vec<(&str, &str)> = undo
                .iter()
                .map(|h| (h.key.as_str(), h.token.as_str()))
                .collect();
            let _ = self.release_pairs(&pairs).await;
        }
        Ok(claims)
    }

    async fn extend(&self, held: &Held, ttl: Duration) -> Result<Option<Instant>, LockError> {
        let start = Instant::now();
        if start >= held.valid_until {
            return Ok(None);
        }
        let replies = join_all(
            self.nodes
                .iter()
                .map(|n| n.extend(&held.key, &held.token, ttl)),
        )
        .await;
        let now = Instant::now();
        let mut acks = 0;
        let mut reachable = 0;
        let mut errors = Vec::new();
        for reply in replies {
            match reply {
                Ok(ours) => {
                    reachable += 1;
                    acks += usize::from(ours);
                }
                Err(e) => errors.push(e),
            }
        }
        if acks < self.quorum() && reachable < self.quorum() {
            return Err(self.unavailable(reachable, &errors));
        }
        Ok(extended(
            acks,
            self.nodes.len(),
            ttl,
            start,
            now,
            held.valid_until,
        ))
    }

    async fn release(&self, held: &[Held]) -> Result<(), LockError> {
        let pairs: Vec<(&str, &str)> = held
            .iter()
            .map(|h| (h.key.as_str(), h.token.as_str()))
            .collect();
        let (ok, errors) =
            split(join_all(self.nodes.iter().map(|n| n.release_later(&pairs))).await);
        if ok == 0 {
            return Err(self.unavailable(0, &errors));
        }
        Ok(())
    }

    async fn record_completions(
        &self,
        message_id: &str,
        bindings: &[String],
        ttl: Duration,
    ) -> Result<(), LockError> {
        // Written to every node; read back as "any node has it". One reachable node is
        // enough to remember a success.
        let replies = join_all(
            self.nodes
                .iter()
                .map(|n| n.record(message_id, bindings, ttl)),
        )
        .await;
        let (ok, errors) = split(replies);
        if ok == 0 {
            return Err(self.unavailable(0, &errors));
        }
        Ok(())
    }

    async fn flush(&self) {
        join_all(self.nodes.iter().map(Node::flush)).await;
    }

    async fn check(&self) -> Result<(), LockError> {
        let (ok, errors) = split(join_all(self.nodes.iter().map(Node::ping)).await);
        if ok < self.quorum() {
            return Err(self.unavailable(ok, &errors));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "Redlock over {} Redis nodes ({}), quorum {}",
            self.nodes.len(),
            self.nodes
                .iter()
                .map(Node::label)
                .collect::<Vec<_>>()
                .join(", "),
            self.quorum()
        )
    }
}
