//! Redlock's timing math (the Redis documentation, "Distributed Locks with Redis"): the quorum,
//! the clock drift allowance, how long a taken lock stays valid, and whether an extension kept
//! it. Pure functions, used by the single-node client ([`super::redis`]) and the quorum
//! ([`super::redlock`]) alike, so neither imports the other for them.

use std::time::Duration;

use tokio::time::Instant;

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
