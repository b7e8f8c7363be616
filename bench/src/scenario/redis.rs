//! Scenario 3: Redis locks on 1 and 3 real servers.

use std::sync::atomic::Ordering;

use bench::canned::Behaviour;
use bench::proxy::CountingProxy;
use bench::setup::RedisServer;

use crate::consumer::{cpus, rates, repeat, run_consumer, Consumer, Measured};
use crate::results::{median, Row};
use crate::{messages, Ctx};

/// Scenario 3: Redis locks on 1 and 3 real servers, 2 pollers, against the lock-free rate.
pub(crate) fn run(
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
        let consumer = Consumer::host(2).with_locks(servers.iter().map(RedisServer::url).collect());
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
                let consumer = Consumer::host(2)
                    .with_locks(proxies.iter().map(CountingProxy::redis_url).collect());
                let m = run_consumer(ctx, &consumer, size, Behaviour::default())?;
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
