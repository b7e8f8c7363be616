//! `iniesta config check` (and `run`) refuse every bad config with the key and the fix.

use crate::common;

use common::{iniesta, plugin_dir, Scratch};

const HEADER: &str = "service = \"receiver\"\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:000000000000:global\"\n[sqs]\nfilters = [\"Order.*\"]\n";

fn check(s: &Scratch, body: &str) -> (bool, String) {
    let path = s.write("iniesta.toml", body);
    let out = iniesta(&path, &["config", "check"]);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn plugins() -> String {
    format!("[plugins]\ndirs = [\"{}\"]\n", plugin_dir().display())
}

#[test]
fn a_good_config_passes() {
    let s = Scratch::new();
    let (ok, out) = check(
        &s,
        &format!(
            "{HEADER}{}[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"echo\"\n",
            plugins()
        ),
    );
    assert!(ok, "{out}");
    assert!(out.contains("ok (1 binding(s)"), "{out}");
}

#[test]
fn each_error_names_its_key() {
    let s = Scratch::new();
    let p = plugins();
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("unknown plugin", format!("{HEADER}{p}[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"ech\"\n"),
            vec!["bindings[0].plugin", "no plugin named `ech`", "loaded: ", "echo"]),
        ("unknown handler", format!("{HEADER}{p}[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"panicky\"\nhandler = \"nap\"\n"),
            vec!["bindings[0].handler", "no handler `nap`", "panicky, sleepy"]),
        ("ambiguous handler", format!("{HEADER}{p}[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"panicky\"\n"),
            vec!["bindings[0].handler", "several handlers"]),
        ("glob that can't match", format!("{HEADER}{p}[[bindings]]\nevents = [\"Payment.*\"]\nplugin = \"echo\"\n"),
            vec!["bindings[0].events[0]", "can never match", "sqs.filters"]),
        ("no default and no binding", format!("{HEADER}{p}"),
            vec!["bindings", "no binding and no default"]),
        ("missing plugin dir", format!("{HEADER}[plugins]\ndirs = [\"does/not/exist\"]\n[[bindings]]\ndefault = true\nplugin = \"echo\"\n"),
            vec!["plugins.dirs[0]", "does not exist"]),
        ("constructor refuses config", format!("{HEADER}{p}[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"ledger\"\n"),
            vec!["bindings[0].config", "missing string key `path`"]),
        ("misspelt isolated plugin", format!("{HEADER}{p}[plugins.isolate]\nnames = [\"ech\"]\n[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"echo\"\n"),
            vec!["plugins.isolate.names[0]", "no plugin named `ech`"]),
        ("unknown key", format!("{HEADER}max_mesages = 3\n{p}"),
            vec!["max_mesages"]),
        ("bad TOML", "service = \"receiver\n".to_string(),
            vec!["iniesta.toml"]),
        ("out of range", format!("{HEADER}max_messages = 50\n{p}[[bindings]]\ndefault = true\nplugin = \"echo\"\n"),
            vec!["sqs.max_messages", "1..=10"]),
        ("two defaults", format!("{HEADER}{p}[[bindings]]\ndefault = true\nplugin = \"echo\"\n[[bindings]]\ndefault = true\nplugin = \"echo\"\n"),
            vec!["only one may"]),
        ("event polling without filters", format!("service = \"receiver\"\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:0:global\"\n{p}[[bindings]]\ndefault = true\nplugin = \"echo\"\n"),
            vec!["sqs.filters", "EVENT_POLLING"]),
        ("missing topic", format!("service = \"receiver\"\n[sqs]\nfilters = [\"A.*\"]\n{p}[[bindings]]\ndefault = true\nplugin = \"echo\"\n"),
            vec!["sns.topic_arn", "required"]),
        ("star without a dot", format!("service = \"receiver\"\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:0:global\"\n[sqs]\nfilters = [\"Order*\"]\n{p}[[bindings]]\ndefault = true\nplugin = \"echo\"\n"),
            vec!["sqs.filters[0]", "trailing `.*`"]),
        ("sentry without a DSN", format!("{HEADER}{p}[[bindings]]\ndefault = true\nplugin = \"echo\"\n[errors.sentry]\n"),
            vec!["errors.sentry.dsn", "SENTRY_DSN"]),
        ("not a DSN", format!("{HEADER}{p}[[bindings]]\ndefault = true\nplugin = \"echo\"\n[errors.sentry]\ndsn = \"sentry-key-abc\"\n"),
            vec!["errors.sentry.dsn", "not a Sentry DSN"]),
        ("sentry sample rate", format!("{HEADER}{p}[[bindings]]\ndefault = true\nplugin = \"echo\"\n[errors.sentry]\ndsn = \"https://k@o1.ingest.sentry.io/2\"\nsample_rate = 1.5\n"),
            vec!["errors.sentry.sample_rate", "between 0.0 and 1.0"]),
        ("sentry tag source", format!("{HEADER}{p}[[bindings]]\ndefault = true\nplugin = \"echo\"\n[errors.sentry]\ndsn = \"https://k@o1.ingest.sentry.io/2\"\ntags = {{ \"body.a..b\" = \"t\" }}\nuser_id = \"attributes.\"\n"),
            vec!["errors.sentry.tags.body.a..b", "errors.sentry.user_id"]),
        ("sentry tag name", format!("{HEADER}{p}[[bindings]]\ndefault = true\nplugin = \"echo\"\n[errors.sentry]\ndsn = \"https://k@o1.ingest.sentry.io/2\"\ntags = {{ \"region\" = \"the region!\" }}\n"),
            vec!["errors.sentry.tags.region", "not a Sentry tag name"]),
        ("batch settings on a sync handler", format!("{HEADER}{p}[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"echo\"\n[bindings.batch]\nmax_size = 5\n"),
            vec!["bindings[0].batch", "is not a batch handler (it is a sync handler)"]),
        ("batch size out of range", format!("{HEADER}{p}[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"shapes\"\nhandler = \"rows\"\n[bindings.batch]\nmax_size = 0\nmax_wait_ms = 60000\n"),
            vec!["bindings[0].batch.max_size", "between 1 and 1000", "bindings[0].batch.max_wait_ms", "above 10000"]),
        ("inline async handler", format!("{HEADER}{p}[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"shapes\"\nhandler = \"waiter\"\ninline = true\n"),
            vec!["bindings[0].inline", "is an async handler", "remove it"]),
        ("batch handler isolated", format!("{HEADER}{p}[plugins.isolate]\nnames = [\"shapes\"]\n[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"shapes\"\nhandler = \"rows\"\n"),
            vec!["bindings[0]", "`rows` is a batch handler, which does not run isolated"]),
        ("inner wildcard filter", format!("service = \"receiver\"\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:0:global\"\n[sqs]\nfilters = [\"Or*er\"]\n{p}[[bindings]]\ndefault = true\nplugin = \"echo\"\n"),
            vec!["sqs.filters"]),
    ];
    for (name, body, needles) in cases {
        let (ok, out) = check(&s, &body);
        assert!(!ok, "{name}: expected failure, got:\n{out}");
        for needle in needles {
            assert!(out.contains(needle), "{name}: `{needle}` not in:\n{out}");
        }
    }
}

