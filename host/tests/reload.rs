//! Hot reload under load on the local broker: plugin swaps, refusals, config rebinds, SIGHUP.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::load::{handled_per_seq, marks_in_order, Load};
use common::{plugin_dir, Host, Scratch};

const LIMIT: Duration = Duration::from_secs(60);
const MARK: &[u8] = b"iniesta-ledger-mark:";

/// The ledger plugin's bytes with its build mark set to `mark`.
fn ledger_with_mark(mark: u32) -> Vec<u8> {
    let mut bytes = std::fs::read(plugin_dir().join("libledger.so")).expect("ledger built");
    let at = bytes
        .windows(MARK.len())
        .position(|w| w == MARK)
        .expect("ledger has a build mark");
    let digits = format!("{mark:08}");
    bytes[at + MARK.len()..at + MARK.len() + 8].copy_from_slice(digits.as_bytes());
    bytes
}

/// Deploy the safe way: write a temporary file in the same directory, then rename over.
fn deploy(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).expect("write temp");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

fn plugins_dir(s: &Scratch) -> PathBuf {
    let dir = s.path("plugins");
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

fn config_text(s: &Scratch, dir: &Path, sqs_extra: &str, bindings: &str) -> String {
    format!(
        "service = \"receiver\"\nenv = \"test\"\ninitialization = [\"EVENT_POLLING\", \"SNS_PRODUCER\"]\n\
         [broker]\npath = \"{}\"\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:0:global\"\n\
         [sqs]\nfilters = [\"Order.*\", \"Other.*\"]\nwait_time_seconds = 1\nvisibility_timeout = 10\n{sqs_extra}\n\
         [plugins]\ndirs = [\"{}\"]\n{bindings}",
        s.path("broker.db").display(),
        dir.display()
    )
}

fn ledger_binding(s: &Scratch, label: &str, events: &str) -> String {
    format!(
        "[[bindings]]\nevents = {events}\nplugin = \"ledger\"\nconfig = {{ path = \"{}\", label = \"{label}\" }}\n",
        s.path("ledger.jsonl").display()
    )
}

#[test]
fn fifty_reloads_under_load_lose_nothing_and_run_nothing_twice() {
    let s = Scratch::new();
    let dir = plugins_dir(&s);
    deploy(&dir, "libledger.so", &ledger_with_mark(0));
    let config = s.write(
        "iniesta.toml",
        &config_text(&s, &dir, "", &ledger_binding(&s, "load", r#"["Order.*"]"#)),
    );
    let host = Host::start(&config, s.path("host.log"));
    let load = Load::start(&config);
    let mut latencies = Vec::new();
    for generation in 1..=50u32 {
        let bytes = ledger_with_mark(generation);
        let deployed = Instant::now();
        deploy(&dir, "libledger.so", &bytes);
        let want = format!("{generation:08}");
        s.wait_for(&format!("generation {generation} to serve"), LIMIT, || {
            s.ledger("ledger.jsonl")
                .iter()
                .any(|l| l["mark"] == want.as_str())
        });
        latencies.push(deployed.elapsed());
    }
    let sent = load.stop();
    s.wait_for("every message handled", LIMIT, || {
        s.ledger("ledger.jsonl").len() as u64 >= sent
    });
    std::thread::sleep(Duration::from_millis(500));
    let log = host.stop();
    let lines = s.ledger("ledger.jsonl");
    let per_seq = handled_per_seq(&lines);
    assert_eq!(per_seq.len() as u64, sent, "no message lost");
    assert!(
        per_seq.values().all(|n| *n == 1),
        "no message handled twice"
    );
    let marks = marks_in_order(&lines);
    assert!(
        marks.windows(2).all(|w| w[0] < w[1]),
        "generations take over in order: {marks:?}"
    );
    assert_eq!(marks.last(), Some(&50));
    assert_eq!(
        log.matches("plugin reloaded").count(),
        50,
        "one reload per deploy"
    );
    latencies.sort();
    println!(
        "reload latency (rename to first message handled by the new generation, publishing every 15 ms, 300 ms debounce): min {:?} median {:?} max {:?} over {} reloads; {} messages",
        latencies[0], latencies[latencies.len() / 2], latencies[latencies.len() - 1], latencies.len(), sent
    );
}

#[test]
fn truncated_and_incompatible_files_are_refused_and_the_old_generation_keeps_serving() {
    let s = Scratch::new();
    let dir = plugins_dir(&s);
    deploy(&dir, "libledger.so", &ledger_with_mark(1));
    let config = s.write(
        "iniesta.toml",
        &config_text(&s, &dir, "", &ledger_binding(&s, "l", r#"["Order.*"]"#)),
    );
    let host = Host::start(&config, s.path("host.log"));
    let publish = |n: usize| common::publish(&config, &["Order.Check", &format!("{{\"n\":{n}}}")]);
    // 1. A copy still being written: cp-in-place of half the bytes.
    let full = ledger_with_mark(2);
    std::fs::write(dir.join("libledger.so"), &full[..full.len() / 2]).expect("truncate in place");
    s.wait_for("the incomplete file to be noticed", LIMIT, || {
        host.log_text().contains("incomplete shared library")
    });
    publish(1);
    s.wait_for("message 1", LIMIT, || s.ledger("ledger.jsonl").len() == 1);
    assert_eq!(
        s.ledger("ledger.jsonl")[0]["mark"],
        "00000001",
        "the old generation served"
    );
    // 2. The write completes: the new generation takes over.
    std::fs::write(dir.join("libledger.so"), &full).expect("finish the write");
    s.wait_for("generation 2", LIMIT, || {
        host.log_text().contains("plugin reloaded")
    });
    publish(2);
    s.wait_for("message 2", LIMIT, || s.ledger("ledger.jsonl").len() == 2);
    assert_eq!(s.ledger("ledger.jsonl")[1]["mark"], "00000002");
    // 3. A plugin built against another plugin-api replaces the file: refused.
    let incompatible = common::build_incompatible_fixture();
    deploy(
        &dir,
        "libledger.so",
        &std::fs::read(&incompatible).expect("read fixture"),
    );
    s.wait_for("the refusal", LIMIT, || {
        host.log_text()
            .contains("refused: built against iniesta-plugin-api 0.99.0")
    });
    publish(3);
    s.wait_for("message 3", LIMIT, || s.ledger("ledger.jsonl").len() == 3);
    assert_eq!(
        s.ledger("ledger.jsonl")[2]["mark"],
        "00000002",
        "generation 2 keeps serving"
    );
    let mut host = host;
    assert!(host.is_alive(), "the host survives refused files");
    host.stop();
}

#[test]
fn config_edits_rebind_without_restart_and_invalid_edits_are_refused() {
    let s = Scratch::new();
    let dir = plugins_dir(&s);
    deploy(&dir, "libledger.so", &ledger_with_mark(1));
    std::fs::copy(plugin_dir().join("libecho.so"), dir.join("libecho.so")).expect("echo");
    let config = s.write(
        "iniesta.toml",
        &config_text(&s, &dir, "", &ledger_binding(&s, "first", r#"["Order.*"]"#)),
    );
    let host = Host::start(&config, s.path("host.log"));
    // Rebind: Other.* now goes to a ledger labelled "second"; Order.* is no longer bound.
    s.write(
        "iniesta.toml",
        &config_text(
            &s,
            &dir,
            "",
            &ledger_binding(&s, "second", r#"["Other.*"]"#),
        ),
    );
    s.wait_for("the rebind", LIMIT, || {
        host.log_text().contains("config reloaded")
    });
    common::publish(&config, &["Other.Thing", "{}"]);
    s.wait_for("Other.Thing", LIMIT, || {
        !s.ledger("ledger.jsonl").is_empty()
    });
    assert_eq!(s.ledger("ledger.jsonl")[0]["label"], "second");
    // An invalid edit is refused with the config-check errors; the running config serves on.
    // (The refused edit also widens sqs.filters: a refused config must not change anything.)
    s.write(
        "iniesta.toml",
        &config_text(
            &s,
            &dir,
            "",
            "[[bindings]]\nevents = [\"Other.*\"]\nplugin = \"nope\"\n",
        )
        .replace(
            "filters = [\"Order.*\", \"Other.*\"]",
            "filters = [\"Order.*\", \"Other.*\", \"Sneaky.*\"]",
        ),
    );
    s.wait_for("the refusal", LIMIT, || {
        host.log_text().contains("config change refused")
    });
    assert!(host.log_text().contains("bindings[0].plugin"));
    assert!(
        !host.log_text().contains("filter policy is updated"),
        "a refused config must not touch the subscription"
    );
    common::publish(&config, &["Other.Again", "{}"]);
    s.wait_for("Other.Again", LIMIT, || s.ledger("ledger.jsonl").len() == 2);
    assert_eq!(s.ledger("ledger.jsonl")[1]["label"], "second");
    // Settings that cannot change live are reported, not silently ignored; new filters apply.
    let mut text = config_text(
        &s,
        &dir,
        "pollers = 3",
        &ledger_binding(&s, "third", r#"["Extra.*"]"#),
    );
    text = text.replace(
        "filters = [\"Order.*\", \"Other.*\"]",
        "filters = [\"Order.*\", \"Other.*\", \"Extra.*\"]",
    );
    s.write("iniesta.toml", &text);
    s.wait_for("the restart warning", LIMIT, || {
        host.log_text().contains("only take effect after a restart")
    });
    assert!(host.log_text().contains("sqs.pollers"));
    s.wait_for("the filter update", LIMIT, || {
        host.log_text().contains("filter policy is updated")
    });
    common::publish(&config, &["Extra.Event", "{}"]);
    s.wait_for("Extra.Event", LIMIT, || s.ledger("ledger.jsonl").len() == 3);
    assert_eq!(s.ledger("ledger.jsonl")[2]["label"], "third");
    host.stop();
}

#[test]
fn a_removed_plugin_is_unbound_and_its_events_go_to_the_default() {
    let s = Scratch::new();
    let dir = plugins_dir(&s);
    deploy(&dir, "libledger.so", &ledger_with_mark(1));
    std::fs::copy(plugin_dir().join("libecho.so"), dir.join("libecho.so")).expect("echo");
    let bindings = format!(
        "{}[[bindings]]\ndefault = true\nplugin = \"echo\"\nconfig = {{ prefix = \"fallback\" }}\n",
        ledger_binding(&s, "l", r#"["Order.*"]"#)
    );
    let config = s.write("iniesta.toml", &config_text(&s, &dir, "", &bindings));
    let host = Host::start(&config, s.path("host.log"));
    std::fs::remove_file(dir.join("libledger.so")).expect("remove");
    s.wait_for("the removal", LIMIT, || {
        host.log_text().contains("plugin removed")
    });
    common::publish(&config, &["Order.Orphaned", "{}"]);
    s.wait_for("the default to take it", LIMIT, || {
        host.log_text()
            .contains("fallback: Order.Orphaned.receiver")
    });
    // The default keeps its position (and so its identity): still bindings[1].
    let log = host.log_text();
    let handled = log
        .lines()
        .find(|l| l.contains("fallback: Order.Orphaned.receiver"))
        .unwrap_or_default();
    assert!(handled.contains("bindings[1] (echo/echo)"), "{handled}");
    // A new plugin file appearing is loaded and bindable again.
    deploy(&dir, "libledger.so", &ledger_with_mark(2));
    s.wait_for("the plugin to come back", LIMIT, || {
        host.log_text().contains("new plugin available")
    });
    common::publish(&config, &["Order.Back", "{}"]);
    s.wait_for("ledger", LIMIT, || s.ledger("ledger.jsonl").len() == 1);
    host.stop();
}

#[test]
fn sighup_reloads_when_watching_is_off() {
    let s = Scratch::new();
    let dir = plugins_dir(&s);
    deploy(&dir, "libledger.so", &ledger_with_mark(1));
    let config = s.write(
        "iniesta.toml",
        &config_text(&s, &dir, "", &ledger_binding(&s, "a", r#"["Order.*"]"#))
            .replace("[plugins]\n", "[plugins]\nwatch = false\n"),
    );
    let host = Host::start(&config, s.path("host.log"));
    deploy(&dir, "libledger.so", &ledger_with_mark(2));
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !host.log_text().contains("plugin reloaded"),
        "no watching: nothing happens by itself"
    );
    let pid = host.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill")
        .success());
    s.wait_for("the SIGHUP reload", LIMIT, || {
        host.log_text().contains("plugin reloaded")
    });
    common::publish(&config, &["Order.After", "{}"]);
    s.wait_for("ledger", LIMIT, || s.ledger("ledger.jsonl").len() == 1);
    assert_eq!(s.ledger("ledger.jsonl")[0]["mark"], "00000002");
    // `iniesta plugins` shows what the running host serves.
    let out = common::iniesta(&config, &["plugins"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("running host pid {pid}")), "{text}");
    assert!(
        text.contains("reloaded 1 time(s)") && text.contains("old generation(s)"),
        "{text}"
    );
    let seen: BTreeSet<String> = s
        .ledger("ledger.jsonl")
        .iter()
        .map(|l| l["mark"].to_string())
        .collect();
    assert_eq!(seen.len(), 1);
    host.stop();
}
