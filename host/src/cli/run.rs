//! `iniesta run`: consume until Ctrl-C/SIGTERM (the host itself is [`crate::app::App`]).

use std::path::Path;
use std::process::ExitCode;

use crate::acct::AcctSource;

/// `iniesta run` arguments.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Skip the resource checks at start-up.
    #[arg(long)]
    pub no_check: bool,
}

/// Load the config and run the host until it has drained.
pub async fn run(path: &Path, args: RunArgs, acct: &AcctSource) -> anyhow::Result<ExitCode> {
    let config = crate::validate::load(path)?;
    crate::app::App::new(path, config, acct.clone())
        .no_check(args.no_check)
        .run()
        .await?;
    Ok(ExitCode::SUCCESS)
}
