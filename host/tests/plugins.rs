//! Loading real cdylib plugins: side by side, overrides, refusals, panics.

mod common;

use std::path::{Path, PathBuf};

use abi_stable::std_types::{RString, RVec};
use common::{plugin_dir, Scratch};
use iniesta::plugins::{LoadError, PluginSet};
use iniesta_plugin_api::ffi::{AttributeFfi, MessageFfi, OutcomeFfi};

fn message(body: &str) -> MessageFfi {
    MessageFfi {
        id: RString::from("m-1"),
        event: RString::from("Order.Created.shop"),
        body: RVec::from(body.as_bytes().to_vec()),
        attributes: RVec::from(vec![AttributeFfi {
            name: "iniesta_pass".into(),
            data_type: "String".into(),
            value: "Order.Created.shop".into(),
        }]),
        receive_count: 1,
        sent_timestamp_ms: 0,
    }
}

fn no_host() -> iniesta_plugin_api::ffi::HostContextBox {
    iniesta::plugins::context::HostContext::boxed(None, None, "test", "test")
}

#[test]
fn several_plugins_load_side_by_side_each_with_its_own_code() {
    let set = PluginSet::scan(&[plugin_dir()]);
    let names: Vec<&str> = set.plugins.keys().map(String::as_str).collect();
    for expected in ["echo", "flaky", "ledger", "panicky"] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    assert_eq!(set.plugins["echo"].handlers, vec!["echo"]);
    assert_eq!(set.plugins["panicky"].handlers, vec!["panicky", "sleepy"]);
    assert!(set.refused.is_empty(), "{:?}", set.refused);
    // Calling two plugins proves each runs its own code (the naive loader returns the first twice).
    let s = Scratch::new();
    let ledger_path = s.path("l.jsonl");
    let config = serde_json::json!({ "path": ledger_path, "label": "direct" }).to_string();
    let ledger = set.plugins["ledger"]
        .new_handler("ledger", &config)
        .expect("ledger builds");
    let echo = set.plugins["echo"]
        .new_handler("echo", "")
        .expect("echo builds");
    let ctx = no_host();
    assert_eq!(ledger.handle(&message("{\"id\":1}"), &ctx), OutcomeFfi::Ack);
    assert_eq!(echo.handle(&message("{}"), &ctx), OutcomeFfi::Ack);
    let written = std::fs::read_to_string(&ledger_path).expect("ledger wrote");
    assert!(written.contains("\"label\":\"direct\""), "{written}");
    assert_eq!(
        written.lines().count(),
        1,
        "echo must not have run ledger's code"
    );
}

#[test]
fn a_panic_in_a_handler_is_caught_at_the_boundary() {
    let set = PluginSet::scan(&[plugin_dir()]);
    let panicky = set.plugins["panicky"]
        .new_handler("panicky", "")
        .expect("builds");
    let ctx = no_host();
    match panicky.handle(&message("please panic"), &ctx) {
        OutcomeFfi::Panicked { message } => {
            assert!(message.contains("asked to panic"), "{message}")
        }
        other => panic!("expected Panicked, got {other:?}"),
    }
    // The same handler keeps working afterwards.
    assert_eq!(panicky.handle(&message("calm"), &ctx), OutcomeFfi::Ack);
}

#[test]
fn constructor_errors_name_the_problem() {
    let set = PluginSet::scan(&[plugin_dir()]);
    let Err(err) = set.plugins["ledger"].new_handler("ledger", "{}") else {
        panic!("path is required")
    };
    assert!(err.contains("missing string key `path`"), "{err}");
    let Err(err) = set.plugins["echo"].new_handler("nope", "") else {
        panic!("unknown handler")
    };
    assert!(err.contains("no handler `nope`"), "{err}");
    let Err(err) = set.plugins["flaky"].new_handler("flaky", r#"{"mode":"sometimes"}"#) else {
        panic!("bad mode")
    };
    assert!(err.contains("sometimes"), "{err}");
}

#[test]
fn a_later_directory_overrides_a_plugin_of_the_same_name() {
    let s = Scratch::new();
    let (a, b) = (s.path("a"), s.path("b"));
    std::fs::create_dir_all(&a).expect("mkdir");
    std::fs::create_dir_all(&b).expect("mkdir");
    std::fs::copy(plugin_dir().join("libecho.so"), a.join("libecho.so")).expect("copy");
    std::fs::copy(plugin_dir().join("libecho.so"), b.join("libecho.so")).expect("copy");
    std::fs::copy(plugin_dir().join("libledger.so"), a.join("libledger.so")).expect("copy");
    let set = PluginSet::scan(&[a.clone(), b.clone()]);
    assert_eq!(set.plugins["echo"].origin_dir, b);
    assert_eq!(set.plugins["ledger"].origin_dir, a);
    assert_eq!(set.overridden.len(), 1);
    assert_eq!(set.overridden[0].origin_dir, a);
    assert_ne!(set.plugins["echo"].generation, set.overridden[0].generation);
}

