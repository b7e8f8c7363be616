//! The message a handler receives.

use crate::ffi::{AttributeFfi, MessageFfi};
use crate::payload::{self, MegaPayload, Payload, PayloadError, PayloadKind};

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

    /// The payload bytes as published, after the host undid the transport encoding: a binary
    /// body arrives as its raw bytes (it travels as base64), a BSON-encoded body as JSON text.
    pub fn body(&self) -> &'a [u8] {
        self.raw.body.as_slice()
    }

    /// The body as UTF-8 text, if it is valid UTF-8.
    pub fn body_str(&self) -> Option<&'a str> {
        std::str::from_utf8(self.body()).ok()
    }

    /// Deserialize the body as JSON into any `serde` type (`serde_json::Value` works too).
    /// BSON-encoded bodies work too: the host hands them over as JSON text.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(self.body())
    }

    /// The body classified: its [`PayloadKind`], how it travelled, and the parsed JSON for
    /// JSON and MEGA bodies. Parses the body on every call: call once and keep the result.
    pub fn payload(&self) -> Payload {
        payload::inspect(self.body(), self.attribute(payload::CONTENT_TYPE_ATTRIBUTE))
    }

    /// What the body holds: JSON, MEGA, text or binary.
    pub fn payload_kind(&self) -> PayloadKind {
        self.payload().kind
    }

    /// Whether the body travelled BSON-encoded (it is handed over as JSON text either way).
    pub fn is_bson(&self) -> bool {
        self.payload().encoding == payload::Encoding::Bson
    }

    /// The body as a JSON value, for JSON and MEGA bodies.
    pub fn json_value(&self) -> Result<serde_json::Value, PayloadError> {
        let payload = self.payload();
        payload
            .json
            .ok_or(PayloadError::NotJson { kind: payload.kind })
    }

    /// The body as a MEGA event, with typed `event`, `object` and `extra` sections.
    ///
    /// ```
    /// use iniesta_plugin_api::{Context, Handler, HandlerResult, Message, Outcome, PayloadKind};
    ///
    /// struct Carts;
    ///
    /// impl Handler for Carts {
    ///     fn handle(&self, message: &Message<'_>, ctx: &Context<'_>) -> HandlerResult {
    ///         match message.payload_kind() {
    ///             PayloadKind::Mega => {
    ///                 let mega = message.mega()?; // typed event, object and extra
    ///                 let cart = mega.object.and_then(|o| o.id).unwrap_or_default();
    ///                 let quantity = mega.event.attribute("quantity").cloned();
    ///                 ctx.info(&format!("{} on cart {cart}: {quantity:?}", mega.event.name));
    ///             }
    ///             PayloadKind::Json => {
    ///                 let user = message.json_path("user.id"); // Option<serde_json::Value>
    ///                 ctx.info(&format!("user {user:?}"));
    ///             }
    ///             PayloadKind::Text => ctx.info(message.body_str().unwrap_or_default()),
    ///             PayloadKind::Binary => ctx.info(&format!("{} bytes", message.body().len())),
    ///         }
    ///         Ok(Outcome::Ack)
    ///     }
    /// }
    ///
    /// use iniesta_plugin_api::testing::{Harness, TestMessage, TestOutcome};
    /// let body = serde_json::json!({
    ///     "protocol": "mega", "version": 1,
    ///     "event": {"name": "item.added", "domain": "shopping_cart", "quantity": 5},
    ///     "object": {"type": "shopping_cart", "id": "c1", "current": {}}
    /// });
    /// let result = Harness::new(Carts).call(&TestMessage::new("Cart.Updated.shop").json(body));
    /// assert_eq!(result.outcome, TestOutcome::Ack);
    /// assert!(result.logged("item.added on cart c1: Some(Number(5))"));
    /// ```
    pub fn mega(&self) -> Result<MegaPayload, PayloadError> {
        MegaPayload::from_value(&self.json_value()?)
    }

    /// The JSON value at a dotted path from the body's root (`"object.current.user_id"`,
    /// `"items.0.price"`; numeric segments index arrays). `None` when the body is not JSON or
    /// the path leads nowhere.
    pub fn json_path(&self, path: &str) -> Option<serde_json::Value> {
        let value = self.json_value().ok()?;
        payload::json_path(&value, path).cloned()
    }

    /// The value of attribute `name`, if present.
    pub fn attribute(&self, name: &str) -> Option<&'a str> {
        self.raw
            .attributes
            .iter()
            .find(|a| a.name.as_str() == name)
            .map(|a| a.value.as_str())
    }

    /// The W3C trace context of this handler run (`00-{trace id}-{span id}-{flags}`), when the
    /// host traces (`[tracing]` in `iniesta.toml`): send it as the `traceparent` header of
    /// your own outgoing calls so they join the trace. Events published through the host's
    /// context carry it on by themselves. (It is the message's `traceparent` attribute, which
    /// the host sets to the run's span.)
    pub fn traceparent(&self) -> Option<&'a str> {
        self.attribute("traceparent")
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
