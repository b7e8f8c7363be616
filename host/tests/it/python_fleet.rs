//! Sharing resources with the Python services (issue 18): a Python iniesta, microcosm-pubsub
//! and pop-evbus's `acct` on the same topic, queues, Redis and credential files as iniesta-rs.
//!
//! These tests are self-contained: the Python side is represented by what its code checks
//! (quoted next to each test, from the released packages' source) or by fixtures the real
//! packages produced (host/tests/fixtures/acct/README.md). The live Python cells run in the
//! conformance suite.

use crate::common;

use std::path::PathBuf;

use aws_sdk_sqs::types::QueueAttributeName;
use common::aws::{iniesta, ok, queue_url, sqs, Moto};
use common::{rt, Scratch};
use serde_json::Value;

const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:global";

/// An EVENT_POLLING consumer on moto.
fn moto_consumer(s: &Scratch, endpoint: &str, filters: &str) -> PathBuf {
    s.write(
        "iniesta.toml",
        &format!(
            "service = \"receiver\"\nenv = \"test\"\ninitialization = [\"EVENT_POLLING\", \"SNS_PRODUCER\"]\n\
             [broker]\nkind = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n\
             [sns]\ntopic_arn = \"{TOPIC}\"\n[sqs]\nwait_time_seconds = 1\nfilters = {filters}\n\
             [plugins]\ndirs = [\"{}\"]\n[[bindings]]\ndefault = true\nplugin = \"echo\"\n",
            common::plugin_dir().display()
        ),
    )
}

async fn queue_policy(endpoint: &str, queue: &str) -> String {
    let url = queue_url(endpoint, queue).await;
    sqs(endpoint)
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::Policy)
        .send()
        .await
        .expect("attributes")
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::Policy).cloned())
        .unwrap_or_default()
}

async fn set_queue_policy(endpoint: &str, queue: &str, policy: &str) {
    let url = queue_url(endpoint, queue).await;
    sqs(endpoint)
        .set_queue_attributes()
        .queue_url(url)
        .attributes(QueueAttributeName::Policy, policy)
        .send()
        .await
        .expect("set policy");
}

/// The Python iniesta's EVENT_POLLING start-up check (insanic-iniesta 0.4.0,
/// `iniesta/sqs/client.py`, `SQSClient.confirm_permission`), line for line:
///
/// ```python
/// policies = json.loads(policy_attributes["Attributes"]["Policy"])
/// statement = policies["Statement"][0]
/// assert statement["Effect"] == "Allow"
/// assert "SQS:SendMessage" in statement["Action"]
/// ```
///
/// `in` is a substring test on a string `Action` and a membership test on a list.
fn python_iniesta_confirm_permission(policy: &str) -> Result<(), String> {
    let policy: Value = serde_json::from_str(policy).map_err(|e| format!("not JSON: {e}"))?;
    let statement = policy
        .get("Statement")
        .and_then(|s| s.get(0))
        .ok_or("KeyError: no Statement[0]")?;
    if statement.get("Effect") != Some(&Value::from("Allow")) {
        return Err(format!("Effect is {:?}", statement.get("Effect")));
    }
    let action = statement.get("Action");
    let found = match action {
        Some(Value::String(text)) => text.contains("SQS:SendMessage"),
        Some(Value::Array(items)) => items.iter().any(|a| a == "SQS:SendMessage"),
        _ => false,
    };
    if found {
        Ok(())
    } else {
        Err(format!("`SQS:SendMessage` not in Action {action:?}"))
    }
}

