//! A binding's delivery policies in `[[bindings]]`: `max_concurrency` and `max_per_second`
//! (limits), `[bindings.retry]` (how failed calls are retried),
//! `[bindings.circuit_breaker]` and `[bindings.batch]` (how a batch handler's batches are
//! gathered). The policies themselves run in [`crate::policy`]; batches are gathered in
//! [`crate::pipeline::batch`].

use serde::{Deserialize, Serialize};

use super::Problem;

/// The failure kinds a policy can name.
pub const FAILURE_KINDS: &[&str] = &["error", "panic", "timeout", "crashed"];

/// SQS's longest visibility timeout (12 h): no retry delay can be longer.
pub const MAX_DELAY_SECS: u32 = 43_200;

/// `[bindings.retry]`: what a failed call (an error, a panic, a timeout, a crashed worker)
/// comes to. Without it a failed message is left to come back after the visibility timeout
/// and the queue's `max_receive_count` decides when it is dead-lettered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Deliveries a message gets before a failure (or a handler's `Retry`) dead-letters it,
    /// counting the first (at most `sqs.max_receive_count`).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The first retry's delay bound (s): retry `n` waits a random time up to
    /// `backoff_base_secs * 2^(n-1)` (full jitter), at most `backoff_max_secs`.
    #[serde(default = "default_backoff_base")]
    pub backoff_base_secs: u32,
    /// The longest retry delay (s; at most 43200, SQS's visibility limit).
    #[serde(default = "default_backoff_max")]
    pub backoff_max_secs: u32,
    /// Failure kinds not worth retrying: `error`, `panic`, `timeout`, `crashed`. Such a
    /// failure dead-letters the message at once, with its reason.
    #[serde(default)]
    pub dead_letter_on: Vec<String>,
    /// Error texts not worth retrying: a handler error containing any of them dead-letters
    /// the message at once.
    #[serde(default)]
    pub dead_letter_on_errors: Vec<String>,
}

fn default_max_attempts() -> u32 {
    5
}
fn default_backoff_base() -> u32 {
    1
}
fn default_backoff_max() -> u32 {
    300
}

/// `[bindings.circuit_breaker]`: after `consecutive_failures` failed calls in a row, the
/// binding is handed no message for `cooldown_secs` (its messages go back to the queue with
/// that delay, not to the DLQ); then one message probes it (half-open): a success closes the
/// circuit, a failure opens it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Failed calls in a row that open the circuit.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// How long an open circuit hands the binding nothing (s).
    #[serde(default = "default_cooldown")]
    pub cooldown_secs: u32,
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_cooldown() -> u32 {
    30
}

/// `[bindings.batch]`: how the messages a batch handler takes are gathered into one call.
/// A batch handler's binding without it gets the defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// The most messages in one call.
    #[serde(default = "default_batch_max_size")]
    pub max_size: u32,
    /// How long the first message of a batch waits for more before the call starts (ms; 0:
    /// only the messages already there).
    #[serde(default = "default_batch_max_wait_ms")]
    pub max_wait_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_size: default_batch_max_size(),
            max_wait_ms: default_batch_max_wait_ms(),
        }
    }
}

fn default_batch_max_size() -> u32 {
    10
}
fn default_batch_max_wait_ms() -> u64 {
    20
}

/// The largest `batch.max_size`.
pub const MAX_BATCH_SIZE: u32 = 1000;
/// The longest `batch.max_wait_ms` (a waiting message's visibility timeout keeps running).
pub const MAX_BATCH_WAIT_MS: u64 = 10_000;

