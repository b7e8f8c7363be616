//! Routing on content, end to end on the embedded broker: MEGA events and the match DSL (the
//! sqs-mega README's shopping-cart and user examples), media types, JSON Schema rejection to
//! the dead-letter queue, binary and BSON bodies, and the `iniesta route` dry run. Real
//! `iniesta run` and `iniesta publish` processes, real plugins from target/debug.

use crate::common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{iniesta, publish, Host, Scratch};
use iniesta::broker::local::StoredMessage;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);
const QUEUE: &str = "iniesta-test-receiver";
const DLQ: &str = "iniesta-test-receiver-dlq";

fn queue_messages(config: &std::path::Path, queue: &str) -> Vec<StoredMessage> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(common::queue_messages(config, queue))
}

fn labelled(s: &Scratch, label: &str) -> Vec<Value> {
    s.ledger("ledger.jsonl")
        .into_iter()
        .filter(|l| l["label"] == label)
        .collect()
}

/// A ledger binding with a label; `extra` goes after it (e.g. a `[bindings.match]` table).
fn ledger(s: &Scratch, label: &str, events: &str, extra: &str) -> String {
    let path = s.path("ledger.jsonl").display().to_string();
    format!(
        "[[bindings]]\nevents = {events}\nplugin = \"ledger\"\nconfig = {{ path = \"{path}\", label = \"{label}\", paths = [\"object.current.user_id\"] }}\n{extra}\n"
    )
}

fn default_ledger(s: &Scratch) -> String {
    let path = s.path("ledger.jsonl").display().to_string();
    format!(
        "[[bindings]]\ndefault = true\nplugin = \"ledger\"\nconfig = {{ path = \"{path}\", label = \"default\" }}\n"
    )
}

/// The sqs-mega README's subscribers as bindings: ShoppingCartItemAdded (with its
/// `validate_object` as match conditions on `object`), ShoppingCartItemRemoved,
/// ShoppingCartCheckout and UserSubscriber, then a default.
fn mega_bindings(s: &Scratch) -> String {
    [
        ledger(
            s,
            "item_added",
            r#"["Order.*"]"#,
            r#"[bindings.match]
domain = "shopping_cart"
name = "item.added"
version = { one_of = [1, 2] }
subject = { match = '\d+' }
item_id = { not = { empty = true } }
quantity = { gt = 0 }
"object.type" = "shopping_cart"
"object.id" = { not = { empty = true } }"#,
        ),
        ledger(
            s,
            "item_removed",
            r#"["Order.*"]"#,
            r#"match = { domain = "shopping_cart", name = "item.removed" }"#,
        ),
        ledger(
            s,
            "checkout",
            r#"["Order.*"]"#,
            r#"match = { domain = "shopping_cart", name = "checkout" }"#,
        ),
        ledger(
            s,
            "user",
            r#"["hello.*"]"#,
            r#"[bindings.match]
name = { match = 'user:(.*)' }
version = { one_of = [1, 2, 3] }
timestamp = { gt = 2020-01-01 }
domain = "user"
subject = { match = '\d+' }
email = { not = { empty = true } }
username = { not = { one_of = ["synthetic", "test"] } }"#,
        ),
        default_ledger(s),
    ]
    .concat()
}

fn cart_state(quantity: u32, value: &str) -> Value {
    json!({
        "id": "18a3f92e-1fbf-45eb-8769-d836d0a1be55",
        "user_id": 987650,
        "items": [
            {"id": "61fcc874-624e-40f8-8fd7-0e663c7837e8", "price": "19.99", "quantity": quantity},
            {"id": "3c7f8798-1d3d-47de-82dd-c6c5e0de74ee", "price": "102.50", "quantity": 1},
            {"id": "bba76edc-8afc-4fde-b4c4-ea58a230c5d6", "price": "24.99", "quantity": 3}
        ],
        "currency": "USD",
        "value": value,
        "created_at": "2020-05-03T12:20:23.000",
        "updated_at": "2020-05-04T15:52:01.000"
    })
}

