//! Payload kinds and typed readers: JSON objects, plain text, binary blobs and MEGA events.
//!
//! The host hands a handler the payload's bytes after undoing any transport encoding: a
//! binary body arrives as its raw bytes (it travelled as base64 text), and a BSON-encoded
//! JSON or MEGA body arrives as JSON text (it travelled as base64 BSON). The
//! [`CONTENT_TYPE_ATTRIBUTE`] attribute says which transport encoding was used, so
//! [`inspect`] can tell the payload kind from the bytes and that attribute alone.
//!
//! A MEGA event (<https://github.com/mega-distributed/event-mega>) is a JSON object with
//! `"protocol": "mega"`, an `event` section (name, domain, version, timestamp, subject,
//! publisher, attributes), an optional `object` section (type, id, current, previous) and
//! `extra`. [`MegaPayload`] reads one.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// The message attribute that names a body's transport encoding. Absent for JSON and text
/// bodies, which travel as they are.
pub const CONTENT_TYPE_ATTRIBUTE: &str = "iniesta_content_type";

/// [`CONTENT_TYPE_ATTRIBUTE`] value of a BSON-encoded JSON or MEGA body (base64 on the wire).
pub const BSON_CONTENT_TYPE: &str = "application/bson";

/// [`CONTENT_TYPE_ATTRIBUTE`] value of a binary body (base64 on the wire).
pub const BINARY_CONTENT_TYPE: &str = "application/octet-stream";

/// What a message body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadKind {
    /// A JSON object or array that is not a MEGA event.
    Json,
    /// A MEGA event: a JSON object with `"protocol": "mega"`.
    Mega,
    /// UTF-8 text that is not a JSON object or array.
    Text,
    /// Bytes: published as binary, or not valid UTF-8.
    Binary,
}

impl PayloadKind {
    /// `json`, `mega`, `text` or `binary`.
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadKind::Json => "json",
            PayloadKind::Mega => "mega",
            PayloadKind::Text => "text",
            PayloadKind::Binary => "binary",
        }
    }

    /// Whether the body is JSON (a plain JSON object/array or a MEGA event).
    pub fn is_json(self) -> bool {
        matches!(self, PayloadKind::Json | PayloadKind::Mega)
    }
}

impl std::fmt::Display for PayloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a body travelled on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// As it is: JSON or text.
    Plain,
    /// Base64 of the raw bytes (binary bodies).
    Base64,
    /// Base64 of a BSON document (JSON and MEGA bodies published with `--binary`).
    Bson,
}

impl Encoding {
    /// `plain`, `base64` or `bson`.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Plain => "plain",
            Encoding::Base64 => "base64",
            Encoding::Bson => "bson",
        }
    }

    /// The encoding a [`CONTENT_TYPE_ATTRIBUTE`] value names (`Plain` for none or another).
    pub fn from_content_type(content_type: Option<&str>) -> Encoding {
        match content_type.map(str::trim) {
            Some(t) if t.eq_ignore_ascii_case(BSON_CONTENT_TYPE) => Encoding::Bson,
            Some(t) if t.eq_ignore_ascii_case(BINARY_CONTENT_TYPE) => Encoding::Base64,
            _ => Encoding::Plain,
        }
    }
}

/// A body, classified: its kind, how it travelled, and the parsed JSON for JSON and MEGA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// What the body holds.
    pub kind: PayloadKind,
    /// How it travelled.
    pub encoding: Encoding,
    /// The parsed body, for [`PayloadKind::Json`] and [`PayloadKind::Mega`].
    pub json: Option<Value>,
}

/// Classify a body as the host delivers it, given its [`CONTENT_TYPE_ATTRIBUTE`] value.
///
/// Binary when the content type says so or the bytes are not UTF-8; MEGA for a JSON object
/// with `"protocol": "mega"`; JSON for any other JSON object or array; text otherwise
/// (including JSON scalars such as `42` or `"hi"`).
pub fn inspect(body: &[u8], content_type: Option<&str>) -> Payload {
    let encoding = Encoding::from_content_type(content_type);
    let binary = Payload {
        kind: PayloadKind::Binary,
        encoding,
        json: None,
    };
    if encoding == Encoding::Base64 {
        return binary;
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return binary;
    };
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        if let Ok(value) = serde_json::from_str::<Value>(text) {
            let kind = if is_mega(&value) {
                PayloadKind::Mega
            } else {
                PayloadKind::Json
            };
            return Payload {
                kind,
                encoding,
                json: Some(value),
            };
        }
    }
    Payload {
        kind: PayloadKind::Text,
        encoding,
        json: None,
    }
}

