//! Payload kinds on the wire: how JSON, text, binary and BSON bodies travel as SNS/SQS text.
//!
//! SNS and SQS carry text, so:
//!
//! - JSON, MEGA and text bodies travel as they are, with no extra attribute (the Python
//!   iniesta's format).
//! - A binary body (bytes that are not UTF-8) travels as base64 text with the String attribute
//!   `iniesta_content_type = application/octet-stream`.
//! - A BSON-encoded JSON or MEGA body (`iniesta publish --binary`) travels as base64 text of
//!   the BSON document with `iniesta_content_type = application/bson`.
//!
//! On receive the host undoes that before anything else sees the body: a binary body becomes
//! its bytes again, a BSON body becomes JSON text (relaxed extended JSON for BSON-only types),
//! so routing, schemas and handlers all read JSON. A base64 body without the attribute that
//! decodes to a well-formed BSON document (length prefix equal to its size, null-terminated,
//! parseable; what sqs-mega's Python publisher sends with `binary_encoding=True`) is decoded
//! the same way and the attribute is added, so handlers can tell.
//!
//! The kind a handler sees (JSON, MEGA, text, binary) is decided from those bytes and the
//! attribute by [`iniesta_plugin_api::payload::inspect`], the same code plugins use.

use base64::Engine as _;
use iniesta_plugin_api::payload::{
    Encoding, BINARY_CONTENT_TYPE, BSON_CONTENT_TYPE, CONTENT_TYPE_ATTRIBUTE,
};

use super::{Attribute, Attributes, DecodeError, EncodeError};

/// BSON documents nested deeper than this are refused, on publish and on receive: the bson
/// crate converts recursively, and a hostile message must not exhaust a worker thread's stack
/// (a debug build overflows 2 MiB somewhere past 100 levels).
pub const MAX_BSON_DEPTH: usize = 32;

/// The encoding the content-type attribute names.
pub fn encoding_of(attributes: &Attributes) -> Encoding {
    Encoding::from_content_type(content_type(attributes))
}

/// The value of the content-type attribute, if any.
pub fn content_type(attributes: &Attributes) -> Option<&str> {
    attributes
        .get(CONTENT_TYPE_ATTRIBUTE)
        .map(|a| a.value.as_str())
}

/// Make a body fit the wire: base64 for binary and BSON bodies, adding the content-type
/// attribute for binary ones that lack it. A body declared BSON must be a BSON document.
pub fn encode_body(body: Vec<u8>, attributes: &mut Attributes) -> Result<Vec<u8>, EncodeError> {
    match encoding_of(attributes) {
        Encoding::Bson => {
            if let Err(problem) = bson_to_json(&body) {
                return Err(EncodeError::BadBody(format!(
                    "`{CONTENT_TYPE_ATTRIBUTE}` says {BSON_CONTENT_TYPE} but the body is not a BSON document ({problem}); publish JSON with --binary to have it encoded"
                )));
            }
            Ok(base64_text(&body))
        }
        Encoding::Base64 => Ok(base64_text(&body)),
        Encoding::Plain => {
            if std::str::from_utf8(&body).is_ok() {
                return Ok(body);
            }
            attributes.insert(
                CONTENT_TYPE_ATTRIBUTE.to_string(),
                Attribute::string(BINARY_CONTENT_TYPE),
            );
            Ok(base64_text(&body))
        }
    }
}

/// Undo [`encode_body`] on a received body (see the module docs).
pub fn decode_body(body: Vec<u8>, attributes: &mut Attributes) -> Result<Vec<u8>, DecodeError> {
    match encoding_of(attributes) {
        Encoding::Base64 => from_base64(&body).ok_or_else(|| {
            DecodeError::BadBody(format!(
                "`{CONTENT_TYPE_ATTRIBUTE}` says {BINARY_CONTENT_TYPE} but the body is not base64"
            ))
        }),
        Encoding::Bson => {
            let bytes = from_base64(&body).ok_or_else(|| {
                DecodeError::BadBody(format!(
                    "`{CONTENT_TYPE_ATTRIBUTE}` says {BSON_CONTENT_TYPE} but the body is not base64"
                ))
            })?;
            let value = bson_to_json(&bytes).map_err(|problem| {
                DecodeError::BadBody(format!(
                    "`{CONTENT_TYPE_ATTRIBUTE}` says {BSON_CONTENT_TYPE} but the body is not a BSON document: {problem}"
                ))
            })?;
            Ok(value.to_string().into_bytes())
        }
        Encoding::Plain => match sniff_bson(&body) {
            Some(value) => {
                attributes.insert(
                    CONTENT_TYPE_ATTRIBUTE.to_string(),
                    Attribute::string(BSON_CONTENT_TYPE),
                );
                Ok(value.to_string().into_bytes())
            }
            None => Ok(body),
        },
    }
}

