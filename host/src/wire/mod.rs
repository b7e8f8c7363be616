//! The wire format shared with the Python iniesta: decoding received messages into an
//! [`Envelope`] and building what we publish.
//!
//! On the wire an event is an SNS `Publish` whose `Message` is the JSON body, with message
//! attributes `iniesta_pass` (String, `{event}.{service}`) and `version` (Number). Consumers see
//! either the raw body with SQS message attributes (`RawMessageDelivery=true`), an SNS
//! notification envelope (`Type`, `MessageId`, `TopicArn`, `Message`, `MessageAttributes {name:
//! {Type, Value}}`, `Timestamp`; see [`sns`]), or a plain SQS message.
//!
//! What the queue delivered decides, never the body: a body is read as an envelope only when
//! the [`DeliveryContext`] says the queue's subscription delivers envelopes, the message came
//! without the event attribute (a message sent straight to the queue is raw), and the
//! envelope's `TopicArn` is the subscribed topic. Otherwise the body is just the body.
//!
//! Bodies that are not text (binary, BSON) travel as base64 with an `iniesta_content_type`
//! attribute: see [`payload`].

pub mod payload;
pub mod pointer;
mod sns;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use iniesta_plugin_api::payload::Payload;

use serde::{Deserialize, Serialize};

/// One message attribute: an SQS/SNS data type and its value as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribute {
    /// `String`, `Number`, `Binary` (value base64-encoded), `String.Array`, or a custom subtype
    /// such as `Number.float`.
    pub data_type: String,
    /// The value as text.
    pub value: String,
}

impl Attribute {
    /// A `String` attribute.
    pub fn string(value: impl Into<String>) -> Self {
        Self {
            data_type: "String".into(),
            value: value.into(),
        }
    }

    /// A `Number` attribute.
    pub fn number(value: impl ToString) -> Self {
        Self {
            data_type: "Number".into(),
            value: value.to_string(),
        }
    }

    /// The base type: `String`, `Number` or `Binary` (custom subtypes stripped).
    pub fn base_type(&self) -> &str {
        self.data_type
            .split('.')
            .next()
            .unwrap_or(self.data_type.as_str())
    }
}

/// Message attributes by name.
pub type Attributes = BTreeMap<String, Attribute>;

/// The largest message SNS accepts (`Publish`, and all entries of a `PublishBatch`
/// together): body plus attribute names, types and values.
pub const MAX_SNS_BYTES: usize = 256 * 1024;
/// The largest message SQS accepts (`SendMessage`, and all entries of a `SendMessageBatch`
/// together), since August 2025.
pub const MAX_SQS_BYTES: usize = 1024 * 1024;

/// The most message attributes an SQS message may carry (SNS delivers no more to SQS).
pub const MAX_ATTRIBUTES: usize = 10;

/// A message as we publish it: the body and its attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outgoing {
    /// The full event name (`{event}.{service}`).
    pub event: String,
    /// The body, sent as the SNS `Message` / SQS `MessageBody`.
    pub body: Vec<u8>,
    /// Attributes, the event key and `version` included.
    pub attributes: Attributes,
}

impl Outgoing {
    /// Its size as SNS and SQS count it: the body plus every attribute's name, type and value.
    pub fn size(&self) -> usize {
        size_of(&self.body, &self.attributes)
    }
}

/// A message's size as SNS and SQS count it against their limits: the body plus each
/// attribute's name, data type and value.
pub fn size_of(body: &[u8], attributes: &Attributes) -> usize {
    body.len()
        + attributes
            .iter()
            .map(|(k, a)| k.len() + a.data_type.len() + a.value.len())
            .sum::<usize>()
}

/// A received message, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The SQS message id (the lock key's `{message_id}`).
    pub message_id: String,
    /// The event name from the event-key attribute; empty if the message carried none.
    pub event: String,
    /// The body as published (the SNS `Message` when the delivery was wrapped), with its
    /// transport encoding undone: raw bytes for binary bodies, JSON text for BSON ones.
    pub body: Vec<u8>,
    /// The message attributes (from the SNS envelope when wrapped).
    pub attributes: Attributes,
    /// How the message arrived.
    pub delivery: Delivery,
    /// When the message was sent, ms since the Unix epoch (0 if unknown).
    pub sent_timestamp_ms: u64,
    /// Where the body is stored, when the message is an S3 claim check (decoded with
    /// [`DeliveryContext::claim_checks`]). Until it is [`fetched`](Self::fetched), `body` is
    /// the pointer's text.
    pub pointer: Option<pointer::Pointer>,
    /// Whether `body` is the stored body of [`pointer`](Self::pointer) ([`Envelope::resolved`]).
    pub fetched: bool,
    /// The body classified, parsed on first use (routing on content, schemas).
    payload: OnceLock<Payload>,
}

