//! Large payloads (`[payloads]`): 1 MiB messages and the S3 claim check, on moto's SNS, SQS
//! and S3, against the real Amazon SQS/SNS Extended Client Libraries for Python.

use crate::common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use aws_sdk_sqs::types::MessageAttributeValue;
use common::aws::{
    drain, iniesta, iniesta_with_stdin, moto_python, ok, queue_url, s3, s3_keys, sns, sqs,
    start_host, Moto,
};
use common::{rt, Scratch};
use sha2::{Digest, Sha256};

const LIMIT: Duration = Duration::from_secs(90);
const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:global";
const BUCKET: &str = "iniesta-payloads";
const QUEUE: &str = "iniesta-test-receiver";
const DLQ: &str = "iniesta-test-receiver-dlq";

/// A consumer and producer of `Big.*` with a ledger binding, `[payloads]` as given.
fn config(s: &Scratch, endpoint: &str, payloads: &str) -> PathBuf {
    s.write(
        "iniesta.toml",
        &format!(
            "service = \"receiver\"\nenv = \"test\"\ninitialization = [\"EVENT_POLLING\", \"SNS_PRODUCER\"]\n\
             [broker]\nkind = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n\
             [sns]\ntopic_arn = \"{TOPIC}\"\n\
             [sqs]\nwait_time_seconds = 1\nvisibility_timeout = 5\nfilters = [\"Big.*\"]\ndead_letter_queue = \"{DLQ}\"\n\
             [payloads]\n{payloads}\n\
             [plugins]\ndirs = [\"{}\"]\n\
             [[bindings]]\nevents = [\"Big.*\"]\nplugin = \"ledger\"\nconfig = {{ path = \"{}\" }}\n",
            common::plugin_dir().display(),
            s.path("ledger.jsonl").display(),
        ),
    )
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A JSON body of exactly `size` bytes.
fn body_of(size: usize) -> String {
    let head = "{\"filler\": \"";
    format!("{head}{}\"}}", "x".repeat(size - head.len() - 2))
}

#[test]
fn bodies_too_large_to_send_go_through_s3_and_reach_handlers_whole() {
    let moto = Moto::start();
    let s = Scratch::new();
    let config = config(
        &s,
        &moto.url(),
        &format!("s3_bucket = \"{BUCKET}\"\ndelete_after_handling = true"),
    );
    // `setup` creates the bucket; `check` reports it.
    ok(&config, &["setup"]);
    let report = ok(&config, &["check"]);
    assert!(
        report.contains(&format!("claim-check bucket {BUCKET}")),
        "{report}"
    );
    let rt = rt();
    // Over SNS's 256 KiB: through S3. Over SQS's 1 MiB on the queue: through S3. Small, and
    // 600 KiB straight to the queue (SQS takes 1 MiB): inline.
    let cases: [(&str, usize, bool); 4] = [
        ("Big.Topic", 300 * 1024, false),
        ("Big.Queue", 2 * 1024 * 1024, true),
        ("Big.Small", 1000, false),
        ("Big.Inline", 600 * 1024, true),
    ];
    for (event, size, queue) in cases {
        let mut args = vec!["publish", event, "-"];
        if queue {
            args.push("--queue");
        }
        let out = iniesta_with_stdin(&config, &args, body_of(size).as_bytes());
        assert!(
            out.status.success(),
            "{event}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stored = rt.block_on(s3_keys(&moto.url(), BUCKET));
    assert_eq!(stored.len(), 2, "two bodies were stored: {stored:?}");

    let host = start_host(&config, s.path("host.log"));
    s.wait_for("all four handled", LIMIT, || {
        s.ledger("ledger.jsonl").len() >= 4
    });
    // Each object goes once its message is deleted.
    s.wait_for("the stored bodies deleted", LIMIT, || {
        rt.block_on(s3_keys(&moto.url(), BUCKET)).is_empty()
    });
    let metrics_log = host.stop();
    for (event, size, _) in cases {
        let line = s
            .ledger("ledger.jsonl")
            .into_iter()
            .find(|l| l["event"] == format!("{event}.receiver"))
            .unwrap_or_else(|| panic!("{event} handled:\n{metrics_log}"));
        let body = line["body"].as_str().unwrap_or_default();
        assert_eq!(body, body_of(size), "{event}: the whole body");
        // The claim-check attribute is the transport's, not the handler's.
        assert!(
            line["attributes"].get("ExtendedPayloadSize").is_none(),
            "{event}: {}",
            line["attributes"]
        );
    }
}

#[test]
fn without_a_bucket_oversize_publishes_are_refused_and_say_what_to_do() {
    let moto = Moto::start();
    let s = Scratch::new();
    let config = config(&s, &moto.url(), "max_message_bytes = 4096");
    ok(&config, &["setup"]);
    let too_big = iniesta_with_stdin(
        &config,
        &["publish", "Big.A", "-"],
        body_of(5000).as_bytes(),
    );
    assert!(!too_big.status.success());
    let err = String::from_utf8_lossy(&too_big.stderr);
    assert!(
        err.contains("payloads.max_message_bytes is 4096") && err.contains("payloads.s3_bucket"),
        "{err}"
    );
    let config = config_default(&s, &moto.url());
    let over_sns = iniesta_with_stdin(
        &config,
        &["publish", "Big.A", "-"],
        body_of(300 * 1024).as_bytes(),
    );
    let err = String::from_utf8_lossy(&over_sns.stderr);
    assert!(
        !over_sns.status.success() && err.contains("SNS accepts at most 262144"),
        "{err}"
    );
    // The queue takes up to 1 MiB.
    let to_queue = iniesta_with_stdin(
        &config,
        &["publish", "Big.A", "-", "--queue"],
        body_of(1000 * 1024).as_bytes(),
    );
    assert!(
        to_queue.status.success(),
        "{}",
        String::from_utf8_lossy(&to_queue.stderr)
    );
    let over_sqs = iniesta_with_stdin(
        &config,
        &["publish", "Big.A", "-", "--queue"],
        body_of(1024 * 1024 + 1).as_bytes(),
    );
    let err = String::from_utf8_lossy(&over_sqs.stderr);
    assert!(
        !over_sqs.status.success() && err.contains("SQS accepts at most 1048576"),
        "{err}"
    );
    // A publisher cannot forge a claim check.
    let forged = iniesta(
        &config,
        &[
            "publish",
            "Big.A",
            "{}",
            "-a",
            "ExtendedPayloadSize:Number=10",
        ],
    );
    assert!(!forged.status.success());
    assert!(
        String::from_utf8_lossy(&forged.stderr).contains("reserved for S3 claim checks"),
        "{}",
        String::from_utf8_lossy(&forged.stderr)
    );
}

fn config_default(s: &Scratch, endpoint: &str) -> PathBuf {
    config(s, endpoint, "")
}

/// Send a message marked as a claim check straight to the queue.
async fn send_marked(endpoint: &str, event: &str, body: &str) {
    let attr = |t: &str, v: &str| {
        MessageAttributeValue::builder()
            .data_type(t)
            .string_value(v)
            .build()
            .expect("attribute")
    };
    let client = sqs(endpoint);
    client
        .send_message()
        .queue_url(queue_url(endpoint, QUEUE).await)
        .message_body(body)
        .message_attributes("iniesta_pass", attr("String", event))
        .message_attributes("ExtendedPayloadSize", attr("Number", "2000"))
        .send()
        .await
        .expect("send");
}

#[test]
fn claim_checks_that_cannot_be_read_are_dead_lettered_with_the_reason_and_nothing_is_touched() {
    let moto = Moto::start();
    let s = Scratch::new();
    let config = config(
        &s,
        &moto.url(),
        &format!(
            "s3_bucket = \"{BUCKET}\"\ns3_key_prefix = \"iniesta/\"\ndelete_after_handling = true"
        ),
    );
    ok(&config, &["setup"]);
    let rt = rt();
    let pointer = |bucket: &str, key: &str| {
        format!(
            "[\"software.amazon.payloadoffloading.PayloadS3Pointer\",{{\"s3BucketName\":\"{bucket}\",\"s3Key\":\"{key}\"}}]"
        )
    };
    rt.block_on(async {
        // Another bucket, with an object a message would like read (and deleted).
        let client = s3(&moto.url());
        client
            .create_bucket()
            .bucket("secrets")
            .send()
            .await
            .expect("bucket");
        client
            .put_object()
            .bucket("secrets")
            .key("key")
            .body(b"secret".to_vec().into())
            .send()
            .await
            .expect("object");
        send_marked(
            &moto.url(),
            "Big.Untrusted.receiver",
            &pointer("secrets", "key"),
        )
        .await;
        send_marked(
            &moto.url(),
            "Big.Missing.receiver",
            &pointer(BUCKET, "iniesta/gone"),
        )
        .await;
        // A key of the own bucket outside the prefix: refused unread (and never deleted).
        client
            .put_object()
            .bucket(BUCKET)
            .key("other/key")
            .body(b"not ours".to_vec().into())
            .send()
            .await
            .expect("object");
        send_marked(
            &moto.url(),
            "Big.Outside.receiver",
            &pointer(BUCKET, "other/key"),
        )
        .await;
        send_marked(&moto.url(), "Big.Malformed.receiver", "not a pointer").await;
    });
    let host = start_host(&config, s.path("host.log"));
    s.wait_for("four dead letters", LIMIT, || {
        host.log_text()
            .matches("refused before any handler: moved to the dead-letter queue")
            .count()
            >= 4
    });
    host.stop();
    assert!(s.ledger("ledger.jsonl").is_empty(), "no handler ran");
    let letters = rt.block_on(drain(&moto.url(), DLQ));
    assert_eq!(letters.len(), 4, "{letters:?}");
    let reason_of = |event: &str| {
        let (body, attributes) = letters
            .iter()
            .find(|(_, a)| a.get("iniesta_pass").and_then(|v| v.string_value()) == Some(event))
            .unwrap_or_else(|| panic!("{event} dead-lettered: {letters:?}"));
        let reason = attributes
            .get("iniesta_dead_letter_reason")
            .and_then(|v| v.string_value())
            .unwrap_or_default()
            .to_string();
        (body.clone(), reason)
    };
    let (body, reason) = reason_of("Big.Untrusted.receiver");
    assert_eq!(body, pointer("secrets", "key"), "kept as received");
    assert!(
        reason.contains("a bucket this host does not read"),
        "{reason}"
    );
    let (_, reason) = reason_of("Big.Missing.receiver");
    assert!(reason.contains("body is gone"), "{reason}");
    let (_, reason) = reason_of("Big.Malformed.receiver");
    assert!(reason.contains("not an S3 pointer"), "{reason}");
    let (_, reason) = reason_of("Big.Outside.receiver");
    assert!(
        reason.contains("outside payloads.s3_key_prefix"),
        "{reason}"
    );
    assert_eq!(rt.block_on(s3_keys(&moto.url(), BUCKET)), ["other/key"]);
    // The untrusted bucket's object was neither read into a handler nor deleted.
    assert_eq!(rt.block_on(s3_keys(&moto.url(), "secrets")), ["key"]);
}

#[test]
fn the_python_extended_clients_read_what_we_publish_and_we_read_what_they_publish() {
    let moto = Moto::start();
    let s = Scratch::new();
    let config = config(&s, &moto.url(), &format!("s3_bucket = \"{BUCKET}\""));
    ok(&config, &["setup"]);
    let rt = rt();
    // A Python reader on a raw subscription of its own.
    let reader_url = rt.block_on(async {
        let url = sqs(&moto.url())
            .create_queue()
            .queue_name("python-reader")
            .send()
            .await
            .expect("queue")
            .queue_url()
            .unwrap_or_default()
            .to_string();
        sns(&moto.url())
            .subscribe()
            .topic_arn(TOPIC)
            .protocol("sqs")
            .endpoint("arn:aws:sqs:us-east-1:123456789012:python-reader")
            .attributes("RawMessageDelivery", "true")
            .send()
            .await
            .expect("subscribe");
        url
    });
    let python = |args: &[&str]| {
        let out = common::aws::aws_env(&mut Command::new(moto_python()))
            .arg(common::workspace_root().join("host/tests/conformance/extended_peer.py"))
            .args(args)
            .output()
            .expect("python runs");
        assert!(
            out.status.success(),
            "extended_peer.py {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };

    // 1. Ours → theirs: a 400 KiB event through the topic, read by sqs_extended_client.
    let ours = body_of(400 * 1024);
    let out = iniesta_with_stdin(&config, &["publish", "Big.Ours", "-"], ours.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = python(&["receive", &moto.url(), BUCKET, &reader_url, "1"]);
    let line: serde_json::Value =
        serde_json::from_str(read.lines().next().unwrap_or_default()).expect("JSON line");
    assert_eq!(line["sha256"], sha256(ours.as_bytes()), "{line}");
    assert_eq!(line["size"], ours.len());
    assert_eq!(line["attributes"]["iniesta_pass"], "Big.Ours.receiver");

    // 2. Theirs → ours: sns_extended_client publishes 500 KiB; our handler gets it whole.
    let published = python(&[
        "publish",
        &moto.url(),
        BUCKET,
        TOPIC,
        "Big.Theirs.python",
        &(500 * 1024).to_string(),
    ]);
    let theirs: serde_json::Value = serde_json::from_str(published.trim()).expect("JSON");
    let host = start_host(&config, s.path("host.log"));
    s.wait_for("their message handled", LIMIT, || {
        s.ledger("ledger.jsonl")
            .iter()
            .any(|l| l["event"] == "Big.Theirs.python")
    });
    host.stop();
    let line = s
        .ledger("ledger.jsonl")
        .into_iter()
        .find(|l| l["event"] == "Big.Theirs.python")
        .expect("handled");
    let body = line["body"].as_str().unwrap_or_default();
    assert_eq!(body.len(), 500 * 1024);
    assert_eq!(
        sha256(body.as_bytes()),
        theirs["sha256"].as_str().unwrap_or_default()
    );
    // Not configured to delete: the object stays for the other subscribers.
    assert_eq!(rt.block_on(s3_keys(&moto.url(), BUCKET)).len(), 2);
}
