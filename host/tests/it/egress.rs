//! Egress and ingress plugins (issue 7): one publish fans out to SNS (moto), a queue, the
//! jsonl file and NATS; a broker that is down gets its events when it is back while the others
//! are not held up; a running host redelivers from the outbox; handler publishes fan out too;
//! credential profiles are Fernet-encrypted (and read by Python's `cryptography`); a wrong key
//! or a tampered file is a clear error; an ingress plugin's message reaches a bound handler.
//!
//! Every test uses real servers on loopback ports (moto, nats-server started here) and the
//! real cdylib plugins from target/debug. Without a nats-server binary the NATS tests fail
//! (common/nats.rs says why they do not skip).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::aws::{aws_env, sqs, Moto};
use common::nats::{nats_server, Nats, Subscription};
use common::{Host, Scratch};

const LIMIT: Duration = Duration::from_secs(60);
const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:global";
const SECRET: &str = "n4ts-s3cret-pw";

/// `iniesta -c CONFIG ARGS...` with extra environment (AWS dummy credentials included).
fn iniesta_env(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    aws_env(&mut common::iniesta_command(config, args, env))
        .output()
        .expect("iniesta runs")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        common::strip_ansi(&String::from_utf8_lossy(&out.stderr)),
    )
}

fn ok(config: &Path, args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let out = iniesta_env(config, args, env);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "iniesta {args:?} failed:\n{stdout}{stderr}"
    );
    (stdout, stderr)
}

/// `iniesta acct encrypt FILE`: the key it printed.
fn encrypt(s: &Scratch, name: &str, plaintext: &str) -> (PathBuf, String) {
    let plain = s.write(name, plaintext);
    let config = s.write(
        "empty.toml",
        "service = \"x\"\ninitialization = [\"QUEUE_POLLING\"]\n",
    );
    let (stdout, _) = ok(
        &config,
        &["acct", "encrypt", plain.to_str().expect("utf-8")],
        &[],
    );
    let key = stdout
        .lines()
        .last()
        .expect("the key is printed last")
        .trim()
        .to_string();
    let mut fernet = plain.clone().into_os_string();
    fernet.push(".fernet");
    (PathBuf::from(fernet), key)
}

fn local_config(s: &Scratch, rest: &str) -> PathBuf {
    s.config("", rest)
}

/// `GET /metrics` on a loopback port.
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}

