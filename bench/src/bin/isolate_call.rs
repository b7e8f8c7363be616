//! Cost of one handler call in the host (in-process cdylib) against the same call in an
//! isolated worker process (`[plugins.isolate]`): median, min and max of the mean per call
//! over several runs, for a small and a 64 KiB body, and the throughput of several calls at
//! once against a pool of worker processes.
//!
//! Build everything in release first, then run it from the target directory it was built in
//! (it finds `iniesta` and `libpanicky.so` beside itself):
//!
//! ```text
//! cargo build --release -p iniesta -p iniesta-plugin-panicky
//! cargo build --release -p bench --bin isolate_call
//! target/release/isolate_call [--calls N] [--runs R]
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use iniesta::isolate::{IsolateConfig, Settings};
use iniesta::plugins::context::HostContext;
use iniesta_plugin_api::ffi::{AttributeFfi, HandlerBox, HostContextBox, MessageFfi, OutcomeFfi};

fn message(body_len: usize) -> MessageFfi {
    MessageFfi {
        id: "5d3b7c5e-0000-4000-8000-000000000000".into(),
        event: "Order.Created.shop".into(),
        body: vec![b'x'; body_len].into(),
        attributes: vec![
            AttributeFfi {
                name: "iniesta_pass".into(),
                data_type: "String".into(),
                value: "Order.Created.shop".into(),
            },
            AttributeFfi {
                name: "version".into(),
                data_type: "Number".into(),
                value: "1".into(),
            },
        ]
        .into(),
        receive_count: 1,
        sent_timestamp_ms: 1_700_000_000_000,
    }
}

/// Mean time per call (ns) over `calls` sequential calls.
fn run(
    handler: &HandlerBox,
    ctx: &HostContextBox,
    msg: &MessageFfi,
    calls: u64,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    for _ in 0..calls {
        let outcome = handler.handle(msg, ctx);
        if outcome != OutcomeFfi::Ack {
            bail!("the handler did not ack: {outcome:?}");
        }
    }
    Ok(started.elapsed().as_nanos() as f64 / calls as f64)
}

struct Row {
    what: String,
    per_call_ns: Vec<f64>,
}

fn measure(
    what: &str,
    handler: &HandlerBox,
    ctx: &HostContextBox,
    msg: &MessageFfi,
    calls: u64,
    runs: usize,
) -> anyhow::Result<Row> {
    run(handler, ctx, msg, calls / 10 + 1)?; // warm up
    let mut per_call_ns = Vec::new();
    for _ in 0..runs {
        per_call_ns.push(run(handler, ctx, msg, calls)?);
    }
    per_call_ns.sort_by(|a, b| a.total_cmp(b));
    Ok(Row {
        what: what.to_string(),
        per_call_ns,
    })
}

fn fmt_ns(ns: f64) -> String {
    if ns < 1000.0 {
        format!("{ns:.1} ns")
    } else {
        format!("{:.1} µs", ns / 1000.0)
    }
}

fn main() -> anyhow::Result<()> {
    let mut calls: u64 = 20_000;
    let mut runs: usize = 5;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--calls" => calls = args.next().context("--calls N")?.parse()?,
            "--runs" => runs = args.next().context("--runs R")?.parse()?,
            other => bail!("unknown argument {other} (use --calls N, --runs R)"),
        }
    }
    let dir: PathBuf = std::env::current_exe()?
        .parent()
        .context("the binary has a directory")?
        .to_path_buf();
    let binary = dir.join("iniesta");
    let plugin_file = dir.join("libpanicky.so");
    for file in [&binary, &plugin_file] {
        if !file.exists() {
            bail!(
                "{} is missing: cargo build --release -p iniesta -p iniesta-plugin-panicky (then run this from target/release)",
                file.display()
            );
        }
    }
    let plugin = iniesta::plugins::load::load_file(&plugin_file, &dir)?;
    let ctx = HostContext::boxed(None, None, "panicky", "bench", "bench", None);
    let in_process = plugin
        .new_handler("panicky", "{}")
        .map_err(anyhow::Error::msg)?;
    let settings = Arc::new(Settings::new(&IsolateConfig::default(), binary, None));
    let isolated = iniesta::isolate::isolated_handler(
        &plugin,
        &settings,
        "panicky",
        "{}",
        Duration::from_secs(30),
    )
    .map_err(anyhow::Error::msg)?;

    let small = message(100);
    let large = message(64 * 1024);
    let mut rows = vec![
        measure(
            "in-process, 100 B body",
            &in_process,
            &ctx,
            &small,
            calls * 100,
            runs,
        )?,
        measure(
            "in-process, 64 KiB body",
            &in_process,
            &ctx,
            &large,
            calls * 100,
            runs,
        )?,
        measure("isolated, 100 B body", &isolated, &ctx, &small, calls, runs)?,
        measure(
            "isolated, 64 KiB body",
            &isolated,
            &ctx,
            &large,
            calls / 4,
            runs,
        )?,
    ];

    // Several calls at once (as the pipeline makes them) against the pool of workers.
    let threads = IsolateConfig::default().workers;
    let isolated = Arc::new(isolated);
    let ctx = Arc::new(ctx);
    let mut concurrent = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let per_thread = calls / threads as u64;
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (h, c, m) = (isolated.clone(), ctx.clone(), small.clone());
                std::thread::spawn(move || run(&h, &c, &m, per_thread))
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a bench thread panicked"))??;
        }
        // Wall time per call, all threads together.
        concurrent.push(started.elapsed().as_nanos() as f64 / (per_thread * threads as u64) as f64);
    }
    concurrent.sort_by(|a, b| a.total_cmp(b));
    rows.push(Row {
        what: format!("isolated, 100 B, {threads} threads ({threads} workers), wall per call"),
        per_call_ns: concurrent,
    });

    println!(
        "handler call cost: {runs} runs; in-process {} calls/run, isolated {} calls/run ({} cores)",
        calls * 100,
        calls,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!("{:<62} {:>10} {:>10} {:>10}", "", "median", "min", "max");
    for row in &rows {
        let n = row.per_call_ns.len();
        println!(
            "{:<62} {:>10} {:>10} {:>10}",
            row.what,
            fmt_ns(row.per_call_ns[n / 2]),
            fmt_ns(row.per_call_ns[0]),
            fmt_ns(row.per_call_ns[n - 1])
        );
    }
    Ok(())
}