/// Encode a JSON object as a BSON document (for `publish --binary`).
pub fn json_to_bson(value: &serde_json::Value) -> Result<Vec<u8>, String> {
    let serde_json::Value::Object(map) = value else {
        return Err("only a JSON object can be encoded as a BSON document".into());
    };
    if json_depth(value) > MAX_BSON_DEPTH {
        return Err(format!(
            "it is nested deeper than {MAX_BSON_DEPTH} levels, the limit for BSON bodies"
        ));
    }
    let document = bson::Document::try_from(map.clone()).map_err(|e| e.to_string())?;
    document.to_vec().map_err(|e| e.to_string())
}

/// How deeply a JSON value nests objects and arrays (a scalar is 0), without recursion.
fn json_depth(value: &serde_json::Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &serde_json::Value>> = match value {
            serde_json::Value::Object(map) => Box::new(map.values()),
            serde_json::Value::Array(items) => Box::new(items.iter()),
            _ => continue,
        };
        deepest = deepest.max(depth + 1);
        stack.extend(children.map(|child| (child, depth + 1)));
    }
    deepest
}

/// Decode a BSON document into JSON (relaxed extended JSON for BSON-only types).
pub fn bson_to_json(bytes: &[u8]) -> Result<serde_json::Value, String> {
    let raw = bson::RawDocument::from_bytes(bytes).map_err(|e| e.to_string())?;
    check_depth(raw)?;
    let document = bson::Document::from_reader(bytes).map_err(|e| e.to_string())?;
    Ok(bson::Bson::Document(document).into_relaxed_extjson())
}

