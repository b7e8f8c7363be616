//! `bench`: the iniesta benchmark suite. `cargo run --release -p bench -- all` builds what it
//! needs (the release host and plugins, the Python venv, the Node modules), runs every
//! scenario several times and prints one table (medians with min and max) with each target
//! of issue 9 marked met or not.
//!
//! ```text
//! bench [all|sqs|latency|peers|redis|local|plugin|reload|startup|serve] [--runs N] [--messages N]
//!       [--latency 20ms±5ms] [--json PATH] [--quick] [--no-build]
//! ```
//!
//! One module per scenario (`scenario/`), one per peer (`peer/`); [`consumer`] runs and
//! measures one consumer against the canned endpoint, [`results`] prints the table and writes
//! the JSON.

mod consumer;
mod peer;
mod prepare;
mod results;
mod scenario;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bench::canned::{Canned, Latency};
use bench::setup;
use clap::{Parser, ValueEnum};

/// The queue every consumer reads.
pub(crate) const QUEUE: &str = "bench-queue";

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    /// Every scenario below.
    All,
    /// The host on the SQS path, endpoint answering at once.
    Sqs,
    /// Sync and async handlers that wait 10 ms, on the SQS path.
    Handlers,
    /// The host and the peers at a real region's latency (`--latency`).
    Latency,
    /// The peers on the endpoint answering at once, with ratios.
    Peers,
    /// Redis locks on 1 and 3 servers.
    Redis,
    /// The local broker end to end.
    Local,
    /// The plugin boundary.
    Plugin,
    /// Hot reload.
    Reload,
    /// Start-up.
    Startup,
    /// Only a canned endpoint, for profiling a consumer by hand (BENCH_WATCH_PID).
    Serve,
}

/// The iniesta benchmark suite.
#[derive(Debug, Clone, Parser)]
#[command(name = "bench")]
pub(crate) struct Options {
    /// The scenario to run.
    #[arg(value_enum, default_value = "all")]
    pub(crate) scenario: Scenario,
    /// Runs per row (medians with min and max).
    #[arg(long, default_value_t = 5)]
    pub(crate) runs: usize,
    /// Messages per consumer run, instead of each scenario's own number.
    #[arg(long)]
    pub(crate) messages: Option<u64>,
    /// Per-request latency of the canned endpoint in the latency scenario: `20ms`, `20ms±5ms`
    /// (without a jitter, a quarter of the mean). Default 20ms±5ms.
    #[arg(long, value_parser = Latency::parse)]
    pub(crate) latency: Option<Latency>,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Two runs and a tenth of the messages (at least 500): a smoke run.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Do not build the host and plugins first.
    #[arg(long)]
    pub(crate) no_build: bool,
}

/// Messages per run for a consumer, unless `--messages` says otherwise.
pub(crate) fn messages(options: &Options, normal: u64) -> u64 {
    match (options.messages, options.quick) {
        (Some(n), _) => n,
        (None, true) => (normal / 10).max(500),
        (None, false) => normal,
    }
}

/// Everything the scenarios share.
pub(crate) struct Ctx {
    /// The command line.
    pub(crate) options: Options,
    /// The release host binary.
    pub(crate) host: PathBuf,
    /// Where runs keep their files.
    pub(crate) scratch: tempfile::TempDir,
    /// A plugins directory with only the echo plugin.
    pub(crate) echo_plugins: PathBuf,
    /// The Python peers' interpreter (empty unless a scenario needs it).
    pub(crate) python: PathBuf,
    /// The Node peer's directory (empty unless a scenario needs it).
    pub(crate) node_dir: PathBuf,
    run: AtomicU64,
}

impl Ctx {
    /// A number for the next run, so message ids never repeat across runs.
    pub(crate) fn next_run(&self) -> u32 {
        u32::try_from(self.run.fetch_add(1, Ordering::SeqCst)).unwrap_or(0)
    }
}

