//! Scenario 5a: the plugin boundary.

use std::time::Instant;

use bench::canned::{self};

use crate::results::Row;
use crate::Ctx;

pub(crate) fn ffi_message(body: &[u8], attributes: bool) -> iniesta_plugin_api::ffi::MessageFfi {
    use abi_stable::std_types::{RString, RVec};
    use iniesta_plugin_api::ffi::{AttributeFfi, MessageFfi};
    let attrs: RVec<AttributeFfi> = if attributes {
        vec![
            AttributeFfi {
                name: "iniesta_pass".into(),
                data_type: "String".into(),
                value: canned::EVENT.into(),
            },
            AttributeFfi {
                name: "version".into(),
                data_type: "Number".into(),
                value: "1".into(),
            },
        ]
        .into()
    } else {
        RVec::new()
    };
    MessageFfi {
        id: RString::from("00000001-0000-4000-8000-000000000001"),
        event: RString::from(canned::EVENT),
        body: RVec::from(body.to_vec()),
        attributes: attrs,
        receive_count: 1,
        sent_timestamp_ms: 1_700_000_000_000,
    }
}
/// Scenario 5a: the plugin boundary, through the host's own loader.
pub(crate) fn run(ctx: &Ctx, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    use iniesta::plugins::context::HostContext;
    use iniesta::plugins::load::load_file;
    eprintln!("== plugin boundary");
    let file = ctx.echo_plugins.join("libecho.so");
    let plugin = load_file(&file, &ctx.echo_plugins).map_err(|e| anyhow::anyhow!("{e}"))?;
    let handler = plugin
        .new_handler("echo", r#"{"quiet":true}"#)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let context = HostContext::boxed(None, None, "echo", "bench", "bench", None);
    let calls: u64 = if ctx.options.quick {
        1_000_000
    } else {
        10_000_000
    };
    let body = vec![b'x'; 1024];
    let mut rows_out = Vec::new();
    for (label, message) in [
        ("empty message", ffi_message(b"", false)),
        ("1 KiB body, 2 attributes", ffi_message(&body, true)),
    ] {
        let mut samples = Vec::new();
        for _ in 0..ctx.options.runs {
            // Warm up, then time.
            for _ in 0..10_000 {
                std::hint::black_box(handler.handle(std::hint::black_box(&message), &context));
            }
            let t = Instant::now();
            for _ in 0..calls {
                let outcome = handler.handle(std::hint::black_box(&message), &context);
                std::hint::black_box(outcome);
            }
            samples.push(t.elapsed().as_nanos() as f64 / calls as f64);
        }
        rows_out.push((label, samples));
    }
    // Baseline: a virtual call to an in-process handler doing the same (nothing).
    trait Noop {
        fn handle(&self, m: &iniesta_plugin_api::ffi::MessageFfi) -> u8;
    }
    struct N;
    impl Noop for N {
        fn handle(&self, m: &iniesta_plugin_api::ffi::MessageFfi) -> u8 {
            m.receive_count as u8
        }
    }
    let boxed: Box<dyn Noop> = Box::new(N);
    let boxed = std::hint::black_box(boxed);
    let message = ffi_message(b"", false);
    let mut baseline = Vec::new();
    for _ in 0..ctx.options.runs {
        let t = Instant::now();
        for _ in 0..calls {
            std::hint::black_box(boxed.handle(std::hint::black_box(&message)));
        }
        baseline.push(t.elapsed().as_nanos() as f64 / calls as f64);
    }
    let scenario = format!("plugin boundary ({calls} calls/run, quiet echo via the host's loader)");
    for (label, samples) in rows_out {
        let mut row = Row::new(&scenario, &format!("ns/call, {label}"), samples, 1);
        if label == "empty message" {
            row = row.target("≤ 25", |x| x <= 25.0);
        }
        rows.push(row);
    }
    rows.push(Row::new(
        &scenario,
        "ns/call, in-process virtual call (baseline)",
        baseline,
        1,
    ));
    Ok(())
}