impl Envelope {
    /// Whether this is a claim check whose stored body has not been fetched yet.
    pub fn awaits_fetch(&self) -> bool {
        self.pointer.is_some() && !self.fetched
    }

    /// This claim check with its stored body fetched: the body as published (its transport
    /// encoding undone, as [`decode`] does for an ordinary message) and the claim-check
    /// attribute removed; the pointer stays, [`fetched`](Self::fetched) set. An envelope
    /// that [`awaits_fetch`](Self::awaits_fetch) nothing is returned unchanged.
    pub fn resolved(mut self, stored: Vec<u8>) -> Result<Envelope, DecodeError> {
        if !self.awaits_fetch() {
            return Ok(self);
        }
        pointer::strip(&mut self.attributes);
        self.body = payload::decode_body(stored, &mut self.attributes)?;
        self.fetched = true;
        self.payload = OnceLock::new();
        Ok(self)
    }

    /// The body's kind and, for JSON and MEGA, its parsed value; parsed once, on first use.
    pub fn payload(&self) -> &Payload {
        self.payload.get_or_init(|| {
            iniesta_plugin_api::payload::inspect(
                &self.body,
                payload::content_type(&self.attributes),
            )
        })
    }
}

/// How a message arrived on the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// SNS with `RawMessageDelivery=true`, or sent straight to the queue with attributes.
    Raw,
    /// An SNS notification envelope (raw delivery off).
    SnsWrapped,
    /// A plain SQS message with no event attribute.
    Plain,
}

/// Why a received message could not be decoded. The pipeline leaves it on the queue for the
/// redrive policy, except an envelope from a foreign topic, which it dead-letters at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// An SNS notification envelope missing a required field.
    #[error("SNS notification envelope is malformed: {0}")]
    MalformedSns(String),
    /// The body does not decode as its content-type attribute says.
    #[error("{0}; the publisher must base64-encode binary and BSON bodies (iniesta publish does)")]
    BadBody(String),
    /// A message marked as an S3 claim check whose body is not a pointer.
    #[error(transparent)]
    BadPointer(#[from] pointer::PointerError),
    /// An SNS envelope from a topic the queue is not subscribed to for envelopes.
    #[error("SNS envelope from topic `{topic}`, but this queue takes envelopes only from `{expected}` (sns.topic_arn); a subscription to another topic must use raw delivery")]
    ForeignTopic {
        /// The envelope's `TopicArn`.
        topic: String,
        /// The subscribed topic.
        expected: String,
    },
    /// The event attribute is not text.
    #[error("attribute `{key}` has type {data_type}; the event name must be a String")]
    EventNotString {
        /// The event key.
        key: String,
        /// The type found.
        data_type: String,
    },
}

/// Why a message could not be published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Over the size limit of its destination (or `payloads.max_message_bytes`).
    #[error("message for `{event}` is {size} bytes with its attributes; {limit}")]
    TooLarge {
        /// The event.
        event: String,
        /// Its size.
        size: usize,
        /// The limit it broke, said for a person.
        limit: String,
    },
    /// An empty event name.
    #[error("the event name must not be empty")]
    EmptyEvent,
    /// A body that cannot be sent as its content-type attribute says.
    #[error("{0}")]
    BadBody(String),
    /// An attribute value that does not fit its type.
    #[error("attribute `{name}`: {problem}")]
    BadAttribute {
        /// The attribute.
        name: String,
        /// What is wrong.
        problem: String,
    },
}

/// `{event}.{service}`: the service name is appended unless the event already ends with it.
pub fn full_event_name(event: &str, service: &str) -> String {
    if service.is_empty()
        || event
            .strip_suffix(service)
            .is_some_and(|head| head.ends_with('.'))
    {
        event.to_string()
    } else {
        format!("{event}.{service}")
    }
}