/// `serve`: a standalone canned endpoint (for profiling a consumer by hand).
fn serve(options: &Options) -> anyhow::Result<()> {
    let n = options.messages.unwrap_or(10_000);
    let behaviour = bench::canned::Behaviour {
        latency: options.latency.unwrap_or(Latency::NONE),
        ..Default::default()
    };
    let canned = Canned::start_with(n, 0, behaviour)?;
    println!(
        "canned SQS endpoint {} (queue URL {}), handing out {n} messages, answering after {}",
        canned.url(),
        canned.queue_url(QUEUE),
        behaviour.latency
    );
    if let Ok(pid) = std::env::var("BENCH_WATCH_PID") {
        canned
            .stats
            .watch(pid.parse().context("BENCH_WATCH_PID is a process id")?);
    }
    while !canned.stats.wait_all_deleted(Duration::from_secs(3600)) {}
    let marks = canned.stats.marks();
    if let (Some(t0), Some(t1)) = (marks.first_receive, marks.last_delete) {
        let secs = t1.duration_since(t0).as_secs_f64();
        println!(
            "all {n} deleted in {secs:.3} s: {} msg/s; requests {:?}",
            results::fmt(n as f64 / secs, 0),
            marks.requests_at_last_delete
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    if options.scenario == Scenario::Serve {
        return serve(&options);
    }
    let options = Options {
        runs: if options.quick {
            options.runs.clamp(1, 2)
        } else {
            options.runs.max(1)
        },
        ..options
    };
    prepare::build(&options)?;
    let wants = |s: Scenario| options.scenario == Scenario::All || options.scenario == s;
    let peers = wants(Scenario::Peers) || wants(Scenario::Latency);
    let scratch = tempfile::Builder::new().prefix("iniesta-bench").tempdir()?;
    let echo_plugins = setup::plugin_dir_with(scratch.path(), &["libecho.so"])?;
    let python = if peers {
        peer::python_env()?
    } else {
        PathBuf::new()
    };
    let node_dir = if peers {
        peer::node_env()?
    } else {
        PathBuf::new()
    };
    let ctx = Ctx {
        host: setup::host_binary()?,
        options: options.clone(),
        scratch,
        echo_plugins,
        python,
        node_dir,
        run: AtomicU64::new(1),
    };
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut sqs = None;
    if wants(Scenario::Sqs) {
        sqs = Some(scenario::sqs::run(&ctx, &mut rows)?);
    }
    if wants(Scenario::Handlers) {
        let plugins = setup::plugin_dir_with(
            &ctx.scratch.path().join("shapes"),
            &["libshapes.so", "libpanicky.so"],
        )?;
        scenario::handlers::run(&ctx, &plugins, &mut rows)?;
    }
    if wants(Scenario::Latency) {
        scenario::latency::run(&ctx, &mut rows)?;
    }
    if wants(Scenario::Peers) {
        scenario::peers::run(&ctx, &mut rows, sqs.as_ref().map(|s| s[0].as_slice()))?;
    }
    if wants(Scenario::Redis) {
        scenario::redis::run(&ctx, &mut rows, sqs.as_ref().map(|s| s[1].as_slice()))?;
    }
    if wants(Scenario::Local) {
        scenario::local::run(&ctx, &mut rows)?;
    }
    if wants(Scenario::Plugin) {
        scenario::plugin::run(&ctx, &mut rows)?;
    }
    if wants(Scenario::Reload) {
        scenario::reload::run(&ctx, &mut rows)?;
    }
    if wants(Scenario::Startup) {
        scenario::startup::run(&ctx, &mut rows)?;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = format!("cargo run --release -p bench -- {}", args.join(" "));
    let seconds = started.elapsed().as_secs_f64();
    let machine = prepare::machine();
    println!();
    println!(
        "Command: `{command}`; {} run(s) per row; {seconds:.0} s in all.",
        options.runs
    );
    println!("Machine: {machine}.");
    println!(
        "iniesta on the SQS path: `iniesta run --no-check`, AWS broker (aws-sdk-sqs) at the canned endpoint, max_messages 10, max_in_flight 20 × pollers unless the row says otherwise, a default binding to echo with quiet = true. CPU = utime + stime of the consumer process between the first ReceiveMessage and the N-th delete; AWS requests are counted by the endpoint up to the N-th delete; hand-out to delete is from the ReceiveMessage answer that carried a message to the delete that named it."
    );
    println!();
    results::print_table(&rows);
    if let Some(path) = &options.json {
        results::write_json(path, &results::json(&command, &machine, seconds, &rows))
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("== results written to {}", path.display());
    }
    Ok(())
}
