//! The FFI-safe types that cross the host/plugin boundary.
#![allow(non_local_definitions)] // abi_stable 0.11 sabi_trait expansion
//!
//! Plugin authors never use this module directly: [`crate::Handler`], [`crate::Message`],
//! [`crate::Context`] and [`crate::export_plugin!`] wrap it. The host uses it to load plugins.
//! Every type here is checked by abi_stable when a plugin is loaded: a plugin built against a
//! plugin-api with a different layout or an incompatible version is refused, never called.

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};
pub use async_ffi::BorrowingFfiFuture;

/// One message attribute as it crosses the boundary.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct AttributeFfi {
    /// Attribute name, e.g. `iniesta_pass`.
    pub name: RString,
    /// SQS/SNS data type: `String`, `Number`, `Binary` (base64 in `value`), or a custom
    /// `String.x`/`Number.x` type.
    pub data_type: RString,
    /// The value as text.
    pub value: RString,
}

/// A received message as it crosses the boundary.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct MessageFfi {
    /// Broker message id (the SQS `MessageId`, or the SNS one for wrapped messages).
    pub id: RString,
    /// The event name, e.g. `Order.Created.shop`; empty when the message carried none.
    pub event: RString,
    /// The message body as published (the SNS `Message` for wrapped messages), with its
    /// transport encoding undone: raw bytes for binary bodies, JSON text for BSON bodies.
    pub body: RVec<u8>,
    /// Message attributes, `iniesta_pass` and `version` included.
    pub attributes: RVec<AttributeFfi>,
    /// How many times the broker has delivered this message, this delivery included.
    pub receive_count: u32,
    /// When the message was first sent, in milliseconds since the Unix epoch (0 if unknown).
    pub sent_timestamp_ms: u64,
}

/// What a handler call came to, as it crosses the boundary.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub enum OutcomeFfi {
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
        reason: RString,
    },
    /// The handler returned an error: retried after the queue's visibility timeout.
    Failed {
        /// The error's text.
        reason: RString,
    },
    /// The handler panicked; the panic was caught inside the plugin. Treated as `Failed`.
    Panicked {
        /// The panic message.
        message: RString,
    },
}

/// The services the host offers a handler while it runs.
#[sabi_trait]
pub trait HostContextFfi: Send + Sync {
    /// Publish an event through the host; returns the message id or an error text.
    fn publish(
        &self,
        event: RStr<'_>,
        body: RSlice<'_, u8>,
        attributes: RSlice<'_, AttributeFfi>,
    ) -> RResult<RString, RString>;

    /// Log a line through the host's logger. `level`: 1 error, 2 warn, 3 info, 4 debug, 5 trace.
    fn log(&self, level: u8, message: RStr<'_>);

    /// Publish an event through the host without blocking the caller: the future the host
    /// returns is polled by the async handler that asked (added in 0.4.0).
    #[sabi(last_prefix_field)]
    fn publish_async<'a>(
        &'a self,
        event: RStr<'a>,
        body: RSlice<'a, u8>,
        attributes: RSlice<'a, AttributeFfi>,
    ) -> BorrowingFfiFuture<'a, RResult<RString, RString>>;
}

/// An owned host context trait object.
pub type HostContextBox = HostContextFfi_TO<'static, RBox<()>>;

/// Which of the three handler traits a handler was written against: the host calls it the
/// way it was written (added in 0.4.0).
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerShape {
    /// [`crate::Handler`]: one blocking call per message, on the host's blocking pool.
    Sync,
    /// [`crate::AsyncHandler`]: one future per message, polled on the host's async workers.
    Async,
    /// [`crate::BatchHandler`]: one blocking call per batch of messages.
    Batch,
}

/// A constructed handler, as the host holds it. Every handler answers all three calls (an
/// async one blocks on its future when called with `handle`, a batch one takes a single
/// message as a batch of one, a sync one's `handle_async` is ready at once); [`shape`]
/// tells which one it was written for. None of them ever unwinds: the plugin side catches
/// panics.
///
/// [`shape`]: HandlerFfi::shape
#[sabi_trait]
pub trait HandlerFfi: Send + Sync {
    /// Handle one message, blocking the calling thread until it is done.
    fn handle(&self, message: &MessageFfi, ctx: &HostContextBox) -> OutcomeFfi;

    /// Which handler trait the plugin implemented.
    fn shape(&self) -> HandlerShape;

    /// Handle one message as a future; dropping it cancels the call.
    fn handle_async<'a>(
        &'a self,
        message: &'a MessageFfi,
        ctx: &'a HostContextBox,
    ) -> BorrowingFfiFuture<'a, OutcomeFfi>;

    /// Handle several messages in one call: one outcome per message, in their order.
    #[sabi(last_prefix_field)]
    fn handle_batch(
        &self,
        messages: RSlice<'_, MessageFfi>,
        ctx: &HostContextBox,
    ) -> RVec<OutcomeFfi>;
}

