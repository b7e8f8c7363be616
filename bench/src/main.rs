//! `bench`: the iniesta benchmark suite. `cargo run --release -p bench -- all` builds what it
//! needs (the release host and plugins, the Python venv, the Node modules), runs every
//! scenario several times and prints one table (medians with min and max) with each target
//! of issue 9 marked met or not.
//!
//! ```text
//! bench [all|sqs|peers|redis|local|plugin|reload|startup|serve] [--runs N] [--messages N] [--quick] [--no-build]
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bench::canned::Canned;
use bench::proxy::CountingProxy;
use bench::setup::{self, RedisServer, SqsHost};
use bench::{canned, procfs};

const QUEUE: &str = "bench-queue";

#[derive(Debug, Clone)]
struct Options {
    scenario: String,
    runs: usize,
    messages: Option<u64>,
    quick: bool,
    build: bool,
}

fn parse_args() -> anyhow::Result<Options> {
    let mut options = Options {
        scenario: "all".into(),
        runs: 5,
        messages: None,
        quick: false,
        build: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => options.runs = args.next().context("--runs N")?.parse()?,
            "--messages" => options.messages = Some(args.next().context("--messages N")?.parse()?),
            "--quick" => options.quick = true,
            "--no-build" => options.build = false,
            "-h" | "--help" => {
                println!("bench [all|sqs|peers|redis|local|plugin|reload|startup|serve] [--runs N] [--messages N] [--quick] [--no-build]");
                std::process::exit(0);
            }
            s if !s.starts_with('-') => options.scenario = s.to_string(),
            other => bail!("unknown option {other}"),
        }
    }
    if options.quick {
        options.runs = options.runs.min(2);
    }
    options.runs = options.runs.max(1);
    Ok(options)
}

/// Messages per run for a consumer, unless `--messages` says otherwise.
fn messages(options: &Options, normal: u64) -> u64 {
    match (options.messages, options.quick) {
        (Some(n), _) => n,
        (None, true) => (normal / 10).max(500),
        (None, false) => normal,
    }
}

/// One row of the table.
#[derive(Debug, Clone)]
struct Row {
    scenario: String,
    metric: String,
    samples: Vec<f64>,
    digits: usize,
    target: String,
    met: Option<bool>,
}

impl Row {
    fn new(scenario: &str, metric: &str, samples: Vec<f64>, digits: usize) -> Row {
        Row {
            scenario: scenario.into(),
            metric: metric.into(),
            samples,
            digits,
            target: String::new(),
            met: None,
        }
    }

    fn target(mut self, text: &str, met: impl Fn(f64) -> bool) -> Row {
        self.met = Some(met(self.median()));
        self.target = text.into();
        self
    }

    fn median(&self) -> f64 {
        median(&self.samples)
    }
}

fn median(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn fmt(x: f64, digits: usize) -> String {
    if x.is_nan() {
        return "–".into();
    }
    let text = format!("{x:.digits$}");
    // Thousands separators for the integer part.
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i.to_string(), format!(".{f}")),
        None => (text.clone(), String::new()),
    };
    let (sign, digits_only) = match int.strip_prefix('-') {
        Some(d) => ("-", d.to_string()),
        None => ("", int),
    };
    let mut grouped = String::new();
    for (i, c) in digits_only.chars().enumerate() {
        if i > 0 && (digits_only.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{sign}{grouped}{frac}")
}

fn print_table(rows: &[Row]) {
    println!("| scenario | metric | median | min | max | runs | target | met |");
    println!("|---|---|---:|---:|---:|---:|---|---|");
    for r in rows {
        let min = r.samples.iter().copied().fold(f64::INFINITY, f64::min);
        let max = r.samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let met = match r.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "",
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.metric,
            fmt(r.median(), r.digits),
            fmt(min, r.digits),
            fmt(max, r.digits),
            r.samples.len(),
            r.target,
            met
        );
    }
}

/// Everything the scenarios share.
struct Ctx {
    options: Options,
    host: PathBuf,
    scratch: tempfile::TempDir,
    echo_plugins: PathBuf,
    python: PathBuf,
    node_dir: PathBuf,
    run: AtomicU64,
}

impl Ctx {
    fn next_run(&self) -> u32 {
        u32::try_from(self.run.fetch_add(1, Ordering::SeqCst)).unwrap_or(0)
    }
}

/// A consumer under test.
#[derive(Debug, Clone)]
enum Consumer {
    Host {
        pollers: usize,
        lock_urls: Vec<String>,
        inline: bool,
    },
    Boto3,
    Aiobotocore,
    Node,
}

