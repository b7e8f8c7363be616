//! `iniesta.toml`: the settings, their defaults, and validation that names the key at fault.
//!
//! Keys follow the Python iniesta settings they replace (see DESIGN.md). Relative paths
//! (`broker.path`, `plugins.dirs`) are resolved against the directory of the config file, so
//! `iniesta -c examples/x.toml` means the same thing from any working directory.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::route::Pattern;

/// The default config file name, looked up in the working directory.
pub const DEFAULT_CONFIG: &str = "iniesta.toml";

/// The whole `iniesta.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    pub egress: Vec<crate::egress::config::EgressConfig>,
    /// Consumers from ingress plugins that feed the bindings (egress/ and ingress/).
    #[serde(default)]
    pub ingress: Vec<crate::egress::config::IngressConfig>,
    /// Where events an egress could not take wait for redelivery.
    #[serde(default)]
    pub outbox: crate::egress::config::OutboxConfig,
    /// The directory relative paths are resolved against (the config file's directory).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file this config was read from, if any.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

fn default_env() -> String {
    "development".into()
}

fn default_initialization() -> Vec<InitializationType> {
    vec![
        InitializationType::EventPolling,
        InitializationType::SnsProducer,
    ]
}

/// The Python iniesta's initialization types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
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

/// `[broker]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// `local` (embedded SQLite) or `aws`.
    #[serde(default)]
    pub kind: BrokerKind,
    /// The SQLite file of the local broker.
    #[serde(default = "default_broker_path")]
    pub path: PathBuf,
    /// AWS region; else the standard AWS chain decides.
    #[serde(default)]
    pub region: Option<String>,
    /// AWS endpoint override (local emulators).
    #[serde(default)]
    pub endpoint_url: Option<String>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            kind: BrokerKind::default(),
            path: default_broker_path(),
            region: None,
            endpoint_url: None,
        }
    }
}

fn default_broker_path() -> PathBuf {
    PathBuf::from(".iniesta/broker.db")
}

/// Which broker carries the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// The embedded SQLite broker: no AWS needed.
    #[default]
    Local,
    /// AWS SNS and SQS.
    Aws,
}

/// `[sns]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnsConfig {
    /// The global topic's ARN.
    #[serde(default)]
    pub topic_arn: Option<String>,
    /// The attribute that carries the event name; keep the default (`iniesta_pass`) to stay
    /// compatible with the Python iniesta.
    #[serde(default = "default_event_key")]
    pub event_key: String,
}

impl Default for SnsConfig {
    fn default() -> Self {
        Self {
            topic_arn: None,
            event_key: default_event_key(),
        }
    }
}

fn default_event_key() -> String {
    "iniesta_pass".into()
}

/// `[sqs]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqsConfig {
    /// Template for the queue name; `{env}` and `{service_name}` are filled in.
    #[serde(default = "default_queue_template")]
    pub queue_name_template: String,
    /// An explicit queue name; wins over the template.
    #[serde(default)]
    pub queue_name: Option<String>,
    /// Events this queue subscribes to: exact names or `Prefix.*`.
    #[serde(default)]
    pub filters: Vec<String>,
    /// Messages per receive (1–10).
    #[serde(default = "default_max_messages")]
    pub max_messages: u32,
    /// Long-poll wait (0–20 s).
    #[serde(default = "default_wait")]
    pub wait_time_seconds: u32,
    /// How long a received message stays invisible (s).
    #[serde(default = "default_visibility")]
    pub visibility_timeout: u32,
    /// Seconds a new message stays invisible before its first delivery (0–900).
    #[serde(default)]
    pub delay_seconds: u32,
    /// Whether the queue's subscription to the topic delivers raw messages (`true`: the body
    /// as published, the event in an SQS attribute) or SNS envelopes (`false`). `setup` sets
    /// the subscription's `RawMessageDelivery` to it and `check` compares them; the host
    /// unwraps envelopes only when this is `false` (see [`Config::envelope_topic`]).
    #[serde(default = "default_true")]
    pub raw_message_delivery: bool,
    /// Where dead letters go; none means dead letters stay on the queue, logged.
    #[serde(default)]
    pub dead_letter_queue: Option<String>,
    /// Deliveries before the broker moves a message to the dead-letter queue.
    #[serde(default = "default_max_receive_count")]
    pub max_receive_count: u32,
    /// Concurrent receive loops.
    #[serde(default = "default_pollers")]
    pub pollers: usize,
    /// Messages being handled at once, across pollers (one slot covers all of a message's
    /// bindings); receiving pauses while every slot is taken.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// A handler running longer than this is abandoned and its message retried (s).
    #[serde(default = "default_handler_timeout")]
    pub handler_timeout_secs: u64,
    /// On shutdown, how long running handlers get to finish (s).
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_secs: u64,
    /// The visibility heartbeat: a message whose handlers still run at half the visibility
    /// timeout gets its visibility extended, again and again, until its handlers return or it
    /// has been invisible this long since it was received (s); 0 turns the heartbeat off.
    #[serde(default = "default_max_visibility_extension")]
    pub max_visibility_extension_secs: u64,
    /// FIFO queues and topics: the message attribute whose value is a published message's
    /// `MessageGroupId` (checked first).
    #[serde(default)]
    pub fifo_group_attribute: Option<String>,
    /// FIFO: the top-level body field (JSON bodies) whose value is the `MessageGroupId`
    /// (checked when the attribute is absent).
    #[serde(default)]
    pub fifo_group_field: Option<String>,
    /// FIFO: the `MessageGroupId` when neither the attribute nor the field gives one.
    #[serde(default = "default_fifo_group")]
    pub fifo_default_group: String,
    /// FIFO: the message attribute whose value is the `MessageDeduplicationId`; without it (or
    /// when a message lacks it) the id is the SHA-256 of the event name and the body.
    #[serde(default)]
    pub fifo_deduplication_attribute: Option<String>,
}

