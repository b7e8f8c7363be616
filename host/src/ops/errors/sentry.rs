//! Sentry events for handler failures and host-level incidents (`[errors.sentry]`), built with
//! the `sentry` crate's client and protocol types and sent by [`super::sentry_transport`].
//!
//! One event per handler failure, grouped by a fingerprint of binding, failure kind and error
//! type — never the message id — so a Sentry project shows one issue per binding and kind of
//! trouble. The failure is the exception (the handler's error chain, the panic message, the
//! timeout, the dead-letter or schema reason); the event name, binding, plugin and its
//! version, and the failure kind are tags; the message id, receive count, queue and the
//! (scrubbed) attributes are the `message` context. Every event passes [`scrub_event`] (the
//! default `before_send`) on its way out.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sentry::protocol::{Context, Event, Exception, Level, Map, Mechanism, User, Value};

use super::scrub::Scrubber;
use super::sentry_transport::{self, Endpoint};
use super::{Failure, FailureKind};
use crate::config::{Config, Problem, SentryConfig};
use crate::ops::OpsError;
use crate::tasks::Tasks;

/// The environment variable read when `errors.sentry.dsn` is absent.
pub const DSN_ENV: &str = "SENTRY_DSN";
/// The most body bytes an event carries (when bodies are included).
const MAX_BODY: usize = 16 * 1024;
/// The most characters of an error's head used for grouping.
const MAX_TYPE: usize = 100;
/// The most characters of a tag's name, as Sentry takes them.
const MAX_TAG_KEY: usize = 32;
/// The most characters of a tag's value, as Sentry takes them.
const MAX_TAG_VALUE: usize = 200;

/// Where a tag or the user id comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `attributes.NAME`: a message attribute.
    Attribute(String),
    /// `body.PATH`: a field of a JSON body (dotted for nested objects, numbers index arrays).
    Body(String),
    /// A bare `NAME`, as microcosm-pubsub's `custom_tags_mapping`: the body's
    /// `opaqueData.NAME`, else the message attribute `NAME`.
    Opaque(String),
}

impl Source {
    /// Read a source as written in `[errors.sentry]`.
    pub fn parse(text: &str) -> Result<Source, String> {
        let text = text.trim();
        if let Some(name) = text.strip_prefix("attributes.") {
            if name.is_empty() {
                return Err("`attributes.` names no attribute".into());
            }
            return Ok(Source::Attribute(name.to_string()));
        }
        if let Some(path) = text.strip_prefix("body.") {
            if path.is_empty() || path.split('.').any(str::is_empty) {
                return Err(format!("`{text}` is not a body path (body.FIELD[.FIELD…])"));
            }
            return Ok(Source::Body(path.to_string()));
        }
        if text.is_empty() {
            return Err("an empty source: write attributes.NAME, body.PATH or a bare NAME".into());
        }
        Ok(Source::Opaque(text.to_string()))
    }

    /// The names this source reads through (an attribute's name, each step of a body path):
    /// a source through a secret-looking name is never read.
    fn names(&self) -> Vec<&str> {
        match self {
            Source::Attribute(name) | Source::Opaque(name) => vec![name.as_str()],
            Source::Body(path) => path.split('.').collect(),
        }
    }

    /// Whether this source reads through a name `scrubber` filters.
    pub fn is_secret(&self, scrubber: &Scrubber) -> bool {
        self.names().into_iter().any(|n| scrubber.is_secret_key(n))
    }

    /// The value this source names in `failure`'s message, as text.
    pub fn lookup(&self, failure: &Failure<'_>) -> Option<String> {
        let envelope = failure.envelope;
        let from_body = |path: &str| {
            let json = envelope.payload().json.as_ref()?;
            iniesta_plugin_api::payload::json_path(json, path).and_then(scalar_text)
        };
        match self {
            Source::Attribute(name) => envelope.attributes.get(name).map(|a| a.value.clone()),
            Source::Body(path) => from_body(path),
            Source::Opaque(name) => envelope
                .payload()
                .json
                .as_ref()
                .and_then(|json| json.get("opaqueData"))
                .and_then(|opaque| opaque.get(name))
                .and_then(scalar_text)
                .or_else(|| envelope.attributes.get(name).map(|a| a.value.clone())),
        }
    }
}