impl Consumer {
    fn host(pollers: usize) -> Consumer {
        Consumer::Host {
            pollers,
            lock_urls: Vec::new(),
            inline: false,
        }
    }

    /// The host with its echo binding `inline = true`.
    fn inline_host(pollers: usize) -> Consumer {
        Consumer::Host {
            pollers,
            lock_urls: Vec::new(),
            inline: true,
        }
    }
}

/// What one consumer run measured.
#[derive(Debug, Clone)]
struct Measured {
    rate: f64,
    cpu_us_per_message: f64,
    peak_rss: Option<u64>,
    batches: u64,
    bench_cpu_us_per_message: f64,
}

fn host_in_flight(pollers: usize) -> usize {
    20 * pollers
}

/// Run one consumer against a fresh canned endpoint until `n` messages are deleted.
fn run_consumer(ctx: &Ctx, consumer: &Consumer, n: u64) -> anyhow::Result<Measured> {
    let run = ctx.next_run();
    let canned = Canned::start(n, run)?;
    let dir = tempfile::tempdir_in(ctx.scratch.path())?;
    let log = dir.path().join("consumer.log");
    let peers = setup::workspace_root().join("bench/peers");
    let mut child = match consumer {
        Consumer::Host {
            pollers,
            lock_urls,
            inline,
        } => {
            let config = SqsHost {
                endpoint: canned.url(),
                queue: QUEUE.into(),
                pollers: *pollers,
                max_in_flight: host_in_flight(*pollers),
                lock_urls: lock_urls.clone(),
                plugins: ctx.echo_plugins.clone(),
                inline: *inline,
            };
            let path = dir.path().join("iniesta.toml");
            std::fs::write(&path, config.config())?;
            setup::spawn_host(&ctx.host, &path, &log)?
        }
        Consumer::Boto3 | Consumer::Aiobotocore => {
            let script = if matches!(consumer, Consumer::Boto3) {
                "python/boto3_loop.py"
            } else {
                "python/aiobotocore_loop.py"
            };
            let mut cmd = Command::new(&ctx.python);
            cmd.arg(peers.join(script)).arg(canned.url()).arg(QUEUE);
            setup::spawn_logged(&mut cmd, &log)?
        }
        Consumer::Node => {
            let mut cmd = Command::new("node");
            cmd.arg(ctx.node_dir.join("consumer.js"))
                .arg(canned.url())
                .arg(canned.queue_url(QUEUE));
            setup::spawn_logged(&mut cmd, &log)?
        }
    };
    canned.stats.watch(child.id());
    let bench_cpu_before = procfs::own_cpu_time();
    // Generous: a consumer slower than 100 msg/s is broken, not slow.
    let limit = Duration::from_secs(60) + Duration::from_millis(n.saturating_mul(10));
    let started = Instant::now();
    let mut all = false;
    while started.elapsed() < limit {
        if canned.stats.wait_all_deleted(Duration::from_millis(200)) {
            all = true;
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "{consumer:?} exited early ({status}) after {} of {n} deletes:\n{}",
                canned.stats.deleted.load(Ordering::SeqCst),
                setup::tail(&log, 30)
            );
        }
    }
    let bench_cpu = procfs::own_cpu_time().saturating_sub(bench_cpu_before);
    let _ = setup::terminate(&mut child, Duration::from_secs(10))?;
    let stats = &canned.stats;
    if !all {
        bail!(
            "{consumer:?}: only {} of {n} messages deleted in {limit:?} (handed out {}, bad requests {}: {:?}):\n{}",
            stats.deleted.load(Ordering::SeqCst),
            stats.handed_out.load(Ordering::SeqCst),
            stats.bad_requests.load(Ordering::SeqCst),
            stats.last_bad.lock().ok().and_then(|l| l.clone()),
            setup::tail(&log, 30)
        );
    }
    let bad = stats.bad_requests.load(Ordering::SeqCst);
    let dups = stats.duplicate_deletes.load(Ordering::SeqCst);
    if bad > 0 || dups > 0 {
        bail!("{consumer:?}: {bad} bad request(s), {dups} duplicate delete(s)");
    }
    let marks = stats.marks();
    let (Some(t0), Some(t1), Some(c0), Some(c1)) = (
        marks.first_receive,
        marks.last_delete,
        marks.cpu_at_first_receive,
        marks.cpu_at_last_delete,
    ) else {
        bail!("{consumer:?}: incomplete marks {marks:?}");
    };
    let elapsed = t1.duration_since(t0).as_secs_f64();
    Ok(Measured {
        rate: n as f64 / elapsed,
        cpu_us_per_message: c1.saturating_sub(c0).as_secs_f64() * 1e6 / n as f64,
        peak_rss: marks.peak_rss_at_last_delete,
        batches: stats.batches.load(Ordering::SeqCst),
        bench_cpu_us_per_message: bench_cpu.as_secs_f64() * 1e6 / n as f64,
    })
}

