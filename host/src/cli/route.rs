//! `iniesta route`: the dry run of routing one message.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

use super::attributes::{parse_attributes, read_body};
use super::Output;

/// `iniesta route` arguments.
#[derive(Debug, clap::Args)]
pub struct RouteArgs {
    /// The full event name as it arrives, e.g. `Order.Created.shop` (nothing is appended). When
    /// no binding's patterns match it, the report ends with "did you mean": the full names a
    /// short name (`Order.Created`) stands for, or the nearest names to a misspelt one.
    pub event: String,
    /// The body (JSON or text; `-` reads standard input). Default `{}`.
    pub body: Option<String>,
    /// An attribute: `KEY=VALUE` (String), `KEY:Number=5`, `KEY:Binary=BASE64`.
    #[arg(short = 'a', long = "attribute", value_name = "KEY=VALUE")]
    pub attributes: Vec<String>,
    /// `human` (the report) or `json` (one object: `message`, `bindings` with their `checks`,
    /// `takers`, `schema_rejections`, `outcome`, `suggestions`).
    #[arg(long, value_enum, default_value_t = Output::Human)]
    pub output: Output,
}

/// `iniesta route`: print which bindings the message would reach and why.
pub fn run(path: &Path, args: RouteArgs) -> anyhow::Result<ExitCode> {
    let config = crate::validate::load_for_routing(path)?;
    let body = read_body(args.body.as_deref())?;
    let attributes = parse_attributes(&args.attributes)?;
    let envelope = crate::route::explain::message(&config, &args.event, body, attributes)
        .with_context(|| format!("cannot build the message `{}`", args.event))?;
    let report = crate::route::explain::explain(&config, &envelope).map_err(|problems| {
        crate::config::ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        }
    })?;
    match args.output {
        Output::Human => print!("{}", report.text),
        Output::Json => println!("{}", report.json),
    }
    Ok(ExitCode::SUCCESS)
}