impl Default for SqsConfig {
    fn default() -> Self {
        Self {
            queue_name_template: default_queue_template(),
            queue_name: None,
            filters: Vec::new(),
            max_messages: default_max_messages(),
            wait_time_seconds: default_wait(),
            visibility_timeout: default_visibility(),
            delay_seconds: 0,
            raw_message_delivery: true,
            dead_letter_queue: None,
            max_receive_count: default_max_receive_count(),
            pollers: default_pollers(),
            max_in_flight: default_max_in_flight(),
            handler_timeout_secs: default_handler_timeout(),
            shutdown_timeout_secs: default_shutdown_timeout(),
            max_visibility_extension_secs: default_max_visibility_extension(),
            fifo_group_attribute: None,
            fifo_group_field: None,
            fifo_default_group: default_fifo_group(),
            fifo_deduplication_attribute: None,
        }
    }
}

fn default_queue_template() -> String {
    "iniesta-{env}-{service_name}".into()
}
fn default_max_messages() -> u32 {
    10
}
fn default_wait() -> u32 {
    20
}
fn default_visibility() -> u32 {
    30
}
fn default_max_receive_count() -> u32 {
    5
}
fn default_pollers() -> usize {
    1
}
fn default_max_in_flight() -> usize {
    16
}
fn default_handler_timeout() -> u64 {
    30
}
fn default_shutdown_timeout() -> u64 {
    30
}
fn default_max_visibility_extension() -> u64 {
    43_200
}
fn default_fifo_group() -> String {
    "default".into()
}

/// `[metrics]`: Prometheus text at `/metrics` and readiness at `/health`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// The address to serve on, e.g. `"127.0.0.1:9090"`; none turns the endpoint off.
    #[serde(default)]
    pub listen: Option<String>,
}

/// `[console]`: the operator page at `/` of the metrics server (plugins, bindings, throughput,
/// failures, the dead-letter queue with redrive). Served on `metrics.listen`, or on
/// `127.0.0.1:9090` when that is unset.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve the console.
    #[serde(default)]
    pub enabled: bool,
    /// The environment variable holding the access token; required when the server listens
    /// on a non-loopback address. Every console request must carry it.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Show message bodies in the dead-letter list (hidden by default).
    #[serde(default)]
    pub show_bodies: bool,
}

/// `[errors]`: a structured record of every handler failure, POSTed as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorsConfig {
    /// Where records are POSTed (`http://` or `https://`); none turns reporting off.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Whether records carry the message body (redacted by default).
    #[serde(default)]
    pub include_bodies: bool,
    /// How long one POST may take (s).
    #[serde(default = "default_webhook_timeout")]
    pub timeout_secs: u64,
}

impl Default for ErrorsConfig {
    fn default() -> Self {
        Self {
            webhook_url: None,
            include_bodies: false,
            timeout_secs: default_webhook_timeout(),
        }
    }
}

fn default_webhook_timeout() -> u64 {
    5
}

/// `[lock]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockConfig {
    /// Redis URLs: none = in-process locks.
    #[serde(default)]
    pub urls: Vec<String>,
    /// The shortcut for the Python iniesta's lock layout: one Redis server
    /// (`redis://[:PASSWORD@]HOST[:PORT]`, no database) whose `databases` are the Redlock
    /// nodes. Instead of `urls`.
    #[serde(default)]
    pub server: Option<String>,
    /// With `server`: its databases used as nodes (default [`PYTHON_INIESTA_LOCK_DATABASES`]).
    #[serde(default)]
    pub databases: Option<Vec<u32>>,
    /// Attempts to take a lock, as aioredlock counts them (1 = one try, 0 is treated as 1),
    /// with a random 100–300 ms pause between attempts, before leaving the message.
    #[serde(default = "default_lock_retry")]
    pub retry_count: u32,
    /// Lock validity (s).
    #[serde(default = "default_lock_timeout")]
    pub timeout_secs: u64,
    /// How long a completion record (message id, binding) is kept after the binding acked,
    /// so a redelivered duplicate skips it (s); 0 turns completion records off.
    #[serde(default = "default_completion_ttl")]
    pub completion_ttl_secs: u64,
}

