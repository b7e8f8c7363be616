//! Receiving at a real region's latency, in-process on a paused clock against a broker that
//! takes 20 ms a call ([`common::paced`]): receives ask for full batches, more receive loops
//! take turns while the queue is full, several delete calls are in flight at once, and an
//! acked message frees its in-flight slot as soon as its delete is queued.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::inprocess::InProcess;

const LEDGER: &str = "[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"ledger\"\nconfig = { path = \"{scratch}/ledger.jsonl\" }\n";

fn handled(host: &InProcess) -> usize {
    std::fs::read_to_string(host.scratch.path("ledger.jsonl"))
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

async fn publish(host: &InProcess, n: usize) {
    for i in 0..n {
        host.publish("Order.Created", &format!(r#"{{"n":{i}}}"#))
            .await;
    }
}

#[tokio::test(start_paused = true)]
async fn at_20_ms_a_call_receives_are_full_and_several_receives_and_deletes_are_in_flight() {
    let latency = Duration::from_millis(20);
    let (host, calls) = InProcess::start_paced(
        "max_in_flight = 200\nvisibility_timeout = 30",
        LEDGER,
        latency,
    )
    .await;
    publish(&host, 300).await;
    let started = tokio::time::Instant::now();
    host.wait_for(
        "every message handled and deleted",
        Duration::from_secs(60),
        || async { (handled(&host) == 300 && host.queue().await.is_empty()).then_some(()) },
    )
    .await;
    let took = started.elapsed();
    let host = host.stop().await;
    assert_eq!(handled(&host), 300, "each message handled once");

    let receives = calls.receives.lock().expect("not poisoned").clone();
    assert!(
        receives.iter().all(|(asked, _)| *asked == 10),
        "every receive asks for a full batch: {receives:?}"
    );
    assert!(
        receives.iter().filter(|(_, got)| *got == 10).count() >= 25,
        "the queue hands out full batches: {receives:?}"
    );
    let receiving = calls.max_receiving.load(Ordering::SeqCst);
    let deleting = calls.max_deleting.load(Ordering::SeqCst);
    assert!(receiving > 1, "more receive loops took turns: {receiving}");
    assert!(deleting > 1, "delete calls overlapped: {deleting}");
    // One receive at a time needs 30 round trips for 300 messages.
    assert!(
        took < latency * 30,
        "300 messages took {took:?} of tokio time at {latency:?} a call ({receiving} receives and {deleting} deletes at most in flight)"
    );
}

/// An acked message keeps its lock until its delete is answered: released when the delete
/// was only queued, a delete held up past the visibility timeout let a consumer without
/// completion records (a Python iniesta) take the lock and run the message again.
#[tokio::test(start_paused = true)]
async fn an_acked_message_keeps_its_lock_until_its_delete_is_answered() {
    let (host, calls) =
        InProcess::start_paced("visibility_timeout = 300", LEDGER, Duration::from_millis(1)).await;
    calls.hold_deletes.store(true, Ordering::SeqCst);
    publish(&host, 1).await;
    host.wait_for("the message handled", Duration::from_secs(30), || async {
        (handled(&host) == 1).then_some(())
    })
    .await;
    let line = std::fs::read_to_string(host.scratch.path("ledger.jsonl")).expect("ledger");
    let id = serde_json::from_str::<serde_json::Value>(line.trim()).expect("json")["id"]
        .as_str()
        .expect("the ledger names the message id")
        .to_string();
    // Well within the lock's own lifetime (`lock.timeout_secs`, 10 s): the keeper that
    // extends it stops with the handlers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let try_lock = || async {
        host.locks
            .try_acquire(std::slice::from_ref(&id), Duration::from_secs(60))
            .await
            .expect("the lock service answers")
            .remove(0)
    };
    assert!(
        try_lock().await.is_none(),
        "the lock is still held while the delete waits"
    );
    calls.hold_deletes.store(false, Ordering::SeqCst);
    host.wait_for(
        "the lock released after the delete",
        Duration::from_secs(30),
        || async {
            (host.queue().await.is_empty()).then_some(())?;
            try_lock().await.map(|_| ())
        },
    )
    .await;
    host.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_acked_message_frees_its_slot_while_its_delete_waits() {
    let (host, calls) = InProcess::start_paced(
        "max_in_flight = 2\nvisibility_timeout = 300",
        LEDGER,
        Duration::from_millis(1),
    )
    .await;
    calls.hold_deletes.store(true, Ordering::SeqCst);
    publish(&host, 6).await;
    // Two acked messages wait on their held deletes (the room for pending deletes is
    // max_in_flight) and two more ran in the slots they freed; those two keep their slots
    // until there is room, so nothing more is received.
    host.wait_for("four messages handled", Duration::from_secs(30), || async {
        (handled(&host) >= 4).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        handled(&host),
        4,
        "receiving stopped once slots and room were full"
    );
    assert_eq!(
        host.queue().await.len(),
        6,
        "nothing deleted while deletes are held"
    );

    calls.hold_deletes.store(false, Ordering::SeqCst);
    host.wait_for("every message deleted", Duration::from_secs(30), || async {
        (handled(&host) == 6 && host.queue().await.is_empty()).then_some(())
    })
    .await;
    host.stop().await;
}

/// Ten handlers that outlast half the visibility timeout, received together: their heartbeats
/// fall due together and go out as `ChangeMessageVisibilityBatch` calls, not one call each.
#[tokio::test(start_paused = true)]
async fn heartbeats_due_together_share_a_batch_call() {
    let (host, calls) = InProcess::start_paced(
        "max_in_flight = 10\nvisibility_timeout = 4\nhandler_timeout_secs = 600",
        &format!(
            "[[bindings]]\nevents = [\"Slow.*\"]\nplugin = \"panicky\"\nhandler = \"sleepy\"\nconfig = {{ sleep_ms = 3000 }}\n{}",
            LEDGER.replace("Order.*", "Slow.*")
        ),
        Duration::from_millis(1),
    )
    .await;
    // All ten are on the queue before the first receive, so one receive takes them together.
    calls.hold_receives.store(true, Ordering::SeqCst);
    for i in 0..10 {
        host.publish("Slow.Job", &format!(r#"{{"n":{i}}}"#)).await;
    }
    calls.hold_receives.store(false, Ordering::SeqCst);
    // The ledger binding returns at once; the sleepy one holds each message for 3 s of real
    // time, which holds tokio's clock: move it by hand (the receive's own 1 ms too) until all
    // ten started, then past two heartbeats (2 s and 4 s after receipt), letting the keepers
    // run in between.
    let started = std::time::Instant::now();
    while handled(&host) < 10 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "only {} of 10 messages started",
            handled(&host)
        );
        tokio::time::advance(Duration::from_millis(5)).await;
        InProcess::settle_real(Duration::from_millis(10)).await;
    }
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(1)).await;
        InProcess::settle_real(Duration::from_millis(50)).await;
    }
    host.wait_for("every message deleted", Duration::from_secs(60), || async {
        host.queue().await.is_empty().then_some(())
    })
    .await;
    host.stop().await;
    let batches = calls
        .visibility_batches
        .lock()
        .expect("not poisoned")
        .clone();
    assert_eq!(
        calls.visibility_calls.load(Ordering::SeqCst),
        0,
        "no single ChangeMessageVisibility calls"
    );
    let entries: usize = batches.iter().sum();
    assert!(
        entries >= 10,
        "every message's visibility was extended: {batches:?}"
    );
    assert!(
        batches.len() * 3 <= entries,
        "heartbeats share calls (at least three receipts a call on average): {batches:?}"
    );
}
