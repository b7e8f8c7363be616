//! An egress from a plugin: the plugin's `publish` runs on the blocking pool.

use std::sync::Arc;

use abi_stable::std_types::{RString, RVec};
use async_trait::async_trait;
use iniesta_plugin_api::ffi::{EgressBox, EventFfi};

use super::fanout::Egress;
use crate::plugins::call::attributes_ffi;
use crate::plugins::LoadedPlugin;
use crate::wire::Outgoing;

/// A constructed plugin egress (its library stays loaded for the life of the process).
pub struct PluginEgress {
    plugin: Arc<LoadedPlugin>,
    egress_name: String,
    profile: Option<String>,
    egress: Arc<EgressBox>,
}

impl PluginEgress {
    /// Wrap a constructed egress.
    pub fn new(
        plugin: Arc<LoadedPlugin>,
        egress_name: String,
        profile: Option<String>,
        egress: EgressBox,
    ) -> PluginEgress {
        PluginEgress {
            plugin,
            egress_name,
            profile,
            egress: Arc::new(egress),
        }
    }
}

/// An outgoing message as it crosses the boundary.
pub fn event_ffi(event_id: &str, message: &Outgoing) -> EventFfi {
    EventFfi {
        id: RString::from(event_id),
        name: RString::from(message.event.as_str()),
        body: RVec::from(message.body.as_slice()),
        attributes: attributes_ffi(&message.attributes),
    }
}

#[async_trait]
impl Egress for PluginEgress {
    async fn deliver(&self, event_id: &str, message: &Outgoing) -> Result<String, String> {
        let event = event_ffi(event_id, message);
        let egress = self.egress.clone();
        // A call past the attempt timeout is abandoned (its thread finishes on its own); the
        // event then waits in the outbox, so it may arrive twice: at-least-once.
        tokio::task::spawn_blocking(move || egress.publish(&event).into_result())
            .await
            .map_err(|e| format!("egress call failed: {e}"))?
            .map(|id| id.into_string())
            .map_err(|e| e.into_string())
    }

    fn describe(&self) -> String {
        format!(
            "plugin {} {} egress `{}`{} from {}",
            self.plugin.name,
            self.plugin.version,
            self.egress_name,
            self.profile
                .as_deref()
                .map(|p| format!(" with profile `{p}`"))
                .unwrap_or_default(),
            self.plugin.file.display()
        )
    }
}
