//! A binding's delivery policies, on the real pipeline in-process on a paused tokio clock
//! (`common::inprocess`): retry backoff and attempts, failures not worth retrying, the rate
//! and concurrency limits, and the circuit breaker.

use std::time::Duration;

use tokio::time::Instant;

use crate::common::inprocess::InProcess;

/// Orders fail on every delivery (an error), as `flaky` does on purpose.
const FAILING: &str = "[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"flaky\"\nconfig = { mode = \"error\", fail_times = 1000 }\n";

/// Wait until the message's `receive_count` reaches `n` (or it is dead-lettered: short
/// jittered delays can take it past `n` between two looks); when it did (tokio time).
async fn delivery(host: &InProcess, n: u32) -> Instant {
    host.wait_for(
        &format!("delivery {n}"),
        Duration::from_secs(600),
        || async {
            let q = host.queue().await;
            let past = q.len() == 1 && q[0].receive_count >= n;
            (past || !host.dead_letters().await.is_empty()).then_some(())
        },
    )
    .await;
    Instant::now()
}

/// A failing message is retried after a backoff with full jitter — well before the 120 s
/// visibility timeout — and dead-lettered on its last attempt with the error and the policy in
/// the reason (the queue's own max_receive_count, 10, is never reached).
#[tokio::test(start_paused = true)]
async fn a_retry_policy_backs_off_then_dead_letters_with_the_error() {
    let host = InProcess::start(
        "visibility_timeout = 120\nmax_receive_count = 10",
        &format!("{FAILING}[bindings.retry]\nmax_attempts = 3\nbackoff_base_secs = 4\nbackoff_max_secs = 6\n"),
    )
    .await;
    host.publish("Order.Created", r#"{"n":1}"#).await;
    let first = delivery(&host, 1).await;
    let second = delivery(&host, 2).await;
    // The third delivery fails for the last time: the message is dead-lettered.
    let dead = host
        .wait_for("the dead letter", Duration::from_secs(60), || async {
            let dlq = host.dead_letters().await;
            (host.queue().await.is_empty() && dlq.len() == 1).then_some(dlq)
        })
        .await;
    let third = Instant::now();
    // Up to 4 s, then up to 6 s (the cap), plus a poll of at most 1 s each time; never the
    // visibility timeout's 120 s.
    assert!(
        second - first <= Duration::from_secs(6),
        "{:?}",
        second - first
    );
    assert!(
        third - second <= Duration::from_secs(8),
        "{:?}",
        third - second
    );
    assert_eq!(dead[0].receive_count, 3, "{dead:?}");
    let reason = dead[0].dead_letter_reason.clone().unwrap_or_default();
    assert!(
        reason.contains("delivery 3 failed on purpose")
            && reason.contains("failed on delivery 3 of retry.max_attempts 3"),
        "{reason}"
    );
    host.stop().await;
}

/// A failure kind or error text the policy names is not retried: the first delivery
/// dead-letters the message.
#[tokio::test(start_paused = true)]
async fn failures_not_worth_retrying_go_straight_to_the_dead_letter_queue() {
    for retry in [
        "dead_letter_on = [\"error\"]",
        "dead_letter_on_errors = [\"failed on purpose\"]",
    ] {
        let host = InProcess::start(
            "visibility_timeout = 120\nmax_receive_count = 10",
            &format!("{FAILING}[bindings.retry]\n{retry}\n"),
        )
        .await;
        host.publish("Order.Created", r#"{"n":1}"#).await;
        let dead = host
            .wait_for("the dead letter", Duration::from_secs(60), || async {
                let dlq = host.dead_letters().await;
                (dlq.len() == 1).then_some(dlq)
            })
            .await;
        assert_eq!(dead[0].receive_count, 1, "{retry}: {dead:?}");
        let reason = dead[0].dead_letter_reason.clone().unwrap_or_default();
        assert!(reason.contains("not retried"), "{retry}: {reason}");
        host.stop().await;
    }
}

/// Publish `n` orders and return how long (tokio time) until every one is acked; none fails.
async fn ack_all(host: &InProcess, n: usize) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        host.publish("Order.Created", &format!(r#"{{"n":{i}}}"#))
            .await;
    }
    host.wait_for("every order acked", Duration::from_secs(600), || async {
        host.queue().await.is_empty().then_some(())
    })
    .await;
    assert!(host.dead_letters().await.is_empty());
    start.elapsed()
}

/// Two calls per second: six messages take two seconds, not one poll; without the limit the
/// same six take well under a second. None fails or is redelivered (a redelivery would come
/// after the 30 s visibility timeout).
#[tokio::test(start_paused = true)]
async fn a_rate_limit_spaces_the_calls_and_fails_nothing() {
    let echo = "[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"echo\"\n";
    let free = InProcess::start("visibility_timeout = 30", echo).await;
    let unlimited = ack_all(&free, 6).await;
    free.stop().await;
    let host = InProcess::start(
        "visibility_timeout = 30",
        &format!("{echo}max_per_second = 2\n"),
    )
    .await;
    let limited = ack_all(&host, 6).await;
    host.stop().await;
    assert!(unlimited < Duration::from_secs(1), "{unlimited:?}");
    assert!(
        limited >= Duration::from_secs(2) && limited < Duration::from_secs(4),
        "{limited:?}"
    );
}

/// One call at a time: each `sleepy` call ends before the next starts. Without the limit the
/// same messages' calls overlap (the control that shows the check can fail).
#[tokio::test(start_paused = true)]
async fn a_concurrency_limit_runs_one_call_at_a_time() {
    for (limit, overlap) in [("", true), ("max_concurrency = 1\n", false)] {
        let host = InProcess::start(
            "visibility_timeout = 30\nhandler_timeout_secs = 600",
            &format!(
                "[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"panicky\"\nhandler = \"sleepy\"\n{limit}\
                 config = {{ sleep_ms = 150, started = \"{{scratch}}/calls.txt\", finished = \"{{scratch}}/calls.txt\" }}\n"
            ),
        )
        .await;
        for i in 0..4 {
            host.publish("Order.Created", &format!(r#"{{"n":{i}}}"#))
                .await;
        }
        let log = host.scratch.path("calls.txt");
        // The handlers sleep in real time: poll in real time, letting tokio's clock move a
        // little each time (the receive loop's long poll needs it), never far enough for a
        // waiting call's 600 s timeout, however the paused clock treats blocking threads.
        let started = std::time::Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.lines().filter(|l| l.starts_with("end ")).count() == 4 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "four calls, limit {limit:?}: {text}"
            );
            InProcess::settle_real(Duration::from_millis(20)).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        // One at a time: every start is followed by its own end.
        let serial = lines
            .chunks(2)
            .all(|pair| pair.len() == 2 && pair[1] == format!("end {}", pair[0]));
        assert_eq!(serial, !overlap, "limit {limit:?}: {lines:?}");
        host.stop().await;
    }
}

/// Two failures in a row open the circuit: for its 60 s cooldown the binding gets no message
/// (they stay on the queue, not in the DLQ; each refusal is a delivery too); then one probes
/// it and fails (no message is past its third delivery yet, and `fail_times = 3`), which
/// opens the circuit for another 60 s; the next probe succeeds and the rest follow.
#[tokio::test(start_paused = true)]
async fn an_open_circuit_holds_messages_back_then_a_probe_closes_it() {
    let host = InProcess::start(
        "visibility_timeout = 5\nmax_receive_count = 10",
        "[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"flaky\"\nconfig = { mode = \"error\", fail_times = 3 }\n\
         [bindings.circuit_breaker]\nconsecutive_failures = 2\ncooldown_secs = 60\n",
    )
    .await;
    for i in 0..3 {
        host.publish("Order.Created", &format!(r#"{{"n":{i}}}"#))
            .await;
        // One at a time, so the first two failures open the circuit before the third runs.
        host.wait_for("its first delivery", Duration::from_secs(30), || async {
            let q = host.queue().await;
            q.iter().all(|m| m.receive_count >= 1).then_some(())
        })
        .await;
    }
    let opened = Instant::now();
    // Half the cooldown later: all three still on the queue, none dead-lettered.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let q = host.queue().await;
    assert_eq!(q.len(), 3, "held back while the circuit is open: {q:?}");
    assert!(host.dead_letters().await.is_empty());
    // After the first cooldown one message probes and fails; 90 s in, the circuit is open
    // again and nothing is acked.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let q = host.queue().await;
    assert_eq!(
        q.len(),
        3,
        "the failed probe opened the circuit again: {q:?}"
    );
    host.wait_for(
        "the second probe and the rest",
        Duration::from_secs(600),
        || async { host.queue().await.is_empty().then_some(()) },
    )
    .await;
    assert!(
        opened.elapsed() >= Duration::from_secs(115),
        "acked only after two cooldowns: {:?}",
        opened.elapsed()
    );
    assert!(host.dead_letters().await.is_empty());
    host.stop().await;
}

/// An open circuit as on-call sees it, from a real host: `iniesta plugins` (text and JSON),
/// the `iniesta_circuit_state` gauge and the console's binding; gone once the host stops.
#[test]
fn an_open_circuit_shows_in_iniesta_plugins_the_metrics_and_the_console() {
    use crate::common::{self, Host, Scratch};
    let s = Scratch::new();
    let config = s.config(
        "",
        "[metrics]\nlisten = \"127.0.0.1:0\"\n[console]\nenabled = true\n\
         [[bindings]]\nname = \"orders\"\nevents = [\"Order.*\"]\nplugin = \"flaky\"\n\
         config = { mode = \"error\", fail_times = 1000 }\n\
         [bindings.circuit_breaker]\nconsecutive_failures = 1\ncooldown_secs = 600\n",
    );
    let host = Host::start(&config, s.path("host.log"));
    let port = host.port();
    common::publish(&config, &["Order.Created", "{}"]);
    let plugins = |args: &[&str]| {
        let mut all = vec!["plugins"];
        all.extend_from_slice(args);
        let out = common::iniesta(&config, &all);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    s.wait_for(
        "the open circuit in iniesta plugins",
        Duration::from_secs(60),
        || plugins(&[]).contains("CIRCUIT OPEN orders for another"),
    );
    let json: serde_json::Value =
        serde_json::from_str(&plugins(&["--output", "json"])).expect("plugins JSON");
    let circuit = &json["running_hosts"][0]["circuits"][0];
    assert_eq!(circuit["binding"], "orders", "{json}");
    assert_eq!(circuit["state"], "open", "{json}");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    assert!(
        circuit["open_until_ms"]
            .as_u64()
            .is_some_and(|until| until > now_ms + 500_000),
        "open for about 600 s: {json}"
    );
    let (_, metrics) = common::http_get(port, "/metrics").expect("/metrics answers");
    assert!(
        metrics.contains("iniesta_circuit_state{binding=\"orders\"} 1"),
        "{metrics}"
    );
    let (_, state) = common::http_get(port, "/api/state").expect("the console answers");
    let state: serde_json::Value = serde_json::from_str(&state).expect("state JSON");
    assert_eq!(state["bindings"][0]["circuit"], "open", "{state}");
    host.stop();
    assert!(
        !plugins(&[]).contains("CIRCUIT"),
        "a stopped host shows no circuit"
    );
}
