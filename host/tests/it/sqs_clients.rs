//! Both SQS clients — the lean one (`broker.sqs_client = "lean"`, the default) and the AWS
//! SDK — against a real moto server, through the broker's own calls: each test runs once per
//! client and expects the same outcome of both.

use crate::common;

use std::time::Duration;

use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeNameForSends};
use common::aws::{sqs, Moto};
use common::{rt, Scratch};
use iniesta::broker::aws::AwsBroker;
use iniesta::broker::{Broker, BrokerError};
use iniesta::config::{Config, SqsClient};
use tokio_util::sync::CancellationToken;

const CLIENTS: [SqsClient; 2] = [SqsClient::Lean, SqsClient::Sdk];

/// A broker for queue `queue` on moto, making the per-message calls with `client`.
fn broker(s: &Scratch, endpoint: &str, queue: &str, client: SqsClient) -> AwsBroker {
    broker_as(s, endpoint, queue, client, ("test", "test"))
}

/// [`broker`] signing with the access key `(id, secret)`.
fn broker_as(
    s: &Scratch,
    endpoint: &str,
    queue: &str,
    client: SqsClient,
    (key_id, secret): (&str, &str),
) -> AwsBroker {
    let client = match client {
        SqsClient::Lean => "lean",
        SqsClient::Sdk => "sdk",
    };
    let path = s.write(
        "iniesta.toml",
        &format!(
            "service = \"receiver\"\nenv = \"test\"\n[broker]\nkind = \"aws\"\nregion = \"us-east-1\"\n\
             endpoint_url = \"{endpoint}\"\nsqs_client = \"{client}\"\n[sqs]\nqueue_name = \"{queue}\"\n"
        ),
    );
    let config = Config::read(&path).expect("the config reads");
    let sdk = sdk(endpoint, key_id, secret);
    AwsBroker::with_sdk_config(&config, &sdk)
}

/// The SDK configuration of moto at `endpoint` with a static access key.
fn sdk(endpoint: &str, key_id: &str, secret: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(
                aws_credential_types::Credentials::new(key_id, secret, None, None, "test"),
            ),
        )
        .build()
}

/// Create queue `name` (FIFO when it ends in `.fifo`); its URL.
async fn create_queue(endpoint: &str, name: &str) -> String {
    let mut request = sqs(endpoint).create_queue().queue_name(name);
    if name.ends_with(".fifo") {
        request = request.attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true");
    }
    request
        .send()
        .await
        .expect("queue")
        .queue_url()
        .unwrap_or_default()
        .to_string()
}

/// Receive until `n` messages came (moto may answer a long poll with fewer).
async fn receive_n(broker: &AwsBroker, n: usize) -> Vec<iniesta::broker::Received> {
    let mut out = Vec::new();
    for _ in 0..20 {
        let got = broker
            .receive(10, Duration::from_secs(1), &CancellationToken::new())
            .await
            .expect("receive");
        out.extend(got);
        if out.len() >= n {
            break;
        }
    }
    assert_eq!(out.len(), n, "{out:?}");
    out
}

fn string(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("attribute")
}

/// A body with escapes, non-ASCII text and JSON inside JSON: what the lean client must
/// unescape exactly as the SDK does.
const BODY: &str =
    "{\"Message\":\"{\\\"a\\\": \\\"é ☃ \\\\n\\\"}\",\"tab\":\"\\t\",\"x\":1}\u{1F600}";