/// An owned handler trait object.
pub type HandlerBox = HandlerFfi_TO<'static, RBox<()>>;

/// An event on its way out, as it crosses the boundary to an egress plugin.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct EventFfi {
    /// The event's id, the same on every attempt to deliver it (usable for deduplication).
    pub id: RString,
    /// The full event name, e.g. `Order.Created.shop`.
    pub name: RString,
    /// The body as published.
    pub body: RVec<u8>,
    /// The attributes, the event key (`iniesta_pass`) and `version` included.
    pub attributes: RVec<AttributeFfi>,
}

/// A constructed egress (publisher), as the host holds it.
#[sabi_trait]
pub trait EgressFfi: Send + Sync {
    /// Deliver one event; returns the destination's message id (or an empty text) or an
    /// error text. Never unwinds: the plugin side catches panics.
    #[sabi(last_prefix_field)]
    fn publish(&self, event: &EventFfi) -> RResult<RString, RString>;
}

/// An owned egress trait object.
pub type EgressBox = EgressFfi_TO<'static, RBox<()>>;

/// What became of a message an ingress submitted, once the bound handlers ran.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub enum IngressOutcomeFfi {
    /// Every binding that took it acked: acknowledge it at the source.
    Ack,
    /// Not handled now (a handler failed or asked for a retry, no binding takes it, the host
    /// is stopping): redeliver it after `after_secs` if the source can.
    Retry {
        /// The delay a handler asked for (0: as soon as the source redelivers).
        after_secs: u32,
        /// Why.
        reason: RString,
    },
    /// Never going to work (a handler dead-lettered it, its body fails a schema): do not
    /// redeliver.
    DeadLetter {
        /// Why.
        reason: RString,
    },
}

/// The host side of an ingress: where received messages go.
#[sabi_trait]
pub trait IngressSinkFfi: Send + Sync {
    /// Hand one received message to the host's bindings and wait until they ran. Call it
    /// from a plain thread (not from inside an async runtime): it blocks.
    fn submit(&self, event: &EventFfi) -> IngressOutcomeFfi;

    /// Log a line through the host's logger. `level`: 1 error, 2 warn, 3 info, 4 debug, 5 trace.
    #[sabi(last_prefix_field)]
    fn log(&self, level: u8, message: RStr<'_>);
}

/// An owned sink trait object.
pub type IngressSinkBox = IngressSinkFfi_TO<'static, RBox<()>>;

/// A started ingress (consumer), as the host holds it.
#[sabi_trait]
pub trait IngressFfi: Send + Sync {
    /// Stop consuming: return once no more messages will be submitted. Never unwinds.
    #[sabi(last_prefix_field)]
    fn stop(&self);
}

/// An owned ingress trait object.
pub type IngressBox = IngressFfi_TO<'static, RBox<()>>;

/// How a plugin's panics behave: what its build's `panic` profile setting was.
///
/// `export_plugin!` records it from the plugin's own compilation. A plugin built with
/// `panic = "abort"` ends the whole process on its first panic (the export wrapper cannot
/// catch it), so the host runs such a plugin only in an isolated worker process.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanicStrategy {
    /// `panic = "unwind"` (Rust's default): panics are caught at the boundary.
    Unwind,
    /// `panic = "abort"`: a panic aborts the process the plugin runs in.
    Abort,
}

/// The root module every iniesta plugin exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// The plugin's name, used in `iniesta.toml` bindings (`plugin = "..."`).
    pub name: RStr<'static>,
    /// The plugin crate's own version.
    pub version: RStr<'static>,
    /// The plugin-api version the plugin was built against.
    pub abi_version: RStr<'static>,
    /// The names of the handlers this plugin can construct.
    pub handlers: RSlice<'static, RStr<'static>>,
    /// Construct handler `name` with the binding's config (JSON text).
    pub new_handler:
        extern "C" fn(name: RStr<'_>, config: RStr<'_>) -> RResult<HandlerBox, RString>,
    /// The names of the egresses (publishers) this plugin can construct.
    pub egresses: RSlice<'static, RStr<'static>>,
    /// Construct egress `name` with its config (JSON text: the `[[egress]]` entry's `config`
    /// table merged over its credential profile).
    pub new_egress: extern "C" fn(name: RStr<'_>, config: RStr<'_>) -> RResult<EgressBox, RString>,
    /// The names of the ingresses (consumers) this plugin can start.
    pub ingresses: RSlice<'static, RStr<'static>>,
    /// Start ingress `name` with its config (JSON text), submitting what it receives to `sink`.
    pub start_ingress: extern "C" fn(
        name: RStr<'_>,
        config: RStr<'_>,
        sink: IngressSinkBox,
    ) -> RResult<IngressBox, RString>,
    /// The panic strategy the plugin was compiled with (added in 0.3.0).
    #[sabi(last_prefix_field)]
    pub panic: PanicStrategy,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "iniesta_plugin";
    const NAME: &'static str = "iniesta_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
