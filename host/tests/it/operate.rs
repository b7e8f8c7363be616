//! Operating a consumer (issue 8), end to end with real processes, real plugins and a real
//! moto server per test: the visibility heartbeat, graceful drain, backpressure, FIFO group
//! order, `/metrics` and `/health`, JSON logs and the error webhook.
//!
//! No timing thresholds: every wait has a generous deadline, and what is asserted is what
//! happened (a handler ran once, nothing is left invisible, counts match the ledger).

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use common::aws::{approximate_counts, aws_env, ok, queue_url, sqs, Moto, Proxy};
use common::{http_get, rt, Host, Scratch};

const LIMIT: Duration = Duration::from_secs(120);
const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:global";
const QUEUE: &str = "iniesta-test-receiver";

// ---------------------------------------------------------------------------------------------
// helpers

/// An AWS config against `endpoint`: `[sqs]` gets `sqs_extra`, then `rest` (bindings, ...).
/// `rest` plus a `/metrics` endpoint on a port the OS picks (`Host::port` finds it), reading
/// the queue depths every second.
fn with_metrics(rest: &str) -> String {
    format!("{rest}[metrics]\nlisten = \"127.0.0.1:0\"\nqueue_depth_interval_secs = 1\n")
}

fn aws_config(s: &Scratch, name: &str, endpoint: &str, sqs_extra: &str, rest: &str) -> PathBuf {
    aws_config_with(s, name, endpoint, TOPIC, sqs_extra, rest)
}

fn aws_config_with(
    s: &Scratch,
    name: &str,
    endpoint: &str,
    topic: &str,
    sqs_extra: &str,
    rest: &str,
) -> PathBuf {
    let mut sqs_lines = String::new();
    if !sqs_extra.contains("visibility_timeout") {
        sqs_lines.push_str("visibility_timeout = 2\n");
    }
    if !sqs_extra.contains("wait_time_seconds") {
        sqs_lines.push_str("wait_time_seconds = 1\n");
    }
    if !sqs_extra.contains("filters") {
        sqs_lines.push_str("filters = [\"Order.*\", \"Slow.*\", \"Late.*\", \"Fast.*\", \"Bad.*\", \"Boom.*\", \"Fifo.*\", \"Stall.*\"]\n");
    }
    if !sqs_extra.contains("dead_letter_queue") {
        sqs_lines.push_str("dead_letter_queue = \"iniesta-test-receiver-dlq\"\n");
    }
    s.write(
        name,
        &format!(
            "service = \"receiver\"\nenv = \"test\"\ninitialization = [\"EVENT_POLLING\", \"SNS_PRODUCER\"]\n\
             [broker]\nkind = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n\
             [sns]\ntopic_arn = \"{topic}\"\n[sqs]\n{sqs_lines}{sqs_extra}\n\
             [plugins]\ndirs = [\"{}\"]\n{rest}\n",
            common::plugin_dir().display()
        ),
    )
}

fn ledger_binding(path: &Path, label: &str, events: &str) -> String {
    format!(
        "[[bindings]]\nevents = {events}\nplugin = \"ledger\"\nconfig = {{ path = \"{}\", label = \"{label}\" }}\n",
        path.display()
    )
}

fn sleepy_binding(events: &str, sleep_ms: u64) -> String {
    format!(
        "[[bindings]]\nevents = {events}\nplugin = \"panicky\"\nhandler = \"sleepy\"\ntimeout_secs = 120\nconfig = {{ sleep_ms = {sleep_ms} }}\n"
    )
}

/// Start `iniesta [EXTRA] -c CONFIG run [RUN_ARGS]`; waits for `consuming` unless told not to.
fn start(config: &Path, log: PathBuf, extra: &[&str], run_args: &[&str], wait: bool) -> Host {
    let file = std::fs::File::create(&log).expect("log");
    let child = aws_env(
        Command::new(common::bin())
            .args(extra)
            .arg("-c")
            .arg(config)
            .arg("run")
            .args(run_args),
    )
    .env("INIESTA_LOG", "info")
    .env("NO_COLOR", "1")
    .stdout(Stdio::null())
    .stderr(file)
    .spawn()
    .expect("host starts");
    let host = Host { child, log };
    if wait {
        wait_started(&host);
    }
    host
}

