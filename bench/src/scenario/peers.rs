//! Scenario 2: the peers on the same endpoint, with ratios against the host.

use crate::consumer::{cpus, rates, repeat, Consumer, Measured};
use crate::results::{median, Row};
use crate::{messages, Ctx};

/// Scenario 2: the peers on the same endpoint, with ratios against the host at 1 poller.
pub(crate) fn run(ctx: &Ctx, rows: &mut Vec<Row>, ours: Option<&[Measured]>) -> anyhow::Result<()> {
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
