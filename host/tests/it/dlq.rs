//! `iniesta dlq list | redrive | delete | purge` on both brokers: the local SQLite one and SQS
//! (a real moto server per test). Messages are dead-lettered by a real host running the
//! `flaky` plugin, listed with their reasons, searched by event and reason and paged, one is
//! deleted by its reason, a subset is redriven by event glob and acked by the handler the
//! config now binds, the rest stays, then one is redriven by id and the rest purged.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::aws::{iniesta, ok, start_host, Moto};
use common::Scratch;

const LIMIT: Duration = Duration::from_secs(90);
const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:global";
const DLQ: &str = "iniesta-test-receiver-dlq";

/// Which broker a scenario runs on.
enum Broker {
    Local,
    Aws(Moto),
}

impl Broker {
    /// Write `iniesta.toml` with these bindings.
    fn config(&self, s: &Scratch, bindings: &str) -> PathBuf {
        match self {
            Broker::Local => s.config("", bindings),
            Broker::Aws(moto) => s.write(
                "iniesta.toml",
                &format!(
                    "service = \"receiver\"\nenv = \"test\"\n[broker]\nkind = \"aws\"\nregion = \"us-east-1\"\n\
                     endpoint_url = \"{}\"\n[sns]\ntopic_arn = \"{TOPIC}\"\n[sqs]\nwait_time_seconds = 1\n\
                     visibility_timeout = 2\nfilters = [\"Order.*\", \"Bad.*\"]\ndead_letter_queue = \"{DLQ}\"\n\
                     [plugins]\ndirs = [\"{}\"]\n{bindings}\n",
                    moto.url(),
                    common::plugin_dir().display()
                ),
            ),
        }
    }

    /// Messages in the dead-letter queue, counted without receiving them.
    fn dlq_depth(&self, config: &Path) -> u64 {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        match self {
            Broker::Local => rt.block_on(async {
                let config = iniesta::config::Config::load(config).expect("config");
                let broker = iniesta::broker::local::LocalBroker::open(&config)
                    .await
                    .expect("broker");
                broker.messages(DLQ).await.expect("messages").len() as u64
            }),
            Broker::Aws(moto) => rt.block_on(common::aws::depth(&moto.url(), DLQ)),
        }
    }
}

/// The rows of a `dlq list` table (header and summary lines left out).
fn rows(table: &str) -> Vec<String> {
    table
        .lines()
        .filter(|l| {
            !l.starts_with("ID ")
                && !l.starts_with('#')
                && !l.ends_with("message(s)")
                && !l.contains("is empty")
        })
        .map(str::to_string)
        .collect()
}

