//! Async and batch handlers (`plugins/shapes`) on the real pipeline in-process: an async
//! handler's future is polled on the host's workers and cancelled at its timeout and on a
//! drain; its panics are failed calls; it publishes without blocking. A batch handler gets its
//! messages gathered up to `batch.max_size`, and each message's outcome is settled on its own.
//!
//! The paused clock suits every case here but one: an async handler's timers are the
//! plugin's own (real time), during which tokio would move the paused clock on to the host's
//! next timer. So the paused tests use no plugin timer (`sleep_ms = 0`, `forever`, a
//! `yield_now` before a panic), and the one that shows calls overlapping runs in real time.

use std::time::Duration;

use crate::common::inprocess::InProcess;

fn lines(host: &InProcess, name: &str) -> Vec<String> {
    std::fs::read_to_string(host.scratch.path(name))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn waiter(extra: &str) -> String {
    format!(
        "[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"shapes\"\nhandler = \"waiter\"\nconfig = {{ sleep_ms = 0, out = \"{{scratch}}/out\", started = \"{{scratch}}/started\", dropped = \"{{scratch}}/dropped\", publish_as = \"Slow.Waited\" }}\n{extra}"
    )
}

/// An async handler acks, and what it publishes with `publish_async` goes out through the
/// host (a ledger binding takes it), a child of nothing blocking.
#[tokio::test(start_paused = true)]
async fn an_async_handler_acks_and_publishes_without_blocking() {
    let ledger = "[[bindings]]\nevents = [\"Slow.*\"]\nplugin = \"ledger\"\nconfig = { path = \"{scratch}/ledger.jsonl\" }\n";
    let host = InProcess::start("", &format!("{}{ledger}", waiter(""))).await;
    host.publish("Order.Created", "plain").await;
    host.publish("Order.Created", "publish").await;
    host.wait_for(
        "both handled and the publish consumed",
        Duration::from_secs(60),
        || async {
            let ledger = host.scratch.ledger("ledger.jsonl");
            (host.queue().await.is_empty() && ledger.len() == 1).then_some(())
        },
    )
    .await;
    assert_eq!(
        lines(&host, "out").len(),
        1,
        "the plain message ran to its end"
    );
    let ledger = host.scratch.ledger("ledger.jsonl");
    assert!(
        ledger[0].to_string().contains("Slow.Waited.receiver")
            && ledger[0].to_string().contains("from"),
        "{ledger:?}"
    );
    assert!(lines(&host, "dropped").is_empty(), "no call was cancelled");
    assert!(host.dead_letters().await.is_empty());
    host.stop().await;
}

/// A future that never resolves is dropped at the binding's timeout (the plugin sees its drop:
/// the call is cancelled, not left running) and its message is not deleted; a panic in a later
/// poll is a failed call like a sync handler's, dead-lettered here by the retry policy with
/// its text.
#[tokio::test(start_paused = true)]
async fn a_hung_async_call_is_cancelled_at_its_timeout_and_a_panic_is_a_failure() {
    let host = InProcess::start(
        "visibility_timeout = 120\nmax_receive_count = 10",
        &waiter("timeout_secs = 5\n[bindings.retry]\nmax_attempts = 1\n"),
    )
    .await;
    host.publish("Order.Created", "forever").await;
    host.publish("Order.Created", "panic").await;
    let dead = host
        .wait_for("both dead-lettered", Duration::from_secs(60), || async {
            let dlq = host.dead_letters().await;
            (dlq.len() == 2).then_some(dlq)
        })
        .await;
    let reasons: Vec<String> = dead
        .iter()
        .map(|m| m.dead_letter_reason.clone().unwrap_or_default())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("timed out")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("panicked: waiter was asked to panic")),
        "{reasons:?}"
    );
    let dropped = lines(&host, "dropped");
    assert_eq!(
        dropped.len(),
        1,
        "the hung call's future was dropped: {dropped:?}"
    );
    host.stop().await;
}

/// A drain that runs out of time cancels a running async call — its future is dropped — and
/// gives its message back rather than deleting it.
#[tokio::test(start_paused = true)]
async fn a_drain_cancels_a_running_async_call_and_keeps_its_message() {
    let mut host =
        InProcess::start("shutdown_timeout_secs = 2", &waiter("timeout_secs = 600\n")).await;
    host.publish("Order.Created", "forever").await;
    host.wait_for("the call started", Duration::from_secs(30), || async {
        (!lines(&host, "started").is_empty()).then_some(())
    })
    .await;
    host.shutdown().cancel();
    host.join().await;
    assert_eq!(lines(&host, "dropped").len(), 1, "the future was dropped");
    assert_eq!(host.queue().await.len(), 1, "the message is kept");
    assert!(host.dead_letters().await.is_empty());
}

