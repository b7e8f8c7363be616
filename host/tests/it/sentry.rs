//! Sentry reporting (`[errors.sentry]`, issue 25), end to end: a real host with real plugins
//! sends to a loopback Sentry stand-in (common/capture.rs) that records each envelope POSTed
//! to `/api/PROJECT/envelope/`; the test decodes the envelopes the `sentry` crate wrote and
//! checks the events, their grouping, tags, user, environment and release, and that no body
//! or secret leaks by default.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::capture::{Capture, Request};
use common::{Host, Scratch};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(120);

/// A Sentry envelope: a header line, then items — each a header line with `type` (and
/// usually `length`) and its payload: `length` bytes, or up to the next newline.
fn decode_envelope(bytes: &[u8]) -> (Value, Vec<(Value, Vec<u8>)>) {
    let mut rest = bytes;
    let line = |rest: &mut &[u8]| -> Option<Vec<u8>> {
        if rest.is_empty() {
            return None;
        }
        let end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
        let out = rest[..end].to_vec();
        *rest = &rest[(end + 1).min(rest.len())..];
        Some(out)
    };
    let header: Value = serde_json::from_slice(&line(&mut rest).expect("envelope header"))
        .expect("the envelope header is JSON");
    let mut items = Vec::new();
    while let Some(item_header) = line(&mut rest) {
        if item_header.is_empty() {
            continue;
        }
        let item_header: Value =
            serde_json::from_slice(&item_header).expect("an item header is JSON");
        let payload = match item_header["length"].as_u64() {
            Some(n) => {
                let n = n as usize;
                let payload = rest[..n].to_vec();
                rest = &rest[n..];
                if rest.first() == Some(&b'\n') {
                    rest = &rest[1..];
                }
                payload
            }
            None => line(&mut rest).unwrap_or_default(),
        };
        items.push((item_header, payload));
    }
    (header, items)
}

/// The events in the envelopes the stand-in got.
fn events(sentry: &Capture) -> Vec<Value> {
    sentry
        .requests()
        .iter()
        .flat_map(|r| decode_envelope(&r.body).1)
        .filter(|(h, _)| h["type"] == "event")
        .map(|(_, payload)| serde_json::from_slice(&payload).expect("an event is JSON"))
        .collect()
}

fn failure_events<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["tags"]["failure_kind"] == kind)
        .collect()
}

/// An event's level as Sentry reads it: absent means `error`.
fn level(event: &Value) -> &str {
    event["level"].as_str().unwrap_or("error")
}

fn dsn(sentry: &Capture) -> String {
    format!("http://public-key-123@127.0.0.1:{}/42", sentry.port)
}

const SCHEMA: &str =
    r#"{"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}}"#;

fn bindings(s: &Scratch) -> String {
    std::fs::create_dir_all(s.path("schemas")).expect("mkdir");
    s.write("schemas/order.json", SCHEMA);
    let ledger = s.path("ledger.jsonl").display().to_string();
    format!(
        "[[bindings]]\nevents = [\"Boom.*\"]\nplugin = \"panicky\"\nhandler = \"panicky\"\n\
         [[bindings]]\nevents = [\"Flaky.*\"]\nplugin = \"flaky\"\nconfig = {{ mode = \"error\", fail_times = 2 }}\n\
         [[bindings]]\nevents = [\"Bad.*\"]\nplugin = \"flaky\"\nconfig = {{ mode = \"dead-letter\" }}\n\
         [[bindings]]\nevents = [\"Slow.*\"]\nplugin = \"panicky\"\nhandler = \"sleepy\"\ntimeout_secs = 1\nconfig = {{ sleep_ms = 2500 }}\n\
         [[bindings]]\nevents = [\"Order.*\"]\nplugin = \"ledger\"\nschema = \"schemas/order.json\"\nconfig = {{ path = \"{ledger}\" }}\n\
         [[bindings]]\nevents = [\"Orphan.*\"]\nplugin = \"crashy\"\n\
         [plugins.isolate]\nnames = [\"crashy\"]\nmax_backoff_secs = 1\n"
    )
}

const SECRET_BODY: &str = r#"{"id": 1, "customer": {"id": "c-9"}, "user": "u-1", "password": "hunter2", "opaqueData": {"region": "eu"}, "note": "private note: panic"}"#;