/// Item 1: a Python iniesta service starts on the queue `iniesta setup` made (its policy
/// spells the action the way the Python check looks for it), and `check` accepts either
/// spelling (policies written by older iniesta-rs say `sqs:SendMessage`).
#[test]
fn setup_writes_the_queue_policy_the_python_iniesta_start_up_check_accepts() {
    let moto = Moto::start();
    let s = Scratch::new();
    let config = moto_consumer(&s, &moto.url(), "[\"Order.*\"]");
    ok(&config, &["setup"]);
    let rt = rt();
    let queue = "iniesta-test-receiver";
    let policy = rt.block_on(queue_policy(&moto.url(), queue));
    if let Err(e) = python_iniesta_confirm_permission(&policy) {
        panic!("the Python iniesta would refuse to start: {e}\npolicy: {policy}");
    }
    // Either spelling passes `check`, and only the topic's own statement counts.
    let arn = format!("arn:aws:sqs:us-east-1:123456789012:{queue}");
    for action in [
        "\"sqs:SendMessage\"",
        "\"SQS:SendMessage\"",
        "[\"SQS:SendMessage\"]",
    ] {
        let policy = format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"Service":"sns.amazonaws.com"}},"Action":{action},"Resource":"{arn}","Condition":{{"ArnEquals":{{"aws:SourceArn":"{TOPIC}"}}}}}}]}}"#
        );
        rt.block_on(set_queue_policy(&moto.url(), queue, &policy));
        let report = ok(&config, &["check"]);
        assert!(
            report.contains(&format!("ok      queue policy of {queue}")),
            "{action}: {report}"
        );
        // The queue works either way, but a Python iniesta service would not start on the
        // lower-case spelling: `check` warns (not a problem: the exit code stays 0).
        let python_refuses = python_iniesta_confirm_permission(&policy).is_err();
        assert_eq!(
            report.contains(&format!("WARNING queue policy of {queue}")),
            python_refuses,
            "{action}: {report}"
        );
    }
    // A statement for another topic does not count.
    let other = format!(
        r#"{{"Statement":[{{"Effect":"Allow","Action":"SQS:SendMessage","Resource":"{arn}","Condition":{{"ArnEquals":{{"aws:SourceArn":"{TOPIC}-other"}}}}}}]}}"#
    );
    rt.block_on(set_queue_policy(&moto.url(), queue, &other));
    let out = iniesta(&config, &["check"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("PROBLEM queue policy"));
}

/// `iniesta` with the environment a test controls (no acct variables from outside).
fn run(config: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    common::iniesta_command(config, args, env)
        .output()
        .expect("iniesta runs")
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/acct")
        .join(name)
}

fn fixture_key() -> String {
    std::fs::read_to_string(fixture("credentials.yml.key"))
        .expect("key fixture")
        .trim()
        .to_string()
}

