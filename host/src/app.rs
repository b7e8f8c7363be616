//! The composition root of `iniesta run`: from a loaded config it builds the ops servers,
//! the broker, the plugins and routes, egress, the locks, the error reporter, ingress, the
//! reloader and the pipeline, and runs them until one shutdown signal.
//!
//! Shutdown is one [`CancellationToken`] (cancelled by the first Ctrl-C/SIGTERM, or by
//! whoever holds [`App::shutdown_token`]): the pipeline and ingress stop receiving and let
//! their running handlers finish (`sqs.shutdown_timeout_secs`), then the outbox drainer stops,
//! the error reports are flushed, the reloader ends, and last the background tasks (ops
//! servers, console sampler, lock flusher, signal watcher) are told to end and waited for:
//! every one of them is a task of one [`Tasks`] tracker, so none outlives the host.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::acct::AcctSource;
use crate::broker::BrokerError;
use crate::config::{Config, ConfigError};
use crate::egress::startup::{invalid, StartupError};
use crate::egress::Publisher;
use crate::ingress::IngressSettings;
use crate::lock::LockError;
use crate::ops::console::Console;
use crate::ops::health::Health;
use crate::ops::OpsError;
use crate::pipeline::{Pipeline, Settings};
use crate::plugins::PluginSet;
use crate::tasks::Tasks;

/// How long the ingresses and the outbox drainer each get to stop after the pipeline did.
const EGRESS_STOP: Duration = Duration::from_secs(60);
/// How long the reloader gets to finish a reload in progress.
const RELOADER_STOP: Duration = Duration::from_secs(5);
/// How long the background tasks (servers, sampler, flusher) get to end at the very last.
const TASKS_STOP: Duration = Duration::from_secs(5);