/// The Redis databases the Python iniesta takes its locks in, on one server
/// (`INIESTA_CACHES`: `iniesta1`..`iniesta3` are DBs 1, 2 and 3 of localhost:6379, the nodes
/// of its aioredlock).
pub const PYTHON_INIESTA_LOCK_DATABASES: [u32; 3] = [1, 2, 3];

impl LockConfig {
    /// The lock nodes' URLs: `urls`, or `server` with each of `databases` appended
    /// (`redis://host:6379` → `redis://host:6379/1`, `/2`, `/3`). A problem names the key.
    pub fn node_urls(&self) -> Result<Vec<String>, Problem> {
        let problem = |key: &str, message: String| Problem {
            key: key.into(),
            message,
        };
        let Some(server) = &self.server else {
            if self.databases.is_some() {
                return Err(problem(
                    "lock.databases",
                    "is only used with lock.server (the databases of that server are the lock nodes)".into(),
                ));
            }
            return Ok(self.urls.clone());
        };
        if !self.urls.is_empty() {
            return Err(problem(
                "lock.server",
                "set lock.server or lock.urls, not both".into(),
            ));
        }
        let redacted = crate::lock::url::redact(server);
        let Some((scheme, rest)) = server.split_once("://") else {
            return Err(problem(
                "lock.server",
                format!("`{redacted}` is not a URL: write redis://[:PASSWORD@]HOST[:PORT]"),
            ));
        };
        if scheme != "redis" {
            return Err(problem(
                "lock.server",
                format!("`{redacted}`: only redis:// is supported"),
            ));
        }
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        if authority.is_empty() || !(tail.is_empty() || tail == "/") {
            return Err(problem(
                "lock.server",
                format!("`{redacted}` must be redis://[:PASSWORD@]HOST[:PORT] without a database: the databases come from lock.databases (default [1, 2, 3], the Python iniesta's)"),
            ));
        }
        let databases = self
            .databases
            .clone()
            .unwrap_or_else(|| PYTHON_INIESTA_LOCK_DATABASES.to_vec());
        let mut seen = std::collections::BTreeSet::new();
        if databases.is_empty()
            || databases.len() == 2
            || !databases.iter().all(|d| seen.insert(*d))
        {
            return Err(problem(
                "lock.databases",
                "must list one database or three or more distinct ones (two cannot form a quorum)"
                    .into(),
            ));
        }
        Ok(databases
            .iter()
            .map(|db| format!("{scheme}://{authority}/{db}"))
            .collect())
    }
}

impl Default for LockConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            server: None,
            databases: None,
            retry_count: default_lock_retry(),
            timeout_secs: default_lock_timeout(),
            completion_ttl_secs: default_completion_ttl(),
        }
    }
}

fn default_lock_retry() -> u32 {
    1
}
fn default_lock_timeout() -> u64 {
    10
}
fn default_completion_ttl() -> u64 {
    3600
}

/// `[plugins]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Directories scanned for plugins, merged in order: a later one overrides a plugin of the
    /// same name from an earlier one.
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
    /// Reload plugins and config when their files change.
    #[serde(default = "default_true")]
    pub watch: bool,
    /// `[plugins.isolate]`: plugins that run in a worker process of their own.
    #[serde(default)]
    pub isolate: crate::isolate::IsolateConfig,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            dirs: Vec::new(),
            watch: true,
            isolate: Default::default(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// One `[[bindings]]` entry: events → a plugin's handler.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingConfig {
    /// Exact event names or globs (`*` matches any run of characters, dots included).
    #[serde(default)]
    pub events: Vec<String>,
    /// Take events no other binding takes.
    #[serde(default)]
    pub default: bool,
    /// The plugin's name.
    pub plugin: String,
    /// The handler's name; optional when the plugin exports exactly one.
    #[serde(default)]
    pub handler: Option<String>,
    /// Handed to the handler's constructor as JSON.
    #[serde(default)]
    pub config: Option<toml::Value>,
    /// Per-binding handler timeout (s), overriding `sqs.handler_timeout_secs`.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Call the handler on the async worker thread that holds the message, with no hand-off
    /// to the blocking pool: faster for handlers that return in microseconds and never block,
    /// but its timeout cannot be enforced and a slow call holds up that thread.
    #[serde(default)]
    pub inline: bool,
    /// Set by a hot reload when the binding's plugin was removed: the binding keeps its
    /// position (and so its identity) but takes no events until the plugin returns.
    #[serde(skip)]
    pub disabled: bool,
    /// The match DSL: conditions on the body (on the event for MEGA payloads) that must all
    /// hold for this binding to take a message (see `route::matcher`).
    #[serde(default, rename = "match")]
    pub r#match: Option<toml::Table>,
    /// Media types this binding takes, matched against a `media_type` attribute or body field.
    #[serde(default)]
    pub media_types: Vec<String>,
    /// A JSON Schema file (relative to the config file) bodies must satisfy; failing ones are
    /// dead-lettered before any handler runs.
    #[serde(default)]
    pub schema: Option<PathBuf>,
}