fn repeat(ctx: &Ctx, label: &str, consumer: &Consumer, n: u64) -> anyhow::Result<Vec<Measured>> {
    let mut out = Vec::new();
    for i in 0..ctx.options.runs {
        let m =
            run_consumer(ctx, consumer, n).with_context(|| format!("{label}, run {}", i + 1))?;
        eprintln!(
            "  {label} run {}: {} msg/s, {:.1} µs CPU/msg (endpoint {:.1} µs/msg), {} batches",
            i + 1,
            fmt(m.rate, 0),
            m.cpu_us_per_message,
            m.bench_cpu_us_per_message,
            m.batches
        );
        out.push(m);
    }
    Ok(out)
}

fn rates(v: &[Measured]) -> Vec<f64> {
    v.iter().map(|m| m.rate).collect()
}

fn cpus(v: &[Measured]) -> Vec<f64> {
    v.iter().map(|m| m.cpu_us_per_message).collect()
}

/// Scenario 1: the host on the SQS path at 1, 2, 4 pollers.
fn scenario_sqs(ctx: &Ctx, rows: &mut Vec<Row>) -> anyhow::Result<Vec<Vec<Measured>>> {
    let n = messages(&ctx.options, 50_000);
    let mut all = Vec::new();
    // The echo binding called from the blocking pool (the default), then `inline = true`.
    let runs = [1, 2, 4]
        .map(|p| (p, false))
        .into_iter()
        .chain([(1, true), (2, true)]);
    for (pollers, inline) in runs {
        let how = if inline { ", inline binding" } else { "" };
        let label = format!("iniesta, {pollers} poller(s){how}");
        eprintln!("== {label}: {n} messages per run");
        let consumer = if inline {
            Consumer::inline_host(pollers)
        } else {
            Consumer::host(pollers)
        };
        let m = repeat(ctx, &label, &consumer, n)?;
        let scenario =
            format!("SQS path: iniesta, {pollers} poller(s){how}, in-process locks (N={n})");
        let mut rate = Row::new(&scenario, "messages/s", rates(&m), 0);
        if pollers == 2 {
            rate = rate.target("≥ 30,000", |x| x >= 30_000.0);
        }
        rows.push(rate);
        rows.push(
            Row::new(&scenario, "host CPU µs/message", cpus(&m), 1).target("≤ 15", |x| x <= 15.0),
        );
        if pollers == 2 && !inline {
            let rss: Vec<f64> = m
                .iter()
                .filter_map(|x| x.peak_rss)
                .map(|b| b as f64 / 1_048_576.0)
                .collect();
            rows.push(Row::new(&scenario, "loaded RSS (peak VmHWM), MB", rss, 1));
        }
        if !inline {
            all.push(m);
        }
    }
    Ok(all)
}

/// Scenario 2: the peers on the same endpoint, with ratios against the host at 1 poller.
fn scenario_peers(ctx: &Ctx, rows: &mut Vec<Row>, ours: Option<&[Measured]>) -> anyhow::Result<()> {
    let peers: [(&str, Consumer, u64, f64); 3] = [
        ("boto3 loop (Python)", Consumer::Boto3, 10_000, 20.0),
        (
            "aiobotocore asyncio loop (Python)",
            Consumer::Aiobotocore,
            10_000,
            0.0,
        ),
        ("sqs-consumer (Node)", Consumer::Node, 20_000, 10.0),
    ];
    let owned;
    let ours = match ours {
        Some(o) => o,
        None => {
            eprintln!("== iniesta, 1 poller (for the ratios)");
            owned = repeat(
                ctx,
                "iniesta, 1 poller",
                &Consumer::host(1),
                messages(&ctx.options, 50_000),
            )?;
            &owned
        }
    };
    let our_cpu = median(&cpus(ours));
    let our_rate = median(&rates(ours));
    for (label, consumer, normal, want) in peers {
        let n = messages(&ctx.options, normal);
        eprintln!("== {label}: {n} messages per run");
        let m = repeat(ctx, label, &consumer, n)?;
        let scenario = format!("peer: {label} (N={n})");
        rows.push(Row::new(&scenario, "messages/s", rates(&m), 0));
        rows.push(Row::new(&scenario, "CPU µs/message", cpus(&m), 1));
        let ratios: Vec<f64> = cpus(&m).iter().map(|c| c / our_cpu).collect();
        let mut row = Row::new(
            &scenario,
            "its CPU/message ÷ iniesta's (1 poller)",
            ratios,
            1,
        );
        if want > 0.0 {
            row = row.target(&format!("≥ {want}×"), move |x| x >= want);
        }
        rows.push(row);
        let speed: Vec<f64> = rates(&m).iter().map(|r| our_rate / r).collect();
        rows.push(Row::new(
            &scenario,
            "iniesta's messages/s (1 poller) ÷ its",
            speed,
            1,
        ));
    }
    Ok(())
}

