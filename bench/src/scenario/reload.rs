//! Scenario 5b: hot reload.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bench::setup::{self};

use crate::results::Row;
use crate::Ctx;

/// The ledger plugin with its build mark set to `mark` (see plugins/ledger).
pub(crate) fn ledger_with_mark(mark: u32) -> anyhow::Result<Vec<u8>> {
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
pub(crate) fn deploy(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}
/// Scenario 5b: hot-reload latency: rename of a new ledger build → first message handled by
/// the new generation, on the local broker with a message published every 5 ms.
pub(crate) fn run(ctx: &Ctx, rows: &mut Vec<Row>) -> anyhow::Result<()> {
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
                    &iniesta::wire::SizeLimit::sns(),
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
