//! One table of SNS filter-policy cases, run against moto's SNS and against the local broker:
//! a filter must behave the same on both brokers.

use crate::common;

use std::collections::BTreeSet;

use common::aws::{sns, sqs, Moto};
use iniesta::broker::local::LocalBroker;
use iniesta::filter::Scope;
use iniesta::wire::{Attribute, Attributes, Outgoing};

/// (name, attributes) of each published message.
fn messages() -> Vec<(&'static str, Attributes)> {
    let s = |v: &str| Attribute::string(v);
    let n = |v: i64| Attribute::number(v);
    let arr = |v: &str| Attribute {
        data_type: "String.Array".into(),
        value: v.into(),
    };
    let build = |pairs: Vec<(&str, Attribute)>| {
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<Attributes>()
    };
    vec![
        (
            "m1",
            build(vec![
                ("iniesta_pass", s("Order.Created.shop")),
                ("version", n(1)),
                ("amount", n(150)),
                ("tags", arr(r#"["a","b"]"#)),
            ]),
        ),
        (
            "m2",
            build(vec![
                ("iniesta_pass", s("Order.Paid.shop")),
                ("version", n(1)),
                ("amount", n(5)),
                ("region", s("EU-West")),
            ]),
        ),
        (
            "m3",
            build(vec![
                ("iniesta_pass", s("hello.iniesta")),
                ("version", n(1)),
                ("region", s("us-east")),
            ]),
        ),
        (
            "m4",
            build(vec![
                ("iniesta_pass", s("Payment.Done.bank")),
                ("version", n(1)),
                ("amount", n(100)),
            ]),
        ),
        (
            "m5",
            build(vec![
                ("iniesta_pass", s("Order.Created.cart")),
                ("version", n(1)),
            ]),
        ),
    ]
}

/// (policy, the messages it lets through).
fn cases() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        (
            r#"{"iniesta_pass":[{"prefix":"Order."}]}"#,
            &["m1", "m2", "m5"],
        ),
        (r#"{"iniesta_pass":["hello.iniesta"]}"#, &["m3"]),
        (
            r#"{"iniesta_pass":[{"prefix":"Order."},"hello.iniesta"]}"#,
            &["m1", "m2", "m3", "m5"],
        ),
        (r#"{"iniesta_pass":[{"suffix":".shop"}]}"#, &["m1", "m2"]),
        (
            r#"{"iniesta_pass":[{"anything-but":["hello.iniesta"]}]}"#,
            &["m1", "m2", "m4", "m5"],
        ),
        (
            r#"{"iniesta_pass":[{"anything-but":{"prefix":"Order."}}]}"#,
            &["m3", "m4"],
        ),
        (r#"{"amount":[{"numeric":[">=",100]}]}"#, &["m1", "m4"]),
        (r#"{"amount":[{"numeric":[">",0,"<",100]}]}"#, &["m2"]),
        (r#"{"amount":[100]}"#, &["m4"]),
        (r#"{"amount":[{"exists":false}]}"#, &["m3", "m5"]),
        (r#"{"region":[{"exists":true}]}"#, &["m2", "m3"]),
        (r#"{"region":[{"equals-ignore-case":"eu-west"}]}"#, &["m2"]),
        (
            r#"{"iniesta_pass":[{"prefix":"Order."}],"amount":[{"numeric":[">",10]}]}"#,
            &["m1"],
        ),
        (
            r#"{"$or":[{"region":["us-east"]},{"amount":[100]}]}"#,
            &["m3", "m4"],
        ),
        (r#"{"tags":["b"]}"#, &["m1"]),
    ]
}

fn expected(case: &[&str]) -> BTreeSet<String> {
    case.iter().map(|s| s.to_string()).collect()
}

fn outgoing(name: &str, attributes: &Attributes) -> Outgoing {
    Outgoing {
        event: name.to_string(),
        body: name.as_bytes().to_vec(),
        attributes: attributes.clone(),
    }
}

#[tokio::test]
async fn the_local_broker_follows_the_table() {
    let s = common::Scratch::new();
    let config = iniesta::config::Config::parse(
        &format!("service = \"f\"\ninitialization = [\"SNS_PRODUCER\"]\n[broker]\npath = \"{}\"\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:0:filters\"\n", s.path("b.db").display()),
        s.dir.path(),
    )
    .expect("config");
    let broker = LocalBroker::open(&config).await.expect("opens");
    for (i, (policy, _)) in cases().iter().enumerate() {
        broker
            .subscribe(
                "filters",
                &format!("case{i}"),
                Some(policy),
                Scope::MessageAttributes,
            )
            .await
            .expect("subscribe");
    }
    for (name, attributes) in messages() {
        broker
            .publish_to("filters", &outgoing(name, &attributes))
            .await
            .expect("publish");
    }
    for (i, (policy, want)) in cases().iter().enumerate() {
        let got: BTreeSet<String> = broker
            .messages(&format!("case{i}"))
            .await
            .expect("messages")
            .iter()
            .map(|m| String::from_utf8_lossy(&m.body).to_string())
            .collect();
        assert_eq!(got, expected(want), "local broker, policy {policy}");
    }
}

#[tokio::test]
async fn moto_sns_follows_the_same_table() {
    let moto = Moto::start();
    let (sns, sqs) = (sns(&moto.url()), sqs(&moto.url()));
    let topic = common::aws::create_topic(&moto.url(), "filters").await;
    let mut urls = Vec::new();
    for (i, (policy, _)) in cases().iter().enumerate() {
        let name = format!("case{i}");
        let url = sqs
            .create_queue()
            .queue_name(&name)
            .send()
            .await
            .expect("queue")
            .queue_url()
            .unwrap_or_default()
            .to_string();
        sns.subscribe()
            .topic_arn(&topic)
            .protocol("sqs")
            .endpoint(format!("arn:aws:sqs:us-east-1:123456789012:{name}"))
            .attributes("RawMessageDelivery", "true")
            .attributes("FilterPolicy", *policy)
            .send()
            .await
            .expect("subscribe");
        urls.push(url);
    }
    for (name, attributes) in messages() {
        let mut publish = sns.publish().topic_arn(&topic).message(name);
        for (key, a) in &attributes {
            publish = publish.message_attributes(
                key,
                aws_sdk_sns::types::MessageAttributeValue::builder()
                    .data_type(&a.data_type)
                    .string_value(&a.value)
                    .build()
                    .expect("attr"),
            );
        }
        publish.send().await.expect("publish");
    }
    for (i, (policy, want)) in cases().iter().enumerate() {
        let mut got = BTreeSet::new();
        loop {
            let out = sqs
                .receive_message()
                .queue_url(&urls[i])
                .max_number_of_messages(10)
                .send()
                .await
                .expect("receive");
            if out.messages().is_empty() {
                break;
            }
            for m in out.messages() {
                got.insert(m.body().unwrap_or_default().to_string());
                let _ = sqs
                    .delete_message()
                    .queue_url(&urls[i])
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .send()
                    .await;
            }
        }
        assert_eq!(got, expected(want), "moto SNS, policy {policy}");
    }
}