/// A JSON scalar as tag text; objects and arrays are not tags.
fn scalar_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The stable head of a failure reason that groups it: the outermost part of a
/// `context: cause` chain, with numbers, hex ids and quoted values masked, so `order 41: …`
/// and `order 42: …` are one issue.
pub fn error_type(reason: &str) -> String {
    use std::sync::LazyLock;
    static MASKS: LazyLock<Vec<(regex::Regex, &'static str)>> = LazyLock::new(|| {
        [
            (r#""[^"]*"|'[^']*'|`[^`]*`"#, "…"),
            (r"\b[0-9a-fA-F]{8}-[0-9a-fA-F-]{27}\b", "<id>"),
            (r"\b(?:0x)?[0-9a-fA-F]*[0-9][0-9a-fA-F]*\b", "N"),
        ]
        .into_iter()
        .map(|(p, r)| (super::scrub::regex(p), r))
        .collect()
    });
    let head = reason.split(": ").next().unwrap_or(reason).trim();
    let mut head = head.to_string();
    for (pattern, replacement) in MASKS.iter() {
        head = pattern.replace_all(&head, *replacement).into_owned();
    }
    let head: String = head.chars().take(MAX_TYPE).collect();
    if head.is_empty() {
        "(no message)".into()
    } else {
        head
    }
}

/// What events are built from: the settings of `[errors.sentry]` that shape them.
#[derive(Debug)]
struct Shape {
    service: String,
    queue: String,
    tags: Vec<(Source, String)>,
    user_id: Option<Source>,
    include_bodies: bool,
    sample_rate: f32,
    scrubber: Scrubber,
}

/// Sends failures and host alerts to Sentry; cheap to clone.
#[derive(Clone)]
pub struct SentryReporter {
    client: Arc<sentry::Client>,
    shape: Arc<Shape>,
    raised: Arc<Mutex<HashSet<String>>>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
    timeout: Duration,
}

impl std::fmt::Debug for SentryReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SentryReporter")
    }
}

/// The DSN `[errors.sentry]` names (or `SENTRY_DSN`), when the section is there and enabled.
fn configured(config: &Config) -> Option<(&SentryConfig, Option<String>)> {
    let sentry = config.errors.sentry.as_ref().filter(|s| s.enabled)?;
    let dsn = sentry
        .dsn
        .clone()
        .or_else(|| std::env::var(DSN_ENV).ok())
        .filter(|d| !d.trim().is_empty());
    Some((sentry, dsn))
}

fn parse_dsn(dsn: &str) -> Result<sentry::types::Dsn, String> {
    // The DSN's own error text never repeats the DSN (it holds the key).
    dsn.trim()
        .parse::<sentry::types::Dsn>()
        .map_err(|e| format!("not a Sentry DSN ({e}); it looks like https://KEY@HOST/PROJECT_ID"))
}

/// Problems with `[errors.sentry]` that need the runtime: a DSN that parses, and sources.
pub fn problems(config: &Config) -> Vec<Problem> {
    let Some((sentry, dsn)) = configured(config) else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    match dsn {
        None => problems.push(Problem::new(
            "errors.sentry.dsn",
            format!("no DSN: set errors.sentry.dsn or {DSN_ENV} (or enabled = false)"),
        )),
        Some(dsn) => {
            if let Err(e) = parse_dsn(&dsn) {
                problems.push(Problem::new("errors.sentry.dsn", e));
            }
        }
    }
    for (source, tag) in &sentry.tags {
        if let Err(e) = Source::parse(source) {
            problems.push(Problem::new(format!("errors.sentry.tags.{source}"), e));
        }
        if let Err(e) = check_tag_key(tag) {
            problems.push(Problem::new(format!("errors.sentry.tags.{source}"), e));
        }
    }
    if let Some(Err(e)) = sentry.user_id.as_deref().map(Source::parse) {
        problems.push(Problem::new("errors.sentry.user_id", e));
    }
    problems
}

