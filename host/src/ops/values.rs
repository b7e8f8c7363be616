//! Metric values as numbers, for the console: a second recorder next to the Prometheus one
//! (both behind one `metrics_util` fan-out), keeping every counter and gauge in atomics that
//! [`Values`] reads directly, and every histogram as counts in fixed buckets ([`BOUNDS`]), from
//! which the console derives latency percentiles over an interval ([`Distribution`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use metrics_util::registry::{Registry, Storage};

/// Upper bounds (s) of the buckets kept for every histogram: finer than the Prometheus ones at
/// the fast end, where most handlers are; the last bucket takes everything above 300 s.
pub const BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// One histogram: a count per bucket of [`BOUNDS`] (and one above), and the sum of the values.
#[derive(Debug)]
pub struct Buckets {
    counts: [AtomicU64; BOUNDS.len() + 1],
    /// The sum, in nanoseconds of the recorded seconds.
    sum_nanos: AtomicU64,
}

impl Default for Buckets {
    fn default() -> Buckets {
        Buckets {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl HistogramFn for Buckets {
    fn record(&self, value: f64) {
        let value = if value.is_finite() {
            value.max(0.0)
        } else {
            0.0
        };
        let bucket = BOUNDS.partition_point(|bound| *bound < value);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add((value * 1e9) as u64, Ordering::Relaxed);
    }
}

impl Buckets {
    fn snapshot(&self) -> Distribution {
        Distribution {
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// The values a histogram recorded (since the start, or between two snapshots): a count per
/// bucket of [`BOUNDS`] plus one above, and their sum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Distribution {
    counts: Vec<u64>,
    sum: f64,
}

impl Distribution {
    /// How many values.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The values recorded after `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &Distribution) -> Distribution {
        Distribution {
            counts: self
                .counts
                .iter()
                .enumerate()
                .map(|(i, c)| c.saturating_sub(earlier.counts.get(i).copied().unwrap_or(0)))
                .collect(),
            sum: (self.sum - earlier.sum).max(0.0),
        }
    }

    /// The values of both.
    fn plus(&self, other: &Distribution) -> Distribution {
        let len = self.counts.len().max(other.counts.len());
        Distribution {
            counts: (0..len)
                .map(|i| {
                    self.counts.get(i).copied().unwrap_or(0)
                        + other.counts.get(i).copied().unwrap_or(0)
                })
                .collect(),
            sum: self.sum + other.sum,
        }
    }

    /// The mean, if any value was recorded.
    pub fn mean(&self) -> Option<f64> {
        let n = self.count();
        (n > 0).then(|| self.sum / n as f64)
    }

    /// The `q` quantile (0..=1), estimated as Prometheus' `histogram_quantile` does: linearly
    /// within the bucket it falls in (the first bucket starts at 0; above the last bound the
    /// last bound is the answer).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * n as f64;
        let mut below = 0u64;
        for (i, count) in self.counts.iter().enumerate() {
            if *count > 0 && (below + count) as f64 >= rank {
                let Some(upper) = BOUNDS.get(i) else {
                    return BOUNDS.last().copied();
                };
                let lower = if i == 0 { 0.0 } else { BOUNDS[i - 1] };
                let within = ((rank - below as f64) / *count as f64).clamp(0.0, 1.0);
                return Some(lower + (upper - lower) * within);
            }
            below += count;
        }
        BOUNDS.last().copied()
    }
}

/// The console's storage: atomics for counters and gauges, [`Buckets`] for histograms.
#[derive(Debug)]
pub struct ValueStorage;

impl<K> Storage<K> for ValueStorage {
    type Counter = Arc<AtomicU64>;
    type Gauge = Arc<AtomicU64>;
    type Histogram = Arc<Buckets>;

    fn counter(&self, _: &K) -> Self::Counter {
        Arc::new(AtomicU64::new(0))
    }

    fn gauge(&self, _: &K) -> Self::Gauge {
        Arc::new(AtomicU64::new(0))
    }

    fn histogram(&self, _: &K) -> Self::Histogram {
        Arc::new(Buckets::default())
    }
}

/// The current metric values of this process (a cheap clone of one registry).
#[derive(Clone)]
pub struct Values {
    registry: Arc<Registry<Key, ValueStorage>>,
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
            registry: Arc::new(Registry::new(ValueStorage)),
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
            if key.name() == name && key.labels().count() == labels.len() && has(key, labels) {
                found = Some(f64::from_bits(
                    gauge.load(std::sync::atomic::Ordering::Relaxed),
                ));
            }
        });
        found
    }
}

