//! `iniesta.toml`: the settings and their defaults, one file per section, plus loading.
//!
//! Keys follow the Python iniesta settings they replace (see DESIGN.md). Relative paths
//! (`broker.path`, `plugins.dirs`) are resolved against the directory of the config file, so
//! `iniesta -c examples/x.toml` means the same thing from any working directory.
//!
//! This module is plain data: it imports no runtime module. Each section checks its own shape
//! (`problems` beside its data); checks that need runtime knowledge (FIFO ids, patterns, lock
//! nodes, webhook URLs, egress entries) live in the module that owns it, and
//! [`crate::validate`] collects them all. [`change`] says which keys a reload can apply live.

pub mod broker;
pub mod change;
pub mod egress;
pub mod env;
pub mod isolate;
pub mod lock;
pub mod ops;
pub mod payloads;
pub mod plugins;
pub mod policy;
pub mod sns;
pub mod sqs;
pub mod telemetry;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use broker::{BrokerConfig, BrokerKind, SqsClient};
pub use egress::{EgressConfig, IngressConfig, OutboxConfig, PublishConfig};
pub use isolate::IsolateConfig;
pub use lock::{LockConfig, LockTlsConfig, PYTHON_INIESTA_LOCK_DATABASES};
pub use ops::{ConsoleConfig, ErrorsConfig, MetricsConfig, SentryConfig};
pub use payloads::PayloadsConfig;
pub use plugins::{BindingConfig, PluginsConfig};
pub use sns::SnsConfig;
pub use sqs::SqsConfig;
pub use telemetry::TracingConfig;

/// The default config file name, looked up in the working directory.
pub const DEFAULT_CONFIG: &str = "iniesta.toml";

/// The whole `iniesta.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This service's name; appended to published events as `{event}.{service}`.
    pub service: String,
    /// Deployment environment, used in the queue name template.
    #[serde(default = "default_env")]
    pub env: String,
    /// What this host does: produce to SNS, poll a subscribed queue, poll a plain queue.
    #[serde(default = "default_initialization")]
    pub initialization: Vec<InitializationType>,
    /// Where messages live.
    #[serde(default)]
    pub broker: BrokerConfig,
    /// The global topic.
    #[serde(default)]
    pub sns: SnsConfig,
    /// This service's queue and how it is polled.
    #[serde(default)]
    pub sqs: SqsConfig,
    /// Idempotency locks.
    #[serde(default)]
    pub lock: LockConfig,
    /// Where plugins are loaded from.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// Which handler runs for which events.
    #[serde(default)]
    pub bindings: Vec<BindingConfig>,
    /// The Prometheus `/metrics` and `/health` endpoint (off when absent).
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Where handler failures are reported (off when absent).
    #[serde(default)]
    pub errors: ErrorsConfig,
    /// The operator web console on the metrics server (off unless enabled).
    #[serde(default)]
    pub console: ConsoleConfig,
    /// Where every published event goes (egress/); none: the topic, as without this key.
    #[serde(default)]
    pub egress: Vec<EgressConfig>,
    /// Consumers from ingress plugins that feed the bindings (egress/ and ingress/).
    #[serde(default)]
    pub ingress: Vec<IngressConfig>,
    /// Where events an egress could not take wait for redelivery.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// How published events are batched.
    #[serde(default)]
    pub publish: PublishConfig,
    /// Message size limits and the S3 claim check for larger bodies.
    #[serde(default)]
    pub payloads: PayloadsConfig,
    /// Distributed tracing (off unless an OTLP endpoint is set).
    #[serde(default)]
    pub tracing: TracingConfig,
    /// The directory relative paths are resolved against (the config file's directory).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file this config was read from, if any.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// The environment variables that override keys of the file ([`env`]).
    #[serde(skip)]
    pub overrides: Vec<env::Override>,
}

/// `path` as a config names it, resolved against `base_dir` (the config file's directory)
/// unless it is absolute: [`Config::resolve`], for code that holds only a section.
pub fn resolve_in(base_dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

/// A figment error from layering the environment over the file, naming the key and the
/// variable that set it (the file alone parsed, so the environment is at fault).
fn env_error(error: &figment::Error, overrides: &[env::Override]) -> String {
    let key = error.path.join(".");
    let vars: Vec<&str> = overrides
        .iter()
        .filter(|o| key.is_empty() || o.key.starts_with(&key) || key.starts_with(&o.key))
        .map(|o| o.var.as_str())
        .collect();
    let from = if vars.is_empty() {
        "the environment".to_string()
    } else {
        vars.join(", ")
    };
    let at = if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    };
    format!("{at}{} (set by {from})", error.kind)
}

fn default_env() -> String {
    "development".into()
}

pub(crate) fn default_true() -> bool {
    true
}