impl BindingConfig {
    /// The binding's config as JSON text for the plugin's constructor.
    pub fn config_json(&self) -> String {
        match &self.config {
            None => String::new(),
            Some(value) => serde_json::to_string(value).unwrap_or_default(),
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

impl Config {
    /// Read and parse a config file, then run the checks that need no plugins.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::read(path)?;
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            });
        }
        Ok(config)
    }

    /// Load for publishing: the checks that matter to a producer, not the consumer's
    /// (plugin directories and bindings may not exist where events are only published).
    pub fn load_for_publishing(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::read(path)?;
        let problems: Vec<Problem> = config
            .problems()
            .into_iter()
            .filter(|p| !p.key.starts_with("plugins.") && !p.key.starts_with("bindings"))
            .collect();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            });
        }
        Ok(config)
    }

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
        let mut config = Config::parse(&text, &base).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parse TOML text; relative paths will resolve against `base_dir`.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Config, String> {
        let mut config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
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
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
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

    /// Every problem that can be found without loading plugins.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, message: String| {
            problems.push(Problem {
                key: key.to_string(),
                message,
            })
        };
        if self.service.trim().is_empty() {
            bad(
                "service",
                "must not be empty (it is appended to every published event)".into(),
            );
        }
        if self.initialization.is_empty() {
            bad(
                "initialization",
                "must name at least one of SNS_PRODUCER, EVENT_POLLING, QUEUE_POLLING".into(),
            );
        }
        let needs_topic = self.does(InitializationType::SnsProducer)
            || self.does(InitializationType::EventPolling);
        match self.sns.topic_arn.as_deref() {
            None if needs_topic => bad(
                "sns.topic_arn",
                "is required for SNS_PRODUCER and EVENT_POLLING (e.g. \"arn:aws:sns:us-east-1:000000000000:global\")".into(),
            ),
            Some(arn) if !arn.starts_with("arn:") || arn.split(':').count() < 6 => bad(
                "sns.topic_arn",
                format!("`{arn}` is not a topic ARN (expected arn:aws:sns:REGION:ACCOUNT:NAME)"),
            ),
            _ => {}
        }
        if self.sns.event_key.trim().is_empty() {
            bad(
                "sns.event_key",
                "must not be empty (the Python iniesta uses \"iniesta_pass\")".into(),
            );
        }
        if self.does(InitializationType::EventPolling) && self.sqs.filters.is_empty() {
            bad(
                "sqs.filters",
                "EVENT_POLLING needs at least one filter, e.g. [\"Order.*\"] (or use QUEUE_POLLING)".into(),
            );
        }
        for (i, filter) in self.sqs.filters.iter().enumerate() {
            if let Err(e) = check_filter(filter) {
                bad(&format!("sqs.filters[{i}]"), e);
            }
        }
        if !self.sqs.raw_message_delivery {
            if self.broker.kind == BrokerKind::Local {
                bad(
                    "sqs.raw_message_delivery",
                    "the local broker always delivers raw messages; `false` applies to broker.kind = \"aws\" only".into(),
                );
            } else if !self.does(InitializationType::EventPolling) {
                bad(
                    "sqs.raw_message_delivery",
                    "`false` describes the queue's subscription to sns.topic_arn, which only EVENT_POLLING has".into(),
                );
            } else if self.does(InitializationType::QueuePolling) {
                // Producers send straight to a QUEUE_POLLING queue by design, and an envelope's
                // TopicArn is only body text: on a queue that unwraps envelopes, such a sender
                // could write one naming sns.topic_arn and choose the event.
                bad(
                    "sqs.raw_message_delivery",
                    "`false` cannot be combined with QUEUE_POLLING: messages sent straight to the queue could pass as SNS envelopes and choose their event; keep raw delivery (the default) or drop QUEUE_POLLING".into(),
                );
            }
        }
        if self.sqs.queue_name.is_none() {
            let stripped = self
                .sqs
                .queue_name_template
                .replace("{env}", "")
                .replace("{service_name}", "");
            if stripped.contains('{') || stripped.contains('}') {
                bad(
                    "sqs.queue_name_template",
                    "only {env} and {service_name} can be filled in".into(),
                );
            }
        }
        let queue = self.queue_name();
        if let Err(e) = check_queue_name(&queue) {
            bad("sqs.queue_name", format!("`{queue}` {e}"));
        }
        if let Some(dlq) = &self.sqs.dead_letter_queue {
            if let Err(e) = check_queue_name(dlq) {
                bad("sqs.dead_letter_queue", format!("`{dlq}` {e}"));
            }
            if *dlq == queue {
                bad(
                    "sqs.dead_letter_queue",
                    "must differ from the queue itself".into(),
                );
            }
        }
        if !(1..=10).contains(&self.sqs.max_messages) {
            bad(
                "sqs.max_messages",
                format!(
                    "{} is outside 1..=10 (the SQS limit)",
                    self.sqs.max_messages
                ),
            );
        }
        if self.sqs.wait_time_seconds > 20 {
            bad(
                "sqs.wait_time_seconds",
                format!("{} is over 20 (the SQS limit)", self.sqs.wait_time_seconds),
            );
        }
        if self.sqs.visibility_timeout > 43_200 {
            bad(
                "sqs.visibility_timeout",
                format!(
                    "{} is over 43200 s (12 h, the SQS limit)",
                    self.sqs.visibility_timeout
                ),
            );
        }
        if self.sqs.delay_seconds > 900 {
            bad(
                "sqs.delay_seconds",
                format!("{} is over 900 (the SQS limit)", self.sqs.delay_seconds),
            );
        }
        if !(1..=1000).contains(&self.sqs.max_receive_count) {
            bad(
                "sqs.max_receive_count",
                format!("{} is outside 1..=1000", self.sqs.max_receive_count),
            );
        }
        if self.sqs.pollers == 0 {
            bad("sqs.pollers", "must be at least 1".into());
        }
        if self.sqs.max_in_flight == 0 {
            bad("sqs.max_in_flight", "must be at least 1".into());
        }
        if self.sqs.handler_timeout_secs == 0 {
            bad("sqs.handler_timeout_secs", "must be at least 1".into());
        }
        if self.sqs.max_visibility_extension_secs > 43_200 {
            bad(
                "sqs.max_visibility_extension_secs",
                format!(
                    "{} is over 43200 s (12 h, the longest SQS keeps a received message invisible); 0 turns the heartbeat off",
                    self.sqs.max_visibility_extension_secs
                ),
            );
        }
        for problem in self.fifo_problems(&queue) {
            bad(&problem.key, problem.message);
        }
        if let Some(listen) = &self.metrics.listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                bad(
                    "metrics.listen",
                    format!("`{listen}` is not an address and port, e.g. \"127.0.0.1:9090\" (remove the key to turn metrics off)"),
                );
            }
        }
        if let Some(url) = &self.errors.webhook_url {
            if let Err(e) = check_webhook_url(url) {
                bad("errors.webhook_url", e);
            }
        }
        if self.errors.timeout_secs == 0 {
            bad("errors.timeout_secs", "must be at least 1".into());
        }
        for problem in self.plugins.isolate.problems() {
            bad(&problem.key, problem.message);
        }
        if self.lock.timeout_secs == 0 {
            bad("lock.timeout_secs", "must be at least 1".into());
        }
        match self.lock.node_urls() {
            Err(problem) => bad(&problem.key, problem.message),
            Ok(urls) if urls.len() == 2 => bad(
                "lock.urls",
                "two Redis servers cannot form a quorum: use none (in-process), one, or three or more".into(),
            ),
            Ok(_) => {}
        }
        if self.broker.kind == BrokerKind::Local && self.broker.path.as_os_str().is_empty() {
            bad(
                "broker.path",
                "must name the local broker's SQLite file".into(),
            );
        }
        if self.consumes() {
            if self.plugins.dirs.is_empty() {
                bad(
                    "plugins.dirs",
                    "lists no directory: add the directory your plugins are built into, e.g. [\"target/release\"]".into(),
                );
            }
            for (i, dir) in self.plugins.dirs.iter().enumerate() {
                let resolved = self.resolve(dir);
                if !resolved.is_dir() {
                    bad(
                        &format!("plugins.dirs[{i}]"),
                        format!(
                            "directory {} does not exist (build the plugins first: cargo build --release)",
                            resolved.display()
                        ),
                    );
                }
            }
            if self.bindings.is_empty() {
                bad(
                    "bindings",
                    "no binding and no default: add a [[bindings]] entry with `events = [...]` or `default = true`".into(),
                );
            }
        }
        let defaults = self.bindings.iter().filter(|b| b.default).count();
        if defaults > 1 {
            bad(
                "bindings",
                format!("{defaults} bindings say `default = true`; only one may"),
            );
        }
        for (i, binding) in self.bindings.iter().enumerate() {
            let key = format!("bindings[{i}]");
            if binding.plugin.trim().is_empty() {
                bad(&format!("{key}.plugin"), "must name a plugin".into());
            }
            if binding.default && !binding.events.is_empty() {
                bad(
                    &key,
                    "has both `default = true` and `events`; a default binding takes every event no other binding takes, so drop `events`".into(),
                );
            }
            if !binding.default && binding.events.is_empty() {
                bad(
                    &format!("{key}.events"),
                    "is empty: list event names or globs, or set `default = true`".into(),
                );
            }
            if binding.timeout_secs == Some(0) {
                bad(&format!("{key}.timeout_secs"), "must be at least 1".into());
            }
            if binding.inline && self.plugins.isolate.isolates(&binding.plugin) {
                bad(
                    &format!("{key}.inline"),
                    format!(
                        "plugin `{}` is isolated: its calls wait on a worker process, which must not happen on an async thread; remove `inline` (or the plugin from plugins.isolate.names)",
                        binding.plugin
                    ),
                );
            }
            if let Some(config) = &binding.config {
                if !config.is_table() {
                    bad(
                        &format!("{key}.config"),
                        "must be a table, e.g. config = { path = \"x\" }".into(),
                    );
                }
            }
            if let Err(found) = crate::route::Rules::compile(binding, &key, &self.base_dir) {
                for problem in found {
                    bad(&problem.key, problem.message);
                }
            }
            for (j, event) in binding.events.iter().enumerate() {
                let ekey = format!("{key}.events[{j}]");
                let pattern = match Pattern::parse(event) {
                    Ok(p) => p,
                    Err(e) => {
                        bad(&ekey, e);
                        continue;
                    }
                };
                if let Some(message) = self.unreachable_reason(&pattern) {
                    bad(&ekey, message);
                }
            }
        }
        problems
    }

    /// Why no event this host receives could ever match `pattern`, if that is so.
    ///
    /// Only EVENT_POLLING without QUEUE_POLLING restricts what arrives: the subscription's
    /// filter policy lets through only names matching `sqs.filters`. Ingress plugins
    /// (`[[ingress]]`) bring events that never pass that filter, so with any of them
    /// configured every pattern may be reached.
    fn unreachable_reason(&self, pattern: &Pattern) -> Option<String> {
        if !self.does(InitializationType::EventPolling)
            || self.does(InitializationType::QueuePolling)
            || self.sqs.filters.is_empty()
            || !self.ingress.is_empty()
        {
            return None;
        }
        let reachable = self
            .sqs
            .filters
            .iter()
            .any(|filter| match filter.strip_suffix('*') {
                Some(prefix) => pattern.can_match_prefix(prefix),
                None => pattern.matches(filter),
            });
        if reachable {
            None
        } else {
            Some(format!(
                "`{}` can never match: the queue only receives events matching sqs.filters {:?} (add a filter for it, or fix the pattern; published names end in `.{{service}}`)",
                pattern.as_str(),
                self.sqs.filters
            ))
        }
    }
}

