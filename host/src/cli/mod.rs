//! The command line: `iniesta [-c FILE] COMMAND`. This module parses the arguments, sets up
//! logging and the runtime, and hands each command to its own module (one file per command;
//! `run` builds the host through [`crate::app`]). `anyhow` is used here only, at the edge.

pub mod acct;
pub mod attributes;
pub mod check;
pub mod completions;
pub mod config;
pub mod dlq;
pub mod filter_policies;
pub mod initialization_type;
pub mod new_plugin;
pub mod outbox;
pub mod plugins;
pub mod progress;
pub mod publish;
pub mod route;
pub mod run;
pub mod setup;
pub mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use attributes::parse_attribute;
pub use config::ConfigCommand;
pub use plugins::{render_plugins, render_running, PluginsCommand};
pub use publish::{parse_event_line, Event, PublishArgs};
pub use route::RouteArgs;

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

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Lines for people.
    Human,
    /// One JSON object, for scripts.
    Json,
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
    Run(run::RunArgs),
    /// Publish an event (`{event}.{service}`) to the topic, or with --queue to the queue.
    Publish(publish::PublishArgs),
    /// Verify the topic, queue, subscription, filter policy and DLQ; non-zero exit on problems.
    Check(check::CheckArgs),
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
        command: Option<plugins::PluginsCommand>,
        /// `human` (a table and notes) or `json` (one object: `plugins`, `overridden`,
        /// `refused`, `missing`, `running_hosts`).
        #[arg(long, value_enum, default_value_t = Output::Human)]
        output: Output,
    },
    /// Write a ready-to-build handler plugin crate.
    NewPlugin(new_plugin::NewPluginArgs),
    /// Config commands.
    Config {
        /// What to do with the config.
        #[command(subcommand)]
        command: config::ConfigCommand,
    },
    /// Dry run: print which bindings a message would reach and why (patterns, media types,
    /// match conditions, schemas). Loads no plugin, publishes nothing; exit 0.
    Route(route::RouteArgs),
    /// The dead-letter queue: list and search, redrive to the main queue, delete, purge.
    Dlq {
        /// What to do.
        #[command(subcommand)]
        command: dlq::DlqCommand,
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
        command: acct::AcctCommand,
    },
    /// The outbox of `[[egress]]`: what waits per egress; `--drain` delivers it now.
    Outbox(outbox::OutboxArgs),
    /// Print the shell completion script: `source <(iniesta completions bash)`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page of iniesta and its commands (roff): `iniesta man | man -l -`.
    Man,
}

/// Entry point: parse, run, map errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::PluginWorker { file } = &cli.command {
        return crate::isolate::worker::main(file);
    }

    let format = cli.log_format;
    init_tracing(format);
    if prints_only(&cli.command) {
        restore_sigpipe();
    }
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

/// The AWS SDK's crates log at `warn` at most, whatever `INIESTA_LOG` asks: at `info` and
/// below they name the credentials they load (the access key id), and signing logs the
/// canonical request, which carries it too. Their warnings and errors still show.
const SDK_TARGETS: &[&str] = &[
    "aws_config",
    "aws_credential_types",
    "aws_runtime",
    "aws_sigv4",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http_client",
    "aws_sdk_s3",
    "aws_sdk_sns",
    "aws_sdk_sqs",
    "aws_sdk_sso",
    "aws_sdk_ssooidc",
    "aws_sdk_sts",
];

/// `filter` with every [`SDK_TARGETS`] crate held at `warn`.
pub fn quiet_sdk(
    mut filter: tracing_subscriber::filter::EnvFilter,
) -> tracing_subscriber::filter::EnvFilter {
    for target in SDK_TARGETS {
        if let Ok(directive) = format!("{target}=warn").parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::EnvFilter;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::prelude::*;
    let filter = quiet_sdk(
        EnvFilter::try_from_env("INIESTA_LOG")
            .or_else(|_| EnvFilter::try_from_default_env())
            .unwrap_or_else(|_| EnvFilter::new("info")),
    );
    // Host-level incidents reach Sentry from the log lines that carry an `alert` or
    // `alert_cleared` field, whatever the log level shown (ops/errors/alerts.rs).
    use crate::ops::errors::alerts;
    let _ = match format {
        LogFormat::Human => tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    // Above a progress bar when one is shown (publish --file, dlq redrive).
                    .with_writer(|| progress::LogWriter)
                    .with_target(false)
                    .with_filter(filter),
            )
            .with(alerts::layer())
            .try_init(),
        LogFormat::Json => {
            // Plugins' own stderr (their panic messages) is wrapped into JSON lines too.
            let writer = match crate::ops::logs::capture_stderr() {
                Ok(stderr) => BoxMakeWriter::new(stderr),
                Err(_) => BoxMakeWriter::new(std::io::stderr),
            };
            tracing_subscriber::registry()
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .flatten_event(true)
                        .with_current_span(true)
                        .with_span_list(false)
                        .with_target(false)
                        .with_writer(writer)
                        .with_filter(filter),
                )
                .with(alerts::layer())
                .try_init()
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
        Command::Run(args) => run::run(path, args, &acct).await,
        Command::Route(args) => route::run(path, args),
        Command::Dlq { command } => dlq::run(path, command).await,
        Command::Publish(args) => publish::run(path, args, &acct).await,
        Command::Acct { command } => acct::run(command, &acct),
        Command::Outbox(args) => outbox::run(path, args, &acct).await,
        Command::Check(args) => check::run(path, args).await,
        Command::Completions { shell } => completions::completions(shell),
        Command::Man => completions::man(),
        Command::Setup => setup::run(path).await,
        Command::FilterPolicies => filter_policies::run(path),
        Command::InitializationType => initialization_type::run(path),
        Command::Plugins { command, output } => plugins::run(path, command, output).await,
        Command::NewPlugin(args) => new_plugin::run(args),
        Command::Config { command } => config::run(path, command),
        Command::PluginWorker { file } => Ok(crate::isolate::worker::main(&file)),
    }
}

/// Whether `command` only reads and prints: a closed reader may end it at once. Commands that
/// change state (`publish`, `dlq redrive`, `outbox --drain`, `setup`, …) keep SIGPIPE ignored,
/// so a closed pipe is an error they report and account for, never a silent kill midway.
fn prints_only(command: &Command) -> bool {
    match command {
        Command::Config { command } => matches!(command, config::ConfigCommand::Show { .. }),
        Command::Dlq { command } => matches!(command, dlq::DlqCommand::List { .. }),
        Command::Plugins { .. }
        | Command::Route(..)
        | Command::FilterPolicies
        | Command::InitializationType
        | Command::Check(..)
        | Command::Completions { .. }
        | Command::Man => true,
        _ => false,
    }
}

/// A printing command piped into `head` or `grep -q` ends quietly when the reader leaves, as
/// Unix tools do, instead of panicking on a broken pipe: SIGPIPE goes back to its default
/// (Rust's runtime ignores it). `run` keeps it ignored, so a peer that closes a socket is an
/// error on that write, never the end of the host.
fn restore_sigpipe() {
    // SAFETY: resetting a signal's disposition to SIG_DFL at start-up, before any thread that
    // could be writing exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