fn default_initialization() -> Vec<InitializationType> {
    vec![
        InitializationType::EventPolling,
        InitializationType::SnsProducer,
    ]
}

/// The Python iniesta's initialization types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InitializationType {
    /// Poll a queue that is not subscribed to the topic.
    QueuePolling,
    /// Poll the queue subscribed to the global topic through filter policies.
    EventPolling,
    /// Publish to the global topic.
    SnsProducer,
}

impl InitializationType {
    /// The name as the Python iniesta prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueuePolling => "QUEUE_POLLING",
            Self::EventPolling => "EVENT_POLLING",
            Self::SnsProducer => "SNS_PRODUCER",
        }
    }
}

/// One thing wrong with a config: the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `bindings[1].plugin`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl Problem {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {cause} (create it, or pass another with -c FILE or $INIESTA_CONFIG)")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause (in the message, not chained, so it is printed once).
        cause: std::io::Error,
    },
    /// The file is not valid TOML or has unknown/mistyped keys.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and key.
        message: String,
    },
    /// The file parsed but its values do not hold together.
    #[error("{path}: {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file (or `<inline>`).
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

/// Why a config text does not parse: not TOML, or a key unknown or of the wrong type.
///
/// Displayed as `line 7: sqs.handler_timeout_secs: invalid type: string "x", expected u64`
/// (the line and the key when known).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default(), key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default())]
pub struct ParseError {
    /// The dotted key at fault, e.g. `sqs.handler_timeout_secs` or `bindings[1].plugin`
    /// (for an unknown key: the table it is in); `None` for a TOML syntax error.
    pub key: Option<String>,
    /// The 1-based line of the value at fault, when the parser knows it.
    pub line: Option<usize>,
    /// What is wrong, e.g. `invalid type: string "x", expected u64`.
    pub message: String,
}

impl Config {
    /// Read and parse a config file without the consistency checks (for commands that only
    /// print settings, like `filter-policies`).
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let parse_error = |message: String| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        };
        // The file alone first, so its own mistakes are reported with their line.
        let file_only = Config::parse(&text, &base).map_err(|e| parse_error(e.to_string()));
        // The config with its defaults: how an override's text is read, and which names are
        // keys (without it, only the misspelling hint is lost).
        let template = match &file_only {
            Ok(config) => toml::Table::try_from(config).ok(),
            // The file does not parse alone (a required key it leaves to the environment):
            // the defaults still say which names are keys and which keys are text.
            Err(_) => Config::parse("service = \"\"", &base)
                .ok()
                .and_then(|c| toml::Table::try_from(&c).ok()),
        }
        .unwrap_or_default();
        let (overrides, warnings) = env::overrides(&template).map_err(parse_error)?;
        for warning in &warnings {
            tracing::warn!(path = %path.display(), "{warning}");
        }
        let mut config = if overrides.is_empty() {
            file_only?
        } else {
            let table: toml::Table = match toml::from_str(&text) {
                Ok(table) => table,
                // Not TOML: the file's own error, with its line.
                Err(e) => {
                    return Err(file_only
                        .err()
                        .unwrap_or_else(|| parse_error(e.to_string())))
                }
            };
            match env::extract::<Config>(&table, &template, &overrides) {
                Ok(mut layered) => {
                    layered.base_dir = if base.as_os_str().is_empty() {
                        PathBuf::from(".")
                    } else {
                        base.clone()
                    };
                    layered
                }
                // A mistake of the file that no variable covers: reported with its line.
                Err(e) => match file_only {
                    Err(file_error) => return Err(file_error),
                    Ok(_) => return Err(parse_error(env_error(&e, &overrides))),
                },
            }
        };
        config.overrides = overrides;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parse TOML text; relative paths will resolve against `base_dir`. The error names the
    /// line and the dotted key at fault (an unknown or mistyped one).
    pub fn parse(text: &str, base_dir: &Path) -> Result<Config, ParseError> {
        let line_of = |error: &toml::de::Error| {
            error
                .span()
                .map(|span| text.get(..span.start).unwrap_or(text).matches('\n').count() + 1)
        };
        // Not TOML at all: no key to name yet.
        let document = toml::Deserializer::parse(text).map_err(|e| ParseError {
            key: None,
            line: line_of(&e),
            message: e.message().trim_end().to_string(),
        })?;
        let mut config: Config = serde_path_to_error::deserialize(document).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            ParseError {
                key: (key != ".").then_some(key),
                line: line_of(&inner),
                message: inner.message().trim_end().to_string(),
            }
        })?;
        config.base_dir = if base_dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base_dir.to_path_buf()
        };
        Ok(config)
    }

    /// The path a config was read from, for messages.
    pub fn source_name(&self) -> PathBuf {
        self.source
            .clone()
            .unwrap_or_else(|| PathBuf::from("<inline>"))
    }

    /// Resolve a configured path against the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        resolve_in(&self.base_dir, path)
    }

    /// The plugin directories, resolved.
    pub fn plugin_dirs(&self) -> Vec<PathBuf> {
        self.plugins.dirs.iter().map(|d| self.resolve(d)).collect()
    }

    /// The local broker's database file, resolved.
    pub fn broker_path(&self) -> PathBuf {
        self.resolve(&self.broker.path)
    }

    /// This service's queue name: `sqs.queue_name`, else the template filled in.
    pub fn queue_name(&self) -> String {
        match &self.sqs.queue_name {
            Some(name) => name.clone(),
            None => self
                .sqs
                .queue_name_template
                .replace("{env}", &self.env)
                .replace("{service_name}", &self.service),
        }
    }

    /// The topic's name: the last `:` segment of its ARN.
    pub fn topic_name(&self) -> Option<String> {
        self.sns
            .topic_arn
            .as_deref()
            .map(|arn| arn.rsplit(':').next().unwrap_or(arn).to_string())
    }

    /// The topic whose SNS envelopes the consumed queue receives: `sns.topic_arn` when this
    /// host polls a queue subscribed to it (`EVENT_POLLING` on AWS) with
    /// `sqs.raw_message_delivery = false`. `None` when every message arrives raw (the local
    /// broker always delivers raw): bodies are then never read as envelopes.
    pub fn envelope_topic(&self) -> Option<&str> {
        let envelopes = self.broker.kind == BrokerKind::Aws
            && self.does(InitializationType::EventPolling)
            && !self.sqs.raw_message_delivery;
        self.sns.topic_arn.as_deref().filter(|_| envelopes)
    }

    /// Whether this host does `kind`.
    pub fn does(&self, kind: InitializationType) -> bool {
        self.initialization.contains(&kind)
    }

    /// Whether this host consumes at all.
    pub fn consumes(&self) -> bool {
        self.does(InitializationType::EventPolling) || self.does(InitializationType::QueuePolling)
    }

    /// `SNS_PRODUCER|EVENT_POLLING`, as the Python iniesta prints it (highest flag first).
    pub fn initialization_type(&self) -> String {
        let mut kinds = self.initialization.clone();
        kinds.sort();
        kinds.dedup();
        kinds.reverse();
        kinds
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join("|")
    }

    /// `{event}.{service}`: the service is appended unless the name already ends with it.
    pub fn full_event_name(&self, event: &str) -> String {
        crate::wire::full_event_name(event, &self.service)
    }
}

