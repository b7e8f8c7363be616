//! Validation: a binding's `schema = "schemas/order.json"`, a JSON Schema file (relative to
//! the config file) that every body the binding takes must satisfy.
//!
//! Schemas load and compile when the config loads (a missing file, bad JSON or an invalid
//! schema is a config problem naming the binding). Before any handler runs, the pipeline
//! checks the body against the schemas of every binding that takes the message; a body that
//! fails any of them goes to the dead-letter queue with the validation errors as the reason,
//! and no handler runs. Text and binary bodies fail a schema (it needs JSON); MEGA and BSON
//! bodies are validated as the JSON they decode to. `$ref`s to other files resolve relative to
//! the schema file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use iniesta_plugin_api::payload::Payload;

use crate::wire::Envelope;

/// Most validation errors listed in a dead-letter reason.
const MAX_ERRORS: usize = 10;

/// Longest dead-letter reason from validation, in characters.
const MAX_REASON: usize = 2000;

/// A compiled JSON Schema.
pub struct Schema {
    /// The path as configured (for messages).
    pub path: PathBuf,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema").field("path", &self.path).finish()
    }
}

impl Schema {
    /// Load and compile the schema at `path` (as configured), resolved against `base_dir`.
    pub fn load(path: &Path, base_dir: &Path) -> Result<Schema, String> {
        let resolved = if path.is_absolute() {
            path.to_path_buf()
        } else {
            base_dir.join(path)
        };
        let text = std::fs::read_to_string(&resolved)
            .map_err(|e| format!("cannot read schema file {}: {e}", resolved.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("schema file {} is not JSON: {e}", resolved.display()))?;
        let options = jsonschema::options();
        let options = match std::fs::canonicalize(&resolved) {
            Ok(absolute) => options.with_base_uri(file_uri(&absolute)),
            Err(_) => options,
        };
        let validator = options.build(&value).map_err(|e| {
            format!(
                "schema file {} is not a valid JSON Schema: {e}",
                resolved.display()
            )
        })?;
        Ok(Schema {
            path: path.to_path_buf(),
            validator,
        })
    }

    /// Check a payload; `Err` lists what is wrong (at most ten errors, each with its JSON
    /// pointer), with the body's values shown as `value`: this text becomes a dead-letter
    /// reason, which is logged and listed where bodies are not.
    pub fn check(&self, payload: &Payload) -> Result<(), String> {
        self.check_showing(payload, false)
    }

    /// [`Schema::check`], quoting the failing values when `show_values` (for a dry run on a
    /// body the user typed).
    pub fn check_showing(&self, payload: &Payload, show_values: bool) -> Result<(), String> {
        let Some(value) = payload.json.as_ref() else {
            return Err(format!(
                "the body is {}, and a schema needs a JSON body",
                payload.kind
            ));
        };
        let mut errors = self.validator.iter_errors(value).peekable();
        if errors.peek().is_none() {
            return Ok(());
        }
        let mut listed = Vec::new();
        let mut more = 0;
        for error in errors {
            if listed.len() < MAX_ERRORS {
                let at = error.instance_path().as_str();
                let at = if at.is_empty() { "/" } else { at };
                if show_values {
                    listed.push(format!("{at}: {error}"));
                } else {
                    listed.push(format!("{at}: {}", error.masked()));
                }
            } else {
                more += 1;
            }
        }
        let mut text = listed.join("; ");
        if more > 0 {
            text.push_str(&format!("; and {more} more"));
        }
        Err(text)
    }
}

/// Why a message must be dead-lettered before its handlers run: its body fails the schema of
/// one or more of the bindings that take it. `None` when every schema passes (or none is set).
pub fn rejection(envelope: &Envelope, bindings: &[Arc<super::Binding>]) -> Option<String> {
    let mut reasons = Vec::new();
    for binding in bindings {
        let Some(schema) = &binding.schema else {
            continue;
        };
        if let Err(errors) = schema.check(envelope.payload()) {
            reasons.push(format!(
                "{}: body fails schema {}: {errors}",
                binding.label,
                schema.path.display()
            ));
        }
    }
    if reasons.is_empty() {
        return None;
    }
    let reason = reasons.join(" | ");
    tracing::warn!(message_id = %envelope.message_id, event = %envelope.event, reason = %reason,
        "the body fails a binding's schema: dead-lettering it without running any handler");
    Some(if reason.chars().count() > MAX_REASON {
        let mut short: String = reason.chars().take(MAX_REASON).collect();
        short.push('…');
        short
    } else {
        reason
    })
}

/// A `file://` URI for an absolute path (spaces and `%` escaped).
fn file_uri(path: &Path) -> String {
    let text = path
        .to_string_lossy()
        .replace('%', "%25")
        .replace(' ', "%20");
    if text.starts_with('/') {
        format!("file://{text}")
    } else {
        format!("file:///{text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iniesta_plugin_api::payload::inspect;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).expect("write");
    }

    #[test]
    fn validates_and_lists_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "order.json",
            r#"{"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}, "items": {"type": "array", "minItems": 1}}}"#,
        );
        let schema = Schema::load(Path::new("order.json"), dir.path()).expect("loads");
        assert!(schema
            .check(&inspect(br#"{"id": 1, "items": [1]}"#, None))
            .is_ok());
        let errors = schema
            .check(&inspect(br#"{"id": "x", "items": []}"#, None))
            .expect_err("invalid");
        assert!(
            errors.contains("/id: value is not of type \"integer\""),
            "the value is masked: {errors}"
        );
        assert!(!errors.contains("\"x\""), "{errors}");
        assert!(
            errors.contains("/items: value has less than 1 item"),
            "{errors}"
        );
        let shown = schema
            .check_showing(&inspect(br#"{"id": "x", "items": []}"#, None), true)
            .expect_err("invalid");
        assert!(
            shown.contains("/id: \"x\" is not of type \"integer\""),
            "{shown}"
        );
        assert!(errors.contains("/items"), "{errors}");
        let errors = schema.check(&inspect(br#"{}"#, None)).expect_err("invalid");
        assert!(errors.starts_with("/: "), "{errors}");
        assert!(errors.contains("\"id\" is a required property"), "{errors}");
        let errors = schema.check(&inspect(b"plain", None)).expect_err("text");
        assert!(errors.contains("text"), "{errors}");
    }

    #[test]
    fn refs_resolve_next_to_the_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("schemas")).expect("mkdir");
        write(
            &dir.path().join("schemas"),
            "id.json",
            r#"{"type": "integer"}"#,
        );
        write(
            &dir.path().join("schemas"),
            "order.json",
            r#"{"type": "object", "properties": {"id": {"$ref": "id.json"}}}"#,
        );
        let schema = Schema::load(Path::new("schemas/order.json"), dir.path()).expect("loads");
        assert!(schema.check(&inspect(br#"{"id": 1}"#, None)).is_ok());
        assert!(schema.check(&inspect(br#"{"id": "x"}"#, None)).is_err());
    }

    #[test]
    fn load_errors_say_what_is_wrong() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = Schema::load(Path::new("missing.json"), dir.path()).expect_err("missing");
        assert!(e.contains("cannot read schema file"), "{e}");
        write(dir.path(), "bad.json", "{nope");
        let e = Schema::load(Path::new("bad.json"), dir.path()).expect_err("not json");
        assert!(e.contains("is not JSON"), "{e}");
        write(dir.path(), "invalid.json", r#"{"type": "nonsense"}"#);
        let e = Schema::load(Path::new("invalid.json"), dir.path()).expect_err("invalid");
        assert!(e.contains("not a valid JSON Schema"), "{e}");
    }
}
