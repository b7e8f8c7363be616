//! The canned SQS endpoint answers the real SDK correctly: the host (debug build, as
//! scripts/test.sh builds it) consumes 100 messages from it and deletes each exactly once,
//! with the echo binding called from the blocking pool and inline.
//! No timing is asserted; this only keeps the benchmark from rotting silently.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bench::canned::Canned;
use bench::setup::{self, SqsHost};

#[test]
fn the_host_consumes_and_deletes_every_canned_message() {
    consume_and_delete_everything(false);
}

#[test]
fn the_host_consumes_and_deletes_every_canned_message_with_an_inline_binding() {
    consume_and_delete_everything(true);
}

fn consume_and_delete_everything(inline: bool) {
    let host = setup::host_binary().expect("build the workspace first (cargo build --workspace)");
    let scratch = tempfile::tempdir().expect("tempdir");
    let plugins = setup::plugin_dir_with(scratch.path(), &["libecho.so"]).expect("echo plugin");
    let canned = Canned::start(100, u32::from(inline) + 1).expect("canned server");
    let config = SqsHost {
        endpoint: canned.url(),
        queue: "bench-queue".into(),
        pollers: 2,
        max_in_flight: 40,
        lock_urls: Vec::new(),
        plugins,
        inline,
        publish: None,
        otlp_endpoint: None,
        binding: None,
        // Both SQS clients against the same canned endpoint: the SDK with the blocking-pool
        // binding, the lean client (the default) with the inline one.
        sqs_client: if inline { "lean" } else { "sdk" },
    };
    let path = scratch.path().join("iniesta.toml");
    std::fs::write(&path, config.config()).expect("config");
    let log = scratch.path().join("host.log");
    let mut child = setup::spawn_host(&host, &path, &log).expect("host starts");
    canned.stats.watch(child.id());
    let all = canned.stats.wait_all_deleted(Duration::from_secs(60));
    let status = setup::terminate(&mut child, Duration::from_secs(20)).expect("terminate");
    let stats = &canned.stats;
    assert!(
        all,
        "only {} of 100 deleted (bad requests: {:?}):\n{}",
        stats.deleted.load(Ordering::SeqCst),
        stats.last_bad.lock().map(|l| l.clone()).unwrap_or_default(),
        setup::tail(&log, 40)
    );
    assert_eq!(stats.deleted.load(Ordering::SeqCst), 100);
    assert_eq!(stats.duplicate_deletes.load(Ordering::SeqCst), 0);
    assert_eq!(stats.unknown_deletes.load(Ordering::SeqCst), 0);
    assert_eq!(stats.bad_requests.load(Ordering::SeqCst), 0);
    assert_eq!(stats.handed_out.load(Ordering::SeqCst), 100);
    assert!(stats.queue_url_calls.load(Ordering::SeqCst) >= 1);
    assert!(stats.batches.load(Ordering::SeqCst) >= 10);
    let marks = stats.marks();
    assert!(marks.first_receive.is_some() && marks.last_delete.is_some());
    assert!(marks.cpu_at_first_receive.is_some() && marks.cpu_at_last_delete.is_some());
    let status = status.expect("the host stops on SIGTERM");
    assert!(
        status.success(),
        "host exited with {status}:\n{}",
        setup::tail(&log, 40)
    );
}

/// At 5 ms a request, with the first delete of every 7th message failing as a retryable entry
/// failure (as SQS answers `InternalError` for one entry of a batch) and the first entry of
/// every 3rd `PublishBatch` failing the same way, while the binding publishes one event per
/// message: every message is still deleted exactly once and every event published exactly
/// once (the failed entries alone are sent again), in batches, and the endpoint counts the
/// requests by action.
#[test]
fn failed_delete_and_publish_entries_are_retried_alone_and_requests_are_counted() {
    use bench::canned::{Behaviour, Faults, Latency};
    let host = setup::host_binary().expect("build the workspace first (cargo build --workspace)");
    let scratch = tempfile::tempdir().expect("tempdir");
    let plugins = setup::plugin_dir_with(scratch.path(), &["libecho.so"]).expect("echo plugin");
    let behaviour = Behaviour {
        latency: Latency::new(Duration::from_millis(5), Duration::from_millis(2)),
        faults: Faults {
            fail_first_delete_every: Some(7),
            fail_publish_entry_every: Some(3),
        },
    };
    let canned = Canned::start_with(200, 9, behaviour).expect("canned server");
    let config = SqsHost {
        endpoint: canned.url(),
        queue: "bench-queue".into(),
        pollers: 1,
        max_in_flight: 100,
        lock_urls: Vec::new(),
        plugins,
        inline: false,
        publish: Some("Order.Shipped".into()),
        otlp_endpoint: None,
        binding: None,
        sqs_client: "lean",
    };
    let path = scratch.path().join("iniesta.toml");
    std::fs::write(&path, config.config()).expect("config");
    let log = scratch.path().join("host.log");
    let mut child = setup::spawn_host(&host, &path, &log).expect("host starts");
    let all = canned.stats.wait_all_deleted(Duration::from_secs(60));
    // A handler's publish is done before its message is acked, so by the last delete every
    // event is out; the failed entries' retries too.
    setup::terminate(&mut child, Duration::from_secs(20)).expect("terminate");
    let stats = &canned.stats;
    assert!(
        all,
        "only {} of 200 deleted:\n{}",
        stats.deleted.load(Ordering::SeqCst),
        setup::tail(&log, 40)
    );
    assert_eq!(stats.duplicate_deletes.load(Ordering::SeqCst), 0);
    assert_eq!(stats.unknown_deletes.load(Ordering::SeqCst), 0);
    assert_eq!(stats.bad_requests.load(Ordering::SeqCst), 0);
    // Sequence numbers 0, 7, 14, … 196: 29 entries failed once each.
    assert_eq!(stats.injected_failures.load(Ordering::SeqCst), 29);
    assert_eq!(
        stats.published.load(Ordering::SeqCst),
        200,
        "each event published once, none lost, none twice:\n{}",
        setup::tail(&log, 40)
    );
    assert!(stats.injected_publish_failures.load(Ordering::SeqCst) > 0);
    let requests = stats.marks().requests_at_last_delete;
    let count = |action: &str| requests.get(action).copied().unwrap_or(0);
    let receives = count("ReceiveMessage");
    let deletes = count("DeleteMessageBatch");
    let publishes = count("PublishBatch") + count("Publish");
    assert!(receives >= 20, "{requests:?}");
    // At least 20 full batches, plus the retries of the failed entries.
    assert!(deletes > 20, "{requests:?}");
    assert!(
        publishes < 100,
        "events are published in batches, not one call each: {requests:?}"
    );
    assert_eq!(
        requests.values().sum::<u64>(),
        receives + deletes + publishes + count("GetQueueUrl"),
        "nothing but receives, deletes, publishes and the queue URL: {requests:?}"
    );
}
