//! Scenario 1: the host on the SQS path at 1, 2, 4 pollers, on an endpoint that answers at once;
//! then inline bindings, 2 pollers with tracing on (the cost of a span per message), and 2
//! pollers receiving and deleting through the AWS SDK instead of the lean client.

use crate::consumer::{cpus, rates, repeat, Consumer, Measured};
use crate::results::Row;
use crate::{messages, Ctx};

/// Scenario 1: the host on the SQS path at 1, 2, 4 pollers.
pub(crate) fn run(ctx: &Ctx, rows: &mut Vec<Row>) -> anyhow::Result<Vec<Vec<Measured>>> {
    let n = messages(&ctx.options, 50_000);
    let mut all = Vec::new();
    // The echo binding called from the blocking pool (the default), then `inline = true`,
    // then the default with tracing on, then the default through the SDK.
    #[derive(Clone, Copy, PartialEq)]
    enum Variant {
        Default,
        Inline,
        Traced,
        Sdk,
    }
    let runs = [1, 2, 4].map(|p| (p, Variant::Default)).into_iter().chain([
        (1, Variant::Inline),
        (2, Variant::Inline),
        (2, Variant::Traced),
        (2, Variant::Sdk),
    ]);
    for (pollers, variant) in runs {
        let how = match variant {
            Variant::Default => "",
            Variant::Inline => ", inline binding",
            Variant::Traced => ", tracing on (OTLP)",
            Variant::Sdk => ", AWS SDK client",
        };
        let label = format!("iniesta, {pollers} poller(s){how}");
        eprintln!("== {label}: {n} messages per run");
        let consumer = match variant {
            Variant::Default => Consumer::host(pollers),
            Variant::Inline => Consumer::inline_host(pollers),
            Variant::Traced => Consumer::host(pollers).traced(),
            Variant::Sdk => Consumer::host(pollers).through_the_sdk(),
        };
        let m = repeat(ctx, &label, &consumer, n)?;
        let scenario =
            format!("SQS path: iniesta, {pollers} poller(s){how}, in-process locks (N={n})");
        let mut rate = Row::new(&scenario, "messages/s", rates(&m), 0);
        if pollers == 2 && matches!(variant, Variant::Default | Variant::Inline) {
            rate = rate.target("≥ 30,000", |x| x >= 30_000.0);
        }
        rows.push(rate);
        rows.push(
            Row::new(&scenario, "host CPU µs/message", cpus(&m), 1).target("≤ 15", |x| x <= 15.0),
        );
        if pollers == 2 && matches!(variant, Variant::Default | Variant::Sdk) {
            let rss: Vec<f64> = m
                .iter()
                .filter_map(|x| x.peak_rss)
                .map(|b| b as f64 / 1_048_576.0)
                .collect();
            rows.push(Row::new(&scenario, "loaded RSS (peak VmHWM), MB", rss, 1));
        }
        if variant == Variant::Default {
            all.push(m);
        }
    }
    Ok(all)
}