/// The most bytes a message may have, and how to say so when one has more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeLimit {
    /// Body plus attributes, as [`size_of`] counts.
    pub max_bytes: usize,
    /// The end of the error message: what the limit is and what to do.
    pub explained: String,
}

impl SizeLimit {
    /// SNS's limit, for `explain`-style checks that send nothing.
    pub fn sns() -> SizeLimit {
        SizeLimit {
            max_bytes: MAX_SNS_BYTES,
            explained: format!("SNS accepts at most {MAX_SNS_BYTES}"),
        }
    }
}

/// Build an outgoing message the way the Python iniesta does: the event under `event_key`
/// (String) with the service appended, `version` (Number, default 1), then user attributes
/// (which may override `version`). Refused when larger than `limit`.
pub fn encode(
    event: &str,
    service: &str,
    event_key: &str,
    body: Vec<u8>,
    extra: Attributes,
    limit: &SizeLimit,
) -> Result<Outgoing, EncodeError> {
    if event.trim().is_empty() {
        return Err(EncodeError::EmptyEvent);
    }
    let full = full_event_name(event, service);
    let mut attributes = Attributes::new();
    attributes.insert(event_key.to_string(), Attribute::string(full.clone()));
    attributes.insert("version".to_string(), Attribute::number(1));
    for (name, attribute) in extra {
        if name == event_key {
            return Err(EncodeError::BadAttribute {
                name,
                problem: "is the event key; pass the event as the EVENT argument instead".into(),
            });
        }
        if attribute.base_type() == "Number" && attribute.value.parse::<f64>().is_err() {
            return Err(EncodeError::BadAttribute {
                name,
                problem: format!("`{}` is not a number", attribute.value),
            });
        }
        if pointer::is_reserved(&name) {
            return Err(EncodeError::BadAttribute {
                name,
                problem:
                    "is reserved for S3 claim checks (payloads.s3_bucket offloads large bodies)"
                        .into(),
            });
        }
        attributes.insert(name, attribute);
    }
    let body = payload::encode_body(body, &mut attributes)?;
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(EncodeError::BadAttribute {
            name: attributes.keys().last().cloned().unwrap_or_default(),
            problem: format!(
                "the message would carry {} attributes, and SQS takes at most {MAX_ATTRIBUTES} (iniesta's own count: see the wire format reference)",
                attributes.len()
            ),
        });
    }
    let size = size_of(&body, &attributes);
    if size > limit.max_bytes {
        return Err(EncodeError::TooLarge {
            event: full,
            size,
            limit: limit.explained.clone(),
        });
    }
    Ok(Outgoing {
        event: full,
        body,
        attributes,
    })
}

/// How the queue a message came from delivers: the attribute that names the event, and
/// whether its subscription wraps messages in SNS envelopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryContext<'a> {
    /// The message attribute that carries the event name (`iniesta_pass`).
    pub event_key: &'a str,
    /// The topic whose SNS envelopes this queue receives (a subscription with raw delivery
    /// off); `None` when everything arrives raw: a body is then never read as an envelope.
    pub envelope_topic: Option<&'a str>,
    /// Read S3 claim checks ([`pointer`]): a message carrying the claim-check attribute keeps
    /// its pointer as the body, its [`Envelope::pointer`] set, until [`Envelope::resolved`].
    /// Off (no `payloads.s3_bucket`), such a message is an ordinary one: its pointer is the body.
    pub claim_checks: bool,
}

impl<'a> DeliveryContext<'a> {
    /// Raw delivery (a raw subscription, a plain queue, the local broker, ingress): the body
    /// is always the body.
    pub const fn raw(event_key: &'a str) -> Self {
        Self {
            event_key,
            envelope_topic: None,
            claim_checks: false,
        }
    }

    /// A subscription to `topic_arn` without raw delivery: envelopes from that topic are
    /// unwrapped.
    pub const fn envelopes_from(event_key: &'a str, topic_arn: &'a str) -> Self {
        Self {
            event_key,
            envelope_topic: Some(topic_arn),
            claim_checks: false,
        }
    }

    /// The same, reading S3 claim checks when `on`.
    pub const fn with_claim_checks(mut self, on: bool) -> Self {
        self.claim_checks = on;
        self
    }
}

