//! Loading real cdylib plugins: side by side, overrides, refusals, panics.

use crate::common;

use std::path::{Path, PathBuf};

use abi_stable::std_types::{RString, RVec};
use common::{plugin_dir, Scratch};
use iniesta::plugins::{ConstructError, LoadError, PluginSet};
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
    iniesta::plugins::context::HostContext::boxed(None, None, "test", "test", "test", None)
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
    assert!(
        matches!(&err, ConstructError::Refused(why) if why.contains("missing string key `path`")),
        "{err:?}"
    );
    let Err(err) = set.plugins["echo"].new_handler("nope", "") else {
        panic!("unknown handler")
    };
    assert!(
        matches!(&err, ConstructError::Refused(why) if why.contains("no handler `nope`")),
        "{err:?}"
    );
    let Err(err) = set.plugins["flaky"].new_handler("flaky", r#"{"mode":"sometimes"}"#) else {
        panic!("bad mode")
    };
    assert!(
        matches!(&err, ConstructError::Refused(why) if why.contains("sometimes")),
        "{err:?}"
    );
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
    let real = common::find_system_library().expect("a system shared library to copy");
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

#[test]
fn a_plugin_built_with_panic_abort_is_refused_in_the_host_and_runs_only_isolated() {
    let aborting = common::build_aborting_fixture();
    let s = Scratch::new();
    let dir = s.path("plugins");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let file = dir.join("libaborting.so");
    std::fs::copy(&aborting, &file).expect("copy");
    let out_file = s.path("out.txt");
    let binding = format!(
        "[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"aborting\"\nconfig = {{ path = \"{}\" }}\n",
        out_file.display()
    );
    let with_dir = |text: String| {
        text.replace(
            &format!("dirs = [\"{}\"]", plugin_dir().display()),
            &format!("dirs = [\"{}\"]", dir.display()),
        )
    };
    // `plugins check` reports it, with the fix.
    let config = s.config("", &binding);
    std::fs::write(
        &config,
        with_dir(std::fs::read_to_string(&config).expect("config")),
    )
    .expect("config");
    let out = common::iniesta(&config, &["plugins", "check", &file.display().to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "check must fail: {text}");
    assert!(
        text.contains("panic = \"abort\"") && text.contains("panic = \"unwind\""),
        "names the strategy and the fix: {text}"
    );
    // Bound in the host: a config error naming the fix and the alternative.
    let out = common::iniesta(&config, &["config", "check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "bound in-process it is refused: {err}"
    );
    assert!(
        err.contains("bindings[0]")
            && err.contains("panic = \"unwind\"")
            && err.contains("plugins.isolate"),
        "{err}"
    );
    // Isolated: it runs, and its abort ends only its worker process.
    let isolated = s.config(
        "",
        &format!("[plugins.isolate]\nnames = [\"aborting\"]\nmax_backoff_secs = 1\n\n{binding}"),
    );
    std::fs::write(
        &isolated,
        with_dir(std::fs::read_to_string(&isolated).expect("config")),
    )
    .expect("config");
    let mut host = common::Host::start(&isolated, s.path("host.log"));
    common::publish(&isolated, &["Order.Calm", "\"one\""]);
    s.wait_for(
        "the first message",
        std::time::Duration::from_secs(60),
        || std::fs::read_to_string(&out_file).is_ok_and(|t| t.lines().count() == 1),
    );
    common::publish(&isolated, &["Order.Boom", "\"please panic\""]);
    s.wait_for(
        "the worker's abort",
        std::time::Duration::from_secs(60),
        || host.log_text().contains("SIGABRT"),
    );
    common::publish(&isolated, &["Order.Calm", "\"two\""]);
    s.wait_for(
        "the message after the abort",
        std::time::Duration::from_secs(60),
        || std::fs::read_to_string(&out_file).is_ok_and(|t| t.contains("two")),
    );
    assert!(host.is_alive(), "the host survives its plugin's abort");
    host.stop();
}

/// `mode` on `path`.
fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A directory `path` with `mode` (created with its parents).
fn dir_with_mode(path: &Path, mode: u32) -> PathBuf {
    std::fs::create_dir_all(path).expect("mkdir");
    chmod(path, mode);
    path.to_path_buf()
}

/// The one refusal of scanning `dir`, which must be `Insecure` and name `fault`.
fn assert_refused_for(dir: &Path, fault: &Path) {
    let set = PluginSet::scan(&[dir.to_path_buf()]);
    assert!(
        set.plugins.is_empty(),
        "{} must not load: {:?}",
        dir.display(),
        set.plugins.keys()
    );
    assert_eq!(set.refused.len(), 1, "{:?}", set.refused);
    let error = &set.refused[0].error;
    assert!(matches!(error, LoadError::Insecure { .. }), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains(&fault.display().to_string()),
        "names {}: {text}",
        fault.display()
    );
}

#[test]
fn plugin_files_and_directories_are_trusted_only_along_their_real_path() {
    use std::os::unix::fs::{chown, symlink};
    const OTHER_UID: u32 = 4242;
    let s = Scratch::new();
    let root = s.path("trust");
    std::fs::create_dir_all(&root).expect("mkdir");
    let echo = plugin_dir().join("libecho.so");

    // A plugin directory given as a symlink to a directory inside a world-writable one.
    let open = dir_with_mode(&root.join("open"), 0o777);
    let real = dir_with_mode(&open.join("plugins"), 0o755);
    std::fs::copy(&echo, real.join("libecho.so")).expect("copy");
    let linked = root.join("linked-plugins");
    symlink(&real, &linked).expect("symlink");
    assert_refused_for(&linked, &open);

    // A symlinked .so whose real directory is world-writable.
    let world = dir_with_mode(&root.join("world"), 0o777);
    std::fs::copy(&echo, world.join("libecho.so")).expect("copy");
    let safe = dir_with_mode(&root.join("safe"), 0o755);
    symlink(world.join("libecho.so"), safe.join("libecho.so")).expect("symlink");
    assert_refused_for(&safe, &world);

    // A group-writable directory up the path (no sticky bit) whose group is not private to
    // its owner: gid 1 (`daemon`) is user daemon's primary group, so not root's alone.
    let group = dir_with_mode(&root.join("group"), 0o775);
    chown(&group, None, Some(DAEMON_GID)).expect("chgrp (the tests run as root)");
    let below = dir_with_mode(&group.join("plugins"), 0o755);
    std::fs::copy(&echo, below.join("libecho.so")).expect("copy");
    assert_refused_for(&below, &group);
    let set = PluginSet::scan(std::slice::from_ref(&below));
    let text = set.refused[0].error.to_string();
    assert!(
        text.contains("umask 002") && text.contains("chmod g-w"),
        "{text}"
    );

    // A directory up the path owned by another user.
    let theirs = dir_with_mode(&root.join("theirs"), 0o755);
    let inside = dir_with_mode(&theirs.join("plugins"), 0o755);
    std::fs::copy(&echo, inside.join("libecho.so")).expect("copy");
    chown(&theirs, Some(OTHER_UID), Some(OTHER_UID)).expect("chown (the tests run as root)");
    assert_refused_for(&inside, &theirs);

    // The file itself owned by another user.
    let mine = dir_with_mode(&root.join("mine"), 0o755);
    let file = mine.join("libecho.so");
    std::fs::copy(&echo, &file).expect("copy");
    chown(&file, Some(OTHER_UID), Some(OTHER_UID)).expect("chown");
    assert_refused_for(&mine, &file);

    // The plugin directory itself writable by others, even with the sticky bit: anyone could
    // add a plugin to it.
    let shared = dir_with_mode(&root.join("shared"), 0o1777);
    std::fs::copy(&echo, shared.join("libecho.so")).expect("copy");
    assert_refused_for(&shared, &shared);

    // A root-owned sticky world-writable directory up the path (like /tmp) is fine.
    let sticky = dir_with_mode(&root.join("sticky"), 0o1777);
    let fine = dir_with_mode(&sticky.join("plugins"), 0o755);
    std::fs::copy(&echo, fine.join("libecho.so")).expect("copy");
    let set = PluginSet::scan(&[fine]);
    assert!(set.refused.is_empty(), "{:?}", set.refused);
    assert!(set.plugins.contains_key("echo"));
}

/// The primary group of user `daemon` (uid 1) on Debian images; see the assertion below.
const DAEMON_GID: u32 = 1;

/// What `cargo build` and `git clone` leave under `umask 002` (user private groups, the default
/// on Debian, Ubuntu and Fedora desktops): group-writable directories and `.so` files whose
/// group is the owner's private group. That is accepted; a shared group is not.
#[test]
fn group_writable_entries_are_accepted_only_when_the_group_is_private_to_the_owner() {
    use std::os::unix::fs::{chown, MetadataExt};
    // The facts this test relies on: root's group (gid 0) lists no members and is no other
    // user's primary group; gid 1 is another user's (daemon's) primary group.
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    let primary_of = |gid: u32| -> Vec<String> {
        passwd
            .lines()
            .filter(|l| l.split(':').nth(3) == Some(gid.to_string().as_str()))
            .filter_map(|l| l.split(':').next().map(str::to_string))
            .collect()
    };
    assert_eq!(primary_of(0), vec!["root".to_string()]);
    assert!(primary_of(DAEMON_GID).iter().any(|u| u != "root"));
    let group = std::fs::read_to_string("/etc/group").expect("/etc/group");
    let root_group = group
        .lines()
        .find(|l| l.starts_with("root:"))
        .expect("group root");
    assert!(
        root_group.ends_with(':'),
        "root's group lists no members: {root_group}"
    );

    let s = Scratch::new();
    let project = dir_with_mode(&s.path("project"), 0o775);
    let release = dir_with_mode(&project.join("target/release"), 0o775);
    chmod(&project.join("target"), 0o775);
    let file = release.join("libecho.so");
    std::fs::copy(plugin_dir().join("libecho.so"), &file).expect("copy");
    chmod(&file, 0o775);
    for entry in [&project, &project.join("target"), &release, &file] {
        chown(entry, Some(0), Some(0)).expect("chown root:root (the tests run as root)");
        assert_eq!(std::fs::metadata(entry).expect("stat").gid(), 0);
    }
    let set = PluginSet::scan(std::slice::from_ref(&release));
    assert!(set.refused.is_empty(), "{:?}", set.refused);
    assert!(set.plugins.contains_key("echo"));

    // The same tree with the plugin directory's group shared with another user: refused.
    chown(&release, None, Some(DAEMON_GID)).expect("chgrp");
    assert_refused_for(&release, &release);
    // World-writable stays refused whatever the group.
    chown(&release, None, Some(0)).expect("chgrp back");
    chmod(&release, 0o777);
    assert_refused_for(&release, &release);
}

#[test]
fn a_private_copy_directory_someone_else_made_first_is_never_used() {
    use std::os::unix::fs::{chown, MetadataExt};
    // The name the host used to pick, planted first by another user with mode 0777.
    let planted = std::env::temp_dir().join(format!("iniesta-plugins-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&planted);
    dir_with_mode(&planted, 0o777);
    chown(&planted, Some(4242), Some(4242)).expect("chown (the tests run as root)");
    let before = std::fs::metadata(&planted).expect("stat");
    let s = Scratch::new();
    let dir = s.path("plugins");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::copy(plugin_dir().join("libecho.so"), dir.join("libecho.so")).expect("copy");
    let set = PluginSet::scan(std::slice::from_ref(&dir));
    assert!(set.plugins.contains_key("echo"), "{:?}", set.refused);
    let after = std::fs::metadata(&planted).expect("stat");
    let _ = std::fs::remove_dir_all(&planted);
    assert_eq!(
        (after.mtime(), after.mtime_nsec()),
        (before.mtime(), before.mtime_nsec()),
        "nothing was written into the planted directory"
    );
}
