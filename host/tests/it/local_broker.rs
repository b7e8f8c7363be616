//! The embedded broker's SNS/SQS semantics against a real SQLite file.

use crate::common;

use std::time::Duration;

use common::Scratch;
use iniesta::broker::local::{Clock, LocalBroker};
use iniesta::broker::Broker;
use iniesta::config::Config;
use iniesta::filter::Scope;
use iniesta::wire::{encode, Attribute, Attributes};
use tokio_util::sync::CancellationToken;

fn config(s: &Scratch, extra: &str) -> Config {
    let text = format!(
        "service = \"svc\"\nenv = \"t\"\ninitialization = [\"EVENT_POLLING\", \"SNS_PRODUCER\"]\n[broker]\npath = \"{}\"\n\
         [sns]\ntopic_arn = \"arn:aws:sns:us-east-1:0:global\"\n[sqs]\nfilters = [\"Order.*\"]\ndead_letter_queue = \"dlq\"\n{extra}\n",
        s.path("broker.db").display()
    );
    Config::parse(&text, s.dir.path()).expect("config parses")
}

fn message(event: &str, body: &str, extra: &[(&str, Attribute)]) -> iniesta::wire::Outgoing {
    let attrs: Attributes = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    encode(
        event,
        "svc",
        "iniesta_pass",
        body.as_bytes().to_vec(),
        attrs,
        &iniesta::wire::SizeLimit::sns(),
    )
    .expect("encodes")
}