/// A tag name Sentry accepts: up to 32 of `A-Z a-z 0-9 _ . : -`.
fn check_tag_key(tag: &str) -> Result<(), String> {
    if tag.is_empty()
        || tag.chars().count() > MAX_TAG_KEY
        || !tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
    {
        return Err(format!(
            "`{tag}` is not a Sentry tag name (1 to {MAX_TAG_KEY} of A-Z a-z 0-9 _ . : -)"
        ));
    }
    Ok(())
}

/// This machine's name, for the event's `server_name`.
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
}

impl SentryReporter {
    /// Start the client and its sender (a task of `tasks`) for `[errors.sentry]`; `None` when
    /// the section is absent or disabled.
    pub fn start(config: &Config, tasks: &Tasks) -> Result<Option<SentryReporter>, OpsError> {
        let Some((sentry, dsn)) = configured(config) else {
            return Ok(None);
        };
        let dsn = dsn.ok_or_else(|| {
            OpsError::Sentry(format!("no DSN: set errors.sentry.dsn or {DSN_ENV}"))
        })?;
        let dsn = parse_dsn(&dsn).map_err(OpsError::Sentry)?;
        let https = dsn.scheme() == sentry::types::Scheme::Https;
        let client = crate::web::WebClient::new(https).map_err(OpsError::Sentry)?;
        let url: hyper::Uri = dsn
            .envelope_api_url()
            .as_str()
            .parse()
            .map_err(|e| OpsError::Sentry(format!("the DSN gives no envelope URL: {e}")))?;
        let user_agent = crate::web::USER_AGENT;
        let timeout = Duration::from_secs(sentry.timeout_secs.max(1));
        let endpoint = Endpoint {
            url,
            auth: dsn.to_auth(Some(user_agent)).to_string(),
            host: dsn.host().to_string(),
            client,
            timeout,
        };
        let sources = |text: &str| Source::parse(text).map_err(OpsError::Sentry);
        // A source through a secret-looking name (or one in drop_keys) is never read: it is
        // left out here, once.
        let scrubber = Scrubber::new(&sentry.drop_keys);
        let mut tags = Vec::new();
        for (source, tag) in &sentry.tags {
            let source = sources(source)?;
            if !source.is_secret(&scrubber) {
                tags.push((source, tag.clone()));
            }
        }
        let user_id = sentry
            .user_id
            .as_deref()
            .map(sources)
            .transpose()?
            .filter(|s| !s.is_secret(&scrubber));
        let shape = Shape {
            service: config.service.clone(),
            queue: config.queue_name(),
            tags,
            user_id,
            include_bodies: sentry.include_bodies,
            sample_rate: sentry.sample_rate as f32,
            scrubber,
        };
        let (factory, rx, recorder) = sentry_transport::queue();
        let scrubber = shape.scrubber.clone();
        let mut options = sentry::ClientOptions::new();
        options.dsn = Some(dsn.clone());
        options.release =
            Some(Cow::Owned(sentry.release.clone().unwrap_or_else(|| {
                format!("iniesta@{}", env!("CARGO_PKG_VERSION"))
            })));
        options.environment = Some(Cow::Owned(
            sentry
                .environment
                .clone()
                .unwrap_or_else(|| config.env.clone()),
        ));
        options.server_name = hostname().map(Cow::Owned);
        options.default_integrations = false;
        options.send_default_pii = false;
        options.user_agent = Cow::Borrowed(user_agent);
        options.before_send = Some(Arc::new(move |event| Some(scrub_event(&scrubber, event))));
        let options = options.transport(factory);
        let client = Arc::new(sentry::Client::with_options(options));
        let task = tasks.spawn(sentry_transport::send_loop(rx, recorder, endpoint));
        tracing::info!(sentry_host = %dsn.host(), project = %dsn.project_id(), include_bodies = sentry.include_bodies,
            sample_rate = sentry.sample_rate, "handler failures are reported to Sentry");
        let reporter = SentryReporter {
            client,
            shape: Arc::new(shape),
            raised: Arc::default(),
            task: Arc::new(Mutex::new(Some(task))),
            timeout,
        };
        Ok(Some(reporter))
    }

