//! The Python peers' shared venv and how their scripts are started.

use std::path::PathBuf;
use std::process::Command;

use bench::canned::Canned;
use bench::setup;

use crate::prepare::run_quiet;
use crate::Ctx;

/// `python bench/peers/python/<script> <endpoint> <queue>`.
pub(super) fn script(ctx: &Ctx, script: &str, canned: &Canned, queue: &str) -> Command {
    let mut cmd = Command::new(&ctx.python);
    cmd.arg(
        setup::workspace_root()
            .join("bench/peers/python")
            .join(script),
    )
    .arg(canned.url())
    .arg(queue);
    cmd
}

/// The Python venv with the pinned peers (target/bench-venv), created or refreshed when
/// requirements.txt changed.
pub(crate) fn python_env() -> anyhow::Result<PathBuf> {
    let requirements = setup::workspace_root().join("bench/peers/python/requirements.txt");
    let venv = setup::target_dir()?.join("bench-venv");
    let python = venv.join("bin/python");
    let stamp = venv.join(".bench-requirements");
    let wanted = std::fs::read_to_string(&requirements)?;
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
        return Ok(python);
    }
    eprintln!("== installing the Python peers into {}", venv.display());
    run_quiet(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv (apt-get install python3-venv if it is missing)",
    )?;
    run_quiet(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements),
        "pip install -r bench/peers/python/requirements.txt",
    )?;
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}