/// Why a host could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The config consumes nothing.
    #[error("{}: `initialization` has neither EVENT_POLLING nor QUEUE_POLLING, so there is nothing to run", .0.display())]
    NothingToRun(PathBuf),
    /// The metrics endpoint, console or error webhook cannot start.
    #[error(transparent)]
    Ops(#[from] OpsError),
    /// The broker could not be opened.
    #[error("cannot open the broker for {}", path.display())]
    Broker {
        /// The config file.
        path: PathBuf,
        /// Why.
        #[source]
        source: BrokerError,
    },
    /// The resource check could not run.
    #[error(transparent)]
    Check(BrokerError),
    /// The resource check found problems (the report says which).
    #[error("resource check failed (run `iniesta setup`, or `iniesta run --no-check`):\n{0}")]
    CheckFailed(String),
    /// Egress or ingress cannot be set up.
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// The bindings do not fit the plugins.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The lock service cannot be set up.
    #[error("cannot set up the idempotency locks ([lock] urls)")]
    Locks(#[source] LockError),
    /// Tracing could not start (`[tracing]`).
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
}

/// A host to run: its config and how to start.
#[derive(Debug)]
pub struct App {
    path: PathBuf,
    config: Config,
    acct: AcctSource,
    no_check: bool,
    shutdown: CancellationToken,
    tasks: Tasks,
}

impl App {
    /// A host for `config` (loaded from `path`), reading credential profiles from `acct`.
    pub fn new(path: &Path, config: Config, acct: AcctSource) -> App {
        App {
            path: path.to_path_buf(),
            config,
            acct,
            no_check: false,
            shutdown: CancellationToken::new(),
            tasks: Tasks::new(),
        }
    }

    /// Skip the resource checks at start-up (`run --no-check`).
    pub fn no_check(mut self, no_check: bool) -> App {
        self.no_check = no_check;
        self
    }

    /// The one shutdown signal: cancelling it drains the host as a first Ctrl-C does.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The host's background tasks (empty again once [`App::run`] has returned).
    pub fn tasks(&self) -> Tasks {
        self.tasks.clone()
    }

    /// Build everything, run until the shutdown signal, then drain in order.
    pub async fn run(self) -> Result<(), AppError> {
        let App {
            path,
            config,
            acct,
            no_check,
            shutdown,
            tasks,
        } = self;
        if !config.consumes() {
            return Err(AppError::NothingToRun(path));
        }
        // Metrics and /health come first, so readiness is observable from the start.
        let health = Health::new();
        let console = start_ops(&config, &health, &tasks).await?;
        // Error reporting next, so a broker, lock or plugin problem at start-up reaches it.
        let errors = crate::ops::errors::ErrorReporter::start(&config, &tasks)?;
        // Whatever ends the start-up early, what was reported so far (a refused plugin, an
        // outage) is still sent before the error ends the process.
        let reported = errors.clone();
        let outcome: Result<(), AppError> = async move {
            let broker = crate::broker::open(&config)
                .await
                .map_err(|source| AppError::Broker {
                    path: path.clone(),
                    source,
                })?;
            if !no_check {
                let report = crate::provision::check(&config)
                    .await
                    .map_err(AppError::Check)?;
                if !report.ok() {
                    return Err(AppError::CheckFailed(report.to_string()));
                }
                health.broker_answered();
            }
            let set = PluginSet::scan(&config.plugin_dirs());
            let profiles = crate::egress::startup::profiles_for(&config, &acct)?;
            let fanout = crate::egress::build_fanout(&config, &set, profiles.as_ref(), broker.clone())
                .map_err(|e| invalid(&config, e))?
                .map(Arc::new);
            crate::telemetry::install(&config, tokio::runtime::Handle::current())?;
            let claim_check = crate::claim_check::ClaimCheck::connect(&config).await;
            let publisher = Arc::new(
                Publisher::new(&config, broker.clone())
                    .with_fanout(fanout.clone())
                    .with_claim_check(claim_check.clone()),
            );
            let guards =
                crate::policy::Guards::new(Some(crate::plugins::watch::state_dir(&config)));
            let routes = crate::route::bind(
                &config,
                &set,
                Some(publisher.clone()),
                Some(tokio::runtime::Handle::current()),
                &guards,
            )
            .map_err(|problems| ConfigError::Invalid {
                path: path.clone(),
                problems,
            })?;
            warn_about_timeouts(&config);
            for binding in routes.bindings() {
                tracing::info!(binding = %binding.label, plugin_version = %binding.plugin.version, generation = binding.plugin.generation, "bound");
            }
            let routes = Arc::new(ArcSwap::from_pointee(routes));
            health.watch_routes(routes.clone());
            if let Some(console) = &console {
                console.watch_routes(routes.clone());
            }
            let locks = crate::lock::from_config(&config.lock, &config.base_dir, &tasks)
                .await
                .map_err(AppError::Locks)?;
            tasks.spawn(watch_signals(shutdown.clone(), tasks.stopping()));
            // Ingress last: its handlers may run (and publish) as soon as it starts, so everything
            // they need, and the signal handling that drains them, must be there first.
            let failures = console.as_ref().map(|c| c.failures());
            let ingresses = if config.ingress.is_empty() {
                None
            } else {
                Some(
                    crate::ingress::start(
                        &config,
                        &set,
                        profiles.as_ref(),
                        routes.clone(),
                        IngressSettings {
                            errors: errors.clone(),
                            failures: failures.clone(),
                            ..IngressSettings::from_config(&config)
                        },
                    )
                    .map_err(|e| invalid(&config, e))?,
                )
            };
            let reloader = crate::plugins::watch::Reloader::new(
                path.clone(),
                config.clone(),
                set,
                routes.clone(),
                publisher,
                tokio::runtime::Handle::current(),
                guards,
            );
            let reloads = crate::plugins::watch::start(reloader, shutdown.clone(), &tasks);
            watch_depths(&config, &broker, &shutdown, &tasks);
            let pipeline = Pipeline::new(broker, routes, locks, Settings::from_config(&config))
                .with_health(health)
                .with_error_reporter(errors.clone())
                .with_recent_failures(failures)
                .with_claim_check(claim_check);
            // The outbox drains until shutdown; then the ingresses stop at once (no new messages,
            // like the pollers) and let their running handlers finish.
            let drainer = fanout.map(|f| tasks.spawn(f.run_drainer(shutdown.clone())));
            let ingresses = ingresses.map(|ingresses| {
                let shutdown = shutdown.clone();
                tasks.spawn(async move {
                    shutdown.cancelled().await;
                    ingresses.stop().await;
                })
            });
            pipeline.run(shutdown).await;
            if let Some(ingresses) = ingresses {
                let _ = tokio::time::timeout(EGRESS_STOP, ingresses).await;
            }
            if let Some(drainer) = drainer {
                let _ = tokio::time::timeout(EGRESS_STOP, drainer).await;
            }
            crate::telemetry::shutdown().await;
            if let Some(errors) = errors {
                errors.flush().await;
            }
            let _ = tokio::time::timeout(RELOADER_STOP, reloads).await;
            crate::isolate::supervisor::remove_private_dir();
            if !tasks.stop(TASKS_STOP).await {
                tracing::warn!(
                    still_running = tasks.len(),
                    "background tasks did not end in time; they end with the process"
                );
            }
            tracing::info!("stopped");
            Ok(())
        }
        .await;
        if outcome.is_err() {
            if let Some(errors) = reported {
                errors.flush().await;
            }
        }
        outcome
    }
}

/// With a metrics endpoint, read the queue's and the dead-letter queue's depths every
/// `metrics.queue_depth_interval_secs` into `iniesta_queue_messages` (ops/depth.rs).
fn watch_depths(
    config: &Config,
    broker: &Arc<dyn crate::broker::Broker>,
    shutdown: &CancellationToken,
    tasks: &Tasks,
) {
    let interval = config.metrics.queue_depth_interval_secs;
    if config.metrics.listen.is_none() || interval == 0 {
        return;
    }
    let mut queues = vec![crate::ops::depth::Watched {
        name: config.queue_name(),
        ask: None,
    }];
    if let Some(dlq) = &config.sqs.dead_letter_queue {
        queues.push(crate::ops::depth::Watched {
            name: dlq.clone(),
            ask: Some(dlq.clone()),
        });
    }
    tasks.spawn(crate::ops::depth::run(
        broker.clone(),
        queues,
        Duration::from_secs(interval),
        shutdown.clone(),
    ));
}

/// The metrics endpoint, /health and the console, when `[metrics] listen` or `[console]`
/// asks for them; the console, if one was started.
async fn start_ops(
    config: &Config,
    health: &Arc<Health>,
    tasks: &Tasks,
) -> Result<Option<Arc<Console>>, OpsError> {
    let console_settings = crate::ops::console::ConsoleSettings::from_config(config)?;
    let listen = config
        .metrics
        .listen
        .clone()
        .or_else(|| console_settings.as_ref().map(|c| c.listen.clone()));
    let Some(listen) = listen else {
        return Ok(None);
    };
    let listener = crate::ops::server::bind(&listen).await?;
    let metrics = crate::ops::metrics::install()?;
    let console = match console_settings {
        Some(settings) => Some(
            Console::start(
                settings,
                config,
                metrics.values.clone(),
                health.clone(),
                tasks,
            )
            .await?,
        ),
        None => None,
    };
    let endpoint = Arc::new(crate::ops::server::Endpoint {
        metrics: metrics.prometheus,
        health: health.clone(),
        console: console.clone(),
    });
    crate::ops::server::serve(listener, endpoint, tasks);
    tracing::info!(listen = %listen, "serving /metrics and /health");
    Ok(console)
}

/// Point out timeouts that do not fit together (a message may be redelivered while its
/// handler still runs). The visibility heartbeat keeps a message invisible while its handlers
/// run, up to `sqs.max_visibility_extension_secs`.
fn warn_about_timeouts(config: &Config) {
    for warning in crate::config::policy::warnings(config) {
        tracing::warn!("{warning}");
    }
    let longest = config
        .bindings
        .iter()
        .map(|b| b.timeout_secs.unwrap_or(config.sqs.handler_timeout_secs))
        .max()
        .unwrap_or(config.sqs.handler_timeout_secs);
    let visibility = u64::from(config.sqs.visibility_timeout);
    let kept = if config.sqs.max_visibility_extension_secs == 0 {
        visibility
    } else {
        config.sqs.max_visibility_extension_secs.max(visibility)
    };
    // With [[egress]], publishes go only where the entries say: the topic too only when one
    // of them is the built-in `sns`.
    if !config.egress.is_empty()
        && config.does(crate::config::InitializationType::SnsProducer)
        && !config.egress.iter().any(|e| e.plugin == "sns")
    {
        tracing::warn!(
            "[[egress]] has no `plugin = \"sns\"` entry: events published here no longer reach the topic; add one to keep publishing to SNS"
        );
    }
    // With [[egress]], a handler's ctx.publish waits for every egress's inline attempts.
    if !config.egress.is_empty() {
        let o = &config.outbox;
        let publish_secs = o.worst_inline_secs();
        let shortest = config
            .bindings
            .iter()
            .map(|b| b.timeout_secs.unwrap_or(config.sqs.handler_timeout_secs))
            .min()
            .unwrap_or(config.sqs.handler_timeout_secs);
        if publish_secs >= shortest {
            tracing::warn!(
                worst_publish_secs = publish_secs, handler_timeout_secs = shortest,
                outbox_attempts = o.attempts, attempt_timeout_secs = o.attempt_timeout_secs,
                "a handler's publish can take longer than its timeout while an egress is down (outbox.attempts x outbox.attempt_timeout_secs plus back-off): the call then times out and a redelivery publishes again; lower outbox.attempts or outbox.attempt_timeout_secs, or raise the handler timeout"
            );
        }
    }
    if longest > kept {
        tracing::warn!(
            handler_timeout_secs = longest, visibility_timeout = visibility,
            max_visibility_extension_secs = config.sqs.max_visibility_extension_secs,
            "a handler may run longer than its message is kept invisible: it can be delivered again while it runs; raise sqs.max_visibility_extension_secs (or sqs.visibility_timeout) or lower the handler timeout"
        );
    }
}

/// First Ctrl-C/SIGTERM: drain. Second: exit at once. Ends when the tasks stop.
async fn watch_signals(shutdown: CancellationToken, stopping: CancellationToken) {
    tokio::select! {
        _ = stopping.cancelled() => return,
        _ = wait_for_signal() => {}
    }
    tracing::info!(
        "shutting down: no new messages; running handlers may finish (signal again to exit now)"
    );
    shutdown.cancel();
    tokio::select! {
        _ = stopping.cancelled() => return,
        _ = wait_for_signal() => {}
    }
    tracing::warn!("second signal: exiting now; unfinished messages will be redelivered");
    std::process::exit(130);
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host with the metrics server, the console, the lock flusher's peer (in-process
    /// locks), the reloader and the signal watcher: once `run` returns after the shutdown
    /// signal, none of its background tasks is left.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_leaves_no_task_behind_after_the_shutdown_signal() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("iniesta.toml");
        let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug");
        let ledger = dir.path().join("ledger.jsonl");
        std::fs::write(
            &path,
            format!(
                r#"service = "app"
env = "test"
initialization = ["EVENT_POLLING"]

[broker]
kind = "local"
path = "broker.db"

[sns]
topic_arn = "arn:aws:sns:us-east-1:000000000000:global"

[sqs]
filters = ["Order.*"]
wait_time_seconds = 1

[plugins]
dirs = ["{plugins}"]

[metrics]
listen = "127.0.0.1:0"

[console]
enabled = true

[[bindings]]
default = true
plugin = "ledger"
config = {{ path = "{ledger}", label = "default" }}
"#,
                plugins = plugins.display(),
                ledger = ledger.display()
            ),
        )
        .expect("write config");
        let config = crate::validate::load(&path).expect("config loads");
        let app = App::new(&path, config, AcctSource::default()).no_check(true);
        let tasks = app.tasks();
        let shutdown = app.shutdown_token();
        shutdown.cancel();
        app.run().await.expect("the host runs and drains");
        assert!(tasks.is_empty(), "{} task(s) left running", tasks.len());
        assert!(tasks.stopping().is_cancelled());
    }
}
