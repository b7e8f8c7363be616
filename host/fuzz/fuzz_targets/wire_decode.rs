//! The wire decoder on every delivery shape: raw (body plus SQS attributes), SNS-wrapped
//! (a notification envelope, attributes inside), plain, binary and BSON (base64 with
//! `iniesta_content_type`, or BSON sniffed without it), MEGA; then what the host reads from a
//! decoded message before any handler runs (the payload kind, MEGA sections, the media type).
//! Input: the framing of `iniesta_fuzz::frame`.
#![no_main]

use iniesta_fuzz::{decode, frame, Context, EVENT_KEY};
use iniesta_plugin_api::payload::{MegaPayload, PayloadKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = frame(data);
    let Ok(envelope) = decode(input.context, input.body, &input.attributes) else {
        return;
    };
    // Routing comes from what the queue delivered: an event attribute that came with the
    // message is the event, whatever the body says; on a raw queue the body is never unwrapped.
    if let Some(delivered) = input.attributes.get(EVENT_KEY) {
        assert_eq!(
            envelope.event, delivered.value,
            "a body cannot override the delivered event"
        );
    }
    if matches!(input.context, Context::Raw) {
        assert_ne!(
            envelope.delivery,
            iniesta::wire::Delivery::SnsWrapped,
            "a raw queue never unwraps"
        );
    }
    let payload = envelope.payload();
    assert_eq!(
        payload.json.is_some(),
        matches!(payload.kind, PayloadKind::Json | PayloadKind::Mega),
        "JSON and MEGA bodies, and only they, carry their parsed value"
    );
    if let Some(json) = &payload.json {
        let _ = MegaPayload::from_value(json);
    }
    let _ = iniesta::route::media_type_of(&envelope);
});
