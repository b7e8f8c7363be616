//! The host context a handler gets: publish through the host, log through the host.
//!
//! A handler that publishes an event its own binding consumes feeds itself: each message it
//! handles brings another (a loop). The host cannot see that before running it — a plugin
//! declares its handlers, not what they publish — so the context watches: when a handler
//! publishes an event (as it goes out, `{event}.{service}`) that its binding's own event
//! patterns match, it logs a warning (the first time, then at most once a minute per binding
//! with the count since), counts `iniesta_handler_self_publishes_total{binding}`, and records
//! it in [`self_publishes`] for the host's state file, which `iniesta config check` and
//! `iniesta plugins` read.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RSlice, RStr, RString};
use iniesta_plugin_api::ffi::{
    AttributeFfi, BorrowingFfiFuture, HostContextBox, HostContextFfi, HostContextFfi_TO,
};

use crate::egress::{Destination, Publisher};
use crate::wire::{Attribute, Attributes};

/// Given an event as a handler publishes it: its full name as it goes out
/// (`{event}.{service}`) when the handler's own binding consumes that, else `None`.
pub type Consumes = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// At most one self-publish warning per binding this often (the first one at once).
pub const SELF_PUBLISH_WARN_EVERY: Duration = Duration::from_secs(60);

/// A binding whose handler published an event the binding itself consumes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SelfPublish {
    /// The binding's label, e.g. `bindings[0] (greeter/greeter)`.
    pub binding: String,
    /// The last such event, as published (`{event}.{service}`).
    pub event: String,
    /// How many times so far.
    pub count: u64,
}

/// Every self-publish this process has seen, by binding label.
static SELF_PUBLISHES: Mutex<BTreeMap<String, SelfPublish>> = Mutex::new(BTreeMap::new());

/// The self-publishes this process has seen, by binding.
pub fn self_publishes() -> Vec<SelfPublish> {
    crate::mutex::lock(&SELF_PUBLISHES)
        .values()
        .cloned()
        .collect()
}

/// Forget the self-publishes seen so far (the bindings or their plugins changed: a loop that
/// is still there shows up again at its next publish).
pub fn forget_self_publishes() {
    crate::mutex::lock(&SELF_PUBLISHES).clear();
}

/// The rate limit of one binding's self-publish warnings.
#[derive(Debug, Default)]
struct Warned {
    last: Option<Instant>,
    since: u64,
}

/// What one binding's handler can reach in the host.
pub struct HostContext {
    publisher: Option<Arc<Publisher>>,
    runtime: Option<tokio::runtime::Handle>,
    plugin: String,
    binding: String,
    /// The binding's name: the `binding` label of its metrics.
    name: String,
    consumes: Option<Consumes>,
    warned: Mutex<Warned>,
}

impl HostContext {
    /// A boxed context for a binding. Without a publisher (e.g. `config check`), publishing
    /// returns an error. `consumes` tells the events the binding takes, to notice a handler
    /// publishing into its own binding.
    pub fn boxed(
        publisher: Option<Arc<Publisher>>,
        runtime: Option<tokio::runtime::Handle>,
        plugin: &str,
        binding: &str,
        name: &str,
        consumes: Option<Consumes>,
    ) -> HostContextBox {
        HostContextFfi_TO::from_value(
            HostContext {
                publisher,
                runtime,
                plugin: plugin.to_string(),
                binding: binding.to_string(),
                name: name.to_string(),
                consumes,
                warned: Mutex::new(Warned::default()),
            },
            TD_Opaque,
        )
    }

