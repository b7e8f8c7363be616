//! `iniesta check`: verify the topic, queue, subscription, filter policy and DLQ.

use std::path::Path;
use std::process::ExitCode;

use super::Output;

/// `iniesta check`'s arguments.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// `human` (a line per resource) or `json` (one object: `ok`, `problems`, `items`,
    /// `warnings`).
    #[arg(long, value_enum, default_value_t = Output::Human)]
    pub output: Output,
}

/// Print the report; exit 1 when it found problems.
pub async fn run(path: &Path, args: CheckArgs) -> anyhow::Result<ExitCode> {
    let config = crate::validate::load(path)?;
    let report = crate::provision::check(&config).await?;
    match args.output {
        Output::Human => println!("{report}"),
        Output::Json => println!("{}", report.to_json()),
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
