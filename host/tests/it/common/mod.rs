//! Shared helpers for the integration tests: real binaries, real plugins, real SQLite files.
#![allow(dead_code)]

use std::io::Read;

use ports::listening_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `iniesta` binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_iniesta"))
}

/// The directory the workspace's plugins are built into (`target/debug`).
pub fn plugin_dir() -> PathBuf {
    let dir = bin().parent().expect("binary has a parent").to_path_buf();
    for lib in ["libecho.so", "libledger.so", "libflaky.so", "libpanicky.so"] {
        assert!(
            dir.join(lib).exists(),
            "{} is missing: build the workspace first (cargo build --workspace), as scripts/test.sh does",
            dir.join(lib).display()
        );
    }
    dir
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host is in the workspace")
        .to_path_buf()
}

/// A scratch directory with a config file in it.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Write `iniesta.toml` with the given body after a standard header (local broker in the
    /// scratch dir, plugins from target/debug, short waits so tests run fast).
    pub fn config(&self, sqs_extra: &str, rest: &str) -> PathBuf {
        let visibility = if sqs_extra.contains("visibility_timeout") {
            ""
        } else {
            "visibility_timeout = 2"
        };
        let text = format!(
            r#"service = "receiver"
env = "test"
initialization = ["EVENT_POLLING", "SNS_PRODUCER"]

[broker]
kind = "local"
path = "broker.db"

[sns]
topic_arn = "arn:aws:sns:us-east-1:000000000000:global"

[sqs]
filters = ["Order.*", "hello.*", "Boom.*", "Slow.*", "Bad.*", "Flaky.*", "Orphan.*"]
wait_time_seconds = 1
{visibility}
dead_letter_queue = "iniesta-test-receiver-dlq"
{sqs_extra}

[plugins]
dirs = ["{plugins}"]

{rest}
"#,
            plugins = plugin_dir().display()
        );
        self.write("iniesta.toml", &text)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write file");
        path
    }

    /// Lines of a ledger file as JSON values (empty if it does not exist yet).
    pub fn ledger(&self, name: &str) -> Vec<serde_json::Value> {
        json_lines(&self.path(name))
    }

    /// Wait until `cond` holds, failing with `what` after `limit`.
    pub fn wait_for(&self, what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < limit, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The complete lines of a JSON-lines file that a plugin may still be appending to, as JSON
/// values (empty if the file does not exist yet). A last line without its newline is a write in
/// progress (a reader can see part of an append) and is left for the next read.
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{} line is not JSON ({e}): {l}", path.display()))
        })
        .collect()
}

