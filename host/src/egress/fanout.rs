//! The fan-out: every published event goes to every configured egress at once.
//!
//! Each egress is tried `outbox.attempts` times with exponential backoff while publishing; an
//! egress that still fails gets the event written to the [`Outbox`] before `publish` returns,
//! and is reported (log line, `iniesta_egress_deliveries_total{result="queued"}`). One failing
//! egress never delays or stops the others: they run concurrently and each settles on its own.
//! An egress that already has events waiting in the outbox is not tried while publishing: the
//! new event is queued behind them at once, so it keeps its order and a publish does not wait
//! out the attempts of an egress known to be down.
//! The outbox is drained by a running host ([`Fanout::run_drainer`], backoff per row up to
//! `outbox.max_backoff_secs`) and by the next `iniesta publish` ([`Fanout::drain_pending`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::outbox::{Outbox, OutboxError, Pending, Waiting};
use crate::ops::metrics as m;
use crate::wire::Outgoing;

/// Somewhere an event can go: a built-in (topic, queue) or a plugin's egress.
#[async_trait]
pub trait Egress: Send + Sync + 'static {
    /// Deliver one event; the destination's id for it (may be empty), or why not.
    async fn deliver(&self, event_id: &str, message: &Outgoing) -> Result<String, String>;

    /// One line for logs and `iniesta plugins`: what it is (never a secret).
    fn describe(&self) -> String;

    /// How many outbox events the drain may have under way at once for this egress, oldest
    /// first: 1 (the default) keeps their order strictly; the built-in egresses on standard
    /// destinations take a batch call's worth, which their batcher sends in one call.
    fn window(&self) -> usize {
        1
    }
}

/// A configured egress: its name (`[[egress]] name`) and the egress.
#[derive(Clone)]
pub struct NamedEgress {
    /// Unique among the config's egresses; the outbox keeps events under it.
    pub name: String,
    /// The egress.
    pub egress: Arc<dyn Egress>,
}

/// Retry settings, from `[outbox]`.
#[derive(Debug, Clone)]
pub struct RetrySettings {
    /// Attempts while publishing (at least 1).
    pub attempts: u32,
    /// First backoff delay.
    pub min_backoff: Duration,
    /// Longest backoff delay.
    pub max_backoff: Duration,
    /// How long one attempt may take.
    pub attempt_timeout: Duration,
}

impl RetrySettings {
    /// From a config's `[outbox]`.
    pub fn from_config(config: &crate::config::Config) -> RetrySettings {
        let o = &config.outbox;
        RetrySettings {
            attempts: o.attempts.max(1),
            min_backoff: Duration::from_millis(o.min_backoff_ms.max(1)),
            max_backoff: Duration::from_secs(o.max_backoff_secs.max(1)),
            attempt_timeout: Duration::from_secs(o.attempt_timeout_secs.max(1)),
        }
    }

    fn builder(&self) -> ExponentialBuilder {
        crate::backoff::exponential(self.min_backoff, self.max_backoff)
    }

    /// The delay before outbox attempt `attempts + 1`.
    pub fn backoff(&self, attempts: u32) -> Duration {
        crate::backoff::nth(self.min_backoff, self.max_backoff, attempts)
    }
}

/// What became of one event at one egress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The egress took it; its id there (may be empty).
    Delivered(String),
    /// It failed every attempt and waits in the outbox; the last error.
    Queued(String),
}

/// What became of one published event.
#[derive(Debug, Clone)]
pub struct FanoutReport {
    /// The event's id (the same at every egress and in the outbox).
    pub event_id: String,
    /// Per egress, in config order.
    pub deliveries: Vec<(String, Delivery)>,
}

impl FanoutReport {
    /// The id to hand back to the publisher: the first egress's id, else the event id.
    pub fn message_id(&self) -> String {
        self.deliveries
            .iter()
            .find_map(|(_, d)| match d {
                Delivery::Delivered(id) if !id.is_empty() => Some(id.clone()),
                _ => None,
            })
            .unwrap_or_else(|| self.event_id.clone())
    }