impl Config {
    /// The root keys' own shape: `service` and `initialization`.
    pub fn root_problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.service.trim().is_empty() {
            problems.push(Problem::new(
                "service",
                "must not be empty (it is appended to every published event)",
            ));
        }
        if self.initialization.is_empty() {
            problems.push(Problem::new(
                "initialization",
                "must name at least one of SNS_PRODUCER, EVENT_POLLING, QUEUE_POLLING",
            ));
        }
        problems
    }

    /// Whether this host needs `sns.topic_arn`: it produces to or polls the topic.
    pub fn needs_topic(&self) -> bool {
        self.does(InitializationType::SnsProducer) || self.does(InitializationType::EventPolling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_type_error_names_the_key_and_the_line() {
        let text =
            "service = \"s\"\n\n[sqs]\nfilters = [\"Order.*\"]\nhandler_timeout_secs = \"x\"\n";
        let err = Config::parse(text, Path::new(".")).expect_err("a string is not a u64");
        assert_eq!(err.key.as_deref(), Some("sqs.handler_timeout_secs"));
        assert_eq!(err.line, Some(5));
        assert_eq!(
            err.to_string(),
            "line 5: sqs.handler_timeout_secs: invalid type: string \"x\", expected u64"
        );
        // Inside an array of tables: the index is named.
        let text = "service = \"s\"\n[[bindings]]\nevents = [\"a\"]\nplugin = \"p\"\n[[bindings]]\nevents = [\"b\"]\nplugin = 3\n";
        let err = Config::parse(text, Path::new(".")).expect_err("a number is not a name");
        assert_eq!(err.key.as_deref(), Some("bindings[1].plugin"), "{err}");
        assert_eq!(err.line, Some(7), "{err}");
        // An unknown key: the table it is in, and the key itself in the message.
        let err = Config::parse("service = \"s\"\n[sqs]\nmax_mesages = 3\n", Path::new("."))
            .expect_err("unknown key");
        assert!(err.to_string().contains("max_mesages"), "{err}");
        assert_eq!(err.line, Some(3), "{err}");
        // Not TOML at all: the line, no key.
        let err = Config::parse("service = \n", Path::new(".")).expect_err("not TOML");
        assert_eq!(err.key, None, "{err}");
        assert_eq!(err.line, Some(1), "{err}");
    }
}
