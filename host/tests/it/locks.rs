//! Idempotency against real redis-server processes (one, or three for Redlock), started by
//! the tests on free loopback ports: the lock primitives, the quorum, batched acquisition,
//! completion records, faults, and `iniesta run` end to end with duplicated messages.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::{Host, Scratch};
use iniesta::broker::local::{LocalBroker, StoredMessage};
use iniesta::config::Config;
use iniesta::lock::redis::{Node, RedisLocks};
use iniesta::lock::redlock::Redlock;
use iniesta::lock::{completion_key_for, key_for, Held, LockError, Locks};
use iniesta::wire::{Attribute, Attributes};

const LIMIT: Duration = Duration::from_secs(90);
const TEN: Duration = Duration::from_secs(10);

fn node(url: &str) -> Node {
    Node::open(0, url, None, Duration::from_millis(500)).expect("a valid URL")
}

fn single(server: &RedisServer) -> RedisLocks {
    RedisLocks::new(node(&server.url()))
}

fn redlock(servers: &[RedisServer]) -> Redlock {
    Redlock::new(servers.iter().map(|s| node(&s.url())).collect())
}

fn unique_ids(n: usize) -> Vec<String> {
    (0..n).map(|_| uuid::Uuid::new_v4().to_string()).collect()
}

async fn take_one(locks: &dyn Locks, id: &str, ttl: Duration) -> Option<iniesta::lock::Claim> {
    locks
        .try_acquire(&[id.to_string()], ttl)
        .await
        .expect("the lock service answers")
        .pop()
        .flatten()
}

/// Poll `cond` until it holds; fail with `what` after the limit.
async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < LIMIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The primitives on one Redis and on a Redlock quorum.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn single_redis_takes_contends_releases_extends_and_expires() {
    let server = RedisServer::start();
    let a = single(&server);
    let b = single(&server);
    let id = uuid::Uuid::new_v4().to_string();
    let key = key_for(&id);
    let claim = take_one(&a, &id, TEN).await.expect("free");
    assert_eq!(
        server.cmd(&["GET", &key]),
        claim.held.token,
        "SET key token"
    );
    let pttl: i64 = server.cmd(&["PTTL", &key]).parse().expect("a number");
    assert!(pttl > 0 && pttl <= 10_000, "PX ttl: {pttl}");
    assert!(claim.held.valid_until > tokio::time::Instant::now());
    assert!(claim.completed.is_empty());

    // Held: nobody else gets it, and a stranger can neither release nor extend it.
    assert!(take_one(&b, &id, TEN).await.is_none());
    let stranger = Held {
        token: "not-the-holder".into(),
        ..claim.held.clone()
    };
    b.release(std::slice::from_ref(&stranger))
        .await
        .expect("answers");
    assert_eq!(server.cmd(&["GET", &key]), claim.held.token);
    assert_eq!(b.extend(&stranger, TEN).await.expect("answers"), None);

    // Extension re-arms our own key.
    server.cmd(&["PEXPIRE", &key, "1500"]);
    let until = a.extend(&claim.held, TEN).await.expect("answers");
    assert!(until.is_some());
    let pttl: i64 = server.cmd(&["PTTL", &key]).parse().expect("a number");
    assert!(pttl > 1500, "extended: {pttl}");

    // Released: gone, and the next taker gets it.
    a.release(std::slice::from_ref(&claim.held))
        .await
        .expect("answers");
    assert_eq!(server.cmd(&["GET", &key]), "");
    let by_b = take_one(&b, &id, TEN).await.expect("free after release");
    b.release(&[by_b.held]).await.expect("answers");

    // Expiry: a lock nobody releases frees itself.
    let short = take_one(&a, &id, Duration::from_millis(300))
        .await
        .expect("free");
    assert!(take_one(&b, &id, TEN).await.is_none());
    eventually("the lock to expire", async || {
        server.cmd(&["EXISTS", &key]) == "0"
    })
    .await;
    assert_eq!(a.extend(&short.held, TEN).await.expect("answers"), None);
    assert!(take_one(&b, &id, TEN).await.is_some());

    // A server that lost the key (a restart) gets it back on extension while we are valid.
    let id2 = uuid::Uuid::new_v4().to_string();
    let claim2 = take_one(&a, &id2, TEN).await.expect("free");
    server.cmd(&["DEL", &key_for(&id2)]);
    assert!(a
        .extend(&claim2.held, TEN)
        .await
        .expect("answers")
        .is_some());
    assert_eq!(server.cmd(&["GET", &key_for(&id2)]), claim2.held.token);
}

