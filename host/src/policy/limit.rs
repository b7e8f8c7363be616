//! A binding's limits: at most `max_concurrency` calls at once (a semaphore) and at most
//! `max_per_second` calls per second (a token bucket from `governor`, holding one second's
//! worth, on the tokio clock so paused-clock tests and real time agree). A call over a limit
//! waits; it never fails for it.

use std::num::NonZeroU32;
use std::ops::Add;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ops::metrics as m;

/// A tokio [`tokio::time::Instant`] as governor's clock reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokioInstant(tokio::time::Instant);

impl Add<Nanos> for TokioInstant {
    type Output = TokioInstant;
    fn add(self, nanos: Nanos) -> TokioInstant {
        TokioInstant(self.0 + Duration::from(nanos))
    }
}

impl Reference for TokioInstant {
    fn duration_since(&self, earlier: TokioInstant) -> Nanos {
        self.0.saturating_duration_since(earlier.0).into()
    }

    fn saturating_sub(&self, duration: Nanos) -> TokioInstant {
        self.0
            .checked_sub(duration.into())
            .map(TokioInstant)
            .unwrap_or(*self)
    }
}

/// Governor's clock on tokio's time.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = TokioInstant;
    fn now(&self) -> TokioInstant {
        TokioInstant(tokio::time::Instant::now())
    }
}

type Bucket = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<TokioInstant>>;

/// A binding's limits (none by default).
pub struct Limits {
    concurrency: Option<Arc<Semaphore>>,
    rate: Option<Bucket>,
    /// Calls waiting for a token take turns in arrival order (a fair lock), so under overload
    /// no call keeps losing the race for the next token.
    turn: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("concurrency", &self.concurrency.is_some())
            .field("rate", &self.rate.is_some())
            .finish()
    }
}

/// Held for as long as a call runs (its thread included, when it outlives its timeout).
#[derive(Debug)]
pub struct Permit {
    _slot: Option<OwnedSemaphorePermit>,
}

impl Limits {
    /// Limits of `max_concurrency` calls at once and `max_per_second` calls per second (both
    /// checked by the config: at least 1, and a finite positive rate).
    pub fn new(max_concurrency: Option<u32>, max_per_second: Option<f64>) -> Limits {
        let rate = max_per_second
            .filter(|r| r.is_finite() && *r > 0.0)
            .and_then(|r| {
                let burst = NonZeroU32::new(r.ceil().clamp(1.0, f64::from(u32::MAX)) as u32)?;
                Quota::with_period(Duration::from_secs_f64(1.0 / r))
                    .map(|q| RateLimiter::direct_with_clock(q.allow_burst(burst), TokioClock))
            });
        Limits {
            concurrency: max_concurrency
                .filter(|n| *n > 0)
                .map(|n| Arc::new(Semaphore::new(n as usize))),
            rate,
            turn: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.concurrency.is_some() || self.rate.is_some()
    }

    /// Wait until a call of `binding` may start: first a free slot (so a call waiting for one
    /// holds no token), then a token. Every wait is counted
    /// (`iniesta_binding_limit_waits_total{binding, limit}`).
    pub async fn acquire(&self, binding: &str) -> Permit {
        let slot = match &self.concurrency {
            Some(slots) => {
                if slots.available_permits() == 0 {
                    metrics::counter!(m::LIMIT_WAITS, "binding" => binding.to_string(), "limit" => "concurrency").increment(1);
                }
                // Never closed: the semaphore lives as long as these limits.
                slots.clone().acquire_owned().await.ok()
            }
            None => None,
        };
        if let Some(bucket) = &self.rate {
            let _turn = self.turn.lock().await;
            let mut waited = false;
            while let Err(not_until) = bucket.check() {
                if !waited {
                    metrics::counter!(m::LIMIT_WAITS, "binding" => binding.to_string(), "limit" => "rate").increment(1);
                    waited = true;
                }
                let wait = not_until.wait_time_from(TokioClock.now());
                tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
            }
        }
        Permit { _slot: slot }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_rate_spaces_calls_and_the_slots_cap_them() {
        // Two per second, a bucket of two: two at once, then one every half second.
        let limits = Limits::new(None, Some(2.0));
        let start = tokio::time::Instant::now();
        let mut at = Vec::new();
        for _ in 0..6 {
            let _permit = limits.acquire("b").await;
            at.push(start.elapsed().as_millis());
        }
        assert_eq!(at, [0, 0, 500, 1000, 1500, 2000]);

        // One slot: the second caller waits until the first permit is dropped.
        let limits = Arc::new(Limits::new(Some(1), None));
        let first = limits.acquire("b").await;
        let waiter = {
            let limits = limits.clone();
            tokio::spawn(async move {
                let _second = limits.acquire("b").await;
                tokio::time::Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!waiter.is_finished(), "a second call waits for the slot");
        let released = tokio::time::Instant::now();
        drop(first);
        let got = waiter.await.expect("the waiter");
        assert_eq!(got, released);
        assert!(!Limits::new(None, None).any());
        // A slow rate: one call every ten seconds.
        let slow = Limits::new(None, Some(0.1));
        let start = tokio::time::Instant::now();
        let _a = slow.acquire("b").await;
        let _b = slow.acquire("b").await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }
}
