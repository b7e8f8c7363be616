//! The message a handler receives.

use crate::ffi::{AttributeFfi, MessageFfi};

/// A received message, borrowed for the duration of one handler call.
#[derive(Clone, Copy)]
pub struct Message<'a> {
    raw: &'a MessageFfi,
}

/// One message attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribute<'a> {
    /// Attribute name.
    pub name: &'a str,
    /// `String`, `Number`, `Binary` (value in base64) or a custom subtype.
    pub data_type: &'a str,
    /// The value as text.
    pub value: &'a str,
}

impl<'a> Message<'a> {
    #[doc(hidden)]
    pub fn from_ffi(raw: &'a MessageFfi) -> Self {
        Self { raw }
    }

    /// The broker's message id.
    pub fn id(&self) -> &'a str {
        self.raw.id.as_str()
    }

    /// The event name, e.g. `Order.Created.shop` (empty if the message carried none).
    pub fn event(&self) -> &'a str {
        self.raw.event.as_str()
    }

    /// The body bytes exactly as published.
    pub fn body(&self) -> &'a [u8] {
        self.raw.body.as_slice()
    }

    /// The body as UTF-8 text, if it is valid UTF-8.
    pub fn body_str(&self) -> Option<&'a str> {
        std::str::from_utf8(self.body()).ok()
    }

    /// Deserialize the body as JSON into any `serde` type (`serde_json::Value` works too).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(self.body())
    }

    /// The value of attribute `name`, if present.
    pub fn attribute(&self, name: &str) -> Option<&'a str> {
        self.raw
            .attributes
            .iter()
            .find(|a| a.name.as_str() == name)
            .map(|a| a.value.as_str())
    }

    /// Every attribute, in the order the broker gave them.
    pub fn attributes(&self) -> impl Iterator<Item = Attribute<'a>> + 'a {
        self.raw
            .attributes
            .iter()
            .map(|a: &'a AttributeFfi| Attribute {
                name: a.name.as_str(),
                data_type: a.data_type.as_str(),
                value: a.value.as_str(),
            })
    }

    /// How many times this message has been delivered, this delivery included (1 on first).
    pub fn receive_count(&self) -> u32 {
        self.raw.receive_count
    }

    /// When the message was sent, in milliseconds since the Unix epoch (0 if unknown).
    pub fn sent_timestamp_ms(&self) -> u64 {
        self.raw.sent_timestamp_ms
    }
}

impl std::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id())
            .field("event", &self.event())
            .field("body_len", &self.body().len())
            .field("receive_count", &self.receive_count())
            .finish()
    }
}