/// Whether a JSON value is a MEGA payload (`"protocol": "mega"`).
pub fn is_mega(value: &Value) -> bool {
    value.get("protocol").and_then(Value::as_str) == Some("mega")
}

/// The value at a dotted path (`"object.current.user_id"`, `"items.0.price"`): each segment
/// names an object field, or indexes an array when it is a number. `None` if any step is
/// missing; an empty path is the value itself.
pub fn json_path<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    if path.is_empty() {
        return Some(value);
    }
    path.split('.').try_fold(value, step)
}

/// One step of a path: an object field, or an array index.
pub fn step<'v>(value: &'v Value, segment: &str) -> Option<&'v Value> {
    match value {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    }
}

/// Why a body could not be read the way a handler asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadError {
    /// The body is not JSON (it is text or binary).
    NotJson {
        /// What it is instead.
        kind: PayloadKind,
    },
    /// The body is JSON but not a MEGA event (no `"protocol": "mega"`).
    NotMega,
    /// The body claims to be MEGA but its sections do not fit the protocol.
    InvalidMega(String),
}

impl std::fmt::Display for PayloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PayloadError::NotJson { kind } => write!(f, "the body is {kind}, not JSON"),
            PayloadError::NotMega => {
                f.write_str("the body is JSON but not a MEGA event (no \"protocol\": \"mega\")")
            }
            PayloadError::InvalidMega(e) => write!(f, "invalid MEGA event: {e}"),
        }
    }
}

impl std::error::Error for PayloadError {}

/// A MEGA event payload: `{"protocol": "mega", "version": 1, "event": {..}, "object": {..},
/// "extra": {..}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MegaPayload {
    /// Always `"mega"`.
    pub protocol: String,
    /// The protocol version (1 today).
    #[serde(default)]
    pub version: Option<u64>,
    /// What happened.
    pub event: MegaEvent,
    /// The object it happened to, with its current and previous state.
    #[serde(default)]
    pub object: Option<MegaObject>,
    /// Anything else the publisher added (channel, user agent, ...).
    #[serde(default, deserialize_with = "map_or_null")]
    pub extra: Map<String, Value>,
}

/// The `event` section of a MEGA payload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MegaEvent {
    /// The event's name, e.g. `item.added`.
    pub name: String,
    /// Its domain, e.g. `shopping_cart`.
    pub domain: Option<String>,
    /// The event's own schema version.
    pub version: Option<i64>,
    /// When it happened, as published (ISO 8601 text).
    pub timestamp: Option<String>,
    /// Who or what it is about, e.g. a user id (numbers are read as text).
    pub subject: Option<String>,
    /// The service that published it.
    pub publisher: Option<String>,
    /// Event attributes: the `attributes` object plus any other field of the section (as the
    /// MEGA publishers put extra keyword arguments there); `attributes` wins on a clash.
    pub attributes: Map<String, Value>,
}

impl MegaEvent {
    /// An event attribute by name.
    pub fn attribute(&self, name: &str) -> Option<&Value> {
        self.attributes.get(name)
    }
}

impl<'de> Deserialize<'de> for MegaEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            name: String,
            #[serde(default)]
            domain: Option<String>,
            #[serde(default)]
            version: Option<i64>,
            #[serde(default)]
            timestamp: Option<String>,
            #[serde(default, deserialize_with = "text_or_number")]
            subject: Option<String>,
            #[serde(default)]
            publisher: Option<String>,
            #[serde(default, deserialize_with = "map_or_null")]
            attributes: Map<String, Value>,
            #[serde(flatten)]
            other: Map<String, Value>,
        }
        let raw = Raw::deserialize(deserializer)?;
        let mut attributes = raw.other;
        attributes.extend(raw.attributes);
        Ok(MegaEvent {
            name: raw.name,
            domain: raw.domain,
            version: raw.version,
            timestamp: raw.timestamp,
            subject: raw.subject,
            publisher: raw.publisher,
            attributes,
        })
    }
}