    /// The egresses that did not take the event now.
    pub fn queued(&self) -> Vec<&str> {
        self.deliveries
            .iter()
            .filter(|(_, d)| matches!(d, Delivery::Queued(_)))
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

/// Why an egress did not take an event while publishing.
#[derive(Debug, Clone, thiserror::Error)]
enum Failure {
    /// Every attempt failed; the last error.
    #[error("{0}")]
    Failed(String),
    /// Not tried: earlier events wait in the outbox for the egress.
    #[error("queued behind the earlier events waiting in the outbox for this egress")]
    Behind,
}

/// How many outbox rows a drain pass delivered and how many failed again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Delivered and removed.
    pub delivered: u64,
    /// Failed again (kept, due later).
    pub failed: u64,
}

/// Every configured egress, the outbox behind them, and the retry settings.
pub struct Fanout {
    egresses: Vec<NamedEgress>,
    outbox: Outbox,
    settings: RetrySettings,
    wake: Notify,
}

impl Fanout {
    /// A fan-out over `egresses` with `outbox`.
    pub fn new(egresses: Vec<NamedEgress>, outbox: Outbox, settings: RetrySettings) -> Fanout {
        Fanout {
            egresses,
            outbox,
            settings,
            wake: Notify::new(),
        }
    }

    /// The egresses, in config order.
    pub fn egresses(&self) -> &[NamedEgress] {
        &self.egresses
    }

