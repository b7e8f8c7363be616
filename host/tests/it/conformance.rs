//! The mixed-fleet conformance matrix: the REAL Python libraries (insanic-iniesta 0.4.0,
//! microcosm-pubsub 3.0.0, pop-evbus, acct — pinned in `conformance/requirements.txt`, installed
//! by `scripts/python-peers.sh`) against iniesta-rs, on one moto and one redis-server.
//!
//! The Python side is used as published: the driver scripts in `conformance/` only configure the
//! libraries and call their public APIs. The one exception is `conformance/moto_shim.py`, which
//! drops `MessageStructure="string"` from the Python iniesta's SNS `Publish` (moto 5 refuses it;
//! real SNS accepts it).
//!
//! Every cell asserts that the handler ran exactly once, with the right body and event. Nothing
//! is skipped: without `INIESTA_PEERS_PYTHON` (or moto / redis-server) the tests fail, naming
//! the script that provides it. See docs/src/guide/migration.md for the matrix and the versions.

use crate::common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::aws::{iniesta, ok, queue_url, sns, sqs, start_host, Moto};
use common::redis::RedisServer;
use common::{json_lines, rt, Scratch};

const LIMIT: Duration = Duration::from_secs(120);
const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:global";
const MEDIA_TYPE: &str = "application/vnd.shop.order.created";

// --- the Python side --------------------------------------------------------------------------

/// The peers venv's python: `$INIESTA_PEERS_PYTHON` (scripts/python-peers.sh exports it).
fn peers_python() -> PathBuf {
    let path = std::env::var_os("INIESTA_PEERS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "INIESTA_PEERS_PYTHON is not set: run `source scripts/python-peers.sh` (scripts/test.sh does), \
                 which builds the pinned venv of the real Python libraries"
            )
        });
    assert!(
        path.exists(),
        "INIESTA_PEERS_PYTHON={} does not exist: run scripts/python-peers.sh",
        path.display()
    );
    path
}

/// A script in host/tests/conformance/.
fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/conformance")
        .join(name)
}

/// A Python peer command: the peers' python on `script`, with test AWS credentials, run in
/// the scratch dir, configured by environment variables only.
fn python(s: &Scratch, script_name: &str, endpoint: &str) -> Command {
    let mut cmd = Command::new(peers_python());
    cmd.arg(script(script_name))
        .current_dir(s.dir.path())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PEER_ENDPOINT_URL", endpoint)
        .env_remove("AWS_PROFILE")
        .env_remove("INSANIC_SETTINGS_MODULE");
    cmd
}

