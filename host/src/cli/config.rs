//! `iniesta config check`: validate the config and its bindings against the loaded plugins.

use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;

use crate::plugins::PluginSet;

/// `iniesta config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the config and its bindings against the loaded plugins; warn about loops
    /// running hosts of this config saw (a handler publishing an event its own binding takes).
    Check,
}

/// `iniesta config ...`.
pub fn run(path: &Path, command: ConfigCommand) -> anyhow::Result<ExitCode> {
    match command {
        ConfigCommand::Check => check(path),
    }
}

fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let config = crate::validate::load(path)?;
    crate::egress::startup::check_exports(&config)?;
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
            // What no file says: loops the running hosts of this config saw.
            for host in crate::plugins::watch::running_hosts(&config) {
                for warning in host.loop_warnings() {
                    println!("warning: {warning}");
                }
            }
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
