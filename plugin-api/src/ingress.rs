//! Ingress plugins: consumers that feed received messages into the host's bindings.

use std::sync::Arc;

use abi_stable::std_types::{RStr, RString, RVec};

use crate::ffi::{AttributeFfi, EventFfi, IngressOutcomeFfi, IngressSinkBox};

/// What became of a submitted message once the host's bindings ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngressOutcome {
    /// Every binding that took it acked: acknowledge it at the source.
    Ack,
    /// Not handled now: redeliver after `after_secs` if the source can.
    Retry {
        /// The delay a handler asked for (0: as soon as the source redelivers).
        after_secs: u32,
        /// Why (a handler error, no binding, the host stopping...).
        reason: String,
    },
    /// Never going to work: do not redeliver.
    DeadLetter {
        /// Why.
        reason: String,
    },
}

impl IngressOutcome {
    #[doc(hidden)]
    pub fn from_ffi(raw: IngressOutcomeFfi) -> Self {
        match raw {
            IngressOutcomeFfi::Ack => IngressOutcome::Ack,
            IngressOutcomeFfi::Retry { after_secs, reason } => IngressOutcome::Retry {
                after_secs,
                reason: reason.into_string(),
            },
            IngressOutcomeFfi::DeadLetter { reason } => IngressOutcome::DeadLetter {
                reason: reason.into_string(),
            },
        }
    }
}

/// A message received from outside, for [`IngressSink::submit`].
#[derive(Debug, Clone, Default)]
pub struct Incoming {
    /// Its id at the source (a message id, a sequence number); the host makes one up when
    /// empty.
    pub id: String,
    /// The full event name bindings match on, e.g. `Order.Created.shop`.
    pub event: String,
    /// The body.
    pub body: Vec<u8>,
    /// Attributes as `(name, data type, value)`; data type `String`, `Number` or `Binary`.
    pub attributes: Vec<(String, String, String)>,
}

/// Where an ingress hands what it receives: the host's routing table and bindings. Cheap to
/// clone; share it with the threads that consume.
#[derive(Clone)]
pub struct IngressSink {
    raw: Arc<IngressSinkBox>,
}

impl IngressSink {
    #[doc(hidden)]
    pub fn from_ffi(raw: IngressSinkBox) -> Self {
        Self { raw: Arc::new(raw) }
    }

    /// Hand one message to the host and wait until every binding that takes it ran.
    ///
    /// Blocks: call it from a plain thread, never from inside an async runtime's task (with
    /// tokio: `runtime.block_on(next message)` on your own thread, then `submit` outside it).
    pub fn submit(&self, message: &Incoming) -> IngressOutcome {
        let event = EventFfi {
            id: RString::from(message.id.as_str()),
            name: RString::from(message.event.as_str()),
            body: RVec::from(message.body.as_slice()),
            attributes: message
                .attributes
                .iter()
                .map(|(name, data_type, value)| AttributeFfi {
                    name: RString::from(name.as_str()),
                    data_type: RString::from(data_type.as_str()),
                    value: RString::from(value.as_str()),
                })
                .collect(),
        };
        IngressOutcome::from_ffi(self.raw.submit(&event))
    }

    /// Log an error line through the host's logger (tagged with the ingress).
    pub fn error(&self, message: &str) {
        self.raw.log(1, RStr::from_str(message));
    }

    /// Log a warning line.
    pub fn warn(&self, message: &str) {
        self.raw.log(2, RStr::from_str(message));
    }

    /// Log an info line.
    pub fn info(&self, message: &str) {
        self.raw.log(3, RStr::from_str(message));
    }

    /// Log a debug line.
    pub fn debug(&self, message: &str) {
        self.raw.log(4, RStr::from_str(message));
    }
}

/// A running consumer. Its constructor takes a [`crate::Config`] and an [`IngressSink`],
/// starts consuming (on its own threads: the host's async runtime is not reachable from a
/// plugin) and returns; the host calls [`Ingress::stop`] when it shuts down.
pub trait Ingress: Send + Sync + 'static {
    /// Stop consuming and return once nothing more will be submitted.
    fn stop(&self);
}
