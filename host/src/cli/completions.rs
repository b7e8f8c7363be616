//! `iniesta completions SHELL` and `iniesta man`: shell completions and the man page, generated
//! from the same clap definitions as `--help`, so they never drift from the commands.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::CommandFactory as _;

use super::Cli;

/// Print the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut command = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, "iniesta", &mut out);
    std::io::stdout()
        .write_all(&out)
        .context("cannot write the completions to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// Print the man page (roff) for `iniesta` and its commands.
pub fn man() -> anyhow::Result<ExitCode> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut out)
        .context("cannot render the man page")?;
    for sub in Cli::command()
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
    {
        clap_mangen::Man::new(sub.clone())
            .title(format!("iniesta-{}", sub.get_name()))
            .render(&mut out)
            .context("cannot render the man page")?;
    }
    std::io::stdout()
        .write_all(&out)
        .context("cannot write the man page to stdout")?;
    Ok(ExitCode::SUCCESS)
}
