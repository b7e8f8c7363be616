//! What the host publishes, it can read back: `wire::encode` then `wire::decode` (raw
//! delivery) gives the same event and the same body (BSON bodies come back as their JSON).
//! Structured input (`arbitrary`): an event name, a body (bytes, text, or a BSON document built
//! from fields), and extra attributes, the content type among them.
#![no_main]

use arbitrary::Arbitrary;
use iniesta::wire::payload::{bson_to_json, encoding_of, json_to_bson};
use iniesta::wire::{encode, Attribute, Attributes, SizeLimit};
use iniesta_fuzz::{decode, Context, EVENT_KEY};
use iniesta_plugin_api::payload::{
    Encoding, BINARY_CONTENT_TYPE, BSON_CONTENT_TYPE, CONTENT_TYPE_ATTRIBUTE,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Body {
    Bytes(Vec<u8>),
    Text(String),
    Bson(Vec<(String, Scalar)>),
}

#[derive(Debug, Arbitrary)]
enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
}

#[derive(Debug, Arbitrary)]
enum ContentType {
    None,
    Binary,
    Bson,
    Other(String),
}

#[derive(Debug, Arbitrary)]
struct Input {
    event: String,
    service: String,
    content_type: ContentType,
    extra: Vec<(String, bool, String)>,
    body: Body,
}

fuzz_target!(|input: Input| {
    let body = match input.body {
        Body::Bytes(bytes) => bytes,
        Body::Text(text) => text.into_bytes(),
        Body::Bson(fields) => {
            let object: serde_json::Map<String, serde_json::Value> = fields
                .into_iter()
                .map(|(name, value)| {
                    let value = match value {
                        Scalar::Text(text) => serde_json::Value::String(text),
                        Scalar::Int(n) => n.into(),
                        Scalar::Float(f) => f.into(),
                        Scalar::Bool(b) => b.into(),
                        Scalar::Null => serde_json::Value::Null,
                    };
                    (name, value)
                })
                .collect();
            match json_to_bson(&serde_json::Value::Object(object)) {
                Ok(bytes) => bytes,
                Err(_) => return,
            }
        }
    };
    let mut extra: Attributes = input
        .extra
        .into_iter()
        .map(|(name, number, value)| {
            let attribute = if number {
                Attribute::number(value)
            } else {
                Attribute::string(value)
            };
            (name, attribute)
        })
        .collect();
    let content_type = match input.content_type {
        ContentType::None => None,
        ContentType::Binary => Some(BINARY_CONTENT_TYPE.to_string()),
        ContentType::Bson => Some(BSON_CONTENT_TYPE.to_string()),
        ContentType::Other(text) => Some(text),
    };
    if let Some(content_type) = content_type {
        extra.insert(
            CONTENT_TYPE_ATTRIBUTE.to_string(),
            Attribute::string(content_type),
        );
    }
    let Ok(out) = encode(
        &input.event,
        &input.service,
        EVENT_KEY,
        body.clone(),
        extra,
        &SizeLimit::sns(),
    ) else {
        return;
    };
    // On a raw-delivery queue a body is only a body, whatever it looks like (an SNS envelope
    // included): what the host encoded always decodes to itself.
    let decoded = decode(Context::Raw, &out.body, &out.attributes)
        .expect("a message the host encoded decodes");
    assert_eq!(decoded.event, out.event);
    match encoding_of(&out.attributes) {
        Encoding::Bson => {
            let json = bson_to_json(&body).expect("encode checked the BSON");
            assert_eq!(decoded.body, json.to_string().into_bytes());
        }
        Encoding::Base64 => assert_eq!(decoded.body, body),
        Encoding::Plain => {
            // Text that is base64 of a BSON document is read as BSON (what sqs-mega's Python
            // publisher sends without the attribute), and marked so.
            if encoding_of(&decoded.attributes) != Encoding::Bson {
                assert_eq!(decoded.body, body);
            }
        }
    }
});