#[tokio::test]
async fn topic_fans_out_through_each_queues_filter_policy() {
    let s = Scratch::new();
    let broker = LocalBroker::open(&config(&s, "")).await.expect("opens");
    broker
        .subscribe(
            "global",
            "big-orders",
            Some(r#"{"amount":[{"numeric":[">=",100]}]}"#),
            Scope::MessageAttributes,
        )
        .await
        .expect("subscribes");
    broker
        .subscribe(
            "global",
            "body-scope",
            Some(r#"{"kind":["gift"]}"#),
            Scope::MessageBody,
        )
        .await
        .expect("subscribes");
    broker
        .publish(&message(
            "Order.Created",
            r#"{"kind":"gift"}"#,
            &[("amount", Attribute::number(150))],
        ))
        .await
        .expect("publish");
    broker
        .publish(&message(
            "Order.Created",
            r#"{"kind":"book"}"#,
            &[("amount", Attribute::number(5))],
        ))
        .await
        .expect("publish");
    broker
        .publish(&message("Payment.Done", r#"{"kind":"gift"}"#, &[]))
        .await
        .expect("publish");
    assert_eq!(
        broker.messages("iniesta-t-svc").await.expect("q").len(),
        2,
        "Order.* only"
    );
    assert_eq!(
        broker.messages("big-orders").await.expect("q").len(),
        1,
        "amount >= 100 only"
    );
    assert_eq!(
        broker.messages("body-scope").await.expect("q").len(),
        2,
        "kind = gift in the body"
    );
}

#[tokio::test]
async fn visibility_receive_count_delay_and_redrive() {
    let s = Scratch::new();
    // The broker's time moves only when the test moves it: no waiting out the timeout.
    let clock = Clock::manual();
    let broker = LocalBroker::open(&config(&s, "visibility_timeout = 1\nmax_receive_count = 2"))
        .await
        .expect("opens")
        .with_clock(clock.clone());
    let cancel = CancellationToken::new();
    broker
        .publish(&message("Order.A", "{}", &[]))
        .await
        .expect("publish");
    let first = broker
        .receive(10, Duration::from_millis(10), &cancel)
        .await
        .expect("receive");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].receive_count, 1);
    assert!(
        broker
            .receive(10, Duration::from_millis(10), &cancel)
            .await
            .expect("receive")
            .is_empty(),
        "invisible while in flight"
    );
    // A retry makes it visible at once; the old receipt no longer settles anything.
    broker
        .change_visibility(&first[0].receipt, 0)
        .await
        .expect("visibility");
    let second = broker
        .receive(10, Duration::from_millis(10), &cancel)
        .await
        .expect("receive");
    assert_eq!(second[0].receive_count, 2);
    let failures = broker
        .delete_batch(std::slice::from_ref(&first[0].receipt))
        .await
        .expect("delete");
    assert_eq!(failures.len(), 1, "a stale receipt does not delete");
    // After max_receive_count deliveries the next receive redrives it to the DLQ, once the
    // visibility timeout (1 s) is over and not a millisecond before.
    clock.advance(Duration::from_millis(999));
    assert!(broker
        .receive(10, Duration::from_millis(10), &cancel)
        .await
        .expect("receive")
        .is_empty());
    assert!(
        broker.messages("dlq").await.expect("dlq").is_empty(),
        "still in flight at 999 ms"
    );
    clock.advance(Duration::from_millis(1));
    assert!(broker
        .receive(10, Duration::from_millis(10), &cancel)
        .await
        .expect("receive")
        .is_empty());
    let dlq = broker.messages("dlq").await.expect("dlq");
    assert_eq!(dlq.len(), 1);
    assert!(dlq[0]
        .dead_letter_reason
        .as_deref()
        .unwrap_or("")
        .contains("max_receive_count 2"));

    // Delay: a new message is invisible for delay_seconds.
    let delayed = LocalBroker::open(&config(&s, "delay_seconds = 1"))
        .await
        .expect("opens");
    delayed
        .publish(&message("Order.B", "{}", &[]))
        .await
        .expect("publish");
    assert!(delayed
        .receive(10, Duration::from_millis(10), &cancel)
        .await
        .expect("receive")
        .is_empty());
    let got = delayed
        .receive(10, Duration::from_secs(3), &cancel)
        .await
        .expect("receive");
    assert_eq!(
        got.len(),
        1,
        "visible after the delay, within the long poll"
    );
    let failures = delayed
        .delete_batch(&[got[0].receipt.clone()])
        .await
        .expect("delete");
    assert!(failures.is_empty());
    assert!(delayed
        .messages("iniesta-t-svc")
        .await
        .expect("q")
        .is_empty());
}

#[tokio::test]
async fn missing_topic_and_queue_are_named() {
    let s = Scratch::new();
    let broker = LocalBroker::open(&config(&s, "")).await.expect("opens");
    let err = broker
        .publish_to("nope", &message("Order.A", "{}", &[]))
        .await
        .expect_err("no topic");
    assert!(
        err.to_string().contains("topic `nope` does not exist"),
        "{err}"
    );
    let err = broker
        .send_to_queue(Some("ghost"), &message("Order.A", "{}", &[]))
        .await
        .expect_err("no queue");
    assert!(
        err.to_string().contains("queue `ghost` does not exist"),
        "{err}"
    );
}

#[test]
fn concurrent_publishers_in_several_processes_lose_nothing() {
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl").display().to_string();
    let config = s.config(
        "pollers = 2",
        &format!("[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"ledger\"\nconfig = {{ path = \"{ledger}\" }}\n"),
    );
    let host = common::Host::start(&config, s.path("host.log"));
    let mut publishers = Vec::new();
    for p in 0..3 {
        let lines: String = (0..40)
            .map(|i| format!("{{\"event\":\"Order.N\",\"body\":{{\"p\":{p},\"i\":{i}}}}}\n"))
            .collect();
        let file = s.write(&format!("events{p}.jsonl"), &lines);
        publishers.push(
            std::process::Command::new(common::bin())
                .args([
                    "-c",
                    &config.display().to_string(),
                    "publish",
                    "--file",
                    &file.display().to_string(),
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("publisher starts"),
        );
    }
    for mut p in publishers {
        assert!(p.wait().expect("publisher ends").success());
    }
    s.wait_for("120 handled messages", Duration::from_secs(90), || {
        s.ledger("ledger.jsonl").len() >= 120
    });
    host.stop();
    let mut bodies = ledger_bodies(&s);
    bodies.dedup();
    assert_eq!(bodies.len(), 120, "every published message handled");
}

/// Many processes open one fresh broker file at the same moment: 8 `iniesta publish` and
/// 2 `iniesta run`, started together, several rounds. Creating the file, its schema and its
/// migrations must be safe under that race: every process exits 0 and every message is
/// handled exactly once.
#[test]
fn many_processes_opening_a_fresh_file_at_once_all_succeed() {
    const ROUNDS: usize = 5;
    const PUBLISHERS: usize = 8;
    const HOSTS: usize = 2;
    for round in 0..ROUNDS {
        let s = Scratch::new();
        let ledger = s.path("ledger.jsonl").display().to_string();
        let config = s.config(
            "visibility_timeout = 60",
            &format!("[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"ledger\"\nconfig = {{ path = \"{ledger}\" }}\n"),
        );
        assert!(!s.path("broker.db").exists(), "a fresh file each round");
        let spawn = |args: &[String], log: std::path::PathBuf| {
            std::process::Command::new(common::bin())
                .arg("-c")
                .arg(&config)
                .args(args)
                .env("INIESTA_LOG", "info")
                .env("NO_COLOR", "1")
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(log).expect("log file"))
                .spawn()
                .expect("iniesta starts")
        };
        // Start them all before waiting for any.
        let mut hosts = Vec::new();
        let mut publishers = Vec::new();
        for p in 0..PUBLISHERS {
            if p < HOSTS {
                let log = s.path(&format!("host{p}.log"));
                hosts.push((spawn(&["run".to_string()], log.clone()), log));
            }
            let log = s.path(&format!("publish{p}.log"));
            let args = [
                "publish".to_string(),
                "Order.Created".to_string(),
                format!("{{\"round\":{round},\"p\":{p}}}"),
            ];
            publishers.push((spawn(&args, log.clone()), log));
        }
        for (mut child, log) in publishers {
            let status = child.wait().expect("publish ends");
            assert!(
                status.success(),
                "round {round}: publish exited with {status}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let done = std::time::Instant::now();
        loop {
            for (child, log) in hosts.iter_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "round {round}: a host exited early with {status}:\n{}",
                        common::strip_ansi(&std::fs::read_to_string(log).unwrap_or_default())
                    );
                }
            }
            let consuming = hosts.iter().all(|(_, log)| {
                std::fs::read_to_string(log)
                    .unwrap_or_default()
                    .contains("consuming")
            });
            if consuming && s.ledger("ledger.jsonl").len() >= PUBLISHERS {
                break;
            }
            assert!(
                done.elapsed() < Duration::from_secs(60),
                "round {round}: {} of {PUBLISHERS} messages handled, hosts consuming: {consuming}",
                s.ledger("ledger.jsonl").len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        for (child, log) in hosts {
            let host = common::Host { child, log };
            host.stop();
        }
        let mut bodies = ledger_bodies(&s);
        let handled = bodies.len();
        bodies.dedup();
        assert_eq!(
            (handled, bodies.len()),
            (PUBLISHERS, PUBLISHERS),
            "round {round}: every message handled exactly once"
        );
    }
}

/// The bodies in the scratch dir's `ledger.jsonl`, sorted (duplicates kept).
fn ledger_bodies(s: &Scratch) -> Vec<String> {
    let mut bodies: Vec<String> = s
        .ledger("ledger.jsonl")
        .iter()
        .map(|l| l["body"].as_str().unwrap_or("").to_string())
        .collect();
    bodies.sort();
    bodies
}
