//! `iniesta dlq list | redrive | delete | purge` (the dead-letter queue itself is
//! [`crate::dlq`]).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context as _};

use crate::dlq::{Action, DeadLetter, Listing, Progress, Query, Selection};

/// Which dead letters a command takes: `--id`s and `--event` globs (any of them), narrowed by
/// `--reason` texts.
#[derive(Debug, Clone, clap::Args)]
pub struct Select {
    /// Only events matching this glob (`*` matches any run, dots included); repeatable.
    #[arg(long = "event", value_name = "GLOB")]
    pub events: Vec<String>,
    /// Only this message id; repeatable.
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<String>,
    /// Only dead letters whose reason contains this text (ignoring case); repeatable (any of
    /// them). Applies on top of --event and --id.
    #[arg(long = "reason", value_name = "TEXT")]
    pub reasons: Vec<String>,
}

impl Select {
    fn selection(&self) -> anyhow::Result<Selection> {
        Ok(Selection::new(&self.events, &self.ids, &self.reasons)?)
    }
}

/// `iniesta dlq ...`.
#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// Show the dead letters: id, event, receive count, first/last seen, the reason iniesta
    /// dead-lettered it for, and a body preview (hidden unless --show-bodies); search them by
    /// --event, --id and --reason, page with --offset and --limit. On SQS the messages read are
    /// received and made visible again at once (SQS has no peek).
    List {
        #[command(flatten)]
        select: Select,
        /// Show at most this many (1 or more).
        #[arg(long, default_value_t = 50, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
        limit: usize,
        /// Skip this many matching dead letters first (the next page: --offset 50).
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Read at most this many dead letters to search and count (at most 10000; at least
        /// --offset plus --limit). Default: --offset plus --limit without a search, 1000 with
        /// --event, --id or --reason. On SQS every one read is received and made visible again.
        #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000))]
        scan: Option<usize>,
        /// Show the start of each body (bodies may hold personal data; hidden by default); with
        /// `--output json`, the whole body.
        #[arg(long)]
        show_bodies: bool,
        /// `human` (a table) or `json` (one object: `queue`, `letters` with `id`, `event`,
        /// `receive_count`, `first_seen`, `last_seen`, `reason`, `body_bytes` and, with
        /// --show-bodies, `body`; `matching`, `scanned`, `complete`, `offset`, `limit`).
        #[arg(long, value_enum, default_value_t = super::Output::Human)]
        output: super::Output,
    },
    /// Send dead letters back to the main queue with their attributes (each is deleted from
    /// the DLQ only after the send succeeded). Without --event, --id or --reason: all of them.
    Redrive {
        #[command(flatten)]
        select: Select,
    },
    /// Delete the dead letters chosen by --id, --event or --reason, for good (to delete every
    /// one, use `dlq purge --yes`).
    Delete {
        #[command(flatten)]
        select: Select,
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
    match &command {
        DlqCommand::Purge { yes: false } => {
            bail!("`dlq purge` deletes every dead letter for good: add --yes to confirm")
        }
        DlqCommand::Delete { select } => {
            select.selection()?.for_delete()?;
        }
        _ => {}
    }
    let dlq = crate::dlq::open(&config)
        .await
        .with_context(|| format!("cannot open the dead-letter queue for {}", path.display()))?;
    match command {
        DlqCommand::List {
            select,
            limit,
            offset,
            scan,
            show_bodies,
            output,
        } => {
            let query = Query {
                selection: select.selection()?,
                offset,
                limit,
                scan,
            };
            // Without a search, a listing that stops at its page is no news; with one (or an
            // explicit --scan) the counts are of what was read, which the note says.
            let counted = !query.selection.is_all() || scan.is_some();
            let listing = crate::dlq::search(dlq.as_ref(), &query)
                .await
                .with_context(|| format!("cannot list the {}", dlq.describe()))?;
            match output {
                super::Output::Human => {
                    print!("{}", render_listing(&listing, &query, show_bodies))
                }
                super::Output::Json => println!(
                    "{}",
                    to_json(&dlq.describe(), &listing, &query, show_bodies)
                ),
            }
            if !listing.complete && counted {
                eprintln!(
                    "note: {} dead letters were read and the queue holds more; counts are of those read (raise --scan, at most {})",
                    listing.scanned,
                    crate::dlq::MAX_SCAN
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Redrive { ref select } | DlqCommand::Delete { ref select } => {
            let action = match command {
                DlqCommand::Delete { .. } => Action::Delete,
                _ => Action::Redrive,
            };
            let selection = match action {
                Action::Delete => select.selection()?.for_delete()?,
                Action::Redrive => select.selection()?,
            };
            let verb = match action {
                Action::Redrive => "redrive",
                Action::Delete => "delete",
            };
            let bar = Bar(super::progress::Bar::new(
                0,
                "{spinner} {msg} [{bar:30}] {pos}/{len} ({eta})",
                verb,
            ));
            let report = dlq
                .act(action, &selection, &bar)
                .await
                .with_context(|| format!("{verb} in the {} failed", dlq.describe()))?;
            drop(bar);
            match action {
                Action::Redrive => println!(
                    "redriven {} message(s) to {}, {} left in the dead-letter queue (not selected)",
                    report.done,
                    config.queue_name(),
                    report.kept
                ),
                Action::Delete => println!(
                    "deleted {} message(s) from the {}, {} left (not selected)",
                    report.done,
                    dlq.describe(),
                    report.kept
                ),
            }
            for failure in &report.failed {
                println!("FAILED {failure}");
            }
            for id in &report.missing {
                println!("NOT FOUND {id}: not in the dead-letter queue (or, on SQS, held invisible by another listing or redrive just now)");
            }
            Ok(if report.ok() {
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
fn render(letters: &[DeadLetter], show_bodies: bool) -> String {
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

/// The `dlq list` table of one page of a search, with what it is a page of.
fn render_listing(listing: &Listing, query: &Query, show_bodies: bool) -> String {
    if listing.scanned == 0 {
        return "the dead-letter queue is empty\n".into();
    }
    if listing.matching == 0 {
        return format!("no dead letter matches (of {} read)\n", listing.scanned);
    }
    let first = query.offset + 1;
    if listing.letters.is_empty() {
        return format!(
            "nothing from #{first} on: {} dead letter(s) match\n",
            listing.matching
        );
    }
    let mut out = render(&listing.letters, show_bodies);
    if query.offset > 0 || listing.letters.len() < listing.matching || !listing.complete {
        out.push_str(&format!(
            "#{first}–{} of {}{}{}\n",
            query.offset + listing.letters.len(),
            listing.matching,
            if listing.complete { "" } else { "+" },
            if query.selection.is_all() {
                ""
            } else {
                " matching"
            }
        ));
    }
    out
}

/// `dlq list --output json`.
fn to_json(queue: &str, listing: &Listing, query: &Query, show_bodies: bool) -> serde_json::Value {
    let when = |ms: Option<u64>| ms.map(|ms| time(Some(ms)));
    let letters: Vec<serde_json::Value> = listing
        .letters
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
    serde_json::json!({
        "queue": queue,
        "letters": letters,
        "matching": listing.matching,
        "scanned": listing.scanned,
        "complete": listing.complete,
        "offset": query.offset,
        "limit": query.limit,
    })
}
