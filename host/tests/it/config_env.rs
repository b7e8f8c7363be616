//! Environment overrides of config keys (`INIESTA_<SECTION>__<KEY>`) and `iniesta config
//! show`: the effective config with where each value came from, secrets masked.

use crate::common;

use std::process::Output;
use std::time::Duration;

use common::{iniesta_command, Host, Scratch};

const LOCK_PASSWORD: &str = "lockpass-s3cret";
const DSN_KEY: &str = "0123456789abcdef0123456789abcdef";
const WEBHOOK_TOKEN: &str = "T000/B000/hooktoken";
const NESTED: &str = "nested-k3y-value";
const INLINE: &str = "inline-pw-value";

fn config(s: &Scratch) -> std::path::PathBuf {
    s.config(
        "max_in_flight = 8",
        &format!(
            "[lock]\nurls = [\"redis://iniesta:{LOCK_PASSWORD}@127.0.0.1:1\"]\n\
             [errors]\nwebhook_url = \"https://hooks.example.com/services/{WEBHOOK_TOKEN}\"\n\
             [[bindings]]\nevents = [\"Order.*\"]\nplugin = \"echo\"\n\
             config = {{ credentials = {{ user = \"u\", key = \"{NESTED}\" }}, conn = \"host=db password={INLINE}\" }}\n"
        ),
    )
}

fn run(config: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    iniesta_command(config, args, env)
        .output()
        .expect("iniesta runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_no_secret(out: &str) {
    for secret in [LOCK_PASSWORD, DSN_KEY, WEBHOOK_TOKEN, NESTED, INLINE] {
        assert!(
            !out.contains(secret),
            "a secret is shown ({secret}):\n{out}"
        );
    }
}

#[test]
fn config_show_layers_the_environment_over_the_file_and_masks_secrets() {
    let s = Scratch::new();
    let config = config(&s);
    let dsn = format!("https://{DSN_KEY}@o1.ingest.sentry.io/42");
    let env = [
        ("INIESTA_SQS__MAX_IN_FLIGHT", "77"),
        ("INIESTA_SQS__FILTERS", "Order.*, Invoice.*"),
        ("INIESTA_SERVICE", "12"),
        ("INIESTA_ERRORS__SENTRY__DSN", dsn.as_str()),
        // The host's own variables share the prefix but are not config.
        ("INIESTA_LOG_FORMAT", "human"),
    ];
    let out = run(&config, &["config", "show", "--output", "json"], &env);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let key = |name: &str| -> serde_json::Value {
        json["keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|k| k["key"] == name).cloned())
            .unwrap_or_else(|| panic!("no key {name} in {json}"))
    };
    assert_eq!(key("sqs.max_in_flight")["value"], 77);
    assert_eq!(
        key("sqs.max_in_flight")["from"],
        "INIESTA_SQS__MAX_IN_FLIGHT"
    );
    assert_eq!(
        key("sqs.filters")["value"],
        serde_json::json!(["Order.*", "Invoice.*"])
    );
    // A string key takes the text as it is, digits included.
    assert_eq!(key("service")["value"], "12");
    assert_eq!(key("env")["from"], "file");
    assert_eq!(key("sqs.handler_timeout_secs")["from"], "default");
    assert_eq!(key("bindings[0].plugin")["from"], "file");
    assert_eq!(key("errors.sentry.dsn")["value"], "***");
    assert_eq!(key("errors.webhook_url")["value"], "***");
    let urls = key("lock.urls")["value"].to_string();
    assert!(
        urls.contains("@127.0.0.1:1") && !urls.contains("iniesta:"),
        "the URL's credentials are masked, its host shown: {urls}"
    );
    assert_eq!(
        json["overrides"].as_array().map(Vec::len),
        Some(4),
        "{json}"
    );
    assert_no_secret(&text(&out));

    let human = run(&config, &["config", "show"], &env);
    assert!(human.status.success(), "{}", text(&human));
    let table = text(&human);
    let line = table
        .lines()
        .find(|l| l.starts_with("sqs.max_in_flight "))
        .unwrap_or_else(|| panic!("no row:\n{table}"));
    assert!(
        line.contains("77") && line.ends_with("env INIESTA_SQS__MAX_IN_FLIGHT"),
        "{line}"
    );
    assert_no_secret(&table);
}

#[test]
fn bad_overrides_are_refused_naming_the_variable() {
    let s = Scratch::new();
    let config = config(&s);
    for (var, value, expect) in [
        ("INIESTA_SQS__MAX_IN_FLIGHT", "lots", "sqs.max_in_flight"),
        ("INIESTA_SQS__MAX_INFLIGHT", "5", "unknown field"),
        ("INIESTA_LOCK__URLS", "redis://a:1,redis://b:1", "quorum"),
        // An empty secret must not quietly mean "no lock servers".
        (
            "INIESTA_LOCK__URLS",
            "",
            "INIESTA_LOCK__URLS is set but empty",
        ),
    ] {
        let out = run(&config, &["config", "check"], &[(var, value)]);
        let said = text(&out);
        assert!(!out.status.success(), "{var}={value} was accepted:\n{said}");
        assert!(
            said.contains(var) || said.contains("lock.urls"),
            "{var}: the error names neither the variable nor the key:\n{said}"
        );
        assert!(said.contains(expect), "{var}: {said}");
        assert_no_secret(&said);
    }
}

#[test]
fn run_takes_its_settings_from_the_environment() {
    let s = Scratch::new();
    let config = s.config(
        "",
        "[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"echo\"\n",
    );
    // No [metrics] in the file: the endpoint exists only through the variable.
    let host = Host::start_with_env(
        &config,
        s.path("host.log"),
        &[("INIESTA_METRICS__LISTEN", "127.0.0.1:0")],
    );
    let port = host.port();
    s.wait_for("/readyz", Duration::from_secs(30), || {
        common::http_get(port, "/readyz").map(|(status, _)| status) == Some(200)
    });
    assert_eq!(
        common::http_get(port, "/livez"),
        Some((200, "alive\n".to_string()))
    );
    host.stop();
}

#[test]
fn string_keys_the_file_leaves_unset_and_missing_required_keys_come_from_the_environment() {
    let s = Scratch::new();
    // No `service`: the file alone is refused, the environment completes it.
    let config = s.write(
        "iniesta.toml",
        "initialization = [\"QUEUE_POLLING\"]\n[broker]\npath = \"b.db\"\n",
    );
    let alone = run(&config, &["config", "show"], &[]);
    assert!(!alone.status.success(), "{}", text(&alone));
    let out = run(
        &config,
        &["config", "show", "--output", "json"],
        &[
            ("INIESTA_SERVICE", "orders"),
            // A string key the file leaves unset, whose text looks like a number.
            ("INIESTA_SQS__QUEUE_NAME", "2024"),
            // The Python iniesta's spelling of a setting: not read, but named in a warning.
            ("INIESTA_SQS_QUEUE_NAME_TEMPLATE", "x-{service_name}"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let value = |name: &str| {
        json["keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|k| k["key"] == name))
            .map(|k| k["value"].clone())
    };
    assert_eq!(value("service"), Some(serde_json::json!("orders")));
    assert_eq!(value("sqs.queue_name"), Some(serde_json::json!("2024")));
    assert_eq!(
        value("sqs.queue_name_template"),
        Some(serde_json::json!("iniesta-{env}-{service_name}")),
        "the single-underscore name is not read"
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("INIESTA_SQS_QUEUE_NAME_TEMPLATE is not read")
            && log.contains("INIESTA_SQS__QUEUE_NAME_TEMPLATE"),
        "{log}"
    );
}
