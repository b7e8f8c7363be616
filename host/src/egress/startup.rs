//! What the commands set up for egress: the credential profiles an entry names, the fan-out
//! `publish` and `run` build (after delivering what waits in the outbox), and the check
//! `config check` makes of `[[egress]]`/`[[ingress]]` against the loaded plugins.

use std::sync::Arc;

use super::fanout::Fanout;
use super::{build_fanout, SetupError};
use crate::acct::{AcctError, AcctSource, Profiles};
use crate::broker::Broker;
use crate::config::{Config, ConfigError};
use crate::plugins::PluginSet;

/// Why egress (or ingress) cannot be set up for a command.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// An entry does not fit the loaded plugins or its settings.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The credential profiles could not be read.
    #[error("cannot read the credential profiles")]
    Profiles(#[source] AcctError),
    /// Building an egress or ingress failed.
    #[error(transparent)]
    Setup(SetupError),
}

/// The profiles, read only when an entry names one.
pub fn profiles_for(
    config: &Config,
    source: &AcctSource,
) -> Result<Option<Profiles>, StartupError> {
    let needed = config.egress.iter().any(|e| e.profile.is_some())
        || config.ingress.iter().any(|i| i.profile.is_some());
    if !needed {
        return Ok(None);
    }
    Profiles::from_source(source).map_err(StartupError::Profiles)
}

/// Whether an entry needs a plugin (ingress, or an egress other than the built-ins).
pub fn needs_plugins(config: &Config) -> bool {
    !config.ingress.is_empty()
        || config.egress.iter().any(|e| {
            e.plugin != super::config::BUILTIN_SNS && e.plugin != super::config::BUILTIN_SQS
        })
}

/// A setup failure as the commands report it: invalid entries name the config file.
pub fn invalid(config: &Config, e: SetupError) -> StartupError {
    match e {
        SetupError::Invalid(problems) => StartupError::Config(ConfigError::Invalid {
            path: config.source_name(),
            problems,
        }),
        other => StartupError::Setup(other),
    }
}

/// For `iniesta config check`: every `[[egress]]`/`[[ingress]]` names a loaded plugin that
/// exports that kind (nothing is constructed: no connection, no profile needed).
pub fn check_exports(config: &Config) -> Result<(), ConfigError> {
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
        Err(ConfigError::Invalid {
            path: config.source_name(),
            problems,
        })
    }
}

/// For `iniesta publish`: the fan-out when `[[egress]]` is configured, after delivering what
/// waits in the outbox from earlier publishes.
pub async fn fanout_for_publish(
    config: &Config,
    source: &AcctSource,
    broker: Arc<dyn Broker>,
) -> Result<Option<Arc<Fanout>>, StartupError> {
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