/// Async calls wait together without a thread each: on a runtime with a single blocking
/// thread, twenty calls that each await 300 ms overlap (every one starts before the first
/// ends), where blocking handlers would take turns on that thread.
#[test]
fn async_calls_overlap_without_a_thread_each() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let host = InProcess::start(
            "max_in_flight = 20\nvisibility_timeout = 30",
            "[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"shapes\"\nhandler = \"waiter\"\nconfig = { sleep_ms = 300, out = \"{scratch}/out\", started = \"{scratch}/out\" }\n",
        )
        .await;
        for i in 0..20 {
            host.publish("Order.Created", &format!("{i}")).await;
        }
        host.wait_for("every call ended", Duration::from_secs(30), || async {
            let ends = lines(&host, "out").iter().filter(|l| !l.starts_with("start")).count();
            (ends == 20).then_some(())
        })
        .await;
        let log = lines(&host, "out");
        let first_end = log
            .iter()
            .position(|l| !l.starts_with("start"))
            .expect("an end");
        let starts_before = log[..first_end].len();
        // The calls started as their messages arrived (a receive brings at most 10): at least
        // ten were awaiting at once, where one blocking thread runs one call at a time.
        assert!(starts_before >= 10, "{log:?}");
        host.stop().await;
    });
}

fn rows(batch: &str) -> String {
    format!("[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"shapes\"\nhandler = \"rows\"\nconfig = {{ out = \"{{scratch}}/batches\" }}\n{batch}")
}

/// Ten messages that arrive together reach the batch handler in batches of at most
/// `max_size`: 4, 4 and 2.
#[tokio::test(start_paused = true)]
async fn a_batch_handler_gets_its_messages_in_batches_of_at_most_max_size() {
    let host = InProcess::start(
        "visibility_timeout = 30",
        &rows("[bindings.batch]\nmax_size = 4\nmax_wait_ms = 50\n"),
    )
    .await;
    for i in 0..10 {
        host.publish("Order.Created", &format!("{i}")).await;
    }
    host.wait_for("every message acked", Duration::from_secs(60), || async {
        host.queue().await.is_empty().then_some(())
    })
    .await;
    let mut sizes: Vec<usize> = lines(&host, "batches")
        .iter()
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, vec![2, 4, 4], "{:?}", lines(&host, "batches"));
    host.stop().await;
}

/// In one batch each message gets its own fate: the acked one is deleted, the failed one and
/// the retried one stay for redelivery, the dead-lettered one moves with its reason.
#[tokio::test(start_paused = true)]
async fn each_message_of_a_batch_is_settled_on_its_own() {
    let host = InProcess::start(
        "visibility_timeout = 120\nmax_receive_count = 10",
        &rows("[bindings.batch]\nmax_size = 10\nmax_wait_ms = 100\n"),
    )
    .await;
    for body in ["ok", "bad", "later", "dead"] {
        host.publish("Order.Created", body).await;
    }
    let dead = host
        .wait_for("the dead row", Duration::from_secs(60), || async {
            let dlq = host.dead_letters().await;
            (dlq.len() == 1).then_some(dlq)
        })
        .await;
    assert!(
        dead[0]
            .dead_letter_reason
            .clone()
            .unwrap_or_default()
            .contains("a dead row"),
        "{dead:?}"
    );
    // `later` comes back after its 1 s and is retried again (and again); `bad` waits for the
    // visibility timeout. Neither is deleted; `ok` is.
    let left = host
        .wait_for("ok deleted", Duration::from_secs(60), || async {
            let q = host.queue().await;
            (q.len() == 2).then_some(q)
        })
        .await;
    let mut bodies: Vec<String> = left
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).to_string())
        .collect();
    bodies.sort();
    assert!(
        bodies[0].contains("bad") && bodies[1].contains("later"),
        "{bodies:?}"
    );
    assert_eq!(
        lines(&host, "batches")[0].split(' ').next(),
        Some("4"),
        "one batch of four"
    );
    host.stop().await;
}
