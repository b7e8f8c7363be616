//! `iniesta filter-policies`: print the subscription filter policy built from `sqs.filters`.

use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;

/// Print the policy (warning about filters Python consumers cannot build).
pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let config = Config::read(path)?;
    let policy = crate::filter::iniesta_policy(&config.sns.event_key, &config.sqs.filters);
    for name in crate::filter::python_unbuildable(&config.sqs.filters) {
        tracing::warn!(filter = %name, "{}", crate::filter::PYTHON_UNBUILDABLE);
    }
    println!("{policy}");
    Ok(ExitCode::SUCCESS)
}
