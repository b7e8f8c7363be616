//! The command-line side of egress, ingress and credential profiles: `iniesta acct`,
//! `iniesta outbox`, and what `run` and `publish` set up.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::fanout::Fanout;
use super::{build_fanout, Published};
use crate::acct::{AcctSource, Profiles};
use crate::broker::Broker;
use crate::config::Config;
use crate::ingress::{IngressSettings, Ingresses};
use crate::plugins::PluginSet;
use crate::route::Routes;

/// `iniesta acct ...`.
#[derive(Debug, clap::Subcommand)]
pub enum AcctCommand {
    /// Encrypt a file of profiles into FILE.fernet with a new key, and print the key: YAML
    /// (`plugin: profile: settings`, as the real `acct encrypt` reads it) or, for a `.toml`
    /// name, `[plugin.profile]` tables. The token holds msgpack of the data, as acct's does.
    Encrypt {
        /// The plaintext profiles.
        file: PathBuf,
    },
    /// Decrypt the acct file (--acct-file/--acct-key) and list its profiles with every value
    /// shown as `***`.
    Show,
}

/// `iniesta outbox` arguments.
#[derive(Debug, clap::Args)]
pub struct OutboxArgs {
    /// Deliver everything waiting now (one attempt per event, in order, stopping at an
    /// egress's first failure); exit 1 if something still waits.
    #[arg(long)]
    pub drain: bool,
}

