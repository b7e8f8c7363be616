//! Example egress plugin: appends every published event to a JSON Lines file, one line per
//! event: `{"id", "event", "body", "attributes"}` (the body as JSON when it is JSON, else as
//! text, else base64 under `body_base64`).
//!
//! ```toml
//! [[egress]]
//! plugin = "jsonl"
//! config = { path = "/var/log/iniesta/events.jsonl" }
//! ```
//!
//! A relative `path` is relative to the host's working directory. The file is opened (created
//! if missing) for every event, so a file that cannot be written now (a missing directory, a
//! full disk) fails that publish and the host keeps the event in its outbox until it can.
//! Each line is written with one `write` and flushed to disk (`fsync`) before `publish`
//! returns, so an event the host counts as delivered is in the file.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use iniesta_plugin_api::{export_plugin, Config, Egress, EgressError, Event};
use serde::Deserialize;

/// The `config` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// The file to append to (created if missing).
    path: PathBuf,
}

/// Appends events to one file.
pub struct JsonlEgress {
    path: PathBuf,
    /// Serialises this process's appends.
    writing: Mutex<()>,
}

impl JsonlEgress {
    /// Read `config.path`; the file is opened when events come.
    pub fn new(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse().map_err(|e| e.to_string())?;
        if settings.path.as_os_str().is_empty() {
            return Err("jsonl: `path` must not be empty".into());
        }
        Ok(Self {
            path: settings.path,
            writing: Mutex::new(()),
        })
    }
}

/// One event as a JSON line (without the newline).
pub fn line(event: &Event<'_>) -> serde_json::Value {
    let attributes: serde_json::Map<String, serde_json::Value> = event
        .attributes()
        .map(|a| (a.name.to_string(), serde_json::Value::from(a.value)))
        .collect();
    let mut line = serde_json::json!({
        "id": event.id(),
        "event": event.name(),
        "attributes": attributes,
    });
    let body = match serde_json::from_slice::<serde_json::Value>(event.body()) {
        Ok(json) => ("body", json),
        Err(_) => match event.body_str() {
            Some(text) => ("body", serde_json::Value::from(text)),
            None => ("body_base64", serde_json::Value::from(base64(event.body()))),
        },
    };
    line[body.0] = body.1;
    line
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl Egress for JsonlEgress {
    fn publish(&self, event: &Event<'_>) -> Result<String, EgressError> {
        let mut text = line(event).to_string();
        text.push('\n');
        let _writing = self
            .writing
            .lock()
            .map_err(|_| format!("{}: a previous write panicked", self.path.display()))?;
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut file| {
                file.write_all(text.as_bytes())?;
                file.sync_data()
            })
            .map_err(|e| format!("cannot append to {}: {e}", self.path.display()))?;
        Ok(String::new())
    }
}

export_plugin! {
    name: "jsonl",
    egress: {
        "jsonl" => JsonlEgress::new,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_path_is_a_clear_error() {
        let e = JsonlEgress::new(Config::from_value(serde_json::json!({})))
            .err()
            .expect("refused");
        assert!(e.contains("path"), "{e}");
    }
}
