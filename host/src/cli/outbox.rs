//! `iniesta outbox [--drain]`: what waits in the outbox per egress, delivered now with
//! `--drain`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::acct::AcctSource;
use crate::egress::Published;

/// `iniesta outbox` arguments.
#[derive(Debug, clap::Args)]
pub struct OutboxArgs {
    /// Deliver everything waiting now (one attempt per event, in order, stopping at an
    /// egress's first failure); exit 1 if something still waits.
    #[arg(long)]
    pub drain: bool,
}

/// After `publish` printed an event: say which egresses it waits for.
pub fn report_queued(published: &Published) {
    if !published.queued.is_empty() {
        eprintln!(
            "queued: {} did not take {} now; it waits in the outbox and is delivered by a running host or the next publish (`iniesta outbox` shows it)",
            published.queued.join(", "),
            published.event
        );
    }
}

/// `iniesta outbox [--drain]`.
pub async fn run(path: &Path, args: OutboxArgs, source: &AcctSource) -> anyhow::Result<ExitCode> {
    let config = crate::validate::load_for_publishing(path)?;
    if config.egress.is_empty() {
        println!("no [[egress]] entries: nothing goes through the outbox");
        return Ok(ExitCode::SUCCESS);
    }
    if args.drain {
        let broker = crate::broker::open(&config)
            .await
            .with_context(|| format!("cannot open the broker for {}", path.display()))?;
        crate::egress::startup::fanout_for_publish(&config, source, broker).await?;
    }
    let outbox = crate::egress::outbox::Outbox::open(&config.resolve(&config.outbox.path))?;
    let backlog = outbox.backlog().await?;
    if backlog.is_empty() {
        println!("outbox {}: empty", outbox.path().display());
        return Ok(ExitCode::SUCCESS);
    }
    for b in &backlog {
        let configured = config.egress.iter().any(|e| e.label() == b.egress);
        println!(
            "{}: {} event(s) waiting, {} attempt(s) so far{}{}",
            b.egress,
            b.pending,
            b.max_attempts,
            b.last_error
                .as_deref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default(),
            if configured {
                ""
            } else {
                " (no [[egress]] of this name is configured: nothing delivers these until one is back)"
            }
        );
    }
    Ok(if args.drain {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