    /// The outbox.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    async fn attempt(
        &self,
        egress: &NamedEgress,
        event_id: &str,
        message: &Outgoing,
    ) -> Result<String, String> {
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(
            self.settings.attempt_timeout,
            egress.egress.deliver(event_id, message),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no answer within {} s (outbox.attempt_timeout_secs)",
                self.settings.attempt_timeout.as_secs()
            )),
        };
        metrics::histogram!(m::EGRESS_DURATION, "egress" => egress.name.clone())
            .record(started.elapsed().as_secs_f64());
        result
    }

    /// Send `message` to every egress at once. Returns once each egress took it or it waits
    /// in the outbox for that egress; an error only if the outbox could not keep it.
    pub async fn publish(&self, message: &Outgoing) -> Result<FanoutReport, OutboxError> {
        let event_id = uuid::Uuid::new_v4().to_string();
        let names = self.egresses.iter().map(|e| e.name.clone()).collect();
        let backlogged = match self.outbox.backlogged(names).await {
            Ok(backlogged) => backlogged,
            Err(e) => {
                tracing::warn!(error = %e, outbox = %self.outbox.path().display(), "cannot read the outbox; trying every egress");
                Vec::new()
            }
        };
        let tries = self.egresses.iter().map(|egress| {
            let event_id = event_id.as_str();
            let behind = backlogged.contains(&egress.name);
            async move {
                if behind {
                    return (egress.name.clone(), Err(Failure::Behind));
                }
                let attempt = || self.attempt(egress, event_id, message);
                let result = attempt
                    .retry(
                        self.settings
                            .builder()
                            .with_max_times(self.settings.attempts.saturating_sub(1) as usize),
                    )
                    .sleep(tokio::time::sleep)
                    .notify(|error: &String, after: Duration| {
                        metrics::counter!(m::EGRESS_DELIVERIES, "egress" => egress.name.clone(), "result" => "retried").increment(1);
                        tracing::warn!(egress = %egress.name, event = %message.event, event_id = %event_id, error = %error,
                            retry_in_ms = after.as_millis() as u64, "egress failed; retrying");
                    })
                    .await;
                (egress.name.clone(), result.map_err(Failure::Failed))
            }
        });
        let results = futures_util::future::join_all(tries).await;
        let queued = results.iter().any(|(_, r)| r.is_err());
        let (mut failed, mut behind) = (Vec::new(), Vec::new());
        for (name, result) in &results {
            match result {
                Err(Failure::Failed(e)) => failed.push((name.clone(), Some(e.clone()))),
                // Not tried, so no error of its own: the rows ahead of it keep the egress's.
                Err(Failure::Behind) => behind.push((name.clone(), None)),
                Ok(_) => {}
            }
        }
        if !failed.is_empty() {
            self.outbox
                .put(
                    failed,
                    &event_id,
                    message,
                    self.settings.attempts,
                    self.settings.backoff(self.settings.attempts),
                )
                .await?;
        }
        if !behind.is_empty() {
            // Due with the rows ahead of it (put never makes a row due before them).
            self.outbox
                .put(behind, &event_id, message, 0, Duration::ZERO)
                .await?;
        }
        if queued {
            self.wake.notify_one();
        }
        let mut deliveries = Vec::with_capacity(results.len());
        for (name, result) in results {
            match result {
                Ok(id) => {
                    metrics::counter!(m::EGRESS_DELIVERIES, "egress" => name.clone(), "result" => "delivered").increment(1);
                    tracing::debug!(egress = %name, event = %message.event, event_id = %event_id, id = %id, "delivered");
                    deliveries.push((name, Delivery::Delivered(id)));
                }
                Err(Failure::Failed(error)) => {
                    metrics::counter!(m::EGRESS_DELIVERIES, "egress" => name.clone(), "result" => "queued").increment(1);
                    tracing::error!(egress = %name, event = %message.event, event_id = %event_id, error = %error,
                        attempts = self.settings.attempts, outbox = %self.outbox.path().display(),
                        "egress failed every attempt; the event waits in the outbox and is redelivered with backoff (by a running host, or the next publish)");
                    deliveries.push((name, Delivery::Queued(error)));
                }
                Err(failure @ Failure::Behind) => {
                    metrics::counter!(m::EGRESS_DELIVERIES, "egress" => name.clone(), "result" => "queued").increment(1);
                    tracing::warn!(egress = %name, event = %message.event, event_id = %event_id, reason = %failure,
                        outbox = %self.outbox.path().display(),
                        "queued in the outbox behind the events already waiting for this egress (not tried now, to keep their order)");
                    deliveries.push((name, Delivery::Queued(failure.to_string())));
                }
            }
        }
        Ok(FanoutReport {
            event_id,
            deliveries,
        })
    }

    /// One pass over the outbox: per egress, deliver its waiting events oldest first (due
    /// ones only when `due_only`, else every one not being sent elsewhere), up to the egress's
    /// [`Egress::window`] at once, until one fails. Egresses are drained concurrently.
    pub async fn drain(&self, due_only: bool) -> DrainReport {
        let lease = self.settings.attempt_timeout + Duration::from_secs(5);
        let passes = self.egresses.iter().map(|egress| async move {
            let mut report = DrainReport::default();
            let window = egress.egress.window().max(1);
            loop {
                let batch = match self.outbox.lease(&egress.name, due_only, lease, window).await {
                    Ok(batch) if batch.is_empty() => break,
                    Ok(batch) => batch,
                    Err(e) => {
                        tracing::error!(egress = %egress.name, error = %e, "cannot read the outbox");
                        break;
                    }
                };
                // Started in order (the batcher takes them in that order), answered each.
                let delivered = futures_util::future::join_all(
                    batch.iter().map(|pending| self.redeliver(egress, pending)),
                )
                .await;
                let failed = delivered.iter().filter(|ok| !**ok).count() as u64;
                report.delivered += delivered.len() as u64 - failed;
                if failed > 0 {
                    report.failed += failed;
                    break;
                }
            }
            report
        });
        futures_util::future::join_all(passes)
            .await
            .into_iter()
            .fold(DrainReport::default(), |a, b| DrainReport {
                delivered: a.delivered + b.delivered,
                failed: a.failed + b.failed,
            })
    }

    async fn redeliver(&self, egress: &NamedEgress, pending: &Pending) -> bool {
        match self
            .attempt(egress, &pending.event_id, &pending.message)
            .await
        {
            Ok(id) => {
                metrics::counter!(m::EGRESS_DELIVERIES, "egress" => egress.name.clone(), "result" => "redelivered").increment(1);
                tracing::info!(egress = %egress.name, event = %pending.message.event, event_id = %pending.event_id, id = %id,
                    attempts = pending.attempts + 1, "delivered from the outbox");
                if let Err(e) = self.outbox.delivered(pending.seq).await {
                    tracing::error!(egress = %egress.name, event_id = %pending.event_id, error = %e,
                        "delivered, but cannot remove it from the outbox: it will be sent again");
                }
                true
            }
            Err(error) => {
                let after = self.settings.backoff(pending.attempts + 1);
                metrics::counter!(m::EGRESS_DELIVERIES, "egress" => egress.name.clone(), "result" => "failed_again").increment(1);
                tracing::warn!(egress = %egress.name, event = %pending.message.event, event_id = %pending.event_id, error = %error,
                    attempts = pending.attempts + 1, retry_in_ms = after.as_millis() as u64, "egress still failing; the event stays in the outbox");
                if let Err(e) = self.outbox.failed(pending, &error, after).await {
                    tracing::error!(egress = %egress.name, event_id = %pending.event_id, error = %e, "cannot update the outbox");
                }
                false
            }
        }
    }

    /// Whether this config has an egress of this name.
    fn configured(&self, name: &str) -> bool {
        self.egresses.iter().any(|e| e.name == name)
    }

    /// Warn once per egress name about events waiting for an egress this config does not
    /// have (renamed or removed with events still waiting): nothing delivers them.
    fn report_unconfigured(
        &self,
        waiting: &[Waiting],
        reported: &mut std::collections::BTreeSet<String>,
    ) {
        for w in waiting {
            if !self.configured(&w.egress) && reported.insert(w.egress.clone()) {
                tracing::warn!(egress = %w.egress, pending = w.pending, outbox = %self.outbox.path().display(),
                    "events wait in the outbox for an egress that is not configured (renamed or removed); they are kept, and delivered once an [[egress]] of that name is back");
            }
        }
    }

    /// Deliver everything waiting now, ignoring backoff (what `iniesta publish` does first).
    pub async fn drain_pending(&self) -> DrainReport {
        self.drain(false).await
    }

    /// Record how many events wait per egress (the `iniesta_egress_outbox_pending` gauge).
    async fn record_backlog(&self) {
        if let Ok(backlog) = self.outbox.backlog().await {
            for egress in &self.egresses {
                let pending = backlog
                    .iter()
                    .find(|b| b.egress == egress.name)
                    .map(|b| b.pending)
                    .unwrap_or(0);
                metrics::gauge!(m::EGRESS_OUTBOX_PENDING, "egress" => egress.name.clone())
                    .set(pending as f64);
            }
        }
    }

    /// Drain the outbox with backoff until `shutdown`: wakes when a row is due or a publish
    /// queued one.
    pub async fn run_drainer(self: Arc<Self>, shutdown: CancellationToken) {
        let mut reported = std::collections::BTreeSet::new();
        loop {
            let report = self.drain(true).await;
            if report.delivered + report.failed > 0 {
                tracing::debug!(
                    delivered = report.delivered,
                    failed = report.failed,
                    "outbox pass"
                );
            }
            self.record_backlog().await;
            let wait = match self.outbox.waiting().await {
                Ok(waiting) => {
                    self.report_unconfigured(&waiting, &mut reported);
                    // Only this config's egresses: rows for one no longer configured are not
                    // drained, so they must not keep the drainer awake.
                    match waiting
                        .iter()
                        .filter(|w| self.configured(&w.egress))
                        .map(|w| w.next_due_ms)
                        .min()
                    {
                        Some(due) => {
                            let ms = (due - super::outbox::epoch_ms()).max(10) as u64;
                            Duration::from_millis(ms).min(self.settings.max_backoff)
                        }
                        None => self.settings.max_backoff,
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the outbox");
                    self.settings.max_backoff
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let s = RetrySettings {
            attempts: 3,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(1),
        };
        // Jitter adds up to the delay itself: attempt n waits within [base, 2 * base].
        let first = s.backoff(1);
        assert!(
            first >= Duration::from_millis(100) && first <= Duration::from_millis(200),
            "{first:?}"
        );
        let fourth = s.backoff(4);
        assert!(fourth >= Duration::from_millis(800), "{fourth:?}");
        assert!(s.backoff(40) <= Duration::from_secs(4));
    }
}
