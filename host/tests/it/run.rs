//! End to end on the embedded broker: `iniesta publish` in one process, `iniesta run` in
//! another, real plugins from target/debug, real SQLite.

use crate::common;

use std::time::Duration;

use common::{publish, queue_messages, Host, Scratch};

const LIMIT: Duration = Duration::from_secs(60);

fn ledger_binding(label: &str, events: &str, ledger: &str) -> String {
    format!(
        "[[bindings]]\nevents = {events}\nplugin = \"ledger\"\nconfig = {{ path = \"{ledger}\", label = \"{label}\" }}\n"
    )
}

#[test]
fn routes_exact_glob_default_and_fans_out() {
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl").display().to_string();
    let bindings = format!(
        "{}{}[[bindings]]\ndefault = true\nplugin = \"ledger\"\nconfig = {{ path = \"{ledger}\", label = \"default\" }}\n",
        ledger_binding("exact", r#"["Order.Created.receiver"]"#, &ledger),
        ledger_binding("glob", r#"["Order.*"]"#, &ledger),
    );
    let config = s.config("", &bindings);
    let host = Host::start(&config, s.path("host.log"));
    publish(&config, &["Order.Created", r#"{"id":1}"#]);
    publish(&config, &["Order.Paid", r#"{"id":2}"#]);
    publish(&config, &["hello", "plain text body"]);
    s.wait_for("4 ledger lines", LIMIT, || {
        s.ledger("ledger.jsonl").len() >= 4
    });
    std::thread::sleep(Duration::from_millis(300));
    let lines = s.ledger("ledger.jsonl");
    let mut seen: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["event"].as_str().unwrap_or("").to_string(),
                l["label"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("Order.Created.receiver".into(), "exact".into()),
            ("Order.Created.receiver".into(), "glob".into()),
            ("Order.Paid.receiver".into(), "glob".into()),
            ("hello.receiver".into(), "default".into()),
        ],
        "exact + glob fan out, glob alone, default for the rest"
    );
    let hello = lines
        .iter()
        .find(|l| l["event"] == "hello.receiver")
        .expect("hello handled");
    assert_eq!(hello["body"], "plain text body");
    assert_eq!(hello["attributes"]["iniesta_pass"], "hello.receiver");
    assert_eq!(hello["attributes"]["version"], "1");
    let log = host.stop();
    assert!(log.contains("all running handlers finished"), "{log}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let left = rt.block_on(queue_messages(&config, "iniesta-test-receiver"));
    assert!(left.is_empty(), "every acked message is deleted: {left:?}");
}

#[test]
fn flaky_retries_then_acks() {
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl").display().to_string();
    let bindings = format!(
        "[[bindings]]\nevents = [\"Flaky.*\"]\nplugin = \"flaky\"\nconfig = {{ fail_times = 2, retry_after = 0 }}\n{}",
        ledger_binding("after", r#"["Flaky.*"]"#, &ledger)
    );
    let config = s.config("", &bindings);
    let host = Host::start(&config, s.path("host.log"));
    publish(&config, &["Flaky.Thing", "{}"]);
    // The ledger binding acks the first delivery and gets a completion record, so the two
    // redeliveries run only flaky; the message is deleted once flaky acks too.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    s.wait_for("the message to be deleted", LIMIT, || {
        host.log_text().matches("handler asked to retry").count() >= 2
            && rt
                .block_on(queue_messages(&config, "iniesta-test-receiver"))
                .is_empty()
    });
    let counts: Vec<u64> = s
        .ledger("ledger.jsonl")
        .iter()
        .filter_map(|l| l["receive_count"].as_u64())
        .collect();
    assert_eq!(
        counts,
        vec![1],
        "the binding that acked is not run again on the redeliveries"
    );
    let log = host.stop();
    assert_eq!(log.matches("handler asked to retry").count(), 2, "{log}");
    assert_eq!(log.matches("are not run again").count(), 2, "{log}");
}

#[test]
fn panicking_handler_is_retried_and_the_host_lives() {
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl").display().to_string();
    let bindings = format!(
        "[[bindings]]\nevents = [\"Boom.*\"]\nplugin = \"panicky\"\nhandler = \"panicky\"\n{}",
        ledger_binding("orders", r#"["Order.*"]"#, &ledger)
    );
    let config = s.config("max_receive_count = 3", &bindings);
    let mut host = Host::start(&config, s.path("host.log"));
    publish(&config, &["Boom.Now", "please panic"]);
    s.wait_for("a second delivery of the panicking message", LIMIT, || {
        host.log_text().matches("handler panicked").count() >= 2
    });
    assert!(host.is_alive(), "the host survives a panicking handler");
    publish(&config, &["Order.After", "{}"]);
    s.wait_for("the next message to be handled", LIMIT, || {
        s.ledger("ledger.jsonl").len() == 1
    });
    let log = host.stop();
    assert!(
        log.contains("panicky was asked to panic"),
        "the panic text is logged:\n{log}"
    );
}

#[test]
fn unbound_event_without_default_is_left_not_deleted() {
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl").display().to_string();
    let config = s.config("", &ledger_binding("orders", r#"["Order.*"]"#, &ledger));
    let host = Host::start(&config, s.path("host.log"));
    publish(&config, &["Orphan.Event", "{}"]);
    s.wait_for("the warning", LIMIT, || {
        host.log_text().contains("no binding takes this event")
    });
    let log = host.stop();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let left = rt.block_on(queue_messages(&config, "iniesta-test-receiver"));
    assert_eq!(left.len(), 1, "the orphan stays on the queue: {log}");
    assert!(s.ledger("ledger.jsonl").is_empty());
}

#[test]
fn handler_timeout_leaves_the_message_for_redelivery() {
    let s = Scratch::new();
    let bindings = "[[bindings]]\nevents = [\"Slow.*\"]\nplugin = \"panicky\"\nhandler = \"sleepy\"\ntimeout_secs = 1\nconfig = { sleep_ms = 2500 }\n";
    let config = s.config("visibility_timeout = 30", bindings);
    let host = Host::start(&config, s.path("host.log"));
    publish(&config, &["Slow.Job", "{}"]);
    s.wait_for("the timeout", LIMIT, || {
        host.log_text().contains("handler timed out")
    });
    let log = host.stop();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let left = rt.block_on(queue_messages(&config, "iniesta-test-receiver"));
    assert_eq!(left.len(), 1, "a timed-out message is never deleted: {log}");
}

#[test]
fn publish_from_a_file_and_straight_to_the_queue() {
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl").display().to_string();
    let config = s.config("", &ledger_binding("all", r#"["*"]"#, &ledger));
    let events = s.write(
        "events.jsonl",
        "{\"event\":\"Order.One\",\"body\":{\"n\":1}}\n\n{\"event\":\"Order.Two\",\"body\":\"two\",\"attributes\":{\"tenant\":\"acme\"}}\n",
    );
    let host = Host::start(&config, s.path("host.log"));
    let out = common::iniesta(
        &config,
        &["publish", "--file", &events.display().to_string()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    // --queue bypasses the topic and its filter policy.
    publish(
        &config,
        &["Unfiltered.Direct", "{}", "--queue", "-a", "n:Number=5"],
    );
    s.wait_for("3 ledger lines", LIMIT, || {
        s.ledger("ledger.jsonl").len() >= 3
    });
    host.stop();
    let lines = s.ledger("ledger.jsonl");
    let two = lines
        .iter()
        .find(|l| l["event"] == "Order.Two.receiver")
        .expect("Order.Two");
    assert_eq!(two["attributes"]["tenant"], "acme");
    assert_eq!(two["body"], "two");
    let direct = lines
        .iter()
        .find(|l| l["event"] == "Unfiltered.Direct.receiver")
        .expect("direct");
    assert_eq!(direct["attributes"]["n"], "5");
    // A bad line anywhere refuses the whole file before anything is published.
    let bad = s.write("bad.jsonl", "{\"event\":\"Order.Ok\"}\n{\"body\":1}\n");
    let out = common::iniesta(&config, &["publish", "--file", &bad.display().to_string()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains("event"), "{err}");
    // So does an event that would fail to encode (here: a Number attribute that is not one).
    let bad = s.write(
        "bad2.jsonl",
        "{\"event\":\"Order.Fine\"}\n{\"event\":\"Order.Bad\",\"attributes\":{\"n\":{\"type\":\"Number\",\"value\":\"abc\"}}}\n",
    );
    let out = common::iniesta(&config, &["publish", "--file", &bad.display().to_string()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("event 2") && err.contains("nothing was published"),
        "{err}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "no id printed"
    );
}

#[test]
fn publish_refuses_oversize_and_bad_attributes() {
    let s = Scratch::new();
    let config = s.config("", "[[bindings]]\ndefault = true\nplugin = \"echo\"\n");
    let big = "x".repeat(256 * 1024 + 1);
    let mut child = std::process::Command::new(common::bin())
        .args([
            "-c",
            &config.display().to_string(),
            "publish",
            "Order.Big",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(big.as_bytes()).expect("write body");
    }
    let out = child.wait_with_output().expect("publish ends");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 262144"));
    let out = common::iniesta(&config, &["publish", "Order.X", "{}", "-a", "n:Number=abc"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a number"));
}

#[test]
fn a_handler_publishes_through_its_context() {
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl").display().to_string();
    let bindings = format!(
        "[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"echo\"\nconfig = {{ publish = \"hello.relayed\" }}\n{}",
        ledger_binding("relay", r#"["hello.*"]"#, &ledger)
    );
    let config = s.config("", &bindings);
    let host = Host::start(&config, s.path("host.log"));
    publish(&config, &["Order.Placed", r#"{"id":9}"#]);
    s.wait_for("the relayed event", LIMIT, || {
        s.ledger("ledger.jsonl").len() == 1
    });
    host.stop();
    let line = &s.ledger("ledger.jsonl")[0];
    assert_eq!(line["event"], "hello.relayed.receiver");
    assert_eq!(line["body"], r#"{"id":9}"#);
}

/// Issue 24: a handler publishing an event its own binding consumes (echo bound to `Order.*`
/// publishing `Order.Echoed`) feeds itself. The host cannot know that before it happens (a
/// plugin declares its handlers, not what they publish): it warns when it sees it — once, not
/// per message —, and `config check` and `plugins` name the binding from the state file.
#[test]
fn a_handler_publishing_into_its_own_binding_is_warned_about() {
    let s = Scratch::new();
    let config = s.config(
        "",
        "[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"echo\"\nconfig = { publish = \"Order.Echoed\", quiet = true }\n",
    );
    let started = std::time::Instant::now();
    let host = Host::start(&config, s.path("host.log"));
    publish(&config, &["Order.Placed", "{}"]);
    let warning = "a handler published an event its own binding consumes";
    s.wait_for("the loop warning", LIMIT, || {
        host.log_text().contains(warning)
    });
    let state = s.path(&format!(".iniesta/hosts/host-{}.json", host.child.id()));
    s.wait_for("several self-publishes in the state file", LIMIT, || {
        std::fs::read_to_string(&state)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["self_publishes"][0]["count"].as_u64())
            .is_some_and(|n| n >= 3)
    });
    let out = common::iniesta(&config, &["config", "check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "a warning, not an error: {text}");
    assert!(
        text.contains("warning: bindings[0] (echo/echo) published `Order.Echoed.receiver`, which it consumes itself"),
        "{text}"
    );
    let out = common::iniesta(&config, &["plugins"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("WARNING bindings[0] (echo/echo) published `Order.Echoed.receiver`"),
        "{text}"
    );

    // The binding is fixed (it publishes what it does not consume): the loop ends, and once a
    // reload has happened after the last self-publish, nothing reports it any more. (A call in
    // flight at the first reload may still publish into the old loop: the second reload, with
    // the queue empty, is after the last one.)
    let good = std::fs::read_to_string(&config).expect("config");
    let fixed =
        |to: &str| good.replace("publish = \"Order.Echoed\"", &format!("publish = \"{to}\""));
    let reloads = |host: &Host| host.log_text().matches("config reloaded").count();
    std::fs::write(&config, fixed("Reply.Echoed")).expect("write config");
    s.wait_for("the fixed binding", LIMIT, || reloads(&host) >= 1);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    s.wait_for("the loop to end (an empty queue)", LIMIT, || {
        rt.block_on(common::queue_messages(&config, "iniesta-test-receiver"))
            .is_empty()
    });
    std::fs::write(&config, fixed("Reply.Again")).expect("write config");
    s.wait_for("the second reload", LIMIT, || reloads(&host) >= 2);
    s.wait_for("the state file without the loop", LIMIT, || {
        std::fs::read_to_string(&state)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v["self_publishes"].as_array().is_none_or(|a| a.is_empty()))
    });
    let out = common::iniesta(&config, &["plugins"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("WARNING"), "{text}");
    let out = common::iniesta(&config, &["config", "check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("warning:"), "{text}");

    let log = host.stop();
    assert!(
        !state.exists(),
        "a host that stopped cleanly removes its state file"
    );
    assert!(
        !log.contains("alert_cleared"),
        "no plugin was refused, so no load clears an alert: {log}"
    );
    let minutes = started.elapsed().as_secs() / 60;
    let warnings = log.matches(warning).count() as u64;
    assert!(
        warnings >= 1 && warnings <= 1 + minutes,
        "warned once a minute at most, not per message ({warnings} in {minutes} min): {log}"
    );
}

#[test]
fn a_slow_handler_does_not_hold_up_the_next_message() {
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl").display().to_string();
    let bindings = format!(
        "[[bindings]]\nevents = [\"Slow.*\"]\nplugin = \"panicky\"\nhandler = \"sleepy\"\ntimeout_secs = 60\nconfig = {{ sleep_ms = 8000 }}\n{}",
        ledger_binding("fast", r#"["Order.*"]"#, &ledger)
    );
    let config = s.config("visibility_timeout = 60\nmax_messages = 1", &bindings);
    let host = Host::start(&config, s.path("host.log"));
    publish(&config, &["Slow.Job", "{}"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // Wait until the slow message is in flight (received, invisible) before sending the next.
    s.wait_for("the slow message to be taken", LIMIT, || {
        rt.block_on(queue_messages(&config, "iniesta-test-receiver"))
            .iter()
            .any(|m| !m.visible)
    });
    publish(&config, &["Order.Fast", "{}"]);
    s.wait_for("the fast message to be handled and deleted", LIMIT, || {
        s.ledger("ledger.jsonl").len() == 1
            && rt
                .block_on(queue_messages(&config, "iniesta-test-receiver"))
                .len()
                == 1
    });
    let left = rt.block_on(queue_messages(&config, "iniesta-test-receiver"));
    assert_eq!(
        left[0].attributes["iniesta_pass"].value, "Slow.Job.receiver",
        "the slow message is still being handled while the fast one is done"
    );
    host.stop();
}

#[test]
fn the_python_iniesta_example_runs_as_shipped() {
    let s = Scratch::new();
    let root = common::workspace_root();
    let adapt = |name: &str| {
        let text = std::fs::read_to_string(root.join("examples").join(name)).expect("example");
        let text = text
            .replace(
                "\"../target/release\"",
                &format!("\"{}\"", common::plugin_dir().display()),
            )
            .replace(
                "../.iniesta/python-iniesta.db",
                &s.path("broker.db").display().to_string(),
            )
            .replace("[sqs]\n", "[sqs]\nwait_time_seconds = 1\n");
        s.write(name, &text)
    };
    let receiver = adapt("python-iniesta.toml");
    let producer = adapt("producer-python.toml");
    let host = Host::start(&receiver, s.path("host.log"));
    publish(&producer, &["EventHappened", r#"{"id": 1}"#]);
    publish(&receiver, &["Order.Created", r#"{"id": 2}"#]);
    s.wait_for("all three handlers", LIMIT, || {
        let log = host.log_text();
        log.contains("event happened:")
            && log.contains("shipped order 2")
            && log.contains("no specific handler for `Order.Shipped.receiver`")
    });
    host.stop();
}

#[test]
fn the_content_routed_seed_examples_run_as_shipped() {
    let s = Scratch::new();
    let root = common::workspace_root();
    let text = std::fs::read_to_string(root.join("examples/seeds.toml"))
        .expect("example")
        .replace(
            "\"../target/release\"",
            &format!("\"{}\"", common::plugin_dir().display()),
        )
        .replace(
            "../.iniesta/seeds.db",
            &s.path("broker.db").display().to_string(),
        )
        .replace(
            "schemas/simple.json",
            &root
                .join("examples/schemas/simple.json")
                .display()
                .to_string(),
        )
        .replace("[sqs]\n", "[sqs]\nwait_time_seconds = 1\n");
    let config = s.write("seeds.toml", &text);
    let host = Host::start(&config, s.path("host.log"));
    let cart =
        std::fs::read_to_string(root.join("examples/events/cart-item-added.json")).expect("event");
    publish(&config, &["ShoppingCart.ItemAdded", &cart]);
    let media = "media_type=application/vnd.globality.pubsub.simple";
    publish(
        &config,
        &[
            "Simple.Sent",
            r#"{"message": "hi", "timestamp": 1.5}"#,
            "-a",
            media,
        ],
    );
    publish(&config, &["Simple.Sent", r#"{"message": 5}"#, "-a", media]);
    s.wait_for(
        "the cart and simple handlers and the schema rejection",
        LIMIT,
        || {
            let log = host.log_text();
            log.contains(
                "5 x item 61fcc874-624e-40f8-8fd7-0e663c7837e8 added, value 277.42 -> 377.37",
            ) && log.contains(r#"did something with "hi" sent at 1.5"#)
                && log.contains("moved to the dead-letter queue")
        },
    );
    host.stop();
}

#[test]
fn inline_bindings_handle_and_publish_on_the_async_worker_and_overruns_are_reported() {
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl").display().to_string();
    // An inline echo that publishes through its context (from an async worker thread), and an
    // inline sleepy handler that overruns its 1 s timeout: it cannot be abandoned, so it is
    // reported, and its outcome (ack) still settles the message. `Slow.Pair` also goes to a
    // blocking-pool handler (300 ms, 1 s timeout): it starts before the inline call holds the
    // thread, so it finishes in time.
    let bindings = format!(
        "[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"echo\"\ninline = true\nconfig = {{ publish = \"hello.relayed\" }}\n\
         [[bindings]]\nevents = [\"Slow.*\"]\nplugin = \"panicky\"\nhandler = \"sleepy\"\ninline = true\ntimeout_secs = 1\nconfig = {{ sleep_ms = 1500 }}\n\
         [[bindings]]\nevents = [\"Slow.Pair.*\"]\nplugin = \"panicky\"\nhandler = \"sleepy\"\ntimeout_secs = 1\nconfig = {{ sleep_ms = 300 }}\n{}",
        ledger_binding("relay", r#"["hello.*"]"#, &ledger)
    );
    let config = s.config("", &bindings);
    let host = Host::start(&config, s.path("host.log"));
    for n in 0..20 {
        publish(&config, &["Order.Placed", &format!(r#"{{"id":{n}}}"#)]);
    }
    publish(&config, &["Slow.Pair", "{}"]);
    s.wait_for("20 relayed events", LIMIT, || {
        s.ledger("ledger.jsonl").len() == 20
    });
    s.wait_for("the overrun report", LIMIT, || {
        host.log_text()
            .contains("an inline handler ran past its timeout")
    });
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    s.wait_for("every message deleted", LIMIT, || {
        rt.block_on(queue_messages(&config, "iniesta-test-receiver"))
            .is_empty()
    });
    let log = host.stop();
    assert!(!log.contains("handler timed out"), "{log}");
    let mut ids: Vec<i64> = s
        .ledger("ledger.jsonl")
        .iter()
        .map(|l| {
            assert_eq!(l["event"], "hello.relayed.receiver");
            common::body_of(l)["id"].as_i64().expect("id")
        })
        .collect();
    ids.sort();
    assert_eq!(ids, (0..20).collect::<Vec<_>>());

    // An isolated plugin cannot be bound inline.
    let bad = s.config(
        "",
        "[plugins.isolate]\nnames = [\"echo\"]\n[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"echo\"\ninline = true\n",
    );
    let out = common::iniesta(&bad, &["config", "check"]);
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("bindings[0].inline") && text.contains("is isolated"),
        "{text}"
    );
}

/// `name` (no labels) in a Prometheus text; `None` when it is not exported.
fn plain_metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// Every in-flight slot holds an acked message whose delete keeps failing (here: another
/// process holds the broker file's write lock): the host receives nothing, and says why —
/// one warning with the count, `iniesta_delete_stalls_total` 1 and `iniesta_delete_stalled` 1
/// — and clears it when deletes succeed again.
#[test]
fn a_host_stalled_on_failing_deletes_says_so_and_recovers() {
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl").display().to_string();
    let bindings = format!(
        "{}[[bindings]]\nevents = [\"Slow.*\"]\nplugin = \"panicky\"\nhandler = \"sleepy\"\nconfig = {{ sleep_ms = 3000 }}\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n",
        ledger_binding("seen", r#"["Slow.*"]"#, &ledger),
    );
    let config = s.config("max_in_flight = 2\nvisibility_timeout = 120", &bindings);
    let host = Host::start(&config, s.path("host.log"));
    let port = host.port();
    publish(&config, &["Slow.One", "{}"]);
    publish(&config, &["Slow.Two", "{}"]);
    // Both are running (the ledger binding has seen them; the sleepy one still sleeps): take
    // the file's write lock before they ack, so their deletes fail.
    s.wait_for("both messages running", LIMIT, || {
        s.ledger("ledger.jsonl").len() >= 2
    });
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let db = iniesta::broker::local::Db::open(&s.path("broker.db")).expect("opens");
    rt.block_on(db.call(|c| c.execute_batch("BEGIN IMMEDIATE")))
        .expect("write lock taken");
    let metrics = || {
        common::http_get(port, "/metrics")
            .expect("/metrics answers")
            .1
    };
    s.wait_for("the stall reported", LIMIT, || {
        plain_metric(&metrics(), "iniesta_delete_stalls_total") == Some(1.0)
    });
    assert_eq!(
        plain_metric(&metrics(), "iniesta_delete_stalled"),
        Some(1.0)
    );
    rt.block_on(db.call(|c| c.execute_batch("COMMIT")))
        .expect("write lock released");
    s.wait_for("the stall cleared", LIMIT, || {
        plain_metric(&metrics(), "iniesta_delete_stalled") == Some(0.0)
    });
    let text = metrics();
    assert_eq!(
        plain_metric(&text, "iniesta_delete_stalls_total"),
        Some(1.0),
        "{text}"
    );
    s.wait_for("the queue empty", LIMIT, || {
        rt.block_on(queue_messages(&config, "iniesta-test-receiver"))
            .is_empty()
    });
    let log = host.stop();
    let stalls: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("receiving has stopped"))
        .collect();
    assert_eq!(stalls.len(), 1, "{log}");
    assert!(stalls[0].contains("slots=2"), "{}", stalls[0]);
}

/// An `inline = true` handler that never returns in time blocks its task: the drain gives up on
/// it at `sqs.shutdown_timeout_secs`, and the host must still exit (its message is not deleted
/// and comes back after the visibility timeout) rather than wait for the handler to return.
#[test]
fn a_stuck_inline_handler_does_not_hold_the_exit() {
    let s = Scratch::new();
    let started = s.path("started.txt");
    // The handler sleeps 10 minutes: `Host::stop` fails if the exit waits for it (30 s limit).
    let bindings = format!(
        "[[bindings]]\nevents = [\"Slow.*\"]\nplugin = \"panicky\"\nhandler = \"sleepy\"\n\
         inline = true\ntimeout_secs = 1\nconfig = {{ sleep_ms = 600000, started = \"{}\" }}\n",
        started.display()
    );
    let config = s.config(
        "visibility_timeout = 30\nshutdown_timeout_secs = 1",
        &bindings,
    );
    let host = Host::start(&config, s.path("host.log"));
    publish(&config, &["Slow.Stuck", "{}"]);
    s.wait_for("the inline handler to start", LIMIT, || started.exists());
    let log = host.stop();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let left = rt.block_on(queue_messages(&config, "iniesta-test-receiver"));
    assert_eq!(
        left.len(),
        1,
        "the stuck message is left for redelivery: {log}"
    );
}

/// `iniesta_queue_messages{queue, state}`: with one slot and a handler that sleeps, three
/// published messages read as one in flight and two visible; the dead-letter queue is
/// watched too.
#[test]
fn queue_depths_are_read_into_gauges() {
    let s = Scratch::new();
    let bindings = "[[bindings]]\nevents = [\"Slow.*\"]\nplugin = \"panicky\"\nhandler = \"sleepy\"\nconfig = { sleep_ms = 4000 }\n\
                    [metrics]\nlisten = \"127.0.0.1:0\"\nqueue_depth_interval_secs = 1\n";
    let config = s.config(
        "max_in_flight = 1\nvisibility_timeout = 60\nshutdown_timeout_secs = 1",
        bindings,
    );
    let host = Host::start(&config, s.path("host.log"));
    let port = host.port();
    for n in 0..3 {
        publish(&config, &["Slow.One", &format!("{{\"n\":{n}}}")]);
    }
    let depth = |text: &str, queue: &str, state: &str| -> Option<f64> {
        text.lines()
            .filter(|l| l.starts_with("iniesta_queue_messages{"))
            .filter(|l| l.contains(&format!("queue=\"{queue}\"")))
            .find(|l| l.contains(&format!("state=\"{state}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.trim().parse().ok())
    };
    s.wait_for("one in flight and two waiting", LIMIT, || {
        let text = common::http_get(port, "/metrics")
            .map(|r| r.1)
            .unwrap_or_default();
        depth(&text, "iniesta-test-receiver", "in_flight") == Some(1.0)
            && depth(&text, "iniesta-test-receiver", "visible") == Some(2.0)
    });
    let text = common::http_get(port, "/metrics")
        .expect("/metrics answers")
        .1;
    assert_eq!(
        depth(&text, "iniesta-test-receiver", "delayed"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        depth(&text, "iniesta-test-receiver-dlq", "visible"),
        Some(0.0),
        "the dead-letter queue is watched too: {text}"
    );
    host.stop();
}