/// `iniesta acct ...`.
pub fn acct(command: AcctCommand, source: &AcctSource) -> anyhow::Result<ExitCode> {
    match command {
        AcctCommand::Encrypt { file } => {
            let (written, key) = crate::acct::encrypt_file(&file)?;
            println!("New encrypted file created at: {}", written.display());
            println!("The file was encrypted with this key:");
            println!("{}", key.expose());
            eprintln!(
                "Keep the key apart from the file (e.g. INIESTA_ACCT_KEY in a secret store) and delete the plaintext: {}",
                file.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        AcctCommand::Show => {
            let Some(profiles) = Profiles::from_source(source)? else {
                bail!("no acct file: set INIESTA_ACCT_FILE and INIESTA_ACCT_KEY (or pass --acct-file and --acct-key)");
            };
            print!("{}", profiles.redacted());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The profiles, read only when an entry names one.
fn profiles_for(config: &Config, source: &AcctSource) -> anyhow::Result<Option<Profiles>> {
    let needed = config.egress.iter().any(|e| e.profile.is_some())
        || config.ingress.iter().any(|i| i.profile.is_some());
    if !needed {
        return Ok(None);
    }
    Profiles::from_source(source).context("cannot read the credential profiles")
}

fn needs_plugins(config: &Config) -> bool {
    !config.ingress.is_empty()
        || config.egress.iter().any(|e| {
            e.plugin != super::config::BUILTIN_SNS && e.plugin != super::config::BUILTIN_SQS
        })
}

fn invalid(config: &Config, e: super::SetupError) -> anyhow::Error {
    match e {
        super::SetupError::Invalid(problems) => crate::config::ConfigError::Invalid {
            path: config.source_name(),
            problems,
        }
        .into(),
        other => other.into(),
    }
}

/// For `iniesta config check`: every `[[egress]]`/`[[ingress]]` names a loaded plugin that
/// exports that kind (nothing is constructed: no connection, no profile needed).
pub fn check_exports(config: &Config) -> anyhow::Result<()> {
    if !needs_plugins(config) {
        return Ok(());
    }
    let set = PluginSet::scan(&config.plugin_dirs());
    let mut problems = Vec::new();
    let entries = config
        .egress
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            e.plugin != super::config::BUILTIN_SNS && e.plugin != super::config::BUILTIN_SQS
        })
        .map(|(i, e)| {
            (
                format!("egress[{i}]"),
                &e.plugin,
                "egress",
                e.egress.as_deref(),
            )
        })
        .chain(config.ingress.iter().enumerate().map(|(i, e)| {
            (
                format!("ingress[{i}]"),
                &e.plugin,
                "ingress",
                e.ingress.as_deref(),
            )
        }));
    for (key, plugin, kind, wanted) in entries {
        let Some(loaded) = set.get(plugin) else {
            problems.push(crate::config::Problem {
                key: format!("{key}.plugin"),
                message: set.missing_hint(plugin),
            });
            continue;
        };
        let known = if kind == "egress" {
            &loaded.egresses
        } else {
            &loaded.ingresses
        };
        if let Err(problem) = super::pick_export(plugin, kind, wanted, known, &key) {
            problems.push(problem);
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(crate::config::ConfigError::Invalid {
            path: config.source_name(),
            problems,
        }
        .into())
    }
}

/// For `iniesta publish`: the fan-out when `[[egress]]` is configured, after delivering what
/// waits in the outbox from earlier publishes.
pub async fn fanout_for_publish(
    config: &Config,
    source: &AcctSource,
    broker: Arc<dyn Broker>,
) -> anyhow::Result<Option<Arc<Fanout>>> {
    if config.egress.is_empty() {
        return Ok(None);
    }
    let profiles = profiles_for(config, source)?;
    let set = if needs_plugins(config) {
        PluginSet::scan(&config.plugin_dirs())
    } else {
        PluginSet::default()
    };
    let fanout = build_fanout(config, &set, profiles.as_ref(), broker)
        .map_err(|e| invalid(config, e))?
        .map(Arc::new);
    if let Some(fanout) = &fanout {
        let report = fanout.drain_pending().await;
        if report.delivered + report.failed > 0 {
            tracing::info!(
                delivered = report.delivered,
                still_failing = report.failed,
                "delivered events waiting in the outbox from earlier publishes"
            );
        }
    }
    Ok(fanout)
}

/// After `publish` printed an event: say which egresses it waits for.
pub fn report_queued(published: &Published) {
    if !published.queued.is_empty() {
        eprintln!(
            "queued: {} did not take {} now; it waits in the outbox and is delivered by a running host or the next publish (`iniesta outbox` shows it)",
            published.queued.join(", "),
            published.event
        );
    }
}

/// `iniesta outbox [--drain]`.
pub async fn outbox(
    path: &Path,
    args: OutboxArgs,
    source: &AcctSource,
) -> anyhow::Result<ExitCode> {
    let config = crate::validate::load_for_publishing(path)?;
    if config.egress.is_empty() {
        println!("no [[egress]] entries: nothing goes through the outbox");
        return Ok(ExitCode::SUCCESS);
    }
    if args.drain {
        let broker = crate::broker::open(&config)
            .await
            .with_context(|| format!("cannot open the broker for {}", path.display()))?;
        fanout_for_publish(&config, source, broker).await?;
    }
    let outbox = super::outbox::Outbox::open(&config.resolve(&config.outbox.path))?;
    let backlog = outbox.backlog().await?;
    if backlog.is_empty() {
        println!("outbox {}: empty", outbox.path().display());
        return Ok(ExitCode::SUCCESS);
    }
    for b in &backlog {
        let configured = config.egress.iter().any(|e| e.label() == b.egress);
        println!(
            "{}: {} event(s) waiting, {} attempt(s) so far{}{}",
            b.egress,
            b.pending,
            b.max_attempts,
            b.last_error
                .as_deref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default(),
            if configured {
                ""
            } else {
                " (no [[egress]] of this name is configured: nothing delivers these until one is back)"
            }
        );
    }
    Ok(if args.drain {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// What `iniesta run` sets up for egress and ingress.
pub struct Running {
    fanout: Option<Arc<Fanout>>,
    profiles: Option<Profiles>,
}

impl Running {
    /// Read the profiles and build the fan-out.
    pub async fn start(
        config: &Config,
        plugins: &PluginSet,
        source: &AcctSource,
        broker: Arc<dyn Broker>,
    ) -> anyhow::Result<Running> {
        let profiles = profiles_for(config, source)?;
        let fanout = build_fanout(config, plugins, profiles.as_ref(), broker)
            .map_err(|e| invalid(config, e))?
            .map(Arc::new);
        Ok(Running { fanout, profiles })
    }

    /// The fan-out for the publisher.
    pub fn fanout(&self) -> Option<Arc<Fanout>> {
        self.fanout.clone()
    }

    /// Start the `[[ingress]]` consumers, feeding `routes`.
    pub fn start_ingress(
        self,
        config: &Config,
        plugins: &PluginSet,
        routes: Arc<ArcSwap<Routes>>,
        errors: Option<crate::ops::errors::ErrorReporter>,
        failures: Option<Arc<crate::ops::console::RecentFailures>>,
    ) -> anyhow::Result<RunningWithIngress> {
        let ingresses = if config.ingress.is_empty() {
            None
        } else {
            Some(
                crate::ingress::start(
                    config,
                    plugins,
                    self.profiles.as_ref(),
                    routes,
                    IngressSettings {
                        errors,
                        failures,
                        ..IngressSettings::from_config(config)
                    },
                )
                .map_err(|e| invalid(config, e))?,
            )
        };
        Ok(RunningWithIngress {
            fanout: self.fanout,
            ingresses,
        })
    }
}

/// Egress and ingress of a running host, before serving.
pub struct RunningWithIngress {
    fanout: Option<Arc<Fanout>>,
    ingresses: Option<Ingresses>,
}

impl RunningWithIngress {
    /// Drain the outbox until `shutdown`; when it fires, stop the ingresses at once (no new
    /// messages, like the pollers) and let their running handlers finish.
    pub fn serve(self, shutdown: CancellationToken) -> Serving {
        let drainer = self
            .fanout
            .map(|f| tokio::spawn(f.run_drainer(shutdown.clone())));
        let ingresses = self.ingresses.map(|ingresses| {
            tokio::spawn(async move {
                shutdown.cancelled().await;
                ingresses.stop().await;
            })
        });
        Serving { drainer, ingresses }
    }
}

/// Egress and ingress while the host runs.
pub struct Serving {
    drainer: Option<tokio::task::JoinHandle<()>>,
    ingresses: Option<tokio::task::JoinHandle<()>>,
}

impl Serving {
    /// Wait for the ingresses and the outbox drainer to stop (the shutdown token has fired).
    pub async fn stop(self) {
        let bound = std::time::Duration::from_secs(60);
        if let Some(ingresses) = self.ingresses {
            let _ = tokio::time::timeout(bound, ingresses).await;
        }
        if let Some(drainer) = self.drainer {
            let _ = tokio::time::timeout(bound, drainer).await;
        }
    }
}
