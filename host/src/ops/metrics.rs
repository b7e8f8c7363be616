//! The metrics a host exports, with the Prometheus recorder behind them.
//!
//! The pipeline records through the `metrics` facade; [`install`] puts a Prometheus recorder
//! behind it (only when `[metrics] listen` is set) and [`super::server`] renders it at
//! `/metrics`. Names follow the Prometheus conventions: counters end in `_total`, durations are
//! in seconds. Per-binding series are labelled `binding` with the binding's label as the
//! host logs it (`bindings[0] (ledger/ledger)`).

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::values::Values;
use super::OpsError;

/// Messages taken from the queue (every delivery, duplicates included).
pub const RECEIVED: &str = "iniesta_messages_received_total";
/// Messages deleted because every binding acked (or had acked before: a duplicate).
pub const ACKED: &str = "iniesta_messages_acked_total";
/// Messages left for redelivery: label `reason` = `retry` (a handler asked for it, visibility
/// set to its delay), `failed` (an error, panic or timeout: back after the visibility
/// timeout), `unbound` (no binding takes the event), `undecodable`, `lock_lost`.
pub const RETRIED: &str = "iniesta_messages_retried_total";
/// Messages moved to the dead-letter queue.
pub const DEAD_LETTERED: &str = "iniesta_messages_dead_lettered_total";
/// Received messages given back unstarted with visibility 0: label `reason` = `shutdown`
/// or `fifo_order` (an earlier message of their FIFO group was not settled).
pub const RELEASED: &str = "iniesta_messages_released_total";
/// Handler calls: labels `binding` and `result` = `ack`, `retry`, `dead_letter`, `error`,
/// `panic`, `timeout`, `crashed`.
pub const HANDLER_CALLS: &str = "iniesta_handler_calls_total";
/// The `result`s of [`HANDLER_CALLS`] that are failed calls (not an outcome the handler
/// chose): an error, a panic, a timeout, a crashed worker.
pub const FAILED_RESULTS: &[&str] = &["error", "panic", "timeout", "crashed"];
/// How long handler calls took (s), a histogram labelled `binding`.
pub const HANDLER_DURATION: &str = "iniesta_handler_duration_seconds";
/// How many messages a batch handler's calls took (label `binding`), a histogram.
pub const BATCH_SIZE: &str = "iniesta_handler_batch_size";
/// Calls of `inline = true` bindings that ran past their timeout (label `binding`).
pub const INLINE_OVERRUNS: &str = "iniesta_inline_handler_overruns_total";
/// Idempotency lock failures: label `reason` = `held_elsewhere` (another consumer holds the
/// message), `lost` (lost while handlers ran), `unavailable` (the lock service could not
/// decide for a whole batch).
pub const LOCK_FAILURES: &str = "iniesta_lock_failures_total";
/// Failed requests to one Redis lock server (unreachable, timed out, or answering an error):
/// label `node` (`host:port`, with `/db` when not 0; never credentials). The log says when a
/// node goes down and when it is back, once each; this counts every failure in between.
pub const LOCK_NODE_ERRORS: &str = "iniesta_lock_node_errors_total";
/// Deferred lock writes (completion records and releases) a Redis server did not store: label
/// `node`. Unstored releases expire with their locks; an unstored record means a duplicate of
/// that message may run a handler again if it reaches only that server.
pub const LOCK_WRITES_LOST: &str = "iniesta_lock_writes_lost_total";
/// Messages the service's queue and dead-letter queue hold (gauge): labels `queue` (its
/// name) and `state` (`visible`, `in_flight`, `delayed`), read every
/// `metrics.queue_depth_interval_secs`.
pub const QUEUE_MESSAGES: &str = "iniesta_queue_messages";
/// S3 claim-check operations ([`crate::claim_check`]): label `operation` = `store` (a body
/// too large to send, stored before its pointer is published), `fetch` (a received pointer
/// read), `delete` (an object removed after handling, `payloads.delete_after_handling`), and
/// `result` = `ok`, `refused` (a fetch that can never succeed: bucket not trusted, object
/// missing or too large; the message is dead-lettered) or `error` (S3 failed; a fetch is
/// retried by redelivery, a store fails the publish).
pub const CLAIM_CHECKS: &str = "iniesta_claim_checks_total";
/// Always 1, labelled with the host's `version` (a dashboard joins on it to show which build
/// runs where).
pub const BUILD_INFO: &str = "iniesta_build_info";
/// Messages received whose handlers have not finished and whose fate is not yet decided: the
/// `sqs.max_in_flight` slots taken (gauge). An acked message leaves it when its delete is
/// queued ([`DELETES_PENDING`]).
pub const IN_FLIGHT: &str = "iniesta_in_flight";
/// Acked messages whose delete has not succeeded yet: queued for a `DeleteMessageBatch` or in
/// one (gauge; at most `sqs.max_in_flight`).
pub const DELETES_PENDING: &str = "iniesta_deletes_pending";
/// Receive loops taking turns now (gauge): between `sqs.pollers` and `sqs.max_pollers`, grown
/// while receives come back full with slots free, shrunk on empty receives.
pub const RECEIVE_LOOPS: &str = "iniesta_receive_loops";
/// Receive calls waiting for the broker's answer (gauge).
pub const RECEIVES_IN_FLIGHT: &str = "iniesta_receives_in_flight";
/// Failed receive calls.
pub const POLL_ERRORS: &str = "iniesta_poll_errors_total";
/// Visibility heartbeats sent for messages whose handlers were still running.
pub const VISIBILITY_EXTENSIONS: &str = "iniesta_visibility_extensions_total";
/// Acked messages the broker failed to delete (they will be redelivered).
pub const DELETE_FAILURES: &str = "iniesta_delete_failures_total";
/// Times receiving stopped because `sqs.max_in_flight` acked messages waited on deletes that
/// kept failing.
pub const DELETE_STALLS: &str = "iniesta_delete_stalls_total";
/// 1 while receiving is stopped that way, else 0 (gauge).
pub const DELETE_STALLED: &str = "iniesta_delete_stalled";
/// Plugin generations swapped in by hot reload: label `plugin`.
pub const PLUGIN_RELOADS: &str = "iniesta_plugin_reloads_total";
/// Events a handler published that its own binding consumes (a loop): label `binding`.
pub const SELF_PUBLISHES: &str = "iniesta_handler_self_publishes_total";
/// Plugin files refused at load (bad ABI, missing symbol, incomplete file...).
pub const PLUGIN_REFUSALS: &str = "iniesta_plugin_refusals_total";
/// Plugin files that failed to load, each counted once: labels `plugin` (the plugin whose
/// file it replaced, else the file name) and `reason` = `not_a_plugin`, `incomplete`,
/// `incompatible_version`, `incompatible_layout`, `insecure`, `broken`.
pub const PLUGIN_LOAD_FAILURES: &str = "iniesta_plugin_load_failures_total";
/// Config changes refused by hot reload.
pub const CONFIG_REFUSALS: &str = "iniesta_config_refusals_total";
/// Failure reports by sink (`sink` = `webhook` for `[errors] webhook_url`, `sentry` for
/// `[errors.sentry]`) and `result` = `sent`, `failed`, `dropped` (queue full), and for Sentry
/// also `rate_limited` (Sentry asked to back off) and `sampled_out` (`sample_rate`).
pub const ERROR_REPORTS: &str = "iniesta_error_reports_total";
/// Egress deliveries (egress/): labels `egress` and `result` = `delivered`, `retried` (an
/// attempt failed while publishing), `queued` (every attempt failed: kept in the outbox),
/// `redelivered` (from the outbox), `failed_again` (an outbox attempt failed).
pub const EGRESS_DELIVERIES: &str = "iniesta_egress_deliveries_total";
/// How long egress delivery attempts took (s), a histogram labelled `egress`.
pub const EGRESS_DURATION: &str = "iniesta_egress_attempt_duration_seconds";
/// Events waiting in the outbox, per `egress` (gauge, updated by the running host).
pub const EGRESS_OUTBOX_PENDING: &str = "iniesta_egress_outbox_pending";
/// Messages submitted by ingress plugins: labels `ingress` and `result` = `ack`, `retry`,
/// `dead_letter`.
pub const INGRESS_MESSAGES: &str = "iniesta_ingress_messages_total";