/// Scenario 3: Redis locks on 1 and 3 real servers, 2 pollers, against the lock-free rate.
fn scenario_redis(
    ctx: &Ctx,
    rows: &mut Vec<Row>,
    lock_free: Option<&[Measured]>,
) -> anyhow::Result<()> {
    let n = messages(&ctx.options, 30_000);
    let owned;
    let lock_free = match lock_free {
        Some(l) => l,
        None => {
            eprintln!("== iniesta, 2 pollers, in-process locks (baseline)");
            owned = repeat(ctx, "iniesta, 2 pollers", &Consumer::host(2), n)?;
            &owned
        }
    };
    let base = median(&rates(lock_free));
    for nodes in [1usize, 3] {
        let servers: Vec<RedisServer> = (0..nodes)
            .map(|_| RedisServer::start())
            .collect::<anyhow::Result<_>>()?;
        let consumer = Consumer::Host {
            pollers: 2,
            lock_urls: servers.iter().map(RedisServer::url).collect(),
            inline: false,
        };
        let label = if nodes == 1 {
            "Redis lock, 1 server".to_string()
        } else {
            format!("Redlock, {nodes} servers")
        };
        eprintln!("== iniesta, 2 pollers, {label}: {n} messages per run");
        let m = repeat(ctx, &label, &consumer, n)?;
        let scenario = format!("SQS path + {label}, 2 pollers (N={n})");
        rows.push(Row::new(&scenario, "messages/s", rates(&m), 0));
        rows.push(Row::new(&scenario, "host CPU µs/message", cpus(&m), 1));
        let share: Vec<f64> = rates(&m).iter().map(|r| 100.0 * r / base).collect();
        let mut row = Row::new(&scenario, "% of the lock-free rate (2 pollers)", share, 0);
        if nodes == 3 {
            row = row.target("≥ 50 %", |x| x >= 50.0);
        }
        rows.push(row);
        // Round trips: the same workload through counting proxies, at two sizes. The
        // difference between them is what the extra batches cost, so the fixed costs of a run
        // (connection set-up, the final flush of deferred writes) cancel out.
        let mut per_batch = Vec::new();
        let large = messages(&ctx.options, 3_000).min(n);
        let small = (large / 2).max(1);
        for _ in 0..ctx.options.runs.min(3) {
            let mut counted = Vec::new();
            for size in [small, large] {
                let proxies: Vec<CountingProxy> = servers
                    .iter()
                    .map(|s| CountingProxy::start(([127, 0, 0, 1], s.port).into()))
                    .collect::<anyhow::Result<_>>()?;
                let consumer = Consumer::Host {
                    pollers: 2,
                    lock_urls: proxies.iter().map(CountingProxy::redis_url).collect(),
                    inline: false,
                };
                let m = run_consumer(ctx, &consumer, size)?;
                let trips: u64 = proxies
                    .iter()
                    .map(|p| p.round_trips.load(Ordering::SeqCst))
                    .sum();
                counted.push((trips as f64 / nodes as f64, m.batches as f64));
            }
            let ((trips_small, batches_small), (trips_large, batches_large)) =
                (counted[0], counted[1]);
            if batches_large > batches_small {
                per_batch.push((trips_large - trips_small) / (batches_large - batches_small));
            } else {
                per_batch.push(trips_large / batches_large.max(1.0));
            }
        }
        let mut row = Row::new(
            &scenario,
            "Redis round trips per node per extra receive batch (10 msgs)",
            per_batch,
            2,
        );
        if nodes == 3 {
            row = row.target("≤ 1", |x| x <= 1.0);
        }
        rows.push(row);
    }
    Ok(())
}

fn local_config(dir: &Path, plugins: &Path) -> String {
    format!(
        r#"service = "bench"
env = "bench"
initialization = ["EVENT_POLLING", "SNS_PRODUCER"]

[broker]
kind = "local"
path = "{db}"

[sns]
topic_arn = "arn:aws:sns:us-east-1:000000000000:global"

[sqs]
filters = ["Order.*"]
wait_time_seconds = 1
visibility_timeout = 30
pollers = 2
max_in_flight = 40

[plugins]
dirs = ["{plugins}"]
watch = false

[[bindings]]
default = true
plugin = "echo"
config = {{ quiet = true }}
"#,
        db = dir.join("broker.db").display(),
        plugins = plugins.display()
    )
}

