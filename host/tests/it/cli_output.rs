//! Output for scripts and people: `--output json` on `plugins` and `route`, `publish --file`'s
//! summary line instead of a log line per event, and printing commands that end quietly when
//! their reader goes away (`| head`).

use crate::common;

use std::io::Read;
use std::process::{Command, Stdio};

use common::{iniesta, plugin_dir, Scratch};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn plugins_as_json_lists_loaded_refused_and_missing_plugins() {
    let s = Scratch::new();
    let dir = s.path("plugins");
    std::fs::create_dir(&dir).expect("dir");
    std::fs::copy(plugin_dir().join("libecho.so"), dir.join("libecho.so")).expect("copy echo");
    let echo = std::fs::read(plugin_dir().join("libecho.so")).expect("read echo");
    std::fs::write(dir.join("libhalf.so"), &echo[..echo.len() / 2]).expect("write");
    let config = s.write(
        "iniesta.toml",
        &format!(
            "service = \"receiver\"\n[broker]\nkind = \"local\"\npath = \"broker.db\"\n\
             [sns]\ntopic_arn = \"arn:aws:sns:us-east-1:000000000000:global\"\n\
             [sqs]\nfilters = [\"Order.*\", \"Gone.*\"]\n[plugins]\ndirs = [\"{}\"]\n\
             [[bindings]]\nevents = [\"Order.*\"]\nplugin = \"echo\"\n\
             [[bindings]]\nevents = [\"Gone.*\"]\nplugin = \"gone\"\n",
            dir.display()
        ),
    );
    let out = iniesta(&config, &["plugins", "--output", "json"]);
    // A refused file still fails the command, so deploy scripts notice.
    assert!(!out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&out)).expect("one JSON object on stdout");
    let plugins = json["plugins"].as_array().expect("plugins");
    assert_eq!(plugins.len(), 1, "{json}");
    assert_eq!(plugins[0]["name"], "echo");
    assert_eq!(plugins[0]["handlers"], serde_json::json!(["echo"]));
    assert_eq!(plugins[0]["panic"], "unwind");
    let refused = json["refused"].as_array().expect("refused");
    assert_eq!(refused.len(), 1, "{json}");
    assert!(
        refused[0]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("libhalf.so")),
        "{json}"
    );
    assert_eq!(json["missing"][0]["plugin"], "gone", "{json}");

    // The table for people: aligned columns under one header.
    let table = stdout(&iniesta(&config, &["plugins"]));
    let header = table.lines().next().unwrap_or_default();
    let row = table
        .lines()
        .find(|l| l.starts_with("echo "))
        .unwrap_or_else(|| panic!("no echo row:\n{table}"));
    assert!(header.starts_with("NAME "), "{table}");
    assert_eq!(
        header.find("FILE"),
        row.find(dir.to_str().expect("utf-8")),
        "the FILE column lines up:\n{table}"
    );
}

#[test]
fn route_as_json_gives_each_bindings_verdict() {
    let s = Scratch::new();
    let config = s.config(
        "",
        "[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"echo\"\n\
         [[bindings]]\ndefault = true\nplugin = \"echo\"\n",
    );
    let out = iniesta(
        &config,
        &["route", "Order.Created.shop", "{}", "--output", "json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(json["outcome"], "taken");
    assert_eq!(json["bindings"][0]["status"], "takes");
    assert_eq!(json["bindings"][1]["status"], "not_needed");
    assert_eq!(json["takers"], serde_json::json!(["bindings[0] echo"]));
}

#[test]
fn publish_file_prints_ids_and_one_summary_line() {
    let s = Scratch::new();
    let config = s.config(
        "",
        "[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"echo\"\n",
    );
    let lines: Vec<String> = (0..25)
        .map(|n| format!("{{\"event\":\"Order.Created\",\"body\":{{\"n\":{n}}}}}"))
        .collect();
    let file = s.write("events.jsonl", &lines.join("\n"));
    let out = iniesta(
        &config,
        &["publish", "--file", file.to_str().expect("utf-8")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).lines().count(),
        25,
        "one `ID EVENT` line per event"
    );
    let log = stderr(&out);
    assert!(
        log.contains("published 25 of 25 event(s) to the topic in "),
        "{log}"
    );
    assert!(
        !log.contains("INFO published"),
        "no log line per event at the default level:\n{log}"
    );
}

#[test]
fn a_printing_command_ends_quietly_when_its_reader_leaves() {
    let s = Scratch::new();
    let config = s.config(
        "",
        "[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"echo\"\n",
    );
    // `config show` prints far more than the pipe's first read; the reader closes at once.
    let mut child = Command::new(common::bin())
        .arg("-c")
        .arg(&config)
        .args(["config", "show"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    drop(child.stdout.take());
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait().expect("waits");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("Broken pipe"), "{err}");
    // Killed by SIGPIPE, as `head` expects of a Unix tool (or done before it noticed).
    use std::os::unix::process::ExitStatusExt;
    assert!(
        status.success() || status.signal() == Some(libc::SIGPIPE),
        "{status:?}: {err}"
    );
}