/// The body of a ledger (or crashy) line, parsed as the JSON it holds.
pub fn body_of(line: &serde_json::Value) -> serde_json::Value {
    let text = line["body"]
        .as_str()
        .unwrap_or_else(|| panic!("a text body: {line}"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("a JSON body ({e}): {line}"))
}

/// The messages on a queue of the local broker that `config` names.
pub async fn queue_messages(
    config: &Path,
    queue: &str,
) -> Vec<iniesta::broker::local::StoredMessage> {
    let config = iniesta::config::Config::load_for_publishing(config).expect("config loads");
    let broker = iniesta::broker::local::LocalBroker::open(&config)
        .await
        .expect("broker opens");
    broker.messages(queue).await.expect("messages")
}

/// `iniesta` with none of the test environment's `INIESTA_*` variables: they would be config
/// overrides (`INIESTA_METRICS__LISTEN`, `INIESTA_ENV`) or change logging, and a test states
/// the ones it means.
pub fn bare_iniesta() -> Command {
    let mut cmd = Command::new(bin());
    for (name, _) in std::env::vars_os() {
        if name
            .to_string_lossy()
            .to_ascii_uppercase()
            .starts_with("INIESTA_")
        {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// Run `iniesta -c CONFIG ARGS...` to completion.
pub fn iniesta(config: &Path, args: &[&str]) -> Output {
    bare_iniesta()
        .arg("-c")
        .arg(config)
        .args(args)
        .env("INIESTA_LOG", "info")
        .output()
        .expect("iniesta runs")
}

/// `iniesta -c CONFIG ARGS...` with only the environment the test gives it: no acct variables
/// from outside, `env` on top.
pub fn iniesta_command(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = bare_iniesta();
    cmd.arg("-c")
        .arg(config)
        .args(args)
        .env("INIESTA_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("INIESTA_ACCT_FILE")
        .env_remove("INIESTA_ACCT_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// A multi-threaded tokio runtime for a test's SDK calls.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// Publish and return the printed message id.
pub fn publish(config: &Path, args: &[&str]) -> String {
    let mut all = vec!["publish"];
    all.extend_from_slice(args);
    let out = iniesta(config, &all);
    assert!(
        out.status.success(),
        "publish {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A running `iniesta run` whose stderr goes to a log file.
pub struct Host {
    pub child: Child,
    pub log: PathBuf,
}

impl Host {
    pub fn start(config: &Path, log: PathBuf) -> Host {
        Host::start_with_env(config, log, &[])
    }

    /// [`Host::start`] with more environment variables (`INIESTA_LOG` among them overrides
    /// the default `info`).
    pub fn start_with_env(config: &Path, log: PathBuf, env: &[(&str, &str)]) -> Host {
        let file = std::fs::File::create(&log).expect("log file");
        let child = bare_iniesta()
            .arg("-c")
            .arg(config)
            .arg("run")
            .env("INIESTA_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("iniesta run starts");
        let host = Host { child, log };
        let start = Instant::now();
        while !host.log_text().contains("consuming") {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "host did not start:\n{}",
                host.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        host
    }

    /// The port the host's ops endpoint (metrics, health, console) listens on: configure
    /// `listen = "127.0.0.1:0"` and the OS picks it; read from `/proc` (common/ports.rs).
    pub fn port(&self) -> u16 {
        listening_port(self.child.id(), "the host", Duration::from_secs(30))
    }

    pub fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        strip_ansi(&text)
    }

    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(
                    status.success(),
                    "host exited with {status}:\n{}",
                    self.log_text()
                );
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "host did not stop:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.log_text()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub mod aws;
pub mod capture;
pub mod inprocess;
pub mod load;
pub mod nats;
pub mod paced;
pub mod ports;
pub mod redis;

/// Build `fixtures/incompatible` against a copy of plugin-api whose version is 0.99.0.
pub fn build_incompatible_fixture() -> PathBuf {
    build_fixture("incompatible", "0.99.0")
}

/// Build `fixtures/aborting` (its profile sets `panic = "abort"`) against a copy of this
/// plugin-api with its own version, so the host loads it.
pub fn build_aborting_fixture() -> PathBuf {
    build_fixture("aborting", iniesta_plugin_api::ABI_VERSION)
}

/// The same plugin as [`build_aborting_fixture`], built with `panic = "unwind"` (the profile
/// overridden on the command line) into a target dir of its own.
pub fn build_aborting_fixture_unwinding() -> PathBuf {
    build_fixture_variant(
        "aborting",
        iniesta_plugin_api::ABI_VERSION,
        "unwind",
        &["--config", "profile.dev.panic=\"unwind\""],
    )
}

/// plugin-api's `[dependencies]` table as TOML, each `workspace = true` one resolved from the
/// workspace's table (the fixtures build a copy of plugin-api outside the workspace).
fn api_dependencies(root: &Path) -> String {
    let read = |path: PathBuf| -> toml::Table {
        toml::from_str(&std::fs::read_to_string(&path).expect("a manifest")).expect("TOML")
    };
    let api = read(root.join("plugin-api/Cargo.toml"));
    let workspace = read(root.join("Cargo.toml"));
    let shared = workspace["workspace"]["dependencies"]
        .as_table()
        .cloned()
        .unwrap_or_default();
    let mut out = toml::Table::new();
    for (name, spec) in api["dependencies"].as_table().cloned().unwrap_or_default() {
        let inherited = spec.get("workspace").and_then(toml::Value::as_bool) == Some(true);
        let mut spec = if inherited {
            shared[&name].clone()
        } else {
            spec
        };
        // A path (the workspace's own crates) means nothing outside the workspace.
        if let Some(table) = spec.as_table_mut() {
            table.remove("path");
        }
        out.insert(name, spec);
    }
    let mut manifest = toml::Table::new();
    manifest.insert("dependencies".into(), toml::Value::Table(out));
    toml::to_string(&manifest).expect("TOML")
}

/// Build the plugin in `host/tests/fixtures/NAME` (outside the workspace) against a copy of
/// plugin-api whose version is `api_version`; the path of the built `libNAME.so`.
pub fn build_fixture(name: &str, api_version: &str) -> PathBuf {
    build_fixture_variant(name, api_version, "", &[])
}

/// [`build_fixture`] with extra cargo arguments; a non-empty `variant` builds in a work and
/// target dir of its own, so variants built at once by parallel tests never overwrite each
/// other's `libNAME.so`.
pub fn build_fixture_variant(
    name: &str,
    api_version: &str,
    variant: &str,
    cargo_args: &[&str],
) -> PathBuf {
    let root = workspace_root();
    let (work_name, target) = if variant.is_empty() {
        (name.to_string(), root.join("target/fixtures/target"))
    } else {
        (
            format!("{name}-{variant}"),
            root.join(format!("target/fixtures/target-{variant}")),
        )
    };
    // Test binaries run in parallel: one builds, the others wait on the same cargo lock.
    let work = root.join("target/fixtures").join(work_name);
    let api = work.join("api");
    std::fs::create_dir_all(api.join("src")).expect("mkdir");
    std::fs::create_dir_all(work.join("src")).expect("mkdir");
    for entry in std::fs::read_dir(root.join("plugin-api/src")).expect("plugin-api sources") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), api.join("src").join(entry.file_name())).expect("copy source");
    }
    // lib.rs takes its crate docs from the plugin guide (`include_str!("../GUIDE.md")`).
    std::fs::copy(root.join("plugin-api/GUIDE.md"), api.join("GUIDE.md")).expect("copy guide");
    std::fs::write(
        api.join("Cargo.toml"),
        format!(
            "[package]\nname = \"iniesta-plugin-api\"\nversion = \"{api_version}\"\nedition = \"2021\"\n\n{}",
            api_dependencies(&root)
        ),
    )
    .expect("write api manifest");
    let fixture = root.join("host/tests/fixtures").join(name);
    std::fs::copy(fixture.join("Cargo.toml.in"), work.join("Cargo.toml")).expect("manifest");
    std::fs::copy(fixture.join("src/lib.rs"), work.join("src/lib.rs")).expect("source");
    // Same dependency versions as the workspace, so the build reuses what is cached.
    let _ = std::fs::copy(root.join("Cargo.lock"), work.join("Cargo.lock"));
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let status = std::process::Command::new(cargo)
        .args(["build", "--quiet", "--manifest-path"])
        .arg(work.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .args(cargo_args)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the {name} fixture failed");
    let so = target.join("debug").join(format!("lib{name}.so"));
    assert!(so.exists(), "{} was not built", so.display());
    so
}

/// A shared library on this system that is not an iniesta plugin (libz, libgcc_s or libm).
pub fn find_system_library() -> Option<PathBuf> {
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

/// Run `command` to its end; its stdout, failing the test with its stderr when it fails.
pub fn stdout_of(command: &mut std::process::Command) -> Vec<u8> {
    let out = command.output().expect("the command runs");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `GET path` on a loopback port: (status, body), or `None` if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    std::io::Write::write_all(
        &mut stream,
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}