/// Isolated plugins' worker processes that died (crash, abort, exit, OOM, killed after a
/// hang): label `plugin`.
pub const WORKER_CRASHES: &str = "iniesta_plugin_worker_crashes_total";
/// Isolated plugins' worker processes started again after one died: label `plugin`.
pub const WORKER_RESTARTS: &str = "iniesta_plugin_worker_restarts_total";
/// Worker deaths in a row since a call last returned (3 or more is a crash loop): label
/// `plugin`.
pub const WORKER_CRASHES_IN_A_ROW: &str = "iniesta_plugin_worker_crashes_in_a_row";

/// Calls that waited for a binding's limit, labelled `binding` and `limit` (`concurrency`,
/// `rate`).
pub const LIMIT_WAITS: &str = "iniesta_binding_limit_waits_total";
/// A binding's circuit: 0 closed, 1 open, 2 half-open; labelled `binding`.
pub const CIRCUIT_STATE: &str = "iniesta_circuit_state";
/// Messages given back (with a delay) because a binding's circuit was open, labelled
/// `binding`.
pub const CIRCUIT_REFUSALS: &str = "iniesta_circuit_refusals_total";

/// Upper bounds of the handler duration buckets (s).
pub const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Upper bounds of the batch size buckets (messages).
pub const BATCH_SIZE_BUCKETS: &[f64] =
    &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// The installed recorders: the Prometheus text for `/metrics`, the values for the console.
