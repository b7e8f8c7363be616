//! Egress plugins: publishers every published event fans out to (a file, a broker, ...).

use crate::ffi::EventFfi;
use crate::message::Attribute;

/// An event on its way out, borrowed for the duration of one `publish` call.
#[derive(Clone, Copy)]
pub struct Event<'a> {
    raw: &'a EventFfi,
}

impl<'a> Event<'a> {
    #[doc(hidden)]
    pub fn from_ffi(raw: &'a EventFfi) -> Self {
        Self { raw }
    }

    /// The event's id: the same on every attempt to deliver this event (a retry after a
    /// failure, a redelivery from the host's outbox), so a destination can deduplicate on it.
    pub fn id(&self) -> &'a str {
        self.raw.id.as_str()
    }

    /// The full event name, e.g. `Order.Created.shop`.
    pub fn name(&self) -> &'a str {
        self.raw.name.as_str()
    }

    /// The body as published.
    pub fn body(&self) -> &'a [u8] {
        self.raw.body.as_slice()
    }

    /// The body as UTF-8 text, if it is valid UTF-8.
    pub fn body_str(&self) -> Option<&'a str> {
        std::str::from_utf8(self.body()).ok()
    }

    /// Every attribute, the event key (`iniesta_pass`) and `version` included.
    pub fn attributes(&self) -> impl Iterator<Item = Attribute<'a>> + 'a {
        self.raw.attributes.iter().map(|a| Attribute {
            name: a.name.as_str(),
            data_type: a.data_type.as_str(),
            value: a.value.as_str(),
        })
    }

    /// One attribute's value by name.
    pub fn attribute(&self, name: &str) -> Option<&'a str> {
        self.raw
            .attributes
            .iter()
            .find(|a| a.name.as_str() == name)
            .map(|a| a.value.as_str())
    }
}

/// Any error an egress returns; the host retries the event with backoff and reports it.
pub type EgressError = Box<dyn std::error::Error + Send + Sync>;

/// A publisher the host fans every published event out to. Implement it on a plain Rust type
/// built by a constructor that takes a [`crate::Config`] (the `[[egress]]` entry's `config`
/// table merged over its credential profile).
///
/// The host calls `publish` on a blocking thread pool, possibly from several threads at once,
/// so the type must be `Send + Sync`. Blocking I/O is fine. Return `Ok` only once the
/// destination has the event: an error makes the host keep the event in its outbox and retry
/// it with backoff, so a destination that is down gets it when it is back.
pub trait Egress: Send + Sync + 'static {
    /// Deliver one event; returns the destination's id for it (empty if it has none).
    fn publish(&self, event: &Event<'_>) -> Result<String, EgressError>;
}