#[test]
fn a_missing_config_file_says_how_to_fix_it() {
    let s = Scratch::new();
    let out = iniesta(&s.path("nope.toml"), &["config", "check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nope.toml") && err.contains("-c FILE"),
        "{err}"
    );
}

/// A value of the wrong type is refused with the file, the line and the dotted key (issue 24:
/// the parser's own message named neither the key nor, for nested tables, where it was).
#[test]
fn a_type_error_names_the_file_line_and_key() {
    let s = Scratch::new();
    let path = s.write(
        "iniesta.toml",
        &format!("{HEADER}handler_timeout_secs = \"x\"\n"),
    );
    let out = iniesta(&path, &["config", "check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}: line 6: sqs.handler_timeout_secs: invalid type: string \"x\", expected u64",
            path.display()
        )),
        "{err}"
    );
}

#[test]
fn run_refuses_a_bad_config_too() {
    let s = Scratch::new();
    let path = s.write(
        "iniesta.toml",
        &format!(
            "{HEADER}{}[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"ech\"\n",
            plugins()
        ),
    );
    let out = iniesta(&path, &["run"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bindings[0].plugin"));
}

#[test]
fn printing_commands_match_the_python_iniesta() {
    let s = Scratch::new();
    let path = s.write(
        "iniesta.toml",
        "service = \"receiver\"\ninitialization = [\"EVENT_POLLING\", \"SNS_PRODUCER\"]\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:0:global\"\n[sqs]\nfilters = [\"some.*\", \"exact.event\"]\n",
    );
    let out = iniesta(&path, &["filter-policies"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"iniesta_pass":[{"prefix":"some."},"exact.event"]}"#
    );
    let out = iniesta(&path, &["initialization-type"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "SNS_PRODUCER|EVENT_POLLING"
    );
}

#[test]
fn the_shipped_configs_are_valid() {
    let root = common::workspace_root();
    let mut files = vec![root.join("iniesta.toml")];
    for entry in std::fs::read_dir(root.join("examples")).expect("examples dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) == Some("toml") {
            files.push(path);
        }
    }
    assert!(files.len() >= 4, "{files:?}");
    for file in files {
        let config = iniesta::config::Config::read(&file).unwrap_or_else(|e| panic!("{e}"));
        // Plugin directories may not be built yet (target/release) or be the user's own.
        let problems: Vec<_> = config
            .problems()
            .into_iter()
            .filter(|p| !p.key.starts_with("plugins.dirs["))
            .collect();
        assert!(problems.is_empty(), "{}: {problems:?}", file.display());
    }
}

#[test]
fn a_bad_sentry_dsn_is_refused_without_repeating_it() {
    let s = Scratch::new();
    let (ok, out) = check(
        &s,
        &format!(
            "{HEADER}{}[[bindings]]\ndefault = true\nplugin = \"echo\"\n[errors.sentry]\ndsn = \"https//secret-key-xyz@o1.ingest.sentry.io/2\"\n",
            plugins()
        ),
    );
    assert!(!ok, "{out}");
    assert!(out.contains("errors.sentry.dsn"), "{out}");
    assert!(
        !out.contains("secret-key-xyz"),
        "the DSN holds a key: {out}"
    );
}

/// A batch that can never fill (its messages hold concurrency permits while they gather) is
/// allowed but warned about, naming both keys and the fix.
#[test]
fn a_batch_larger_than_the_concurrency_limit_is_warned_about() {
    let s = Scratch::new();
    let (ok, out) = check(
        &s,
        &format!(
            "{HEADER}{}[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"shapes\"\nhandler = \"rows\"\nmax_concurrency = 2\n[bindings.batch]\nmax_size = 10\n",
            plugins()
        ),
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("bindings[0].batch: max_size 10 is above max_concurrency 2")
            && out.contains("lower max_size to 2"),
        "{out}"
    );
}
