//! `iniesta new-plugin NAME`: write a ready-to-build handler plugin crate.

use std::path::PathBuf;
use std::process::ExitCode;

/// `iniesta new-plugin` arguments.
#[derive(Debug, clap::Args)]
pub struct NewPluginArgs {
    /// The plugin's name (also its crate and handler name).
    #[arg(required_unless_present = "update_api")]
    pub name: Option<String>,
    /// Where to create it (default: ./NAME).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// A plugin-api checkout to depend on by path instead (default: a copy of the plugin-api
    /// this binary speaks, written into the crate's vendor/iniesta-plugin-api).
    #[arg(long)]
    pub api_path: Option<PathBuf>,
    /// Replace the vendored plugin-api of the plugin crate in DIR with this binary's (after
    /// upgrading the host), and pin its version in DIR/Cargo.toml.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["name", "dir", "api_path"])]
    pub update_api: Option<PathBuf>,
}

/// Create the crate and print the next steps.
pub fn run(args: NewPluginArgs) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &args.update_api {
        let api = crate::scaffold::update_api(dir)?;
        println!(
            "updated {} to iniesta-plugin-api {}; rebuild the plugin (cargo build --release)",
            api.display(),
            crate::scaffold::api_version()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let name = args.name.as_deref().unwrap_or_default();
    let created = crate::scaffold::create(name, args.dir.as_deref(), args.api_path.as_deref())?;
    print!("{}", crate::scaffold::next_steps(&created));
    Ok(ExitCode::SUCCESS)
}
