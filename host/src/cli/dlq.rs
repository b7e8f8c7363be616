//! `iniesta dlq list | redrive | purge` (the dead-letter queue itself is [`crate::dlq`]).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context as _};

use crate::dlq::{DeadLetter, Progress, Selection};

/// `iniesta dlq ...`.
#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// Show the dead letters: id, event, receive count, first/last seen, the reason iniesta
    /// dead-lettered it for, and a body preview (hidden unless --show-bodies). On SQS the
    /// messages are received and made visible again at once (SQS has no peek).
    List {
        /// Show at most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Show the start of each body (bodies may hold personal data; hidden by default); with
        /// `--output json`, the whole body.
        #[arg(long)]
        show_bodies: bool,
        /// `human` (a table) or `json` (one object: `queue`, `letters` with `id`, `event`,
        /// `receive_count`, `first_seen`, `last_seen`, `reason`, `body_bytes` and, with
        /// --show-bodies, `body`).
        #[arg(long, value_enum, default_value_t = super::Output::Human)]
        output: super::Output,
    },
    /// Send dead letters back to the main queue with their attributes (each is deleted from
    /// the DLQ only after the send succeeded). Without --event or --id: all of them.
    Redrive {
        /// Only events matching this glob (`*` matches any run, dots included); repeatable.
        #[arg(long = "event", value_name = "GLOB")]
        events: Vec<String>,
        /// Only this message id; repeatable.
        #[arg(long = "id", value_name = "ID")]
        ids: Vec<String>,
    },
    /// Delete every dead letter (asks for --yes).
    Purge {
        /// Really delete them.
        #[arg(long)]
        yes: bool,
    },
}

/// Run a `dlq` command against the config's broker.
pub async fn run(path: &Path, command: DlqCommand) -> anyhow::Result<ExitCode> {
    let config = crate::validate::load(path)?;
    if let DlqCommand::Purge { yes: false } = command {
        bail!("`dlq purge` deletes every dead letter for good: add --yes to confirm");
    }
    let dlq = crate::dlq::open(&config)
        .await
        .with_context(|| format!("cannot open the dead-letter queue for {}", path.display()))?;
    match command {
        DlqCommand::List {
            limit,
            show_bodies,
            output,
        } => {
            let letters = dlq
                .list(limit)
                .await
                .with_context(|| format!("cannot list the {}", dlq.describe()))?;
            match output {
                super::Output::Human => print!("{}", render(&letters, show_bodies)),
                super::Output::Json => {
                    println!("{}", to_json(&dlq.describe(), &letters, show_bodies));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Redrive { events, ids } => {
            let selection = Selection::new(&events, &ids)?;
            let bar = Bar(super::progress::Bar::new(
                0,
                "{spinner} {msg} [{bar:30}] {pos}/{len} ({eta})",
                "redrive",
            ));
            let report = dlq
                .redrive(&selection, &bar)
                .await
                .with_context(|| format!("redrive from the {} failed", dlq.describe()))?;
            drop(bar);
            println!(
                "redriven {} message(s) to {}, {} left in the dead-letter queue (not selected)",
                report.redriven,
                config.queue_name(),
                report.kept
            );
            for failure in &report.failed {
                println!("FAILED {failure}");
            }
            Ok(if report.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        DlqCommand::Purge { .. } => {
            let deleted = dlq
                .purge()
                .await
                .with_context(|| format!("cannot purge the {}", dlq.describe()))?;
            println!("purged {deleted} message(s) from the {}", dlq.describe());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The redrive's progress on a bar on stderr (hidden when stderr is not a terminal; log lines
/// print above it).
struct Bar(super::progress::Bar);

impl Progress for Bar {
    fn total(&self, total: u64) {
        self.0.bar().set_length(total);
    }
    fn advance(&self, n: u64) {
        let bar = self.0.bar();
        bar.inc(n);
        // SQS counts are estimates: never let the bar run past its end.
        if bar.position() > bar.length().unwrap_or(0) {
            bar.set_length(bar.position());
        }
    }
}

/// A UTC time for tables, or `-`.
pub fn time(ms: Option<u64>) -> String {
    ms.and_then(|ms| i64::try_from(ms / 1000).ok())
        .and_then(|secs| {
            aws_smithy_types::DateTime::from_secs(secs)
                .fmt(aws_smithy_types::date_time::Format::DateTime)
                .ok()
        })
        .unwrap_or_else(|| "-".into())
}

/// The `dlq list` table.
pub fn render(letters: &[DeadLetter], show_bodies: bool) -> String {
    if letters.is_empty() {
        return "the dead-letter queue is empty\n".into();
    }
    let mut out = super::table::render(
        &[
            "id",
            "event",
            "receives",
            "first seen",
            "last seen",
            "reason",
            "body",
        ],
        letters.iter().map(|l| {
            vec![
                l.id.clone(),
                if l.event.is_empty() {
                    "-".to_string()
                } else {
                    l.event.clone()
                },
                l.receive_count.to_string(),
                time(l.first_seen_ms),
                time(l.last_seen_ms),
                l.reason.as_deref().unwrap_or("-").replace('\n', " "),
                l.body_preview(show_bodies, 60),
            ]
        }),
    );
    out.push_str(&format!("\n{} message(s)\n", letters.len()));
    out
}

/// `dlq list --output json`.
fn to_json(queue: &str, letters: &[DeadLetter], show_bodies: bool) -> serde_json::Value {
    let when = |ms: Option<u64>| ms.map(|ms| time(Some(ms)));
    let letters: Vec<serde_json::Value> = letters
        .iter()
        .map(|l| {
            let mut letter = serde_json::json!({
                "id": l.id,
                "event": l.event,
                "receive_count": l.receive_count,
                "first_seen": when(l.first_seen_ms),
                "last_seen": when(l.last_seen_ms),
                "reason": l.reason,
                "body_bytes": l.body.len(),
            });
            if show_bodies {
                letter["body"] = String::from_utf8_lossy(&l.body).into_owned().into();
            }
            letter
        })
        .collect();
    serde_json::json!({ "queue": queue, "letters": letters })
}