/// Refuse documents nested deeper than [`MAX_BSON_DEPTH`], walking without recursion.
fn check_depth(root: &bson::RawDocument) -> Result<(), String> {
    enum Container<'a> {
        Document(&'a bson::RawDocument),
        Array(&'a bson::RawArray),
    }
    let mut stack = vec![(Container::Document(root), 1usize)];
    while let Some((container, depth)) = stack.pop() {
        if depth > MAX_BSON_DEPTH {
            return Err(format!("nested deeper than {MAX_BSON_DEPTH} levels"));
        }
        let values: Vec<bson::RawBsonRef<'_>> = match container {
            Container::Document(document) => document
                .into_iter()
                .map(|element| element.map(|(_, value)| value))
                .collect::<Result<_, _>>(),
            Container::Array(array) => array.into_iter().collect::<Result<_, _>>(),
        }
        .map_err(|e| e.to_string())?;
        for value in values {
            match value {
                bson::RawBsonRef::Document(inner) => {
                    stack.push((Container::Document(inner), depth + 1))
                }
                bson::RawBsonRef::Array(inner) => stack.push((Container::Array(inner), depth + 1)),
                bson::RawBsonRef::JavaScriptCodeWithScope(code) => {
                    stack.push((Container::Document(code.scope), depth + 1))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// A body without a content type that is base64 of a well-formed BSON document, decoded.
fn sniff_bson(body: &[u8]) -> Option<serde_json::Value> {
    // Base64 of the smallest document (5 bytes) is 8 characters; JSON and ordinary text
    // fail the alphabet test at once.
    if body.len() < 8
        || !body.len().is_multiple_of(4)
        || !body
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    {
        return None;
    }
    let bytes = from_base64(body)?;
    bson_to_json(&bytes).ok()
}

fn base64_text(bytes: &[u8]) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .encode(bytes)
        .into_bytes()
}

fn from_base64(text: &[u8]) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim_ascii())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn binary_round_trip() {
        let bytes = vec![0u8, 159, 146, 150, 255, b'\n'];
        let mut attributes = Attributes::new();
        let wire = encode_body(bytes.clone(), &mut attributes).expect("encodes");
        assert!(std::str::from_utf8(&wire).is_ok(), "the wire carries text");
        assert_eq!(content_type(&attributes), Some(BINARY_CONTENT_TYPE));
        assert_eq!(decode_body(wire, &mut attributes).expect("decodes"), bytes);
        // Text stays as it is, with no attribute.
        let mut attributes = Attributes::new();
        assert_eq!(
            encode_body(b"plain".to_vec(), &mut attributes).expect("encodes"),
            b"plain"
        );
        assert!(attributes.is_empty());
    }

    #[test]
    fn bson_round_trip_and_sniffing() {
        let value = json!({"protocol": "mega", "event": {"name": "x", "n": 5, "f": 1.5}, "list": [1, "a", null]});
        let bson = json_to_bson(&value).expect("to bson");
        let mut attributes = Attributes::new();
        attributes.insert(
            CONTENT_TYPE_ATTRIBUTE.into(),
            Attribute::string(BSON_CONTENT_TYPE),
        );
        let wire = encode_body(bson.clone(), &mut attributes).expect("encodes");
        let decoded = decode_body(wire.clone(), &mut attributes).expect("decodes");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&decoded).expect("json"),
            value
        );
        // Without the attribute (sqs-mega's publisher), the BSON is recognised and marked.
        let mut bare = Attributes::new();
        let decoded = decode_body(wire, &mut bare).expect("decodes");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&decoded).expect("json"),
            value
        );
        assert_eq!(content_type(&bare), Some(BSON_CONTENT_TYPE));
        // Text that merely looks like base64 stays text.
        let mut bare = Attributes::new();
        assert_eq!(
            decode_body(b"dGVzdA==".to_vec(), &mut bare).expect("decodes"),
            b"dGVzdA=="
        );
        assert!(bare.is_empty());
        assert!(json_to_bson(&json!([1])).is_err());
    }

    #[test]
    fn bad_bodies_are_decode_errors() {
        let mut attributes = Attributes::new();
        attributes.insert(
            CONTENT_TYPE_ATTRIBUTE.into(),
            Attribute::string(BSON_CONTENT_TYPE),
        );
        assert!(decode_body(b"not base64!".to_vec(), &mut attributes.clone()).is_err());
        assert!(decode_body(b"AAAA".to_vec(), &mut attributes.clone()).is_err());
        assert!(encode_body(b"{}".to_vec(), &mut attributes).is_err());
        let mut binary = Attributes::new();
        binary.insert(
            CONTENT_TYPE_ATTRIBUTE.into(),
            Attribute::string(BINARY_CONTENT_TYPE),
        );
        assert!(decode_body(b"@@@".to_vec(), &mut binary).is_err());
    }

    #[test]
    fn deep_bson_is_refused() {
        let mut value = json!(1);
        for _ in 0..(MAX_BSON_DEPTH + 5) {
            value = json!({ "a": value });
        }
        assert!(json_to_bson(&value)
            .expect_err("too deep")
            .contains("deeper"));
        // A document built elsewhere is refused on receive too.
        let mut document = bson::Document::new();
        for _ in 0..(MAX_BSON_DEPTH + 5) {
            let mut outer = bson::Document::new();
            outer.insert("a", document);
            document = outer;
        }
        let bytes = document.to_vec().expect("bytes");
        assert!(bson_to_json(&bytes)
            .expect_err("too deep")
            .contains("deeper"));
        let mut value = json!(1);
        for _ in 0..(MAX_BSON_DEPTH - 1) {
            value = json!({ "a": value });
        }
        let bytes = json_to_bson(&value).expect("at the limit");
        assert_eq!(bson_to_json(&bytes).expect("decodes"), value);
    }

    proptest::proptest! {
        #[test]
        fn decoding_never_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512), kind in 0..3u8) {
            let mut attributes = Attributes::new();
            let content_type = [None, Some(BSON_CONTENT_TYPE), Some(BINARY_CONTENT_TYPE)][kind as usize];
            if let Some(t) = content_type {
                attributes.insert(CONTENT_TYPE_ATTRIBUTE.into(), Attribute::string(t));
            }
            let _ = decode_body(body.clone(), &mut attributes.clone());
            let _ = bson_to_json(&body);
            // Base64 of arbitrary bytes exercises the BSON sniffing too.
            let _ = decode_body(base64_text(&body), &mut attributes);
        }
    }
}
