//! `iniesta initialization-type`: print e.g. `SNS_PRODUCER|EVENT_POLLING`.

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;

/// Print the config's initialization type.
pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let config = Config::read(path)?;
    println!("{}", config.initialization_type());
    Ok(ExitCode::SUCCESS)
}
