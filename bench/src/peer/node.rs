//! sqs-consumer (Node.js), the most used SQS consumer library on npm
//! (bench/peers/node/consumer.js).

use std::path::PathBuf;
use std::process::Command;

use bench::canned::Canned;
use bench::setup;

use crate::prepare::run_quiet;
use crate::{Ctx, QUEUE};

/// The command that consumes `canned`'s queue.
pub(crate) fn command(ctx: &Ctx, canned: &Canned) -> Command {
    let mut cmd = Command::new("node");
    cmd.arg(ctx.node_dir.join("consumer.js"))
        .arg(canned.url())
        .arg(canned.queue_url(QUEUE));
    cmd
}

/// bench/peers/node/node_modules from package-lock.json (`npm ci`), refreshed when the lock
/// file changed.
pub(crate) fn node_env() -> anyhow::Result<PathBuf> {
    let dir = setup::workspace_root().join("bench/peers/node");
    let lock = std::fs::read_to_string(dir.join("package-lock.json"))?;
    let stamp = dir.join("node_modules/.bench-lock");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(&lock) {
        return Ok(dir);
    }
    eprintln!("== installing the Node peer (npm ci) in {}", dir.display());
    run_quiet(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir),
        "npm ci in bench/peers/node",
    )?;
    std::fs::write(&stamp, lock)?;
    Ok(dir)
}
