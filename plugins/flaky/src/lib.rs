//! `flaky`: fails the first `fail_times` deliveries of every message, then acks.
//!
//! It decides from the broker's receive count, so it behaves the same across host restarts.
//! Binding config: `fail_times` (default 2); `mode` (`"retry"`, the default, returns
//! `Retry { after_secs: retry_after }`; `"error"` returns an error; `"dead-letter"` dead-letters
//! on the first delivery); `retry_after` (default 0).

use iniesta_plugin_api::{
    export_plugin, Config, Context, Handler, HandlerResult, Message, Outcome,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_fail_times")]
    fail_times: u32,
    #[serde(default = "default_mode")]
    mode: String,
    #[serde(default)]
    retry_after: u32,
}

fn default_fail_times() -> u32 {
    2
}

fn default_mode() -> String {
    "retry".into()
}

/// Fails the first N deliveries.
pub struct Flaky {
    settings: Settings,
}

impl Flaky {
    /// Reads `fail_times`, `mode` and `retry_after`.
    pub fn new(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse().map_err(|e| e.to_string())?;
        if !["retry", "error", "dead-letter"].contains(&settings.mode.as_str()) {
            return Err(format!(
                "mode `{}` is not one of retry, error, dead-letter",
                settings.mode
            ));
        }
        Ok(Self { settings })
    }
}

impl Handler for Flaky {
    fn handle(&self, message: &Message<'_>, ctx: &Context<'_>) -> HandlerResult {
        if self.settings.mode == "dead-letter" {
            return Ok(Outcome::dead_letter(format!(
                "flaky dead-letters {} by design",
                message.id()
            )));
        }
        if message.receive_count() <= self.settings.fail_times {
            ctx.warn(&format!(
                "failing delivery {} of {} on purpose",
                message.receive_count(),
                message.id()
            ));
            if self.settings.mode == "error" {
                return Err(
                    format!("delivery {} failed on purpose", message.receive_count()).into(),
                );
            }
            return Ok(Outcome::retry(self.settings.retry_after));
        }
        Ok(Outcome::Ack)
    }
}

export_plugin! {
    name: "flaky",
    handlers: {
        "flaky" => Flaky::new,
    },
}