/// Item 3: a file the real `acct encrypt` wrote (msgpack inside Fernet) is read by the host
/// and by `iniesta acct show`, with the same key.
#[test]
fn a_file_the_real_acct_encrypted_is_read_with_its_key() {
    let key = iniesta::acct::Secret::new(fixture_key());
    let profiles = iniesta::acct::Profiles::load(&fixture("credentials.yml.fernet"), &key)
        .unwrap_or_else(|e| panic!("the real acct's file does not load: {e}"));
    assert_eq!(
        profiles.names(),
        vec!["jsonl.local", "nats.dev", "nats.prod"],
        "acct's own `default` and `backend_key` are not profiles"
    );
    let prod = profiles.get("nats", "prod").expect("nats.prod");
    assert_eq!(prod["password"], "s3cret-not-real");
    assert_eq!(prod["max_reconnects"], 5);
    assert_eq!(prod["tls"], false);
    let local = profiles.get("jsonl", "local").expect("jsonl.local");
    assert_eq!(local["ratio"], 0.5);
    assert_eq!(local["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(local["extra"], serde_json::json!({"nested": true}));
    assert_eq!(local["empty"], Value::Null);

    let s = Scratch::new();
    let config = s.write(
        "empty.toml",
        "service = \"x\"\ninitialization = [\"QUEUE_POLLING\"]\n",
    );
    let file = fixture("credentials.yml.fernet");
    let out = run(
        &config,
        &["acct", "show"],
        &[
            ("INIESTA_ACCT_FILE", file.to_str().expect("utf-8")),
            ("INIESTA_ACCT_KEY", key.expose()),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("[nats.prod]") && stdout.contains("password = \"***\""),
        "{stdout}"
    );
    assert!(!stdout.contains("s3cret-not-real"), "{stdout}");
}

/// Item 3, the other way: `iniesta acct encrypt credentials.yml` writes what the real
/// `acct decrypt` reads: a Fernet token around msgpack of the YAML's data (checked here by
/// decoding it the way acct does: Fernet, then msgpack; the live `acct decrypt` runs in the
/// conformance suite). TOML input is encrypted to the same format.
#[test]
fn acct_encrypt_writes_msgpack_inside_fernet_as_the_real_acct_does() {
    let s = Scratch::new();
    let config = s.write(
        "empty.toml",
        "service = \"x\"\ninitialization = [\"QUEUE_POLLING\"]\n",
    );
    let yaml = std::fs::read_to_string(fixture("credentials.yml")).expect("fixture");
    let expected: Value = serde_json::json!({
        "default": "prod",
        "backend_key": "acct-backends",
        "nats": {
            "prod": {"url": "nats://nats.internal:4222", "user": "orders",
                     "password": "s3cret-not-real", "max_reconnects": 5, "tls": false},
            "dev": {"url": "nats://127.0.0.1:4222"}
        },
        "jsonl": {"local": {"path": "/tmp/events.jsonl", "ratio": 0.5, "tags": ["a", "b"],
                            "extra": {"nested": true}, "empty": null}}
    });
    let toml_text = "[nats.prod]\nurl = \"nats://h:4222\"\nmax_reconnects = 5\n";
    for (name, text, want) in [
        ("credentials.yml", yaml.as_str(), expected.clone()),
        (
            "credentials.toml",
            toml_text,
            serde_json::json!({"nats": {"prod": {"url": "nats://h:4222", "max_reconnects": 5}}}),
        ),
    ] {
        let plain = s.write(name, text);
        let out = run(
            &config,
            &["acct", "encrypt", plain.to_str().expect("utf-8")],
            &[],
        );
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key = stdout.lines().last().expect("key").trim().to_string();
        let written = s.path(&format!("{name}.fernet"));
        let token = std::fs::read_to_string(&written).expect("written");
        let fernet = fernet::Fernet::new(&key).expect("a Fernet key");
        let inner = fernet.decrypt(token.trim()).expect("decrypts");
        let data: Value = rmp_serde::from_slice(&inner)
            .unwrap_or_else(|e| panic!("{name}: not msgpack inside the token: {e}"));
        assert_eq!(data, want, "{name}");
        // And iniesta reads its own file.
        let out = run(
            &config,
            &["acct", "show"],
            &[
                ("INIESTA_ACCT_FILE", written.to_str().expect("utf-8")),
                ("INIESTA_ACCT_KEY", &key),
            ],
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("[nats.prod]"));
    }
}

/// A consumer on the local broker in the scratch dir (no AWS needed), with these filters.
fn local_config(s: &Scratch, filters: &str, rest: &str) -> PathBuf {
    s.write(
        "local.toml",
        &format!(
            "service = \"receiver\"\nenv = \"test\"\ninitialization = [\"EVENT_POLLING\", \"SNS_PRODUCER\"]\n\
             [broker]\nkind = \"local\"\npath = \"broker.db\"\n\
             [sns]\ntopic_arn = \"arn:aws:sns:us-east-1:000000000000:global\"\n\
             [sqs]\nwait_time_seconds = 1\nfilters = {filters}\n\
             [plugins]\ndirs = [\"{}\"]\n[[bindings]]\ndefault = true\nplugin = \"echo\"\n{rest}\n",
            common::plugin_dir().display()
        ),
    )
}

/// Item 4: filter names the Python iniesta's builder refuses (`filter_list_to_filter_policies`
/// asserts `len(name.split(".")) == 2`) are still accepted, but `filter-policies` and `check`
/// warn about each of them.
#[test]
fn filters_the_python_builder_refuses_are_kept_with_a_warning() {
    let s = Scratch::new();
    let config = local_config(
        &s,
        "[\"Order.*\", \"hello.iniesta\", \"Order.Created.shop\", \"Order.Created.*\", \"single\"]",
        "",
    );
    let out = run(&config, &["--log-format", "json", "filter-policies"], &[]);
    assert!(out.status.success());
    let policy: Value = serde_json::from_slice(&out.stdout).expect("stdout is the policy only");
    assert_eq!(
        policy,
        serde_json::json!({"iniesta_pass": [{"prefix": "Order."}, "hello.iniesta",
            "Order.Created.shop", {"prefix": "Order.Created."}, "single"]})
    );
    let warned: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["level"] == "WARN")
        .filter_map(|l| l["filter"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        warned,
        vec!["Order.Created.shop", "Order.Created.*", "single"],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    ok(&config, &["setup"]);
    let out = iniesta(&config, &["check"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "warnings are not problems:\n{report}");
    for name in ["Order.Created.shop", "Order.Created.*", "single"] {
        assert!(
            report.contains(&format!("WARNING filter `{name}`")),
            "{name} not warned:\n{report}"
        );
    }
    assert!(
        !report.contains("WARNING filter `hello.iniesta`"),
        "{report}"
    );
}

/// Item 5: `[lock] server = "redis://HOST:PORT"` takes the locks in the Python iniesta's
/// default layout (aioredlock over DBs 1, 2 and 3 of one server, `INIESTA_CACHES`), so a
/// lock the Python side holds (on a majority of those DBs) excludes iniesta-rs, and the other
/// way round.
#[test]
fn the_lock_server_shortcut_shares_locks_with_the_python_iniesta_layout() {
    let redis = common::redis::RedisServer::start();
    let config: iniesta::config::LockConfig =
        toml::from_str(&format!("server = \"{}\"\n", redis.url())).expect("[lock] parses");
    assert_eq!(
        config.node_urls().expect("valid"),
        vec![
            format!("{}/1", redis.url()),
            format!("{}/2", redis.url()),
            format!("{}/3", redis.url()),
        ]
    );
    rt().block_on(async {
        let locks = iniesta::lock::from_config(
            &config,
            std::path::Path::new("."),
            &iniesta::tasks::Tasks::new(),
        )
        .await
        .expect("locks");
        assert!(locks.describe().contains("Redlock"), "{}", locks.describe());
        let db = |n: u32| {
            redis::Client::open(format!("{}/{n}", redis.url()))
                .expect("client")
                .get_connection()
                .expect("connection")
        };
        // Ours land in DBs 1, 2 and 3.
        let taken = locks
            .try_acquire(&["ours".to_string()], std::time::Duration::from_secs(10))
            .await
            .expect("decided");
        assert!(taken[0].is_some());
        for n in [1, 2, 3] {
            let exists: bool = redis::cmd("EXISTS")
                .arg("sqs:event:ours")
                .query(&mut db(n))
                .expect("exists");
            assert!(exists, "the lock is in DB {n}");
        }
        // The Python side holds `theirs` on a majority (DBs 1 and 2): we do not get it.
        for n in [1, 2] {
            let _: () = redis::cmd("SET")
                .arg("sqs:event:theirs")
                .arg("python-lock-identifier")
                .arg("PX")
                .arg(10_000)
                .query(&mut db(n))
                .expect("set");
        }
        let taken = locks
            .try_acquire(&["theirs".to_string()], std::time::Duration::from_secs(10))
            .await
            .expect("decided");
        assert!(taken[0].is_none(), "the Python side holds it");
    });
    // `server` with `urls`, or with a database in it, is refused with the key named.
    for (text, key) in [
        (
            "server = \"redis://h:1\"\nurls = [\"redis://h:1\"]\n",
            "lock.server",
        ),
        ("server = \"redis://h:1/0\"\n", "lock.server"),
        (
            "server = \"redis://h:1\"\ndatabases = [1, 2]\n",
            "lock.databases",
        ),
    ] {
        let s = Scratch::new();
        let config = local_config(&s, "[]", &format!("[lock]\n{text}"));
        let out = run(&config, &["config", "check"], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}");
        assert!(stderr.contains(key), "{text}: {stderr}");
    }
}

/// What microcosm-pubsub's consumer needs of a body before it looks at the content
/// (microcosm-pubsub 3.0.0, `envelope.py` `CodecMediaTypeAndContentParser` decoding with
/// `codecs.py` `MediaTypeSchema`: `mediaType = fields.String(required=True)`): a JSON object
/// with a text `mediaType`. Returns it.
fn microcosm_media_type(body: &[u8]) -> Option<String> {
    let body: Value = serde_json::from_slice(body).ok()?;
    body.get("mediaType")?.as_str().map(str::to_string)
}

const MICROCOSM_TYPE: &str = "application/vnd.globality.pubsub._.created.order";

/// Item 2, publishing: `publish --media-type` writes `mediaType` into a JSON body (and the
/// `media_type` attribute, as microcosm's producer does), so a microcosm consumer accepts the
/// message; a body that is not a JSON object, or that names another media type, is refused
/// before anything is sent.
#[test]
fn publish_media_type_writes_the_body_field_microcosm_requires() {
    let s = Scratch::new();
    let config = local_config(&s, "[\"Order.*\"]", "");
    ok(&config, &["setup"]);
    let body = r#"{"uri": "https://orders.internal/api/v1/order/1", "n": 1.50}"#;
    let out = run(
        &config,
        &[
            "publish",
            "--queue",
            "Order.Created",
            body,
            "--media-type",
            MICROCOSM_TYPE,
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (args, why) in [
        (vec!["Order.Created", "plain text"], "a text body"),
        (vec!["Order.Created", "[1, 2]"], "a JSON array"),
        (
            vec!["Order.Created", r#"{"mediaType": "application/other"}"#],
            "another media type in the body",
        ),
        (
            vec!["Order.Created", "{}", "-a", "media_type=application/other"],
            "another media type attribute",
        ),
    ] {
        let mut all = vec!["publish", "--queue", "--media-type", MICROCOSM_TYPE];
        all.extend(args);
        let out = run(&config, &all, &[]);
        assert!(!out.status.success(), "{why}: refused");
        assert!(out.stdout.is_empty(), "{why}: nothing published");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--media-type"),
            "{why}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let messages = rt().block_on(common::queue_messages(&config, "iniesta-test-receiver"));
    assert_eq!(messages.len(), 1, "only the valid publish went out");
    let message = &messages[0];
    assert_eq!(
        microcosm_media_type(&message.body).as_deref(),
        Some(MICROCOSM_TYPE)
    );
    let sent: Value = serde_json::from_slice(&message.body).expect("JSON");
    assert_eq!(sent["uri"], "https://orders.internal/api/v1/order/1");
    assert!(
        String::from_utf8_lossy(&message.body).contains("1.50"),
        "the rest of the body is kept byte for byte: {}",
        String::from_utf8_lossy(&message.body)
    );
    assert_eq!(
        message
            .attributes
            .get("media_type")
            .map(|a| a.value.as_str()),
        Some(MICROCOSM_TYPE)
    );
}

/// Item 2, egress: `media_type` on an `[[egress]]` entry writes `mediaType` into the JSON
/// bodies that egress sends (other egresses get the body as published); a body that is not a
/// JSON object, or that already has a `mediaType`, goes out unchanged.
#[test]
fn an_egress_media_type_writes_the_body_field_for_that_egress_only() {
    let s = Scratch::new();
    let micro = s.path("micro.jsonl");
    let plain = s.path("plain.jsonl");
    let config = local_config(
        &s,
        "[\"Order.*\"]",
        &format!(
            "[[egress]]\nname = \"micro\"\nplugin = \"jsonl\"\nmedia_type = \"{MICROCOSM_TYPE}\"\nconfig = {{ path = \"{}\" }}\n\
             [[egress]]\nname = \"plain\"\nplugin = \"jsonl\"\nconfig = {{ path = \"{}\" }}\n",
            micro.display(),
            plain.display()
        ),
    );
    for body in [
        r#"{"uri": "https://orders.internal/api/v1/order/1"}"#,
        "plain text",
        r#"{"mediaType": "application/vnd.acme.own"}"#,
    ] {
        let out = run(&config, &["publish", "Order.Created", body], &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let micro = common::json_lines(&micro);
    let plain = common::json_lines(&plain);
    assert_eq!((micro.len(), plain.len()), (3, 3));
    assert_eq!(micro[0]["body"]["mediaType"], MICROCOSM_TYPE);
    assert_eq!(micro[0]["attributes"]["media_type"], MICROCOSM_TYPE);
    assert_eq!(
        micro[0]["body"]["uri"],
        "https://orders.internal/api/v1/order/1"
    );
    assert_eq!(
        micro[1]["body"], "plain text",
        "a text body is never rewritten"
    );
    assert_eq!(
        micro[2]["body"]["mediaType"], "application/vnd.acme.own",
        "the body's own media type stays"
    );
    assert!(plain[0]["body"].get("mediaType").is_none(), "{}", plain[0]);
    assert!(plain[0]["attributes"].get("media_type").is_none());
}
