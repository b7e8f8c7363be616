//! Scenario 4: the local broker end to end.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use bench::procfs;
use bench::setup::{self};

use crate::results::{fmt, Row};
use crate::{messages, Ctx};

pub(crate) fn local_config(dir: &Path, plugins: &Path) -> String {
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
pub(crate) fn queue_depth(db: &Path) -> anyhow::Result<u64> {
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
pub(crate) fn run(ctx: &Ctx, rows: &mut Vec<Row>) -> anyhow::Result<()> {
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
