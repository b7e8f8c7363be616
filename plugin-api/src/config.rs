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
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let value = if self.value.is_null() {
            serde_json::Value::Object(Default::default())
        } else {
            self.value.clone()
        };
        serde_json::from_value(value).map_err(|e| ConfigError(format!("binding config: {e}")))
    }
}
