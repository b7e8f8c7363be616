//! Scenario: consuming at a real region's latency. Every request to the canned endpoint is
//! answered after `--latency` (20 ± 5 ms by default, as a real region answers), and the host —
//! at its default config and with `max_in_flight` sized for the rate — and each peer consume
//! from it in the same run. For each: messages/s, CPU µs per message, AWS requests per message
//! (all, and by action) and how long a message stays with the consumer (hand-out to delete,
//! median and 99th percentile); then the host's rate over each peer's.

use std::time::Duration;

use bench::canned::{Behaviour, Latency};

use crate::consumer::{rates, repeat_with, Consumer, Measured};
use crate::results::{median, Row};
use crate::{messages, Ctx};

/// The latency when `--latency` does not say: a real region's 20 ± 5 ms.
pub(crate) fn default_latency() -> Latency {
    Latency::new(Duration::from_millis(20), Duration::from_millis(5))
}

/// `max_in_flight` for the sized host: about 10,000 messages/s at 20 ms a round trip.
const SIZED_SLOTS: usize = 256;

pub(crate) fn run(ctx: &Ctx, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let latency = ctx.options.latency.unwrap_or_else(default_latency);
    let behaviour = Behaviour {
        latency,
        ..Behaviour::default()
    };
    let hosts = [
        (
            "iniesta, default config (pollers 1, max_in_flight 16)".to_string(),
            Consumer::host_with_slots(16),
            5_000,
        ),
        (
            format!("iniesta, max_in_flight {SIZED_SLOTS} (pollers 1, adaptive)"),
            Consumer::host_with_slots(SIZED_SLOTS),
            50_000,
        ),
    ];
    let peers = [
        ("boto3 loop (Python)", Consumer::Boto3, 2_000),
        (
            "aiobotocore asyncio loop (Python)",
            Consumer::Aiobotocore,
            2_000,
        ),
        ("sqs-consumer (Node)", Consumer::Node, 2_000),
    ];
    let mut sized: Vec<Measured> = Vec::new();
    for (i, (label, consumer, normal)) in hosts.into_iter().enumerate() {
        let n = messages(&ctx.options, normal);
        eprintln!("== at {latency}: {label}: {n} messages per run");
        let m = repeat_with(ctx, &label, &consumer, n, behaviour)?;
        let scenario = format!("at {latency} a request: {label} (N={n})");
        let mut rate = Row::new(&scenario, "messages/s", rates(&m), 0);
        if i == 1 {
            rate = rate.target("≥ 10,000", |x| x >= 10_000.0);
        }
        rows.push(rate);
        push_common(rows, &scenario, &m, true);
        if i == 1 {
            sized = m;
        }
    }
    // Consume and publish one event per message (the binding publishes to the topic).
    let label = format!("iniesta, max_in_flight {SIZED_SLOTS}, publishing one event per message");
    let n = messages(&ctx.options, 20_000);
    eprintln!("== at {latency}: {label}: {n} messages per run");
    let consumer = Consumer::host_with_slots(SIZED_SLOTS).publishing("Order.Shipped");
    let m = repeat_with(ctx, &label, &consumer, n, behaviour)?;
    let scenario = format!("at {latency} a request: {label} (N={n})");
    rows.push(Row::new(&scenario, "messages/s", rates(&m), 0));
    let cpu = m.iter().map(|x| x.cpu_us_per_message).collect();
    rows.push(Row::new(&scenario, "CPU µs/message", cpu, 1));
    let all = m.iter().map(|x| x.requests_per_message(None)).collect();
    rows.push(Row::new(&scenario, "AWS requests/message", all, 3).target("≤ 0.35", |x| x <= 0.35));
    let batches = m
        .iter()
        .map(|x| {
            x.requests_per_message(Some("PublishBatch")) + x.requests_per_message(Some("Publish"))
        })
        .collect();
    rows.push(Row::new(
        &scenario,
        "Publish + PublishBatch/message",
        batches,
        3,
    ));

    let ours = median(&rates(&sized));
    for (label, consumer, normal) in peers {
        let n = messages(&ctx.options, normal);
        eprintln!("== at {latency}: {label}: {n} messages per run");
        let m = repeat_with(ctx, label, &consumer, n, behaviour)?;
        let scenario = format!("at {latency} a request: peer {label} (N={n})");
        rows.push(Row::new(&scenario, "messages/s", rates(&m), 0));
        push_common(rows, &scenario, &m, false);
        let speed: Vec<f64> = rates(&m).iter().map(|r| ours / r).collect();
        rows.push(
            Row::new(
                &scenario,
                &format!("iniesta's messages/s (max_in_flight {SIZED_SLOTS}) ÷ its"),
                speed,
                1,
            )
            .target("≥ 10×", |x| x >= 10.0),
        );
    }
    Ok(())
}

/// The rows every consumer gets: CPU, requests per message (all and by action), residence.
fn push_common(rows: &mut Vec<Row>, scenario: &str, m: &[Measured], ours: bool) {
    let cpu = Row::new(
        scenario,
        "CPU µs/message",
        m.iter().map(|x| x.cpu_us_per_message).collect(),
        1,
    );
    rows.push(if ours {
        cpu.target("≤ 15", |x| x <= 15.0)
    } else {
        cpu
    });
    let per = |action: Option<&str>| -> Vec<f64> {
        m.iter().map(|x| x.requests_per_message(action)).collect()
    };
    let all = Row::new(scenario, "AWS requests/message", per(None), 3);
    rows.push(if ours {
        all.target("≤ 0.21", |x| x <= 0.21)
    } else {
        all
    });
    for action in ["ReceiveMessage", "DeleteMessageBatch", "DeleteMessage"] {
        let v = per(Some(action));
        if v.iter().any(|x| *x > 0.0) {
            rows.push(Row::new(scenario, &format!("{action}/message"), v, 3));
        }
    }
    rows.push(Row::new(
        scenario,
        "hand-out to delete, p50 ms",
        m.iter().map(|x| x.residence_ms.0).collect(),
        1,
    ));
    rows.push(Row::new(
        scenario,
        "hand-out to delete, p99 ms",
        m.iter().map(|x| x.residence_ms.1).collect(),
        1,
    ));
}
