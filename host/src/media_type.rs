//! Media types on messages: where iniesta reads them (routing's `media_types`) and how it
//! writes them for consumers that need one (microcosm-pubsub).
//!
//! A message's media type is its `media_type` attribute, else the body's top-level
//! `media_type` field, else the body's `mediaType` field (microcosm-pubsub writes that one
//! in the JSON body, and its consumer reads it only there). [`stamp`] writes both the body
//! field and the attribute, as microcosm's producer does, into a JSON object body; it never
//! rewrites any other body.

use crate::wire::{Attribute, Attributes, Envelope};

/// The attribute holding a media type (microcosm's producer sets it too).
pub const ATTRIBUTE: &str = "media_type";

/// The top-level body field microcosm-pubsub reads the media type from (required there).
pub const MICROCOSM_FIELD: &str = "mediaType";

/// Body fields read when there is no attribute, in order.
pub const BODY_FIELDS: [&str; 2] = [ATTRIBUTE, MICROCOSM_FIELD];

/// The message's media type, normalised ([`normal`]), and where it came from
/// (``attribute `media_type` ``, ``body field `media_type` ``, ``body field `mediaType` ``).
pub fn of(envelope: &Envelope) -> Option<(String, &'static str)> {
    if let Some(attribute) = envelope.attributes.get(ATTRIBUTE) {
        return Some((normal(&attribute.value), "attribute `media_type`"));
    }
    let json = envelope.payload().json.as_ref()?;
    [
        (BODY_FIELDS[0], "body field `media_type`"),
        (BODY_FIELDS[1], "body field `mediaType`"),
    ]
    .into_iter()
    .find_map(|(field, source)| {
        json.get(field)
            .and_then(|v| v.as_str())
            .map(|text| (normal(text), source))
    })
}

/// Lower case, parameters such as `; charset=utf-8` dropped.
pub fn normal(text: &str) -> String {
    text.split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Why a media type could not be written into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StampError {
    /// Only a JSON object body can carry the field.
    #[error("the body is not a JSON object, so it cannot carry `mediaType` (microcosm-pubsub reads JSON object bodies only)")]
    NotJsonObject,
    /// The body or the attribute already names another media type.
    #[error("the message already has the media type `{found}` (its {place})")]
    Conflict {
        /// The media type found.
        found: String,
        /// `body field mediaType` or `media_type attribute`.
        place: &'static str,
    },
}

/// Write `media_type` into a JSON object body as `mediaType` and into the `media_type`
/// attribute, each unless already there with the same value. The body's bytes are kept: the
/// field is inserted after the opening brace. Returns the new body; `Err` when the body is
/// not a JSON object or the message names another media type (nothing is changed then).
pub fn stamp(
    body: &[u8],
    attributes: &mut Attributes,
    media_type: &str,
) -> Result<Vec<u8>, StampError> {
    let Ok(serde_json::Value::Object(object)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return Err(StampError::NotJsonObject);
    };
    let in_body = match object.get(MICROCOSM_FIELD) {
        None => None,
        Some(serde_json::Value::String(found)) if found == media_type => Some(()),
        Some(other) => {
            return Err(StampError::Conflict {
                found: other
                    .as_str()
                    .map_or_else(|| other.to_string(), str::to_string),
                place: "body field mediaType",
            })
        }
    };
    match attributes.get(ATTRIBUTE) {
        Some(found) if found.value != media_type => {
            return Err(StampError::Conflict {
                found: found.value.clone(),
                place: "media_type attribute",
            })
        }
        Some(_) => {}
        None => {
            attributes.insert(ATTRIBUTE.to_string(), Attribute::string(media_type));
        }
    }
    if in_body.is_some() {
        return Ok(body.to_vec());
    }
    // The body parsed as an object, so its first non-blank byte is `{`.
    let open = body
        .iter()
        .position(|b| *b == b'{')
        .ok_or(StampError::NotJsonObject)?;
    let field = format!(
        "{}:{}{}",
        serde_json::Value::from(MICROCOSM_FIELD),
        serde_json::Value::from(media_type),
        if object.is_empty() { "" } else { "," }
    );
    let mut out = Vec::with_capacity(body.len() + field.len());
    out.extend_from_slice(&body[..=open]);
    out.extend_from_slice(field.as_bytes());
    out.extend_from_slice(&body[open + 1..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "application/vnd.globality.pubsub._.created.order";

    fn stamped(body: &str) -> Result<(String, Attributes), StampError> {
        let mut attributes = Attributes::new();
        let out = stamp(body.as_bytes(), &mut attributes, T)?;
        Ok((String::from_utf8(out).expect("utf-8"), attributes))
    }

    #[test]
    fn writes_the_field_and_keeps_the_rest_byte_for_byte() {
        let (body, attributes) = stamped(r#" {"uri": "u", "n": 1.50}"#).expect("stamped");
        assert_eq!(
            body,
            format!(r#" {{"mediaType":"{T}","uri": "u", "n": 1.50}}"#)
        );
        assert_eq!(attributes[ATTRIBUTE].value, T);
        let (body, _) = stamped("{ }").expect("stamped");
        assert_eq!(body, format!(r#"{{"mediaType":"{T}" }}"#));
        let value: serde_json::Value = serde_json::from_str(&body).expect("still JSON");
        assert_eq!(value[MICROCOSM_FIELD], T);
        let same = format!(r#"{{"mediaType": "{T}"}}"#);
        assert_eq!(stamped(&same).expect("same").0, same);
    }

    #[test]
    fn refuses_other_bodies_and_other_media_types() {
        for body in ["text", "[1]", "\"s\"", "1", ""] {
            assert_eq!(
                stamped(body).err(),
                Some(StampError::NotJsonObject),
                "{body}"
            );
        }
        assert!(matches!(
            stamped(r#"{"mediaType": "a/b"}"#),
            Err(StampError::Conflict { .. })
        ));
        assert!(matches!(
            stamped(r#"{"mediaType": 1}"#),
            Err(StampError::Conflict { .. })
        ));
        let mut attributes = Attributes::new();
        attributes.insert(ATTRIBUTE.into(), Attribute::string("a/b"));
        assert!(matches!(
            stamp(b"{}", &mut attributes, T),
            Err(StampError::Conflict { .. })
        ));
        assert_eq!(attributes[ATTRIBUTE].value, "a/b", "nothing changed");
    }
}