impl Values {
    /// What the histograms named `name` carrying `labels` (and any others) recorded so far,
    /// together; `None` when no such series was ever recorded.
    pub fn distribution(&self, name: &str, labels: &[(&str, &str)]) -> Option<Distribution> {
        let mut found: Option<Distribution> = None;
        self.registry.visit_histograms(|key, buckets| {
            if key.name() == name && has(key, labels) {
                let snapshot = buckets.snapshot();
                found = Some(match found.take() {
                    None => snapshot,
                    Some(sum) => sum.plus(&snapshot),
                });
            }
        });
        found
    }
}

/// Whether `key` carries every `(label, value)` of `labels`.
fn has(key: &Key, labels: &[(&str, &str)]) -> bool {
    labels.iter().all(|(label, value)| {
        key.labels()
            .any(|l| l.key() == *label && l.value() == *value)
    })
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

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.registry
            .get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
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

    #[test]
    fn histograms_give_counts_means_and_quantiles_over_an_interval() {
        let values = Values::new();
        let record = |seconds: &[f64]| {
            metrics::with_local_recorder(&values, || {
                for s in seconds {
                    metrics::histogram!("took", "binding" => "a").record(*s);
                }
            })
        };
        assert_eq!(values.distribution("took", &[("binding", "a")]), None);
        record(&[0.0002; 10]);
        let before = values
            .distribution("took", &[("binding", "a")])
            .expect("recorded");
        assert_eq!(before.count(), 10);
        // Ninety fast calls and ten slow ones after the first snapshot.
        let mut later = vec![0.003; 90];
        later.extend([2.0; 10]);
        record(&later);
        let now = values
            .distribution("took", &[("binding", "a")])
            .expect("recorded");
        let window = now.since(&before);
        assert_eq!(window.count(), 100);
        let mean = window.mean().expect("mean");
        assert!(
            (mean - (90.0 * 0.003 + 10.0 * 2.0) / 100.0).abs() < 1e-6,
            "{mean}"
        );
        // p50 within the 2.5–5 ms bucket, p95 within 1–2.5 s, p100 at most the bucket's top.
        let p50 = window.quantile(0.5).expect("p50");
        assert!((0.0025..=0.005).contains(&p50), "{p50}");
        let p95 = window.quantile(0.95).expect("p95");
        assert!((1.0..=2.5).contains(&p95), "{p95}");
        assert_eq!(window.quantile(1.0), Some(2.5));
        assert_eq!(Distribution::default().quantile(0.5), None);
        // Above the last bound, the last bound; nonsense values count as zero.
        record(&[1000.0, f64::NAN, -1.0]);
        let tail = values
            .distribution("took", &[("binding", "a")])
            .expect("recorded")
            .since(&now);
        assert_eq!(tail.count(), 3);
        assert_eq!(tail.quantile(1.0), Some(300.0));
        assert!(tail.quantile(0.1).is_some_and(|q| q <= 0.0001));
        assert_eq!(values.distribution("took", &[("binding", "b")]), None);
        // Series with more labels are summed.
        metrics::with_local_recorder(&values, || {
            metrics::histogram!("split", "binding" => "a", "kind" => "x").record(0.001);
            metrics::histogram!("split", "binding" => "a", "kind" => "y").record(0.001);
        });
        let both = values
            .distribution("split", &[("binding", "a")])
            .expect("recorded");
        assert_eq!(both.count(), 2);
    }
}
