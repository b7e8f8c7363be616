//! `iniesta new-plugin NAME`: write a ready-to-build handler plugin crate.

use std::path::PathBuf;
use std::process::ExitCode;

/// `iniesta new-plugin` arguments.
#[derive(Debug, clap::Args)]
pub struct NewPluginArgs {
    /// The plugin's name (also its crate and handler name).
    pub name: String,
    /// Where to create it (default: ./NAME).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The plugin-api to depend on (default: the one this binary was built from).
    #[arg(long)]
    pub api_path: Option<PathBuf>,
}

/// Create the crate and print the next steps.
pub fn run(args: NewPluginArgs) -> anyhow::Result<ExitCode> {
    let created =
        crate::scaffold::create(&args.name, args.dir.as_deref(), args.api_path.as_deref())?;
    print!("{}", crate::scaffold::next_steps(&created));
    Ok(ExitCode::SUCCESS)
}
