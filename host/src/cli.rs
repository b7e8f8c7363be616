//! The command line: `iniesta [-c FILE] COMMAND`.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use arc_swap::ArcSwap;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::egress::{Destination, Publisher};
use crate::pipeline::{Pipeline, Settings};
use crate::plugins::PluginSet;
use crate::wire::{Attribute, Attributes};

/// Event messaging over SNS/SQS with handler plugins.
#[derive(Debug, Parser)]
#[command(name = "iniesta", version, about)]
pub struct Cli {
    /// The config file.
    #[arg(short = 'c', long = "config", env = "INIESTA_CONFIG", default_value = crate::config::DEFAULT_CONFIG, global = true)]
    pub config: PathBuf,
    /// Log format on stderr: `human` (default) or `json` (one JSON object per line).
    #[arg(long = "log-format", env = "INIESTA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    /// The encrypted credential profiles for egress/ingress plugins (`iniesta acct encrypt`).
    #[arg(long = "acct-file", env = "INIESTA_ACCT_FILE", global = true)]
    pub acct_file: Option<PathBuf>,
    /// The key of the acct file (never printed).
    #[arg(
        long = "acct-key",
        env = "INIESTA_ACCT_KEY",
        hide_env_values = true,
        global = true
    )]
    pub acct_key: Option<crate::acct::Secret>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text for people: level, message, then `key=value` fields.
    Human,
    /// One JSON object per line: `timestamp`, `level`, `message`, the fields, and `span` (the
    /// current span's fields, e.g. `binding` inside a handler call).
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume: poll the queue and run the bound handlers until Ctrl-C/SIGTERM.
    Run {
        /// Skip the resource checks at start-up.
        #[arg(long)]
        no_check: bool,
    },
    /// Publish an event (`{event}.{service}`) to the topic, or with --queue to the queue.
    Publish(PublishArgs),
    /// Verify the topic, queue, subscription, filter policy and DLQ; non-zero exit on problems.
    Check,
    /// Create the resources `check` verifies; idempotent.
    Setup,
    /// Print the subscription filter policy built from `sqs.filters`.
    FilterPolicies,
    /// Print the initialization type, e.g. `SNS_PRODUCER|EVENT_POLLING`.
    InitializationType,
    /// List the merged plugin view (name, version, handlers, file, origin dir) and what running
    /// hosts serve; `plugins check FILE` checks one file.
    Plugins {
        /// `check FILE.so`.
        #[command(subcommand)]
        command: Option<PluginsCommand>,
    },
    /// Write a ready-to-build handler plugin crate.
    NewPlugin {
        /// The plugin's name (also its crate and handler name).
        name: String,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The plugin-api to depend on (default: the one this binary was built from).
        #[arg(long)]
        api_path: Option<PathBuf>,
    },
    /// Config commands.
    Config {
        /// What to do with the config.
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Dry run: print which bindings a message would reach and why (patterns, media types,
    /// match conditions, schemas). Loads no plugin, publishes nothing; exit 0.
    Route(RouteArgs),
    /// The dead-letter queue: list, redrive to the main queue, purge.
    Dlq {
        /// What to do.
        #[command(subcommand)]
        command: crate::dlq::cli::DlqCommand,
    },
    /// Internal: serve one isolated plugin to its host over stdin/stdout.
    #[command(hide = true)]
    PluginWorker {
        /// The plugin file.
        #[arg(long)]
        file: PathBuf,
    },
    /// Credential profiles for egress/ingress plugins: `encrypt FILE`, `show`.
    Acct {
        /// What to do.
        #[command(subcommand)]
        command: crate::egress::cli::AcctCommand,
    },
    /// The outbox of `[[egress]]`: what waits per egress; `--drain` delivers it now.
    Outbox(crate::egress::cli::OutboxArgs),
}

/// `iniesta route` arguments.
#[derive(Debug, clap::Args)]
pub struct RouteArgs {
    /// The full event name as it arrives, e.g. `Order.Created.shop` (nothing is appended).
    pub event: String,
    /// The body (JSON or text; `-` reads standard input). Default `{}`.
    pub body: Option<String>,
    /// An attribute: `KEY=VALUE` (String), `KEY:Number=5`, `KEY:Binary=BASE64`.
    #[arg(short = 'a', long = "attribute", value_name = "KEY=VALUE")]
    pub attributes: Vec<String>,
}

/// `iniesta plugins ...`.
#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// Load one file the way the host would, without starting anything: print its name,
    /// version, plugin-api version and handlers, or why it is refused (exit 1).
    Check {
        /// The shared library.
        file: PathBuf,
    },
}

