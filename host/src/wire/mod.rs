//! The wire format shared with the Python iniesta: decoding received messages into an
//! [`Envelope`] and building what we publish.
//!
//! On the wire an event is an SNS `Publish` whose `Message` is the JSON body, with message
//! attributes `iniesta_pass` (String, `{event}.{service}`) and `version` (Number). Consumers see
//! either the raw body with SQS message attributes (`RawMessageDelivery=true`), an SNS
//! notification envelope (`Type`, `MessageId`, `Message`, `MessageAttributes {name: {Type,
//! Value}}`, `Timestamp`), or a plain SQS message.
//!
//! Bodies that are not text (binary, BSON) travel as base64 with an `iniesta_content_type`
//! attribute: see [`payload`].

pub mod payload;

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

/// The largest message SNS and SQS accept: body plus attribute names, types and values.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// A message as we publish it: the body and its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The full event name (`{event}.{service}`).
    pub event: String,
    /// The body, sent as the SNS `Message` / SQS `MessageBody`.
    pub body: Vec<u8>,
    /// Attributes, the event key and `version` included.
    pub attributes: Attributes,
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
    /// The body classified, parsed on first use (routing on content, schemas).
    payload: OnceLock<Payload>,
}

impl Envelope {
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

/// Why a received message could not be decoded. The message is left on the queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// An SNS notification envelope missing a required field.
    #[error("SNS notification envelope is malformed: {0}")]
    MalformedSns(String),
    /// The body does not decode as its content-type attribute says.
    #[error("{0}; the publisher must base64-encode binary and BSON bodies (iniesta publish does)")]
    BadBody(String),
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
    /// Over the 256 KiB SNS/SQS limit.
    #[error("message for `{event}` is {size} bytes with its attributes; SNS and SQS accept at most {MAX_MESSAGE_BYTES} (262144). Store the payload elsewhere (e.g. S3) and publish a reference")]
    TooLarge {
        /// The event.
        event: String,
        /// Its size.
        size: usize,
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
    if service.is_empty() || event.ends_with(&format!(".{service}")) {
        event.to_string()
    } else {
        format!("{event}.{service}")
    }
}

/// Build an outgoing message the way the Python iniesta does: the event under `event_key`
/// (String) with the service appended, `version` (Number, default 1), then user attributes
/// (which may override `version`).
pub fn encode(
    event: &str,
    service: &str,
    event_key: &str,
    body: Vec<u8>,
    extra: Attributes,
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
        attributes.insert(name, attribute);
    }
    let body = payload::encode_body(body, &mut attributes)?;
    let size = body.len()
        + attributes
            .iter()
            .map(|(k, a)| k.len() + a.data_type.len() + a.value.len())
            .sum::<usize>();
    if size > MAX_MESSAGE_BYTES {
        return Err(EncodeError::TooLarge { event: full, size });
    }
    Ok(Outgoing {
        event: full,
        body,
        attributes,
    })
}

/// Decode a received message: unwrap an SNS envelope if it is one, find the event name.
pub fn decode(
    message_id: &str,
    body: &[u8],
    attributes: &Attributes,
    sent_timestamp_ms: u64,
    event_key: &str,
) -> Result<Envelope, DecodeError> {
    if let Some(wrapped) = unwrap_sns(body)? {
        let (inner_body, mut inner_attributes, timestamp) = wrapped;
        let event = event_of(&inner_attributes, event_key)?;
        let body = payload::decode_body(inner_body, &mut inner_attributes)?;
        return Ok(Envelope {
            message_id: message_id.to_string(),
            event,
            body,
            attributes: inner_attributes,
            delivery: Delivery::SnsWrapped,
            sent_timestamp_ms: timestamp.unwrap_or(sent_timestamp_ms),
            payload: OnceLock::new(),
        });
    }
    let event = event_of(attributes, event_key)?;
    let delivery = if event.is_empty() {
        Delivery::Plain
    } else {
        Delivery::Raw
    };
    let mut attributes = attributes.clone();
    let body = payload::decode_body(body.to_vec(), &mut attributes)?;
    Ok(Envelope {
        message_id: message_id.to_string(),
        event,
        body,
        attributes,
        delivery,
        sent_timestamp_ms,
        payload: OnceLock::new(),
    })
}

fn event_of(attributes: &Attributes, event_key: &str) -> Result<String, DecodeError> {
    match attributes.get(event_key) {
        None => Ok(String::new()),
        Some(a) if a.base_type() == "String" => Ok(a.value.clone()),
        Some(a) => Err(DecodeError::EventNotString {
            key: event_key.to_string(),
            data_type: a.data_type.clone(),
        }),
    }
}

