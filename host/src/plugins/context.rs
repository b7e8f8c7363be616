//! The host context a handler gets: publish through the host, log through the host.

use std::sync::Arc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RSlice, RStr, RString};
use iniesta_plugin_api::ffi::{AttributeFfi, HostContextBox, HostContextFfi, HostContextFfi_TO};

use crate::egress::{Destination, Publisher};
use crate::wire::{Attribute, Attributes};

/// What one binding's handler can reach in the host.
pub struct HostContext {
    publisher: Option<Arc<Publisher>>,
    runtime: Option<tokio::runtime::Handle>,
    plugin: String,
    binding: String,
}

impl HostContext {
    /// A boxed context for a binding. Without a publisher (e.g. `config check`), publishing
    /// returns an error.
    pub fn boxed(
        publisher: Option<Arc<Publisher>>,
        runtime: Option<tokio::runtime::Handle>,
        plugin: &str,
        binding: &str,
    ) -> HostContextBox {
        HostContextFfi_TO::from_value(
            HostContext {
                publisher,
                runtime,
                plugin: plugin.to_string(),
                binding: binding.to_string(),
            },
            TD_Opaque,
        )
    }
}

impl HostContextFfi for HostContext {
    fn publish(
        &self,
        event: RStr<'_>,
        body: RSlice<'_, u8>,
        attributes: RSlice<'_, AttributeFfi>,
    ) -> RResult<RString, RString> {
        let (Some(publisher), Some(runtime)) = (&self.publisher, &self.runtime) else {
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
        let publish = || {
            runtime.block_on(publisher.publish(
                Destination::Topic,
                event.as_str(),
                body.to_vec(),
                attributes,
            ))
        };
        // Handlers run on the blocking pool, where blocking is allowed; an `inline = true`
        // handler runs on an async worker of the (multi-threaded) host runtime, which must
        // first hand its other tasks to another thread (a plain block_on there would panic).
        // On a blocking-pool thread block_in_place just runs the closure.
        let result = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(publish),
            _ => publish(),
        };
        match result {
            Ok(published) => RResult::ROk(published.message_id.into()),
            Err(e) => {
                tracing::warn!(plugin = %self.plugin, binding = %self.binding, error = %e, "handler publish failed");
                RResult::RErr(e.to_string().into())
            }
        }
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
