//! Payload inspection (plugin-api `payload::inspect`: JSON, text, binary, BSON, MEGA) and the
//! host's body decoding under each content type (base64, BSON to JSON, BSON sniffing).
//! Input: the content type on the first line (empty for none), then the body.
#![no_main]

use iniesta::wire::payload::{bson_to_json, decode_body};
use iniesta::wire::{Attribute, Attributes};
use iniesta_plugin_api::payload::{inspect, json_path, MegaPayload, CONTENT_TYPE_ATTRIBUTE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (first, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&[][..], data),
    };
    let content_type = std::str::from_utf8(first).ok().filter(|t| !t.is_empty());
    let payload = inspect(body, content_type);
    if let Some(json) = &payload.json {
        if let Ok(mega) = MegaPayload::from_value(json) {
            let _ = mega.event.attribute("email");
        }
        let _ = json_path(json, "event.attributes.0.x");
    }
    let _ = bson_to_json(body);
    let mut attributes = Attributes::new();
    if let Some(content_type) = content_type {
        attributes.insert(
            CONTENT_TYPE_ATTRIBUTE.to_string(),
            Attribute::string(content_type),
        );
    }
    if let Ok(decoded) = decode_body(body.to_vec(), &mut attributes) {
        let _ = inspect(
            &decoded,
            attributes
                .get(CONTENT_TYPE_ATTRIBUTE)
                .map(|a| a.value.as_str()),
        );
    }
});
