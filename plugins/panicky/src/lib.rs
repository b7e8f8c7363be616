//! `panicky`: panics on any message whose body contains `panic`, acks the rest.
//!
//! It exists to show (and test) that a panicking handler is retried and never takes the host
//! down. It also exports a second handler, `sleepy`, that sleeps `sleep_ms` (config) before
//! acking — for handler-timeout tests; with `started` (a path) in its config it first appends
//! the message id to that file, so a test can tell the handler is running, and with
//! `finished` it appends the id there once it has slept (a test can tell which calls ran at
//! the same time when both name one file).

use iniesta_plugin_api::{
    export_plugin, Config, Context, Handler, HandlerResult, Message, Outcome,
};

/// Panics on bodies containing `panic`.
pub struct Panicky;

impl Handler for Panicky {
    fn handle(&self, message: &Message<'_>, _ctx: &Context<'_>) -> HandlerResult {
        let body = String::from_utf8_lossy(message.body());
        if body.contains("panic") {
            panic!("panicky was asked to panic by message {}", message.id());
        }
        Ok(Outcome::Ack)
    }
}

/// Notes that it started (if asked), sleeps, then acks.
pub struct Sleepy {
    sleep_ms: u64,
    started: Option<String>,
    finished: Option<String>,
}

/// Append `line` to the file at `path`.
fn note(path: &str, line: &str) -> Result<(), String> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open {path}: {e}"))?;
    // One write per line: with O_APPEND it lands whole even when calls run at once
    // (`writeln!` may split the text and its newline into two writes that interleave).
    file.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("cannot write {path}: {e}"))
}

impl Handler for Sleepy {
    fn handle(&self, message: &Message<'_>, _ctx: &Context<'_>) -> HandlerResult {
        if let Some(path) = &self.started {
            note(path, message.id())?;
        }
        std::thread::sleep(std::time::Duration::from_millis(self.sleep_ms));
        if let Some(path) = &self.finished {
            note(path, &format!("end {}", message.id()))?;
        }
        Ok(Outcome::Ack)
    }
}

export_plugin! {
    name: "panicky",
    handlers: {
        "panicky" => |_config: Config| Ok::<_, String>(Panicky),
        "sleepy" => |config: Config| Ok::<_, String>(Sleepy {
            sleep_ms: config.get_u64("sleep_ms").unwrap_or(1000),
            started: config.get_str("started").map(str::to_string),
            finished: config.get_str("finished").map(str::to_string),
        }),
    },
}