/// `iniesta config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the config and its bindings against the loaded plugins.
    Check,
}

/// `iniesta publish` arguments.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The event name; `.{service}` is appended unless already there.
    #[arg(required_unless_present = "file")]
    pub event: Option<String>,
    /// The body (JSON or text; `-` reads standard input). Default `{}`.
    pub body: Option<String>,
    /// An attribute: `KEY=VALUE` (String), `KEY:Number=5`, `KEY:Binary=BASE64`.
    #[arg(short = 'a', long = "attribute", value_name = "KEY=VALUE")]
    pub attributes: Vec<String>,
    /// Send straight to this service's queue instead of the topic.
    #[arg(long)]
    pub queue: bool,
    /// Publish every line of a JSONL file: {"event": .., "body": .., "attributes": {..}}.
    #[arg(long, value_name = "EVENTS.jsonl", conflicts_with_all = ["event", "body"])]
    pub file: Option<PathBuf>,
    /// Encode JSON object bodies as BSON (sent as base64 with `iniesta_content_type =
    /// application/bson`; receivers hand handlers the JSON again).
    #[arg(long)]
    pub binary: bool,
    /// Write this media type into each JSON object body as `mediaType` (microcosm-pubsub
    /// consumers require it there) and as the `media_type` attribute. A body that is not a
    /// JSON object, or that names another media type, is refused before anything is sent.
    #[arg(long, value_name = "TYPE", conflicts_with = "binary")]
    pub media_type: Option<String>,
}