impl Config {
    /// What is wrong with the FIFO settings: a FIFO queue needs a FIFO dead-letter queue and,
    /// when subscribed, a FIFO topic (SNS delivers FIFO topics only to FIFO queues and
    /// standard topics only to standard queues).
    fn fifo_problems(&self, queue: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        let fifo_queue = crate::broker::fifo::is_fifo(queue);
        if let Some(dlq) = &self.sqs.dead_letter_queue {
            if self.consumes() && crate::broker::fifo::is_fifo(dlq) != fifo_queue {
                problems.push(Problem {
                    key: "sqs.dead_letter_queue".into(),
                    message: if fifo_queue {
                        format!("`{dlq}` must be a FIFO queue too (end in `.fifo`): the dead-letter queue of a FIFO queue is a FIFO queue")
                    } else {
                        format!("`{dlq}` is a FIFO queue but `{queue}` is not; use a standard dead-letter queue")
                    },
                });
            }
        }
        let fifo_topic = self
            .topic_name()
            .map(|t| crate::broker::fifo::is_fifo(&t))
            .unwrap_or(false);
        if self.does(InitializationType::EventPolling) && self.sns.topic_arn.is_some() {
            if fifo_queue && !fifo_topic {
                problems.push(Problem {
                    key: "sns.topic_arn".into(),
                    message: format!("the queue `{queue}` is a FIFO queue, which only a FIFO topic (a name ending in `.fifo`) can deliver to; use a FIFO topic or QUEUE_POLLING"),
                });
            } else if fifo_topic && !fifo_queue {
                problems.push(Problem {
                    key: "sqs.queue_name".into(),
                    message: format!("`{queue}` must be a FIFO queue (end in `.fifo`): a FIFO topic only delivers to FIFO queues"),
                });
            }
        }
        for (key, value) in [
            ("sqs.fifo_group_attribute", &self.sqs.fifo_group_attribute),
            ("sqs.fifo_group_field", &self.sqs.fifo_group_field),
            (
                "sqs.fifo_deduplication_attribute",
                &self.sqs.fifo_deduplication_attribute,
            ),
        ] {
            if value
                .as_deref()
                .map(|v| v.trim().is_empty())
                .unwrap_or(false)
            {
                problems.push(Problem {
                    key: key.into(),
                    message: "must not be empty (remove the key instead)".into(),
                });
            }
        }
        if let Err(e) = crate::broker::fifo::check_id(&self.sqs.fifo_default_group) {
            problems.push(Problem {
                key: "sqs.fifo_default_group".into(),
                message: format!("`{}` {e}", self.sqs.fifo_default_group),
            });
        }
        crate::egress::config::problems(self, &mut problems);
        problems
    }
}