/// The settings a Python iniesta service needs, as its settings module would hold them.
fn iniesta_settings(cmd: &mut Command, endpoint: &str, service: &str, redis: Option<u16>) {
    cmd.env("SERVICE_NAME", service)
        .env("ENVIRONMENT", "test")
        .env("INIESTA_SNS_PRODUCER_GLOBAL_TOPIC_ARN", TOPIC)
        .env("INIESTA_SNS_ENDPOINT_URL", endpoint)
        .env("INIESTA_SQS_ENDPOINT_URL", endpoint)
        .env("INIESTA_SQS_RECEIVE_MESSAGE_WAIT_TIME_SECONDS", "1");
    if let Some(port) = redis {
        cmd.env(
            "PEER_LOCK_CACHES",
            format!(r#"{{"HOST": "127.0.0.1", "PORT": {port}}}"#),
        );
    }
}

/// A Python iniesta peer: `iniesta_peer.py` with the settings of `service`.
fn py_iniesta(s: &Scratch, endpoint: &str, service: &str, redis: Option<u16>) -> Command {
    let mut cmd = python(s, "iniesta_peer.py", endpoint);
    iniesta_settings(&mut cmd, endpoint, service, redis);
    cmd
}

/// Run a peer command to completion; its stdout, failing the test (with its stderr) otherwise.
fn run_ok(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().expect("python runs");
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A long-running Python peer (a consumer), its output in files, killed on drop.
struct Peer {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Peer {
    /// Start `cmd` and wait until it prints `peer: polling` (its start-up checks passed).
    fn start(s: &Scratch, mut cmd: Command, name: &str) -> Peer {
        let out = s.path(&format!("{name}.out"));
        let err = s.path(&format!("{name}.err"));
        let child = cmd
            .stdout(std::fs::File::create(&out).expect("out file"))
            .stderr(std::fs::File::create(&err).expect("err file"))
            .stdin(Stdio::null())
            .spawn()
            .expect("python peer starts");
        let mut peer = Peer { child, out, err };
        let start = Instant::now();
        while !peer.stdout().contains("peer: polling") {
            if let Ok(Some(status)) = peer.child.try_wait() {
                panic!(
                    "python peer {name} exited ({status}) before polling:\n{}",
                    peer.logs()
                );
            }
            assert!(
                start.elapsed() < LIMIT,
                "python peer {name} did not start polling:\n{}",
                peer.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        peer
    }

    fn stdout(&self) -> String {
        read(&self.out)
    }

    fn logs(&self) -> String {
        format!(
            "--- stdout\n{}\n--- stderr\n{}",
            read(&self.out),
            read(&self.err)
        )
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    text
}

// --- the iniesta-rs side ----------------------------------------------------------------------

/// `[lock]` on the Python Redlock's three databases of one server, spelled out.
fn lock_urls(port: u16) -> String {
    format!(
        "[lock]\nurls = [\"redis://127.0.0.1:{port}/1\", \"redis://127.0.0.1:{port}/2\", \"redis://127.0.0.1:{port}/3\"]\n"
    )
}

/// `[lock]` on the same databases through the shortcut (`databases` defaults to 1, 2, 3).
fn lock_server(port: u16) -> String {
    format!("[lock]\nserver = \"redis://127.0.0.1:{port}\"\n")
}

/// What a test sets in an `iniesta.toml` for moto; the rest from [`RsConfig::CONSUMER`].
struct RsConfig<'a> {
    service: &'a str,
    initialization: &'a str,
    sqs_extra: &'a str,
    /// A `[lock]` section (empty: in-process locks).
    lock: &'a str,
    rest: &'a str,
}

impl RsConfig<'_> {
    /// An EVENT_POLLING + SNS_PRODUCER service with nothing else set.
    const CONSUMER: RsConfig<'static> = RsConfig {
        service: "",
        initialization: r#"["EVENT_POLLING", "SNS_PRODUCER"]"#,
        sqs_extra: "",
        lock: "",
        rest: "",
    };

    /// Write it as `name` in the scratch dir, against `endpoint`.
    fn write(&self, s: &Scratch, name: &str, endpoint: &str) -> PathBuf {
        let RsConfig {
            service,
            initialization,
            sqs_extra,
            lock,
            rest,
        } = self;
        s.write(
            name,
            &format!(
                "service = \"{service}\"\nenv = \"test\"\ninitialization = {initialization}\n\
                 [broker]\nkind = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n\
                 [sns]\ntopic_arn = \"{TOPIC}\"\n\
                 [sqs]\nwait_time_seconds = 1\nvisibility_timeout = 5\n{sqs_extra}\n\
                 {lock}[plugins]\ndirs = [\"{}\"]\n{rest}\n",
                common::plugin_dir().display()
            ),
        )
    }
}

/// A `ledger` binding for `events` (or the default binding when `events` is empty).
fn ledger(path: &Path, label: &str, events: &str) -> String {
    let select = if events.is_empty() {
        "default = true".to_string()
    } else {
        format!("events = {events}")
    };
    format!(
        "[[bindings]]\n{select}\nplugin = \"ledger\"\nconfig = {{ path = \"{}\", label = \"{label}\" }}\n",
        path.display()
    )
}

/// Visible + in-flight messages on a queue, now.
fn depth(endpoint: &str, name: &str) -> u64 {
    rt().block_on(common::aws::depth(endpoint, name))
}

/// A queue the test makes itself (for the microcosm side, which has no setup tool), subscribed
/// to the topic with `raw` delivery and no filter policy; its URL.
fn subscribed_queue(endpoint: &str, name: &str, raw: bool) -> String {
    rt().block_on(async {
        let url = sqs(endpoint)
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .expect("create queue")
            .queue_url()
            .unwrap_or_default()
            .to_string();
        sns(endpoint)
            .create_topic()
            .name("global")
            .send()
            .await
            .expect("create topic");
        sns(endpoint)
            .subscribe()
            .topic_arn(TOPIC)
            .protocol("sqs")
            .endpoint(format!("arn:aws:sqs:us-east-1:123456789012:{name}"))
            .attributes("RawMessageDelivery", if raw { "true" } else { "false" })
            .send()
            .await
            .expect("subscribe");
        url
    })
}

/// Send a body straight to a queue with the SDK, no attributes.
fn send_plain(endpoint: &str, name: &str, body: &str) {
    rt().block_on(async {
        let url = queue_url(endpoint, name).await;
        sqs(endpoint)
            .send_message()
            .queue_url(url)
            .message_body(body)
            .send()
            .await
            .expect("send");
    });
}

/// Wait until `cond` holds; `what` and `context()` name the failure.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool, context: impl Fn() -> String) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < LIMIT,
            "timed out waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The one ledger line of a cell, after the queue drained: exactly one, whatever arrives late.
fn only_line(
    path: &Path,
    endpoint: &str,
    queue: &str,
    logs: &dyn Fn() -> String,
) -> serde_json::Value {
    wait_for("the handler to run", || !json_lines(path).is_empty(), logs);
    wait_for("the queue to drain", || depth(endpoint, queue) == 0, logs);
    let lines = json_lines(path);
    assert_eq!(
        lines.len(),
        1,
        "handled exactly once: {lines:?}\n{}",
        logs()
    );
    lines.into_iter().next().unwrap_or_default()
}

// --- Python iniesta → iniesta-rs ----------------------------------------------------------------

/// `SNSClient.publish_event` and `SQSMessage.send` of the Python iniesta, each handled once by an
/// iniesta-rs host (the SNS one through the subscription `iniesta setup` made).
#[test]
fn python_iniesta_publishes_sns_and_sqs_and_iniesta_rs_handles_each_once() {
    let moto = Moto::start();
    let s = Scratch::new();
    let got = s.path("rs.jsonl");
    let config = RsConfig {
        service: "rsorders",
        sqs_extra: r#"filters = ["Order.*"]"#,
        rest: &ledger(&got, "rs", ""),
        ..RsConfig::CONSUMER
    }
    .write(&s, "iniesta.toml", &moto.url());
    ok(&config, &["setup"]);
    let host = start_host(&config, s.path("host.log"));
    let queue = "iniesta-test-rsorders";

    // SNS: published by a Python service called pyshop.
    let body = r#"{"id": 1, "item": "book"}"#;
    let mut publish = py_iniesta(&s, &moto.url(), "pyshop", None);
    publish.args(["publish-sns", "Order.Created", body]);
    run_ok(publish, "python iniesta publish-sns");
    let line = only_line(&got, &moto.url(), queue, &|| host.log_text());
    assert_eq!(line["event"], "Order.Created.pyshop", "{line}");
    assert_eq!(common::body_of(&line), json(body), "{line}");
    assert_eq!(line["attributes"]["version"], "1", "{line}");

    // SQS: sent straight to our queue (INIESTA_SQS_QUEUE_NAME).
    std::fs::remove_file(&got).expect("reset ledger");
    let body = r#"{"id": 2, "item": "pen"}"#;
    let mut send = py_iniesta(&s, &moto.url(), "pyshop", None);
    send.env("INIESTA_SQS_QUEUE_NAME", queue)
        .args(["publish-sqs", "Order.Shipped", body]);
    let message_id = run_ok(send, "python iniesta publish-sqs");
    let line = only_line(&got, &moto.url(), queue, &|| host.log_text());
    assert_eq!(line["event"], "Order.Shipped.pyshop", "{line}");
    assert_eq!(line["id"], message_id.as_str(), "{line}");
    assert_eq!(common::body_of(&line), json(body), "{line}");
    host.stop();
}

// --- iniesta-rs → Python iniesta ----------------------------------------------------------------

/// `iniesta setup` makes the Python service's resources; the Python iniesta starts on them with
/// EVENT_POLLING (its start-up checks: queue, subscription, filter policy equal to its own,
/// `SQS:SendMessage` in the queue policy) and handles what iniesta-rs publishes, through SNS
/// and `publish --queue`, once each.
#[test]
fn python_iniesta_starts_on_setup_resources_and_handles_what_iniesta_rs_publishes() {
    let moto = Moto::start();
    let redis = RedisServer::start();
    let s = Scratch::new();
    // The Python service's own config, in iniesta.toml form: what `iniesta setup` reads.
    let resources = RsConfig {
        service: "pycons",
        sqs_extra: r#"filters = ["Order.*", "hello.iniesta"]"#,
        rest: "[[bindings]]\ndefault = true\nplugin = \"echo\"\n",
        ..RsConfig::CONSUMER
    }
    .write(&s, "pycons.toml", &moto.url());
    ok(&resources, &["setup"]);

    let got = s.path("py.jsonl");
    let mut consume = py_iniesta(&s, &moto.url(), "pycons", Some(redis.port));
    consume
        .env("INIESTA_INITIALIZATION_TYPE", r#"["EVENT_POLLING"]"#)
        .env(
            "INIESTA_SQS_CONSUMER_FILTERS",
            r#"["Order.*", "hello.iniesta"]"#,
        )
        .args([
            "consume",
            &got.display().to_string(),
            // Nothing connects to the peer's HTTP port, but Sanic turns 0 into its default
            // 8000, so it gets a candidate; a taken one makes the peer exit loudly (not
            // retried yet: see common/ports.rs).
            &common::ports::unused_port().to_string(),
        ]);
    let peer = Peer::start(&s, consume, "pycons");
    let queue = "iniesta-test-pycons";

    // Through the topic, from a producer service called rsshop.
    let producer = RsConfig {
        service: "rsshop",
        initialization: r#"["SNS_PRODUCER"]"#,
        ..RsConfig::CONSUMER
    }
    .write(&s, "rsshop.toml", &moto.url());
    let body = r#"{"id": 3, "item": "lamp"}"#;
    ok(&producer, &["publish", "Order.Created", body]);
    let line = only_line(&got, &moto.url(), queue, &|| peer.logs());
    assert_eq!(line["event"], "Order.Created.rsshop", "{line}");
    assert_eq!(json(line["body"].as_str().unwrap_or_default()), json(body));

    // Straight to the queue: `publish --queue` with the Python service's queue name.
    std::fs::remove_file(&got).expect("reset ledger");
    let direct = RsConfig {
        service: "rsshop",
        initialization: r#"["SNS_PRODUCER", "QUEUE_POLLING"]"#,
        sqs_extra: &format!("queue_name = \"{queue}\""),
        ..RsConfig::CONSUMER
    }
    .write(&s, "direct.toml", &moto.url());
    let body = r#"{"id": 4, "item": "desk"}"#;
    let sent = ok(&direct, &["publish", "--queue", "Order.Packed", body]);
    let line = only_line(&got, &moto.url(), queue, &|| peer.logs());
    assert_eq!(line["event"], "Order.Packed.rsshop", "{line}");
    assert_eq!(
        line["id"].as_str().unwrap_or_default(),
        sent.split_whitespace().next().unwrap_or_default(),
        "{line}"
    );
    assert_eq!(json(line["body"].as_str().unwrap_or_default()), json(body));
}

/// `iniesta filter-policies` prints exactly what the Python builder makes of the same filters;
/// a filter with more than two dotted parts, which the Python builder refuses, gets a warning.
#[test]
fn filter_policies_match_the_python_builder_and_warn_where_it_refuses() {
    let s = Scratch::new();
    let endpoint = "http://127.0.0.1:9";
    // Our config and the Python side's command for the same filters.
    let config_for = |name: &str, filters: &str| {
        RsConfig {
            service: "svc",
            initialization: r#"["EVENT_POLLING"]"#,
            sqs_extra: &format!("filters = {filters}"),
            ..RsConfig::CONSUMER
        }
        .write(&s, name, endpoint)
    };
    let python_for = |filters: &str| {
        let mut cmd = py_iniesta(&s, endpoint, "svc", None);
        cmd.env("INIESTA_SQS_CONSUMER_FILTERS", filters)
            .arg("filter-policies");
        cmd
    };
    let filters = r#"["Order.*", "hello.iniesta", "User.*"]"#;
    let ours = ok(&config_for("iniesta.toml", filters), &["filter-policies"]);
    let theirs = run_ok(python_for(filters), "python iniesta filter-policies");
    assert_eq!(
        json(ours.trim()),
        json(&theirs),
        "ours: {ours}\ntheirs: {theirs}"
    );

    let three = r#"["Order.Created.v2"]"#;
    let out = iniesta(&config_for("three.toml", three), &["filter-policies"]);
    assert!(out.status.success(), "still accepted");
    let warning = String::from_utf8_lossy(&out.stderr);
    assert!(
        warning.contains("Order.Created.v2") && warning.contains("Python"),
        "a warning naming the filter and the Python side:\n{warning}"
    );
    let out = python_for(three).output().expect("python runs");
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("AssertionError"),
        "the Python builder refuses it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// --- locks --------------------------------------------------------------------------------------

/// Read a key on one Redis DB (empty when absent).
fn redis_get(port: u16, db: u8, key: &str) -> String {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/{db}")).expect("url");
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .expect("redis connection");
    let value: Option<String> = redis::cmd("GET").arg(key).query(&mut conn).expect("GET");
    value.unwrap_or_default()
}

/// The keys on one Redis DB, for failure messages.
fn redis_keys(port: u16, db: u8) -> String {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/{db}")).expect("url");
    let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
        return "(no connection)".into();
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut conn)
        .unwrap_or_default();
    keys.join(", ")
}

/// A lock the Python Redlock holds keeps iniesta-rs off the message until it is released, and a
/// lock iniesta-rs holds (while its handler runs) is refused to the Python Redlock: the same
/// key `sqs:event:{message_id}` on the same three DBs (1, 2, 3) of one server.
#[test]
fn locks_exclude_both_ways_on_the_python_redlock_databases() {
    let moto = Moto::start();
    let redis = RedisServer::start();
    let s = Scratch::new();
    let got = s.path("rs.jsonl");
    let queue = "iniesta-test-rslocks";
    let rest = format!(
        "{}[[bindings]]\nevents = [\"Slow.*\"]\nplugin = \"panicky\"\nhandler = \"sleepy\"\ntimeout_secs = 60\nconfig = {{ sleep_ms = 15000 }}\n",
        ledger(&got, "rs", r#"["Order.*", "Slow.*"]"#)
    );
    let config = RsConfig {
        service: "rslocks",
        sqs_extra: r#"filters = ["Order.*", "Slow.*"]"#,
        lock: &lock_server(redis.port),
        rest: &rest,
        ..RsConfig::CONSUMER
    }
    .write(&s, "iniesta.toml", &moto.url());
    ok(&config, &["setup"]);

    // Python holds the lock of a message before iniesta-rs sees it.
    let mut send = py_iniesta(&s, &moto.url(), "pyshop", Some(redis.port));
    send.env("INIESTA_SQS_QUEUE_NAME", queue).args([
        "publish-sqs",
        "Order.Created",
        r#"{"id": 5}"#,
    ]);
    let id = run_ok(send, "python iniesta publish-sqs");
    let key = format!("sqs:event:{id}");
    let mut hold = py_iniesta(&s, &moto.url(), "pyshop", Some(redis.port));
    hold.args(["hold-lock", &key, "6"]);
    let holder = s.path("holder.out");
    let mut holding = hold
        .stdout(std::fs::File::create(&holder).expect("file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("python holds");
    wait_for(
        "the Python lock",
        || read(&holder).contains("held"),
        || read(&holder),
    );
    for db in 1..=3 {
        assert!(
            !redis_get(redis.port, db, &key).is_empty(),
            "the Python lock is on DB {db}"
        );
    }
    let host = start_host(&config, s.path("host.log"));
    wait_for(
        "iniesta-rs to find the message locked",
        || host.log_text().contains("locked by another consumer"),
        || host.log_text(),
    );
    assert!(json_lines(&got).is_empty(), "not run while Python holds it");
    let _ = holding.wait();
    assert!(read(&holder).contains("released"), "{}", read(&holder));
    let line = only_line(&got, &moto.url(), queue, &|| host.log_text());
    assert_eq!(line["id"], id.as_str());
    assert_eq!(line["event"], "Order.Created.pyshop");
    assert_eq!(common::body_of(&line), json(r#"{"id": 5}"#));

    // iniesta-rs holds the lock while its slow handler runs; the Python Redlock is refused.
    std::fs::remove_file(&got).expect("reset ledger");
    let mut send = py_iniesta(&s, &moto.url(), "pyshop", Some(redis.port));
    send.env("INIESTA_SQS_QUEUE_NAME", queue)
        .args(["publish-sqs", "Slow.Created", r#"{"id": 6}"#]);
    let id = run_ok(send, "python iniesta publish-sqs");
    let key = format!("sqs:event:{id}");
    wait_for(
        "iniesta-rs to take the lock on DBs 1, 2 and 3",
        || (1..=3).all(|db| !redis_get(redis.port, db, &key).is_empty()),
        || {
            format!(
                "{}\nledger: {:?}\nkeys on DB 1: {}",
                host.log_text(),
                json_lines(&got),
                redis_keys(redis.port, 1)
            )
        },
    );
    let mut try_lock = py_iniesta(&s, &moto.url(), "pyshop", Some(redis.port));
    // --when-held: the Python side tries only while the key is held (the handler holds it for
    // 15 s, longer than the Python start-up on a busy machine), else it says "never held".
    try_lock.args(["try-lock", &key, "--when-held"]);
    let verdict = run_ok(try_lock, "python try-lock --when-held");
    assert_eq!(
        verdict.lines().last().unwrap_or_default(),
        "refused",
        "{verdict}\n{}",
        host.log_text()
    );
    wait_for(
        "the slow message to settle",
        || depth(&moto.url(), queue) == 0,
        || host.log_text(),
    );
    let lines = json_lines(&got);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["id"], id.as_str());
    let mut try_lock = py_iniesta(&s, &moto.url(), "pyshop", Some(redis.port));
    try_lock.args(["try-lock", &key]);
    assert_eq!(
        run_ok(try_lock, "python try-lock"),
        "taken",
        "released after settling"
    );
    host.stop();
}

/// One queue, two consumers — an iniesta-rs host and a Python iniesta service — under a burst:
/// every message is handled exactly once across both, the lock (same key, same DBs) deciding.
#[test]
fn python_and_iniesta_rs_consumers_on_one_queue_handle_each_message_once() {
    const N: usize = 40;
    let moto = Moto::start();
    let redis = RedisServer::start();
    let s = Scratch::new();
    let rs_ledger = s.path("rs.jsonl");
    let py_ledger = s.path("py.jsonl");
    let queue = "iniesta-test-shared";
    // Both hold the message (and its lock) for 200 ms, so a duplicate delivery overlaps.
    let rest = format!(
        "{}[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"panicky\"\nhandler = \"sleepy\"\nconfig = {{ sleep_ms = 200 }}\n",
        ledger(&rs_ledger, "rs", r#"["Order.*"]"#)
    );
    let config = RsConfig {
        service: "shared",
        sqs_extra: "filters = [\"Order.*\"]\npollers = 2\nmax_messages = 5",
        lock: &lock_urls(redis.port),
        rest: &rest,
        ..RsConfig::CONSUMER
    }
    .write(&s, "iniesta.toml", &moto.url());
    ok(&config, &["setup"]);
    let mut consume = py_iniesta(&s, &moto.url(), "shared", Some(redis.port));
    consume
        .env("INIESTA_INITIALIZATION_TYPE", r#"["EVENT_POLLING"]"#)
        .env("INIESTA_SQS_CONSUMER_FILTERS", r#"["Order.*"]"#)
        .env("INIESTA_SQS_RECEIVE_MESSAGE_MAX_NUMBER_OF_MESSAGES", "5")
        .env("PEER_HANDLER_SECONDS", "0.2")
        .args([
            "consume",
            &py_ledger.display().to_string(),
            // Nothing connects to the peer's HTTP port, but Sanic turns 0 into its default
            // 8000, so it gets a candidate; a taken one makes the peer exit loudly (not
            // retried yet: see common/ports.rs).
            &common::ports::unused_port().to_string(),
        ]);
    let peer = Peer::start(&s, consume, "shared");
    let host = start_host(&config, s.path("host.log"));

    let events: String = (0..N)
        .map(|n| format!("{{\"event\": \"Order.Created\", \"body\": {{\"n\": {n}}}}}\n"))
        .collect();
    let file = s.write("events.jsonl", &events);
    ok(&config, &["publish", "--file", &file.display().to_string()]);

    let counts = || {
        let mut counts: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (path, side) in [(&rs_ledger, "rs"), (&py_ledger, "python")] {
            for line in json_lines(path) {
                let body = json(line["body"].as_str().unwrap_or_default());
                assert_eq!(line["event"], "Order.Created.shared", "{line}");
                counts
                    .entry(body["n"].as_u64().unwrap_or(u64::MAX))
                    .or_default()
                    .push(side.to_string());
            }
        }
        counts
    };
    let logs = || format!("{}\n{}", host.log_text(), peer.logs());
    wait_for("every message handled", || counts().len() >= N, logs);
    wait_for(
        "the queue to drain",
        || depth(&moto.url(), queue) == 0,
        logs,
    );
    let counts = counts();
    let twice: Vec<_> = counts
        .iter()
        .filter(|(_, sides)| sides.len() != 1)
        .collect();
    assert!(
        twice.is_empty(),
        "handled more than once: {twice:?}\n{}",
        logs()
    );
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (0..N as u64).collect::<Vec<_>>()
    );
    let python_share = counts.values().filter(|sides| sides[0] == "python").count();
    assert!(
        python_share > 0 && python_share < N,
        "both consumers took part ({python_share} of {N} by Python)\n{}",
        logs()
    );
    host.stop();
}

// --- microcosm-pubsub ---------------------------------------------------------------------------

/// microcosm's SNSProducer publishes (no `iniesta_pass`: it routes by media type alone); the
/// iniesta-rs default binding, restricted by `media_types`, takes it once (media type from the
/// attribute microcosm sets). The same microcosm-encoded body sent without
/// any attribute is taken too: the media type is read from the body's `mediaType`.
#[test]
fn microcosm_publishes_and_iniesta_rs_routes_by_media_type() {
    let moto = Moto::start();
    let s = Scratch::new();
    let got = s.path("rs.jsonl");
    let other = s.path("other.jsonl");
    let queue = "iniesta-test-rsmedia";
    let rest = format!(
        "{}\nmedia_types = [\"{MEDIA_TYPE}\"]\n{}",
        ledger(&got, "media", "").trim_end(),
        ledger(&other, "other", r#"["Order.*"]"#)
    );
    let config = RsConfig {
        service: "rsmedia",
        initialization: r#"["QUEUE_POLLING"]"#,
        rest: &format!("\n{rest}"),
        ..RsConfig::CONSUMER
    }
    .write(&s, "iniesta.toml", &moto.url());
    ok(&config, &["setup"]);
    // microcosm services subscribe their queues themselves; raw delivery like iniesta's.
    subscribed_queue(&moto.url(), queue, true);
    let host = start_host(&config, s.path("host.log"));

    let mut produce = python(&s, "microcosm_peer.py", &moto.url());
    produce
        .env("PEER_MEDIA_TYPE", MEDIA_TYPE)
        .env("PEER_TOPIC_ARN", TOPIC)
        .args(["produce", r#"{"id": 7, "item": "book"}"#]);
    run_ok(produce, "microcosm produce");
    let line = only_line(&got, &moto.url(), queue, &|| host.log_text());
    let body = common::body_of(&line);
    assert_eq!(body["mediaType"], MEDIA_TYPE, "{line}");
    assert_eq!(
        (body["id"].clone(), body["item"].clone()),
        (7.into(), "book".into())
    );
    assert_eq!(line["attributes"]["media_type"], MEDIA_TYPE, "{line}");

    // The body microcosm's codec writes, with no attribute at all.
    std::fs::remove_file(&got).expect("reset ledger");
    let mut encode = python(&s, "microcosm_peer.py", &moto.url());
    encode
        .env("PEER_MEDIA_TYPE", MEDIA_TYPE)
        .env("PEER_TOPIC_ARN", TOPIC)
        .args(["encode", r#"{"id": 8, "item": "pen"}"#]);
    let encoded = run_ok(encode, "microcosm encode");
    assert_eq!(json(&encoded)["mediaType"], MEDIA_TYPE, "{encoded}");
    send_plain(&moto.url(), queue, &encoded);
    let line = only_line(&got, &moto.url(), queue, &|| host.log_text());
    assert_eq!(common::body_of(&line), json(&encoded), "{line}");
    assert!(
        json_lines(&other).is_empty(),
        "no event, so no event binding"
    );
    host.stop();
}

/// iniesta-rs publishes with a media type; a microcosm SQSConsumer (its default
/// CodecSQSEnvelope, through the SNS envelope as microcosm subscribes) accepts it and its
/// `@handles` handler gets the content once.
#[test]
fn iniesta_rs_publishes_with_a_media_type_and_microcosm_consumes() {
    let moto = Moto::start();
    let s = Scratch::new();
    let producer = RsConfig {
        service: "rsshop",
        initialization: r#"["SNS_PRODUCER"]"#,
        ..RsConfig::CONSUMER
    }
    .write(&s, "iniesta.toml", &moto.url());
    ok(&producer, &["setup"]);
    let queue = "microcosm-orders";
    let url = subscribed_queue(&moto.url(), queue, false);
    let got = s.path("microcosm.jsonl");
    let mut consume = python(&s, "microcosm_peer.py", &moto.url());
    consume
        .env("PEER_MEDIA_TYPE", MEDIA_TYPE)
        .args(["consume", &url, &got.display().to_string()]);
    let peer = Peer::start(&s, consume, "microcosm");

    ok(
        &producer,
        &[
            "publish",
            "--media-type",
            MEDIA_TYPE,
            "Order.Created",
            r#"{"id": 9, "item": "chair"}"#,
        ],
    );
    let line = only_line(&got, &moto.url(), queue, &|| peer.logs());
    assert_eq!(line["media_type"], MEDIA_TYPE, "{line}");
    assert_eq!(
        line["content"],
        json(r#"{"id": 9, "item": "chair"}"#),
        "{line}"
    );
    assert!(!read(&peer.err).contains("rejected"), "{}", peer.logs());
}

// --- acct and pop-evbus ---------------------------------------------------------------------------

/// The real `acct` CLI next to the peers' python.
fn acct_cli() -> PathBuf {
    peers_python().parent().expect("venv bin").join("acct")
}

const PROFILES_YAML: &str = "internal:\n  orders:\n    routing_key: orders-queue\nnats:\n  prod:\n    url: nats://nats.internal:4222\n    user: orders\n    password: s3cret\n";

fn profiles_json() -> serde_json::Value {
    json(
        r#"{"internal": {"orders": {"routing_key": "orders-queue"}},
            "nats": {"prod": {"url": "nats://nats.internal:4222", "user": "orders", "password": "s3cret"}}}"#,
    )
}

/// A file the real `acct encrypt` wrote is read by `iniesta acct show`; a file `iniesta acct
/// encrypt` wrote is read by the real `acct decrypt` and by pop-evbus, which routes an event to
/// the profile it found there.
#[test]
fn acct_files_work_both_ways_and_pop_evbus_reads_ours() {
    let s = Scratch::new();
    let plain = s.write("credentials.yml", PROFILES_YAML);
    let config = s.write("iniesta.toml", "service = \"acct\"\n");

    // acct → iniesta-rs.
    let theirs = s.path("theirs.fernet");
    let key = run_ok(
        {
            let mut cmd = Command::new(acct_cli());
            cmd.current_dir(s.dir.path())
                .args(["encrypt"])
                .arg(&plain)
                .arg("--output-file")
                .arg(&theirs);
            cmd
        },
        "acct encrypt",
    );
    let key = key.lines().last().unwrap_or_default().trim().to_string();
    let shown = ok(
        &config,
        &[
            "--acct-file",
            &theirs.display().to_string(),
            &format!("--acct-key={key}"),
            "acct",
            "show",
        ],
    );
    for table in ["[internal.orders]", "[nats.prod]"] {
        assert!(shown.contains(table), "{table} in:\n{shown}");
    }
    for field in ["routing_key", "url", "user", "password"] {
        assert!(shown.contains(field), "{field} in:\n{shown}");
    }
    assert!(!shown.contains("s3cret"), "values stay hidden:\n{shown}");

    // iniesta-rs → acct.
    let out = ok(&config, &["acct", "encrypt", &plain.display().to_string()]);
    let ours = s.path("credentials.yml.fernet");
    assert!(ours.exists(), "{out}");
    let our_key = out.lines().last().unwrap_or_default().trim().to_string();
    let decrypted = run_ok(
        {
            let mut cmd = Command::new(acct_cli());
            cmd.current_dir(s.dir.path())
                .arg("decrypt")
                .arg(&ours)
                // `=`: a Fernet key may begin with `-`.
                .arg(format!("--acct-key={our_key}"))
                .args(["--output", "json"]);
            cmd
        },
        "acct decrypt",
    );
    assert_eq!(json(&decrypted), profiles_json());

    // pop-evbus reads the same file and fans an event out to the profile's queue.
    let mut evbus = Command::new(peers_python());
    evbus
        .arg(script("evbus_peer.py"))
        .current_dir(s.dir.path())
        .args([
            &ours.display().to_string(),
            &our_key,
            "orders",
            r#"{"id": 10}"#,
        ]);
    let seen = json(&run_ok(evbus, "pop-evbus"));
    assert_eq!(
        seen["profiles"],
        json(r#"{"internal": ["orders"]}"#),
        "{seen}"
    );
    assert_eq!(seen["routing_key"], "orders-queue", "{seen}");
    assert_eq!(seen["received"], json(r#"{"id": 10}"#), "{seen}");
}
