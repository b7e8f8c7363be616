//! `iniesta dlq list | redrive | purge` (the dead-letter queue itself is [`crate::dlq`]).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use indicatif::{ProgressBar, ProgressStyle};

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
        /// Show the start of each body (bodies may hold personal data; hidden by default).
        #[arg(long)]
        show_bodies: bool,
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
        DlqCommand::List { limit, show_bodies } => {
            let letters = dlq
                .list(limit)
                .await
                .with_context(|| format!("cannot list the {}", dlq.describe()))?;
            print!("{}", render(&letters, show_bodies));
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Redrive { events, ids } => {
            let selection = Selection::new(&events, &ids)?;
            let bar = Bar::new();
            let report = dlq
                .redrive(&selection, &bar)
                .await
                .with_context(|| format!("redrive from the {} failed", dlq.describe()))?;
            bar.0.finish_and_clear();
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

/// A progress bar on stderr (hidden when stderr is not a terminal).
struct Bar(ProgressBar);

impl Bar {
    fn new() -> Bar {
        let bar = ProgressBar::new(0);
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} redrive [{bar:30}] {pos}/{len} ({eta})")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        Bar(bar)
    }
}

impl Progress for Bar {
    fn total(&self, total: u64) {
        self.0.set_length(total);
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
        // SQS counts are estimates: never let the bar run past its end.
        if self.0.position() > self.0.length().unwrap_or(0) {
            self.0.set_length(self.0.position());
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
    let mut out = format!(
        "{:<36}  {:<28}  {:>8}  {:<20}  {:<20}  {:<40}  {}\n",
        "ID", "EVENT", "RECEIVES", "FIRST SEEN", "LAST SEEN", "REASON", "BODY"
    );
    for l in letters {
        out.push_str(&format!(
            "{:<36}  {:<28}  {:>8}  {:<20}  {:<20}  {:<40}  {}\n",
            l.id,
            if l.event.is_empty() { "-" } else { &l.event },
            l.receive_count,
            time(l.first_seen_ms),
            time(l.last_seen_ms),
            l.reason.as_deref().unwrap_or("-").replace('\n', " "),
            l.body_preview(show_bodies, 60)
        ));
    }
    out.push_str(&format!("{} message(s)\n", letters.len()));
    out
}
