//! Hot reload under load on the local broker: plugin swaps, refusals, config rebinds, SIGHUP.

use crate::common;

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

/// Issue 24: a refused file takes no generation number (the next good build is the next
/// number), and the `plugins` table's `GEN` is what the running host serves after the reload,
/// not this command's own load of the file.
#[test]
fn a_refused_load_takes_no_generation_and_plugins_shows_the_serving_one() {
    let s = Scratch::new();
    let dir = plugins_dir(&s);
    deploy(&dir, "libledger.so", &ledger_with_mark(1));
    let config = s.write(
        "iniesta.toml",
        &config_text(&s, &dir, "", &ledger_binding(&s, "a", r#"["Order.*"]"#)),
    );
    let host = Host::start(&config, s.path("host.log"));
    let mut first = None;
    s.wait_for("the host state", LIMIT, || {
        first = serving(&host_state(&s, &host), "ledger");
        first.is_some()
    });
    let first = first.unwrap_or_default();
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
    deploy(&dir, "libledger.so", &ledger_with_mark(2));
    s.wait_for("the reload", LIMIT, || {
        host.log_text().contains("plugin reloaded")
    });
    let mut second = None;
    s.wait_for("the new generation in the state", LIMIT, || {
        second = serving(&host_state(&s, &host), "ledger").filter(|g| *g != first);
        second.is_some()
    });
    let second = second.unwrap_or_default();
    assert_eq!(
        second,
        first + 1,
        "the refused file took no generation number"
    );
    let out = common::iniesta(&config, &["plugins"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let row: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("ledger "))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(
        row.get(3).copied(),
        Some(second.to_string().as_str()),
        "GEN is the serving generation: {text}"
    );
    assert!(
        text.contains(&format!("ledger 0.1.0 generation {second} ")),
        "{text}"
    );
    host.stop();
    // No host runs: nothing is served, GEN says so.
    let out = common::iniesta(&config, &["plugins"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let row: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("ledger "))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(row.get(3).copied(), Some("-"), "{text}");
}

/// This host's state file (what `iniesta plugins` reads), as JSON.
fn host_state(s: &Scratch, host: &Host) -> serde_json::Value {
    let path = s.path(&format!(".iniesta/hosts/host-{}.json", host.child.id()));
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// The generation of `plugin` the host serves, per its state file.
fn serving(state: &serde_json::Value, plugin: &str) -> Option<u64> {
    state["plugins"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == plugin)
        .and_then(|p| p["generation"].as_u64())
}

/// The reasons of the load failures the host reports now for `plugin`.
fn failure_reasons(state: &serde_json::Value, plugin: &str) -> Vec<String> {
    state["load_failures"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|f| f["plugin"] == plugin)
                .filter_map(|f| f["reason"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `iniesta_plugin_load_failures_total{plugin="ledger",reason}` on the host's /metrics.
fn load_failures(port: u16, reason: &str) -> u64 {
    let series =
        format!("iniesta_plugin_load_failures_total{{plugin=\"ledger\",reason=\"{reason}\"}} ");
    common::http_get(port, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// Deterministic bytes that are not an ELF file.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn any_bad_file_over_a_plugin_keeps_its_generation_serving_under_load() {
    let s = Scratch::new();
    let dir = plugins_dir(&s);
    deploy(&dir, "libledger.so", &ledger_with_mark(1));
    std::fs::copy(plugin_dir().join("libecho.so"), dir.join("libecho.so")).expect("echo");
    let bindings = format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n[console]\nenabled = true\n\n{}\
         [[bindings]]\ndefault = true\nplugin = \"echo\"\nconfig = {{ prefix = \"fallback\" }}\n",
        ledger_binding(&s, "l", r#"["Order.*"]"#)
    );
    let config = s.write("iniesta.toml", &config_text(&s, &dir, "", &bindings));
    let host = Host::start(&config, s.path("host.log"));
    let port = host.port();
    let first = serving(&host_state(&s, &host), "ledger").expect("ledger serves");
    let load = Load::start(&config);
    let half = {
        let full = ledger_with_mark(9);
        full[..full.len() / 2].to_vec()
    };
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        ("random bytes", noise(64 * 1024), "not_a_plugin"),
        ("an empty file", Vec::new(), "not_a_plugin"),
        (
            "a shared library that is not a plugin",
            std::fs::read(common::find_system_library().expect("a system library")).expect("read"),
            "not_a_plugin",
        ),
        ("a truncated plugin", half, "incomplete"),
        (
            "a plugin built against another plugin-api",
            std::fs::read(common::build_incompatible_fixture()).expect("fixture"),
            "incompatible_version",
        ),
    ];
    let mut counted = std::collections::BTreeMap::<&str, u64>::new();
    for (i, (what, bytes, reason)) in bad.iter().enumerate() {
        let handled_before = s.ledger("ledger.jsonl").len();
        deploy(&dir, "libledger.so", bytes);
        let expected = *counted.entry(reason).and_modify(|n| *n += 1).or_insert(1);
        s.wait_for(&format!("the host to refuse {what}"), LIMIT, || {
            let state = host_state(&s, &host);
            serving(&state, "ledger").is_none()
                || (failure_reasons(&state, "ledger") == vec![reason.to_string()]
                    && load_failures(port, reason) == expected)
        });
        assert_eq!(
            serving(&host_state(&s, &host), "ledger"),
            Some(first),
            "after {what}, the previous generation stays bound"
        );
        if i == 0 {
            // Another change in the directory rescans it: the same bad file is neither
            // retried, nor logged, nor counted again.
            std::fs::copy(plugin_dir().join("libflaky.so"), dir.join("libflaky.so"))
                .expect("flaky");
            s.wait_for("the rescan", LIMIT, || {
                serving(&host_state(&s, &host), "flaky").is_some()
            });
            assert_eq!(load_failures(port, reason), 1, "not counted again");
            let console = common::http_get(port, "/api/state").expect("console answers");
            let state: serde_json::Value = serde_json::from_str(&console.1).expect("JSON");
            let shown: Vec<&serde_json::Value> = state["load_failures"]
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            assert_eq!(shown.len(), 1, "the console shows it: {}", console.1);
            assert_eq!(shown[0]["reason"], "not_a_plugin");
            assert_eq!(shown[0]["serving_generation"], first);
            let out = common::iniesta(&config, &["plugins"]);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains("LOAD FAILED ledger") && text.contains("keeps serving"),
                "`iniesta plugins` shows it: {text}"
            );
        }
        // Messages keep flowing while the bad file sits there.
        s.wait_for(
            &format!("messages handled with {what} in place"),
            LIMIT,
            || {
                s.ledger("ledger.jsonl").len() >= handled_before + 5
                    || host.log_text().contains("fallback: Order.Load")
            },
        );
    }
    deploy(&dir, "libledger.so", &ledger_with_mark(2));
    s.wait_for("the good file to serve", LIMIT, || {
        s.ledger("ledger.jsonl")
            .iter()
            .any(|l| l["mark"] == "00000002")
            || host.log_text().contains("fallback: Order.Load")
    });
    let sent = load.stop();
    s.wait_for("every message handled", LIMIT, || {
        s.ledger("ledger.jsonl").len() as u64
            + host.log_text().matches("fallback: Order.Load").count() as u64
            >= sent
    });
    let metrics = common::http_get(port, "/metrics").expect("metrics").1;
    let state = host_state(&s, &host);
    let log = host.stop();
    assert_eq!(
        log.matches("fallback: Order.Load").count(),
        0,
        "no message changed route"
    );
    assert!(
        !log.contains("plugin removed"),
        "the plugin was never unbound"
    );
    let lines = s.ledger("ledger.jsonl");
    let per_seq = handled_per_seq(&lines);
    assert_eq!(per_seq.len() as u64, sent, "no message lost");
    assert!(per_seq.values().all(|n| *n == 1), "none handled twice");
    assert_eq!(
        marks_in_order(&lines),
        vec![1, 2],
        "generation 1 served until 2"
    );
    assert!(
        failure_reasons(&state, "ledger").is_empty(),
        "a good file clears it"
    );
    for (reason, count) in [
        ("not_a_plugin", 3),
        ("incomplete", 1),
        ("incompatible_version", 1),
    ] {
        let series = format!(
            "iniesta_plugin_load_failures_total{{plugin=\"ledger\",reason=\"{reason}\"}} {count}\n"
        );
        assert!(
            metrics.contains(&series),
            "counted once each: {series} in\n{metrics}"
        );
    }
    println!(
        "{} bad files swapped in under load: {sent} messages, 0 lost, 0 rerouted",
        bad.len()
    );
}

#[test]
fn an_abort_build_over_an_in_process_plugin_keeps_the_previous_generation_serving() {
    let unwinding = common::build_aborting_fixture_unwinding();
    let aborting = common::build_aborting_fixture();
    let s = Scratch::new();
    let dir = plugins_dir(&s);
    deploy(
        &dir,
        "libaborting.so",
        &std::fs::read(&unwinding).expect("read"),
    );
    let out = s.path("out.txt");
    let binding = format!(
        "[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"aborting\"\nconfig = {{ path = \"{}\" }}\n",
        out.display()
    );
    let config = s.write("iniesta.toml", &config_text(&s, &dir, "", &binding));
    let mut host = Host::start(&config, s.path("host.log"));
    let lines = || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    common::publish(&config, &["Order.One", "\"one\""]);
    s.wait_for("the first message", LIMIT, || lines().len() == 1);
    // The same plugin, built with panic = "abort", is deployed over it: refused in the host.
    deploy(
        &dir,
        "libaborting.so",
        &std::fs::read(&aborting).expect("read"),
    );
    s.wait_for("the refusal", LIMIT, || {
        host.log_text().contains("was built with panic = \"abort\"")
    });
    // The unwinding generation still serves: a panic is caught, the host lives on.
    common::publish(&config, &["Order.Boom", "\"please panic\""]);
    s.wait_for("the caught panic", LIMIT, || {
        host.log_text().contains("aborting was asked to panic")
    });
    common::publish(&config, &["Order.Two", "\"two\""]);
    s.wait_for("the message after the panic", LIMIT, || {
        lines().contains(&"\"two\"".to_string())
    });
    assert!(host.is_alive(), "the host survives");
    host.stop();
}

/// A plugin file that is still there but cannot be loaded — replaced by a directory, by a
/// dangling symlink — and a plugin directory that cannot be listed keep the loaded generation
/// serving; only a file that is gone unbinds its plugin.
#[test]
fn a_file_that_is_still_there_or_an_unlistable_directory_keeps_its_plugin_bound() {
    use iniesta::plugins::PluginSet;
    let s = Scratch::new();
    let dir = plugins_dir(&s);
    deploy(&dir, "libledger.so", &ledger_with_mark(1));
    let dirs = [dir.clone()];
    let first = PluginSet::scan(&dirs);
    let generation = first.plugins["ledger"].generation;
    let file = dir.join("libledger.so");

    // The .so replaced by a directory.
    std::fs::remove_file(&file).expect("rm");
    std::fs::create_dir(&file).expect("mkdir in its place");
    let set = first.rescan(&dirs);
    let serving = set.plugins.get("ledger").map(|p| p.generation);
    assert_eq!(
        serving,
        Some(generation),
        "a directory in its place: {set:?}"
    );
    let refusal = set
        .refused
        .iter()
        .find(|r| r.file == file)
        .expect("refused");
    assert_eq!(refusal.error.reason(), "broken");
    assert!(
        refusal.error.to_string().contains("not a regular file"),
        "{}",
        refusal.error
    );
    assert!(refusal.new, "logged and counted once");
    let again = set.rescan(&dirs);
    assert_eq!(
        again.plugins.get("ledger").map(|p| p.generation),
        Some(generation)
    );

    // The .so replaced by a dangling symlink.
    std::fs::remove_dir(&file).expect("rmdir");
    std::os::unix::fs::symlink(dir.join("nowhere.so"), &file).expect("symlink");
    let set = again.rescan(&dirs);
    let serving = set.plugins.get("ledger").map(|p| p.generation);
    assert_eq!(
        serving,
        Some(generation),
        "a dangling symlink in its place: {set:?}"
    );
    assert!(set.refused.iter().any(|r| r.file == file), "{set:?}");

    // A good file again: a new generation.
    std::fs::remove_file(&file).expect("rm link");
    deploy(&dir, "libledger.so", &ledger_with_mark(2));
    let set = set.rescan(&dirs);
    let newer = set.plugins["ledger"].generation;
    assert!(newer > generation, "a good file loads as a new generation");

    // The directory cannot be listed (here: it became a file, ENOTDIR): what it served stays.
    let moved = s.path("plugins-moved");
    std::fs::rename(&dir, &moved).expect("move the directory away");
    std::fs::write(&dir, b"not a directory").expect("a file in its place");
    let unlisted = set.rescan(&dirs);
    let serving = unlisted.plugins.get("ledger").map(|p| p.generation);
    assert_eq!(
        serving,
        Some(newer),
        "an unlistable directory: {unlisted:?}"
    );
    assert!(unlisted.unreadable_dirs.contains_key(&dir), "{unlisted:?}");

    // A directory that is gone takes its plugins with it.
    std::fs::remove_file(&dir).expect("rm");
    let gone = unlisted.rescan(&dirs);
    assert!(!gone.plugins.contains_key("ledger"), "{gone:?}");
}

#[test]
fn a_restart_only_change_keeps_the_running_queue_while_new_filters_apply_to_it() {
    // Renaming the queue needs a restart; the filters added in the same edit apply at once,
    // to the queue the host still polls (not to the renamed one it does not poll yet).
    let s = Scratch::new();
    let dir = plugins_dir(&s);
    deploy(&dir, "libledger.so", &ledger_with_mark(1));
    let config = s.write(
        "iniesta.toml",
        &config_text(&s, &dir, "", &ledger_binding(&s, "first", r#"["Order.*"]"#)),
    );
    let host = Host::start(&config, s.path("host.log"));
    let text = config_text(
        &s,
        &dir,
        "queue_name = \"renamed\"",
        &ledger_binding(&s, "extra", r#"["Extra.*"]"#),
    )
    .replace(
        "filters = [\"Order.*\", \"Other.*\"]",
        "filters = [\"Order.*\", \"Other.*\", \"Extra.*\"]",
    );
    s.write("iniesta.toml", &text);
    s.wait_for("the filter update", LIMIT, || {
        host.log_text().contains("filter policy is updated")
    });
    s.wait_for("the pending key in the state file", LIMIT, || {
        host_state(&s, &host)["pending_restart"] == serde_json::json!(["sqs.queue_name"])
    });
    assert!(host.log_text().contains("only take effect after a restart"));
    common::publish(&config, &["Extra.Event", "{}"]);
    s.wait_for("Extra.Event on the running queue", LIMIT, || {
        !s.ledger("ledger.jsonl").is_empty()
    });
    assert_eq!(s.ledger("ledger.jsonl")[0]["label"], "extra");
    host.stop();
}

mod in_process {
    //! The reloader driven directly: what it keeps, applies and reports.

    use std::sync::Arc;

    use arc_swap::ArcSwap;
    use iniesta::config::Config;
    use iniesta::egress::Publisher;
    use iniesta::plugins::registry::PluginSet;
    use iniesta::plugins::watch::Reloader;

    use super::{config_text, deploy, ledger_binding, ledger_with_mark, plugins_dir};
    use crate::common::{self, Scratch};

    struct Running {
        reloader: Reloader,
        routes: Arc<ArcSwap<iniesta::route::Routes>>,
        _rt: tokio::runtime::Runtime,
    }

    fn start(config: &std::path::Path) -> Running {
        let rt = common::rt();
        let loaded: Config = iniesta::validate::load(config).expect("valid config");
        let broker = rt
            .block_on(iniesta::broker::open(&loaded))
            .expect("local broker");
        let set = PluginSet::scan(&loaded.plugin_dirs());
        let publisher = Arc::new(Publisher::new(&loaded, broker));
        let guards = iniesta::policy::Guards::new(None);
        let routes = iniesta::route::bind(
            &loaded,
            &set,
            Some(publisher.clone()),
            Some(rt.handle().clone()),
            &guards,
        )
        .expect("binds");
        let routes = Arc::new(ArcSwap::from_pointee(routes));
        let reloader = Reloader::new(
            config.to_path_buf(),
            loaded,
            set,
            routes.clone(),
            publisher,
            rt.handle().clone(),
            guards,
        );
        Running {
            reloader,
            routes,
            _rt: rt,
        }
    }

    fn timeout_secs(routes: &ArcSwap<iniesta::route::Routes>) -> u64 {
        routes.load().bindings()[0].timeout.as_secs()
    }

    #[test]
    fn restart_only_keys_keep_their_running_values_hot_keys_apply_and_both_are_reported() {
        let s = Scratch::new();
        let dir = plugins_dir(&s);
        deploy(&dir, "libledger.so", &ledger_with_mark(1));
        let binding = ledger_binding(&s, "first", r#"["Order.*"]"#);
        let path = s.write("iniesta.toml", &config_text(&s, &dir, "", &binding));
        let mut running = start(&path);
        let r = &mut running.reloader;
        assert_eq!(timeout_secs(&running.routes), 30);

        // Restart-only: the file says 3 pollers, the host keeps running 1 and says so.
        s.write(
            "iniesta.toml",
            &config_text(&s, &dir, "pollers = 3\nmax_messages = 4", &binding),
        );
        let report = r.reload();
        assert!(report.config_refused.is_empty(), "{report:?}");
        assert_eq!(
            report.needs_restart,
            vec!["sqs.max_messages", "sqs.pollers"]
        );
        assert_eq!(r.config().sqs.pollers, 1, "the running value stays");
        assert_eq!(r.config().sqs.max_messages, 10, "the running value stays");
        assert_eq!(r.pending_restart(), ["sqs.max_messages", "sqs.pollers"]);
        let state = iniesta::plugins::watch::running_hosts(r.config());
        let ours = state
            .iter()
            .find(|h| h.pid == std::process::id())
            .expect("this process's state file");
        assert_eq!(ours.pending_restart, ["sqs.max_messages", "sqs.pollers"]);

        // Hot only (the restart-only edit still in the file): the timeout applies.
        s.write(
            "iniesta.toml",
            &config_text(
                &s,
                &dir,
                "pollers = 3\nmax_messages = 4\nhandler_timeout_secs = 7",
                &binding,
            ),
        );
        let report = r.reload();
        assert!(report.config_applied, "{report:?}");
        assert_eq!(r.config().sqs.handler_timeout_secs, 7);
        assert_eq!(
            timeout_secs(&running.routes),
            7,
            "rebound with the new timeout"
        );
        assert_eq!(r.config().sqs.pollers, 1);
        assert_eq!(
            report.needs_restart,
            vec!["sqs.max_messages", "sqs.pollers"]
        );

        // Mixed: a new binding and a new lock timeout; only the binding applies.
        let two = format!(
            "{binding}{}",
            ledger_binding(&s, "second", r#"["Other.*"]"#)
        );
        s.write(
            "iniesta.toml",
            &format!(
                "{}[lock]\ntimeout_secs = 20\n",
                config_text(&s, &dir, "handler_timeout_secs = 7", &two)
            ),
        );
        let report = r.reload();
        assert!(report.config_applied, "{report:?}");
        assert_eq!(report.needs_restart, vec!["lock.timeout_secs"]);
        assert_eq!(r.config().bindings.len(), 2);
        assert_eq!(running.routes.load().bindings().len(), 2);
        assert_eq!(r.config().lock.timeout_secs, 10, "the running value stays");
        assert_eq!(
            r.config().sqs.pollers,
            1,
            "reverted in the file: nothing pending"
        );
        assert_eq!(r.pending_restart(), ["lock.timeout_secs"]);

        // Back to what runs: nothing pending any more.
        s.write(
            "iniesta.toml",
            &config_text(&s, &dir, "handler_timeout_secs = 7", &two),
        );
        let report = r.reload();
        assert!(report.needs_restart.is_empty(), "{report:?}");
        assert!(r.pending_restart().is_empty());
        r.remove_state();
    }

    #[test]
    fn an_invalid_config_changes_nothing() {
        let s = Scratch::new();
        let dir = plugins_dir(&s);
        deploy(&dir, "libledger.so", &ledger_with_mark(1));
        let binding = ledger_binding(&s, "first", r#"["Order.*"]"#);
        let path = s.write("iniesta.toml", &config_text(&s, &dir, "", &binding));
        let mut running = start(&path);
        let r = &mut running.reloader;
        let before = r.config().clone();
        // A valid hot change beside an invalid restart-only value: the whole file is refused.
        s.write(
            "iniesta.toml",
            &config_text(
                &s,
                &dir,
                "handler_timeout_secs = 7\nmax_messages = 50",
                &binding,
            ),
        );
        let report = r.reload();
        assert!(!report.config_applied);
        assert_eq!(
            report
                .config_refused
                .iter()
                .map(|p| p.key.as_str())
                .collect::<Vec<_>>(),
            ["sqs.max_messages"]
        );
        assert_eq!(r.config(), &before);
        assert_eq!(timeout_secs(&running.routes), 30);
        r.remove_state();
    }
}
