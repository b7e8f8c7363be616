//! Config loading: `Config::parse` of any text, then every check `Config::load` runs
//! (`Config::problems`: settings, FIFO rules, bindings with their event patterns, match
//! tables and media types). Relative paths resolve in an empty directory; schema files are
//! left out (reading a file someone names is not parsing: `schema = "/dev/zero"` would block).
#![no_main]

use std::path::{Component, Path};
use std::sync::OnceLock;

use iniesta::config::Config;
use libfuzzer_sys::fuzz_target;

fn base_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory"))
        .path()
}

fn stays_inside(path: &Path) -> bool {
    path.components().all(|c| matches!(c, Component::Normal(_)))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut config) = Config::parse(text, base_dir()) else {
        return;
    };
    for binding in &mut config.bindings {
        if binding.schema.as_deref().is_some_and(|p| !stays_inside(p)) {
            binding.schema = None;
        }
    }
    let _ = config.problems();
    let _ = config.queue_name();
    let _ = config.topic_name();
});
