//! Host-level incidents to Sentry, through `tracing`: a log event that carries an `alert`
//! field (`alert = "broker"`, `"lock"`, `"config"`, `"reload"`, `"plugin:FILE"`) raises that incident, one
//! that carries `alert_cleared` with the same key ends it. [`AlertLayer`] hands both to the
//! running [`SentryReporter`], which sends one event when an incident is raised and nothing
//! more until it has been cleared — once per state change, however often the log line repeats.
//!
//! (The `sentry-tracing` layer was not used: it turns every matching log line into an event,
//! so a broker outage would report every failed receive, and it sends through the process-wide
//! hub rather than the reporter `[errors.sentry]` configures.)

use std::collections::BTreeMap;
use std::fmt::Write as _;

use arc_swap::ArcSwapOption;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

use super::sentry::SentryReporter;

static REPORTER: ArcSwapOption<SentryReporter> = ArcSwapOption::const_empty();

/// Route alerts to `reporter` from now on (`None`: stop).
pub fn register(reporter: Option<SentryReporter>) {
    REPORTER.store(reporter.map(std::sync::Arc::new));
}

/// [`AlertLayer`] behind a per-layer filter that lets only `alert` / `alert_cleared` events
/// through, whatever the log level shown. The filter looks at a callsite's metadata only, so
/// its answer is cached per callsite; what a log line shown still pays is the per-layer
/// filtering bookkeeping of `tracing-subscriber`.
pub fn layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    // Alerts are raised at error/warn and cleared at info: the hint keeps debug and trace
    // callsites disabled as far as this layer is concerned.
    AlertLayer.with_filter(
        tracing_subscriber::filter::filter_fn(|meta| {
            meta.is_event()
                && meta
                    .fields()
                    .iter()
                    .any(|f| matches!(f.name(), "alert" | "alert_cleared"))
        })
        .with_max_level_hint(tracing_subscriber::filter::LevelFilter::INFO),
    )
}

/// The `tracing` layer that passes `alert` / `alert_cleared` events to Sentry; installed with
/// the host's log subscriber, idle until a reporter registers.
#[derive(Debug, Default, Clone, Copy)]
pub struct AlertLayer;

#[derive(Default)]
struct Fields {
    alert: Option<String>,
    cleared: Option<String>,
    message: String,
    others: BTreeMap<String, String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.record(field, text);
    }
}

impl Fields {
    fn record(&mut self, field: &Field, value: String) {
        match field.name() {
            "alert" => self.alert = Some(value),
            "alert_cleared" => self.cleared = Some(value),
            "message" => self.message = value,
            name => {
                self.others.insert(name.to_string(), value);
            }
        }
    }
}

impl<S: Subscriber> Layer<S> for AlertLayer {
    /// Only alert events reach this ([`layer`]'s filter).
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let reporter = REPORTER.load();
        let Some(reporter) = reporter.as_ref() else {
            return;
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let Some(key) = fields.cleared {
            reporter.clear(&key);
        }
        if let Some(key) = fields.alert {
            let level = match *event.metadata().level() {
                tracing::Level::ERROR => sentry::Level::Error,
                tracing::Level::WARN => sentry::Level::Warning,
                _ => sentry::Level::Info,
            };
            reporter.raise(&key, level, &fields.message, &fields.others);
        }
    }
}