    /// Queue the event for `failure` (sampled by `sample_rate`); never waits.
    pub fn report(&self, failure: &Failure<'_>) {
        if !self.client.is_enabled() {
            // After the flush at shutdown: counted, not silently lost.
            super::count("sentry", "dropped");
            return;
        }
        if !self.client.sample_should_send(self.shape.sample_rate) {
            super::count("sentry", "sampled_out");
            return;
        }
        self.client
            .capture_event(failure_event(&self.shape, failure), None);
    }

    /// Report a host-level incident under `key` (`broker`, `lock`, `config`, `plugin:FILE`)
    /// unless it is already raised; a later [`SentryReporter::clear`] re-arms it.
    pub fn raise(&self, key: &str, level: Level, message: &str, fields: &BTreeMap<String, String>) {
        let fresh = crate::mutex::lock(&self.raised).insert(key.to_string());
        if !fresh {
            return;
        }
        if !self.client.is_enabled() {
            super::count("sentry", "dropped");
            return;
        }
        self.client
            .capture_event(alert_event(&self.shape, key, level, message, fields), None);
    }

    /// The incident under `key` is over.
    pub fn clear(&self, key: &str) {
        crate::mutex::lock(&self.raised).remove(key);
    }

    /// Send what is queued, for up to `errors.sentry.timeout_secs` (once the pipeline has
    /// stopped); then stop taking events.
    pub async fn flush(self) {
        // Closes the transport's queue; the sender drains it and ends.
        self.client.close(Some(Duration::ZERO));
        let task = crate::mutex::lock(&self.task).take();
        if let Some(mut task) = task {
            if tokio::time::timeout(self.timeout, &mut task).await.is_err() {
                // Stop the sender now rather than let it run on against the process's exit.
                task.abort();
                tracing::warn!("Sentry: events still unsent at shutdown are dropped");
            }
        }
    }
}

/// Set a tag, its value on one line and cut to what Sentry keeps.
fn tag(event: &mut Event<'static>, key: &str, value: impl Into<String>) {
    event.tags.insert(key.to_string(), tag_value(&value.into()));
}

/// A tag value as Sentry keeps it: one line, at most [`MAX_TAG_VALUE`] characters.
fn tag_value(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_TAG_VALUE)
        .collect()
}