/// Problems with a binding's policies (`key` is `bindings[2]`) on the queue of `sqs`.
pub fn problems(
    key: &str,
    max_concurrency: Option<u32>,
    max_per_second: Option<f64>,
    retry: Option<&RetryConfig>,
    breaker: Option<&BreakerConfig>,
    batch: Option<&BatchConfig>,
    sqs: &super::SqsConfig,
) -> Vec<Problem> {
    let max_receive_count = sqs.max_receive_count;
    let mut problems = Vec::new();
    let mut bad =
        |k: &str, message: String| problems.push(Problem::new(format!("{key}.{k}"), message));
    if max_concurrency == Some(0) {
        bad(
            "max_concurrency",
            "must be at least 1 (leave it out for no limit)".into(),
        );
    }
    if let Some(rate) = max_per_second {
        if !rate.is_finite() || !(0.001..=1_000_000.0).contains(&rate) {
            bad(
                "max_per_second",
                format!("{rate} is not a rate: give calls per second between 0.001 and 1000000 (leave it out for no limit)"),
            );
        }
    }
    if let Some(retry) = retry {
        if sqs.dead_letter_queue.is_none() {
            bad(
                "retry",
                "needs sqs.dead_letter_queue: a message that runs out of attempts, or fails in a way not worth retrying, is dead-lettered".into(),
            );
        }
        if retry.max_attempts == 0 {
            bad(
                "retry.max_attempts",
                "must be at least 1 (1: no retry at all)".into(),
            );
        }
        if retry.max_attempts > max_receive_count {
            bad(
                "retry.max_attempts",
                format!(
                    "{} is above sqs.max_receive_count {max_receive_count}: the queue's redrive policy would move the message first; lower it or raise sqs.max_receive_count",
                    retry.max_attempts
                ),
            );
        }
        if retry.backoff_max_secs > MAX_DELAY_SECS {
            bad(
                "retry.backoff_max_secs",
                format!(
                    "{} is above {MAX_DELAY_SECS} (12 h, SQS's longest visibility timeout)",
                    retry.backoff_max_secs
                ),
            );
        }
        if retry.backoff_base_secs > retry.backoff_max_secs {
            bad(
                "retry.backoff_base_secs",
                format!(
                    "{} is above backoff_max_secs {}",
                    retry.backoff_base_secs, retry.backoff_max_secs
                ),
            );
        }
        for (i, kind) in retry.dead_letter_on.iter().enumerate() {
            if !FAILURE_KINDS.contains(&kind.as_str()) {
                bad(
                    &format!("retry.dead_letter_on[{i}]"),
                    format!("`{kind}` is not one of {}", FAILURE_KINDS.join(", ")),
                );
            }
        }
        for (i, text) in retry.dead_letter_on_errors.iter().enumerate() {
            if text.trim().is_empty() {
                bad(
                    &format!("retry.dead_letter_on_errors[{i}]"),
                    "is empty: it would match every error (use dead_letter_on = [\"error\"] for that)".into(),
                );
            }
        }
    }
    if let Some(batch) = batch {
        if !(1..=MAX_BATCH_SIZE).contains(&batch.max_size) {
            bad(
                "batch.max_size",
                format!("must be between 1 and {MAX_BATCH_SIZE}"),
            );
        }
        if batch.max_wait_ms > MAX_BATCH_WAIT_MS {
            bad(
                "batch.max_wait_ms",
                format!(
                    "{} is above {MAX_BATCH_WAIT_MS} (10 s): messages wait for their batch while their visibility timeout runs",
                    batch.max_wait_ms
                ),
            );
        }
    }
    if let Some(breaker) = breaker {
        if breaker.consecutive_failures == 0 {
            bad(
                "circuit_breaker.consecutive_failures",
                "must be at least 1".into(),
            );
        }
        if breaker.cooldown_secs == 0 || breaker.cooldown_secs > MAX_DELAY_SECS {
            bad(
                "circuit_breaker.cooldown_secs",
                format!(
                    "must be between 1 and {MAX_DELAY_SECS} (messages wait it out on the queue)"
                ),
            );
        }
    }
    problems
}