/// The value of one series, written exactly as Prometheus prints it (labels sorted).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn one_publish_reaches_sns_a_queue_the_jsonl_file_and_nats() {
    let binary = nats_server();
    let moto = Moto::start();
    let nats = Nats::start(binary, Some(("iniesta", SECRET)));
    let s = Scratch::new();
    let (acct_file, key) = encrypt(
        &s,
        "profiles.toml",
        &format!(
            "[nats.local]\nurl = \"{}\"\nuser = \"iniesta\"\npassword = \"{SECRET}\"\n",
            nats.url()
        ),
    );
    let acct = [
        ("INIESTA_ACCT_FILE", acct_file.to_str().expect("utf-8")),
        ("INIESTA_ACCT_KEY", key.as_str()),
    ];
    let jsonl = s.path("events.jsonl");
    let config = s.write(
        "iniesta.toml",
        &format!(
            "service = \"receiver\"\nenv = \"test\"\ninitialization = [\"EVENT_POLLING\", \"SNS_PRODUCER\"]\n\
             [broker]\nkind = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n\
             [sns]\ntopic_arn = \"{TOPIC}\"\n[sqs]\nfilters = [\"Order.*\"]\n\
             [plugins]\ndirs = [\"{}\"]\n\
             [[egress]]\nplugin = \"sns\"\n\
             [[egress]]\nplugin = \"sqs\"\nconfig = {{ queue = \"side-queue\" }}\n\
             [[egress]]\nplugin = \"jsonl\"\nconfig = {{ path = \"{}\" }}\n\
             [[egress]]\nplugin = \"nats\"\nprofile = \"local\"\n\
             [[bindings]]\ndefault = true\nplugin = \"ledger\"\nconfig = {{ path = \"{}\" }}\n",
            moto.url(),
            common::plugin_dir().display(),
            jsonl.display(),
            s.path("ledger.jsonl").display()
        ),
    );
    ok(&config, &["setup"], &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = sqs(&moto.url());
    let side = rt
        .block_on(client.create_queue().queue_name("side-queue").send())
        .expect("side queue")
        .queue_url()
        .unwrap_or_default()
        .to_string();
    let main = rt
        .block_on(
            client
                .get_queue_url()
                .queue_name("iniesta-test-receiver")
                .send(),
        )
        .expect("queue")
        .queue_url()
        .unwrap_or_default()
        .to_string();
    let mut sub = Subscription::new(&nats.url(), Some(("iniesta", SECRET)), "Order.>");

    let (stdout, stderr) = ok(
        &config,
        &["publish", "Order.Created", r#"{"id":1}"#, "-a", "k=v"],
        &acct,
    );
    assert!(stdout.contains("Order.Created.receiver"), "{stdout}");
    assert!(
        !stderr.contains("queued:"),
        "every egress took it:\n{stderr}"
    );
    assert!(
        !stderr.contains(SECRET) && !stdout.contains(SECRET),
        "a secret was shown:\n{stderr}"
    );

    // SNS → the subscribed queue, and the built-in sqs egress → side-queue.
    for url in [&main, &side] {
        let got = rt
            .block_on(
                client
                    .receive_message()
                    .queue_url(url)
                    .message_attribute_names("All")
                    .wait_time_seconds(5)
                    .send(),
            )
            .expect("receive");
        let message = got
            .messages()
            .first()
            .unwrap_or_else(|| panic!("{url}: nothing arrived"));
        assert_eq!(message.body(), Some(r#"{"id":1}"#));
        let attrs = message.message_attributes().cloned().unwrap_or_default();
        assert_eq!(
            attrs.get("iniesta_pass").and_then(|a| a.string_value()),
            Some("Order.Created.receiver")
        );
        assert_eq!(attrs.get("k").and_then(|a| a.string_value()), Some("v"));
    }

    // The jsonl file.
    let written = common::json_lines(&jsonl);
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(written[0]["event"], "Order.Created.receiver");
    assert_eq!(written[0]["body"], serde_json::json!({ "id": 1 }));
    assert_eq!(written[0]["attributes"]["k"], "v");
    let event_id = written[0]["id"].as_str().expect("id").to_string();

    // NATS, through the credentials of the encrypted profile; the same event id.
    let got = sub.next(LIMIT).expect("NATS got the event");
    assert_eq!(got.subject, "Order.Created.receiver");
    assert_eq!(got.body, br#"{"id":1}"#);
    assert_eq!(
        got.headers.get("iniesta_pass").map(String::as_str),
        Some("Order.Created.receiver")
    );
    assert_eq!(got.headers.get("k").map(String::as_str), Some("v"));
    assert_eq!(got.headers.get("Nats-Msg-Id"), Some(&event_id));

    // `iniesta plugins` shows profile names, never their values.
    let out = iniesta_env(&config, &["plugins"], &acct);
    let (stdout, stderr) = text(&out);
    assert!(
        stdout.contains("egress:jsonl") && stdout.contains("ingress:nats"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("egress  nats.local") && l.trim_end().ends_with("local")),
        "{stdout}"
    );
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "{stdout}{stderr}"
    );
}

#[test]
fn a_down_broker_gets_its_events_when_it_returns_and_holds_up_no_other_egress() {
    let binary = nats_server();
    let mut nats = Nats::start(binary, None);
    let s = Scratch::new();
    let jsonl = s.path("events.jsonl");
    let config = local_config(
        &s,
        &format!(
            "[outbox]\nattempts = 2\nmin_backoff_ms = 50\n\
             [[egress]]\nplugin = \"sns\"\n\
             [[egress]]\nplugin = \"jsonl\"\nconfig = {{ path = \"{}\" }}\n\
             [[egress]]\nplugin = \"nats\"\nconfig = {{ url = \"{}\", timeout_ms = 2000 }}\n",
            jsonl.display(),
            nats.url()
        ),
    );
    nats.down();

    let (stdout, stderr) = ok(&config, &["publish", "Order.First", r#"{"n":1}"#], &[]);
    assert!(stdout.contains("Order.First.receiver"), "{stdout}");
    assert!(
        stderr.contains("queued: nats did not take Order.First.receiver"),
        "{stderr}"
    );
    assert!(
        stderr.contains("egress failed; retrying"),
        "retried with backoff first:\n{stderr}"
    );
    // The others were not held up.
    assert_eq!(common::json_lines(&jsonl).len(), 1);
    let (stdout, _) = ok(&config, &["outbox"], &[]);
    assert!(
        stdout.contains("nats: 1 event(s) waiting, 2 attempt(s) so far; last error: "),
        "{stdout}"
    );

    // Still down: the next publish tries the waiting event once, keeps it, and queues the new
    // one behind it at once (no attempts of its own: they would only delay the publish, and a
    // success would overtake the waiting event).
    let (_, stderr) = ok(&config, &["publish", "Order.Second", r#"{"n":2}"#], &[]);
    assert!(stderr.contains("queued: nats"), "{stderr}");
    assert!(
        stderr.contains("queued behind the earlier events"),
        "{stderr}"
    );
    assert!(!stderr.contains("egress failed; retrying"), "{stderr}");
    let (stdout, _) = ok(&config, &["outbox"], &[]);
    assert!(stdout.contains("nats: 2 event(s) waiting"), "{stdout}");
    assert!(
        !stdout.contains("last error: queued behind"),
        "the egress's own error is shown: {stdout}"
    );
    assert_eq!(common::json_lines(&jsonl).len(), 2);

    // Back: the next publish delivers what waited, in order, then its own event.
    nats.up();
    let mut sub = Subscription::new(&nats.url(), None, "Order.>");
    let (_, stderr) = ok(&config, &["publish", "Order.Third", r#"{"n":3}"#], &[]);
    assert!(!stderr.contains("queued:"), "{stderr}");
    let subjects: Vec<String> = (0..3)
        .map(|_| sub.next(LIMIT).expect("NATS got every event").subject)
        .collect();
    assert_eq!(
        subjects,
        [
            "Order.First.receiver",
            "Order.Second.receiver",
            "Order.Third.receiver"
        ]
    );
    let ids: Vec<String> = common::json_lines(&jsonl)
        .iter()
        .map(|l| l["event"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        ids,
        [
            "Order.First.receiver",
            "Order.Second.receiver",
            "Order.Third.receiver"
        ]
    );
    let (stdout, _) = ok(&config, &["outbox"], &[]);
    assert!(stdout.contains("empty"), "{stdout}");
    // The topic egress (`sns`, here the local broker's topic) had each event at once too.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let queued = rt.block_on(common::queue_messages(&config, "iniesta-test-receiver"));
    let mut events: Vec<String> = queued
        .iter()
        .map(|m| m.attributes["iniesta_pass"].value.clone())
        .collect();
    events.sort();
    assert_eq!(
        events,
        [
            "Order.First.receiver",
            "Order.Second.receiver",
            "Order.Third.receiver"
        ]
    );
}

#[test]
fn a_running_host_redelivers_from_the_outbox_and_handler_publishes_fan_out() {
    let s = Scratch::new();
    let all = s.path("all.jsonl");
    let late = s.path("later/late.jsonl");
    let config = local_config(
        &s,
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [outbox]\nattempts = 1\nmin_backoff_ms = 100\nmax_backoff_secs = 1\n\
             [[egress]]\nplugin = \"sns\"\n\
             [[egress]]\nplugin = \"jsonl\"\nname = \"all\"\nconfig = {{ path = \"{}\" }}\n\
             [[egress]]\nplugin = \"jsonl\"\nname = \"late\"\nconfig = {{ path = \"{}\" }}\n\
             [[bindings]]\nevents = [\"Order.*\"]\nplugin = \"echo\"\nconfig = {{ publish = \"Echoed\" }}\n",
            all.display(),
            late.display(),
        ),
    );
    // The queue and its subscription exist before the publish, and the host starts only once
    // the CLI has written its outbox row: a host started first could consume the event and run
    // the handler's publish before that row exists, and would then try `late` itself instead of
    // queueing behind it (a race the test must not depend on).
    ok(&config, &["setup"], &[]);
    // `late` cannot be written (its directory is missing): the event waits for it, and the
    // topic and `all` get it at once.
    let (_, stderr) = ok(&config, &["publish", "Order.Created", r#"{"id":5}"#], &[]);
    assert!(stderr.contains("queued: late"), "{stderr}");
    let host = Host::start(&config, s.path("host.log"));
    let metrics_port = host.port();
    // The host consumes it from the topic's queue; the handler's own publish fans out too.
    s.wait_for("the handler's publish in all.jsonl", LIMIT, || {
        common::json_lines(&all).len() == 2
    });
    let events: Vec<String> = common::json_lines(&all)
        .iter()
        .map(|l| l["event"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(events, ["Order.Created.receiver", "Echoed.receiver"]);
    assert_eq!(
        common::json_lines(&all)[1]["body"],
        serde_json::json!({ "id": 5 })
    );
    s.wait_for(
        "the host to queue the handler's publish for late",
        LIMIT,
        || {
            let (stdout, _) = ok(&config, &["outbox"], &[]);
            stdout.contains("late: 2 event(s) waiting")
        },
    );
    let (stdout, _) = ok(&config, &["plugins"], &[]);
    assert!(
        stdout.contains("outbox: 2 event(s) waiting for `late`"),
        "{stdout}"
    );

    // The destination recovers: the running host delivers both, with their ids.
    std::fs::create_dir(s.path("later")).expect("mkdir");
    s.wait_for(
        "the host to drain the outbox into late.jsonl",
        LIMIT,
        || common::json_lines(&late).len() == 2,
    );
    let ids = |p: &Path| -> Vec<String> {
        let mut ids: Vec<String> = common::json_lines(p)
            .iter()
            .map(|l| l["id"].as_str().unwrap_or_default().to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&all), ids(&late));
    // The host removes a row right after its delivery lands.
    s.wait_for("the outbox to empty", LIMIT, || {
        ok(&config, &["outbox"], &[]).0.contains("empty")
    });
    // Reported in the metrics: the host's own publish queued for `late`, both redelivered,
    // nothing pending.
    s.wait_for("the pending gauge to reach 0", LIMIT, || {
        metric(
            &scrape(metrics_port),
            "iniesta_egress_outbox_pending{egress=\"late\"}",
        ) == Some(0.0)
    });
    let text = scrape(metrics_port);
    let series = |labels: &str| {
        metric(
            &text,
            &format!("iniesta_egress_deliveries_total{{{labels}}}"),
        )
    };
    assert_eq!(
        series("egress=\"late\",result=\"queued\""),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        series("egress=\"late\",result=\"redelivered\""),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        series("egress=\"all\",result=\"delivered\""),
        Some(1.0),
        "{text}"
    );
    let log = host.stop();
    assert!(log.contains("delivered from the outbox"), "{log}");
    // The handler's publish was not tried at `late`: the CLI's event already waited for it.
    assert!(
        log.contains("queued in the outbox behind the events already waiting"),
        "{log}"
    );
}

#[test]
fn encrypted_profiles_round_trip_and_python_reads_them() {
    let s = Scratch::new();
    let plaintext = format!(
        "[nats.prod]\nurl = \"nats://nats.internal:4222\"\nuser = \"svc\"\npassword = \"{SECRET}\"\n\n[jsonl.local]\npath = \"/tmp/x.jsonl\"\n"
    );
    let (fernet, key) = encrypt(&s, "creds.toml", &plaintext);
    let token = std::fs::read_to_string(&fernet).expect("the .fernet file is written");
    assert!(!token.contains(SECRET) && !token.contains("nats.prod"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&fernet)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "the encrypted file is private");
    }

    // `acct show` decrypts and lists profiles with values redacted.
    let config = s.write(
        "empty2.toml",
        "service = \"x\"\ninitialization = [\"QUEUE_POLLING\"]\n",
    );
    let (stdout, stderr) = ok(
        &config,
        &[
            "acct",
            "show",
            "--acct-file",
            fernet.to_str().expect("utf-8"),
            "--acct-key",
            &key,
        ],
        &[],
    );
    assert!(
        stdout.contains("[nats.prod]") && stdout.contains("password = \"***\""),
        "{stdout}"
    );
    assert!(stdout.contains("[jsonl.local]"), "{stdout}");
    assert!(
        !stdout.contains(SECRET) && !stdout.contains("nats.internal"),
        "{stdout}"
    );
    assert!(!stderr.contains(&key), "{stderr}");

    // Standard Fernet: Python's `cryptography` (in the moto venv) decrypts it; inside is the
    // msgpack of the profiles, as the real `acct encrypt` writes it.
    let out = common::stdout_of(Command::new(common::aws::moto_python()).args([
        "-c",
        "import sys, base64; from cryptography.fernet import Fernet; sys.stdout.write(base64.b64encode(Fernet(sys.argv[1].encode()).decrypt(open(sys.argv[2],'rb').read())).decode())",
        &key,
        fernet.to_str().expect("utf-8"),
    ]));
    use base64::Engine as _;
    let inner = base64::engine::general_purpose::STANDARD
        .decode(out.trim_ascii())
        .expect("base64");
    let data: serde_json::Value = rmp_serde::from_slice(&inner).expect("msgpack inside");
    assert_eq!(
        data,
        serde_json::json!({
            "nats": {"prod": {"url": "nats://nats.internal:4222", "user": "svc", "password": SECRET}},
            "jsonl": {"local": {"path": "/tmp/x.jsonl"}}
        })
    );
}

#[test]
fn a_wrong_key_or_a_tampered_file_is_a_clear_error_and_nothing_is_published() {
    let s = Scratch::new();
    let jsonl = s.path("from-profile.jsonl");
    // The jsonl path comes from the encrypted profile.
    let (fernet, key) = encrypt(
        &s,
        "creds.toml",
        &format!("[jsonl.local]\npath = \"{}\"\n", jsonl.display()),
    );
    let (_, other_key) = encrypt(&s, "other.toml", "[x.y]\nz = 1\n");
    let config = local_config(&s, "[[egress]]\nplugin = \"jsonl\"\nprofile = \"local\"\n");
    let file = fernet.to_str().expect("utf-8").to_string();
    let publish = |key: Option<&str>| {
        let mut env = vec![("INIESTA_ACCT_FILE", file.as_str())];
        if let Some(key) = key {
            env.push(("INIESTA_ACCT_KEY", key));
        }
        let out = iniesta_env(&config, &["publish", "Order.Created", "{}"], &env);
        let (stdout, stderr) = text(&out);
        (out.status.success(), stdout, stderr)
    };

    let (success, _, stderr) = publish(Some(&key));
    assert!(success, "{stderr}");
    assert_eq!(common::json_lines(&jsonl).len(), 1);

    let (success, stdout, stderr) = publish(Some(&other_key));
    assert!(!success);
    assert!(stdout.is_empty(), "nothing was published: {stdout}");
    assert!(
        stderr.contains("cannot decrypt with this key: either the key is not the one the file was encrypted with, or the file was changed after encryption"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&other_key) && !stderr.contains(&key),
        "{stderr}"
    );

    let (success, _, stderr) = publish(Some("not-a-key"));
    assert!(!success);
    assert!(
        stderr.contains("the acct key is not a Fernet key"),
        "{stderr}"
    );

    let (success, _, stderr) = publish(None);
    assert!(!success);
    assert!(
        stderr.contains("needs its key: set INIESTA_ACCT_KEY"),
        "{stderr}"
    );

    // Tampered: one character of the token changed.
    let mut token = std::fs::read(&fernet).expect("token").to_vec();
    let middle = token.len() / 2;
    token[middle] = if token[middle] == b'A' { b'B' } else { b'A' };
    std::fs::write(&fernet, &token).expect("tamper");
    let (success, _, stderr) = publish(Some(&key));
    assert!(!success);
    assert!(stderr.contains("cannot decrypt with this key"), "{stderr}");
    assert_eq!(
        common::json_lines(&jsonl).len(),
        1,
        "nothing more was published"
    );

    // A profile the file does not have.
    let (fernet, key) = encrypt(&s, "creds2.toml", "[jsonl.other]\npath = \"/nowhere\"\n");
    let out = iniesta_env(
        &config,
        &["publish", "Order.Created", "{}"],
        &[
            ("INIESTA_ACCT_FILE", fernet.to_str().expect("utf-8")),
            ("INIESTA_ACCT_KEY", &key),
        ],
    );
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains(
            "egress[0].profile: the acct file has no profile `[jsonl.local]` (it has: jsonl.other)"
        ),
        "{stderr}"
    );
    assert!(
        !stderr.contains("/nowhere"),
        "values are never shown: {stderr}"
    );
}

#[test]
fn an_ingress_message_is_handled_by_the_bound_handler() {
    let binary = nats_server();
    let nats = Nats::start(binary, None);
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl");
    let config = local_config(
        &s,
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:0\"\n[console]\nenabled = true\n\
             [[ingress]]\nplugin = \"nats\"\nconfig = {{ url = \"{}\", subject = \"ext.>\", strip_prefix = \"ext.\" }}\n\
             [[bindings]]\nevents = [\"Order.*\"]\nplugin = \"ledger\"\nconfig = {{ path = \"{}\", label = \"orders\" }}\n\
             [[bindings]]\nevents = [\"Boom.*\"]\nplugin = \"panicky\"\nhandler = \"panicky\"\n",
            nats.url(),
            ledger.display()
        ),
    );
    let host = Host::start(&config, s.path("host.log"));
    let port = host.port();
    s.wait_for("the ingress to subscribe", LIMIT, || {
        host.log_text()
            .contains("nats ingress subscribed to `ext.>`")
    });
    let client = Subscription::new(&nats.url(), None, "unused.subject");
    // The event name from the subject, and from the iniesta_pass header.
    client.publish("ext.Order.Shipped", &[("tracking", "T-1")], br#"{"id":7}"#);
    client.publish(
        "ext.anything",
        &[("iniesta_pass", "Order.Paid.shop")],
        br#"{"id":8}"#,
    );
    s.wait_for("both ingress messages in the ledger", LIMIT, || {
        s.ledger("ledger.jsonl").len() == 2
    });
    let lines = s.ledger("ledger.jsonl");
    let mut events: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["event"].as_str().unwrap_or_default().to_string(),
                l["body"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    events.sort();
    assert_eq!(
        events,
        [
            ("Order.Paid.shop".to_string(), r#"{"id":8}"#.to_string()),
            ("Order.Shipped".to_string(), r#"{"id":7}"#.to_string())
        ]
    );
    let shipped = lines
        .iter()
        .find(|l| l["event"] == "Order.Shipped")
        .expect("shipped");
    assert_eq!(shipped["attributes"]["tracking"], "T-1");
    assert_eq!(shipped["label"], "orders");

    // Ingress calls count like queue calls, and their failures reach the console.
    client.publish("ext.Boom.Now", &[], br#"{"please":"panic"}"#);
    s.wait_for("the ingress failure on the console", LIMIT, || {
        common::http_get(port, "/api/state").is_some_and(|(_, body)| {
            body.contains("Boom.Now") && body.contains("panicky was asked to panic")
        })
    });
    let (_, metrics) = common::http_get(port, "/metrics").expect("/metrics answers");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("iniesta_handler_calls_total")
                && l.contains("binding=\"ledger\"")
                && l.contains("result=\"ack\"")
                && l.ends_with(" 2")),
        "{metrics}"
    );

    // No binding takes it: the plugin learns why (core NATS cannot redeliver: dropped).
    client.publish("ext.Nobody.Cares", &[], b"{}");
    s.wait_for("the unbound message to be reported", LIMIT, || {
        host.log_text().contains(
            "`Nobody.Cares` on `ext.Nobody.Cares` was not handled (no binding takes `Nobody.Cares`",
        )
    });
    let log = host.stop();
    assert!(log.contains("ingress stopped"), "{log}");
    assert_eq!(s.ledger("ledger.jsonl").len(), 2);
}

#[test]
fn an_ingress_fed_inline_binding_runs_inline() {
    let nats = Nats::start(nats_server(), None);
    let s = Scratch::new();
    // An `inline = true` binding whose handler sleeps 1.5 s with a 1 s timeout: run inline it
    // cannot be abandoned, so its ack counts and the overrun is counted; on the blocking pool
    // it would be abandoned at its timeout (`result="timeout"`) and nothing counts an overrun.
    let config = local_config(
        &s,
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [[ingress]]\nplugin = \"nats\"\nconfig = {{ url = \"{}\", subject = \"ext.>\", strip_prefix = \"ext.\" }}\n\
             [[bindings]]\nevents = [\"Slow.*\"]\nplugin = \"panicky\"\nhandler = \"sleepy\"\ninline = true\ntimeout_secs = 1\nconfig = {{ sleep_ms = 1500 }}\n",
            nats.url(),
        ),
    );
    let host = Host::start(&config, s.path("host.log"));
    let port = host.port();
    s.wait_for("the ingress to subscribe", LIMIT, || {
        host.log_text()
            .contains("nats ingress subscribed to `ext.>`")
    });
    let client = Subscription::new(&nats.url(), None, "unused.subject");
    client.publish("ext.Slow.Now", &[], b"{}");
    let series = |text: &str, name: &str, result: Option<&str>| {
        text.lines().any(|l| {
            l.starts_with(name)
                && l.contains("panicky/sleepy")
                && result.is_none_or(|r| l.contains(&format!("result=\"{r}\"")))
                && l.ends_with(" 1")
        })
    };
    s.wait_for("the inline call to be counted", LIMIT, || {
        series(&scrape(port), "iniesta_handler_calls_total", None)
    });
    let text = scrape(port);
    let log = host.stop();
    assert!(
        series(&text, "iniesta_handler_calls_total", Some("ack")),
        "the inline call is not abandoned at its timeout: {text}\n{log}"
    );
    assert!(
        series(&text, "iniesta_inline_handler_overruns_total", None),
        "an inline overrun is counted: {text}\n{log}"
    );
}

#[test]
fn config_check_names_egress_and_ingress_entries_no_plugin_serves() {
    let s = Scratch::new();
    let config = local_config(
        &s,
        "[[egress]]\nplugin = \"kafka\"\n\
         [[egress]]\nplugin = \"jsonl\"\nconfig = { path = \"x.jsonl\" }\n\
         [[egress]]\nplugin = \"sqs\"\n\
         [[ingress]]\nplugin = \"jsonl\"\n\
         [[ingress]]\nplugin = \"nats\"\ningress = \"jetstream\"\n",
    );
    let out = iniesta_env(&config, &["config", "check"], &[]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("egress[2].config: the built-in `sqs` egress needs the queue: config = { queue = \"name\" }"),
        "{stderr}"
    );
    // Fixed the config-level problem: the plugin-level ones are named next.
    let config = local_config(
        &s,
        "[[egress]]\nplugin = \"kafka\"\n\
         [[egress]]\nplugin = \"jsonl\"\nconfig = { path = \"x.jsonl\" }\n\
         [[ingress]]\nplugin = \"jsonl\"\n\
         [[ingress]]\nplugin = \"nats\"\ningress = \"jetstream\"\n\
         [[bindings]]\ndefault = true\nplugin = \"echo\"\n",
    );
    let out = iniesta_env(&config, &["config", "check"], &[]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    for expected in [
        "egress[0].plugin: no plugin named `kafka` is loaded",
        "ingress[0].plugin: plugin `jsonl` exports no ingress",
        "ingress[1].ingress: plugin `nats` has no ingress `jetstream` (it exports: nats)",
    ] {
        assert!(stderr.contains(expected), "{expected}\n{stderr}");
    }
    assert!(!stderr.contains("egress[1]"), "{stderr}");
}

#[test]
fn a_running_host_delivers_to_nats_once_it_is_back() {
    let binary = nats_server();
    let s = Scratch::new();
    // A JetStream stream captures what the host publishes on `Order.>` (plain core publishes),
    // and keeps it across the server restart: the test reads it whenever it likes, so no
    // subscriber has to race the host's reconnect.
    let mut nats = Nats::start_with_jetstream(binary, s.path("js"));
    let admin = Subscription::new(&nats.url(), None, "unused.subject");
    let created = admin.request(
        "$JS.API.STREAM.CREATE.EVENTS",
        r#"{"name":"EVENTS","subjects":["Order.>"],"storage":"file"}"#,
    );
    assert!(created.get("error").is_none(), "{created}");
    drop(admin);
    let config = local_config(
        &s,
        &format!(
            "[outbox]\nattempts = 1\nmin_backoff_ms = 100\nmax_backoff_secs = 1\n\
             [[egress]]\nplugin = \"nats\"\nconfig = {{ url = \"{}\", timeout_ms = 2000 }}\n\
             [[bindings]]\ndefault = true\nplugin = \"ledger\"\nconfig = {{ path = \"{}\" }}\n",
            nats.url(),
            s.path("ledger.jsonl").display()
        ),
    );
    let host = Host::start(&config, s.path("host.log"));
    nats.down();
    let (_, stderr) = ok(&config, &["publish", "Order.Created", r#"{"id":9}"#], &[]);
    assert!(stderr.contains("queued: nats"), "{stderr}");
    // The host tries, fails, backs off...
    s.wait_for("the host to retry the down broker", LIMIT, || {
        host.log_text()
            .contains("egress still failing; the event stays in the outbox")
    });
    // ...and delivers once the broker is back.
    nats.up();
    s.wait_for("the host to drain the outbox into NATS", LIMIT, || {
        ok(&config, &["outbox"], &[]).0.contains("empty")
    });
    let admin = Subscription::new(&nats.url(), None, "unused.subject");
    let got = admin.request("$JS.API.STREAM.MSG.GET.EVENTS", r#"{"seq":1}"#);
    let message = &got["message"];
    assert_eq!(message["subject"], "Order.Created.receiver", "{got}");
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD
        .decode(message["data"].as_str().expect("data"))
        .expect("base64");
    assert_eq!(data, br#"{"id":9}"#);
    let info = admin.request("$JS.API.STREAM.INFO.EVENTS", "");
    assert_eq!(info["state"]["messages"], 1, "delivered once: {info}");
    let log = host.stop();
    assert!(log.contains("delivered from the outbox"), "{log}");
}

#[test]
fn a_hanging_egress_holds_up_no_other_egress() {
    // A "NATS server" that accepts connections and never says a word: the nats egress hangs
    // until its attempt times out. The jsonl egress must have the event long before that.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = silent.local_addr().expect("addr").port();
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in silent.incoming().take(4).flatten() {
            open.push(stream);
        }
        std::thread::sleep(Duration::from_secs(30));
        drop(open);
    });
    let s = Scratch::new();
    let jsonl = s.path("events.jsonl");
    let config = local_config(
        &s,
        &format!(
            "[outbox]\nattempts = 1\nattempt_timeout_secs = 6\n\
             [[egress]]\nplugin = \"nats\"\nconfig = {{ url = \"nats://127.0.0.1:{port}\", timeout_ms = 20000 }}\n\
             [[egress]]\nplugin = \"jsonl\"\nconfig = {{ path = \"{}\" }}\n",
            jsonl.display()
        ),
    );
    let log = s.path("publish.log");
    let mut publish = aws_env(Command::new(common::bin()).arg("-c").arg(&config).args([
        "publish",
        "Order.Created",
        r#"{"n":1}"#,
    ]))
    .env("INIESTA_LOG", "info")
    .env("NO_COLOR", "1")
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(&log).expect("log file"))
    .spawn()
    .expect("publish starts");
    s.wait_for("the jsonl egress to have the event", LIMIT, || {
        common::json_lines(&jsonl).len() == 1
    });
    // Had the egresses been tried one after the other, the nats attempt would have timed out
    // (and said so) before the jsonl one began.
    let so_far = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !so_far.contains("no answer within"),
        "jsonl had to wait for the hanging egress:\n{so_far}"
    );
    let status = publish.wait().expect("publish ends");
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("no answer within 6 s") && stderr.contains("queued: nats"),
        "{stderr}"
    );
    let (stdout, _) = ok(&config, &["outbox"], &[]);
    assert!(stdout.contains("nats: 1 event(s) waiting"), "{stdout}");
    drop(held);
}

/// The outbox drain shares batch calls: 25 events kept while the destination refused them go
/// out in three calls (10, 10, 5) through the built-in `sqs` egress, where one at a time they
/// took 25; every one arrives.
#[tokio::test]
async fn the_outbox_drain_sends_a_batch_at_a_time_to_a_standard_destination() {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    let s = Scratch::new();
    let path = s.config(
        "",
        "[outbox]\nattempts = 1\nmin_backoff_ms = 10\n\
         [[egress]]\nplugin = \"sqs\"\nconfig = { queue = \"iniesta-test-receiver\" }\n",
    );
    let config = iniesta::config::Config::read(&path).expect("the config reads");
    let local = Arc::new(
        iniesta::broker::local::LocalBroker::open(&config)
            .await
            .expect("the local broker opens"),
    );
    let paced = Arc::new(common::paced::Paced::new(local.clone(), Duration::ZERO));
    let calls = paced.calls.clone();
    calls.fail_sends.store(true, Ordering::SeqCst);
    let plugins = iniesta::plugins::PluginSet::scan(&config.plugin_dirs());
    let fanout = iniesta::egress::build_fanout(&config, &plugins, None, paced)
        .expect("the fan-out builds")
        .expect("one egress");
    for n in 0..25 {
        let message = iniesta::wire::Outgoing {
            event: "Order.Created.receiver".into(),
            body: format!(r#"{{"n":{n}}}"#).into_bytes(),
            attributes: Default::default(),
        };
        fanout.publish(&message).await.expect("kept in the outbox");
    }
    assert!(local
        .messages("iniesta-test-receiver")
        .await
        .expect("messages")
        .is_empty());
    calls.send_batches.lock().expect("not poisoned").clear();
    calls.fail_sends.store(false, Ordering::SeqCst);
    let report = fanout.drain(false).await;
    assert_eq!((report.delivered, report.failed), (25, 0));
    let batches = calls.send_batches.lock().expect("not poisoned").clone();
    assert_eq!(batches, [10, 10, 5], "one call per batch");
    assert_eq!(
        local
            .messages("iniesta-test-receiver")
            .await
            .expect("messages")
            .len(),
        25
    );
}