/// The `object` section of a MEGA payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MegaObject {
    /// The object's type, e.g. `shopping_cart`.
    #[serde(default, rename = "type")]
    pub r#type: Option<String>,
    /// Its id (numbers are read as text).
    #[serde(default, deserialize_with = "text_or_number")]
    pub id: Option<String>,
    /// The object's own schema version.
    #[serde(default)]
    pub version: Option<i64>,
    /// Its state after the event.
    #[serde(default)]
    pub current: Value,
    /// Its state before the event, if given.
    #[serde(default)]
    pub previous: Option<Value>,
}

impl MegaPayload {
    /// Read a MEGA payload from a parsed JSON body.
    pub fn from_value(value: &Value) -> Result<MegaPayload, PayloadError> {
        if !is_mega(value) {
            return Err(PayloadError::NotMega);
        }
        MegaPayload::deserialize(value).map_err(|e| PayloadError::InvalidMega(e.to_string()))
    }
}

fn map_or_null<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Map<String, Value>, D::Error> {
    Ok(Option::<Map<String, Value>>::deserialize(deserializer)?.unwrap_or_default())
}

fn text_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected text or a number, got {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds() {
        assert_eq!(inspect(br#"{"a":1}"#, None).kind, PayloadKind::Json);
        assert_eq!(inspect(b" [1,2]", None).kind, PayloadKind::Json);
        assert_eq!(
            inspect(br#"{"protocol":"mega","event":{"name":"x"}}"#, None).kind,
            PayloadKind::Mega
        );
        assert_eq!(inspect(b"hello", None).kind, PayloadKind::Text);
        assert_eq!(inspect(b"42", None).kind, PayloadKind::Text);
        assert_eq!(inspect(b"{not json", None).kind, PayloadKind::Text);
        assert_eq!(inspect(&[0xff, 0xfe], None).kind, PayloadKind::Binary);
        let bin = inspect(b"{}", Some(BINARY_CONTENT_TYPE));
        assert_eq!(
            (bin.kind, bin.encoding),
            (PayloadKind::Binary, Encoding::Base64)
        );
        let bson = inspect(br#"{"a":1}"#, Some(BSON_CONTENT_TYPE));
        assert_eq!(
            (bson.kind, bson.encoding),
            (PayloadKind::Json, Encoding::Bson)
        );
    }

    #[test]
    fn paths() {
        let v = json!({"object": {"current": {"user_id": 5, "items": [{"p": "1"}]}}});
        assert_eq!(json_path(&v, "object.current.user_id"), Some(&json!(5)));
        assert_eq!(json_path(&v, "object.current.items.0.p"), Some(&json!("1")));
        assert_eq!(json_path(&v, "object.current.items.1.p"), None);
        assert_eq!(json_path(&v, "object.nope"), None);
        assert_eq!(json_path(&v, ""), Some(&v));
    }

    #[test]
    fn mega_reads_sections_and_folds_extra_event_fields_into_attributes() {
        let v = json!({
            "protocol": "mega", "version": 1,
            "event": {"name": "item.added", "domain": "shopping_cart", "version": 2,
                      "subject": 987650, "item_id": "x", "attributes": {"quantity": 5}},
            "object": {"type": "shopping_cart", "id": "c1", "current": {"user_id": 1}},
            "extra": null
        });
        let mega = MegaPayload::from_value(&v).expect("mega");
        assert_eq!(mega.event.name, "item.added");
        assert_eq!(mega.event.subject.as_deref(), Some("987650"));
        assert_eq!(mega.event.attribute("item_id"), Some(&json!("x")));
        assert_eq!(mega.event.attribute("quantity"), Some(&json!(5)));
        let object = mega.object.expect("object");
        assert_eq!(object.r#type.as_deref(), Some("shopping_cart"));
        assert_eq!(object.current["user_id"], json!(1));
        assert!(mega.extra.is_empty());
        assert_eq!(
            MegaPayload::from_value(&json!({"a": 1})),
            Err(PayloadError::NotMega)
        );
        assert!(matches!(
            MegaPayload::from_value(&json!({"protocol": "mega"})),
            Err(PayloadError::InvalidMega(_))
        ));
    }
}
