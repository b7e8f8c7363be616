//! Scenario 6: start-up.

use std::time::{Duration, Instant};

use anyhow::bail;
use bench::canned::Canned;
use bench::procfs;
use bench::setup::{self, SqsHost};

use crate::results::Row;
use crate::{Ctx, QUEUE};

/// Scenario 5c: start-up time to the first ReceiveMessage, and idle RSS.
pub(crate) fn run(ctx: &Ctx, rows: &mut Vec<Row>) -> anyhow::Result<()> {
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
            publish: None,
            otlp_endpoint: None,
            binding: None,
            sqs_client: "lean",
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