/// Decode a received message. The delivered attributes name the event; the body is unwrapped
/// as an SNS envelope only when `context` says the queue receives envelopes, no event
/// attribute was delivered with it, and it comes from the subscribed topic (an envelope from
/// another topic is [`DecodeError::ForeignTopic`]).
pub fn decode(
    message_id: &str,
    body: &[u8],
    attributes: &Attributes,
    sent_timestamp_ms: u64,
    context: DeliveryContext<'_>,
) -> Result<Envelope, DecodeError> {
    let event_key = context.event_key;
    if let Some(expected) = context.envelope_topic {
        if !attributes.contains_key(event_key) {
            if let Some(notification) = sns::parse(body)? {
                if notification.topic_arn != expected {
                    return Err(DecodeError::ForeignTopic {
                        topic: notification.topic_arn.into_owned(),
                        expected: expected.to_string(),
                    });
                }
                let mut attributes = notification.attributes;
                let event = event_of(&attributes, event_key)?;
                let (body, pointer) = body_of(
                    notification.message.into_owned().into_bytes(),
                    &mut attributes,
                    context.claim_checks,
                )?;
                return Ok(Envelope {
                    message_id: message_id.to_string(),
                    event,
                    body,
                    attributes,
                    delivery: Delivery::SnsWrapped,
                    sent_timestamp_ms: notification.timestamp_ms.unwrap_or(sent_timestamp_ms),
                    pointer,
                    fetched: false,
                    payload: OnceLock::new(),
                });
            }
        }
    }
    let event = event_of(attributes, event_key)?;
    let delivery = if event.is_empty() {
        Delivery::Plain
    } else {
        Delivery::Raw
    };
    let mut attributes = attributes.clone();
    let (body, pointer) = body_of(body.to_vec(), &mut attributes, context.claim_checks)?;
    Ok(Envelope {
        message_id: message_id.to_string(),
        event,
        body,
        attributes,
        delivery,
        sent_timestamp_ms,
        pointer,
        fetched: false,
        payload: OnceLock::new(),
    })
}

/// A delivered body with its transport encoding undone, or, for a claim check read as one,
/// the pointer's text and the pointer (the stored body is decoded once fetched).
fn body_of(
    body: Vec<u8>,
    attributes: &mut Attributes,
    claim_checks: bool,
) -> Result<(Vec<u8>, Option<pointer::Pointer>), DecodeError> {
    if claim_checks {
        if let Some(pointer) = pointer::parse(&body, attributes)? {
            return Ok((body, Some(pointer)));
        }
    }
    Ok((payload::decode_body(body, attributes)?, None))
}

fn event_of(attributes: &Attributes, event_key: &str) -> Result<String, DecodeError> {
    match attributes.get(event_key) {
        None => Ok(String::new()),
        // `String.Array` (an SNS type) is a list, not a name: SNS filter policies match its
        // elements, so taking its JSON text as the event would route a list of names.
        Some(a) if a.base_type() == "String" && a.data_type != "String.Array" => {
            Ok(a.value.clone())
        }
        Some(a) => Err(DecodeError::EventNotString {
            key: event_key.to_string(),
            data_type: a.data_type.clone(),
        }),
    }
}