/// The shopping-cart event of the sqs-mega README.
fn item_added() -> Value {
    json!({
        "protocol": "mega",
        "version": 1,
        "event": {
            "domain": "shopping_cart",
            "name": "item.added",
            "version": 2,
            "timestamp": "2020-05-04T15:53:23.123",
            "subject": "987650",
            "publisher": "shopping-cart-service",
            "item_id": "61fcc874-624e-40f8-8fd7-0e663c7837e8",
            "quantity": 5
        },
        "object": {
            "type": "shopping_cart",
            "id": "18a3f92e-1fbf-45eb-8769-d836d0a1be55",
            "current": cart_state(10, "377.37"),
            "previous": cart_state(5, "277.42")
        },
        "extra": {
            "channel": "web/desktop",
            "user_ip_address": "177.182.205.103"
        }
    })
}

/// The user event of the sqs-mega README's pattern-matching section.
fn user_updated() -> Value {
    json!({
        "protocol": "mega",
        "version": 1,
        "event": {
            "name": "user:updated",
            "timestamp": "2020-05-04T15:53:27.823",
            "version": 2,
            "domain": "user",
            "subject": "987650",
            "publisher": "user-service",
            "attributes": {
                "email": "johndoe_84@example.com",
                "username": "john.doe"
            }
        },
        "object": {
            "current": {
                "id": 987650,
                "full_name": "John Doe",
                "username": "john.doe",
                "email": "johndoe_86@example.com",
                "created_at": "2020-05-03T12:20:23.000",
                "updated_at": "2020-05-04T15:52:01.000"
            }
        }
    })
}

fn with(mut value: Value, pointer: &str, new: Value) -> Value {
    *value.pointer_mut(pointer).expect("pointer exists") = new;
    value
}

fn publish_stdin(config: &std::path::Path, args: &[&str], body: &[u8]) -> std::process::Output {
    let mut child = Command::new(common::bin())
        .arg("-c")
        .arg(config)
        .arg("publish")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn publish");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body)
        .expect("write body");
    child.wait_with_output().expect("publish ends")
}

#[test]
fn sqs_mega_examples_route_by_content() {
    let s = Scratch::new();
    let config = s.config("", &mega_bindings(&s));
    let host = Host::start(&config, s.path("host.log"));
    let cart = item_added();
    publish(&config, &["Order.Cart", &cart.to_string()]);
    publish(&config, &["Order.Cart", &cart.to_string(), "--binary"]);
    publish(
        &config,
        &[
            "Order.Cart",
            &with(cart.clone(), "/event/quantity", json!(0)).to_string(),
        ],
    );
    publish(
        &config,
        &[
            "Order.Cart",
            &with(cart.clone(), "/event/name", json!("item.removed")).to_string(),
        ],
    );
    publish(
        &config,
        &[
            "Order.Cart",
            &with(cart.clone(), "/event/name", json!("checkout")).to_string(),
        ],
    );
    let user = user_updated();
    publish(&config, &["hello.user", &user.to_string()]);
    publish(
        &config,
        &[
            "hello.user",
            &with(
                user.clone(),
                "/event/attributes/username",
                json!("synthetic"),
            )
            .to_string(),
        ],
    );
    publish(
        &config,
        &[
            "hello.user",
            &with(
                user.clone(),
                "/event/timestamp",
                json!("2019-12-31T23:59:59"),
            )
            .to_string(),
        ],
    );
    s.wait_for("8 ledger lines", LIMIT, || {
        s.ledger("ledger.jsonl").len() >= 8
    });
    std::thread::sleep(Duration::from_millis(300));
    let log = host.stop();
    assert_eq!(
        s.ledger("ledger.jsonl").len(),
        8,
        "each message reaches one binding:\n{log}"
    );

    let added = labelled(&s, "item_added");
    assert_eq!(added.len(), 2, "plain and BSON item.added: {added:?}");
    for line in &added {
        assert_eq!(line["kind"], "mega");
        assert_eq!(line["mega"]["name"], "item.added");
        assert_eq!(line["mega"]["domain"], "shopping_cart");
        assert_eq!(line["mega"]["subject"], "987650");
        assert_eq!(line["mega"]["object_type"], "shopping_cart");
        assert_eq!(line["paths"]["object.current.user_id"], 987650);
        let body = common::body_of(line);
        assert_eq!(
            body, cart,
            "the handler gets the event as published (BSON decoded)"
        );
    }
    let bson: Vec<bool> = added.iter().map(|l| l["bson"] == true).collect();
    assert!(bson.contains(&true) && bson.contains(&false), "{added:?}");
    assert_eq!(labelled(&s, "item_removed").len(), 1);
    assert_eq!(labelled(&s, "checkout").len(), 1);
    let user_lines = labelled(&s, "user");
    assert_eq!(user_lines.len(), 1);
    assert_eq!(user_lines[0]["mega"]["name"], "user:updated");
    let defaults = labelled(&s, "default");
    assert_eq!(
        defaults.len(),
        3,
        "quantity 0, a synthetic user, a 2019 timestamp: {defaults:?}"
    );
    assert!(
        queue_messages(&config, QUEUE).is_empty(),
        "every message acked and deleted"
    );
}

