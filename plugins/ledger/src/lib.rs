//! `ledger`: appends one JSON line per handled message to a file, then acks.
//!
//! Binding config: `path` (required) — the file to append to; `label` (optional) — written
//! into every line so several bindings can share one file; `paths` (optional, a list of
//! dotted JSON paths) — values to read with `message.json_path`. Each line holds `label`, `id`,
//! `event`, `body` (text), `receive_count`, `attributes`, `mark`, and what the plugin-api's
//! payload helpers see: `kind` (`json`, `mega`, `text`, `binary`), `bson` (whether it
//! travelled BSON-encoded), `body_hex` (binary bodies only), `mega` (the event's name, domain,
//! subject and the object's type and id, for MEGA bodies) and `paths` (path → value or null).
//!
//! `mark` is read from [`BUILD_MARK`], a fixed-width string in the library's read-only data.
//! Tests patch those digits in a copy of the `.so` to make distinct plugin versions without
//! rebuilding, then hot-reload them and see which version handled each message.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Mutex;

use iniesta_plugin_api::{
    export_plugin, Config, Context, Encoding, Handler, HandlerResult, Message, Outcome, PayloadKind,
};

/// Appends a JSON line per message.
pub struct Ledger {
    path: String,
    label: String,
    paths: Vec<String>,
}

static WRITE_LOCK: Mutex<()> = Mutex::new(());

/// A build mark: `iniesta-ledger-mark:` followed by 8 digits that tests may patch.
pub static BUILD_MARK: &[u8; 28] = b"iniesta-ledger-mark:00000000";

fn build_mark() -> String {
    // Read through black_box so the digits come from the library's data, not a constant.
    let mark: &[u8; 28] = std::hint::black_box(BUILD_MARK);
    String::from_utf8_lossy(&mark[20..]).to_string()
}

impl Ledger {
    /// Requires `path`; `label` defaults to `"ledger"`.
    pub fn new(config: Config) -> Result<Self, String> {
        let path = config
            .require_str("path")
            .map_err(|e| e.to_string())?
            .to_string();
        let label = config.get_str("label").unwrap_or("ledger").to_string();
        let paths = match config.value().get("paths") {
            None => Vec::new(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| "`paths` must be a list of dotted paths".to_string())
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("`paths` must be a list of dotted paths".into()),
        };
        Ok(Self { path, label, paths })
    }
}

impl Handler for Ledger {
    fn handle(&self, message: &Message<'_>, _ctx: &Context<'_>) -> HandlerResult {
        let attributes: serde_json::Map<String, serde_json::Value> = message
            .attributes()
            .map(|a| (a.name.to_string(), serde_json::Value::from(a.value)))
            .collect();
        let payload = message.payload();
        let body_hex = (payload.kind == PayloadKind::Binary).then(|| {
            message
                .body()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        });
        let mega = message.mega().ok().map(|m| {
            serde_json::json!({
                "name": m.event.name,
                "domain": m.event.domain,
                "subject": m.event.subject,
                "object_type": m.object.as_ref().and_then(|o| o.r#type.clone()),
                "object_id": m.object.as_ref().and_then(|o| o.id.clone()),
            })
        });
        let paths: serde_json::Map<String, serde_json::Value> = self
            .paths
            .iter()
            .map(|p| (p.clone(), message.json_path(p).unwrap_or_default()))
            .collect();
        let line = serde_json::json!({
            "label": self.label,
            "id": message.id(),
            "event": message.event(),
            "body": String::from_utf8_lossy(message.body()),
            "receive_count": message.receive_count(),
            "attributes": attributes,
            "mark": build_mark(),
            "kind": payload.kind.as_str(),
            "bson": payload.encoding == Encoding::Bson,
            "body_hex": body_hex,
            "mega": mega,
            "paths": paths,
        });
        // One write call per line (O_APPEND keeps whole lines from interleaving across
        // bindings and processes), and one writer at a time within this plugin.
        let mut text = line.to_string();
        text.push('\n');
        let _guard = WRITE_LOCK
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        file.write_all(text.as_bytes())?;
        Ok(Outcome::Ack)
    }
}

export_plugin! {
    name: "ledger",
    handlers: {
        "ledger" => Ledger::new,
    },
}