type Unwrapped = (Vec<u8>, Attributes, Option<u64>);

/// If `body` is an SNS notification envelope, its message, attributes and timestamp.
fn unwrap_sns(body: &[u8]) -> Result<Option<Unwrapped>, DecodeError> {
    // Cheap test first: envelopes are JSON objects naming their Type.
    let trimmed = body.trim_ascii_start();
    if !trimmed.starts_with(b"{") || !contains(body, b"\"Type\"") {
        return Ok(None);
    }
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return Ok(None);
    };
    if map.get("Type").and_then(|t| t.as_str()) != Some("Notification")
        || !(map.contains_key("TopicArn") || map.contains_key("MessageId"))
    {
        return Ok(None);
    }
    let message = match map.get("Message") {
        Some(serde_json::Value::String(s)) => s.clone().into_bytes(),
        Some(_) => {
            return Err(DecodeError::MalformedSns(
                "`Message` is not a string".into(),
            ))
        }
        None => return Err(DecodeError::MalformedSns("no `Message` field".into())),
    };
    let mut attributes = Attributes::new();
    if let Some(attrs) = map.get("MessageAttributes") {
        let Some(attrs) = attrs.as_object() else {
            return Err(DecodeError::MalformedSns(
                "`MessageAttributes` is not an object".into(),
            ));
        };
        for (name, attr) in attrs {
            let data_type = attr.get("Type").and_then(|t| t.as_str());
            let value = attr.get("Value").and_then(|v| v.as_str());
            match (data_type, value) {
                (Some(t), Some(v)) => {
                    attributes.insert(
                        name.clone(),
                        Attribute {
                            data_type: t.to_string(),
                            value: v.to_string(),
                        },
                    );
                }
                _ => {
                    return Err(DecodeError::MalformedSns(format!(
                        "attribute `{name}` lacks a string Type or Value"
                    )))
                }
            }
        }
    }
    let timestamp = map
        .get("Timestamp")
        .and_then(|t| t.as_str())
        .and_then(parse_rfc3339_ms);
    Ok(Some((message, attributes, timestamp)))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
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
        )
        .expect("encodes");
        assert_eq!(
            out.attributes["iniesta_pass"],
            Attribute::string("Order.Created.shop")
        );
        assert_eq!(out.attributes["version"], Attribute::number(1));
        let big = vec![b'x'; MAX_MESSAGE_BYTES];
        assert!(matches!(
            encode("E", "s", "iniesta_pass", big, Attributes::new()),
            Err(EncodeError::TooLarge { .. })
        ));
        let mut bad = Attributes::new();
        bad.insert("n".into(), Attribute::number("x"));
        assert!(encode("E", "s", "iniesta_pass", vec![], bad).is_err());
    }

    #[test]
    fn decodes_raw_delivery() {
        let env = decode(
            "m1",
            b"{\"a\":1}",
            &attrs(&[("iniesta_pass", "E.s")]),
            5,
            "iniesta_pass",
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
        let env = decode(
            "sqs-1",
            body.as_bytes(),
            &Attributes::new(),
            0,
            "iniesta_pass",
        )
        .expect("decodes");
        assert_eq!(env.delivery, Delivery::SnsWrapped);
        assert_eq!(env.event, "Order.Created.shop");
        assert_eq!(env.body, b"{\"id\":7}");
        assert_eq!(env.message_id, "sqs-1");
        assert_eq!(env.attributes["version"].data_type, "Number");
        assert_eq!(env.sent_timestamp_ms, 1_704_164_645_678);
    }

    #[test]
    fn plain_text_and_malformed() {
        let env =
            decode("m", b"just text", &Attributes::new(), 0, "iniesta_pass").expect("decodes");
        assert_eq!(env.delivery, Delivery::Plain);
        assert_eq!(env.event, "");
        let bad = br#"{"Type":"Notification","MessageId":"x","Message":5}"#;
        assert!(matches!(
            decode("m", bad, &Attributes::new(), 0, "iniesta_pass"),
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
        assert!(decode("m", b"{}", &binary, 0, "iniesta_pass").is_err());
        // A JSON object that merely has a Type field is a normal body.
        let env = decode(
            "m",
            br#"{"Type":"Order"}"#,
            &attrs(&[("iniesta_pass", "E.s")]),
            0,
            "iniesta_pass",
        )
        .expect("decodes");
        assert_eq!(env.delivery, Delivery::Raw);
    }
}
