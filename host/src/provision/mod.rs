//! Resource checks and setup: `iniesta check` and `iniesta setup`.
//!
//! A check reports every resource by name — topic, queue, dead-letter queue, subscription and
//! its filter policy, the claim check's S3 buckets — with the command that fixes each problem.

use std::fmt;

mod aws;
mod bucket;
mod local;

use crate::broker::BrokerError;
use crate::config::{BrokerKind, Config};

/// The command that fixes a missing or misconfigured resource.
const FIX: &str = "iniesta setup";

/// One checked resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// What was checked, e.g. `queue iniesta-development-receiver`.
    pub resource: String,
    /// Whether it is as the config wants it.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// The command that fixes it.
    pub fix: Option<String>,
}

/// A check's findings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Every checked resource, in order.
    pub items: Vec<Item>,
    /// Things that work here but not for every service sharing these resources, e.g. filter
    /// names the Python iniesta cannot build a policy from: `(subject, detail)`. Not problems.
    pub warnings: Vec<(String, String)>,
}

impl Report {
    /// Whether every item is fine.
    pub fn ok(&self) -> bool {
        self.items.iter().all(|i| i.ok)
    }

    pub(crate) fn push(&mut self, resource: String, ok: bool, detail: String, fix: Option<&str>) {
        self.items.push(Item {
            resource,
            ok,
            detail,
            fix: fix.map(str::to_string),
        });
    }
}

impl Report {
    /// The report as JSON, for scripts and CI (`iniesta check --output json`):
    /// `{"ok", "problems", "items": [{"resource", "ok", "detail", "fix"}], "warnings":
    /// [{"subject", "detail"}]}`.
    pub fn to_json(&self) -> serde_json::Value {
        let items: Vec<serde_json::Value> = self
            .items
            .iter()
            .map(|i| {
                serde_json::json!({
                    "resource": i.resource,
                    "ok": i.ok,
                    "detail": i.detail,
                    "fix": i.fix,
                })
            })
            .collect();
        let warnings: Vec<serde_json::Value> = self
            .warnings
            .iter()
            .map(|(subject, detail)| serde_json::json!({ "subject": subject, "detail": detail }))
            .collect();
        serde_json::json!({
            "ok": self.ok(),
            "problems": self.items.iter().filter(|i| !i.ok).count(),
            "items": items,
            "warnings": warnings,
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for item in &self.items {
            let mark = if item.ok { "ok     " } else { "PROBLEM" };
            write!(f, "{mark} {}: {}", item.resource, item.detail)?;
            if let (false, Some(fix)) = (item.ok, &item.fix) {
                write!(f, " (fix: {fix})")?;
            }
            writeln!(f)?;
        }
        for (subject, detail) in &self.warnings {
            writeln!(f, "WARNING {subject}: {detail}")?;
        }
        let problems = self.items.iter().filter(|i| !i.ok).count();
        if problems == 0 {
            write!(f, "all {} resources are in place", self.items.len())
        } else {
            write!(f, "{problems} problem(s)")
        }
    }
}

/// Check the resources a config needs.
pub async fn check(config: &Config) -> Result<Report, BrokerError> {
    let report = match config.broker.kind {
        BrokerKind::Local => local::check(config).await,
        BrokerKind::Aws => aws::check(config).await,
    }?;
    Ok(with_warnings(config, report))
}

/// Create or update the resources a config needs; idempotent. Returns the check after.
pub async fn setup(config: &Config) -> Result<Report, BrokerError> {
    let report = match config.broker.kind {
        BrokerKind::Local => local::setup(config).await,
        BrokerKind::Aws => aws::setup(config).await,
    }?;
    Ok(with_warnings(config, report))
}

/// Add a warning for each filter name the Python iniesta cannot build a policy from.
fn with_warnings(config: &Config, mut report: Report) -> Report {
    for name in crate::filter::python_unbuildable(&config.sqs.filters) {
        report.warnings.push((
            format!("filter `{name}`"),
            crate::filter::PYTHON_UNBUILDABLE.to_string(),
        ));
    }
    report
}