/// The event for one handler failure.
fn failure_event(shape: &Shape, failure: &Failure<'_>) -> Event<'static> {
    let kind = failure.kind;
    let (ty, handled) = match kind {
        FailureKind::Error => ("HandlerError", true),
        FailureKind::Panic => ("HandlerPanic", false),
        FailureKind::Timeout => ("HandlerTimeout", true),
        FailureKind::DeadLetter => ("DeadLettered", true),
        FailureKind::Schema => ("SchemaRejected", true),
        FailureKind::Crashed => ("HandlerCrashed", false),
        FailureKind::ClaimCheck => ("ClaimCheckRefused", true),
    };
    let error_type = match kind {
        // One issue per binding: a timeout's text only repeats the limit; schema errors name
        // the body's faults, which vary per message.
        FailureKind::Timeout | FailureKind::Schema => kind.as_str().to_string(),
        // From the scrubbed text: the fingerprint is sent too.
        _ => error_type(&shape.scrubber.text(failure.reason)),
    };
    let envelope = failure.envelope;
    let binding = failure.binding;
    let grouped_by = binding
        .map(|b| b.label.clone())
        .unwrap_or_else(|| format!("event {}", envelope.event));
    let mut event = Event {
        level: match kind {
            FailureKind::DeadLetter | FailureKind::Schema | FailureKind::ClaimCheck => {
                Level::Warning
            }
            _ => Level::Error,
        },
        logger: Some("iniesta".into()),
        transaction: Some(envelope.event.clone()),
        fingerprint: Cow::Owned(vec![
            Cow::Borrowed("iniesta"),
            Cow::Owned(grouped_by),
            Cow::Borrowed(kind.as_str()),
            Cow::Owned(error_type),
        ]),
        ..Default::default()
    };
    event.exception = vec![Exception {
        ty: ty.to_string(),
        value: Some(failure.reason.to_string()),
        module: binding.map(|b| b.plugin.name.clone()),
        mechanism: Some(Mechanism {
            ty: format!("iniesta.{}", kind.as_str()),
            handled: Some(handled),
            ..Default::default()
        }),
        ..Default::default()
    }]
    .into();
    tag(&mut event, "failure_kind", kind.as_str());
    tag(&mut event, "event", envelope.event.clone());
    tag(&mut event, "service", shape.service.clone());
    if let Some(b) = binding {
        tag(&mut event, "binding", b.label.clone());
        tag(&mut event, "plugin", b.plugin.name.clone());
        tag(&mut event, "plugin_version", b.plugin.version.clone());
        tag(&mut event, "handler", b.handler_name.clone());
    }
    // (Sources through secret names were left out when the reporter started.)
    for (source, name) in &shape.tags {
        if let Some(value) = source.lookup(failure) {
            tag(&mut event, name, value);
        }
    }
    if let Some(id) = shape.user_id.as_ref().and_then(|s| s.lookup(failure)) {
        event.user = Some(User {
            id: Some(id),
            ..Default::default()
        });
    }
    let mut message = Map::new();
    message.insert("message_id".into(), envelope.message_id.clone().into());
    message.insert("receive_count".into(), failure.receive_count.into());
    message.insert("queue".into(), shape.queue.clone().into());
    let attributes: serde_json::Map<String, Value> = envelope
        .attributes
        .iter()
        .map(|(name, a)| (name.clone(), Value::String(a.value.clone())))
        .collect();
    message.insert("attributes".into(), Value::Object(attributes));
    if shape.include_bodies {
        message.insert("body".into(), body_value(shape, envelope));
    } else {
        message.insert("body".into(), Value::String("[left out]".into()));
    }
    event
        .contexts
        .insert("message".into(), Context::Other(message));
    event
}

/// The body for the `message` context: JSON as JSON (scrubbed by member name), other text as
/// text; either way at most [`MAX_BODY`] bytes of it (a longer JSON body is sent as its
/// scrubbed text, cut, with `truncated` marked).
fn body_value(shape: &Shape, envelope: &crate::wire::Envelope) -> Value {
    match envelope.payload().json.clone() {
        Some(mut json) => {
            // Scrubbed before it is cut, so a cut never splits a secret from its name.
            shape.scrubber.json(&mut json);
            let text = json.to_string();
            if text.len() <= MAX_BODY {
                json
            } else {
                cut(&text)
            }
        }
        // Scrubbed before it is cut, so a cut never leaves part of a secret unrecognised.
        None => cut(&shape
            .scrubber
            .text(&String::from_utf8_lossy(&envelope.body))),
    }
}

/// `text` as a value of at most [`MAX_BODY`] bytes: itself, or its head (cut at a character
/// boundary) marked `truncated` with the full length.
fn cut(text: &str) -> Value {
    let mut end = text.len().min(MAX_BODY);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end < text.len() {
        serde_json::json!({"truncated": true, "bytes": text.len(), "text": &text[..end]})
    } else {
        Value::String(text.to_string())
    }
}

/// The event for a host-level incident.
fn alert_event(
    shape: &Shape,
    key: &str,
    level: Level,
    message: &str,
    fields: &BTreeMap<String, String>,
) -> Event<'static> {
    let component = key.split(':').next().unwrap_or(key).to_string();
    let mut event = Event {
        level,
        logger: Some("iniesta".into()),
        message: Some(message.to_string()),
        fingerprint: Cow::Owned(vec![
            Cow::Borrowed("iniesta-host"),
            Cow::Owned(key.to_string()),
        ]),
        ..Default::default()
    };
    tag(&mut event, "alert", component);
    tag(&mut event, "service", shape.service.clone());
    let details: Map<String, Value> = fields
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    event
        .contexts
        .insert("incident".into(), Context::Other(details));
    event
}

