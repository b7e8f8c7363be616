//! Sharing resources with the Python services (issue 18): a Python iniesta, microcosm-pubsub
//! and pop-evbus's `acct` on the same topic, queues, Redis and credential files as iniesta-rs.
//!
//! These tests are self-contained: the Python side is represented by what its code checks
//! (quoted next to each test, from the released packages' source) or by fixtures the real
//! packages produced (host/tests/fixtures/acct/README.md). The live Python cells run in the
//! conformance suite.

mod common;

use std::path::PathBuf;

use aws_sdk_sqs::types::QueueAttributeName;
use common::aws::{iniesta, ok, sqs, Moto};
use common::Scratch;
use serde_json::Value;

const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:global";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// An EVENT_POLLING consumer on moto.
fn moto_consumer(s: &Scratch, endpoint: &str, filters: &str) -> PathBuf {
    s.write(
        "iniesta.toml",
        &format!(
            "service = \"receiver\"\nenv = \"test\"\ninitialization = [\"EVENT_POLLING\", \"SNS_PRODUCER\"]\n\
             [broker]\nkind = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n\
             [sns]\ntopic_arn = \"{TOPIC}\"\n[sqs]\nwait_time_seconds = 1\nfilters = {filters}\n\
             [plugins]\ndirs = [\"{}\"]\n[[bindings]]\ndefault = true\nplugin = \"echo\"\n",
            common::plugin_dir().display()
        ),
    )
}

async fn queue_policy(endpoint: &str, queue: &str) -> String {
    let client = sqs(endpoint);
    let url = client
        .get_queue_url()
        .queue_name(queue)
        .send()
        .await
        .expect("queue exists")
        .queue_url()
        .unwrap_or_default()
        .to_string();
    client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::Policy)
        .send()
        .await
        .expect("attributes")
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::Policy).cloned())
        .unwrap_or_default()
}

async fn set_queue_policy(endpoint: &str, queue: &str, policy: &str) {
    let client = sqs(endpoint);
    let url = client
        .get_queue_url()
        .queue_name(queue)
        .send()
        .await
        .expect("queue exists")
        .queue_url()
        .unwrap_or_default()
        .to_string();
    client
        .set_queue_attributes()
        .queue_url(url)
        .attributes(QueueAttributeName::Policy, policy)
        .send()
        .await
        .expect("set policy");
}

/// The Python iniesta's EVENT_POLLING start-up check (insanic-iniesta 0.4.0,
/// `iniesta/sqs/client.py`, `SQSClient.confirm_permission`), line for line:
///
/// ```python
/// policies = json.loads(policy_attributes["Attributes"]["Policy"])
/// statement = policies["Statement"][0]
/// assert statement["Effect"] == "Allow"
/// assert "SQS:SendMessage" in statement["Action"]
/// ```
///
/// `in` is a substring test on a string `Action` and a membership test on a list.
fn python_iniesta_confirm_permission(policy: &str) -> Result<(), String> {
    let policy: Value = serde_json::from_str(policy).map_err(|e| format!("not JSON: {e}"))?;
    let statement = policy
        .get("Statement")
        .and_then(|s| s.get(0))
        .ok_or("KeyError: no Statement[0]")?;
    if statement.get("Effect") != Some(&Value::from("Allow")) {
        return Err(format!("Effect is {:?}", statement.get("Effect")));
    }
    let action = statement.get("Action");
    let found = match action {
        Some(Value::String(text)) => text.contains("SQS:SendMessage"),
        Some(Value::Array(items)) => items.iter().any(|a| a == "SQS:SendMessage"),
        _ => false,
    };
    if found {
        Ok(())
    } else {
        Err(format!("`SQS:SendMessage` not in Action {action:?}"))
    }
}

/// Item 1: a Python iniesta service starts on the queue `iniesta setup` made (its policy
/// spells the action the way the Python check looks for it), and `check` accepts either
/// spelling (policies written by older iniesta-rs say `sqs:SendMessage`).
#[test]
fn setup_writes_the_queue_policy_the_python_iniesta_start_up_check_accepts() {
    let moto = Moto::start();
    let s = Scratch::new();
    let config = moto_consumer(&s, &moto.url(), "[\"Order.*\"]");
    ok(&config, &["setup"]);
    let rt = rt();
    let queue = "iniesta-test-receiver";
    let policy = rt.block_on(queue_policy(&moto.url(), queue));
    if let Err(e) = python_iniesta_confirm_permission(&policy) {
        panic!("the Python iniesta would refuse to start: {e}\npolicy: {policy}");
    }
    // Either spelling passes `check`, and only the topic's own statement counts.
    let arn = format!("arn:aws:sqs:us-east-1:123456789012:{queue}");
    for action in [
        "\"sqs:SendMessage\"",
        "\"SQS:SendMessage\"",
        "[\"SQS:SendMessage\"]",
    ] {
        let policy = format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"Service":"sns.amazonaws.com"}},"Action":{action},"Resource":"{arn}","Condition":{{"ArnEquals":{{"aws:SourceArn":"{TOPIC}"}}}}}}]}}"#
        );
        rt.block_on(set_queue_policy(&moto.url(), queue, &policy));
        let report = ok(&config, &["check"]);
        assert!(
            report.contains(&format!("ok      queue policy of {queue}")),
            "{action}: {report}"
        );
    }
    // A statement for another topic does not count.
    let other = format!(
        r#"{{"Statement":[{{"Effect":"Allow","Action":"SQS:SendMessage","Resource":"{arn}","Condition":{{"ArnEquals":{{"aws:SourceArn":"{TOPIC}-other"}}}}}}]}}"#
    );
    rt.block_on(set_queue_policy(&moto.url(), queue, &other));
    let out = iniesta(&config, &["check"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("PROBLEM queue policy"));
}