fn check_webhook_url(url: &str) -> Result<(), String> {
    let parsed = url.parse::<hyper::Uri>().map_err(|e| {
        format!("is not a URL ({e}); e.g. \"http://127.0.0.1:8080/iniesta-errors\"")
    })?;
    match parsed.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(
            "must start with http:// or https:// (e.g. \"http://127.0.0.1:8080/iniesta-errors\")"
                .into(),
        ),
    }
    if parsed.host().map(str::is_empty).unwrap_or(true) {
        return Err("names no host".into());
    }
    Ok(())
}

fn check_filter(filter: &str) -> Result<(), String> {
    if filter.trim().is_empty() {
        return Err("is empty".into());
    }
    let head = filter.strip_suffix(".*").unwrap_or(filter);
    if head.contains('*') {
        return Err(format!(
            "`{filter}`: only a trailing `.*` subscribes by prefix (`Order.*` -> {{\"prefix\": \"Order.\"}}, as the Python iniesta builds it); any other `*` would be matched literally by SNS"
        ));
    }
    Ok(())
}

fn check_queue_name(name: &str) -> Result<(), String> {
    let base = name.strip_suffix(".fifo").unwrap_or(name);
    if base.is_empty() || name.len() > 80 {
        return Err("must be 1 to 80 characters".into());
    }
    if !base
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err("may only hold letters, digits, `-` and `_` (plus a `.fifo` suffix)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new(".")).expect("parses")
    }

    #[test]
    fn defaults_and_queue_name() {
        let c = parse("service = \"receiver\"\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:000000000000:global\"\n");
        assert_eq!(c.queue_name(), "iniesta-development-receiver");
        assert_eq!(c.topic_name().as_deref(), Some("global"));
        assert_eq!(c.initialization_type(), "SNS_PRODUCER|EVENT_POLLING");
        assert_eq!(c.sqs.max_messages, 10);
        assert_eq!(c.lock.retry_count, 1);
    }

    #[test]
    fn envelopes_come_only_from_the_topic_of_an_aws_subscription_without_raw_delivery() {
        let aws = "service = \"s\"\n[broker]\nkind = \"aws\"\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:1:global\"\n[sqs]\nfilters = [\"Order.*\"]\n";
        let raw = parse(aws);
        assert!(raw.sqs.raw_message_delivery, "raw by default");
        assert_eq!(raw.envelope_topic(), None);
        let keys = |c: &Config| -> Vec<String> {
            c.problems()
                .into_iter()
                .map(|p| p.key)
                .filter(|k| k.starts_with("sqs."))
                .collect()
        };
        let wrapped = parse(&format!("{aws}raw_message_delivery = false\n"));
        assert!(keys(&wrapped).is_empty(), "{:?}", wrapped.problems());
        assert_eq!(
            wrapped.envelope_topic(),
            Some("arn:aws:sns:us-east-1:1:global")
        );
        let queue_only = parse(&format!(
            "initialization = [\"QUEUE_POLLING\"]\n{aws}raw_message_delivery = false\n"
        ));
        assert_eq!(queue_only.envelope_topic(), None);
        assert_eq!(
            keys(&queue_only),
            vec!["sqs.raw_message_delivery".to_string()]
        );
        // Senders straight to the queue could pass a body off as an envelope of the topic.
        let both = parse(&format!(
            "initialization = [\"EVENT_POLLING\", \"QUEUE_POLLING\"]\n{aws}raw_message_delivery = false\n"
        ));
        assert_eq!(keys(&both), vec!["sqs.raw_message_delivery".to_string()]);
        let local = parse(
            "service = \"s\"\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:1:global\"\n[sqs]\nfilters = [\"Order.*\"]\nraw_message_delivery = false\n",
        );
        assert_eq!(
            local.envelope_topic(),
            None,
            "the local broker delivers raw"
        );
        assert_eq!(keys(&local), vec!["sqs.raw_message_delivery".to_string()]);
    }

    #[test]
    fn initialization_type_order_matches_python() {
        let c = parse("service = \"s\"\ninitialization = [\"QUEUE_POLLING\", \"SNS_PRODUCER\", \"EVENT_POLLING\"]\n");
        assert_eq!(
            c.initialization_type(),
            "SNS_PRODUCER|EVENT_POLLING|QUEUE_POLLING"
        );
    }

    #[test]
    fn unknown_key_names_the_key() {
        let err =
            Config::parse("service = \"s\"\n[sqs]\nmax_mesages = 3\n", Path::new(".")).unwrap_err();
        assert!(err.contains("max_mesages"), "{err}");
    }

    #[test]
    fn unreachable_glob_is_a_problem() {
        let c = parse(
            "service = \"s\"\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:1:global\"\n[sqs]\nfilters = [\"Order.*\"]\n\
             [[bindings]]\nevents = [\"Payment.*\"]\nplugin = \"echo\"\n[[bindings]]\nevents = [\"Ord*\", \"Order.Created.shop\"]\nplugin = \"echo\"\n",
        );
        let problems = c.problems();
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"bindings[0].events[0]"), "{problems:?}");
        assert!(
            !keys.iter().any(|k| k.starts_with("bindings[1]")),
            "{problems:?}"
        );
    }

    #[test]
    fn with_an_ingress_any_pattern_may_be_reached() {
        // Ingress messages never pass the subscription's filter policy.
        let c = parse(
            "service = \"s\"\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:1:global\"\n[sqs]\nfilters = [\"Order.*\"]\n\
             [[ingress]]\nplugin = \"nats\"\n[[bindings]]\nevents = [\"Payment.*\"]\nplugin = \"echo\"\n",
        );
        let problems = c.problems();
        assert!(
            !problems.iter().any(|p| p.key.starts_with("bindings[0]")),
            "{problems:?}"
        );
    }

    #[test]
    fn fifo_metrics_and_error_keys_are_checked() {
        let c = parse(
            "service = \"s\"\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:1:global\"\n\
             [sqs]\nfilters = [\"Order.*\"]\nqueue_name = \"q.fifo\"\ndead_letter_queue = \"d\"\n\
             max_visibility_extension_secs = 50000\nfifo_default_group = \"a b\"\nfifo_group_field = \"\"\n\
             [metrics]\nlisten = \"nowhere\"\n[errors]\nwebhook_url = \"ftp://x\"\ntimeout_secs = 0\n",
        );
        let keys: Vec<_> = c.problems().into_iter().map(|p| p.key).collect();
        for k in [
            "sns.topic_arn",
            "sqs.dead_letter_queue",
            "sqs.max_visibility_extension_secs",
            "sqs.fifo_default_group",
            "sqs.fifo_group_field",
            "metrics.listen",
            "errors.webhook_url",
            "errors.timeout_secs",
        ] {
            assert!(keys.iter().any(|x| x == k), "missing {k} in {keys:?}");
        }
        let good = parse(
            "service = \"s\"\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:1:global.fifo\"\n\
             [sqs]\nfilters = [\"Order.*\"]\nqueue_name = \"q.fifo\"\ndead_letter_queue = \"d.fifo\"\n\
             fifo_group_field = \"customer\"\n[metrics]\nlisten = \"127.0.0.1:9090\"\n\
             [errors]\nwebhook_url = \"https://hooks.example.com/iniesta?token=x\"\n",
        );
        let keys: Vec<_> = good.problems().into_iter().map(|p| p.key).collect();
        for k in keys {
            assert!(
                k.starts_with("plugins") || k == "bindings",
                "unexpected problem with {k}"
            );
        }
        // A standard queue under a FIFO topic is refused the other way round.
        let c = parse(
            "service = \"s\"\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:1:global.fifo\"\n\
             [sqs]\nfilters = [\"Order.*\"]\nqueue_name = \"q\"\n",
        );
        assert!(c.problems().iter().any(|p| p.key == "sqs.queue_name"));
    }

    #[test]
    fn value_ranges_are_checked() {
        let c = parse("service = \"\"\ninitialization = [\"QUEUE_POLLING\"]\n[sqs]\nmax_messages = 11\nwait_time_seconds = 21\n[lock]\nurls = [\"redis://a\", \"redis://b\"]\n");
        let keys: Vec<_> = c.problems().into_iter().map(|p| p.key).collect();
        for k in [
            "service",
            "sqs.max_messages",
            "sqs.wait_time_seconds",
            "lock.urls",
            "plugins.dirs",
            "bindings",
        ] {
            assert!(keys.iter().any(|x| x == k), "missing {k} in {keys:?}");
        }
    }
}