fn wait_started(host: &Host) {
    let start = Instant::now();
    while !host.log_text().contains("consuming") {
        assert!(
            start.elapsed() < LIMIT,
            "the host did not start:\n{}",
            host.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigterm(host: &Host) {
    let pid = host.child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
}

/// Wait for the host to exit on its own; returns (how long it took, its log).
fn wait_exit(host: &mut Host) -> (Duration, String) {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = host.child.try_wait() {
            assert!(
                status.success(),
                "host exited with {status}:\n{}",
                host.log_text()
            );
            return (start.elapsed(), host.log_text());
        }
        assert!(
            start.elapsed() < LIMIT,
            "host did not exit:\n{}",
            host.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (visible, not visible) on a queue.
async fn counts(endpoint: &str, name: &str) -> (u64, u64) {
    let counts = approximate_counts(
        endpoint,
        name,
        &[
            QueueAttributeName::ApproximateNumberOfMessages,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        ],
    )
    .await;
    (counts[0], counts[1])
}

fn depth(rt: &tokio::runtime::Runtime, endpoint: &str, name: &str) -> u64 {
    let (visible, invisible) = rt.block_on(counts(endpoint, name));
    visible + invisible
}

/// The sum of every series of `name` whose labels include `labels`, in Prometheus text.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut total = 0.0;
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, l)) => (n, l),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")))
        {
            total += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    total
}

fn scrape(port: u16) -> String {
    let (status, body) = http_get(port, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200, "{body}");
    body
}

fn ledger_ids(s: &Scratch, name: &str, label: &str) -> Vec<String> {
    s.ledger(name)
        .iter()
        .filter(|l| l["label"] == label)
        .map(|l| l["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// visibility heartbeat

#[test]
fn a_ten_second_handler_with_a_four_second_visibility_timeout_runs_once() {
    let moto = Moto::start();
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl");
    let bindings = format!(
        "{}{}",
        ledger_binding(&ledger, "slow", r#"["Slow.*"]"#),
        sleepy_binding(r#"["Slow.*"]"#, 10_000)
    );
    let sqs_extra = "visibility_timeout = 4\npollers = 2";
    let a = aws_config(
        &s,
        "a.toml",
        &moto.url(),
        sqs_extra,
        &with_metrics(&bindings),
    );
    // A second host on the same queue with its own in-process locks: if the message
    // reappeared while the first ran it, this one would run it again.
    let b = aws_config(
        &s,
        "b.toml",
        &moto.url(),
        sqs_extra,
        &with_metrics(&bindings),
    );
    ok(&a, &["setup"]);
    let host_a = start(&a, s.path("a.log"), &[], &[], true);
    let host_b = start(&b, s.path("b.log"), &[], &[], true);
    let (port_a, port_b) = (host_a.port(), host_b.port());
    ok(&a, &["publish", "Slow.Job", r#"{"n":1}"#]);
    let rt = rt();
    wait_for("the slow message to start", || {
        ledger_ids(&s, "ledger.jsonl", "slow").len() == 1
    });
    wait_for("the slow message to be deleted", || {
        depth(&rt, &moto.url(), QUEUE) == 0
    });
    let extensions = metric(&scrape(port_a), "iniesta_visibility_extensions_total", &[])
        + metric(&scrape(port_b), "iniesta_visibility_extensions_total", &[]);
    eprintln!("visibility extensions for one 10 s handler (4 s timeout): {extensions}");
    let log_a = host_a.stop();
    let log_b = host_b.stop();
    let runs = s.ledger("ledger.jsonl");
    assert_eq!(
        runs.len(),
        1,
        "the handler ran exactly once: {runs:?}\n--- a\n{log_a}\n--- b\n{log_b}"
    );
    assert_eq!(runs[0]["receive_count"], 1, "never redelivered: {runs:?}");
    // 10 s of handler with a 4 s timeout: extended at about 2, 4, 6 and 8 s.
    assert!(
        extensions >= 2.0,
        "the visibility was extended while the handler ran ({extensions})"
    );
    for log in [&log_a, &log_b] {
        assert!(!log.contains("locked by another consumer"), "{log}");
    }
}

// ---------------------------------------------------------------------------------------------
// graceful drain

#[test]
fn sigterm_finishes_running_handlers_and_gives_back_what_has_not_started() {
    let moto = Moto::start();
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl");
    let bindings = format!(
        "{}{}{}",
        ledger_binding(&ledger, "slow", r#"["Slow.*"]"#),
        sleepy_binding(r#"["Slow.*"]"#, 4000),
        ledger_binding(&ledger, "late", r#"["Late.*"]"#)
    );
    // A long visibility timeout: anything stranded would stay invisible for a minute.
    let sqs_extra = "visibility_timeout = 60\nwait_time_seconds = 10\nmax_in_flight = 4\nshutdown_timeout_secs = 30";
    let config = aws_config(
        &s,
        "iniesta.toml",
        &moto.url(),
        sqs_extra,
        &with_metrics(&bindings),
    );
    ok(&config, &["setup"]);
    let mut host = start(&config, s.path("host.log"), &[], &[], true);
    let port = host.port();
    ok(&config, &["publish", "Slow.One", r#"{"n":1}"#]);
    ok(&config, &["publish", "Slow.Two", r#"{"n":2}"#]);
    wait_for("both slow handlers to be running", || {
        ledger_ids(&s, "ledger.jsonl", "slow").len() == 2
    });
    // The signal must find a long poll pending (the receive loop asks for the two free slots
    // once it has waited for room for a full batch).
    wait_for("a long poll to be pending", || {
        metric(&scrape(port), "iniesta_receives_in_flight", &[]) == 1.0
    });
    sigterm(&host);
    // Sent after the signal: the long poll that was pending when it came brings them.
    for n in 0..3 {
        ok(
            &config,
            &["publish", "Late.Event", &format!("{{\"late\":{n}}}")],
        );
    }
    let (drain, log) = wait_exit(&mut host);
    eprintln!("SIGTERM to exit: {drain:?}");
    let rt = rt();
    let (visible, invisible) = rt.block_on(counts(&moto.url(), QUEUE));
    assert_eq!(
        invisible, 0,
        "nothing is left invisible after the drain (visible {visible}):\n{log}"
    );
    assert_eq!(
        visible, 3,
        "the three late messages wait on the queue, the slow ones are deleted:\n{log}"
    );
    assert!(
        drain < Duration::from_secs(30),
        "exited within the shutdown timeout ({drain:?})"
    );
    assert!(log.contains("drained"), "{log}");
    assert!(
        log.contains("given back unstarted"),
        "the pending long poll's messages were given back:\n{log}"
    );
    assert!(ledger_ids(&s, "ledger.jsonl", "late").is_empty());

    // None lost: another host takes the late ones at once, and the slow ones do not run again.
    let other = start(&config, s.path("other.log"), &[], &[], true);
    wait_for("the late messages to be handled", || {
        ledger_ids(&s, "ledger.jsonl", "late").len() == 3 && depth(&rt, &moto.url(), QUEUE) == 0
    });
    other.stop();
    assert_eq!(ledger_ids(&s, "ledger.jsonl", "slow").len(), 2);
    let mut late = ledger_ids(&s, "ledger.jsonl", "late");
    late.sort();
    late.dedup();
    assert_eq!(late.len(), 3, "three distinct late messages");
}

// ---------------------------------------------------------------------------------------------
// backpressure

#[test]
fn a_slow_handler_does_not_delay_its_batch_mates_and_receiving_stops_at_max_in_flight() {
    let moto = Moto::start();
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl");
    let bindings = format!(
        "{}{}{}",
        ledger_binding(&ledger, "slow", r#"["Slow.*"]"#),
        sleepy_binding(r#"["Slow.*"]"#, 8000),
        ledger_binding(&ledger, "fast", r#"["Fast.*"]"#)
    );
    let sqs_extra = "visibility_timeout = 60\nmax_in_flight = 3\npollers = 2";
    let config = aws_config(
        &s,
        "iniesta.toml",
        &moto.url(),
        sqs_extra,
        &with_metrics(&bindings),
    );
    ok(&config, &["setup"]);
    // One batch: a slow message and two fast ones, queued before the host starts.
    ok(&config, &["publish", "Slow.Batch", "{}"]);
    ok(&config, &["publish", "Fast.A", "{}"]);
    ok(&config, &["publish", "Fast.B", "{}"]);
    let rt = rt();
    let host = start(&config, s.path("host.log"), &[], &[], true);
    let port = host.port();
    wait_for("all three to start", || s.ledger("ledger.jsonl").len() == 3);
    // If deletes waited for the batch's slowest handler, the queue would go from 3 to 0 at
    // once; instead the fast ones are deleted while the slow one still runs.
    wait_for("only the slow message to be left", || {
        rt.block_on(counts(&moto.url(), QUEUE)) == (0, 1)
    });
    wait_for("the slow message to finish", || {
        depth(&rt, &moto.url(), QUEUE) == 0
    });

    // Backpressure: eight 2-second messages, at most three in flight at any time.
    for n in 0..8 {
        ok(
            &config,
            &["publish", "Slow.Many", &format!("{{\"n\":{n}}}")],
        );
    }
    let (mut most, mut most_invisible) = (0.0f64, 0);
    let mut waited_while_full = false;
    let start = Instant::now();
    loop {
        let in_flight = metric(&scrape(port), "iniesta_in_flight", &[]);
        let (visible, invisible) = rt.block_on(counts(&moto.url(), QUEUE));
        most = most.max(in_flight);
        most_invisible = most_invisible.max(invisible);
        if invisible >= 3 && visible > 0 {
            waited_while_full = true;
        }
        if visible + invisible == 0 {
            break;
        }
        assert!(start.elapsed() < LIMIT, "the messages were not handled");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = host.stop();
    assert!(
        most <= 3.0,
        "never more than max_in_flight messages held at once ({most}):\n{log}"
    );
    // An acked message gives its slot up when its delete is queued: until the delete is done
    // it is still invisible, so the queue may show up to max_in_flight more.
    assert!(
        most_invisible <= 6,
        "never more invisible than max_in_flight held plus max_in_flight pending deletes ({most_invisible})"
    );
    assert!(
        waited_while_full,
        "messages waited on the queue while every slot was taken"
    );
    assert_eq!(ledger_ids(&s, "ledger.jsonl", "slow").len(), 9);
}

// ---------------------------------------------------------------------------------------------
// FIFO

const FIFO_TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:global.fifo";

fn fifo_config(s: &Scratch, endpoint: &str, extra: &str, bindings: &str) -> PathBuf {
    aws_config_with(
        s,
        "iniesta.toml",
        endpoint,
        FIFO_TOPIC,
        &format!(
            "queue_name = \"iniesta-test-orders.fifo\"\ndead_letter_queue = \"iniesta-test-orders-dlq.fifo\"\n\
             fifo_group_attribute = \"tenant\"\nfifo_group_field = \"group\"\n{extra}"
        ),
        bindings,
    )
}

/// Receive one message with the SDK and return its group id and body, then make it visible
/// again at once.
async fn peek_group(endpoint: &str, queue: &str) -> (String, String) {
    let client = sqs(endpoint);
    let url = queue_url(endpoint, queue).await;
    let out = client
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(1)
        .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
        .wait_time_seconds(2)
        .send()
        .await
        .expect("receive");
    let message = out.messages().first().expect("a message").clone();
    client
        .change_message_visibility()
        .queue_url(&url)
        .receipt_handle(message.receipt_handle().unwrap_or_default())
        .visibility_timeout(0)
        .send()
        .await
        .expect("visibility");
    let group = message
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
        .cloned()
        .unwrap_or_default();
    (group, message.body().unwrap_or_default().to_string())
}

#[test]
fn fifo_groups_keep_their_order_under_concurrency_with_group_ids_and_deduplication() {
    let moto = Moto::start();
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl");
    let bindings = format!(
        "{}{}",
        ledger_binding(&ledger, "fifo", r#"["Fifo.*"]"#),
        sleepy_binding(r#"["Fifo.*"]"#, 150)
    );
    let config = fifo_config(
        &s,
        &moto.url(),
        // One poller: SQS serialises receives per group server-side, but moto does not
        // guard against two concurrent receives taking the same group.
        "visibility_timeout = 30\nmax_in_flight = 10\npollers = 1",
        &bindings,
    );
    ok(&config, &["setup"]);
    let rt = rt();
    let queue = "iniesta-test-orders.fifo";
    // The group id comes from the body field (through the FIFO topic) ...
    ok(
        &config,
        &["publish", "Fifo.Probe", r#"{"group":"probe","seq":0}"#],
    );
    assert_eq!(rt.block_on(peek_group(&moto.url(), queue)).0, "probe");
    // ... or from the attribute, which wins (straight to the queue).
    ok(
        &config,
        &[
            "publish",
            "--queue",
            "Fifo.Probe",
            r#"{"group":"probe","seq":1}"#,
            "-a",
            "tenant=probe",
        ],
    );
    // Three groups of six through the topic (group from the body field), two of five straight
    // to the queue (group from the attribute), interleaved.
    let mut topic_lines = String::new();
    for seq in 0..6 {
        for g in 0..3 {
            topic_lines.push_str(&format!(
                "{{\"event\":\"Fifo.Step\",\"body\":{{\"group\":\"g{g}\",\"seq\":{seq}}}}}\n"
            ));
        }
    }
    let mut queue_lines = String::new();
    for seq in 0..5 {
        for t in 0..2 {
            queue_lines.push_str(&format!(
                "{{\"event\":\"Fifo.Step\",\"body\":{{\"seq\":{seq},\"t\":{t}}},\"attributes\":{{\"tenant\":\"t{t}\"}}}}\n"
            ));
        }
    }
    s.write("topic.jsonl", &topic_lines);
    s.write("queue.jsonl", &queue_lines);
    ok(
        &config,
        &[
            "publish",
            "--file",
            &s.path("topic.jsonl").display().to_string(),
        ],
    );
    ok(
        &config,
        &[
            "publish",
            "--queue",
            "--file",
            &s.path("queue.jsonl").display().to_string(),
        ],
    );
    // The same event and body twice: delivered once (content-based deduplication id).
    ok(
        &config,
        &["publish", "Fifo.Dup", r#"{"group":"d","seq":0}"#],
    );
    ok(
        &config,
        &["publish", "Fifo.Dup", r#"{"group":"d","seq":0}"#],
    );
    let total = 2 + 18 + 10 + 1;
    let host = start(&config, s.path("host.log"), &[], &[], true);
    wait_for("every FIFO message to be handled", || {
        s.ledger("ledger.jsonl").len() >= total && depth(&rt, &moto.url(), queue) == 0
    });
    let log = host.stop();
    let lines = s.ledger("ledger.jsonl");
    assert_eq!(lines.len(), total, "each message once:\n{log}");
    let mut order: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for line in &lines {
        let body = common::body_of(line);
        let group = match (body.get("group"), body.get("t")) {
            (Some(g), _) => g.as_str().unwrap_or_default().to_string(),
            (None, Some(t)) => format!("t{t}"),
            _ => "?".into(),
        };
        order
            .entry(group)
            .or_default()
            .push(body["seq"].as_i64().unwrap_or(-1));
    }
    for g in ["g0", "g1", "g2"] {
        assert_eq!(
            order[g],
            (0..6).collect::<Vec<_>>(),
            "group {g} in order:\n{log}"
        );
    }
    for t in ["t0", "t1"] {
        assert_eq!(
            order[t],
            (0..5).collect::<Vec<_>>(),
            "group {t} in order:\n{log}"
        );
    }
    assert_eq!(order["d"], vec![0], "the duplicate was dropped");
    assert_eq!(order["probe"], vec![0, 1]);
}

#[test]
fn fifo_messages_waiting_behind_their_group_are_given_back_at_shutdown() {
    let moto = Moto::start();
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl");
    let bindings = format!(
        "{}{}",
        ledger_binding(&ledger, "stall", r#"["Stall.*"]"#),
        sleepy_binding(r#"["Stall.*"]"#, 3000)
    );
    let config = fifo_config(
        &s,
        &moto.url(),
        "visibility_timeout = 60\nmax_in_flight = 10\nshutdown_timeout_secs = 30",
        &bindings,
    );
    ok(&config, &["setup"]);
    let queue = "iniesta-test-orders.fifo";
    let mut lines = String::new();
    for seq in 0..4 {
        lines.push_str(&format!(
            "{{\"event\":\"Stall.Step\",\"body\":{{\"group\":\"one\",\"seq\":{seq}}}}}\n"
        ));
    }
    s.write("stall.jsonl", &lines);
    ok(
        &config,
        &[
            "publish",
            "--file",
            &s.path("stall.jsonl").display().to_string(),
        ],
    );
    let rt = rt();
    let mut host = start(&config, s.path("host.log"), &[], &[], true);
    // All four come in one batch (one group); the first runs, three wait behind it.
    wait_for("the first message to run", || {
        s.ledger("ledger.jsonl").len() == 1
    });
    sigterm(&host);
    let (drain, log) = wait_exit(&mut host);
    eprintln!("SIGTERM to exit (FIFO): {drain:?}");
    let (visible, invisible) = rt.block_on(counts(&moto.url(), queue));
    assert_eq!(
        (visible, invisible),
        (3, 0),
        "the running one finished and was deleted, the three waiting were given back:\n{log}"
    );
    assert_eq!(s.ledger("ledger.jsonl").len(), 1, "{log}");
    // The next host takes them, still in order.
    let other = start(&config, s.path("other.log"), &[], &[], true);
    wait_for("the rest of the group", || {
        s.ledger("ledger.jsonl").len() == 4 && depth(&rt, &moto.url(), queue) == 0
    });
    other.stop();
    let seqs: Vec<i64> = s
        .ledger("ledger.jsonl")
        .iter()
        .map(|l| common::body_of(l)["seq"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(seqs, vec![0, 1, 2, 3]);
}

#[test]
fn a_fifo_dead_letter_is_redriven_to_its_group() {
    // FIFO dead-lettering and redrive on SQS: the message keeps its group both ways. (On real
    // SQS the original send's deduplication id is still in its 5-minute window here, so the
    // redrive must not reuse it; moto forgets a deduplication id once its message is deleted,
    // so it cannot show that difference.)
    let moto = Moto::start();
    let s = Scratch::new();
    let dead = "[[bindings]]\nevents = [\"Fifo.*\"]\nplugin = \"flaky\"\nconfig = { mode = \"dead-letter\" }\n";
    let config = fifo_config(&s, &moto.url(), "visibility_timeout = 30", dead);
    ok(&config, &["setup"]);
    let (queue, dlq) = ("iniesta-test-orders.fifo", "iniesta-test-orders-dlq.fifo");
    ok(
        &config,
        &[
            "publish",
            "--queue",
            "Fifo.Doomed",
            r#"{"group":"g","n":1}"#,
        ],
    );
    let rt = rt();
    let host = start(&config, s.path("host.log"), &[], &[], true);
    wait_for("the dead letter", || {
        depth(&rt, &moto.url(), dlq) == 1 && depth(&rt, &moto.url(), queue) == 0
    });
    host.stop();
    let report = ok(&config, &["dlq", "redrive"]);
    assert!(report.contains("redriven 1 message(s)"), "{report}");
    assert_eq!(depth(&rt, &moto.url(), dlq), 0, "{report}");
    assert_eq!(
        depth(&rt, &moto.url(), queue),
        1,
        "the redriven message is on the main queue: {report}"
    );
    let (group, body) = rt.block_on(peek_group(&moto.url(), queue));
    assert_eq!(
        (group.as_str(), body.as_str()),
        ("g", r#"{"group":"g","n":1}"#)
    );
}

#[test]
fn the_local_broker_keeps_fifo_group_order_and_deduplicates() {
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl").display().to_string();
    let config = s.write(
        "iniesta.toml",
        &format!(
            "service = \"receiver\"\nenv = \"test\"\ninitialization = [\"QUEUE_POLLING\"]\n\
             [broker]\nkind = \"local\"\npath = \"broker.db\"\n\
             [sqs]\nqueue_name = \"iniesta-test-receiver.fifo\"\ndead_letter_queue = \"iniesta-test-receiver-dlq.fifo\"\n\
             fifo_group_field = \"group\"\nmax_in_flight = 8\npollers = 2\nvisibility_timeout = 30\nwait_time_seconds = 1\n\
             [plugins]\ndirs = [\"{}\"]\n\
             [[bindings]]\nevents = [\"Order.*\"]\nplugin = \"ledger\"\nconfig = {{ path = \"{ledger}\" }}\n{}",
            common::plugin_dir().display(),
            sleepy_binding(r#"["Order.*"]"#, 100)
        ),
    );
    let mut lines = String::new();
    for seq in 0..5 {
        for g in 0..3 {
            lines.push_str(&format!(
                "{{\"event\":\"Order.Step\",\"body\":{{\"group\":\"g{g}\",\"seq\":{seq}}}}}\n"
            ));
        }
    }
    s.write("events.jsonl", &lines);
    common::publish(
        &config,
        &[
            "--queue",
            "--file",
            &s.path("events.jsonl").display().to_string(),
        ],
    );
    // A duplicate within five minutes is stored once.
    common::publish(
        &config,
        &["--queue", "Order.Dup", r#"{"group":"d","seq":0}"#],
    );
    common::publish(
        &config,
        &["--queue", "Order.Dup", r#"{"group":"d","seq":0}"#],
    );
    let host = Host::start(&config, s.path("host.log"));
    s.wait_for("every message", LIMIT, || {
        s.ledger("ledger.jsonl").len() >= 16
    });
    std::thread::sleep(Duration::from_millis(500));
    let log = host.stop();
    let lines = s.ledger("ledger.jsonl");
    assert_eq!(lines.len(), 16, "{log}");
    let mut order: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for line in &lines {
        let body = common::body_of(line);
        order
            .entry(body["group"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push(body["seq"].as_i64().unwrap_or(-1));
    }
    for g in ["g0", "g1", "g2"] {
        assert_eq!(order[g], (0..5).collect::<Vec<_>>(), "{g}:\n{log}");
    }
    assert_eq!(order["d"], vec![0]);
}

// ---------------------------------------------------------------------------------------------
// metrics and health

#[test]
fn metrics_match_the_ledger_and_health_flips_with_the_broker_and_the_drain_while_livez_stays_up() {
    let moto = Moto::start();
    let proxy = Proxy::start(moto.port);
    proxy.down();
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl");
    let bindings = format!(
        "{}[[bindings]]\nname = \"bad-input\"\nevents = [\"Bad.*\"]\nplugin = \"flaky\"\nconfig = {{ mode = \"dead-letter\" }}\n{}{}",
        ledger_binding(&ledger, "orders", r#"["Order.*"]"#),
        ledger_binding(&ledger, "slow", r#"["Slow.*"]"#),
        sleepy_binding(r#"["Slow.*"]"#, 4000),
    );
    // Resources are set up directly; the host reaches moto through a proxy that starts down.
    let direct = aws_config(&s, "direct.toml", &moto.url(), "", &bindings);
    ok(&direct, &["setup"]);
    let config = aws_config(
        &s,
        "iniesta.toml",
        &proxy.url(),
        "",
        &with_metrics(&bindings),
    );
    let mut host = start(&config, s.path("host.log"), &[], &["--no-check"], false);
    let port = host.port();
    wait_for("/health to answer 503 while SQS is unreachable", || {
        matches!(http_get(port, "/health"), Some((503, _)))
    });
    wait_for("a failed receive", || {
        host.log_text().contains("receive failed")
    });
    let (status, why) = http_get(port, "/health").expect("health");
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("failed"), "{why}");
    // Kubernetes' names: not ready (do not send work), but alive (do not restart it).
    assert_eq!(http_get(port, "/readyz"), Some((status, why)));
    assert_eq!(http_get(port, "/livez"), Some((200, "alive\n".to_string())));
    proxy.up();
    wait_for("/health to flip to ready", || {
        http_get(port, "/health") == Some((200, "ready\n".to_string()))
    });
    let rt = rt();
    for n in 0..5 {
        ok(
            &direct,
            &["publish", "Order.Placed", &format!("{{\"n\":{n}}}")],
        );
    }
    ok(&direct, &["publish", "Bad.Input", "{}"]);
    wait_for("the orders and the dead letter", || {
        ledger_ids(&s, "ledger.jsonl", "orders").len() == 5
            && depth(&rt, &moto.url(), QUEUE) == 0
            && depth(&rt, &moto.url(), "iniesta-test-receiver-dlq") == 1
    });
    let seen = ledger_ids(&s, "ledger.jsonl", "orders").len() as f64;
    let text = scrape(port);
    // Series are labelled with the binding's name: `name` where set, else the plugin's
    // (`ledger`; the second ledger binding, `slow`, is `ledger#2`).
    let orders = "ledger";
    let bad = "bad-input";
    assert_eq!(
        metric(&text, "iniesta_messages_acked_total", &[]),
        seen,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "iniesta_handler_calls_total",
            &[("binding", orders), ("result", "ack")]
        ),
        seen,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "iniesta_handler_duration_seconds_count",
            &[("binding", orders)]
        ),
        seen,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "iniesta_handler_calls_total",
            &[("binding", bad), ("result", "dead_letter")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "iniesta_messages_dead_lettered_total", &[]),
        1.0
    );
    // The dead letter shows in the dead-letter queue's depth (GetQueueAttributes on SQS).
    wait_for("the DLQ depth gauge to show the dead letter", || {
        metric(
            &scrape(port),
            "iniesta_queue_messages",
            &[("queue", "iniesta-test-receiver-dlq"), ("state", "visible")],
        ) == 1.0
    });
    assert!(metric(&text, "iniesta_messages_received_total", &[]) >= seen + 1.0);
    assert_eq!(metric(&text, "iniesta_in_flight", &[]), 0.0, "{text}");
    assert_eq!(
        metric(
            &text,
            "iniesta_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0,
        "{text}"
    );
    // The process's own gauges, read at the scrape.
    assert!(
        metric(&text, "process_resident_memory_bytes", &[]) > 1e6,
        "{text}"
    );
    assert!(metric(&text, "process_open_fds", &[]) >= 3.0, "{text}");
    assert!(metric(&text, "process_threads", &[]) >= 2.0, "{text}");
    assert!(
        metric(&text, "iniesta_poll_errors_total", &[]) >= 1.0,
        "receives failed while the proxy was down: {text}"
    );
    for name in [
        "iniesta_lock_failures_total",
        "iniesta_plugin_refusals_total",
        "iniesta_messages_released_total",
        "iniesta_messages_retried_total",
    ] {
        assert!(text.contains(&format!("# HELP {name}")), "{name}:\n{text}");
    }

    // Draining is not ready.
    ok(&direct, &["publish", "Slow.Job", "{}"]);
    wait_for("the slow handler to run", || {
        ledger_ids(&s, "ledger.jsonl", "slow").len() == 1
    });
    wait_for("the second ledger binding's series, as ledger#2", || {
        metric(
            &scrape(port),
            "iniesta_handler_calls_total",
            &[("binding", "ledger#2"), ("result", "ack")],
        ) == 1.0
    });
    sigterm(&host);
    wait_for(
        "/health to say draining",
        || matches!(http_get(port, "/health"), Some((503, body)) if body.contains("draining")),
    );
    // A draining host stays alive: a liveness probe must not kill it mid-drain.
    assert_eq!(http_get(port, "/livez"), Some((200, "alive\n".to_string())));
    let (_, log) = wait_exit(&mut host);
    assert_eq!(
        depth(&rt, &moto.url(), QUEUE),
        0,
        "the slow one settled:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// logs

#[test]
fn json_logs_are_one_object_per_line_and_message_lines_carry_the_message_id() {
    let moto = Moto::start();
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl");
    let bindings = format!(
        "{}[[bindings]]\nevents = [\"Bad.*\"]\nplugin = \"flaky\"\nconfig = {{ mode = \"dead-letter\" }}\n\
         [[bindings]]\nevents = [\"Boom.*\"]\nplugin = \"panicky\"\nhandler = \"panicky\"\n",
        ledger_binding(&ledger, "orders", r#"["Order.*"]"#),
    );
    let config = aws_config(
        &s,
        "iniesta.toml",
        &moto.url(),
        "max_receive_count = 2",
        &bindings,
    );
    ok(&config, &["setup"]);
    let log_path = s.path("host.log");
    let file = std::fs::File::create(&log_path).expect("log");
    let child = aws_env(
        Command::new(common::bin())
            .args(["--log-format", "json", "-c"])
            .arg(&config)
            .arg("run"),
    )
    .env("INIESTA_LOG", "info,iniesta=debug")
    .stdout(Stdio::null())
    .stderr(file)
    .spawn()
    .expect("host starts");
    let host = Host {
        child,
        log: log_path,
    };
    wait_started(&host);
    let rt = rt();
    ok(&config, &["publish", "Order.Placed", "{}"]);
    ok(&config, &["publish", "Bad.Input", "{}"]);
    ok(&config, &["publish", "Boom.Now", "panic please"]);
    wait_for("the ack, the dead letter and the redriven panic", || {
        ledger_ids(&s, "ledger.jsonl", "orders").len() == 1
            && depth(&rt, &moto.url(), "iniesta-test-receiver-dlq") == 2
            && depth(&rt, &moto.url(), QUEUE) == 0
    });
    let log = host.stop();
    let mut about_messages = 0;
    let mut foreign = 0;
    let mut with_binding = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            value.get("timestamp").is_some() && value.get("level").is_some(),
            "{line}"
        );
        let text = value["message"].as_str().unwrap_or_default();
        let message_id = value
            .get("message_id")
            .or_else(|| value.get("span").and_then(|s| s.get("message_id")));
        if value["source"] == "stderr" {
            // A plugin's own stderr (its panic hook), wrapped: it has no message fields; the
            // host's line about the same panic does.
            foreign += 1;
            continue;
        }
        let is_about_a_message = [
            "acked",
            "deleted",
            "deleting",
            "dead-letter",
            "panicked",
            "redelivery",
            "given back",
            "visibility",
            "message lock",
        ]
        .iter()
        .any(|w| text.contains(w));
        if is_about_a_message {
            about_messages += 1;
            assert!(
                message_id.is_some(),
                "a line about a message without message_id: {line}"
            );
            assert!(
                value.get("event").is_some()
                    || value.get("span").and_then(|s| s.get("event")).is_some(),
                "a line about a message without its event: {line}"
            );
        }
        if value.get("binding").is_some() || value.get("bindings").is_some() {
            with_binding += 1;
        }
    }
    assert!(about_messages >= 4, "{log}");
    assert!(
        foreign >= 1,
        "the plugin's panic output was wrapped too:\n{log}"
    );
    assert!(with_binding >= 3, "{log}");
    // Other commands log JSON too, errors included.
    let out = aws_env(
        Command::new(common::bin())
            .args(["--log-format", "json", "-c"])
            .arg(&config)
            .args(["publish", "Order.Placed", "{}", "-a", "bad:Number=x"]),
    )
    .output()
    .expect("runs");
    assert!(!out.status.success());
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(value["level"], "ERROR", "{line}");
    }
}

// ---------------------------------------------------------------------------------------------
// the error webhook

#[test]
fn handler_failures_are_posted_to_the_error_webhook_with_bodies_redacted() {
    let hook = common::capture::Capture::start();
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl").display().to_string();
    let bindings = format!(
        "[[bindings]]\nevents = [\"Boom.*\"]\nplugin = \"panicky\"\nhandler = \"panicky\"\n\
         [[bindings]]\nevents = [\"Bad.*\"]\nplugin = \"flaky\"\nconfig = {{ mode = \"dead-letter\" }}\n\
         [[bindings]]\nevents = [\"Flaky.*\"]\nplugin = \"flaky\"\nconfig = {{ mode = \"error\", fail_times = 1 }}\n\
         [[bindings]]\nevents = [\"Slow.*\"]\nplugin = \"panicky\"\nhandler = \"sleepy\"\ntimeout_secs = 1\nconfig = {{ sleep_ms = 2500 }}\n\
         [[bindings]]\nevents = [\"Order.*\"]\nplugin = \"ledger\"\nconfig = {{ path = \"{ledger}\" }}\n\
         [errors]\nwebhook_url = \"http://127.0.0.1:{}/iniesta/errors?token=secret-token\"\n",
        hook.port
    );
    let config = s.config("visibility_timeout = 30\nmax_receive_count = 5", &bindings);
    let host = Host::start(&config, s.path("host.log"));
    common::publish(&config, &["Boom.Now", "please panic, secret body"]);
    common::publish(&config, &["Bad.Input", "{\"secret\":1}"]);
    common::publish(&config, &["Flaky.Once", "{}"]);
    common::publish(&config, &["Slow.Job", "{}"]);
    common::publish(&config, &["Order.Fine", "{}"]);
    s.wait_for("a record of each kind", LIMIT, || {
        let kinds: Vec<String> = hook
            .json_bodies()
            .iter()
            .map(|r| r["kind"].as_str().unwrap_or_default().to_string())
            .collect();
        ["panic", "dead_letter", "error", "timeout"]
            .iter()
            .all(|k| kinds.iter().any(|x| x == k))
    });
    let log = host.stop();
    let records = hook.json_bodies();
    for record in &records {
        for key in [
            "binding",
            "plugin",
            "plugin_version",
            "handler",
            "event",
            "message_id",
            "reason",
            "timestamp",
        ] {
            assert!(
                record[key].as_str().map(|v| !v.is_empty()).unwrap_or(false),
                "{key} in {record}"
            );
        }
        assert!(
            record["receive_count"].as_u64().unwrap_or(0) >= 1,
            "{record}"
        );
        assert_eq!(
            record["body"],
            serde_json::Value::Null,
            "redacted: {record}"
        );
        assert_eq!(record["body_redacted"], true);
        assert_eq!(record["service"], "receiver");
    }
    let panic = records
        .iter()
        .find(|r| r["kind"] == "panic")
        .expect("panic record");
    assert_eq!(panic["plugin"], "panicky");
    assert_eq!(panic["event"], "Boom.Now.receiver");
    assert!(panic["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("asked to panic"));
    assert!(
        !records.iter().any(|r| r["event"] == "Order.Fine.receiver"),
        "an ack is not a failure"
    );
    assert!(
        !log.contains("secret-token"),
        "the webhook URL is never logged:\n{log}"
    );
    assert_eq!(s.ledger("ledger.jsonl").len(), 1);
}

#[test]
fn a_dead_webhook_never_holds_up_the_pipeline() {
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl").display().to_string();
    // Nothing listens on this port.
    let dead = common::ports::unused_port();
    let bindings = format!(
        "[[bindings]]\nevents = [\"Boom.*\"]\nplugin = \"panicky\"\nhandler = \"panicky\"\n\
         [[bindings]]\nevents = [\"Order.*\"]\nplugin = \"ledger\"\nconfig = {{ path = \"{ledger}\" }}\n\
         [errors]\nwebhook_url = \"http://127.0.0.1:{dead}/hook\"\ntimeout_secs = 1\n"
    );
    let config = s.config("visibility_timeout = 1", &bindings);
    let host = Host::start(&config, s.path("host.log"));
    common::publish(&config, &["Boom.Now", "panic"]);
    for n in 0..5 {
        common::publish(&config, &["Order.Fine", &format!("{{\"n\":{n}}}")]);
    }
    s.wait_for("the orders and the webhook failure", LIMIT, || {
        s.ledger("ledger.jsonl").len() == 5 && host.log_text().contains("the error webhook failed")
    });
    host.stop();
}

#[test]
fn a_message_waiting_for_a_lock_retry_is_given_back_at_shutdown() {
    let server = common::redis::RedisServer::start();
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl").display().to_string();
    // Up to 100 attempts, 100–300 ms apart: the message waits for its lock for many seconds.
    let rest = format!(
        "[lock]\nurls = [\"{}\"]\nretry_count = 100\n\
         [[bindings]]\nevents = [\"Order.*\"]\nplugin = \"ledger\"\nconfig = {{ path = \"{ledger}\" }}\n",
        server.url()
    );
    let config = s.config("visibility_timeout = 60", &rest);
    let id = common::publish(&config, &["--queue", "Order.Held", "{}"]);
    server.cmd(&[
        "SET",
        &format!("sqs:event:{id}"),
        "another-host",
        "PX",
        "600000",
    ]);
    let mut host = Host::start(&config, s.path("host.log"));
    let rt = rt();
    let stored = |rt: &tokio::runtime::Runtime| {
        let config = iniesta::config::Config::load(&config).expect("config");
        rt.block_on(async move {
            iniesta::broker::local::LocalBroker::open(&config)
                .await
                .expect("broker")
                .messages(QUEUE)
                .await
                .expect("messages")
        })
    };
    wait_for("the message to be received and wait for its lock", || {
        stored(&rt).iter().any(|m| !m.visible)
    });
    sigterm(&host);
    let (_, log) = wait_exit(&mut host);
    let left = stored(&rt);
    assert_eq!(left.len(), 1, "{log}");
    assert!(
        left[0].visible,
        "given back at once, not after the 60 s visibility timeout:\n{log}"
    );
    assert!(log.contains("given back unstarted"), "{log}");
    assert!(s.ledger("ledger.jsonl").is_empty(), "never run: {log}");
    assert_eq!(
        server.cmd(&["GET", &format!("sqs:event:{id}")]),
        "another-host",
        "the other holder's lock is left alone"
    );
}