#[derive(Clone)]
pub struct Installed {
    /// Renders the Prometheus text format.
    pub prometheus: PrometheusHandle,
    /// Counter and gauge values as numbers.
    pub values: Values,
}

/// The collector of the standard `process_*` gauges (RSS, CPU seconds, open and maximum file
/// descriptors, threads, start time), under their usual Prometheus names.
fn process() -> &'static metrics_process::Collector {
    static COLLECTOR: std::sync::OnceLock<metrics_process::Collector> = std::sync::OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Read the process's gauges now (each `/metrics` scrape does, so they are as fresh as it).
pub fn collect_process() {
    process().collect();
}

/// Install the recorder for this process (Prometheus and [`Values`] behind one fan-out) and
/// describe every metric.
pub fn install() -> Result<Installed, OpsError> {
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(HANDLER_DURATION.into()), DURATION_BUCKETS)
        .map_err(|e| OpsError::Recorder(e.to_string()))?
        .set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_SIZE_BUCKETS)
        .map_err(|e| OpsError::Recorder(e.to_string()))?
        .build_recorder();
    let handle = Installed {
        prometheus: prometheus.handle(),
        values: Values::new(),
    };
    let fanout = metrics_util::layers::FanoutBuilder::default()
        .add_recorder(prometheus)
        .add_recorder(handle.values.clone())
        .build();
    metrics::set_global_recorder(fanout).map_err(|e| OpsError::Recorder(e.to_string()))?;
    describe();
    process().describe();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Series without labels start at zero so dashboards see them before the first event.
    for name in [
        RECEIVED,
        ACKED,
        DEAD_LETTERED,
        POLL_ERRORS,
        VISIBILITY_EXTENSIONS,
        DELETE_FAILURES,
        DELETE_STALLS,
        PLUGIN_REFUSALS,
        CONFIG_REFUSALS,
    ] {
        metrics::counter!(name).absolute(0);
    }
    for reason in ["held_elsewhere", "lost", "unavailable"] {
        metrics::counter!(LOCK_FAILURES, "reason" => reason).absolute(0);
    }
    for reason in [
        "retry",
        "failed",
        "unbound",
        "undecodable",
        "lock_lost",
        "circuit_open",
    ] {
        metrics::counter!(RETRIED, "reason" => reason).absolute(0);
    }
    for reason in ["shutdown", "fifo_order"] {
        metrics::counter!(RELEASED, "reason" => reason).absolute(0);
    }
    metrics::gauge!(IN_FLIGHT).set(0.0);
    metrics::gauge!(DELETES_PENDING).set(0.0);
    metrics::gauge!(RECEIVES_IN_FLIGHT).set(0.0);
    metrics::gauge!(DELETE_STALLED).set(0.0);
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(RECEIVED, "Messages taken from the queue (every delivery)");
    describe_counter!(ACKED, "Messages deleted after every binding acked");
    describe_counter!(
        RETRIED,
        "Messages left for redelivery, by reason (retry, failed, unbound, undecodable, lock_lost, circuit_open)"
    );
    describe_counter!(DEAD_LETTERED, "Messages moved to the dead-letter queue");
    describe_counter!(
        RELEASED,
        "Received messages given back unstarted with visibility 0, by reason"
    );
    describe_counter!(HANDLER_CALLS, "Handler calls by binding and result");
    describe_counter!(
        LIMIT_WAITS,
        "Handler calls that waited for their binding's limit, by binding and limit (concurrency, rate)"
    );
    describe_gauge!(
        CIRCUIT_STATE,
        "A binding's circuit breaker: 0 closed, 1 open, 2 half-open"
    );
    describe_counter!(
        CIRCUIT_REFUSALS,
        "Messages given back with a delay because a binding's circuit was open"
    );
    describe_histogram!(
        HANDLER_DURATION,
        Unit::Seconds,
        "Handler call durations by binding"
    );
    describe_histogram!(
        BATCH_SIZE,
        Unit::Count,
        "Messages per call of a batch handler, by binding"
    );
    describe_counter!(
        INLINE_OVERRUNS,
        "Calls of inline bindings that ran past their timeout (they cannot be abandoned)"
    );
    describe_counter!(LOCK_FAILURES, "Idempotency lock failures by reason");
    describe_counter!(
        LOCK_NODE_ERRORS,
        "Failed requests to a Redis lock server, by node"
    );
    describe_counter!(
        LOCK_WRITES_LOST,
        "Deferred lock writes (records, releases) a Redis server did not store, by node"
    );
    describe_gauge!(BUILD_INFO, "Always 1, labelled with the host's version");
    describe_gauge!(
        QUEUE_MESSAGES,
        "Messages the queue and the dead-letter queue hold, by queue and state (visible, in_flight, delayed)"
    );
    describe_gauge!(
        IN_FLIGHT,
        "Messages received whose handlers have not finished (sqs.max_in_flight slots taken)"
    );
    describe_gauge!(
        DELETES_PENDING,
        "Acked messages whose delete has not succeeded yet"
    );
    describe_gauge!(
        RECEIVE_LOOPS,
        "Receive loops taking turns now (adaptive, between sqs.pollers and sqs.max_pollers)"
    );
    describe_gauge!(
        RECEIVES_IN_FLIGHT,
        "Receive calls waiting for the broker's answer"
    );
    describe_counter!(POLL_ERRORS, "Failed receive calls");
    describe_counter!(
        VISIBILITY_EXTENSIONS,
        "Visibility extensions sent for messages still being handled"
    );
    describe_counter!(
        DELETE_FAILURES,
        "Acked messages the broker failed to delete"
    );
    describe_counter!(
        DELETE_STALLS,
        "Times receiving stopped because sqs.max_in_flight acked messages waited on failing deletes"
    );
    describe_gauge!(
        DELETE_STALLED,
        "1 while receiving is stopped by failing deletes, else 0"
    );
    describe_counter!(PLUGIN_RELOADS, "Plugin generations swapped in, by plugin");
    describe_counter!(
        SELF_PUBLISHES,
        "Events a handler published that its own binding consumes (a loop), by binding"
    );
    describe_counter!(PLUGIN_REFUSALS, "Plugin files refused at load");
    describe_counter!(
        PLUGIN_LOAD_FAILURES,
        "Plugin files that failed to load, by plugin and reason (each file once)"
    );
    describe_counter!(CONFIG_REFUSALS, "Config changes refused by hot reload");
    describe_counter!(
        WORKER_CRASHES,
        "Isolated plugin worker processes that died, by plugin"
    );
    describe_counter!(
        WORKER_RESTARTS,
        "Isolated plugin worker processes restarted, by plugin"
    );
    describe_gauge!(
        WORKER_CRASHES_IN_A_ROW,
        "Isolated plugin worker deaths since a call last returned (3 or more: crash loop), by plugin"
    );
    describe_counter!(
        ERROR_REPORTS,
        "Failure reports by sink (webhook, sentry) and result"
    );
    describe_counter!(EGRESS_DELIVERIES, "Egress deliveries by egress and result");
    describe_histogram!(
        EGRESS_DURATION,
        Unit::Seconds,
        "Egress delivery attempt durations by egress"
    );
    describe_gauge!(
        EGRESS_OUTBOX_PENDING,
        "Events waiting in the outbox, by egress"
    );
    describe_counter!(INGRESS_MESSAGES, "Ingress messages by ingress and result");
    describe_counter!(
        CLAIM_CHECKS,
        "S3 claim-check operations (store, fetch, delete) by result"
    );
}