#[test]
fn both_clients_read_bodies_attributes_and_system_attributes_alike() {
    let moto = Moto::start();
    let endpoint = moto.url();
    rt().block_on(async {
        for client in CLIENTS {
            let s = Scratch::new();
            let name = format!("read-{client:?}").to_lowercase();
            let url = create_queue(&endpoint, &name).await;
            sqs(&endpoint)
                .send_message()
                .queue_url(&url)
                .message_body(BODY)
                .message_attributes("iniesta_pass", string("Order.Created"))
                .message_attributes("escaped", string("a \"quoted\"\nline ü"))
                .message_attributes(
                    "count",
                    MessageAttributeValue::builder()
                        .data_type("Number")
                        .string_value("42")
                        .build()
                        .expect("attribute"),
                )
                .message_attributes(
                    "blob",
                    MessageAttributeValue::builder()
                        .data_type("Binary")
                        .binary_value(aws_sdk_sqs::primitives::Blob::new(vec![0u8, 1, 2, 255]))
                        .build()
                        .expect("attribute"),
                )
                .message_system_attributes(
                    MessageSystemAttributeNameForSends::AwsTraceHeader,
                    aws_sdk_sqs::types::MessageSystemAttributeValue::builder()
                        .data_type("String")
                        .string_value("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1")
                        .build()
                        .expect("attribute"),
                )
                .send()
                .await
                .expect("sent");
            let broker = broker(&s, &endpoint, &name, client);
            let got = receive_n(&broker, 1).await;
            let m = &got[0];
            assert_eq!(String::from_utf8_lossy(&m.body), BODY, "{client:?}");
            assert!(
                !m.message_id.is_empty() && !m.receipt.is_empty(),
                "{client:?}"
            );
            assert_eq!(m.receive_count, 1, "{client:?}");
            assert!(m.sent_timestamp_ms > 1_600_000_000_000, "{client:?}: {m:?}");
            assert_eq!(
                m.group_id, None,
                "{client:?}: a standard queue has no order"
            );
            assert_eq!(
                m.aws_trace_header.as_deref(),
                Some("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1"),
                "{client:?}"
            );
            let attribute = |name: &str| {
                m.attributes
                    .get(name)
                    .map(|a| (a.data_type.as_str(), a.value.as_str()))
            };
            assert_eq!(
                attribute("iniesta_pass"),
                Some(("String", "Order.Created")),
                "{client:?}"
            );
            assert_eq!(
                attribute("escaped"),
                Some(("String", "a \"quoted\"\nline ü")),
                "{client:?}"
            );
            assert_eq!(attribute("count"), Some(("Number", "42")), "{client:?}");
            assert_eq!(
                attribute("blob"),
                Some(("Binary", "AAEC/w==")),
                "{client:?}"
            );
            assert_eq!(m.attributes.len(), 4, "{client:?}: {:?}", m.attributes);

            // Visible again at once: the second delivery counts 2.
            let failures = broker
                .change_visibility_batch(std::slice::from_ref(&m.receipt), 0)
                .await
                .expect("change visibility");
            assert!(failures.is_empty(), "{client:?}: {failures:?}");
            let again = receive_n(&broker, 1).await;
            assert_eq!(again[0].message_id, m.message_id, "{client:?}");
            assert_eq!(again[0].receive_count, 2, "{client:?}");
            let failures = broker
                .delete_batch(std::slice::from_ref(&again[0].receipt))
                .await
                .expect("delete");
            assert!(failures.is_empty(), "{client:?}: {failures:?}");
            let left = broker
                .receive(10, Duration::from_secs(1), &CancellationToken::new())
                .await
                .expect("receive");
            assert!(left.is_empty(), "{client:?}: deleted, yet {left:?}");
        }
    });
}

#[test]
fn both_clients_delete_in_batches_of_ten_and_report_each_refused_receipt() {
    let moto = Moto::start();
    let endpoint = moto.url();
    rt().block_on(async {
        for client in CLIENTS {
            let s = Scratch::new();
            let name = format!("batches-{client:?}").to_lowercase();
            let url = create_queue(&endpoint, &name).await;
            for i in 0..23 {
                sqs(&endpoint)
                    .send_message()
                    .queue_url(&url)
                    .message_body(format!("{{\"n\":{i}}}"))
                    .send()
                    .await
                    .expect("sent");
            }
            let broker = broker(&s, &endpoint, &name, client);
            let got = receive_n(&broker, 23).await;
            let mut receipts: Vec<String> = got.iter().map(|m| m.receipt.clone()).collect();
            // One receipt that names nothing, in the middle of the second batch of ten.
            receipts.insert(14, "not-a-receipt-handle".to_string());
            let failures = broker.delete_batch(&receipts).await.expect("delete");
            assert_eq!(failures.len(), 1, "{client:?}: {failures:?}");
            assert_eq!(failures[0].receipt, "not-a-receipt-handle", "{client:?}");
            assert!(failures[0].stale, "{client:?}: {failures:?}");
            assert!(!failures[0].retryable, "{client:?}: {failures:?}");
            let depth = broker.depth(None).await.expect("depth");
            assert_eq!(
                depth.visible + depth.in_flight,
                0,
                "{client:?}: every good receipt was deleted"
            );
        }
    });
}

#[test]
fn both_clients_keep_fifo_groups_and_say_when_the_queue_is_gone() {
    let moto = Moto::start();
    let endpoint = moto.url();
    rt().block_on(async {
        for client in CLIENTS {
            let s = Scratch::new();
            let name = format!("groups-{client:?}.fifo").to_lowercase();
            let url = create_queue(&endpoint, &name).await;
            sqs(&endpoint)
                .send_message()
                .queue_url(&url)
                .message_body("{}")
                .message_group_id("tenant-7")
                .message_deduplication_id("d1")
                .send()
                .await
                .expect("sent");
            let broker = broker(&s, &endpoint, &name, client);
            let got = receive_n(&broker, 1).await;
            assert_eq!(got[0].group_id.as_deref(), Some("tenant-7"), "{client:?}");

            sqs(&endpoint)
                .delete_queue()
                .queue_url(&url)
                .send()
                .await
                .expect("deleted");
            let err = broker
                .receive(10, Duration::from_secs(1), &CancellationToken::new())
                .await
                .expect_err("the queue is gone");
            assert!(
                matches!(&err, BrokerError::NoSuchQueue(q) if q == &name),
                "{client:?}: {err:?}"
            );
            assert!(!err.is_retryable(), "{client:?}");
        }
    });
}