    /// Note a published event `full` (as it went out) that this binding consumes itself.
    fn self_published(&self, full: &str) {
        metrics::counter!(crate::ops::metrics::SELF_PUBLISHES, "binding" => self.name.clone())
            .increment(1);
        let count = {
            let mut all = crate::mutex::lock(&SELF_PUBLISHES);
            let entry = all
                .entry(self.binding.clone())
                .or_insert_with(|| SelfPublish {
                    binding: self.binding.clone(),
                    event: full.to_string(),
                    count: 0,
                });
            entry.event = full.to_string();
            entry.count += 1;
            entry.count
        };
        let mut warned = crate::mutex::lock(&self.warned);
        warned.since += 1;
        let due = warned
            .last
            .is_none_or(|last| last.elapsed() >= SELF_PUBLISH_WARN_EVERY);
        if due {
            tracing::warn!(
                plugin = %self.plugin, binding = %self.binding, event = %full,
                since_last_warning = warned.since, total = count,
                "a handler published an event its own binding consumes: every message it handles brings another (a loop); bind it to events it does not publish, or publish another name"
            );
            warned.last = Some(Instant::now());
            warned.since = 0;
        }
    }
}

impl HostContext {
    /// Publish `event` to the topic for the handler (noting a self-publish first), as the
    /// answer crosses the boundary. Both of the context's publish calls come here.
    async fn publish_to_topic(
        &self,
        event: &str,
        body: &[u8],
        attributes: &[AttributeFfi],
    ) -> RResult<RString, RString> {
        if let Some(full) = self.consumes.as_ref().and_then(|c| c(event)) {
            self.self_published(&full);
        }
        let Some(publisher) = &self.publisher else {
            return RResult::RErr("publishing is not available here (no broker)".into());
        };
        let attributes: Attributes = attributes
            .iter()
            .map(|a| {
                (
                    a.name.to_string(),
                    Attribute {
                        data_type: a.data_type.to_string(),
                        value: a.value.to_string(),
                    },
                )
            })
            .collect();
        match publisher
            .publish(Destination::Topic, event, body.to_vec(), attributes)
            .await
        {
            Ok(published) => RResult::ROk(published.message_id.into()),
            Err(e) => {
                tracing::warn!(plugin = %self.plugin, binding = %self.binding, error = %e, "handler publish failed");
                RResult::RErr(e.to_string().into())
            }
        }
    }
}

impl HostContextFfi for HostContext {
    fn publish(
        &self,
        event: RStr<'_>,
        body: RSlice<'_, u8>,
        attributes: RSlice<'_, AttributeFfi>,
    ) -> RResult<RString, RString> {
        let Some(runtime) = &self.runtime else {
            return RResult::RErr("publishing is not available here (no broker)".into());
        };
        let publish = || {
            runtime.block_on(self.publish_to_topic(
                event.as_str(),
                body.as_slice(),
                attributes.as_slice(),
            ))
        };
        // Handlers run on the blocking pool, where blocking is allowed; an `inline = true`
        // handler (or an async one that publishes with the blocking call) runs on an async
        // worker of the (multi-threaded) host runtime, which must first hand its other tasks
        // to another thread (a plain block_on there would panic). On a blocking-pool thread
        // block_in_place just runs the closure.
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(publish),
            _ => publish(),
        }
    }

    /// Polled by an async handler on one of the host's async workers: the host's runtime is
    /// the current one there, so the publish runs in place.
    fn publish_async<'a>(
        &'a self,
        event: RStr<'a>,
        body: RSlice<'a, u8>,
        attributes: RSlice<'a, AttributeFfi>,
    ) -> BorrowingFfiFuture<'a, RResult<RString, RString>> {
        BorrowingFfiFuture::new(self.publish_to_topic(
            event.as_str(),
            body.as_slice(),
            attributes.as_slice(),
        ))
    }

    fn log(&self, level: u8, message: RStr<'_>) {
        // The handler's span already names the message, event and binding.
        let (plugin, message) = (&self.plugin, message.as_str());
        match level {
            1 => tracing::error!(plugin = %plugin, "{message}"),
            2 => tracing::warn!(plugin = %plugin, "{message}"),
            3 => tracing::info!(plugin = %plugin, "{message}"),
            4 => tracing::debug!(plugin = %plugin, "{message}"),
            _ => tracing::trace!(plugin = %plugin, "{message}"),
        }
    }
}
