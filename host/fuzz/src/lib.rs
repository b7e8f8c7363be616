//! Shared pieces of the fuzz targets: a plain-text framing that seeds can be written in by
//! hand (and that libFuzzer mutates well), and the one call into `iniesta::wire::decode`.
//!
//! A framed input is a header and a body separated by the first empty line:
//!
//! ```text
//! sns                                  <- first header line: the delivery context (raw|sns)
//! iniesta_pass String Order.Created.shop  <- then one attribute per line: name, type, value
//! iniesta_content_type String application/bson
//!                                      <- empty line
//! {"id": 1}                            <- the body, every byte after the empty line
//! ```
//!
//! Inputs without an empty line are all body (no header).

use iniesta::wire::{Attribute, Attributes, DecodeError, Envelope};

/// The event key every target uses (the Python iniesta's).
pub const EVENT_KEY: &str = "iniesta_pass";

/// How the queue receives: from a raw-delivery subscription (or straight sends), or from an
/// envelope-delivering SNS subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// `raw` (also the default when the header does not say).
    Raw,
    /// `sns`.
    Envelope,
}

/// A framed input, split.
#[derive(Debug)]
pub struct Frame<'a> {
    /// The first header line, if there is a header.
    pub context: Context,
    /// The header's attribute lines.
    pub attributes: Attributes,
    /// Everything after the first empty line (or the whole input).
    pub body: &'a [u8],
}

/// Split an input into header and body (see the module docs).
pub fn frame(data: &[u8]) -> Frame<'_> {
    let split = data.windows(2).position(|w| w == b"\n\n");
    let (header, body) = match split {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (&[][..], data),
    };
    let header = String::from_utf8_lossy(header);
    let mut lines = header.lines();
    let context = match lines.next().map(str::trim) {
        Some("sns") => Context::Envelope,
        _ => Context::Raw,
    };
    let attributes = lines
        .filter_map(|line| {
            let mut parts = line.splitn(3, ' ');
            let name = parts.next()?;
            let data_type = parts.next()?;
            let value = parts.next().unwrap_or("");
            Some((
                name.to_string(),
                Attribute {
                    data_type: data_type.to_string(),
                    value: value.to_string(),
                },
            ))
        })
        .collect();
    Frame {
        context,
        attributes,
        body,
    }
}

/// Split an input at the first line that is exactly `---` (the second part may be empty).
pub fn two_parts(data: &[u8]) -> (&[u8], &[u8]) {
    let marker = b"\n---\n";
    match data.windows(marker.len()).position(|w| w == marker) {
        Some(at) => (&data[..at], &data[at + marker.len()..]),
        None => (data, &[][..]),
    }
}

/// The topic the `sns` context takes envelopes from: the seeds' envelopes name it, so they are
/// unwrapped, and libFuzzer mutates it into foreign topics that must be refused.
pub const ENVELOPE_TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:global";

/// The one call into the wire decoder, so a change of its signature is one line here: `raw`
/// is a raw-delivery queue (a body is only a body), `sns` a subscription that delivers SNS
/// envelopes from [`ENVELOPE_TOPIC`].
pub fn decode(
    context: Context,
    body: &[u8],
    attributes: &Attributes,
) -> Result<Envelope, DecodeError> {
    let context = match context {
        Context::Raw => iniesta::wire::DeliveryContext::raw(EVENT_KEY),
        Context::Envelope => {
            iniesta::wire::DeliveryContext::envelopes_from(EVENT_KEY, ENVELOPE_TOPIC)
        }
    };
    iniesta::wire::decode("fuzz-message", body, attributes, 1_700_000_000_000, context)
}