fn queue_depth(db: &Path) -> anyhow::Result<u64> {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM messages WHERE queue = 'iniesta-bench-bench'",
        [],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Scenario 4: the local broker: `publish --file` N events, then `run` until the queue is empty.
fn scenario_local(ctx: &Ctx, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let n = messages(&ctx.options, 20_000);
    eprintln!("== local broker: {n} messages per run");
    let body = {
        let mut b = String::from(r#"{"order_id":"ord_1","items":["#);
        for k in 0..12 {
            if k > 0 {
                b.push(',');
            }
            b.push_str(&format!(
                r#"{{"sku":"SKU-{k:05}","name":"Item number {k}","quantity":{},"unit_price":"12.50"}}"#,
                k % 5 + 1
            ));
        }
        b.push_str("]}");
        b
    };
    let (mut published, mut consumed, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..ctx.options.runs {
        let dir = tempfile::tempdir_in(ctx.scratch.path())?;
        let config = dir.path().join("iniesta.toml");
        std::fs::write(&config, local_config(dir.path(), &ctx.echo_plugins))?;
        let status = Command::new(&ctx.host)
            .arg("-c")
            .arg(&config)
            .arg("setup")
            .env("INIESTA_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            bail!("iniesta setup failed for the local broker");
        }
        let events = dir.path().join("events.jsonl");
        let mut text = String::with_capacity(n as usize * (body.len() + 64));
        for seq in 0..n {
            text.push_str(&format!(
                "{{\"event\":\"Order.Created\",\"body\":{},\"attributes\":{{\"seq\":{seq}}}}}\n",
                body
            ));
        }
        std::fs::write(&events, text)?;
        let t = Instant::now();
        let out = Command::new(&ctx.host)
            .arg("-c")
            .arg(&config)
            .arg("publish")
            .arg("--file")
            .arg(&events)
            .env("INIESTA_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .output()?;
        let publish_time = t.elapsed();
        if !out.status.success() {
            bail!(
                "iniesta publish --file failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let db = dir.path().join("broker.db");
        let depth = queue_depth(&db)?;
        if depth != n {
            bail!("published {n} but the queue holds {depth}");
        }
        let log = dir.path().join("host.log");
        let mut child = setup::spawn_host(&ctx.host, &config, &log)?;
        let pid = child.id();
        let limit = Duration::from_secs(120) + Duration::from_millis(n * 5);
        let started = Instant::now();
        let mut first: Option<(Instant, u64, Duration)> = None;
        let mut end = None;
        while started.elapsed() < limit {
            let d = queue_depth(&db)?;
            if first.is_none() && d < n {
                first = Some((Instant::now(), d, procfs::cpu_time(pid)?));
            }
            if d == 0 {
                end = Some((Instant::now(), procfs::cpu_time(pid)?));
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("local host exited ({status}):\n{}", setup::tail(&log, 30));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = setup::terminate(&mut child, Duration::from_secs(10))?;
        let (Some((t0, d0, c0)), Some((t1, c1))) = (first, end) else {
            bail!(
                "local broker: the queue did not drain in {limit:?}:\n{}",
                setup::tail(&log, 30)
            );
        };
        let secs = t1.duration_since(t0).as_secs_f64();
        let p = n as f64 / publish_time.as_secs_f64();
        let c = d0 as f64 / secs;
        let u = c1.saturating_sub(c0).as_secs_f64() * 1e6 / d0.max(1) as f64;
        eprintln!(
            "  local run {}: published {} msg/s, consumed {} msg/s, {u:.1} µs CPU/msg",
            i + 1,
            fmt(p, 0),
            fmt(c, 0)
        );
        published.push(p);
        consumed.push(c);
        cpu.push(u);
    }
    let scenario = format!("local broker end to end (N={n})");
    rows.push(
        Row::new(
            &scenario,
            "published messages/s (`iniesta publish --file`, whole command)",
            published,
            0,
        )
        .target("≥ 10,000", |x| x >= 10_000.0),
    );
    rows.push(
        Row::new(
            &scenario,
            "consumed messages/s (`iniesta run`, 2 pollers)",
            consumed,
            0,
        )
        .target("≥ 10,000", |x| x >= 10_000.0),
    );
    rows.push(Row::new(&scenario, "host CPU µs/message consumed", cpu, 1));
    Ok(())
}

fn ffi_message(body: &[u8], attributes: bool) -> iniesta_plugin_api::ffi::MessageFfi {
    use abi_stable::std_types::{RString, RVec};
    use iniesta_plugin_api::ffi::{AttributeFfi, MessageFfi};
    let attrs: RVec<AttributeFfi> = if attributes {
        vec![
            AttributeFfi {
                name: "iniesta_pass".into(),
                data_type: "String".into(),
                value: canned::EVENT.into(),
            },
            AttributeFfi {
                name: "version".into(),
                data_type: "Number".into(),
                value: "1".into(),
            },
        ]
        .into()
    } else {
        RVec::new()
    };
    MessageFfi {
        id: RString::from("00000001-0000-4000-8000-000000000001"),
        event: RString::from(canned::EVENT),
        body: RVec::from(body.to_vec()),
        attributes: attrs,
        receive_count: 1,
        sent_timestamp_ms: 1_700_000_000_000,
    }
}

/// Scenario 5a: the plugin boundary, through the host's own loader.
fn scenario_plugin(ctx: &Ctx, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    use iniesta::plugins::context::HostContext;
    use iniesta::plugins::load::load_file;
    eprintln!("== plugin boundary");
    let file = ctx.echo_plugins.join("libecho.so");
    let plugin = load_file(&file, &ctx.echo_plugins).map_err(|e| anyhow::anyhow!("{e}"))?;
    let handler = plugin
        .new_handler("echo", r#"{"quiet":true}"#)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let context = HostContext::boxed(None, None, "echo", "bench", None);
    let calls: u64 = if ctx.options.quick {
        1_000_000
    } else {
        10_000_000
    };
    let body = vec![b'x'; 1024];
    let mut rows_out = Vec::new();
    for (label, message) in [
        ("empty message", ffi_message(b"", false)),
        ("1 KiB body, 2 attributes", ffi_message(&body, true)),
    ] {
        let mut samples = Vec::new();
        for _ in 0..ctx.options.runs {
            // Warm up, then time.
            for _ in 0..10_000 {
                std::hint::black_box(handler.handle(std::hint::black_box(&message), &context));
            }
            let t = Instant::now();
            for _ in 0..calls {
                let outcome = handler.handle(std::hint::black_box(&message), &context);
                std::hint::black_box(outcome);
            }
            samples.push(t.elapsed().as_nanos() as f64 / calls as f64);
        }
        rows_out.push((label, samples));
    }
    // Baseline: a virtual call to an in-process handler doing the same (nothing).
    trait Noop {
        fn handle(&self, m: &iniesta_plugin_api::ffi::MessageFfi) -> u8;
    }
    struct N;
    impl Noop for N {
        fn handle(&self, m: &iniesta_plugin_api::ffi::MessageFfi) -> u8 {
            m.receive_count as u8
        }
    }
    let boxed: Box<dyn Noop> = Box::new(N);
    let boxed = std::hint::black_box(boxed);
    let message = ffi_message(b"", false);
    let mut baseline = Vec::new();
    for _ in 0..ctx.options.runs {
        let t = Instant::now();
        for _ in 0..calls {
            std::hint::black_box(boxed.handle(std::hint::black_box(&message)));
        }
        baseline.push(t.elapsed().as_nanos() as f64 / calls as f64);
    }
    let scenario = format!("plugin boundary ({calls} calls/run, quiet echo via the host's loader)");
    for (label, samples) in rows_out {
        let mut row = Row::new(&scenario, &format!("ns/call, {label}"), samples, 1);
        if label == "empty message" {
            row = row.target("≤ 25", |x| x <= 25.0);
        }
        rows.push(row);
    }
    rows.push(Row::new(
        &scenario,
        "ns/call, in-process virtual call (baseline)",
        baseline,
        1,
    ));
    Ok(())
}

/// The ledger plugin with its build mark set to `mark` (see plugins/ledger).
fn ledger_with_mark(mark: u32) -> anyhow::Result<Vec<u8>> {
    const MARK: &[u8] = b"iniesta-ledger-mark:";
    let mut bytes = std::fs::read(setup::plugin_file("libledger.so")?)?;
    let at = bytes
        .windows(MARK.len())
        .position(|w| w == MARK)
        .context("the ledger plugin has no build mark")?;
    let digits = format!("{mark:08}");
    bytes[at + MARK.len()..at + MARK.len() + 8].copy_from_slice(digits.as_bytes());
    Ok(bytes)
}

fn deploy(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

/// Scenario 5b: hot-reload latency: rename of a new ledger build → first message handled by
/// the new generation, on the local broker with a message published every 5 ms.
fn scenario_reload(ctx: &Ctx, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    eprintln!("== hot reload");
    let dir = tempfile::tempdir_in(ctx.scratch.path())?;
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins)?;
    deploy(&plugins, "libledger.so", &ledger_with_mark(0)?)?;
    let ledger = dir.path().join("ledger.jsonl");
    let config_path = dir.path().join("iniesta.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"service = "bench"
env = "bench"
initialization = ["EVENT_POLLING", "SNS_PRODUCER"]
[broker]
path = "{db}"
[sns]
topic_arn = "arn:aws:sns:us-east-1:000000000000:global"
[sqs]
filters = ["Order.*"]
wait_time_seconds = 1
[plugins]
dirs = ["{plugins}"]
watch = true
[[bindings]]
events = ["Order.*"]
plugin = "ledger"
config = {{ path = "{ledger}" }}
"#,
            db = dir.path().join("broker.db").display(),
            plugins = plugins.display(),
            ledger = ledger.display()
        ),
    )?;
    let log = dir.path().join("host.log");
    let mut child = setup::spawn_host(&ctx.host, &config_path, &log)?;
    let started = Instant::now();
    while !setup::tail(&log, 50).contains("consuming") {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("reload host did not start:\n{}", setup::tail(&log, 30));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Publisher thread: one message every 5 ms through the local broker.
    let stop = Arc::new(AtomicBool::new(false));
    let config = iniesta::config::Config::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let stop2 = stop.clone();
    let publisher = std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            use iniesta::broker::Broker as _;
            let broker = iniesta::broker::local::LocalBroker::open(&config)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut seq = 0u64;
            while !stop2.load(Ordering::SeqCst) {
                let message = iniesta::wire::encode(
                    "Order.Load",
                    "bench",
                    "iniesta_pass",
                    format!("{{\"seq\":{seq}}}").into_bytes(),
                    Default::default(),
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?;
                broker
                    .publish(&message)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                seq += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(())
        })
    });
    let reloads = if ctx.options.quick { 3 } else { 10 };
    let mut latencies = Vec::new();
    let mut failure = None;
    for generation in 1..=reloads {
        let bytes = ledger_with_mark(generation)?;
        let want = format!("\"mark\":\"{generation:08}\"");
        let deployed = Instant::now();
        deploy(&plugins, "libledger.so", &bytes)?;
        loop {
            let text = std::fs::read_to_string(&ledger).unwrap_or_default();
            if text.contains(&want) {
                latencies.push(deployed.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if deployed.elapsed() > Duration::from_secs(30) {
                failure = Some(format!("generation {generation} never served"));
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if failure.is_some() {
            break;
        }
        eprintln!(
            "  reload {generation}: {:.0} ms",
            latencies.last().copied().unwrap_or(f64::NAN)
        );
        // Let the generation settle before the next deploy.
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::SeqCst);
    let published = publisher.join();
    let _ = setup::terminate(&mut child, Duration::from_secs(10))?;
    if let Some(f) = failure {
        bail!("{f}:\n{}", setup::tail(&log, 30));
    }
    match published {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.context("reload publisher")),
        Err(_) => bail!("reload publisher panicked"),
    }
    rows.push(
        Row::new(
            "hot reload (rename of a new ledger build → first message on it; 300 ms debounce; one message per 5 ms)",
            "ms",
            latencies,
            0,
        )
        .target("≤ 500", |x| x <= 500.0),
    );
    Ok(())
}

/// Scenario 5c: start-up time to the first ReceiveMessage, and idle RSS.
fn scenario_startup(ctx: &Ctx, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    eprintln!("== start-up and idle RSS");
    let (mut first_poll, mut idle) = (Vec::new(), Vec::new());
    for i in 0..ctx.options.runs {
        let canned = Canned::start(0, ctx.next_run())?;
        let dir = tempfile::tempdir_in(ctx.scratch.path())?;
        let config = SqsHost {
            endpoint: canned.url(),
            queue: QUEUE.into(),
            pollers: 1,
            max_in_flight: 16,
            lock_urls: Vec::new(),
            plugins: ctx.echo_plugins.clone(),
            inline: false,
        };
        let path = dir.path().join("iniesta.toml");
        std::fs::write(&path, config.config())?;
        let log = dir.path().join("host.log");
        let spawned = Instant::now();
        let mut child = setup::spawn_host(&ctx.host, &path, &log)?;
        let first = canned.stats.wait_first_receive(Duration::from_secs(30));
        let Some(first) = first else {
            let _ = setup::terminate(&mut child, Duration::from_secs(5));
            bail!("the host never polled:\n{}", setup::tail(&log, 30));
        };
        let ms = first.duration_since(spawned).as_secs_f64() * 1000.0;
        std::thread::sleep(Duration::from_secs(2));
        let rss = procfs::rss(child.id())? as f64 / 1_048_576.0;
        let _ = setup::terminate(&mut child, Duration::from_secs(10))?;
        eprintln!(
            "  run {}: first poll after {ms:.1} ms, idle RSS {rss:.1} MB",
            i + 1
        );
        first_poll.push(ms);
        idle.push(rss);
    }
    let scenario = "start-up (`iniesta run --no-check`, AWS broker, 1 plugin)";
    rows.push(
        Row::new(
            scenario,
            "ms from spawn to the first ReceiveMessage",
            first_poll,
            1,
        )
        .target("≤ 100", |x| x <= 100.0),
    );
    rows.push(
        Row::new(
            scenario,
            "idle RSS (VmRSS, 2 s after the first poll), MB",
            idle,
            1,
        )
        .target("≤ 25", |x| x <= 25.0),
    );
    Ok(())
}

/// `serve`: a standalone canned endpoint (for profiling a consumer by hand).
fn serve(options: &Options) -> anyhow::Result<()> {
    let n = options.messages.unwrap_or(10_000);
    let canned = Canned::start(n, 0)?;
    println!(
        "canned SQS endpoint {} (queue URL {}), handing out {n} messages",
        canned.url(),
        canned.queue_url(QUEUE)
    );
    if let Ok(pid) = std::env::var("BENCH_WATCH_PID") {
        canned.stats.watch(pid.parse()?);
    }
    while !canned.stats.wait_all_deleted(Duration::from_secs(3600)) {}
    let marks = canned.stats.marks();
    if let (Some(t0), Some(t1)) = (marks.first_receive, marks.last_delete) {
        let secs = t1.duration_since(t0).as_secs_f64();
        println!(
            "all {n} deleted in {secs:.3} s: {} msg/s",
            fmt(n as f64 / secs, 0)
        );
    }
    Ok(())
}

fn run_quiet(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
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
fn build(options: &Options) -> anyhow::Result<()> {
    if !options.build {
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

/// The Python venv with the pinned peers (target/bench-venv), created or refreshed when
/// requirements.txt changed.
fn python_env() -> anyhow::Result<PathBuf> {
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

/// bench/peers/node/node_modules from package-lock.json (`npm ci`), refreshed when the lock
/// file changed.
fn node_env() -> anyhow::Result<PathBuf> {
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

fn machine() -> String {
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

fn main() -> anyhow::Result<()> {
    let options = parse_args()?;
    if options.scenario == "serve" {
        return serve(&options);
    }
    let known = [
        "all", "sqs", "peers", "redis", "local", "plugin", "reload", "startup",
    ];
    if !known.contains(&options.scenario.as_str()) {
        bail!(
            "unknown scenario {} (one of {known:?} or serve)",
            options.scenario
        );
    }
    build(&options)?;
    let wants = |s: &str| options.scenario == "all" || options.scenario == s;
    let scratch = tempfile::Builder::new().prefix("iniesta-bench").tempdir()?;
    let echo_plugins = setup::plugin_dir_with(scratch.path(), &["libecho.so"])?;
    let python = if wants("peers") {
        python_env()?
    } else {
        PathBuf::new()
    };
    let node_dir = if wants("peers") {
        node_env()?
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
    if wants("sqs") {
        sqs = Some(scenario_sqs(&ctx, &mut rows)?);
    }
    if wants("peers") {
        scenario_peers(&ctx, &mut rows, sqs.as_ref().map(|s| s[0].as_slice()))?;
    }
    if wants("redis") {
        scenario_redis(&ctx, &mut rows, sqs.as_ref().map(|s| s[1].as_slice()))?;
    }
    if wants("local") {
        scenario_local(&ctx, &mut rows)?;
    }
    if wants("plugin") {
        scenario_plugin(&ctx, &mut rows)?;
    }
    if wants("reload") {
        scenario_reload(&ctx, &mut rows)?;
    }
    if wants("startup") {
        scenario_startup(&ctx, &mut rows)?;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!();
    println!(
        "Command: `cargo run --release -p bench -- {}`; {} run(s) per row; {:.0} s in all.",
        args.join(" "),
        options.runs,
        started.elapsed().as_secs_f64()
    );
    println!("Machine: {}.", machine());
    println!(
        "iniesta on the SQS path: `iniesta run --no-check`, AWS broker (aws-sdk-sqs) at the canned endpoint, max_messages 10, max_in_flight 20 × pollers, a default binding to echo with quiet = true. CPU = utime + stime of the consumer process between the first ReceiveMessage and the N-th delete."
    );
    println!();
    print_table(&rows);
    Ok(())
}