/// What a config allows but a user likely did not mean, one text per binding: a circuit whose
/// cooldowns the queue's redrive policy cuts short. Every message an open circuit gives back is
/// a delivery in SQS's count, so after about `cooldown_secs × (max_receive_count − 1)` of
/// outage the queue moves them to the DLQ with no reason.
pub fn warnings(config: &super::Config) -> Vec<String> {
    let sqs = &config.sqs;
    let mut warnings: Vec<String> = config
        .bindings
        .iter()
        .enumerate()
        .filter_map(|(i, b)| {
            let breaker = b.circuit_breaker.as_ref()?;
            sqs.dead_letter_queue.as_ref()?;
            let ridden = u64::from(breaker.cooldown_secs)
                * u64::from(sqs.max_receive_count.saturating_sub(1));
            (ridden < 600).then(|| {
                format!(
                    "bindings[{i}].circuit_breaker: messages an open circuit gives back count as deliveries, so with cooldown_secs {} and sqs.max_receive_count {} an outage longer than about {ridden} s moves them to {} without a reason; raise cooldown_secs or max_receive_count to ride out longer ones",
                    breaker.cooldown_secs,
                    sqs.max_receive_count,
                    sqs.dead_letter_queue.as_deref().unwrap_or_default()
                )
            })
        })
        .collect();
    // A batch's messages hold their concurrency permits while they gather: a batch can never
    // grow past max_concurrency, and each one waits out max_wait_ms for the rest.
    warnings.extend(config.bindings.iter().enumerate().filter_map(|(i, b)| {
        let batch = b.batch.as_ref()?;
        let limit = b.max_concurrency?;
        (batch.max_size > limit).then(|| {
            format!(
                "bindings[{i}].batch: max_size {} is above max_concurrency {limit}, which counts messages: a batch never grows past {limit}, and each waits its whole max_wait_ms ({} ms) for messages that cannot come; lower max_size to {limit} or raise max_concurrency",
                batch.max_size, batch.max_wait_ms
            )
        })
    }));
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(text: &str) -> RetryConfig {
        toml::from_str(text).expect("a retry table")
    }

    /// A queue with a dead-letter queue and `max_receive_count` 5.
    fn sqs() -> crate::config::SqsConfig {
        crate::config::SqsConfig {
            dead_letter_queue: Some("dlq".into()),
            max_receive_count: 5,
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_problems() {
        let q = sqs();
        let r = retry("");
        assert_eq!(
            (r.max_attempts, r.backoff_base_secs, r.backoff_max_secs),
            (5, 1, 300)
        );
        assert!(problems("bindings[0]", Some(4), Some(2.5), Some(&r), None, None, &q).is_empty());
        let keys = |p: Vec<Problem>| p.into_iter().map(|p| p.key).collect::<Vec<_>>();
        assert_eq!(
            keys(problems("b", Some(0), Some(0.0), None, None, None, &q)),
            ["b.max_concurrency", "b.max_per_second"]
        );
        assert_eq!(
            keys(problems("b", None, Some(f64::NAN), Some(&retry("max_attempts = 9\ndead_letter_on = [\"oops\"]\ndead_letter_on_errors = [\" \"]")), None, None, &q)),
            ["b.max_per_second", "b.retry.max_attempts", "b.retry.dead_letter_on[0]", "b.retry.dead_letter_on_errors[0]"]
        );
        assert_eq!(
            keys(problems(
                "b",
                None,
                None,
                Some(&retry("backoff_base_secs = 60\nbackoff_max_secs = 50000")),
                None,
                None,
                &q
            )),
            ["b.retry.backoff_max_secs"]
        );
        assert_eq!(
            keys(problems(
                "b",
                None,
                None,
                Some(&retry("backoff_base_secs = 60\nbackoff_max_secs = 50")),
                None,
                None,
                &q
            )),
            ["b.retry.backoff_base_secs"]
        );
        let breaker: BreakerConfig =
            toml::from_str("consecutive_failures = 0\ncooldown_secs = 0").expect("a table");
        assert_eq!(
            keys(problems("b", None, None, None, Some(&breaker), None, &q)),
            [
                "b.circuit_breaker.consecutive_failures",
                "b.circuit_breaker.cooldown_secs"
            ]
        );
        assert!(
            toml::from_str::<RetryConfig>("max_tries = 3").is_err(),
            "unknown keys are refused"
        );
        // Retries end in the dead-letter queue: there must be one.
        let no_dlq = crate::config::SqsConfig {
            dead_letter_queue: None,
            ..sqs()
        };
        assert_eq!(
            keys(problems("b", None, None, Some(&r), None, None, &no_dlq)),
            ["b.retry"]
        );
    }

    #[test]
    fn a_short_ride_out_of_an_open_circuit_is_worth_a_warning() {
        let mut config = crate::config::Config::parse(
            "service = \"s\"\n[sqs]\ndead_letter_queue = \"dlq\"\nmax_receive_count = 5\n\
             [[bindings]]\nevents = [\"E\"]\nplugin = \"p\"\n[bindings.circuit_breaker]\ncooldown_secs = 30\n",
            std::path::Path::new("."),
        )
        .expect("a config");
        let said = warnings(&config);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains("about 120 s"), "{said:?}");
        config.sqs.max_receive_count = 50;
        assert!(warnings(&config).is_empty());
    }
}
