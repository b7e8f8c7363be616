//! Plugin authors: scaffold → test → build → `plugins check` → bind → handle, end to end.

use crate::common;

use std::path::{Path, PathBuf};

use std::process::Command;
use std::time::Duration;

use common::Scratch;

/// One generated crate is built at a time: every one has its plugin-api copy at the same
/// relative path (`vendor/iniesta-plugin-api`), so cargo gives both copies one artifact name
/// in the shared target dir, and two builds at once replace each other's rlib mid-build.
static CARGO: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Build a generated crate with cargo (shared target dir, pinned to the workspace's lock file).
fn cargo(dir: &Path, args: &[&str]) {
    let _one_at_a_time = CARGO
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let root = common::workspace_root();
    let _ = std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock"));
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let out = Command::new(cargo)
        .args(args)
        .arg("--quiet")
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", root.join("target/scaffold-target"))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo {args:?} in {} failed:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn scaffold_build_and_run(dir: PathBuf, name: &str) {
    let s = Scratch::new();
    let out = Command::new(common::bin())
        .args(["new-plugin", name, "--dir"])
        .arg(&dir)
        .output()
        .expect("new-plugin runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let steps = String::from_utf8_lossy(&out.stdout);
    assert!(
        steps.contains("cargo build --release") && steps.contains(&format!("plugin = \"{name}\"")),
        "{steps}"
    );
    // Nothing points into the checkout the binary was built from: the crate carries its own
    // copy of the plugin-api, pinned by version.
    let checkout = common::workspace_root();
    let checkout = checkout.to_str().expect("utf-8 path");
    for file in ["Cargo.toml", "vendor/iniesta-plugin-api/Cargo.toml"] {
        let text = std::fs::read_to_string(dir.join(file)).expect("generated file");
        assert!(
            !text.contains(checkout),
            "{file} names the checkout:\n{text}"
        );
        assert!(
            !text.contains("workspace = true"),
            "{file} is standalone:\n{text}"
        );
    }
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("manifest");
    assert!(
        manifest.contains(&format!(
            "iniesta-plugin-api = {{ version = \"={}\", path = \"vendor/iniesta-plugin-api\" }}",
            iniesta_plugin_api::ABI_VERSION
        )),
        "{manifest}"
    );
    // The generated test passes as generated, then the library builds.
    cargo(&dir, &["test"]);
    cargo(&dir, &["build"]);
    let lib = common::workspace_root()
        .join("target/scaffold-target/debug")
        .join(format!("lib{}.so", name.replace('-', "_")));
    // Deploy it to a plugin directory of its own, the safe way.
    let plugins = s.path("plugins");
    std::fs::create_dir_all(&plugins).expect("mkdir");
    let file = plugins.join(lib.file_name().expect("file name"));
    std::fs::copy(&lib, plugins.join(".tmp")).expect("copy");
    std::fs::rename(plugins.join(".tmp"), &file).expect("rename");
    let out = Command::new(common::bin())
        .args(["plugins", "check"])
        .arg(&file)
        .output()
        .expect("runs");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains(&format!("plugin    {name}"))
            && report.contains(&format!("handlers  {name}")),
        "{report}"
    );
    // Bind it and watch it handle an event.
    let config = s.write(
        "iniesta.toml",
        &format!(
            "service = \"receiver\"\ninitialization = [\"QUEUE_POLLING\"]\n[broker]\npath = \"b.db\"\n[sqs]\nwait_time_seconds = 1\n\
             [plugins]\ndirs = [\"{}\"]\n[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"{name}\"\nconfig = {{ greeting = \"hi\" }}\n",
            plugins.display()
        ),
    );
    let out = common::iniesta(&config, &["config", "check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host = common::Host::start(&config, s.path("host.log"));
    common::publish(&config, &["Order.Created", r#"{"id":1}"#, "--queue"]);
    s.wait_for(
        "the new handler's log line",
        Duration::from_secs(60),
        || {
            host.log_text()
                .contains(r#"hi: Order.Created.receiver {"id":1}"#)
        },
    );
    host.stop();
}

#[test]
fn a_scaffolded_plugin_outside_the_workspace_builds_tests_and_runs() {
    let outside = tempfile::tempdir().expect("tempdir");
    scaffold_build_and_run(outside.path().join("order-greeter"), "order-greeter");
}

#[test]
fn a_scaffolded_plugin_inside_the_workspace_builds_tests_and_runs() {
    let inside = common::workspace_root().join("target/scaffold-inside");
    let dir = inside.join("inner_greeter");
    let _ = std::fs::remove_dir_all(&dir);
    scaffold_build_and_run(dir.clone(), "inner_greeter");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plugins_check_explains_refusals() {
    let incompatible = common::build_incompatible_fixture();
    let out = Command::new(common::bin())
        .args(["plugins", "check"])
        .arg(&incompatible)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("0.99.0")
            && text.contains(iniesta_plugin_api::ABI_VERSION)
            && text.contains("rebuild"),
        "{text}"
    );

    let s = Scratch::new();
    let not_plugin = s.write("libnotaplugin.so", "");
    std::fs::write(&not_plugin, b"\x7fELF not really").expect("write");
    let out = Command::new(common::bin())
        .args(["plugins", "check"])
        .arg(&not_plugin)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("libnotaplugin.so"), "{text}");

    let ok = Command::new(common::bin())
        .args(["plugins", "check"])
        .arg(common::plugin_dir().join("libecho.so"))
        .output()
        .expect("runs");
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("plugin    echo"));

    let out = Command::new(common::bin())
        .args(["new-plugin", "Bad Name"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid plugin name"));
}

/// Issue 24: a plugin crate without `crate-type = ["cdylib"]` builds "fine" (an rlib only).
/// Bound, it is named with the one-line fix by `config check`, and `plugins check` says the
/// same of its crate directory and of the `.so` that was never built.
#[test]
fn a_crate_built_without_cdylib_is_named_with_the_fix() {
    let outside = tempfile::tempdir().expect("tempdir");
    let krate = outside.path().join("greeter");
    std::fs::create_dir_all(krate.join("src")).expect("mkdir");
    let manifest = krate.join("Cargo.toml");
    std::fs::write(
        &manifest,
        "[package]\nname = \"greeter\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .expect("write");
    std::fs::write(krate.join("src/lib.rs"), "pub fn hello() {}\n").expect("write");
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let out = Command::new(cargo)
        .args(["build", "--release", "--offline", "--quiet"])
        .current_dir(&krate)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let release = krate.join("target/release");
    assert!(
        release.join("libgreeter.rlib").is_file(),
        "cargo built the rlib"
    );
    assert!(
        !release.join("libgreeter.so").exists(),
        "and no shared library"
    );

    let s = Scratch::new();
    let config = s.write(
        "iniesta.toml",
        &format!(
            "service = \"receiver\"\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:000000000000:global\"\n[sqs]\nfilters = [\"Order.*\"]\n[plugins]\ndirs = [\"{}\"]\n[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"greeter\"\n",
            release.display()
        ),
    );
    let fix = r#"crate-type = ["cdylib", "rlib"]"#;
    let out = common::iniesta(&config, &["config", "check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bindings[0].plugin")
            && err.contains(&manifest.display().to_string())
            && err.contains(fix),
        "{err}"
    );
    let out = common::iniesta(&config, &["plugins"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("MISSING `greeter`") && text.contains(fix),
        "{text}"
    );

    for path in [krate.clone(), release.join("libgreeter.so")] {
        let out = Command::new(common::bin())
            .args(["plugins", "check"])
            .arg(&path)
            .output()
            .expect("runs");
        assert!(!out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("not loadable") && text.contains("libgreeter.rlib") && text.contains(fix),
            "{}: {text}",
            path.display()
        );
    }
}