/// Parse an RFC 3339 timestamp into ms since the Unix epoch.
pub fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let dt =
        aws_smithy_types::DateTime::from_str(text, aws_smithy_types::date_time::Format::DateTime)
            .ok()?;
    u64::try_from(dt.to_millis().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GLOBAL: &str = "arn:aws:sns:us-east-1:123456789012:global";
    const RAW: DeliveryContext<'static> = DeliveryContext::raw("iniesta_pass");
    const FROM_GLOBAL: DeliveryContext<'static> =
        DeliveryContext::envelopes_from("iniesta_pass", GLOBAL);

    fn attrs(pairs: &[(&str, &str)]) -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Attribute::string(*v)))
            .collect()
    }

    #[test]
    fn event_name_gets_service_appended_once() {
        assert_eq!(
            full_event_name("Order.Created", "shop"),
            "Order.Created.shop"
        );
        assert_eq!(
            full_event_name("Order.Created.shop", "shop"),
            "Order.Created.shop"
        );
        assert_eq!(full_event_name("hello", "iniesta"), "hello.iniesta");
    }

    #[test]
    fn encode_sets_python_attributes() {
        let out = encode(
            "Order.Created",
            "shop",
            "iniesta_pass",
            b"{\"id\":1}".to_vec(),
            Attributes::new(),
            &SizeLimit::sns(),
        )
        .expect("encodes");
        assert_eq!(
            out.attributes["iniesta_pass"],
            Attribute::string("Order.Created.shop")
        );
        assert_eq!(out.attributes["version"], Attribute::number(1));
        let big = vec![b'x'; MAX_SNS_BYTES];
        assert!(matches!(
            encode(
                "E",
                "s",
                "iniesta_pass",
                big,
                Attributes::new(),
                &SizeLimit::sns()
            ),
            Err(EncodeError::TooLarge { .. })
        ));
        let mut bad = Attributes::new();
        bad.insert("n".into(), Attribute::number("x"));
        assert!(encode("E", "s", "iniesta_pass", vec![], bad, &SizeLimit::sns()).is_err());
        // SQS takes 10 attributes: iniesta_pass, version and 8 more.
        let eight: Attributes = (0..8)
            .map(|i| (format!("a{i}"), Attribute::string("x")))
            .collect();
        assert!(encode(
            "E",
            "s",
            "iniesta_pass",
            vec![],
            eight.clone(),
            &SizeLimit::sns()
        )
        .is_ok());
        let mut nine = eight;
        nine.insert("a8".into(), Attribute::string("x"));
        assert!(matches!(
            encode("E", "s", "iniesta_pass", vec![], nine, &SizeLimit::sns()),
            Err(EncodeError::BadAttribute { .. })
        ));
        let mut reserved = Attributes::new();
        reserved.insert(pointer::SIZE_ATTRIBUTE.into(), Attribute::number(3));
        assert!(matches!(
            encode(
                "E",
                "s",
                "iniesta_pass",
                vec![],
                reserved,
                &SizeLimit::sns()
            ),
            Err(EncodeError::BadAttribute { .. })
        ));
    }

    #[test]
    fn decodes_raw_delivery() {
        let env = decode(
            "m1",
            b"{\"a\":1}",
            &attrs(&[("iniesta_pass", "E.s")]),
            5,
            RAW,
        )
        .expect("decodes");
        assert_eq!(env.event, "E.s");
        assert_eq!(env.delivery, Delivery::Raw);
        assert_eq!(env.body, b"{\"a\":1}");
    }

    #[test]
    fn decodes_sns_envelope() {
        let body = serde_json::json!({
            "Type": "Notification",
            "MessageId": "sns-1",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:global",
            "Message": "{\"id\":7}",
            "Timestamp": "2024-01-02T03:04:05.678Z",
            "MessageAttributes": {
                "iniesta_pass": {"Type": "String", "Value": "Order.Created.shop"},
                "version": {"Type": "Number", "Value": "1"}
            }
        })
        .to_string();
        let env =
            decode("sqs-1", body.as_bytes(), &Attributes::new(), 0, FROM_GLOBAL).expect("decodes");
        assert_eq!(env.delivery, Delivery::SnsWrapped);
        assert_eq!(env.event, "Order.Created.shop");
        assert_eq!(env.body, b"{\"id\":7}");
        assert_eq!(env.message_id, "sqs-1");
        assert_eq!(env.attributes["version"].data_type, "Number");
        assert_eq!(env.sent_timestamp_ms, 1_704_164_645_678);
    }

    #[test]
    fn plain_text_and_malformed() {
        let env = decode("m", b"just text", &Attributes::new(), 0, FROM_GLOBAL).expect("decodes");
        assert_eq!(env.delivery, Delivery::Plain);
        assert_eq!(env.event, "");
        let bad = br#"{"Type":"Notification","MessageId":"x","Message":5}"#;
        assert!(matches!(
            decode("m", bad, &Attributes::new(), 0, FROM_GLOBAL),
            Err(DecodeError::MalformedSns(_))
        ));
        let mut binary = Attributes::new();
        binary.insert(
            "iniesta_pass".into(),
            Attribute {
                data_type: "Binary".into(),
                value: "AA==".into(),
            },
        );
        assert!(decode("m", b"{}", &binary, 0, RAW).is_err());
        // A JSON object that merely has a Type field is a normal body.
        let env = decode(
            "m",
            br#"{"Type":"Order"}"#,
            &attrs(&[("iniesta_pass", "E.s")]),
            0,
            FROM_GLOBAL,
        )
        .expect("decodes");
        assert_eq!(env.delivery, Delivery::Raw);
    }

    /// The issue's spoof: SQS says one event, the body is shaped like an envelope naming another.
    const SPOOF: &[u8] = br#"{"Type":"Notification","MessageId":"x","TopicArn":"arn:aws:sns:us-east-1:123456789012:global","Message":"{}","MessageAttributes":{"iniesta_pass":{"Type":"String","Value":"Admin.Delete"}}}"#;

    fn envelope(topic: &str, message: &str, event: &str) -> Vec<u8> {
        serde_json::json!({
            "Type": "Notification",
            "MessageId": "sns-1",
            "TopicArn": topic,
            "Message": message,
            "MessageAttributes": {"iniesta_pass": {"Type": "String", "Value": event}},
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn on_a_raw_queue_the_body_is_always_the_body() {
        let delivered = attrs(&[("iniesta_pass", "Probe.Spoof")]);
        let env = decode("m", SPOOF, &delivered, 0, RAW).expect("decodes");
        assert_eq!(
            (env.event.as_str(), env.delivery),
            ("Probe.Spoof", Delivery::Raw)
        );
        assert_eq!(env.body, SPOOF);
        assert_eq!(env.attributes, delivered);
        // Without an event attribute it is a plain message, still not unwrapped.
        let env = decode("m", SPOOF, &Attributes::new(), 0, RAW).expect("decodes");
        assert_eq!((env.event.as_str(), env.delivery), ("", Delivery::Plain));
        assert_eq!(env.body, SPOOF);
        // A body shaped like a malformed envelope is an ordinary body, not a decode error.
        let shape = br#"{"Type":"Notification","MessageId":"x","Message":5}"#;
        let env = decode("m", shape, &delivered, 0, RAW).expect("an ordinary body");
        assert_eq!(env.body, shape);
        // A real envelope from the subscribed topic too: this queue does not take envelopes.
        let real = envelope(GLOBAL, "{}", "Admin.Delete");
        let env = decode("m", &real, &Attributes::new(), 0, RAW).expect("decodes");
        assert_eq!((env.event.as_str(), env.body), ("", real));
    }

    #[test]
    fn on_an_envelope_queue_delivered_attributes_still_win() {
        // Sent straight to the queue (publish --queue) with the event attribute: raw.
        let delivered = attrs(&[("iniesta_pass", "Probe.Spoof")]);
        let env = decode("m", SPOOF, &delivered, 0, FROM_GLOBAL).expect("decodes");
        assert_eq!(
            (env.event.as_str(), env.delivery),
            ("Probe.Spoof", Delivery::Raw)
        );
        assert_eq!(env.body, SPOOF);
    }

    #[test]
    fn on_an_envelope_queue_envelopes_of_the_subscribed_topic_are_unwrapped() {
        let message = r#"{"say":"café \"ok\" \u00e9"}"#;
        let body = envelope(GLOBAL, message, "Order.Created.shop");
        // Attributes other than the event key (a DLQ reason kept by a tool) do not matter.
        let other = attrs(&[("iniesta_dead_letter_reason", "x")]);
        for delivered in [Attributes::new(), other] {
            let env = decode("m", &body, &delivered, 9, FROM_GLOBAL).expect("decodes");
            assert_eq!(env.delivery, Delivery::SnsWrapped);
            assert_eq!(env.event, "Order.Created.shop");
            assert_eq!(
                env.body,
                message.as_bytes(),
                "the envelope's escapes undone"
            );
            assert_eq!(env.sent_timestamp_ms, 9, "no Timestamp: the SQS one");
        }
        // Binary bodies inside an envelope are decoded like raw ones.
        let mut wrapped: serde_json::Value =
            serde_json::from_slice(&envelope(GLOBAL, "AAEC", "Blob.Sent.s")).expect("json");
        wrapped["MessageAttributes"]["iniesta_content_type"] =
            serde_json::json!({"Type": "String", "Value": "application/octet-stream"});
        let env = decode(
            "m",
            wrapped.to_string().as_bytes(),
            &Attributes::new(),
            0,
            FROM_GLOBAL,
        )
        .expect("decodes");
        assert_eq!(env.body, [0u8, 1, 2]);
    }

    #[test]
    fn on_an_envelope_queue_an_envelope_of_another_topic_is_refused() {
        let other = "arn:aws:sns:us-east-1:123456789012:other";
        let body = envelope(other, "{}", "Admin.Delete");
        let err = decode("m", &body, &Attributes::new(), 0, FROM_GLOBAL).expect_err("refused");
        assert_eq!(
            err,
            DecodeError::ForeignTopic {
                topic: other.into(),
                expected: GLOBAL.into()
            }
        );
        assert!(err.to_string().contains(other), "{err}");
        // The ARN is compared exactly: the same name in another account or region is another topic.
        for arn in [
            "arn:aws:sns:us-east-1:999999999999:global",
            "arn:aws:sns:eu-west-1:123456789012:global",
            "arn:aws:sns:us-east-1:123456789012:Global",
        ] {
            let body = envelope(arn, "{}", "E.s");
            assert!(matches!(
                decode("m", &body, &Attributes::new(), 0, FROM_GLOBAL),
                Err(DecodeError::ForeignTopic { .. })
            ));
        }
    }

    #[test]
    fn on_an_envelope_queue_malformed_envelopes_and_other_bodies() {
        let malformed = |body: &[u8]| match decode("m", body, &Attributes::new(), 0, FROM_GLOBAL) {
            Err(DecodeError::MalformedSns(why)) => why,
            other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
        };
        let t = GLOBAL;
        assert_eq!(
            malformed(br#"{"Type":"Notification","MessageId":"x","Message":5}"#),
            "`Message` is not a string"
        );
        assert_eq!(
            malformed(br#"{"Type":"Notification","MessageId":"x","TopicArn":null}"#),
            "no `Message` field"
        );
        assert_eq!(
            malformed(br#"{"Type":"Notification","MessageId":"x","Message":"{}"}"#),
            "no `TopicArn` field"
        );
        let body = format!(
            r#"{{"Type":"Notification","TopicArn":"{t}","Message":"m","MessageAttributes":[1]}}"#
        );
        assert_eq!(
            malformed(body.as_bytes()),
            "`MessageAttributes` is not an object"
        );
        let body = format!(
            r#"{{"Type":"Notification","TopicArn":"{t}","Message":"m","MessageAttributes":{{"a":{{"Type":"String","Value":7}}}}}}"#
        );
        assert_eq!(
            malformed(body.as_bytes()),
            "attribute `a` lacks a string Type or Value"
        );
        let body = format!(
            r#"{{"Type":"Notification","TopicArn":"{t}","Message":"m","MessageAttributes":{{"a":"x"}}}}"#
        );
        assert_eq!(
            malformed(body.as_bytes()),
            "attribute `a` lacks a string Type or Value"
        );
        // Not envelopes: plain messages, whatever else they hold.
        for body in [
            &b"just text"[..],
            b"[1, 2]",
            b"{not json",
            br#"{"Type":"Order","MessageId":"x","Message":5}"#,
            br#"{"Type":"Notification"}"#,
            br#"{"Type":7,"MessageId":"x"}"#,
            br#"{"Type":"Notification","Type":"Notification","MessageId":"x"}"#,
        ] {
            let env = decode("m", body, &Attributes::new(), 0, FROM_GLOBAL)
                .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(body)));
            assert_eq!((env.delivery, env.body.as_slice()), (Delivery::Plain, body));
        }
    }

    #[test]
    fn envelope_fields_are_borrowed_when_unescaped() {
        let body = envelope(GLOBAL, "plain", "E.s");
        let parsed = sns::parse(&body).expect("parses").expect("an envelope");
        assert!(matches!(parsed.topic_arn, std::borrow::Cow::Borrowed(_)));
        assert!(matches!(parsed.message, std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn claim_checks_are_read_only_when_asked_and_resolve_to_the_stored_body() {
        let mut attributes = attrs(&[("iniesta_pass", "Big.A.s")]);
        let body = pointer::write("b-1", "k", 8, &mut attributes);
        // Off: the pointer is the body, as before.
        let plain = decode("m", &body, &attributes, 0, RAW).expect("decodes");
        assert_eq!(
            (plain.body.as_slice(), plain.pointer.is_none()),
            (body.as_slice(), true)
        );
        // On: the pointer is kept for the fetch; the stored body (a binary one, as base64
        // with its content type on the message) is decoded once fetched.
        attributes.insert(
            iniesta_plugin_api::payload::CONTENT_TYPE_ATTRIBUTE.into(),
            Attribute::string(iniesta_plugin_api::payload::BINARY_CONTENT_TYPE),
        );
        let on = RAW.with_claim_checks(true);
        let marked = decode("m", &body, &attributes, 0, on).expect("decodes");
        assert!(marked.awaits_fetch());
        assert_eq!(marked.pointer.as_ref().map(|p| p.key.as_str()), Some("k"));
        let resolved = marked.resolved(b"AAEC/w==".to_vec()).expect("resolves");
        assert_eq!(resolved.body, [0u8, 1, 2, 255]);
        assert!(resolved.fetched && !resolved.awaits_fetch());
        assert!(!resolved.attributes.contains_key(pointer::SIZE_ATTRIBUTE));
        // A marked message that is not a pointer is refused (dead-lettered by the pipeline).
        let mut forged = attrs(&[("iniesta_pass", "Big.A.s")]);
        forged.insert(pointer::SIZE_ATTRIBUTE.into(), Attribute::number(3));
        assert!(matches!(
            decode("m", b"hello", &forged, 0, on),
            Err(DecodeError::BadPointer(_))
        ));
    }

    #[test]
    fn a_string_array_event_attribute_is_not_an_event_name() {
        let mut delivered = Attributes::new();
        delivered.insert(
            "iniesta_pass".into(),
            Attribute {
                data_type: "String.Array".into(),
                value: r#"["Order.Created.shop","Admin.Delete.x"]"#.into(),
            },
        );
        assert!(matches!(
            decode("m", b"{}", &delivered, 0, RAW),
            Err(DecodeError::EventNotString { .. })
        ));
        // A custom String subtype is still a String.
        delivered.insert(
            "iniesta_pass".into(),
            Attribute {
                data_type: "String.custom".into(),
                value: "Order.Created.shop".into(),
            },
        );
        let env = decode("m", b"{}", &delivered, 0, RAW).expect("decodes");
        assert_eq!(env.event, "Order.Created.shop");
    }

    proptest::proptest! {
        #[test]
        fn a_raw_queue_never_changes_a_text_body_or_its_event(body in ".*", event in "[A-Za-z.]{1,20}") {
            let delivered = attrs(&[("iniesta_pass", &event)]);
            let env = decode("m", body.as_bytes(), &delivered, 0, RAW).expect("decodes");
            proptest::prop_assert_eq!(env.body, body.as_bytes());
            proptest::prop_assert_eq!(env.event, event);
        }

        /// Bodies shaped like envelopes of the very topic, naming another event: on a raw
        /// queue they stay bodies, with the delivered event (the old decoder unwrapped them).
        #[test]
        fn a_raw_queue_never_unwraps_an_envelope_shaped_body(message in ".*", inner in "[A-Za-z.]{1,20}", event in "[A-Za-z.]{1,20}") {
            let body = envelope(GLOBAL, &message, &inner);
            let delivered = attrs(&[("iniesta_pass", &event)]);
            let env = decode("m", &body, &delivered, 0, RAW).expect("decodes");
            proptest::prop_assert_eq!(env.delivery, Delivery::Raw);
            proptest::prop_assert_eq!(env.body, body);
            proptest::prop_assert_eq!(env.event, event);
        }

        #[test]
        fn an_envelope_queue_never_lets_a_body_override_a_delivered_event(message in ".*", inner in "[A-Za-z.]{1,20}", event in "[A-Za-z.]{1,20}") {
            let body = envelope(GLOBAL, &message, &inner);
            let delivered = attrs(&[("iniesta_pass", &event)]);
            let env = decode("m", &body, &delivered, 0, FROM_GLOBAL).expect("decodes");
            proptest::prop_assert_eq!(env.body, body);
            proptest::prop_assert_eq!(env.event, event);
        }
    }
}
