//! The configuration a binding hands to its handler's constructor.

/// A binding's `config = { ... }` table from `iniesta.toml`, as JSON.
#[derive(Debug, Clone, Default)]
pub struct Config {
    value: serde_json::Value,
}

/// A binding's config could not be read as the handler expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parse config JSON text as the host sends it (empty text means an empty table).
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_json::from_str(text)
            .map(|value| Self { value })
            .map_err(|e| ConfigError(format!("binding config is not valid JSON: {e}")))
    }

    /// Build a config from a JSON value (handy in tests).
    pub fn from_value(value: serde_json::Value) -> Self {
        Self { value }
    }

    /// The whole config as a JSON value (`null` when the binding has none).
    pub fn value(&self) -> &serde_json::Value {
        &self.value
    }

    /// A string field, if present.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.value.get(key).and_then(|v| v.as_str())
    }

    /// A string field that must be present.
    pub fn require_str(&self, key: &str) -> Result<&str, ConfigError> {
        self.get_str(key).ok_or_else(|| {
            ConfigError(format!(
                "missing string key `{key}` in the binding's config (add `config = {{ {key} = \"...\" }}`)"
            ))
        })
    }

    /// An unsigned integer field, if present.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.value.get(key).and_then(|v| v.as_u64())
    }

    /// Deserialize the whole config into a `serde` type; an absent config reads as `{}`.
    ///
    /// The error names the field and what was expected, never the value found: a config may
    /// hold a credential profile's secrets, and constructor errors are logged.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let value = if self.value.is_null() {
            serde_json::Value::Object(Default::default())
        } else {
            self.value.clone()
        };
        serde_json::from_value(value).map_err(|e| {
            ConfigError(format!(
                "binding config: {}",
                without_values(&e.to_string())
            ))
        })
    }
}

/// A serde error message without the value it quotes: ``invalid type: integer `1234`,
/// expected a string`` becomes `invalid type: integer, expected a string`; likewise
/// `invalid value: …` and `unknown variant …`.
fn without_values(message: &str) -> String {
    for prefix in ["invalid type:", "invalid value:", "unknown variant"] {
        let Some(rest) = message.strip_prefix(prefix) else {
            continue;
        };
        // The last ", expected": a quoted value may hold the words too.
        let (found, expected) = match rest.rsplit_once(", expected") {
            Some((found, expected)) => (found, Some(expected)),
            None => (rest, None),
        };
        // serde shows a value after its kind: integer `5`, string "x", character `c`.
        let kind = found.split(['`', '"']).next().unwrap_or_default().trim();
        let mut out = prefix.to_string();
        if !kind.is_empty() {
            out.push(' ');
            out.push_str(kind);
        }
        if let Some(expected) = expected {
            out.push_str(", expected");
            out.push_str(expected);
        }
        return out;
    }
    message.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Profile {
        url: String,
        password: Option<String>,
        port: Option<u16>,
        mode: Option<Mode>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        Plain,
    }

    fn error(json: &str) -> String {
        Config::from_json(json)
            .expect("json")
            .parse::<Profile>()
            .expect_err("invalid")
            .to_string()
    }

    #[test]
    fn parse_errors_name_the_field_but_never_the_value() {
        for (json, secret, want) in [
            (
                r#"{"url": "nats://x", "password": 12345678}"#,
                "12345678",
                "invalid type: integer, expected a string",
            ),
            (
                r#"{"url": "nats://x", "port": 99999999}"#,
                "99999999",
                "invalid value: integer, expected u16",
            ),
            (
                r#"{"url": "nats://x", "mode": "hunter2"}"#,
                "hunter2",
                "unknown variant, expected",
            ),
            (r#"{"url": ["s3cret"]}"#, "s3cret", "invalid type: sequence"),
            (
                r#"{"url": "x", "mode": "a, expected b s3cret"}"#,
                "s3cret",
                "unknown variant, expected",
            ),
        ] {
            let text = error(json);
            assert!(!text.contains(secret), "{text}");
            assert!(text.contains(want), "{json}: {text}");
        }
        // Field names are not values: they stay.
        assert!(error(r#"{"url": "x", "pasword": "p"}"#).contains("unknown field `pasword`"));
        assert!(error(r#"{}"#).contains("missing field `url`"));
    }
}