#[test]
fn files_that_are_not_plugins_are_skipped_and_truncated_ones_refused() {
    let s = Scratch::new();
    let dir = s.path("mixed");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("libgarbage.so"), b"this is not an ELF file").expect("write");
    std::fs::write(dir.join("README.txt"), b"ignored: not a library name").expect("write");
    // A real shared library that is not an iniesta plugin.
    let real = find_system_library().expect("a system shared library to copy");
    std::fs::copy(&real, dir.join("libsystem.so")).expect("copy");
    // Half of a real plugin, as a file still being written looks.
    let echo = std::fs::read(plugin_dir().join("libecho.so")).expect("read");
    std::fs::write(dir.join("libhalf.so"), &echo[..echo.len() / 2]).expect("write");
    std::fs::copy(plugin_dir().join("libflaky.so"), dir.join("libflaky.so")).expect("copy");
    let set = PluginSet::scan(std::slice::from_ref(&dir));
    assert_eq!(set.plugins.keys().collect::<Vec<_>>(), vec!["flaky"]);
    let skipped: Vec<String> = set.skipped.iter().map(|(p, _)| file_name(p)).collect();
    assert!(
        skipped.contains(&"libgarbage.so".to_string()),
        "{skipped:?}"
    );
    assert!(skipped.contains(&"libsystem.so".to_string()), "{skipped:?}");
    assert_eq!(set.refused.len(), 1, "{:?}", set.refused);
    assert!(
        matches!(set.refused[0].error, LoadError::Incomplete { .. }),
        "{:?}",
        set.refused[0].error
    );
}

#[test]
fn a_plugin_built_against_another_plugin_api_is_refused_while_others_run() {
    let incompatible = common::build_incompatible_fixture();
    let s = Scratch::new();
    let dir = s.path("plugins");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::copy(&incompatible, dir.join("libincompatible.so")).expect("copy");
    std::fs::copy(plugin_dir().join("libecho.so"), dir.join("libecho.so")).expect("copy");
    let set = PluginSet::scan(std::slice::from_ref(&dir));
    assert!(set.plugins.contains_key("echo"));
    assert!(!set.plugins.contains_key("incompatible"));
    assert_eq!(set.refused.len(), 1);
    let text = set.refused[0].error.to_string();
    assert!(text.contains("libincompatible.so"), "{text}");
    assert!(
        text.contains("0.99.0") && text.contains(iniesta_plugin_api::ABI_VERSION),
        "both versions: {text}"
    );
    assert!(text.contains("rebuild"), "the fix: {text}");

    // The CLI shows it, and a host bound only to the others runs.
    let config = s.write(
        "iniesta.toml",
        &format!(
            "service = \"receiver\"\ninitialization = [\"QUEUE_POLLING\"]\n[broker]\npath = \"b.db\"\n[sqs]\nwait_time_seconds = 1\n\
             [plugins]\ndirs = [\"{}\"]\n[[bindings]]\ndefault = true\nplugin = \"echo\"\n",
            dir.display()
        ),
    );
    let out = common::iniesta(&config, &["plugins"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("refused:") && stdout.contains("0.99.0"),
        "{stdout}"
    );
    let host = common::Host::start(&config, s.path("host.log"));
    let id = common::publish(&config, &["hello", "{}", "--queue"]);
    assert!(!id.is_empty());
    s.wait_for("echo to handle", std::time::Duration::from_secs(60), || {
        host.log_text().contains("echo: hello.receiver")
    });
    host.stop();

    // Binding to the refused plugin is a config error that says why.
    let bad = s.write(
        "bad.toml",
        &format!(
            "service = \"receiver\"\ninitialization = [\"QUEUE_POLLING\"]\n[broker]\npath = \"b.db\"\n\
             [plugins]\ndirs = [\"{}\"]\n[[bindings]]\ndefault = true\nplugin = \"incompatible\"\n",
            dir.display()
        ),
    );
    let out = common::iniesta(&bad, &["config", "check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bindings[0].plugin") && err.contains("refused"),
        "{err}"
    );
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default()
}

fn find_system_library() -> Option<PathBuf> {
    for dir in [
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib64",
        "/usr/lib",
        "/lib/aarch64-linux-gnu",
    ] {
        for name in ["libz.so.1", "libgcc_s.so.1", "libm.so.6"] {
            let p = Path::new(dir).join(name);
            if p.exists() {
                return Some(p);
            }
        }
    }
    None
}
