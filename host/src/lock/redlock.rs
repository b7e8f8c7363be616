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
use super::{completion_key_for, Claim, Held, LockError, Locks};

/// Nodes that must agree: a strict majority.
pub fn quorum(nodes: usize) -> usize {
    nodes / 2 + 1
}

/// The clock drift allowance for a lifetime: 1% of it plus 2 ms (the Redis docs' factor).
pub fn drift(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}

/// How long a lock is ours, counted from the start of the request that took it.
pub fn valid_for(ttl: Duration) -> Duration {
    ttl.saturating_sub(drift(ttl))
}

/// The validity left after a request that took `elapsed`: `ttl - elapsed - drift`, or `None`
/// if nothing is left (then the lock must be treated as not taken).
pub fn validity(ttl: Duration, elapsed: Duration) -> Option<Duration> {
    let left = valid_for(ttl).saturating_sub(elapsed);
    (!left.is_zero()).then_some(left)
}

/// The new validity deadline after an extension that `acks` of `nodes` accepted, sent at
/// `start` and answered at `now`, of a lock valid until `old_valid_until`: `None` if the lock
/// is lost (no majority, or the old validity had passed before the answers came back).
pub fn extended(
    acks: usize,
    nodes: usize,
    ttl: Duration,
    start: Instant,
    now: Instant,
    old_valid_until: Instant,
) -> Option<Instant> {
    if acks < quorum(nodes) || now >= old_valid_until {
        return None;
    }
    validity(ttl, now.saturating_duration_since(start))?;
    Some(start + valid_for(ttl))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_is_a_strict_majority() {
        assert_eq!(quorum(1), 1);
        assert_eq!(quorum(3), 2);
        assert_eq!(quorum(4), 3);
        assert_eq!(quorum(5), 3);
        assert_eq!(quorum(7), 4);
    }

    #[test]
    fn drift_is_one_percent_plus_two_ms() {
        assert_eq!(drift(Duration::from_secs(10)), Duration::from_millis(102));
        assert_eq!(drift(Duration::from_secs(1)), Duration::from_millis(12));
        assert_eq!(
            valid_for(Duration::from_secs(10)),
            Duration::from_millis(9898)
        );
    }

    #[test]
    fn validity_deducts_elapsed_time_and_drift() {
        let ttl = Duration::from_secs(10);
        assert_eq!(
            validity(ttl, Duration::from_millis(5)),
            Some(Duration::from_millis(9893))
        );
        assert_eq!(
            validity(ttl, Duration::from_millis(9897)),
            Some(Duration::from_millis(1))
        );
        assert_eq!(validity(ttl, Duration::from_millis(9898)), None);
        assert_eq!(validity(ttl, Duration::from_secs(30)), None);
        assert_eq!(validity(Duration::from_millis(1), Duration::ZERO), None);
    }

    #[test]
    fn an_extension_needs_a_majority_within_the_old_validity() {
        let ttl = Duration::from_secs(10);
        let start = Instant::now();
        let now = start + Duration::from_millis(3);
        let old = start + Duration::from_secs(4);
        assert_eq!(
            extended(2, 3, ttl, start, now, old),
            Some(start + Duration::from_millis(9898))
        );
        assert_eq!(extended(1, 3, ttl, start, now, old), None, "minority");
        assert_eq!(
            extended(3, 3, ttl, start, old + Duration::from_millis(1), old),
            None,
            "answered after the old validity ran out"
        );
        assert_eq!(
            extended(1, 1, ttl, start, now, old),
            Some(start + valid_for(ttl))
        );
    }
}
