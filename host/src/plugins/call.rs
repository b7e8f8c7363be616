//! Calling a handler across the plugin boundary. The rest of the host sees its own types
//! ([`Envelope`] in, [`Outcome`] out); the conversion to and from iniesta-plugin-api's FFI
//! types (`MessageFfi`, `AttributeFfi`, `OutcomeFfi`) lives here and nowhere else on the
//! handler path.

use abi_stable::std_types::{RString, RVec};
use iniesta_plugin_api::ffi::{AttributeFfi, HandlerBox, HostContextBox, MessageFfi, OutcomeFfi};

use crate::wire::{Attributes, Envelope};

/// What a handler's call answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled: the message may be deleted once every binding has acked.
    Ack,
    /// Try again after `after_secs` seconds.
    Retry {
        /// Delay before the message becomes visible again.
        after_secs: u32,
    },
    /// Never going to work: move to the dead-letter queue with this reason.
    DeadLetter {
        /// Why, recorded with the dead letter.
        reason: String,
    },
    /// The handler returned an error: retried after the queue's visibility timeout.
    Failed {
        /// The error's text.
        reason: String,
    },
    /// The handler panicked (caught inside the plugin). Treated as `Failed`.
    Panicked {
        /// The panic message.
        message: String,
    },
}

impl From<OutcomeFfi> for Outcome {
    fn from(outcome: OutcomeFfi) -> Outcome {
        match outcome {
            OutcomeFfi::Ack => Outcome::Ack,
            OutcomeFfi::Retry { after_secs } => Outcome::Retry { after_secs },
            OutcomeFfi::DeadLetter { reason } => Outcome::DeadLetter {
                reason: reason.into_string(),
            },
            OutcomeFfi::Failed { reason } => Outcome::Failed {
                reason: reason.into_string(),
            },
            OutcomeFfi::Panicked { message } => Outcome::Panicked {
                message: message.into_string(),
            },
        }
    }
}

/// A message converted once for the plugin boundary, shared by every binding's call.
#[derive(Debug)]
pub struct CallMessage(MessageFfi);

impl CallMessage {
    /// A decoded message as handlers receive it, delivered for the `receive_count`th time.
    pub fn new(envelope: &Envelope, receive_count: u32) -> CallMessage {
        Self::with_attributes(envelope, &envelope.attributes, receive_count)
    }

    /// The same with other attributes (a traced call's `traceparent` is its run's).
    pub fn with_attributes(
        envelope: &Envelope,
        attributes: &Attributes,
        receive_count: u32,
    ) -> CallMessage {
        CallMessage(MessageFfi {
            id: RString::from(envelope.message_id.as_str()),
            event: RString::from(envelope.event.as_str()),
            body: RVec::from(envelope.body.clone()),
            attributes: attributes_ffi(attributes),
            receive_count,
            sent_timestamp_ms: envelope.sent_timestamp_ms,
        })
    }
}

thread_local! {
    /// Set by an isolated handler's proxy, on the calling thread, when the worker process died
    /// under the call: the FFI answer it returns is then only a placeholder.
    static CRASH: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Tell [`handle`], running on this thread, that the call's worker process died (`reason`):
/// an isolated handler's proxy calls this right before it returns.
pub fn note_crash(reason: String) {
    CRASH.with(|c| *c.borrow_mut() = Some(reason));
}

/// Call `handler` with `context` on this thread and convert its answer. Plugins catch their
/// own panics, so this returns whatever the handler did, or, for an `isolated` handler, `Err`
/// with the reason when the worker process running it died under the call (a crash, not the
/// handler's answer). An in-process handler's call never looks at the crash note.
pub fn handle(
    handler: &HandlerBox,
    context: &HostContextBox,
    delivery: &CallMessage,
    isolated: bool,
) -> Result<Outcome, String> {
    if !isolated {
        return Ok(handler.handle(&delivery.0, context).into());
    }
    // Nothing left over from a call that did not go through here.
    CRASH.with(|c| c.borrow_mut().take());
    let outcome = handler.handle(&delivery.0, context).into();
    match CRASH.with(|c| c.borrow_mut().take()) {
        Some(reason) => Err(reason),
        None => Ok(outcome),
    }
}

/// Message attributes as they cross the plugin boundary (handlers' messages and egresses'
/// events alike).
pub fn attributes_ffi(attributes: &Attributes) -> RVec<AttributeFfi> {
    attributes
        .iter()
        .map(|(name, a)| AttributeFfi {
            name: name.as_str().into(),
            data_type: a.data_type.as_str().into(),
            value: a.value.as_str().into(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Attribute, Attributes};

    #[test]
    fn a_delivery_carries_the_envelope_and_outcomes_convert_both_ways_of_the_boundary() {
        let mut attributes = Attributes::new();
        attributes.insert("k".into(), Attribute::string("v"));
        attributes.insert("iniesta_pass".into(), Attribute::string("Order.Placed"));
        let envelope = crate::wire::decode(
            "m-1",
            b"{}",
            &attributes,
            42,
            crate::wire::DeliveryContext::raw("iniesta_pass"),
        )
        .expect("decodes");
        let CallMessage(ffi) = CallMessage::new(&envelope, 3);
        assert_eq!(ffi.id.as_str(), "m-1");
        assert_eq!(ffi.event.as_str(), "Order.Placed");
        assert_eq!(ffi.body.as_slice(), b"{}");
        assert_eq!(ffi.receive_count, 3);
        assert_eq!(ffi.sent_timestamp_ms, 42);
        assert!(ffi
            .attributes
            .iter()
            .any(|a| a.name.as_str() == "k" && a.value.as_str() == "v"));
        assert_eq!(
            Outcome::from(OutcomeFfi::DeadLetter {
                reason: "bad".into()
            }),
            Outcome::DeadLetter {
                reason: "bad".into()
            }
        );
        assert_eq!(
            Outcome::from(OutcomeFfi::Retry { after_secs: 7 }),
            Outcome::Retry { after_secs: 7 }
        );
    }
}
