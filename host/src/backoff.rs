//! Backoff between retries: exponential (doubling) from a minimum to a maximum, with jitter so
//! hosts that failed together do not retry together — through `backon`, the one place every
//! retry loop of the host takes its delays from (receives, deletes, lock-service waits,
//! publish batches, egress attempts).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The builder for delays doubling from `min` to `max`, with jitter, without a limit on the
/// number of tries (callers that stop after N tries say so themselves).
pub fn exponential(min: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

/// The delay before try `attempt + 1` after `attempt` failures (`attempt` ≥ 1), never over
/// `max` (backon adds its jitter after clamping to the maximum).
pub fn nth(min: Duration, max: Duration, attempt: u32) -> Duration {
    exponential(min, max)
        .build()
        .nth(attempt.saturating_sub(1) as usize)
        .unwrap_or(max)
        .min(max)
}

/// A retry delay with full jitter (whole seconds, as visibility timeouts are): a random time
/// between 0 and `base * 2^(attempt - 1)`, that bound capped at `max` (`attempt` ≥ 1). Spread
/// over the whole range, the retries of messages that failed together do not come back
/// together.
pub fn full_jitter(base_secs: u32, max_secs: u32, attempt: u32) -> u32 {
    let doublings = attempt.saturating_sub(1).min(31);
    let bound = u64::from(base_secs)
        .saturating_mul(1u64 << doublings)
        .min(u64::from(max_secs));
    // `bound` ≤ max_secs, a u32.
    fastrand::u32(0..=u32::try_from(bound).unwrap_or(max_secs))
}

/// A retry loop's delays: [`Backoff::next_delay`] after each failure, [`Backoff::reset`] after a
/// success.
pub struct Backoff {
    min: Duration,
    max: Duration,
    delays: ExponentialBackoff,
}

impl Backoff {
    /// Delays doubling from `min` to `max`, with jitter.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            delays: exponential(min, max).build(),
        }
    }

    /// The delay before the next try (never over the maximum).
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max).min(self.max)
    }

    /// Start again from the minimum.
    pub fn reset(&mut self) {
        self.delays = exponential(self.min, self.max).build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn full_jitter_spreads_over_the_doubling_bound_and_stops_at_the_cap() {
        for attempt in 1..=40 {
            let bound = (2u64 << (attempt - 1).min(31)).min(300) as u32;
            let delays: Vec<u32> = (0..200).map(|_| full_jitter(2, 300, attempt)).collect();
            assert!(
                delays.iter().all(|d| *d <= bound),
                "attempt {attempt}: {delays:?}"
            );
            if bound >= 8 {
                // Spread over the range, not stuck at one end.
                assert!(delays.iter().any(|d| *d < bound / 2), "attempt {attempt}");
                assert!(delays.iter().any(|d| *d > bound / 2), "attempt {attempt}");
            }
        }
        assert_eq!(full_jitter(0, 300, 5), 0);
        assert!(full_jitter(1, 1, u32::MAX) <= 1);
    }

    #[test]
    fn delays_grow_with_jitter_stay_under_the_maximum_and_reset() {
        let mut b = Backoff::new(MIN, MAX);
        let delays: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        // Jitter adds up to the delay itself: the first is within [min, 2 min).
        assert!(delays[0] >= MIN && delays[0] < 2 * MIN, "{delays:?}");
        assert!(delays.iter().all(|d| *d <= MAX), "{delays:?}");
        assert!(delays[11] >= MAX / 2, "it reaches the maximum: {delays:?}");
        b.reset();
        let again = b.next_delay();
        assert!(again >= MIN && again < 2 * MIN, "{again:?}");
    }

    #[test]
    fn jitter_spreads_hosts_that_failed_together() {
        let firsts: std::collections::HashSet<Duration> =
            (0..20).map(|_| nth(MIN, MAX, 3)).collect();
        assert!(firsts.len() > 1, "twenty hosts would not all wait the same");
        assert!(firsts.iter().all(|d| *d >= 4 * MIN && *d <= MAX));
    }
}
