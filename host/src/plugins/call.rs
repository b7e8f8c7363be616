//! Calling a handler across the plugin boundary. The rest of the host sees its own types
//! ([`Envelope`] in, [`Outcome`] out); the conversion to and from iniesta-plugin-api's FFI
//! types (`MessageFfi`, `AttributeFfi`, `OutcomeFfi`) lives here and nowhere else on the
//! handler path.

use abi_stable::std_types::{RSlice, RString, RVec};
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

/// What one binding's call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallResult {
    /// The plugin's outcome.
    Outcome(Outcome),
    /// The call ran past its timeout; it was abandoned.
    TimedOut,
    /// The isolated worker process running the call died under it, or the blocking task
    /// failed (which should not happen: plugins catch their panics).
    Crashed(String),
}

/// Something that must live as long as the handler calls do, their abandoned threads
/// included (a message's in-flight slot): a timed-out handler keeps it until its thread
/// really returns, so stuck handlers cannot pile up threads.
pub type Hold = std::sync::Arc<dyn std::any::Any + Send + Sync>;

impl CallResult {
    /// A failed call's kind (as `retry.dead_letter_on` and the metrics' `result` name it) and
    /// text; `None` for an outcome the handler chose.
    pub fn failure(&self) -> Option<(&'static str, String)> {
        match self {
            CallResult::Outcome(Outcome::Failed { reason }) => Some(("error", reason.clone())),
            CallResult::Outcome(Outcome::Panicked { message }) => {
                Some(("panic", format!("panicked: {message}")))
            }
            CallResult::TimedOut => Some(("timeout", "timed out".to_string())),
            CallResult::Crashed(why) => Some(("crashed", format!("crashed: {why}"))),
            CallResult::Outcome(_) => None,
        }
    }
}

/// One message's place in a batch handler's batch (see `policy::batch`): the message, what
/// must live as long as the batch's call, and where its result goes.
pub struct BatchEntry {
    /// The message as the handler gets it.
    pub message: std::sync::Arc<CallMessage>,
    /// The message's in-flight slot.
    pub hold: Hold,
    /// Its binding's limit permit, when the binding has limits.
    pub permit: Option<crate::policy::Permit>,
    /// Where the message's result goes.
    pub reply: tokio::sync::oneshot::Sender<CallResult>,
}

/// A message converted once for the plugin boundary, shared by every binding's call.
#[derive(Debug)]
pub struct CallMessage(MessageFfi);

impl CallMessage {
    /// The message as it crosses the boundary (a batch is a slice of these).
    pub fn ffi(&self) -> &MessageFfi {
        &self.0
    }

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

/// Call an async `handler` with `context`: the future the plugin returns, converted. Dropping
/// it cancels the call. A panic in a poll is caught by the plugin; one that escapes anyway
/// (async-ffi turns it into a panic here) becomes `Panicked` rather than taking the message's
/// task down.
pub async fn handle_async(
    handler: &HandlerBox,
    context: &HostContextBox,
    delivery: &CallMessage,
) -> Outcome {
    use futures_util::FutureExt as _;
    let call = handler.handle_async(&delivery.0, context);
    match std::panic::AssertUnwindSafe(call).catch_unwind().await {
        Ok(outcome) => outcome.into(),
        Err(_) => Outcome::Panicked {
            message: "the handler's future panicked across the plugin boundary".into(),
        },
    }
}

/// Call a batch `handler` with `context` on this thread: one outcome per message, in order
/// (a plugin that answered with another count gets `Failed` for every message).
pub fn handle_batch(
    handler: &HandlerBox,
    context: &HostContextBox,
    batch: &[MessageFfi],
) -> Vec<Outcome> {
    let outcomes = handler.handle_batch(RSlice::from_slice(batch), context);
    if outcomes.len() != batch.len() {
        let reason = format!(
            "the batch handler returned {} outcomes for {} messages",
            outcomes.len(),
            batch.len()
        );
        return batch
            .iter()
            .map(|_| Outcome::Failed {
                reason: reason.clone(),
            })
            .collect();
    }
    outcomes.into_iter().map(Outcome::from).collect()
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
