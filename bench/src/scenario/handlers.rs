//! Scenario: handler shapes on the SQS path. A handler that waits 10 ms per message (its
//! downstream's latency), written blocking (`panicky/sleepy`: `std::thread::sleep`, a thread of
//! the host's blocking pool per call) and async (`shapes/waiter`: a tokio timer, no thread
//! while it waits), at 200 messages in flight: messages/s, CPU per message and the host's
//! threads once the last message is deleted.

use std::path::Path;

use crate::consumer::{cpus, rates, repeat, Consumer};
use crate::results::Row;
use crate::{messages, Ctx};

/// Messages in flight: the concurrency the handler's 10 ms allow to use.
const IN_FLIGHT: usize = 200;

pub(crate) fn run(ctx: &Ctx, plugins: &Path, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let n = messages(&ctx.options, 20_000);
    let shapes = [
        (
            "sync handler (thread::sleep 10 ms)",
            "[[bindings]]\ndefault = true\nplugin = \"panicky\"\nhandler = \"sleepy\"\nconfig = { sleep_ms = 10 }",
        ),
        (
            "async handler (tokio sleep 10 ms)",
            "[[bindings]]\ndefault = true\nplugin = \"shapes\"\nhandler = \"waiter\"\nconfig = { sleep_ms = 10 }",
        ),
    ];
    for (what, binding) in shapes {
        let label = format!("iniesta, {what}");
        eprintln!("== {label}: {n} messages per run");
        let mut consumer = Consumer::host_with_slots(IN_FLIGHT).bound(plugins, binding);
        if let Consumer::Host { pollers, .. } = &mut consumer {
            *pollers = 2;
        }
        let m = repeat(ctx, &label, &consumer, n)?;
        let scenario =
            format!("SQS path: iniesta, {what}, 2 pollers, max_in_flight {IN_FLIGHT} (N={n})");
        rows.push(Row::new(&scenario, "messages/s", rates(&m), 0));
        rows.push(Row::new(&scenario, "host CPU µs/message", cpus(&m), 1));
        let threads: Vec<f64> = m
            .iter()
            .filter_map(|x| x.threads)
            .map(|t| t as f64)
            .collect();
        rows.push(Row::new(
            &scenario,
            "host threads after the run",
            threads,
            0,
        ));
    }
    Ok(())
}
