//! The periodic summary line: acks are logged at `debug` one by one, so at `info` a busy
//! host would look idle. Every `sqs.summary_interval_secs` in which anything happened, one
//! `info` line per binding says what its handler calls came to since the last line:
//! `acked`, `failed` (error, panic, timeout, crash), `retried` and `dead_lettered`. Nothing
//! is logged while idle; the last counts are logged when the run ends.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::plugins::Outcome;
use crate::route::Binding;

use super::invoke::CallResult;

/// One binding's handler results since the last summary line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Calls that returned `Ack`.
    pub acked: u64,
    /// Calls that failed: an error, a panic, a timeout or a crash.
    pub failed: u64,
    /// Calls that returned `Retry`.
    pub retried: u64,
    /// Calls that returned `DeadLetter`.
    pub dead_lettered: u64,
}

impl Counts {
    fn add(&mut self, result: &CallResult) {
        match result {
            CallResult::Outcome(Outcome::Ack) => self.acked += 1,
            CallResult::Outcome(Outcome::Retry { .. }) => self.retried += 1,
            CallResult::Outcome(Outcome::DeadLetter { .. }) => self.dead_lettered += 1,
            CallResult::Outcome(Outcome::Failed { .. } | Outcome::Panicked { .. })
            | CallResult::TimedOut
            | CallResult::Crashed(_) => self.failed += 1,
        }
    }
}

/// Handler results per binding label since the last summary line.
#[derive(Debug, Default)]
pub struct Summary {
    counts: Mutex<BTreeMap<String, Counts>>,
}

impl Summary {
    /// Count one message's results, in the order of `bindings`.
    pub fn record(&self, bindings: &[Arc<Binding>], results: &[CallResult]) {
        let mut counts = crate::mutex::lock(&self.counts);
        for (binding, result) in bindings.iter().zip(results) {
            // The label is copied only the first time a binding is counted in an interval.
            match counts.get_mut(&binding.label) {
                Some(c) => c.add(result),
                None => counts.entry(binding.label.clone()).or_default().add(result),
            }
        }
    }

    /// The counts so far, reset.
    pub fn take(&self) -> BTreeMap<String, Counts> {
        std::mem::take(&mut *crate::mutex::lock(&self.counts))
    }

    /// Log one line per binding that did anything since the last call; nothing when idle.
    pub fn log(&self, interval: Duration) {
        for (binding, c) in self.take() {
            tracing::info!(
                binding = %binding,
                acked = c.acked,
                failed = c.failed,
                retried = c.retried,
                dead_lettered = c.dead_lettered,
                interval_secs = interval.as_secs(),
                "summary: handler results since the last summary"
            );
        }
    }
}

/// Log the summary every `interval` until `stop`, then once more for what is left. A zero
/// interval turns the lines off.
pub async fn run(summary: Arc<Summary>, interval: Duration, stop: CancellationToken) {
    if interval.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => summary.log(interval),
        }
    }
    summary.log(interval);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_counted_by_kind_and_taken_once() {
        let mut counts = Counts::default();
        for result in [
            CallResult::Outcome(Outcome::Ack),
            CallResult::Outcome(Outcome::Ack),
            CallResult::Outcome(Outcome::Retry { after_secs: 1 }),
            CallResult::Outcome(Outcome::DeadLetter { reason: "r".into() }),
            CallResult::Outcome(Outcome::Failed { reason: "f".into() }),
            CallResult::Outcome(Outcome::Panicked {
                message: "p".into(),
            }),
            CallResult::TimedOut,
            CallResult::Crashed("c".into()),
        ] {
            counts.add(&result);
        }
        assert_eq!(
            counts,
            Counts {
                acked: 2,
                failed: 4,
                retried: 1,
                dead_lettered: 1
            }
        );
        let summary = Summary::default();
        crate::mutex::lock(&summary.counts).insert("b".into(), counts);
        assert_eq!(summary.take().get("b"), Some(&counts));
        assert!(
            summary.take().is_empty(),
            "taken once: an idle interval has nothing to log"
        );
    }
}