#[test]
fn handler_failures_reach_sentry_grouped_tagged_and_scrubbed() {
    let sentry = Capture::start();
    let s = Scratch::new();
    let rest = format!(
        "{}[errors.sentry]\ndsn = \"{}\"\nuser_id = \"body.user\"\n\
         tags = {{ \"attributes.tenant\" = \"tenant\", \"body.customer.id\" = \"customer\", \"region\" = \"region\", \"attributes.api_token\" = \"apitok\", \"body.password\" = \"pw\" }}\n",
        bindings(&s),
        dsn(&sentry)
    );
    let config = s.config("max_receive_count = 5", &rest);
    let host = Host::start(&config, s.path("host.log"));
    let attributes = ["-a", "tenant=acme", "-a", "api_token=tok-very-secret"];
    let publish = |event: &str, body: &str| {
        let mut args = vec![event, body];
        args.extend_from_slice(&attributes);
        common::publish(&config, &args)
    };
    publish("Boom.Now", SECRET_BODY);
    publish("Boom.Again", SECRET_BODY);
    publish("Flaky.Twice", SECRET_BODY);
    publish("Bad.Input", SECRET_BODY);
    publish("Slow.Job", SECRET_BODY);
    publish(
        "Order.Invalid",
        &SECRET_BODY.replace("\"id\": 1", "\"id\": \"x\""),
    );
    publish("Order.Fine", SECRET_BODY);
    // The isolated worker exits (status 3) under the message: a worker crash.
    publish("Orphan.Crash", &SECRET_BODY.replace("panic", "exit"));
    s.wait_for(
        "an event of each kind, two panics, two errors",
        LIMIT,
        || {
            let events = events(&sentry);
            ["dead_letter", "timeout", "schema", "crashed"]
                .iter()
                .all(|k| !failure_events(&events, k).is_empty())
                && failure_events(&events, "panic").len() >= 2
                && failure_events(&events, "error").len() >= 2
        },
    );
    let log = host.stop();
    let requests = sentry.requests();
    let events = events(&sentry);

    // The stand-in was addressed as the DSN says, with the DSN's public key.
    for request in &requests {
        let Request { method, path, .. } = request;
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("POST", "/api/42/envelope/")
        );
        let auth = request.header("x-sentry-auth").unwrap_or_default();
        assert!(auth.contains("sentry_key=public-key-123"), "{auth}");
        assert_eq!(
            request.header("content-type"),
            Some("application/x-sentry-envelope")
        );
    }

    // Every event: environment from `env`, the host's release, tags and the message context.
    for event in &events {
        assert_eq!(event["environment"], "test", "{event}");
        assert_eq!(
            event["release"],
            format!("iniesta@{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(event["tags"]["service"], "receiver");
        assert_eq!(
            event["tags"]["tenant"], "acme",
            "attributes.tenant: {event}"
        );
        assert_eq!(
            event["tags"]["customer"], "c-9",
            "body.customer.id: {event}"
        );
        assert_eq!(event["tags"]["region"], "eu", "opaqueData.region: {event}");
        for secret_source in ["apitok", "pw"] {
            assert!(
                event["tags"].get(secret_source).is_none(),
                "a source through a secret name is never read: {event}"
            );
        }
        assert_eq!(event["user"]["id"], "u-1", "body.user: {event}");
        let message = &event["contexts"]["message"];
        assert!(message["message_id"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        assert!(message["receive_count"].as_u64().unwrap_or(0) >= 1);
        assert_eq!(message["body"], "[left out]", "no body by default");
        assert_eq!(message["attributes"]["api_token"], "[Filtered]");
        assert_eq!(message["attributes"]["tenant"], "acme");
        let fingerprint = event["fingerprint"].as_array().expect("a fingerprint");
        assert_eq!(fingerprint.len(), 4, "{event}");
        assert!(
            !fingerprint.iter().any(|f| f == &message["message_id"]),
            "never grouped by message id: {event}"
        );
    }

    // The panic: an unhandled exception with the panic message, tagged with its binding.
    let panics = failure_events(&events, "panic");
    let panic = *panics
        .iter()
        .find(|e| e["tags"]["event"] == "Boom.Now.receiver")
        .expect("the Boom.Now panic");
    // Sentry reads a missing level as `error`, its default, and the crate leaves it out.
    assert_eq!(level(panic), "error");
    assert_eq!(panic["tags"]["binding"], "bindings[0] (panicky/panicky)");
    assert_eq!(panic["tags"]["plugin"], "panicky");
    assert!(panic["tags"]["plugin_version"].as_str().is_some());
    assert_eq!(panic["tags"]["event"], "Boom.Now.receiver");
    let exception = &panic["exception"]["values"][0];
    assert_eq!(exception["type"], "HandlerPanic");
    assert_eq!(exception["mechanism"]["handled"], false);
    assert!(exception["value"]
        .as_str()
        .unwrap_or_default()
        .contains("asked to panic"));

    // Grouping: the two panics (different messages, different ids in the text) are one
    // issue; the two errors of one binding (different delivery numbers) are one issue; each
    // binding and kind is its own.
    let fingerprints = |kind: &str| -> BTreeSet<String> {
        failure_events(&events, kind)
            .iter()
            .map(|e| e["fingerprint"].to_string())
            .collect()
    };
    let panic_ids: BTreeSet<&str> = panics
        .iter()
        .filter_map(|e| e["contexts"]["message"]["message_id"].as_str())
        .collect();
    assert_eq!(panic_ids.len(), 2, "two messages: {panic_ids:?}");
    assert_eq!(
        fingerprints("panic").len(),
        1,
        "{:?}",
        fingerprints("panic")
    );
    assert_eq!(
        fingerprints("error").len(),
        1,
        "{:?}",
        fingerprints("error")
    );
    let all: BTreeSet<String> = events
        .iter()
        .map(|e| e["fingerprint"].to_string())
        .collect();
    assert_eq!(all.len(), 6, "one issue per binding and kind: {all:?}");
    assert_eq!(
        failure_events(&events, "error")[0]["fingerprint"],
        serde_json::json!([
            "iniesta",
            "bindings[1] (flaky/flaky)",
            "error",
            "delivery N failed on purpose"
        ])
    );

    // A worker crash: an unhandled exception of the isolated binding, an error; every
    // redelivery that crashes again is the same issue.
    let crashes = failure_events(&events, "crashed");
    assert_eq!(
        fingerprints("crashed").len(),
        1,
        "{:?}",
        fingerprints("crashed")
    );
    let crash = crashes[0];
    assert_eq!(level(crash), "error");
    assert_eq!(crash["tags"]["binding"], "bindings[5] (crashy/crashy)");
    assert_eq!(crash["exception"]["values"][0]["type"], "HandlerCrashed");
    assert_eq!(
        crash["exception"]["values"][0]["mechanism"]["handled"],
        false
    );

    // Dead letters and schema rejections are warnings; the schema one names the event.
    let dead = failure_events(&events, "dead_letter")[0];
    assert_eq!(level(dead), "warning");
    let schema = failure_events(&events, "schema")[0];
    assert_eq!(level(schema), "warning");
    assert_eq!(schema["tags"]["event"], "Order.Invalid.receiver");
    assert_eq!(
        schema["fingerprint"],
        serde_json::json!([
            "iniesta",
            "event Order.Invalid.receiver",
            "schema",
            "schema"
        ])
    );

    // An ack is no event; nothing secret left the host, nor is the DSN's key in the log.
    assert!(!events
        .iter()
        .any(|e| e["tags"]["event"] == "Order.Fine.receiver"));
    for request in &requests {
        let raw = String::from_utf8_lossy(&request.body);
        for secret in ["hunter2", "tok-very-secret", "private note"] {
            assert!(!raw.contains(secret), "{secret} leaked: {raw}");
        }
    }
    assert!(
        !log.contains("public-key-123"),
        "the DSN is never logged:\n{log}"
    );
    assert_eq!(s.ledger("ledger.jsonl").len(), 1, "the good order ran once");
}

#[test]
fn a_dsn_from_the_environment_bodies_on_request_and_host_incidents_once_per_change() {
    let sentry = Capture::start();
    let s = Scratch::new();
    let rest = format!(
        "{}[errors.sentry]\ninclude_bodies = true\ndrop_keys = [\"customer\"]\n",
        bindings(&s)
    );
    let config = s.config("", &rest);
    let good = std::fs::read_to_string(&config).expect("config");
    let host = Host::start_with_env(
        &config,
        s.path("host.log"),
        &[("SENTRY_DSN", &dsn(&sentry))],
    );
    common::publish(&config, &["Boom.Now", SECRET_BODY]);
    s.wait_for("the panic event", LIMIT, || {
        !failure_events(&events(&sentry), "panic").is_empty()
    });
    let events_now = events(&sentry);
    let body = &failure_events(&events_now, "panic")[0]["contexts"]["message"]["body"];
    assert_eq!(body["password"], "[Filtered]", "{body}");
    assert_eq!(body["customer"], "[Filtered]", "drop_keys: {body}");
    assert_eq!(
        body["note"], "private note: panic",
        "the body is there on request: {body}"
    );

    // A config the reload refuses raises the `config` incident once, however often it is
    // refused; a good config clears it; the next refusal is a new incident.
    let alerts = |sentry: &Capture| -> usize {
        events(sentry)
            .iter()
            .filter(|e| e["tags"]["alert"] == "config")
            .count()
    };
    let refusals = |host: &Host| host.log_text().matches("config change refused").count();
    let bad = |n: u32| {
        good.replace(
            "wait_time_seconds = 1",
            &format!("wait_time_seconds = \"{n}\""),
        )
    };
    s.write("iniesta.toml", &bad(1));
    s.wait_for("the first refusal", LIMIT, || {
        refusals(&host) >= 1 && alerts(&sentry) == 1
    });
    s.write("iniesta.toml", &bad(2));
    s.wait_for("the second refusal", LIMIT, || refusals(&host) >= 2);
    s.write("iniesta.toml", &good);
    s.wait_for("the config valid again", LIMIT, || {
        host.log_text().contains("the config file is valid again")
    });
    assert_eq!(alerts(&sentry), 1, "one incident for two refusals in a row");
    s.write("iniesta.toml", &bad(3));
    s.wait_for("a new incident", LIMIT, || alerts(&sentry) == 2);
    let log = host.stop();
    let incident = events(&sentry)
        .into_iter()
        .find(|e| e["tags"]["alert"] == "config")
        .expect("the incident");
    assert_eq!(level(&incident), "error");
    assert_eq!(
        incident["fingerprint"],
        serde_json::json!(["iniesta-host", "config"])
    );
    assert!(incident["message"]
        .as_str()
        .unwrap_or_default()
        .contains("config change refused"));
    assert!(
        !log.contains("public-key-123"),
        "the DSN is never logged:\n{log}"
    );
}

#[test]
fn an_unreachable_sentry_never_holds_up_the_pipeline_and_is_logged_once() {
    let s = Scratch::new();
    let dead = common::ports::unused_port();
    let ledger = s.path("ledger.jsonl").display().to_string();
    let rest = format!(
        "[[bindings]]\nevents = [\"Boom.*\"]\nplugin = \"panicky\"\nhandler = \"panicky\"\n\
         [[bindings]]\nevents = [\"Order.*\"]\nplugin = \"ledger\"\nconfig = {{ path = \"{ledger}\" }}\n\
         [errors.sentry]\ndsn = \"http://k@127.0.0.1:{dead}/1\"\ntimeout_secs = 1\n"
    );
    let config = s.config("visibility_timeout = 1", &rest);
    let host = Host::start(&config, s.path("host.log"));
    for n in 0..3 {
        common::publish(&config, &["Boom.Now", &format!("{{\"panic\":{n}}}")]);
    }
    for n in 0..5 {
        common::publish(&config, &["Order.Fine", &format!("{{\"n\":{n}}}")]);
    }
    s.wait_for("the orders and several failed reports", LIMIT, || {
        s.ledger("ledger.jsonl").len() == 5
            && host
                .log_text()
                .matches("panicky was asked to panic")
                .count()
                >= 3
    });
    let log = host.stop();
    assert_eq!(
        log.matches("Sentry cannot be reached").count(),
        1,
        "logged once:\n{log}"
    );
}

#[test]
fn a_lock_outage_and_a_refused_plugin_file_are_each_one_incident_per_state_change() {
    let sentry = Capture::start();
    let mut redis = common::redis::RedisServer::start();
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl").display().to_string();
    let rest = format!(
        "[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"ledger\"\nconfig = {{ path = \"{ledger}\" }}\n\
         [lock]\nurls = [\"{}\"]\n[errors.sentry]\ndsn = \"{}\"\n",
        redis.url(),
        dsn(&sentry)
    );
    let config = s.config("", &rest);
    // A second plugin directory, for a file that is not a plugin.
    let more = s.path("more-plugins");
    std::fs::create_dir(&more).expect("mkdir");
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text.replacen("dirs = [", &format!("dirs = [\"{}\", ", more.display()), 1);
    std::fs::write(&config, text).expect("config");
    let host = Host::start(&config, s.path("host.log"));
    let incidents = |key: &str| -> Vec<Value> {
        events(&sentry)
            .into_iter()
            .filter(|e| e["tags"]["alert"] == key)
            .collect()
    };

    // A plugin replaced by a file that is not one (its previous generation keeps serving) is
    // an incident; the plugin loading again ends it; a second bad replacement is a new one.
    // Files are replaced as deployments should: written beside, then renamed over.
    let echo = more.join("libecho.so");
    let replace = |bytes: &[u8]| {
        let staging = more.join(".staging");
        std::fs::write(&staging, bytes).expect("write");
        std::fs::rename(&staging, &echo).expect("rename");
    };
    let good_echo = std::fs::read(common::plugin_dir().join("libecho.so")).expect("libecho.so");
    replace(&good_echo);
    s.wait_for("the copy loaded", LIMIT, || {
        host.log_text()
            .contains(&format!("file={}", echo.display()))
    });
    replace(b"not a shared library, version 1");
    s.wait_for("the refusal", LIMIT, || incidents("plugin").len() == 1);
    let loads = |host: &Host| {
        host.log_text()
            .matches(&format!("file={}", echo.display()))
            .count()
    };
    let before = loads(&host);
    replace(&good_echo);
    s.wait_for("the plugin loaded again", LIMIT, || loads(&host) > before);
    assert_eq!(incidents("plugin").len(), 1);
    replace(b"not a shared library, version 2");
    s.wait_for("the second refusal", LIMIT, || {
        incidents("plugin").len() == 2
    });

    // The lock service goes down: one incident however many messages and pollers meet it;
    // it answers again (cleared); it goes down again: a new incident.
    common::publish(&config, &["Order.Before", "{}"]);
    s.wait_for("the first order", LIMIT, || {
        s.ledger("ledger.jsonl").len() == 1
    });
    redis.kill();
    for n in 0..3 {
        common::publish(&config, &["Order.During", &format!("{{\"n\":{n}}}")]);
    }
    s.wait_for("the lock incident", LIMIT, || incidents("lock").len() == 1);
    redis.restart();
    s.wait_for("the orders after the outage", LIMIT, || {
        s.ledger("ledger.jsonl").len() == 4
    });
    assert_eq!(incidents("lock").len(), 1, "one incident for one outage");
    redis.kill();
    common::publish(&config, &["Order.Again", "{}"]);
    s.wait_for("the second outage's incident", LIMIT, || {
        incidents("lock").len() == 2
    });
    redis.restart();
    s.wait_for("the last order", LIMIT, || {
        s.ledger("ledger.jsonl").len() == 5
    });
    host.stop();

    let plugin = incidents("plugin");
    assert_eq!(
        plugin[0]["fingerprint"],
        serde_json::json!(["iniesta-host", format!("plugin:{}", echo.display())])
    );
    let lock = incidents("lock");
    assert_eq!(level(&lock[0]), "error");
    assert_eq!(
        lock[0]["fingerprint"],
        serde_json::json!(["iniesta-host", "lock"])
    );
    assert!(lock[0]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("lock service is unavailable"));
    assert_eq!(
        failure_events(&events(&sentry), "error").len(),
        0,
        "an outage is not a handler failure"
    );
}

#[test]
fn sentry_rate_limits_are_honoured_and_counted() {
    // The first envelope is answered 429 with a minute's limit on error events.
    let sentry = Capture::start_answering(|n| {
        if n == 0 {
            b"HTTP/1.1 429 Too Many Requests\r\nX-Sentry-Rate-Limits: 60:error:organization\r\nRetry-After: 60\r\nContent-Length: 0\r\n\r\n".to_vec()
        } else {
            common::capture::OK.to_vec()
        }
    });
    let s = Scratch::new();
    let rest = format!(
        "[[bindings]]\nevents = [\"Boom.*\"]\nplugin = \"panicky\"\nhandler = \"panicky\"\n\
         [metrics]\nlisten = \"127.0.0.1:0\"\n[errors.sentry]\ndsn = \"{}\"\n",
        dsn(&sentry)
    );
    let config = s.config("visibility_timeout = 30", &rest);
    let host = Host::start(&config, s.path("host.log"));
    let port = host.port();
    let counted = |result: &str| -> u64 {
        let (_, text) = common::http_get(port, "/metrics").expect("/metrics answers");
        text.lines()
            .filter(|l| {
                l.starts_with("iniesta_error_reports_total")
                    && l.contains("sink=\"sentry\"")
                    && l.contains(&format!("result=\"{result}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    common::publish(&config, &["Boom.First", "panic"]);
    s.wait_for("the first event, refused", LIMIT, || {
        counted("rate_limited") == 1
    });
    for n in 0..3 {
        common::publish(&config, &["Boom.More", &format!("panic {n}")]);
    }
    s.wait_for("three more held back", LIMIT, || {
        counted("rate_limited") >= 4
    });
    assert_eq!(counted("rate_limited"), 4, "one count per event held back");
    host.stop();
    assert_eq!(sentry.requests().len(), 1, "nothing sent while limited");
}
