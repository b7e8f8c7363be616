//! The SNS notification envelope: what SQS holds when a subscription delivers without raw
//! delivery (`{"Type": "Notification", "TopicArn", "Message", "MessageAttributes", ...}`).
//!
//! The body is parsed once, into borrowed fields: each field the envelope needs is read as
//! "text, or something else" without failing the parse, so that a JSON object that is not an
//! envelope is told apart from an envelope with a bad field without a second pass or a
//! `serde_json::Value` tree. Only [`super::decode`] calls this, and only for a queue whose
//! subscription delivers envelopes.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{Attribute, Attributes, DecodeError};

/// An SNS notification, checked.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Notification<'a> {
    /// The topic that sent it.
    pub topic_arn: Cow<'a, str>,
    /// The published body.
    pub message: Cow<'a, str>,
    /// The published message attributes.
    pub attributes: Attributes,
    /// When SNS took the message, ms since the Unix epoch, if the envelope says.
    pub timestamp_ms: Option<u64>,
}

/// `body` as an SNS notification: `Ok(None)` when it is not one (not a JSON object with `"Type":
/// "Notification"` and a `MessageId` or `TopicArn`), an error when it is one with a field
/// missing or of the wrong type.
pub(super) fn parse(body: &[u8]) -> Result<Option<Notification<'_>>, DecodeError> {
    // Cheap test first: an envelope is a JSON object.
    if !body.trim_ascii_start().starts_with(b"{") {
        return Ok(None);
    }
    let Ok(raw) = serde_json::from_slice::<Raw<'_>>(body) else {
        return Ok(None);
    };
    if !matches!(&raw.kind, Some(Text::Str(kind)) if kind == "Notification")
        || (raw.message_id.is_none() && raw.topic_arn.is_none())
    {
        return Ok(None);
    }
    let malformed = |what: &str| DecodeError::MalformedSns(what.to_string());
    let message = match raw.message {
        Some(Text::Str(message)) => message,
        Some(Text::Other) => return Err(malformed("`Message` is not a string")),
        None => return Err(malformed("no `Message` field")),
    };
    let topic_arn = match raw.topic_arn {
        Some(Text::Str(arn)) => arn,
        Some(Text::Other) => return Err(malformed("`TopicArn` is not a string")),
        None => return Err(malformed("no `TopicArn` field")),
    };
    let mut attributes = Attributes::new();
    match raw.attributes {
        None => {}
        Some(Fields::Other) => return Err(malformed("`MessageAttributes` is not an object")),
        Some(Fields::Map(fields)) => {
            for (name, field) in fields {
                let (Some(Text::Str(data_type)), Some(Text::Str(value))) =
                    (field.data_type, field.value)
                else {
                    return Err(DecodeError::MalformedSns(format!(
                        "attribute `{name}` lacks a string Type or Value"
                    )));
                };
                attributes.insert(
                    name.into_owned(),
                    Attribute {
                        data_type: data_type.into_owned(),
                        value: value.into_owned(),
                    },
                );
            }
        }
    }
    let timestamp_ms = match raw.timestamp {
        Some(Text::Str(t)) => super::parse_rfc3339_ms(&t),
        _ => None,
    };
    Ok(Some(Notification {
        topic_arn,
        message,
        attributes,
        timestamp_ms,
    }))
}

/// The fields of a JSON object an envelope is recognised and read by; the others are skipped.
#[derive(serde::Deserialize)]
struct Raw<'a> {
    #[serde(rename = "Type", borrow, default)]
    kind: Option<Text<'a>>,
    #[serde(rename = "MessageId", borrow, default)]
    message_id: Option<Text<'a>>,
    #[serde(rename = "TopicArn", borrow, default)]
    topic_arn: Option<Text<'a>>,
    #[serde(rename = "Message", borrow, default)]
    message: Option<Text<'a>>,
    #[serde(rename = "MessageAttributes", borrow, default)]
    attributes: Option<Fields<'a>>,
    #[serde(rename = "Timestamp", borrow, default)]
    timestamp: Option<Text<'a>>,
}

/// A JSON value read as text when it is a string (borrowed when it has no escapes), else
/// skipped.
enum Text<'a> {
    Str(Cow<'a, str>),
    Other,
}

/// `MessageAttributes`: an object of `{"Type", "Value"}` objects, or something else.
enum Fields<'a> {
    Map(Vec<(Cow<'a, str>, Field<'a>)>),
    Other,
}

/// One entry of `MessageAttributes`: its `Type` and `Value` if it is an object.
#[derive(Default)]
struct Field<'a> {
    data_type: Option<Text<'a>>,
    value: Option<Text<'a>>,
}

/// A JSON value read for its shape, never failing on a type: what a string or an object
/// gives, and [`Shape::other`] for anything else (skipped without being built).
trait Shape<'de>: Sized {
    fn other() -> Self;

    fn text(_: Cow<'de, str>) -> Self {
        Self::other()
    }

    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Self::other())
    }
}

impl<'de: 'a, 'a> Shape<'de> for Text<'a> {
    fn other() -> Self {
        Text::Other
    }

    fn text(text: Cow<'de, str>) -> Self {
        Text::Str(text)
    }
}

impl<'de: 'a, 'a> Shape<'de> for Fields<'a> {
    fn other() -> Self {
        Fields::Other
    }

    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut fields = Vec::new();
        while let Some(name) = map.next_key::<Text<'a>>()? {
            let field = map.next_value::<Field<'a>>()?;
            // JSON object keys are always strings.
            if let Text::Str(name) = name {
                fields.push((name, field));
            }
        }
        Ok(Fields::Map(fields))
    }
}

impl<'de: 'a, 'a> Shape<'de> for Field<'a> {
    fn other() -> Self {
        Field::default()
    }

    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut field = Field::default();
        while let Some(key) = map.next_key::<Text<'a>>()? {
            let value = map.next_value::<Text<'a>>()?;
            match key {
                Text::Str(k) if k == "Type" => field.data_type = Some(value),
                Text::Str(k) if k == "Value" => field.value = Some(value),
                _ => {}
            }
        }
        Ok(field)
    }
}

macro_rules! deserialize_by_shape {
    ($($t:ident),*) => {$(
        impl<'de: 'a, 'a> Deserialize<'de> for $t<'a> {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_any(ShapeVisitor(PhantomData))
            }
        }
    )*};
}

deserialize_by_shape!(Text, Fields, Field);

struct ShapeVisitor<T>(PhantomData<T>);

impl<'de, T: Shape<'de>> Visitor<'de> for ShapeVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<T, E> {
        Ok(T::text(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        Ok(T::text(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<T, E> {
        Ok(T::text(Cow::Owned(v)))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<T, E> {
        Ok(T::other())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<T, E> {
        Ok(T::other())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<T, E> {
        Ok(T::other())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<T, E> {
        Ok(T::other())
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Ok(T::other())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(T::other())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::object(map)
    }
}
