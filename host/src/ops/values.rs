//! Metric values as numbers, for the console: a second recorder next to the Prometheus one
//! (both behind one `metrics_util` fan-out), keeping every counter and gauge in atomics that
//! [`Values`] reads directly. Histograms are not kept here (the console shows none).

use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};

/// The current counter and gauge values of this process (a cheap clone of one registry).
#[derive(Clone)]
pub struct Values {
    registry: Arc<Registry<Key, AtomicStorage>>,
}

impl std::fmt::Debug for Values {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Values").finish_non_exhaustive()
    }
}

impl Default for Values {
    fn default() -> Values {
        Values::new()
    }
}

impl Values {
    /// An empty registry; install it (through [`super::metrics::install`]) to fill it.
    pub fn new() -> Values {
        Values {
            registry: Arc::new(Registry::atomic()),
        }
    }

    /// The sum of every series named `name`: counters and gauges, whatever their labels.
    pub fn sum(&self, name: &str) -> f64 {
        let mut total = 0.0;
        self.registry.visit_counters(|key, counter| {
            if key.name() == name {
                total += counter.load(std::sync::atomic::Ordering::Relaxed) as f64;
            }
        });
        self.registry.visit_gauges(|key, gauge| {
            if key.name() == name {
                total += f64::from_bits(gauge.load(std::sync::atomic::Ordering::Relaxed));
            }
        });
        total
    }

    /// The sum of the counters named `name` whose labels match every `(label, accepted
    /// values)` pair of `labels` (a series without that label does not match).
    pub fn counter_sum(&self, name: &str, labels: &[(&str, &[&str])]) -> u64 {
        let mut total = 0u64;
        self.registry.visit_counters(|key, counter| {
            if key.name() != name {
                return;
            }
            let matches = labels.iter().all(|(label, accepted)| {
                key.labels()
                    .find(|l| l.key() == *label)
                    .is_some_and(|l| accepted.contains(&l.value()))
            });
            if matches {
                total = total.saturating_add(counter.load(std::sync::atomic::Ordering::Relaxed));
            }
        });
        total
    }
}

impl Values {
    /// The gauge named `name` whose labels are exactly `labels` (values compared as given);
    /// `None` when no such series was ever set.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        self.registry.visit_gauges(|key, gauge| {
            if key.name() != name || key.labels().count() != labels.len() {
                return;
            }
            let matches = labels.iter().all(|(label, value)| {
                key.labels()
                    .any(|l| l.key() == *label && l.value() == *value)
            });
            if matches {
                found = Some(f64::from_bits(
                    gauge.load(std::sync::atomic::Ordering::Relaxed),
                ));
            }
        });
        found
    }
}

impl Recorder for Values {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.registry
            .get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.registry
            .get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_are_read_back_by_name_and_labels() {
        let values = Values::new();
        metrics::with_local_recorder(&values, || {
            metrics::counter!("calls", "binding" => "a", "result" => "ack").increment(3);
            metrics::counter!("calls", "binding" => "a", "result" => "panic").increment(2);
            metrics::counter!("calls", "binding" => "b", "result" => "ack").increment(7);
            metrics::counter!("received").absolute(11);
            metrics::gauge!("in_flight", "queue" => "q").set(2.5);
            metrics::gauge!("in_flight", "queue" => "r").increment(1.0);
        });
        assert_eq!(values.sum("received"), 11.0);
        assert_eq!(values.sum("in_flight"), 3.5);
        assert_eq!(values.sum("calls"), 12.0);
        assert_eq!(values.sum("missing"), 0.0);
        assert_eq!(
            values.counter_sum("calls", &[("binding", &["a"]), ("result", &["ack"])]),
            3
        );
        assert_eq!(
            values.counter_sum(
                "calls",
                &[("binding", &["a"]), ("result", &["ack", "panic"])]
            ),
            5
        );
        assert_eq!(values.counter_sum("calls", &[("binding", &["c"])]), 0);
        assert_eq!(values.counter_sum("calls", &[("other", &["a"])]), 0);
    }
}