#[tokio::test(flavor = "multi_thread")]
async fn redlock_needs_a_majority_and_releases_everywhere() {
    let servers = RedisServer::three();
    let ours = redlock(&servers);
    let theirs = redlock(&servers);
    assert_eq!(ours.quorum(), 2);
    let id = uuid::Uuid::new_v4().to_string();
    let key = key_for(&id);

    // A stranger holds 2 of 3 nodes: no majority for us, and what we took is undone.
    servers[0].cmd(&["SET", &key, "stranger", "PX", "60000"]);
    servers[1].cmd(&["SET", &key, "stranger", "PX", "60000"]);
    assert!(take_one(&ours, &id, TEN).await.is_none());
    assert_eq!(servers[2].cmd(&["GET", &key]), "", "released on every node");

    // The stranger keeps only a minority: we get the majority.
    servers[1].cmd(&["DEL", &key]);
    let claim = take_one(&ours, &id, TEN).await.expect("a majority");
    assert_eq!(servers[0].cmd(&["GET", &key]), "stranger");
    assert_eq!(servers[1].cmd(&["GET", &key]), claim.held.token);
    assert_eq!(servers[2].cmd(&["GET", &key]), claim.held.token);
    assert!(take_one(&theirs, &id, TEN).await.is_none(), "contended");

    // Extension on a majority.
    servers[1].cmd(&["PEXPIRE", &key, "1500"]);
    assert!(ours
        .extend(&claim.held, TEN)
        .await
        .expect("answers")
        .is_some());
    let pttl: i64 = servers[1].cmd(&["PTTL", &key]).parse().expect("a number");
    assert!(pttl > 1500, "{pttl}");
    assert_eq!(
        theirs
            .extend(
                &Held {
                    token: "x".into(),
                    ..claim.held.clone()
                },
                TEN
            )
            .await
            .expect("answers"),
        None,
        "a stranger's token extends nothing"
    );

    // Release on all: ours go, the stranger's stays.
    ours.release(&[claim.held]).await.expect("answers");
    assert_eq!(servers[0].cmd(&["GET", &key]), "stranger");
    assert_eq!(servers[1].cmd(&["GET", &key]), "");
    assert_eq!(servers[2].cmd(&["GET", &key]), "");

    // Expiry.
    let other = uuid::Uuid::new_v4().to_string();
    take_one(&ours, &other, Duration::from_millis(300))
        .await
        .expect("free");
    assert!(take_one(&theirs, &other, TEN).await.is_none());
    eventually("the quorum lock to expire", async || {
        servers
            .iter()
            .all(|s| s.cmd(&["EXISTS", &key_for(&other)]) == "0")
    })
    .await;
    assert!(take_one(&theirs, &other, TEN).await.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_takes_its_locks_in_one_round_trip_per_node() {
    let servers = RedisServer::three();
    let quorum = redlock(&servers);
    let ids = unique_ids(10);
    let sets_before: Vec<u64> = servers.iter().map(|s| s.calls("set")).collect();
    let trips_before: Vec<u64> = quorum.nodes().iter().map(Node::round_trips).collect();
    let claims = quorum.try_acquire(&ids, TEN).await.expect("answers");
    assert!(claims.iter().all(Option::is_some), "all ten taken");
    for (i, server) in servers.iter().enumerate() {
        assert_eq!(
            quorum.nodes()[i].round_trips() - trips_before[i],
            1,
            "one pipeline to node {i} for the whole batch"
        );
        assert_eq!(
            server.calls("set") - sets_before[i],
            10,
            "ten SET NX PX on node {i}"
        );
        assert_eq!(
            server.calls("hkeys"),
            10,
            "the same round trip read ten completion hashes on node {i}"
        );
    }
    // One Redis: the same, one pipeline.
    let one = single(&servers[0]);
    let before = one.node().round_trips();
    let claims = one
        .try_acquire(&unique_ids(10), TEN)
        .await
        .expect("answers");
    assert_eq!(claims.iter().flatten().count(), 10);
    assert_eq!(one.node().round_trips() - before, 1);
    // A duplicate id inside one batch: only one copy gets the lock.
    let dup = uuid::Uuid::new_v4().to_string();
    let both = quorum
        .try_acquire(&[dup.clone(), dup], TEN)
        .await
        .expect("answers");
    assert!(both[0].is_some() && both[1].is_none());
}

/// What `iniesta run` uses: releases and completion records ride along with the next batch's
/// acquire, so a steady consumer costs one round trip per node per batch, and they keep their
/// order (record before release before the next `SET NX`/`HKEYS`).
#[tokio::test(flavor = "multi_thread")]
async fn releases_and_records_ride_along_with_the_next_acquire() {
    let servers = RedisServer::three();
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let quorum = Redlock::new(
        servers
            .iter()
            .map(|s| node(&s.url()).defer_writes(wake.clone()))
            .collect(),
    );
    let first = unique_ids(10);
    let claims: Vec<_> = quorum
        .try_acquire(&first, TEN)
        .await
        .expect("answers")
        .into_iter()
        .map(|c| c.expect("free"))
        .collect();
    let trips: Vec<u64> = quorum.nodes().iter().map(Node::round_trips).collect();
    for (id, claim) in first.iter().zip(&claims) {
        quorum
            .record_completions(id, &["0:ledger/ledger".into()], TEN)
            .await
            .expect("queued");
        quorum
            .release(std::slice::from_ref(&claim.held))
            .await
            .expect("queued");
    }
    for (i, server) in servers.iter().enumerate() {
        assert_eq!(
            quorum.nodes()[i].round_trips(),
            trips[i],
            "nothing sent yet"
        );
        assert_eq!(
            quorum.nodes()[i].pending_writes(),
            20,
            "ten records, ten releases"
        );
        assert_eq!(
            server.cmd(&["EXISTS", &key_for(&first[0])]),
            "1",
            "still held"
        );
    }
    // The next batch carries them: one round trip per node. Its first id is a redelivery of a
    // message just released: it finds the lock free and its completion record.
    let mut next = unique_ids(9);
    next.insert(0, first[0].clone());
    let claims = quorum.try_acquire(&next, TEN).await.expect("answers");
    for (i, server) in servers.iter().enumerate() {
        assert_eq!(quorum.nodes()[i].round_trips(), trips[i] + 1, "node {i}");
        assert_eq!(quorum.nodes()[i].pending_writes(), 0);
        assert_eq!(
            server.cmd(&["EXISTS", &key_for(&first[1])]),
            "0",
            "released"
        );
        assert_eq!(
            server.cmd(&["HKEYS", &completion_key_for(&first[1])]),
            "0:ledger/ledger"
        );
    }
    let redelivered = claims[0].as_ref().expect("released before this SET NX");
    assert!(redelivered.completed.contains("0:ledger/ledger"));
    // With no acquire coming, `flush` sends them (the host's flusher calls it after
    // `LINGER`, and the pipeline at shutdown).
    let held: Vec<_> = claims.into_iter().flatten().map(|c| c.held).collect();
    quorum.release(&held).await.expect("queued");
    assert_eq!(servers[0].cmd(&["EXISTS", &key_for(&next[1])]), "1");
    quorum.flush().await;
    for server in &servers {
        assert_eq!(server.cmd(&["EXISTS", &key_for(&next[1])]), "0");
    }
}

/// The lock service `iniesta run` builds flushes deferred writes on its own when no acquire
/// comes (an idle consumer does not hold released locks).
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_host_releases_without_waiting_for_another_batch() {
    let server = RedisServer::start();
    let config = iniesta::config::LockConfig {
        urls: vec![server.url()],
        ..Default::default()
    };
    let locks = iniesta::lock::from_config(
        &config,
        std::path::Path::new("."),
        &iniesta::tasks::Tasks::new(),
    )
    .await
    .expect("locks");
    let id = uuid::Uuid::new_v4().to_string();
    let claim = take_one(locks.as_ref(), &id, TEN).await.expect("free");
    locks.release(&[claim.held]).await.expect("released");
    eventually("the flusher to release the lock", async || {
        server.cmd(&["EXISTS", &key_for(&id)]) == "0"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn completion_records_come_back_with_the_lock_and_expire() {
    let servers = RedisServer::three();
    for locks in [
        Box::new(single(&servers[0])) as Box<dyn Locks>,
        Box::new(redlock(&servers)),
    ] {
        let id = uuid::Uuid::new_v4().to_string();
        let claim = take_one(locks.as_ref(), &id, TEN).await.expect("free");
        assert!(claim.completed.is_empty());
        locks
            .record_completions(
                &id,
                &["0:ledger/ledger".into(), "1:flaky/flaky".into()],
                Duration::from_secs(2),
            )
            .await
            .expect("recorded");
        let pttl: i64 = servers[0]
            .cmd(&["PTTL", &completion_key_for(&id)])
            .parse()
            .expect("a number");
        assert!(pttl > 0 && pttl <= 2000, "records expire: {pttl}");
        locks.release(&[claim.held]).await.expect("released");
        let again = take_one(locks.as_ref(), &id, TEN).await.expect("free");
        assert_eq!(
            again.completed.into_iter().collect::<Vec<_>>(),
            vec!["0:ledger/ledger".to_string(), "1:flaky/flaky".to_string()]
        );
        locks.release(&[again.held]).await.expect("released");
        eventually("the records to expire", async || {
            servers
                .iter()
                .all(|s| s.cmd(&["EXISTS", &completion_key_for(&id)]) == "0")
        })
        .await;
        let later = take_one(locks.as_ref(), &id, TEN).await.expect("free");
        assert!(later.completed.is_empty(), "expired records are gone");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redlock_survives_one_node_down_waits_with_two_down_and_recovers() {
    let mut servers = RedisServer::three();
    let quorum = redlock(&servers);
    servers[0].kill();
    let ids = unique_ids(5);
    let claims = quorum.try_acquire(&ids, TEN).await.expect("2 of 3 answer");
    assert!(
        claims.iter().all(Option::is_some),
        "one node down: still works"
    );
    quorum
        .record_completions(&ids[0], &["0:ledger/ledger".into()], TEN * 100)
        .await
        .expect("recorded on the nodes that answer");
    let held: Vec<Held> = claims.into_iter().flatten().map(|c| c.held).collect();
    assert!(quorum
        .extend(&held[0], TEN)
        .await
        .expect("answers")
        .is_some());

    servers[1].kill();
    let err = quorum
        .try_acquire(&unique_ids(3), TEN)
        .await
        .expect_err("two of three down: undecidable");
    match &err {
        LockError::Unavailable {
            reachable,
            nodes,
            needed,
            ..
        } => assert_eq!((*reachable, *nodes, *needed), (1, 3, 2), "{err}"),
        other => panic!("expected Unavailable, got {other}"),
    }
    assert!(quorum.check().await.is_err());
    assert!(
        quorum.extend(&held[1], TEN).await.is_err(),
        "undecided, not lost"
    );

    servers[0].restart();
    servers[1].restart();
    eventually("the quorum to answer again", async || {
        quorum.check().await.is_ok()
    })
    .await;
    quorum.release(&held).await.expect("released");
    // The record written while node 0 was down survives on node 2 ("any node has it").
    let again = take_one(&quorum, &ids[0], TEN).await.expect("free");
    assert!(again.completed.contains("0:ledger/ledger"));
}

/// The measured lock cost per message (printed; run with --nocapture to see it). No timing
/// is asserted: machines are noisy.
#[tokio::test(flavor = "multi_thread")]
async fn lock_cost_per_message() {
    let servers = RedisServer::three();
    let one = single(&servers[0]);
    let three = redlock(&servers);
    const ROUNDS: u32 = 200;
    const BATCH: usize = 10;
    for (name, locks) in [
        ("1 Redis node", &one as &dyn Locks),
        ("3 Redis nodes (Redlock)", &three as &dyn Locks),
    ] {
        // Warm the connections.
        let warm = locks
            .try_acquire(&unique_ids(BATCH), TEN)
            .await
            .expect("ok");
        let warm: Vec<Held> = warm.into_iter().flatten().map(|c| c.held).collect();
        locks.release(&warm).await.expect("ok");

        let mut take = Duration::ZERO;
        let mut cycle = Duration::ZERO;
        for _ in 0..ROUNDS {
            let ids = unique_ids(BATCH);
            let start = Instant::now();
            let claims = locks.try_acquire(&ids, TEN).await.expect("ok");
            take += start.elapsed();
            // What the pipeline adds per message: one completion record (one binding acked)
            // and one release.
            for claim in claims.into_iter().flatten() {
                locks
                    .record_completions(&claim.held.message_id, &["0:p/h".into()], TEN)
                    .await
                    .expect("ok");
                locks.release(&[claim.held]).await.expect("ok");
            }
            cycle += start.elapsed();
        }
        let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(ROUNDS) / BATCH as f64;
        println!(
            "lock cost, batch of {BATCH}, {name}: take (batched) {:.1} µs/message; take + record + release {:.1} µs/message",
            per(take),
            per(cycle)
        );
    }
}

// ---------------------------------------------------------------------------------------
// `iniesta run` end to end.
// ---------------------------------------------------------------------------------------

fn lock_section(urls: &[String], extra: &str) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!("[lock]\nurls = [{}]\n{extra}\n", urls.join(", "))
}

fn ledger_binding(ledger: &Path, label: &str, events: &str) -> String {
    format!(
        "[[bindings]]\nevents = {events}\nplugin = \"ledger\"\nconfig = {{ path = \"{}\", label = \"{label}\" }}\n",
        ledger.display()
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// Insert each event `copies` times with the SAME message id (one transaction, so no host can
/// take the first copy before the second exists). Returns the ids.
fn inject(config: &Path, events: &[String], copies: usize) -> Vec<String> {
    let config = Config::load(config).expect("config loads");
    runtime().block_on(async move {
        let broker = LocalBroker::open(&config).await.expect("broker opens");
        let queue = broker.queue().to_string();
        let rows: Vec<(String, Vec<u8>, String)> = events
            .iter()
            .map(|event| {
                let id = uuid::Uuid::new_v4().to_string();
                let mut attributes = Attributes::new();
                attributes.insert("iniesta_pass".into(), Attribute::string(event.clone()));
                attributes.insert("version".into(), Attribute::number(1));
                let body = format!("{{\"id\":\"{id}\",\"secret\":\"body-never-in-redis\"}}");
                (
                    id,
                    body.into_bytes(),
                    serde_json::to_string(&attributes).expect("json"),
                )
            })
            .collect();
        let ids = rows.iter().map(|(id, _, _)| id.clone()).collect();
        broker
            .db()
            .call(move |conn| {
                let tx = conn.transaction()?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                for (id, body, attributes) in &rows {
                    for _ in 0..copies {
                        tx.execute(
                            "INSERT INTO messages (id, queue, body, attributes, sent_ms, visible_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                            (id, &queue, body, attributes, now),
                        )?;
                    }
                }
                tx.commit()
            })
            .await
            .expect("inject");
        ids
    })
}

fn queue(config: &Path, name: &str) -> Vec<StoredMessage> {
    let config = Config::load(config).expect("config loads");
    runtime().block_on(async move {
        let broker = LocalBroker::open(&config).await.expect("broker opens");
        broker.messages(name).await.expect("messages")
    })
}

const QUEUE: &str = "iniesta-test-receiver";
const DLQ: &str = "iniesta-test-receiver-dlq";

/// (id, label) → how many ledger lines.
fn ledger_counts(s: &Scratch) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for line in s.ledger("ledger.jsonl") {
        let key = (
            line["id"].as_str().unwrap_or_default().to_string(),
            line["label"].as_str().unwrap_or_default().to_string(),
        );
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

fn events(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("Order.{prefix}{i}.receiver"))
        .collect()
}

#[test]
fn two_hosts_run_each_message_once_per_binding_through_a_node_failure() {
    two_hosts_each_message_once(RedisServer::three(), true);
}

#[test]
fn two_hosts_on_one_redis_run_each_message_once_per_binding() {
    two_hosts_each_message_once(vec![RedisServer::start()], false);
}

/// Two `iniesta run` on one queue, every message injected twice with the same id (before the
/// hosts start and again mid-run), two ledger bindings and a slow one; optionally one Redis of
/// three is killed mid-run. The ledger must show each (message, binding) exactly once.
fn two_hosts_each_message_once(mut servers: Vec<RedisServer>, kill_one: bool) {
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl");
    let rest = format!(
        "{}{}{}[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"panicky\"\nhandler = \"sleepy\"\nconfig = {{ sleep_ms = 150 }}\n",
        lock_section(&urls, "timeout_secs = 5"),
        ledger_binding(&ledger, "a", r#"["Order.*"]"#),
        ledger_binding(&ledger, "b", r#"["Order.*"]"#),
    );
    let config = s.config("pollers = 2\nmax_messages = 10", &rest);
    // Every message twice with the same id, before the hosts start and again mid-run.
    let mut ids = inject(&config, &events("First", 15), 2);
    let first = Host::start(&config, s.path("first.log"));
    let second = Host::start(&config, s.path("second.log"));
    s.wait_for("some messages handled", LIMIT, || {
        ledger_counts(&s).len() >= 6
    });
    if kill_one {
        servers[0].kill();
    }
    ids.extend(inject(&config, &events("Second", 15), 2));
    let expected = ids.len() * 2;
    s.wait_for("every (message, binding) in the ledger", LIMIT, || {
        ledger_counts(&s).len() >= expected
    });
    s.wait_for("the queue to empty", LIMIT, || {
        queue(&config, QUEUE).is_empty()
    });
    let first_log = first.stop();
    let second_log = second.stop();
    let counts = ledger_counts(&s);
    for id in &ids {
        for label in ["a", "b"] {
            assert_eq!(
                counts.get(&(id.clone(), label.to_string())),
                Some(&1),
                "({id}, {label}) exactly once\n{first_log}\n{second_log}"
            );
        }
    }
    assert_eq!(counts.len(), expected, "nothing else in the ledger");
    assert!(queue(&config, DLQ).is_empty(), "nothing dead-lettered");
    let both = format!("{first_log}\n{second_log}");
    assert!(
        both.contains("locked by another consumer")
            || both.contains("already completed this message"),
        "the duplicates were stopped by the lock or the records:\n{both}"
    );
    assert!(!both.contains("lock service is unavailable"), "{both}");
    // Redis saw ids, tokens and binding ids, never a body.
    for server in servers.iter().filter(|s| s.is_running()) {
        for key in server.cmd(&["KEYS", "*"]).lines() {
            assert!(key.starts_with("sqs:event:"), "{key}");
            if key.ends_with(":done") {
                let fields = server.cmd(&["HKEYS", key]);
                assert!(!fields.contains("body-never-in-redis"), "{fields}");
            }
        }
    }
}

#[test]
fn a_majority_down_runs_nothing_loses_nothing_and_resumes() {
    let mut servers = RedisServer::three();
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl");
    let rest = format!(
        "{}{}",
        lock_section(&urls, ""),
        ledger_binding(&ledger, "a", r#"["Order.*"]"#)
    );
    let config = s.config("max_receive_count = 3", &rest);
    let mut host = Host::start(&config, s.path("host.log"));
    servers[0].kill();
    servers[1].kill();
    let ids = inject(&config, &events("Wait", 5), 2);
    s.wait_for("the outage to be logged", LIMIT, || {
        host.log_text().contains("lock service is unavailable")
    });
    assert!(host.is_alive(), "Redis errors never take the host down");
    assert!(s.ledger("ledger.jsonl").is_empty(), "nothing handled");
    let waiting = queue(&config, QUEUE);
    assert_eq!(waiting.len(), 10, "nothing lost: {waiting:?}");
    assert!(
        waiting.iter().all(|m| m.receive_count <= 1),
        "receiving paused, receive counts do not climb towards the redrive policy: {waiting:?}"
    );
    assert!(queue(&config, DLQ).is_empty());
    servers[0].restart();
    servers[1].restart();
    s.wait_for(
        "every message handled once the quorum is back",
        LIMIT,
        || ledger_counts(&s).len() == ids.len(),
    );
    s.wait_for("the queue to empty", LIMIT, || {
        queue(&config, QUEUE).is_empty()
    });
    let log = host.stop();
    assert!(log.contains("receiving resumes"), "{log}");
    assert!(ledger_counts(&s).values().all(|&n| n == 1), "{log}");
    assert!(queue(&config, DLQ).is_empty(), "{log}");
}

#[test]
fn a_lock_held_elsewhere_is_not_run_until_released() {
    let server = RedisServer::start();
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl");
    let rest = format!(
        "{}{}",
        lock_section(&[server.url()], ""),
        ledger_binding(&ledger, "a", r#"["Order.*"]"#)
    );
    let config = s.config("visibility_timeout = 1", &rest);
    let ids = inject(&config, &events("Held", 1), 1);
    let key = key_for(&ids[0]);
    server.cmd(&["SET", &key, "another-host", "PX", "600000"]);
    let host = Host::start(&config, s.path("host.log"));
    s.wait_for("two deliveries refused by the lock", LIMIT, || {
        host.log_text()
            .matches("locked by another consumer")
            .count()
            >= 2
    });
    assert!(s.ledger("ledger.jsonl").is_empty(), "not run while held");
    let left = queue(&config, QUEUE);
    assert_eq!(left.len(), 1, "never deleted while held");
    assert!(left[0].receive_count >= 2, "redelivered: {left:?}");
    assert_eq!(server.cmd(&["GET", &key]), "another-host", "left alone");
    server.cmd(&["DEL", &key]);
    s.wait_for("the message handled after the release", LIMIT, || {
        s.ledger("ledger.jsonl").len() == 1
    });
    s.wait_for("the queue to empty", LIMIT, || {
        queue(&config, QUEUE).is_empty()
    });
    host.stop();
}

#[test]
fn retry_count_is_the_number_of_attempts_per_delivery() {
    let server = RedisServer::start();
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl");
    let rest = format!(
        "{}{}",
        lock_section(&[server.url()], "retry_count = 3"),
        ledger_binding(&ledger, "a", r#"["Order.*"]"#)
    );
    let config = s.config("visibility_timeout = 1", &rest);
    let ids = inject(&config, &events("Retried", 1), 1);
    server.cmd(&["SET", &key_for(&ids[0]), "another-host", "PX", "600000"]);
    let sets_before = server.calls("set");
    let host = Host::start(&config, s.path("host.log"));
    s.wait_for("two deliveries given up on", LIMIT, || {
        host.log_text()
            .matches("locked by another consumer")
            .count()
            >= 2
    });
    // A clean stop lets a retry in progress finish its attempts.
    let log = host.stop();
    let deliveries = log.matches("locked by another consumer").count() as u64;
    assert_eq!(
        server.calls("set") - sets_before,
        3 * deliveries,
        "three SET NX per delivery:\n{log}"
    );
    assert!(s.ledger("ledger.jsonl").is_empty());
}

#[test]
fn a_retry_from_one_binding_does_not_rerun_the_binding_that_acked() {
    let server = RedisServer::start();
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl");
    let rest = format!(
        "{}[[bindings]]\nevents = [\"Flaky.*\"]\nplugin = \"flaky\"\nconfig = {{ fail_times = 2, retry_after = 0 }}\n{}",
        lock_section(&[server.url()], ""),
        ledger_binding(&ledger, "after", r#"["Flaky.*"]"#)
    );
    let config = s.config("", &rest);
    let host = Host::start(&config, s.path("host.log"));
    common::publish(&config, &["Flaky.Thing", "{}"]);
    s.wait_for(
        "the message to be deleted after the third delivery",
        LIMIT,
        || {
            host.log_text().matches("handler asked to retry").count() >= 2
                && queue(&config, QUEUE).is_empty()
        },
    );
    let log = host.stop();
    let lines = s.ledger("ledger.jsonl");
    assert_eq!(lines.len(), 1, "the ledger ran once:\n{log}");
    assert_eq!(lines[0]["receive_count"], 1);
    assert_eq!(
        log.matches("are not run again").count(),
        2,
        "skipped on deliveries 2 and 3:\n{log}"
    );
    let done = server.cmd(&["KEYS", "sqs:event:*:done"]);
    let fields = server.cmd(&["HKEYS", done.lines().next().unwrap_or_default()]);
    assert!(
        fields.contains("0:flaky/flaky") && fields.contains("1:ledger/ledger"),
        "{fields}"
    );
}

#[test]
fn a_long_handler_keeps_its_lock_alive() {
    let server = RedisServer::start();
    let s = Scratch::new();
    // The lock lives 1 s and the message is redelivered every second while the handler runs
    // 3 s: without extension, a redelivery would take the lock and run the handler again.
    let rest = format!(
        "{}[[bindings]]\nevents = [\"Slow.*\"]\nplugin = \"panicky\"\nhandler = \"sleepy\"\ntimeout_secs = 60\nconfig = {{ sleep_ms = 3000 }}\n\
         [[bindings]]\nevents = [\"Slow.*\"]\nplugin = \"echo\"\nconfig = {{ prefix = \"seen\" }}\n",
        lock_section(&[server.url()], "timeout_secs = 1"),
    );
    // The visibility heartbeat is off so that the message does come back while it runs.
    let config = s.config(
        "visibility_timeout = 1\nmax_visibility_extension_secs = 0",
        &rest,
    );
    let host = Host::start(&config, s.path("host.log"));
    common::publish(&config, &["Slow.Job", "{}"]);
    s.wait_for("the message to be gone", LIMIT, || {
        host.log_text().contains("seen: ") && queue(&config, QUEUE).is_empty()
    });
    let log = host.stop();
    assert!(
        log.contains("locked by another consumer"),
        "a redelivery came while the handler ran and found the lock held:\n{log}"
    );
    assert!(
        !log.contains("are not run again"),
        "the slow handler never started twice:\n{log}"
    );
    assert!(!log.contains("lock was lost"), "{log}");
    assert_eq!(log.matches("seen: ").count(), 1, "{log}");
}

#[test]
fn a_lost_lock_leaves_the_message_unsettled() {
    let mut server = RedisServer::start();
    let s = Scratch::new();
    let rest = format!(
        "{}[[bindings]]\nevents = [\"Slow.*\"]\nplugin = \"panicky\"\nhandler = \"sleepy\"\ntimeout_secs = 60\nconfig = {{ sleep_ms = 3000 }}\n\
         [[bindings]]\nevents = [\"Slow.*\"]\nplugin = \"echo\"\nconfig = {{ prefix = \"started\" }}\n",
        lock_section(&[server.url()], "timeout_secs = 1"),
    );
    let config = s.config("visibility_timeout = 60", &rest);
    let mut host = Host::start(&config, s.path("host.log"));
    common::publish(&config, &["Slow.Job", "{}"]);
    s.wait_for("the handlers to start", LIMIT, || {
        host.log_text().contains("started: ")
    });
    // Redis goes away while the 3 s handler runs: the 1 s lock cannot be extended.
    server.kill();
    s.wait_for("the lost lock to be reported", LIMIT, || {
        host.log_text().contains("not settling the message")
    });
    assert!(host.is_alive());
    let left = queue(&config, QUEUE);
    assert_eq!(left.len(), 1, "not deleted:\n{}", host.log_text());
    assert!(!left[0].visible, "left to its visibility timeout");
    host.stop();
}

#[test]
fn bad_lock_urls_are_refused_without_leaking_the_password() {
    let s = Scratch::new();
    let rest = format!(
        "{}[[bindings]]\ndefault = true\nplugin = \"echo\"\n",
        lock_section(&["redis://:hunter2@".into()], "")
    );
    let config = s.config("", &rest);
    let out = common::iniesta(&config, &["run", "--no-check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lock.urls[0]"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn a_host_starts_while_redis_is_down_and_uses_it_once_up() {
    let mut server = RedisServer::start();
    server.kill();
    let s = Scratch::new();
    let ledger = s.path("ledger.jsonl");
    let rest = format!(
        "{}{}",
        lock_section(&[server.url()], ""),
        ledger_binding(&ledger, "a", r#"["Order.*"]"#)
    );
    let config = s.config("", &rest);
    let host = Host::start(&config, s.path("host.log"));
    assert!(
        host.log_text().contains("not reachable yet"),
        "{}",
        host.log_text()
    );
    inject(&config, &events("Late", 2), 1);
    s.wait_for("the outage to be logged", LIMIT, || {
        host.log_text().contains("lock service is unavailable")
    });
    server.restart();
    s.wait_for("both handled", LIMIT, || ledger_counts(&s).len() == 2);
    host.stop();
}

/// `name{node="…"}` in a Prometheus text, 0 when not exported.
fn node_series(metrics: &str, name: &str, node: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{node=\"{node}\"}} ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A host on three Redlock nodes, its metrics on a port of its own, fed in waves of five
/// `Order` events to a ledger.
struct Waves {
    s: Scratch,
    config: PathBuf,
    host: Host,
    port: u16,
    handled: usize,
}

impl Waves {
    fn start(servers: &[RedisServer]) -> Waves {
        let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
        let s = Scratch::new();
        let ledger = s.path("ledger.jsonl");
        let rest = format!(
            "{}{}[metrics]\nlisten = \"127.0.0.1:0\"\n",
            lock_section(&urls, ""),
            ledger_binding(&ledger, "a", r#"["Order.*"]"#),
        );
        let config = s.config("max_messages = 5", &rest);
        let host = Host::start(&config, s.path("host.log"));
        let port = host.port();
        Waves {
            s,
            config,
            host,
            port,
            handled: 0,
        }
    }

    /// Inject five events named after `prefix`; return once every wave so far is handled.
    fn wave(&mut self, prefix: &str) {
        inject(&self.config, &events(prefix, 5), 1);
        self.handled += 5;
        let (s, expected) = (&self.s, self.handled);
        s.wait_for("the wave handled", LIMIT, || {
            ledger_counts(s).len() >= expected
        });
    }

    fn metrics(&self) -> String {
        common::http_get(self.port, "/metrics")
            .expect("metrics answer")
            .1
    }
}

/// One Redlock node down while batch after batch is locked: the host logs the node's state
/// change once when it goes down and once when it is back, and counts every failed request in
/// `iniesta_lock_node_errors_total{node}` (and writes it could not store in
/// `iniesta_lock_writes_lost_total{node}`) instead of a warning per lock attempt.
#[test]
fn a_node_down_is_logged_once_down_and_once_back_and_counted_in_between() {
    let mut servers = RedisServer::three();
    let down = format!("127.0.0.1:{}", servers[0].port);
    let mut waves = Waves::start(&servers);
    waves.wave("Up");
    servers[0].kill();
    for i in 0..8 {
        waves.wave(&format!("Down{i}-"));
    }
    let metrics = waves.metrics();
    let errors = node_series(&metrics, "iniesta_lock_node_errors_total", &down);
    assert!(
        errors >= 8.0,
        "a failed request per wave at least: {errors}\n{metrics}"
    );
    for other in &servers[1..] {
        let node = format!("127.0.0.1:{}", other.port);
        assert_eq!(
            node_series(&metrics, "iniesta_lock_node_errors_total", &node),
            0.0,
            "{metrics}"
        );
    }
    servers[0].restart();
    let back = |text: &str| {
        text.lines()
            .filter(|l| l.contains(&format!("node={down}")) && l.contains("reachable again"))
            .count()
    };
    let mut n = 0;
    while back(&waves.host.log_text()) == 0 {
        waves.wave(&format!("Back{n}-"));
        n += 1;
        assert!(
            n < 50,
            "the node never came back:\n{}",
            waves.host.log_text()
        );
    }
    let log = waves.host.stop();
    let about_node: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("node={down}")))
        .collect();
    let warnings: Vec<&&str> = about_node.iter().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning when it went down: {about_node:#?}"
    );
    assert_eq!(back(&log), 1, "one line when it came back: {about_node:#?}");
}

/// A Redlock node that is reachable but refuses writes (here: out of memory under
/// `maxmemory-policy noeviction`), on and off: one warning when it starts answering errors,
/// one line when it has answered normally for a while again, every failed request counted in
/// between.
#[test]
fn a_node_answering_errors_is_logged_once_each_way_and_counted() {
    let servers = RedisServer::three();
    let node = format!("127.0.0.1:{}", servers[0].port);
    let mut waves = Waves::start(&servers);
    waves.wave("Before");
    servers[0].cmd(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    servers[0].cmd(&["CONFIG", "SET", "maxmemory", "1"]);
    for i in 0..6 {
        waves.wave(&format!("Refused{i}-"));
    }
    // A node at its memory limit refuses writes in one round trip and answers the next (a
    // release, a read, a moment below the limit): that is not a new failure each time.
    for i in 0..3 {
        servers[0].cmd(&["CONFIG", "SET", "maxmemory", "0"]);
        waves.wave(&format!("Below{i}-"));
        servers[0].cmd(&["CONFIG", "SET", "maxmemory", "1"]);
        waves.wave(&format!("Above{i}-"));
    }
    let metrics = waves.metrics();
    let errors = node_series(&metrics, "iniesta_lock_node_errors_total", &node);
    assert!(errors >= 6.0, "{errors}\n{metrics}");
    servers[0].cmd(&["CONFIG", "SET", "maxmemory", "0"]);
    let normal = |text: &str| {
        text.lines()
            .filter(|l| l.contains(&format!("node={node}")) && l.contains("answers normally again"))
            .count()
    };
    // Normal again once it has answered without errors for a while (10 s).
    let mut n = 0;
    let settling = std::time::Instant::now();
    while normal(&waves.host.log_text()) == 0 {
        waves.wave(&format!("After{n}-"));
        n += 1;
        assert!(
            settling.elapsed() < LIMIT,
            "never normal again:\n{}",
            waves.host.log_text()
        );
    }
    let log = waves.host.stop();
    let about_node: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("node={node}")))
        .collect();
    let warnings = about_node.iter().filter(|l| l.contains(" WARN ")).count();
    assert_eq!(warnings, 1, "one warning: {about_node:#?}");
    assert_eq!(normal(&log), 1, "{about_node:#?}");
}
