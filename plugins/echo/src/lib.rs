//! `echo`: logs every message it gets through the host and acks it.
//!
//! Binding config: `prefix` (optional, default `"echo"`) starts each log line.

use iniesta_plugin_api::{
    export_plugin, Config, Context, Handler, HandlerResult, Message, Outcome,
};

/// Logs the event and body, then acks.
pub struct Echo {
    prefix: String,
}

impl Echo {
    /// Reads the optional `prefix` from the binding's config.
    pub fn new(config: Config) -> Result<Self, String> {
        Ok(Self {
            prefix: config.get_str("prefix").unwrap_or("echo").to_string(),
        })
    }
}

impl Handler for Echo {
    fn handle(&self, message: &Message<'_>, ctx: &Context<'_>) -> HandlerResult {
        let body = match message.body_str() {
            Some(text) => text.to_string(),
            None => format!("<{} binary bytes>", message.body().len()),
        };
        ctx.info(&format!(
            "{}: {} {} (delivery {})",
            self.prefix,
            message.event(),
            body,
            message.receive_count()
        ));
        Ok(Outcome::Ack)
    }
}

export_plugin! {
    name: "echo",
    handlers: {
        "echo" => Echo::new,
    },
}
