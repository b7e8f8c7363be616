//! `iniesta check`: verify the topic, queue, subscription, filter policy and DLQ.

use std::path::Path;
use std::process::ExitCode;

/// Print the report; exit 1 when it found problems.
pub async fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let config = crate::validate::load(path)?;
    let report = crate::provision::check(&config).await?;
    println!("{report}");
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