#[test]
fn a_body_failing_its_schema_is_dead_lettered_and_no_handler_runs() {
    let s = Scratch::new();
    std::fs::create_dir(s.path("schemas")).expect("mkdir");
    s.write(
        "schemas/order.json",
        r#"{"type": "object", "required": ["id", "items"], "properties": {"id": {"type": "integer"}, "items": {"type": "array", "minItems": 1}}}"#,
    );
    let bindings = format!(
        "{}schema = \"schemas/order.json\"\n{}",
        ledger(&s, "orders", r#"["Order.*"]"#, ""),
        ledger(&s, "audit", r#"["Order.*"]"#, "")
    );
    let config = s.config("", &bindings);
    let host = Host::start(&config, s.path("host.log"));
    publish(&config, &["Order.Good", r#"{"id": 1, "items": ["book"]}"#]);
    publish(&config, &["Order.Bad", r#"{"id": "x", "items": []}"#]);
    publish(&config, &["Order.Text", "not json at all"]);
    s.wait_for("two dead letters and the good order", LIMIT, || {
        queue_messages(&config, DLQ).len() == 2 && s.ledger("ledger.jsonl").len() >= 2
    });
    std::thread::sleep(Duration::from_millis(300));
    let log = host.stop();
    let lines = s.ledger("ledger.jsonl");
    assert_eq!(
        lines.len(),
        2,
        "only the valid order ran, on both bindings:\n{log}"
    );
    assert!(
        lines.iter().all(|l| l["event"] == "Order.Good.receiver"),
        "{lines:?}"
    );
    let dlq = queue_messages(&config, DLQ);
    let reason_of = |event: &str| {
        dlq.iter()
            .find(|m| m.attributes["iniesta_pass"].value == event)
            .and_then(|m| m.dead_letter_reason.clone())
            .unwrap_or_else(|| panic!("{event} is in the DLQ: {dlq:?}"))
    };
    let bad = reason_of("Order.Bad.receiver");
    assert!(
        bad.contains("bindings[0] (ledger/ledger): body fails schema schemas/order.json"),
        "{bad}"
    );
    assert!(
        bad.contains("/id: value is not of type \"integer\""),
        "the reason names the field, not its value: {bad}"
    );
    assert!(bad.contains("/items"), "{bad}");
    let text = reason_of("Order.Text.receiver");
    assert!(
        text.contains("the body is text, and a schema needs a JSON body"),
        "{text}"
    );
    assert!(log.contains("moved to the dead-letter queue"), "{log}");
    assert!(queue_messages(&config, QUEUE).is_empty());
}

#[test]
fn binary_and_bson_bodies_travel_as_base64_and_arrive_decoded() {
    let s = Scratch::new();
    let config = s.config("", &ledger(&s, "all", r#"["*"]"#, ""));
    let bytes: Vec<u8> = vec![0, 159, 146, 150, 255, b'\n', b'\r', 0x80];
    let out = publish_stdin(&config, &["Order.Blob", "-"], &bytes);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let order = json!({"id": 7, "items": [{"sku": "a", "price": 19.99}], "note": "ünïcödé"});
    publish(&config, &["Order.Bson", &order.to_string(), "--binary"]);
    // What sqs-mega's Python publisher sends with binary_encoding=True: base64 BSON and no
    // attribute. The receiver recognises it.
    let sqs_mega = {
        use base64::Engine as _;
        let document =
            bson::Document::try_from(user_updated().as_object().expect("object").clone())
                .expect("to bson");
        base64::engine::general_purpose::STANDARD.encode(document.to_vec().expect("bytes"))
    };
    publish(&config, &["Order.Python", &sqs_mega, "--queue"]);
    // --binary refuses what is not a JSON object, before publishing anything.
    let refused = iniesta(&config, &["publish", "Order.No", "plain text", "--binary"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--binary"),
        "{refused:?}"
    );

    // On the queue: text only.
    let stored = queue_messages(&config, QUEUE);
    assert_eq!(stored.len(), 3, "{stored:?}");
    let find = |event: &str| {
        stored
            .iter()
            .find(|m| m.attributes["iniesta_pass"].value == event)
            .unwrap_or_else(|| panic!("{event} stored"))
    };
    let blob = find("Order.Blob.receiver");
    assert!(
        std::str::from_utf8(&blob.body).is_ok(),
        "base64 on the wire"
    );
    assert_eq!(
        blob.attributes["iniesta_content_type"].value,
        "application/octet-stream"
    );
    let bson_message = find("Order.Bson.receiver");
    assert!(
        !bson_message.body.starts_with(b"{"),
        "BSON travels as base64"
    );
    assert_eq!(
        bson_message.attributes["iniesta_content_type"].value,
        "application/bson"
    );

    let host = Host::start(&config, s.path("host.log"));
    s.wait_for("3 ledger lines", LIMIT, || {
        s.ledger("ledger.jsonl").len() >= 3
    });
    host.stop();
    let lines = s.ledger("ledger.jsonl");
    let line = |event: &str| {
        lines
            .iter()
            .find(|l| l["event"] == event)
            .unwrap_or_else(|| panic!("{event} handled: {lines:?}"))
            .clone()
    };
    let blob = line("Order.Blob.receiver");
    assert_eq!(blob["kind"], "binary");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        blob["body_hex"], hex,
        "the handler gets the bytes as published"
    );
    let bson_line = line("Order.Bson.receiver");
    assert_eq!(bson_line["kind"], "json");
    assert_eq!(bson_line["bson"], true);
    let body = common::body_of(&bson_line);
    assert_eq!(body, order, "BSON round trip");
    let python = line("Order.Python.receiver");
    assert_eq!(python["kind"], "mega");
    assert_eq!(python["bson"], true);
    assert_eq!(python["mega"]["name"], "user:updated");
    assert_eq!(
        python["attributes"]["iniesta_content_type"],
        "application/bson"
    );
    assert!(queue_messages(&config, QUEUE).is_empty());
}

#[test]
fn media_types_route_on_the_attribute_or_the_body_field() {
    let s = Scratch::new();
    let bindings = format!(
        "{}media_types = [\"application/vnd.acme.order+json\", \"application/vnd.acme.v2.*\"]\n{}",
        ledger(&s, "orders", r#"["Order.*"]"#, ""),
        default_ledger(&s)
    );
    let config = s.config("", &bindings);
    let host = Host::start(&config, s.path("host.log"));
    publish(
        &config,
        &[
            "Order.A",
            r#"{"id": 1}"#,
            "-a",
            "media_type=application/vnd.acme.order+json",
        ],
    );
    publish(
        &config,
        &[
            "Order.B",
            r#"{"id": 2, "media_type": "application/vnd.acme.v2.cart"}"#,
        ],
    );
    publish(
        &config,
        &["Order.C", r#"{"id": 3}"#, "-a", "media_type=text/plain"],
    );
    publish(&config, &["Order.D", r#"{"id": 4}"#]);
    s.wait_for("4 ledger lines", LIMIT, || {
        s.ledger("ledger.jsonl").len() >= 4
    });
    host.stop();
    let events = |label: &str| {
        let mut events: Vec<String> = labelled(&s, label)
            .iter()
            .map(|l| l["event"].as_str().unwrap_or_default().to_string())
            .collect();
        events.sort();
        events
    };
    assert_eq!(
        events("orders"),
        vec!["Order.A.receiver", "Order.B.receiver"]
    );
    assert_eq!(
        events("default"),
        vec!["Order.C.receiver", "Order.D.receiver"]
    );
}

#[test]
fn route_dry_run_explains_each_binding() {
    let s = Scratch::new();
    std::fs::create_dir(s.path("schemas")).expect("mkdir");
    s.write(
        "schemas/cart.json",
        r#"{"type": "object", "required": ["protocol", "event", "object"]}"#,
    );
    let mut bindings = mega_bindings(&s);
    bindings.push_str(
        "[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"echo\"\nschema = \"schemas/cart.json\"\n",
    );
    // Plugins are not loaded: a missing plugin directory does not matter.
    let config = s.config("", &bindings).display().to_string();
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace(&common::plugin_dir().display().to_string(), "not/built/yet");
    std::fs::write(&config, text).expect("rewrite config");
    let config = std::path::PathBuf::from(config);
    let route = |args: &[&str]| {
        let mut all = vec!["route"];
        all.extend_from_slice(args);
        let out = iniesta(&config, &all);
        assert!(
            out.status.success(),
            "route {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let out = route(&["Order.Cart.shop", &item_added().to_string()]);
    assert!(out.contains("payload     mega (plain encoding)"), "{out}");
    assert!(
        out.contains("bindings[0] ledger: TAKES the message"),
        "{out}"
    );
    assert!(out.contains("ok    events: `Order.*` matches"), "{out}");
    assert!(
        out.contains("ok    match subject (event.subject) match '\\d+': found \"987650\""),
        "{out}"
    );
    assert!(
        out.contains("ok    match quantity (event.quantity) gt 0: found 5"),
        "{out}"
    );
    assert!(
        out.contains("ok    match object.type = \"shopping_cart\""),
        "{out}"
    );
    assert!(out.contains("bindings[1] ledger: skipped"), "{out}");
    assert!(
        out.contains("FAIL  match name (event.name) = \"item.removed\": found \"item.added\""),
        "{out}"
    );
    assert!(
        out.contains("bindings[3] ledger: skipped\n  FAIL  events: none of `hello.*` matches"),
        "{out}"
    );
    assert!(
        out.contains("bindings[4] ledger (default): not needed"),
        "{out}"
    );
    assert!(
        out.contains("ok    schema schemas/cart.json: valid"),
        "{out}"
    );
    assert!(
        out.contains("result: 2 binding(s) take the message: bindings[0] ledger, bindings[5] echo"),
        "{out}"
    );

    let out = route(&[
        "Order.Cart.shop",
        r#"{"protocol": "mega", "event": {"name": "x"}}"#,
    ]);
    assert!(
        out.contains("FAIL  schema schemas/cart.json: /: \"object\" is a required property"),
        "{out}"
    );
    assert!(
        out.contains("but dead-lettered before any handler runs: the body fails the schema of bindings[5] echo"),
        "{out}"
    );

    let out = route(&[
        "Payment.Done.bank",
        "plain text",
        "-a",
        "media_type=text/plain",
    ]);
    assert!(out.contains("payload     text"), "{out}");
    assert!(
        out.contains("media type  text/plain (attribute `media_type`)"),
        "{out}"
    );
    assert!(out.contains("NOTE: sqs.filters"), "{out}");
    assert!(
        out.contains("bindings[4] ledger (default): TAKES the message"),
        "{out}"
    );
    assert!(
        out.contains("result: 1 binding(s) take the message: bindings[4] ledger"),
        "{out}"
    );

    // Config problems are reported like any command's, with exit 1.
    s.write("schemas/cart.json", "{broken");
    let out = iniesta(&config, &["route", "Order.X", "{}"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bindings[5].schema") && err.contains("is not JSON"),
        "{err}"
    );
}

#[test]
fn bad_match_tables_media_types_and_schemas_are_config_errors() {
    let s = Scratch::new();
    s.write("invalid.json", r#"{"type": 5}"#);
    let bindings = "[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"echo\"\n[bindings.match]\n\"object.current.user_id\" = { match = \"([0-9]+\" }\nquantity = { gt = \"lots\" }\n\
                    [[bindings]]\nevents = [\"Order.*\"]\nplugin = \"echo\"\nschema = \"schemas/missing.json\"\n\
                    [[bindings]]\nevents = [\"Order.*\"]\nplugin = \"echo\"\nschema = \"invalid.json\"\nmedia_types = [\"application/x y\"]\n\
                    [[bindings]]\nevents = [\"Order.*\"]\nplugin = \"echo\"\nmatch = { version = { oneOf = [1, 2] } }\n";
    let config = s.config("", bindings);
    let out = iniesta(&config, &["config", "check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "bindings[0].match.object.current.user_id: invalid regex `([0-9]+`: unclosed group\n",
        "bindings[0].match.quantity: \"lots\" needs a number or an RFC 3339 datetime",
        "bindings[1].schema: cannot read schema file",
        "bindings[2].schema: schema file",
        "not a valid JSON Schema",
        "bindings[2].media_types[0]: `application/x y` is not a media type",
        "bindings[3].match.version.oneOf: `oneOf` is not an operator; did you mean `one_of`?",
    ] {
        assert!(err.contains(needle), "`{needle}` not in:\n{err}");
    }
    // `run` refuses the same config before consuming anything.
    let out = iniesta(&config, &["run"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bindings[0].match.object.current.user_id")
    );
}

/// A raw body shaped like an SNS notification whose own attributes name another event, one the
/// queue receives and a binding takes.
const SPOOF: &str = r#"{"Type":"Notification","MessageId":"x","Message":"{}","MessageAttributes":{"iniesta_pass":{"Type":"String","Value":"Boom.Delete.admin"}}}"#;
/// A raw body shaped like a notification whose `Message` is not a string.
const NOT_AN_ENVELOPE: &str = r#"{"Type":"Notification","MessageId":"x","Message":5}"#;

#[test]
fn a_body_shaped_like_an_sns_envelope_routes_by_the_delivered_attribute() {
    let s = Scratch::new();
    let bindings = format!(
        "{}{}",
        ledger(&s, "orders", r#"["Order.*"]"#, ""),
        ledger(&s, "admin", r#"["Boom.*"]"#, "")
    );
    let config = s.config("", &bindings);
    // The dry run decodes the way the pipeline does: the body does not choose the binding.
    let out = iniesta(&config, &["route", "Order.Spoof.receiver", SPOOF]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("event       `Order.Spoof.receiver`"),
        "{text}"
    );
    assert!(
        text.contains("bindings[0] ledger: TAKES the message"),
        "{text}"
    );
    assert!(text.contains("bindings[1] ledger: skipped"), "{text}");

    let host = Host::start(&config, s.path("host.log"));
    publish(&config, &["Order.Spoof", SPOOF]);
    publish(&config, &["Order.Shape", NOT_AN_ENVELOPE]);
    s.wait_for("both bodies handled as bodies", LIMIT, || {
        labelled(&s, "orders").len() >= 2
    });
    let log = host.stop();
    let orders = labelled(&s, "orders");
    let body_of = |event: &str| {
        orders
            .iter()
            .find(|l| l["event"] == event)
            .map(|l| l["body"].clone())
            .unwrap_or_else(|| panic!("{event} handled: {orders:?}\n{log}"))
    };
    assert_eq!(
        body_of("Order.Spoof.receiver"),
        SPOOF,
        "the body is the body"
    );
    assert_eq!(body_of("Order.Shape.receiver"), NOT_AN_ENVELOPE);
    assert!(
        labelled(&s, "admin").is_empty(),
        "the body chose no handler"
    );
    assert!(queue_messages(&config, QUEUE).is_empty());
    assert!(queue_messages(&config, DLQ).is_empty());
}