/// The id column of `dlq list` rows.
fn ids(rows: &[String]) -> Vec<String> {
    rows.iter()
        .filter_map(|r| r.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

const DEAD_LETTER_ALL: &str = "[[bindings]]\nevents = [\"Order.*\", \"Bad.*\"]\nplugin = \"flaky\"\nconfig = { mode = \"dead-letter\" }\n";

fn scenario(broker: Broker) {
    let s = Scratch::new();
    let config = broker.config(&s, DEAD_LETTER_ALL);
    if let Broker::Aws(_) = broker {
        ok(&config, &["setup"]);
    }
    // 1. A host dead-letters everything: three orders (one with an extra attribute), three bad.
    let host = start_host(&config, s.path("host1.log"));
    for n in 1..=3 {
        let body = format!(r#"{{"order":{n},"secret":"card-{n}"}}"#);
        if n == 1 {
            ok(
                &config,
                &["publish", "Order.Created", &body, "-a", "trace=t-1"],
            );
        } else {
            ok(&config, &["publish", "Order.Created", &body]);
        }
    }
    for n in 1..=3 {
        ok(
            &config,
            &[
                "publish",
                "Bad.Input",
                &format!(r#"{{"bad":{n},"secret":"pin-{n}"}}"#),
            ],
        );
    }
    s.wait_for("six dead letters", LIMIT, || broker.dlq_depth(&config) == 6);
    let log = host.stop();
    // The ids the host dead-lettered (the main queue's message ids, as in its logs).
    let mut dead_lettered: Vec<String> = log
        .lines()
        .filter(|l| l.contains("moved to the dead-letter queue"))
        .filter_map(|l| l.split("message_id=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect();
    dead_lettered.sort();
    assert_eq!(dead_lettered.len(), 6, "{log}");

    // 2. List: every one with its reason, bodies hidden unless asked for.
    let table = ok(&config, &["dlq", "list"]);
    let listed = rows(&table);
    assert_eq!(listed.len(), 6, "{table}");
    assert!(table.contains("6 message(s)"), "{table}");
    for row in &listed {
        assert!(
            row.contains("flaky dead-letters") && row.contains("by design"),
            "reason shown: {row}"
        );
        assert!(row.contains("bytes hidden>"), "body hidden: {row}");
        // ID EVENT RECEIVES FIRST-SEEN LAST-SEEN: one delivery before it was dead-lettered
        // (on SQS, not the DLQ copy's own count), and both times known.
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(columns[2], "1", "receive count: {row}");
        assert!(
            columns[3].starts_with("20") && columns[4].starts_with("20"),
            "first and last seen: {row}"
        );
    }
    let mut listed_ids: Vec<String> = listed
        .iter()
        .filter_map(|r| r.split_whitespace().next())
        .map(str::to_string)
        .collect();
    listed_ids.sort();
    assert_eq!(
        listed_ids, dead_lettered,
        "listed under the ids the host logged"
    );
    assert_eq!(
        listed
            .iter()
            .filter(|r| r.contains("Order.Created.receiver"))
            .count(),
        3,
        "{table}"
    );
    assert_eq!(
        listed
            .iter()
            .filter(|r| r.contains("Bad.Input.receiver"))
            .count(),
        3,
        "{table}"
    );
    assert!(
        !table.contains("card-") && !table.contains("pin-"),
        "no body unless --show-bodies: {table}"
    );
    let shown = ok(&config, &["dlq", "list", "--show-bodies"]);
    assert!(
        shown.contains("card-2") && shown.contains("pin-1"),
        "{shown}"
    );
    // The same for scripts, as JSON.
    let json: serde_json::Value =
        serde_json::from_str(&ok(&config, &["dlq", "list", "--output", "json"]))
            .expect("dlq list --output json prints one JSON object");
    let letters = json["letters"].as_array().expect("letters");
    assert_eq!(letters.len(), 6, "{json}");
    assert_eq!(json["matching"], 6, "{json}");
    assert_eq!(json["scanned"], 6, "{json}");
    assert_eq!(json["complete"], true, "{json}");
    let mut json_ids: Vec<String> = letters
        .iter()
        .filter_map(|l| l["id"].as_str().map(str::to_string))
        .collect();
    json_ids.sort();
    assert_eq!(json_ids, dead_lettered);
    for letter in letters {
        assert_eq!(letter["receive_count"], 1, "{letter}");
        assert!(
            letter["reason"]
                .as_str()
                .is_some_and(|r| r.contains("flaky dead-letters")),
            "{letter}"
        );
        assert!(
            letter["body_bytes"].as_u64().is_some_and(|n| n > 0),
            "{letter}"
        );
        assert!(
            letter.get("body").is_none(),
            "no body unless asked: {letter}"
        );
    }
    let with_bodies = ok(
        &config,
        &["dlq", "list", "--output", "json", "--show-bodies"],
    );
    assert!(with_bodies.contains("card-2"), "{with_bodies}");
    let two = ok(&config, &["dlq", "list", "--limit", "2"]);
    assert_eq!(rows(&two).len(), 2, "{two}");
    // Listing leaves every message in the DLQ (on SQS: received, then made visible again).
    assert_eq!(broker.dlq_depth(&config), 6);
    assert_eq!(
        rows(&ok(&config, &["dlq", "list"])).len(),
        6,
        "a second listing sees them all again"
    );

    // 2b. Search by event and by reason (flaky's reason names the message id), page, and
    // delete one by its reason.
    let bad = ok(&config, &["dlq", "list", "--event", "Bad.*"]);
    let bad_rows = rows(&bad);
    assert_eq!(bad_rows.len(), 3, "{bad}");
    assert!(
        bad_rows.iter().all(|r| r.contains("Bad.Input.receiver")),
        "{bad}"
    );
    let doomed = bad_rows[0]
        .split_whitespace()
        .next()
        .expect("id column")
        .to_string();
    for text in [doomed.clone(), doomed.to_uppercase()] {
        let found = ok(&config, &["dlq", "list", "--reason", &text]);
        let found_rows = rows(&found);
        assert_eq!(found_rows.len(), 1, "--reason {text}: {found}");
        assert!(found_rows[0].starts_with(&doomed), "{found}");
    }
    let page = ok(&config, &["dlq", "list", "--limit", "2", "--offset", "4"]);
    assert_eq!(
        ids(&rows(&page)),
        ids(&listed)[4..6],
        "the 5th and 6th of the first listing: {page}"
    );
    assert!(page.contains("#5–6 of 6\n"), "{page}");
    // Without a search a listing reads just its page: one more tells there are more.
    let first = ok(&config, &["dlq", "list", "--limit", "2"]);
    assert!(first.contains("#1–2 of 2+"), "{first}");
    let bad_page = ok(
        &config,
        &[
            "dlq", "list", "--event", "Bad.*", "--limit", "2", "--offset", "1",
        ],
    );
    assert!(bad_page.contains("#2–3 of 3 matching"), "{bad_page}");
    // A scan of exactly the queue's size is complete; one less is not.
    for (scan, complete) in [("6", true), ("5", false)] {
        let json: serde_json::Value = serde_json::from_str(&ok(
            &config,
            &[
                "dlq", "list", "--scan", scan, "--limit", "1", "--output", "json",
            ],
        ))
        .expect("JSON");
        assert_eq!(json["complete"], complete, "--scan {scan}: {json}");
        assert_eq!(json["scanned"], scan.parse::<u64>().expect("n"), "{json}");
    }
    let past = ok(&config, &["dlq", "list", "--offset", "10"]);
    assert!(
        past.contains("nothing from #11 on: 6 dead letter(s) match"),
        "{past}"
    );
    let none = ok(&config, &["dlq", "list", "--event", "Nope.*"]);
    assert!(
        none.contains("no dead letter matches (of 6 read)"),
        "{none}"
    );
    let partial = iniesta(
        &config,
        &[
            "dlq", "list", "--scan", "4", "--limit", "2", "--output", "json",
        ],
    );
    assert!(partial.status.success(), "{partial:?}");
    let partial_json: serde_json::Value =
        serde_json::from_slice(&partial.stdout).expect("one JSON object");
    assert_eq!(partial_json["scanned"], 4, "{partial_json}");
    assert_eq!(partial_json["complete"], false, "{partial_json}");
    assert_eq!(partial_json["matching"], 4, "{partial_json}");
    assert_eq!(partial_json["letters"].as_array().map(Vec::len), Some(2));
    // (stdout stays JSON; the note that the queue holds more goes to stderr.)
    assert!(
        String::from_utf8_lossy(&partial.stderr).contains("raise --scan"),
        "{partial:?}"
    );
    let refused = iniesta(&config, &["dlq", "delete"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("dlq purge --yes"),
        "{refused:?}"
    );
    let empty_reason = iniesta(&config, &["dlq", "delete", "--reason", " "]);
    assert!(!empty_reason.status.success(), "{empty_reason:?}");
    assert_eq!(
        broker.dlq_depth(&config),
        6,
        "a refused delete deletes nothing"
    );
    // An id that is not there: nothing deleted, named, exit 1.
    let nowhere = iniesta(&config, &["dlq", "delete", "--id", "no-such-id"]);
    assert!(!nowhere.status.success(), "{nowhere:?}");
    let said = String::from_utf8_lossy(&nowhere.stdout);
    assert!(
        said.contains("deleted 0 message(s)") && said.contains("NOT FOUND no-such-id"),
        "{said}"
    );
    let deleted = ok(&config, &["dlq", "delete", "--reason", &doomed]);
    assert!(
        deleted.contains("deleted 1 message(s)") && deleted.contains("5 left"),
        "{deleted}"
    );
    assert_eq!(broker.dlq_depth(&config), 5);
    let after = ok(&config, &["dlq", "list"]);
    assert_eq!(rows(&after).len(), 5, "{after}");
    assert!(!after.contains(&doomed), "{after}");

    // 3. Purge asks for --yes and touches nothing without it; a bad glob is named.
    let refused = iniesta(&config, &["dlq", "purge"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--yes"),
        "{refused:?}"
    );
    let bad_glob = iniesta(&config, &["dlq", "redrive", "--event", "Order. *"]);
    assert!(!bad_glob.status.success());
    assert!(
        String::from_utf8_lossy(&bad_glob.stderr).contains("--event `Order. *`"),
        "{bad_glob:?}"
    );
    assert_eq!(broker.dlq_depth(&config), 5);

    // 4. The orders' handler is fixed (a ledger acks them); redrive only the orders.
    let book = s.path("ledger.jsonl");
    let fixed = format!(
        "[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"ledger\"\nconfig = {{ path = \"{}\" }}\n\
         [[bindings]]\nevents = [\"Bad.*\"]\nplugin = \"flaky\"\nconfig = {{ mode = \"dead-letter\" }}\n",
        book.display()
    );
    let config = broker.config(&s, &fixed);
    let report = ok(&config, &["dlq", "redrive", "--event", "Order.*"]);
    assert!(report.contains("redriven 3 message(s)"), "{report}");
    assert!(
        report.contains("2 left in the dead-letter queue"),
        "{report}"
    );
    let rest = ok(&config, &["dlq", "list"]);
    let rest_rows = rows(&rest);
    assert_eq!(rest_rows.len(), 2, "{rest}");
    assert!(
        rest_rows.iter().all(|r| r.contains("Bad.Input.receiver")),
        "{rest}"
    );

    // 5. The handler acks the redriven orders, with their attributes kept; the rest stay.
    let host = start_host(&config, s.path("host2.log"));
    s.wait_for("the ledger to ack three orders", LIMIT, || {
        s.ledger("ledger.jsonl").len() >= 3
    });
    host.stop();
    let lines = s.ledger("ledger.jsonl");
    assert_eq!(lines.len(), 3, "{lines:?}");
    let mut orders: Vec<i64> = lines
        .iter()
        .map(|l| {
            assert_eq!(l["event"], "Order.Created.receiver", "{l}");
            assert_eq!(
                l["receive_count"], 1,
                "a redriven message starts counting again: {l}"
            );
            common::body_of(l)["order"].as_i64().expect("order number")
        })
        .collect();
    orders.sort();
    assert_eq!(orders, vec![1, 2, 3]);
    let first = lines
        .iter()
        .find(|l| l["body"].as_str().unwrap_or("").contains("card-1"))
        .expect("order 1");
    assert_eq!(
        first["attributes"]["trace"], "t-1",
        "attributes kept: {first}"
    );
    assert_eq!(broker.dlq_depth(&config), 2, "the bad ones stay");

    // 6. Redrive one by id, then purge the last one.
    let id = rest_rows[0]
        .split_whitespace()
        .next()
        .expect("id column")
        .to_string();
    let one = ok(&config, &["dlq", "redrive", "--id", &id]);
    assert!(
        one.contains("redriven 1 message(s)") && one.contains("1 left"),
        "{one}"
    );
    let left = ok(&config, &["dlq", "list"]);
    assert_eq!(rows(&left).len(), 1, "{left}");
    assert!(!left.contains(&id), "{left}");
    let purged = ok(&config, &["dlq", "purge", "--yes"]);
    assert!(purged.contains("purged 1 message(s)"), "{purged}");
    let empty = ok(&config, &["dlq", "list"]);
    assert!(empty.contains("the dead-letter queue is empty"), "{empty}");
    assert_eq!(broker.dlq_depth(&config), 0);
}

#[test]
fn dlq_list_redrive_by_glob_and_id_purge_on_the_local_broker() {
    scenario(Broker::Local);
}

#[test]
fn dlq_list_redrive_by_glob_and_id_purge_on_sqs() {
    scenario(Broker::Aws(Moto::start()));
}

#[test]
fn dlq_commands_without_a_dead_letter_queue_say_what_to_set() {
    let s = Scratch::new();
    let config = s.write(
        "iniesta.toml",
        &format!(
            "service = \"receiver\"\ninitialization = [\"QUEUE_POLLING\"]\n[broker]\nkind = \"local\"\npath = \"broker.db\"\n\
             [plugins]\ndirs = [\"{}\"]\n[[bindings]]\ndefault = true\nplugin = \"echo\"\n",
            common::plugin_dir().display()
        ),
    );
    let out = iniesta(&config, &["dlq", "list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sqs.dead_letter_queue"), "{err}");
}

/// A broker file written before the dead-letter columns existed still opens, and its dead
/// letters are listed and redriven.
#[test]
fn a_broker_file_from_before_the_dlq_columns_still_opens() {
    let s = Scratch::new();
    let config = s.config("", DEAD_LETTER_ALL);
    {
        let conn = rusqlite::Connection::open(s.path("broker.db")).expect("sqlite");
        conn.execute_batch(
            "CREATE TABLE queues (name TEXT PRIMARY KEY, visibility_timeout INTEGER NOT NULL,
                delay_seconds INTEGER NOT NULL DEFAULT 0, dead_letter_queue TEXT,
                max_receive_count INTEGER NOT NULL DEFAULT 5);
             CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL,
                queue TEXT NOT NULL, body BLOB NOT NULL, attributes TEXT NOT NULL,
                sent_ms INTEGER NOT NULL, visible_ms INTEGER NOT NULL,
                receive_count INTEGER NOT NULL DEFAULT 0, first_receive_ms INTEGER,
                receipt TEXT, dead_letter_reason TEXT);
             INSERT INTO messages (id, queue, body, attributes, sent_ms, visible_ms, receive_count,
                first_receive_ms, dead_letter_reason)
             VALUES ('old-1', 'iniesta-test-receiver-dlq', CAST('{}' AS BLOB),
                '{\"iniesta_pass\":{\"data_type\":\"String\",\"value\":\"Order.Old.receiver\"}}',
                1700000000000, 0, 5, 1700000001000, 'received 5 times (max_receive_count 5)');",
        )
        .expect("old schema");
    }
    let table = ok(&config, &["dlq", "list"]);
    assert!(
        table.contains("old-1") && table.contains("Order.Old.receiver"),
        "{table}"
    );
    assert!(table.contains("received 5 times"), "{table}");
    assert!(
        table.contains("2023-11-14T22:13:21Z"),
        "first seen from the old column: {table}"
    );
    let report = ok(&config, &["dlq", "redrive", "--event", "Order.*"]);
    assert!(report.contains("redriven 1 message(s)"), "{report}");
}
