//! What the bench builds and installs before it measures, and the machine it runs on.

use std::process::Command;

use anyhow::{bail, Context as _};
use bench::setup::{self};

use crate::Options;

pub(crate) fn run_quiet(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
/// Build the host and the plugins in this program's profile.
pub(crate) fn build(options: &Options) -> anyhow::Result<()> {
    if options.no_build {
        return Ok(());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(setup::workspace_root()).args([
        "build",
        "-p",
        "iniesta",
        "-p",
        "iniesta-plugin-echo",
        "-p",
        "iniesta-plugin-ledger",
        "-p",
        "iniesta-plugin-shapes",
        "-p",
        "iniesta-plugin-panicky",
    ]);
    if setup::profile_dir()?
        .file_name()
        .is_some_and(|n| n == "release")
    {
        cmd.arg("--release");
    }
    eprintln!("== building the host and plugins: {cmd:?}");
    let status = cmd.status()?;
    if !status.success() {
        bail!("building the host and plugins failed");
    }
    Ok(())
}
pub(crate) fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| format!("{} GiB", kb / 1_048_576))
        .unwrap_or_default();
    let version = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .output()
            .ok()
            .map(|o| {
                String::from_utf8_lossy(if o.stdout.is_empty() {
                    &o.stderr
                } else {
                    &o.stdout
                })
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
            })
            .unwrap_or_default()
    };
    format!(
        "{cores} cores ({model}), {mem}; {}; node {}; {}",
        version("python3", "--version"),
        version("node", "--version"),
        version("redis-server", "--version")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}
