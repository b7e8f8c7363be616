//! `iniesta setup`: create the resources `check` verifies; idempotent.

use std::path::Path;
use std::process::ExitCode;

/// Print what was created or found; exit 1 when something could not be set up.
pub async fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let config = crate::validate::load(path)?;
    let report = crate::provision::setup(&config).await?;
    println!("{report}");
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