/// The default `before_send`: secret-named tags, context members and extras are filtered,
/// and secret-looking text is filtered from every value, the exception and the message.
pub fn scrub_event(scrubber: &Scrubber, mut event: Event<'static>) -> Event<'static> {
    for (key, value) in event.tags.iter_mut() {
        if scrubber.is_secret_key(key) {
            *value = super::scrub::FILTERED.into();
        } else {
            scrubber.string(value);
        }
    }
    scrubber.members(event.extra.iter_mut());
    for context in event.contexts.values_mut() {
        if let Context::Other(map) = context {
            scrubber.members(map.iter_mut());
        }
    }
    if let Cow::Owned(fingerprint) = &mut event.fingerprint {
        for part in fingerprint.iter_mut() {
            if let Cow::Owned(v) = scrubber.text(part) {
                *part = Cow::Owned(v);
            }
        }
    }
    if let Some(id) = event.user.as_mut().and_then(|u| u.id.as_mut()) {
        scrubber.string(id);
    }
    for exception in event.exception.values.iter_mut() {
        if let Some(value) = &mut exception.value {
            scrubber.string(value);
        }
    }
    if let Some(message) = &mut event.message {
        scrubber.string(message);
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_as_documented() {
        assert_eq!(
            Source::parse("attributes.tenant"),
            Ok(Source::Attribute("tenant".into()))
        );
        assert_eq!(
            Source::parse("body.customer.id"),
            Ok(Source::Body("customer.id".into()))
        );
        assert_eq!(
            Source::parse("opaque-key"),
            Ok(Source::Opaque("opaque-key".into()))
        );
        assert!(Source::parse("attributes.").is_err());
        assert!(Source::parse("body.a..b").is_err());
        assert!(Source::parse(" ").is_err());
    }

    #[test]
    fn tags_are_checked_and_cut_as_sentry_keeps_them() {
        assert!(check_tag_key("tenant").is_ok());
        assert!(check_tag_key("a.b:c-d_e").is_ok());
        for bad in ["", "the region!", "naïve", &"t".repeat(33)] {
            assert!(check_tag_key(bad).is_err(), "{bad:?}");
        }
        assert_eq!(tag_value("two\nlines\r"), "two lines ");
        assert_eq!(tag_value(&"é".repeat(300)).chars().count(), MAX_TAG_VALUE);
    }

    #[test]
    fn a_long_body_is_cut_at_a_character_boundary_and_marked() {
        assert_eq!(cut("short"), Value::String("short".into()));
        let long = format!("{}é{}", "x".repeat(MAX_BODY - 1), "y".repeat(10));
        let value = cut(&long);
        assert_eq!(value["truncated"], true);
        assert_eq!(value["bytes"], long.len());
        // The two-byte `é` straddles the limit: the cut falls before it.
        assert_eq!(value["text"].as_str().map(str::len), Some(MAX_BODY - 1));
    }

    #[test]
    fn secret_sources_are_recognised_through_any_step() {
        let scrubber = Scrubber::new(&["tenant".into()]);
        for (text, secret) in [
            ("attributes.api_token", true),
            ("body.auth.token", true),
            ("body.customer.password", true),
            ("tenant", true),
            ("attributes.region", false),
            ("body.customer.id", false),
        ] {
            let source = Source::parse(text).expect("a source");
            assert_eq!(source.is_secret(&scrubber), secret, "{text}");
        }
    }

    #[test]
    fn error_types_group_variants_of_one_error() {
        assert_eq!(
            error_type("order 41: missing field `id` at line 1 column 5"),
            "order N"
        );
        assert_eq!(
            error_type("order 42: invalid type: string \"x\""),
            "order N"
        );
        assert_eq!(
            error_type("customer 3f2a9c1e-8d7b-4e6f-a1b2-c3d4e5f60718 not found"),
            "customer <id> not found"
        );
        assert_eq!(error_type("asked to panic"), "asked to panic");
        assert_eq!(error_type(""), "(no message)");
        assert_eq!(error_type(&"x".repeat(500)).chars().count(), MAX_TYPE);
    }
}
