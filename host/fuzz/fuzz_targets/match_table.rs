//! The match DSL (host/src/route/matcher.rs): a `match` table as TOML, then `---`, then a
//! message in the framing of `iniesta_fuzz::frame` (the content type attribute counts). The
//! table is compiled and evaluated on the inspected body; `matches` must agree with the
//! per-condition `explain` that `iniesta route` prints.
#![no_main]

use iniesta::route::matcher::{parse_datetime, Matcher};
use iniesta_fuzz::{frame, two_parts};
use iniesta_plugin_api::payload::{inspect, CONTENT_TYPE_ATTRIBUTE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (table, message) = two_parts(data);
    let Ok(table) = std::str::from_utf8(table) else {
        return;
    };
    if let Some(line) = table.lines().next() {
        let _ = parse_datetime(line);
    }
    let Ok(table) = table.parse::<toml::Table>() else {
        return;
    };
    let Ok(matcher) = Matcher::compile(&table) else {
        return;
    };
    let message = frame(message);
    let content_type = message
        .attributes
        .get(CONTENT_TYPE_ATTRIBUTE)
        .map(|a| a.value.as_str());
    let payload = inspect(message.body, content_type);
    let matches = matcher.matches(&payload);
    if payload.json.is_some() {
        let checks = matcher.explain(&payload);
        assert_eq!(checks.len(), matcher.len());
        assert_eq!(matches, checks.iter().all(|c| c.holds));
    } else {
        assert_eq!(matches, matcher.is_empty());
    }
});