/// Entry point: parse, run, map errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::PluginWorker { file } = &cli.command {
        return crate::isolate::worker::main(file);
    }
    let format = cli.log_format;
    init_tracing(format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            fatal(format, &format!("cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            fatal(format, &format!("{e:#}"));
            ExitCode::FAILURE
        }
    };
    // Do not wait for handler threads abandoned at their timeout: their messages are not
    // settled and come back after their visibility timeout.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    code
}

/// The last word of a failed command: `error: ...` on stderr, or a JSON log line.
fn fatal(format: LogFormat, message: &str) {
    match format {
        LogFormat::Human => eprintln!("error: {message}"),
        LogFormat::Json => tracing::error!(error = %message, "command failed"),
    }
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("INIESTA_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = match format {
        LogFormat::Human => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .with_target(false)
            .try_init(),
        LogFormat::Json => {
            let json = tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .with_env_filter(filter)
                .with_target(false);
            // Plugins' own stderr (their panic messages) is wrapped into JSON lines too.
            match crate::ops::logs::capture_stderr() {
                Ok(stderr) => json.with_writer(stderr).try_init(),
                Err(_) => json.with_writer(std::io::stderr).try_init(),
            }
        }
    };
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let path = cli.config.as_path();
    let acct = crate::acct::AcctSource {
        file: cli.acct_file.clone(),
        key: cli.acct_key.clone(),
    };
    match cli.command {
        Command::Run { no_check } => run(path, no_check, &acct).await,
        Command::Route(args) => route(path, args),
        Command::Dlq { command } => crate::dlq::cli::run(path, command).await,
        Command::Publish(args) => publish(path, args, &acct).await,
        Command::Acct { command } => crate::egress::cli::acct(command, &acct),
        Command::Outbox(args) => crate::egress::cli::outbox(path, args, &acct).await,
        Command::Check => {
            let config = load(path)?;
            let report = crate::provision::check(&config).await?;
            println!("{report}");
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Setup => {
            let config = load(path)?;
            let report = crate::provision::setup(&config).await?;
            println!("{report}");
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::FilterPolicies => {
            let config = Config::read(path)?;
            let policy = crate::filter::iniesta_policy(&config.sns.event_key, &config.sqs.filters);
            for name in crate::filter::python_unbuildable(&config.sqs.filters) {
                tracing::warn!(filter = %name, "{}", crate::filter::PYTHON_UNBUILDABLE);
            }
            println!("{policy}");
            Ok(ExitCode::SUCCESS)
        }
        Command::InitializationType => {
            let config = Config::read(path)?;
            println!("{}", config.initialization_type());
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugins {
            command: Some(PluginsCommand::Check { file }),
        } => Ok(plugins_check(&file)),
        Command::NewPlugin {
            name,
            dir,
            api_path,
        } => {
            let created = crate::scaffold::create(&name, dir.as_deref(), api_path.as_deref())?;
            print!("{}", crate::scaffold::next_steps(&created));
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugins { command: None } => {
            let config = load(path)?;
            let set = PluginSet::scan(&config.plugin_dirs());
            print!("{}", render_plugins(&set));
            print!("{}", crate::egress::render_configured(&config).await);
            print!(
                "{}",
                render_running(&crate::plugins::watch::running_hosts(&config))
            );
            // Non-zero when a file was refused, so deploy scripts notice.
            Ok(if set.refused.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => config_check(path),
        Command::PluginWorker { file } => Ok(crate::isolate::worker::main(&file)),
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Ok(crate::validate::load(path)?)
}

fn config_check(path: &Path) -> anyhow::Result<ExitCode> {
    let config = load(path)?;
    crate::egress::cli::check_exports(&config)?;
    if config.bindings.is_empty() {
        println!(
            "{}: ok (no bindings: this config only publishes)",
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let set = PluginSet::scan(&config.plugin_dirs());
    match crate::route::bind(&config, &set, None, None) {
        Ok(routes) => {
            println!(
                "{}: ok ({} binding(s){}, {} plugin(s) loaded)",
                path.display(),
                routes.bindings().len(),
                if routes.has_default() {
                    ", with a default"
                } else {
                    ""
                },
                set.plugins.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => {
            bail!(crate::config::ConfigError::Invalid {
                path: path.to_path_buf(),
                problems
            })
        }
    }
}

/// `iniesta plugins check FILE`.
fn plugins_check(file: &Path) -> ExitCode {
    let origin = file.parent().unwrap_or_else(|| Path::new("."));
    match crate::plugins::load::load_file(file, origin) {
        Ok(plugin) => {
            println!("ok: {}", file.display());
            println!("  plugin    {}", plugin.name);
            println!("  version   {}", plugin.version);
            println!(
                "  api       iniesta-plugin-api {} (this host: {})",
                plugin.abi_version,
                crate::plugins::load::HOST_API_VERSION
            );
            println!("  handlers  {}", plugin.handlers.join(", "));
            println!("  load      {} ms", plugin.load_time.as_millis());
            match plugin.in_process_refusal() {
                None => {
                    println!("  panic     unwind (a panic is caught at the boundary)");
                    ExitCode::SUCCESS
                }
                Some(why) => {
                    println!("  panic     abort");
                    println!("REFUSED in the host process: {why}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) if e.is_not_a_plugin() => {
            println!("not an iniesta plugin: {e}");
            println!("  fix: build it as a cdylib that calls iniesta_plugin_api::export_plugin!");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("REFUSED {e}");
            ExitCode::FAILURE
        }
    }
}

/// The `plugins` table.
pub fn render_plugins(set: &PluginSet) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<16} {:<10} {:<8} {:<4} {:<24} {:<40} {}\n",
        "NAME", "VERSION", "API", "GEN", "HANDLERS", "FILE", "ORIGIN DIR"
    ));
    for plugin in set.plugins.values() {
        out.push_str(&format!(
            "{:<16} {:<10} {:<8} {:<4} {:<24} {:<40} {}\n",
            plugin.name,
            plugin.version,
            plugin.abi_version,
            plugin.generation,
            crate::egress::exports(plugin),
            plugin.file.display(),
            plugin.origin_dir.display()
        ));
    }
    for plugin in &set.overridden {
        out.push_str(&format!(
            "overridden: {} {} from {} (a later directory has a plugin of the same name)\n",
            plugin.name,
            plugin.version,
            plugin.file.display()
        ));
    }
    for refusal in &set.refused {
        out.push_str(&format!("REFUSED {}\n", refusal.error));
    }
    for plugin in set.plugins.values() {
        if plugin.in_process_refusal().is_some() {
            out.push_str(&format!(
                "panic = \"abort\": {} {} from {} runs only isolated (plugins.isolate.names); rebuild it with panic = \"unwind\" to run it in the host\n",
                plugin.name,
                plugin.version,
                plugin.file.display()
            ));
        }
    }
    if set.plugins.is_empty() {
        out.push_str(
            "no plugins loaded: check plugins.dirs and build the plugins (cargo build --release)\n",
        );
    }
    out
}

/// What running hosts of this config serve, from their state files.
pub fn render_running(hosts: &[crate::plugins::watch::HostState]) -> String {
    let mut out = String::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for host in hosts {
        out.push_str(&format!(
            "\nrunning host pid {} ({}), updated {}s ago: {} refused load(s), ~{:.1} MB kept by {} old generation(s) (libraries are never unloaded)\n",
            host.pid,
            host.config.display(),
            now.saturating_sub(host.updated_at),
            host.refusals,
            host.retained_bytes as f64 / 1e6,
            host.retained_generations
        ));
        for p in &host.plugins {
            let loaded =
                aws_smithy_types::DateTime::from_secs(i64::try_from(p.loaded_at).unwrap_or(0))
                    .fmt(aws_smithy_types::date_time::Format::DateTime)
                    .unwrap_or_default();
            out.push_str(&format!(
                "  {} {} generation {} loaded {} in {} ms, reloaded {} time(s), from {}\n",
                p.name,
                p.version,
                p.generation,
                loaded,
                p.load_ms,
                p.reloads,
                p.file.display()
            ));
        }
        for f in &host.load_failures {
            let serving = match f.serving_generation {
                Some(g) => format!("generation {g} keeps serving"),
                None => "nothing loaded from it".to_string(),
            };
            out.push_str(&format!(
                "  LOAD FAILED {} ({}; {serving}): {}\n",
                f.plugin, f.reason, f.error
            ));
        }
        out.push_str(&crate::isolate::render_status(&host.workers));
    }
    out
}

async fn run(
    path: &Path,
    no_check: bool,
    acct: &crate::acct::AcctSource,
) -> anyhow::Result<ExitCode> {
    let config = load(path)?;
    if !config.consumes() {
        bail!(
            "{}: `initialization` has neither EVENT_POLLING nor QUEUE_POLLING, so there is nothing to run",
            path.display()
        );
    }
    // Metrics and /health come first, so readiness is observable from the start.
    let health = crate::ops::health::Health::new();
    let console_settings = crate::ops::console::ConsoleSettings::from_config(&config)?;
    let mut console = None;
    let listen = config
        .metrics
        .listen
        .clone()
        .or_else(|| console_settings.as_ref().map(|c| c.listen.clone()));
    if let Some(listen) = &listen {
        let listener = crate::ops::server::bind(listen).await?;
        let metrics = crate::ops::metrics::install()?;
        if let Some(settings) = console_settings {
            console = Some(
                crate::ops::console::Console::start(
                    settings,
                    &config,
                    metrics.clone(),
                    health.clone(),
                )
                .await?,
            );
        }
        let endpoint = Arc::new(crate::ops::server::Endpoint {
            metrics,
            health: health.clone(),
            console: console.clone(),
        });
        crate::ops::server::serve(listener, endpoint);
        tracing::info!(listen = %listen, "serving /metrics and /health");
    }
    let broker = crate::broker::open(&config)
        .await
        .with_context(|| format!("cannot open the broker for {}", path.display()))?;
    if !no_check {
        let report = crate::provision::check(&config).await?;
        if !report.ok() {
            bail!("resource check failed (run `iniesta setup`, or `iniesta run --no-check`):\n{report}");
        }
        health.broker_answered();
    }
    let set = PluginSet::scan(&config.plugin_dirs());
    let egress = crate::egress::cli::Running::start(&config, &set, acct, broker.clone()).await?;
    let publisher = Arc::new(Publisher::new(&config, broker.clone()).with_fanout(egress.fanout()));
    let routes = crate::route::bind(
        &config,
        &set,
        Some(publisher.clone()),
        Some(tokio::runtime::Handle::current()),
    )
    .map_err(|problems| crate::config::ConfigError::Invalid {
        path: path.to_path_buf(),
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
    let locks = crate::lock::from_config(&config.lock)
        .await
        .context("cannot set up the idempotency locks ([lock] urls)")?;
    let errors = crate::ops::errors::ErrorReporter::start(&config)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    // Ingress last: its handlers may run (and publish) as soon as it starts, so everything
    // they need, and the signal handling that drains them, must be there first.
    let egress = egress.start_ingress(
        &config,
        &set,
        routes.clone(),
        errors.clone(),
        console.as_ref().map(|c| c.failures()),
    )?;
    let reloader = crate::plugins::watch::Reloader::new(
        path.to_path_buf(),
        config.clone(),
        set,
        routes.clone(),
        publisher,
        tokio::runtime::Handle::current(),
    );
    let reloads = crate::plugins::watch::start(reloader, shutdown.clone());
    let pipeline = Pipeline::new(broker, routes, locks, Settings::from_config(&config))
        .with_health(health)
        .with_error_reporter(errors.clone())
        .with_recent_failures(console.as_ref().map(|c| c.failures()));
    let egress = egress.serve(shutdown.clone());
    pipeline.run(shutdown).await;
    egress.stop().await;
    if let Some(errors) = errors {
        errors
            .flush(std::time::Duration::from_secs(
                config.errors.timeout_secs.max(1),
            ))
            .await;
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), reloads).await;
    crate::isolate::supervisor::remove_private_dir();
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Point out timeouts that do not fit together (a message may be redelivered while its
/// handler still runs). The visibility heartbeat keeps a message invisible while its handlers
/// run, up to `sqs.max_visibility_extension_secs`.
fn warn_about_timeouts(config: &Config) {
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

/// First Ctrl-C/SIGTERM: drain. Second: exit at once.
async fn watch_signals(shutdown: CancellationToken) {
    wait_for_signal().await;
    tracing::info!(
        "shutting down: no new messages; running handlers may finish (signal again to exit now)"
    );
    shutdown.cancel();
    wait_for_signal().await;
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

/// Parse `KEY=VALUE`, `KEY:Number=5`, `KEY:Binary=BASE64`.
pub fn parse_attribute(text: &str) -> anyhow::Result<(String, Attribute)> {
    let Some((left, value)) = text.split_once('=') else {
        bail!("attribute `{text}` is not KEY=VALUE (types: KEY:Number=5, KEY:Binary=BASE64)");
    };
    let (name, data_type) = match left.split_once(':') {
        Some((name, ty)) => (name, ty),
        None => (left, "String"),
    };
    if name.is_empty() {
        bail!("attribute `{text}` has an empty name");
    }
    let base = data_type.split('.').next().unwrap_or(data_type);
    match base {
        "String" => {}
        "Number" => {
            if value.parse::<f64>().is_err() {
                bail!("attribute `{name}`: `{value}` is not a number");
            }
        }
        "Binary" => {
            use base64::Engine as _;
            if base64::engine::general_purpose::STANDARD
                .decode(value)
                .is_err()
            {
                bail!("attribute `{name}`: Binary values are base64; `{value}` is not");
            }
        }
        other => bail!("attribute `{name}`: type `{other}` is not String, Number or Binary"),
    }
    Ok((
        name.to_string(),
        Attribute {
            data_type: data_type.to_string(),
            value: value.to_string(),
        },
    ))
}

/// One event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its name.
    pub event: String,
    /// The body bytes.
    pub body: Vec<u8>,
    /// Extra attributes.
    pub attributes: Attributes,
}

/// Parse one JSONL line: `{"event": "..", "body": <JSON or string>, "attributes": {..}}`.
pub fn parse_event_line(line: &str) -> anyhow::Result<Event> {
    let value: serde_json::Value = serde_json::from_str(line).context("not valid JSON")?;
    let event = value
        .get("event")
        .and_then(|e| e.as_str())
        .context("no string field `event`")?
        .to_string();
    let body = match value.get("body") {
        None => b"{}".to_vec(),
        Some(serde_json::Value::String(text)) => text.clone().into_bytes(),
        Some(other) => other.to_string().into_bytes(),
    };
    let mut attributes = Attributes::new();
    if let Some(attrs) = value.get("attributes") {
        let attrs = attrs
            .as_object()
            .context("`attributes` must be an object")?;
        for (name, v) in attrs {
            let attribute = match v {
                serde_json::Value::String(s) => Attribute::string(s.clone()),
                serde_json::Value::Number(n) => Attribute::number(n),
                serde_json::Value::Object(o) => Attribute {
                    data_type: o
                        .get("type")
                        .and_then(|t| t.as_str())
                        .unwrap_or("String")
                        .to_string(),
                    value: o
                        .get("value")
                        .map(|v| {
                            v.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string())
                        })
                        .with_context(|| format!("attribute `{name}` has no `value`"))?,
                },
                _ => bail!(
                    "attribute `{name}` must be a string, a number or {{\"type\", \"value\"}}"
                ),
            };
            attributes.insert(name.clone(), attribute);
        }
    }
    Ok(Event {
        event,
        body,
        attributes,
    })
}

async fn publish(
    path: &Path,
    args: PublishArgs,
    acct: &crate::acct::AcctSource,
) -> anyhow::Result<ExitCode> {
    let config = crate::validate::load_for_publishing(path)?;
    // Validate everything before publishing anything.
    let events: Vec<Event> = match &args.file {
        Some(file) => {
            let handle = std::fs::File::open(file)
                .with_context(|| format!("cannot open {}", file.display()))?;
            let mut events = Vec::new();
            for (n, line) in std::io::BufReader::new(handle).lines().enumerate() {
                let line = line
                    .with_context(|| format!("{}: cannot read line {}", file.display(), n + 1))?;
                if line.trim().is_empty() {
                    continue;
                }
                events.push(
                    parse_event_line(&line)
                        .with_context(|| format!("{}: line {}", file.display(), n + 1))?,
                );
            }
            events
        }
        None => {
            let event = args.event.clone().context("EVENT is required")?;
            let body = match args.body.as_deref() {
                None => b"{}".to_vec(),
                Some("-") => {
                    let mut buf = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut buf)
                        .context("cannot read the body from standard input")?;
                    buf
                }
                Some(text) => text.as_bytes().to_vec(),
            };
            vec![Event {
                event,
                body,
                attributes: Attributes::new(),
            }]
        }
    };
    let mut extra = Attributes::new();
    for text in &args.attributes {
        let (name, attribute) = parse_attribute(text)?;
        extra.insert(name, attribute);
    }
    let events = match &args.media_type {
        Some(media_type) => with_media_type(events, &extra, media_type)?,
        None => events,
    };
    let events = if args.binary {
        to_bson_events(events)?
    } else {
        events
    };
    // Every event must encode (size, attribute types) before the first one is sent.
    for (n, event) in events.iter().enumerate() {
        let mut attributes = event.attributes.clone();
        for (name, attribute) in &extra {
            attributes
                .entry(name.clone())
                .or_insert_with(|| attribute.clone());
        }
        crate::wire::encode(
            &event.event,
            &config.service,
            &config.sns.event_key,
            event.body.clone(),
            attributes,
        )
        .with_context(|| match &args.file {
            Some(file) => format!(
                "{}: event {} (`{}`); nothing was published",
                file.display(),
                n + 1,
                event.event
            ),
            None => format!("cannot publish `{}`", event.event),
        })?;
    }
    let broker = crate::broker::open(&config)
        .await
        .with_context(|| format!("cannot open the broker for {}", path.display()))?;
    let fanout = crate::egress::cli::fanout_for_publish(&config, acct, broker.clone()).await?;
    let publisher = Publisher::new(&config, broker).with_fanout(fanout);
    let destination = if args.queue {
        Destination::OwnQueue
    } else {
        Destination::Topic
    };
    for mut event in events {
        for (name, attribute) in &extra {
            event
                .attributes
                .entry(name.clone())
                .or_insert_with(|| attribute.clone());
        }
        let published = publisher
            .publish(destination, &event.event, event.body, event.attributes)
            .await
            .with_context(|| format!("cannot publish `{}`", event.event))?;
        println!("{} {}", published.message_id, published.event);
        crate::egress::cli::report_queued(&published);
    }
    Ok(ExitCode::SUCCESS)
}

/// `publish --media-type`: every body gets `mediaType` and the `media_type` attribute (the
/// `-a` attributes considered), or the whole publish is refused.
fn with_media_type(
    events: Vec<Event>,
    extra: &Attributes,
    media_type: &str,
) -> anyhow::Result<Vec<Event>> {
    events
        .into_iter()
        .map(|mut event| {
            for (name, attribute) in extra {
                event
                    .attributes
                    .entry(name.clone())
                    .or_insert_with(|| attribute.clone());
            }
            event.body = crate::media_type::stamp(&event.body, &mut event.attributes, media_type)
                .with_context(|| {
                format!(
                    "--media-type {media_type}: cannot write it into `{}`; nothing was published",
                    event.event
                )
            })?;
            Ok(event)
        })
        .collect()
}

/// `publish --binary`: every body becomes a BSON document, marked with the content type.
fn to_bson_events(events: Vec<Event>) -> anyhow::Result<Vec<Event>> {
    use iniesta_plugin_api::payload::{BSON_CONTENT_TYPE, CONTENT_TYPE_ATTRIBUTE};
    events
        .into_iter()
        .map(|mut event| {
            let value: serde_json::Value = serde_json::from_slice(&event.body).with_context(|| {
                format!("--binary: the body of `{}` is not JSON; only JSON objects are encoded as BSON", event.event)
            })?;
            event.body = crate::wire::payload::json_to_bson(&value)
                .map_err(|e| anyhow::anyhow!("--binary: the body of `{}` cannot be encoded as BSON: {e}", event.event))?;
            event.attributes.insert(
                CONTENT_TYPE_ATTRIBUTE.to_string(),
                Attribute::string(BSON_CONTENT_TYPE),
            );
            Ok(event)
        })
        .collect()
}

/// `iniesta route`: the dry run of routing one message.
fn route(path: &Path, args: RouteArgs) -> anyhow::Result<ExitCode> {
    let config = crate::validate::load_for_routing(path)?;
    let body = match args.body.as_deref() {
        None => b"{}".to_vec(),
        Some("-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read the body from standard input")?;
            buf
        }
        Some(text) => text.as_bytes().to_vec(),
    };
    let mut attributes = Attributes::new();
    for text in &args.attributes {
        let (name, attribute) = parse_attribute(text)?;
        attributes.insert(name, attribute);
    }
    let envelope = crate::route::explain::message(&config, &args.event, body, attributes)
        .with_context(|| format!("cannot build the message `{}`", args.event))?;
    let report = crate::route::explain::explain(&config, &envelope).map_err(|problems| {
        crate::config::ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        }
    })?;
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_parse_with_types() {
        assert_eq!(
            parse_attribute("k=v").expect("ok").1,
            Attribute::string("v")
        );
        assert_eq!(
            parse_attribute("n:Number=5").expect("ok").1,
            Attribute::number(5)
        );
        assert!(parse_attribute("n:Number=x").is_err());
        assert!(parse_attribute("novalue").is_err());
        assert!(parse_attribute("b:Binary=!!").is_err());
        assert!(parse_attribute("=v").is_err());
        assert_eq!(parse_attribute("u=a=b").expect("ok").1.value, "a=b");
    }

    #[test]
    fn event_lines_parse() {
        let e = parse_event_line(
            r#"{"event":"Order.Created","body":{"id":1},"attributes":{"k":"v","n":2}}"#,
        )
        .expect("ok");
        assert_eq!(e.event, "Order.Created");
        assert_eq!(e.body, br#"{"id":1}"#);
        assert_eq!(e.attributes["n"], Attribute::number(2));
        let text = parse_event_line(r#"{"event":"E","body":"plain"}"#).expect("ok");
        assert_eq!(text.body, b"plain");
        assert!(parse_event_line(r#"{"body":1}"#).is_err());
        assert!(parse_event_line("nope").is_err());
    }
}
