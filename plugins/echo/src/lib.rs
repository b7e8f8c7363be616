//! `echo`: logs every message it gets through the host and acks it.
//!
//! Binding config: `prefix` (optional, default `"echo"`) starts each log line; `publish`
//! (optional) names an event to publish through the host, with the same body, after logging;
//! `quiet` (optional, default `false`) acks without logging, so benchmarks measure the host
//! rather than its logger (see `bench/`).

use iniesta_plugin_api::{
    export_plugin, Config, Context, Handler, HandlerResult, Message, Outcome,
};

/// Logs the event and body, then acks.
pub struct Echo {
    prefix: String,
    publish: Option<String>,
    quiet: bool,
}

impl Echo {
    /// Reads the optional `prefix`, `publish` and `quiet` from the binding's config.
    pub fn new(config: Config) -> Result<Self, String> {
        let quiet = match config.value().get("quiet") {
            None => false,
            Some(v) => v
                .as_bool()
                .ok_or_else(|| format!("`quiet` must be true or false, not {v}"))?,
        };
        Ok(Self {
            prefix: config.get_str("prefix").unwrap_or("echo").to_string(),
            publish: config.get_str("publish").map(str::to_string),
            quiet,
        })
    }
}

impl Handler for Echo {
    fn handle(&self, message: &Message<'_>, ctx: &Context<'_>) -> HandlerResult {
        if !self.quiet {
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
        }
        if let Some(event) = &self.publish {
            // An error here returns Err: the message is redelivered, not lost.
            let id = ctx.publish(event, message.body())?;
            if !self.quiet {
                ctx.info(&format!("{}: published {event} as {id}", self.prefix));
            }
        }
        Ok(Outcome::Ack)
    }
}

export_plugin! {
    name: "echo",
    handlers: {
        "echo" => Echo::new,
    },
}
