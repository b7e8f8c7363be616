//! Scenario 1: the host on the SQS path at 1, 2, 4 pollers, on an endpoint that answers at once;
//! then inline bindings, and 2 pollers with tracing on (the cost of a span per message).

use crate::consumer::{cpus, rates, repeat, Consumer, Measured};
use crate::results::Row;
use crate::{messages, Ctx};

/// Scenario 1: the host on the SQS path at 1, 2, 4 pollers.
pub(crate) fn run(ctx: &Ctx, rows: &mut Vec<Row>) -> anyhow::Result<Vec<Vec<Measured>>> {
    let n = messages(&ctx.options, 50_000);
    let mut all = Vec::new();
    // The echo binding called from the blocking pool (the default), then `inline = true`,
    // then the default with tracing on.
    let runs = [1, 2, 4].map(|p| (p, false, false)).into_iter().chain([
        (1, true, false),
        (2, true, false),
        (2, false, true),
    ]);
    for (pollers, inline, traced) in runs {
        let how = match (inline, traced) {
            (true, _) => ", inline binding",
            (_, true) => ", tracing on (OTLP)",
            _ => "",
        };
        let label = format!("iniesta, {pollers} poller(s){how}");
        eprintln!("== {label}: {n} messages per run");
        let consumer = if inline {
            Consumer::inline_host(pollers)
        } else if traced {
            Consumer::host(pollers).traced()
        } else {
            Consumer::host(pollers)
        };
        let m = repeat(ctx, &label, &consumer, n)?;
        let scenario =
            format!("SQS path: iniesta, {pollers} poller(s){how}, in-process locks (N={n})");
        let mut rate = Row::new(&scenario, "messages/s", rates(&m), 0);
        if pollers == 2 && !traced {
            rate = rate.target("≥ 30,000", |x| x >= 30_000.0);
        }
        rows.push(rate);
        rows.push(
            Row::new(&scenario, "host CPU µs/message", cpus(&m), 1).target("≤ 15", |x| x <= 15.0),
        );
        if pollers == 2 && !inline && !traced {
            let rss: Vec<f64> = m
                .iter()
                .filter_map(|x| x.peak_rss)
                .map(|b| b as f64 / 1_048_576.0)
                .collect();
            rows.push(Row::new(&scenario, "loaded RSS (peak VmHWM), MB", rss, 1));
        }
        if !inline && !traced {
            all.push(m);
        }
    }
    Ok(all)
}