#[test]
fn a_lean_client_with_an_unreachable_endpoint_fails_retryably_and_says_why() {
    let moto = Moto::start();
    let endpoint = moto.url();
    rt().block_on(async {
        let s = Scratch::new();
        create_queue(&endpoint, "unreachable").await;
        let broker = broker(&s, &endpoint, "unreachable", SqsClient::Lean);
        // The queue URL is read while moto answers; then moto goes away.
        broker
            .receive(1, Duration::ZERO, &CancellationToken::new())
            .await
            .expect("receive");
        drop(moto);
        let err = broker
            .receive(1, Duration::ZERO, &CancellationToken::new())
            .await
            .expect_err("nothing answers");
        assert!(
            matches!(
                err,
                BrokerError::Aws {
                    operation: "ReceiveMessage",
                    retryable: true,
                    ..
                }
            ),
            "{err:?}"
        );
        let err = broker
            .delete_batch(&["r".to_string()])
            .await
            .expect_err("nothing answers");
        assert!(err.is_retryable(), "{err:?}");
    });
}

/// An IAM user allowed everything, its access key (id, secret) made on moto with boto3, and
/// queue `queue`: the four requests a [`Moto::start_authenticating`]`(4)` serves unsigned.
fn signed_in_user(endpoint: &str, queue: &str) -> (String, String) {
    let script = format!(
        r#"
import boto3, json
kw = dict(endpoint_url="{endpoint}", region_name="us-east-1",
          aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
iam = boto3.client("iam", **kw)
iam.create_user(UserName="consumer")
iam.put_user_policy(UserName="consumer", PolicyName="all", PolicyDocument=json.dumps(
    {{"Version": "2012-10-17", "Statement": [{{"Effect": "Allow", "Action": "*", "Resource": "*"}}]}}))
key = iam.create_access_key(UserName="consumer")["AccessKey"]
boto3.client("sqs", **kw).create_queue(QueueName="{queue}")
print(key["AccessKeyId"], key["SecretAccessKey"])
"#
    );
    let out = common::stdout_of(
        std::process::Command::new(common::aws::moto_python()).args(["-c", &script]),
    );
    let text = String::from_utf8_lossy(&out).to_string();
    let mut words = text.split_whitespace();
    match (words.next(), words.next()) {
        (Some(id), Some(secret)) => (id.to_string(), secret.to_string()),
        _ => panic!("no access key in {text:?}"),
    }
}

#[test]
fn the_lean_clients_signatures_pass_moto_s_sigv4_check_and_a_wrong_secret_fails_it() {
    let moto = Moto::start_authenticating(4);
    let endpoint = moto.url();
    let (id, secret) = signed_in_user(&endpoint, "signed");
    rt().block_on(async {
        let s = Scratch::new();
        // The SDK (queue URL, send) and the lean client (receive, visibility, delete), both
        // signing with the user's key: moto recomputes each signature with botocore.
        let good = broker_as(&s, &endpoint, "signed", SqsClient::Lean, (&id, &secret));
        let message = iniesta::wire::Outgoing {
            event: "Signed.receiver".into(),
            body: b"{\"n\":1}".to_vec(),
            attributes: Default::default(),
        };
        good.send_to_queue(None, &message)
            .await
            .expect("sent, signed by the SDK");
        let got = receive_n(&good, 1).await;
        let failures = good
            .change_visibility_batch(std::slice::from_ref(&got[0].receipt), 0)
            .await
            .expect("visibility changed, signed by the lean client");
        assert!(failures.is_empty(), "{failures:?}");
        let again = receive_n(&good, 1).await;
        let failures = good
            .delete_batch(std::slice::from_ref(&again[0].receipt))
            .await
            .expect("deleted, signed by the lean client");
        assert!(failures.is_empty(), "{failures:?}");

        let wrong = iniesta::broker::sqs_http::SqsHttp::new(
            &sdk(&endpoint, &id, "not-the-secret"),
            Some(&endpoint),
            Duration::from_secs(10),
        )
        .expect("a client");
        let url = good.queue_url().await.expect("the queue URL").to_string();
        let err = wrong
            .receive(&url, 1, 0, false)
            .await
            .expect_err("a signature made with the wrong secret is refused");
        assert!(!err.is_retryable(), "{err:?}");
        assert!(err.to_string().contains("SignatureDoesNotMatch"), "{err}");
    });
}
