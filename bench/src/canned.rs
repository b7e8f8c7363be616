//! The canned-response SQS endpoint: a loopback HTTP/1.1 server (keep-alive) that speaks the
//! SQS JSON protocol (AWS JSON 1.0: `POST /` with `X-Amz-Target: AmazonSQS.<Operation>`).
//!
//! - `GetQueueUrl` → `http://127.0.0.1:PORT/123456789012/<QueueName>`.
//! - `ReceiveMessage` → a full batch (`MaxNumberOfMessages`, at most 10) of realistic messages
//!   until `total` have been handed out: raw delivery, a ~1 KiB JSON body, the `iniesta_pass`
//!   (String) and `version` (Number) attributes, the four system attributes SQS returns for
//!   `All`, a unique `MessageId` and `ReceiptHandle`, and correct `MD5OfBody` and
//!   `MD5OfMessageAttributes` (the JavaScript SDK rejects a batch whose body MD5 does not
//!   match). Once everything is handed out it answers like an empty queue: it holds the long
//!   poll (for at most a second, so a consumer that drains on SIGTERM stops quickly), then
//!   returns no messages.
//! - `DeleteMessageBatch` → every entry `Successful`; each receipt is checked against what was
//!   handed out and counted once. `DeleteMessage` counts too.
//! - `ChangeMessageVisibility` → `{}`; `ChangeMessageVisibilityBatch` → every entry
//!   `Successful` (the host gives unstarted messages back with it when it drains).
//! - SNS (the query protocol: a form-encoded `Action=…` body, XML answers): `Publish` and
//!   `PublishBatch` → every entry `Successful` with a fresh `MessageId`; the entries are counted
//!   ([`Stats::published`]), so a consume-and-publish run shows how many SNS calls each
//!   published event cost.
//!
//! Every answer can be held back by a per-request latency with jitter ([`Latency`]: 20 ± 5 ms is
//! what a real region answers in), and every request is counted by action
//! ([`Stats::requests`]), so a run tells how many AWS calls each message cost. Entry-level
//! failures can be injected ([`Faults`]): the first delete of every k-th receipt fails as a
//! retryable (server-side) batch entry failure, as SQS answers under load.
//!
//! Everything else gets a JSON error, and is counted, so a client that needs more fails loudly.
//! The server keeps the times of the first `ReceiveMessage` and of the `total`-th delete, and
//! can snapshot a watched process's CPU time at both moments (see [`crate::procfs`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use md5::{Digest, Md5};

use crate::procfs;

/// The account id in queue URLs (moto's).
pub const ACCOUNT: &str = "123456789012";
/// The event every canned message carries in `iniesta_pass`.
pub const EVENT: &str = "Order.Created.shop";
/// How many distinct bodies the server cycles through.
const BODIES: usize = 64;
/// How long an empty `ReceiveMessage` is held (the long poll), at most.
const EMPTY_HOLD: Duration = Duration::from_secs(1);

/// How long the server takes to answer each request: `mean` ± up to `jitter`, spread evenly
/// (a fixed pseudo-random sequence, so two runs see the same delays).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    /// The average delay.
    pub mean: Duration,
    /// The largest deviation from `mean`, either way.
    pub jitter: Duration,
}

impl Latency {
    /// No delay: answer at once.
    pub const NONE: Latency = Latency {
        mean: Duration::ZERO,
        jitter: Duration::ZERO,
    };

    /// `mean` ± `jitter`.
    pub fn new(mean: Duration, jitter: Duration) -> Latency {
        Latency {
            mean,
            jitter: jitter.min(mean),
        }
    }

    /// Parse `20ms`, `20ms±5ms`, `20ms+-5ms` or `0`; without a jitter it is a quarter of the
    /// mean (a real region's spread).
    pub fn parse(text: &str) -> Result<Latency, String> {
        fn duration(t: &str) -> Result<Duration, String> {
            let t = t.trim();
            let (number, unit) = t
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .map(|i| t.split_at(i))
                .unwrap_or((t, "ms"));
            let value: f64 = number
                .parse()
                .map_err(|_| format!("`{t}` is not a duration (say 20ms)"))?;
            let ms = match unit {
                "ms" => value,
                "s" => value * 1000.0,
                "us" | "µs" => value / 1000.0,
                other => return Err(format!("unknown unit `{other}` in `{t}` (ms, s or us)")),
            };
            Ok(Duration::from_secs_f64(ms / 1000.0))
        }
        let (mean, jitter) = match text.split_once('±').or_else(|| text.split_once("+-")) {
            Some((m, j)) => (duration(m)?, duration(j)?),
            None => {
                let m = duration(text)?;
                (m, m / 4)
            }
        };
        Ok(Latency::new(mean, jitter))
    }

    /// The delay of the `n`-th request.
    pub fn nth(&self, n: u64) -> Duration {
        if self.jitter.is_zero() {
            return self.mean;
        }
        // splitmix64: a well-spread value in [0, 1) from the request number.
        let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
        let offset = self.jitter.as_secs_f64() * (2.0 * unit - 1.0);
        Duration::from_secs_f64((self.mean.as_secs_f64() + offset).max(0.0))
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ± {} ms",
            self.mean.as_millis(),
            self.jitter.as_millis()
        )
    }
}

/// Failures the server injects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// The first `DeleteMessageBatch` entry for every k-th receipt (by sequence number) fails
    /// with `InternalError`, `SenderFault: false` (retryable); its next delete succeeds.
    pub fail_first_delete_every: Option<u64>,
    /// In every k-th `PublishBatch` call the first entry fails with `InternalError`,
    /// `SenderFault` false (retryable); the others succeed.
    pub fail_publish_entry_every: Option<u64>,
}

/// How a server behaves beyond the messages it hands out.
#[derive(Debug, Clone, Copy, Default)]
pub struct Behaviour {
    /// The delay of every answer.
    pub latency: Latency,
    /// Injected failures.
    pub faults: Faults,
}

/// What the server has seen.
#[derive(Debug)]
pub struct Stats {
    /// OTLP span exports received (not AWS requests).
    pub otlp_exports: AtomicU64,
    total: u64,
    behaviour: Behaviour,
    /// Requests so far (numbers the latency sequence).
    request_count: AtomicU64,
    /// Requests by action (`ReceiveMessage`, `DeleteMessageBatch`, ...).
    requests: Mutex<BTreeMap<String, u64>>,
    /// When each message was handed out (by sequence number).
    handed_at: Mutex<Vec<Option<Instant>>>,
    /// From hand-out to delete, per deleted message (µs).
    residence_us: Mutex<Vec<u64>>,
    /// Delete entries failed on purpose ([`Faults`]).
    pub injected_failures: AtomicU64,
    /// SNS entries accepted (`Publish` calls and `PublishBatch` entries answered successful).
    pub published: AtomicU64,
    /// `PublishBatch` entries failed on purpose ([`Faults`]).
    pub injected_publish_failures: AtomicU64,
    publish_batches: AtomicU64,
    /// Receipts whose injected failure was already served.
    failed_once: Mutex<std::collections::HashSet<u64>>,
    /// Messages handed out.
    pub handed_out: AtomicU64,
    /// Distinct receipts deleted.
    pub deleted: AtomicU64,
    /// Deletes of a receipt already deleted.
    pub duplicate_deletes: AtomicU64,
    /// Deletes of a receipt this server never handed out.
    pub unknown_deletes: AtomicU64,
    /// `ReceiveMessage` calls that returned messages.
    pub batches: AtomicU64,
    /// `ReceiveMessage` calls that returned none.
    pub empty_receives: AtomicU64,
    /// `DeleteMessageBatch` calls.
    pub delete_calls: AtomicU64,
    /// `ChangeMessageVisibility` and `ChangeMessageVisibilityBatch` calls.
    pub visibility_calls: AtomicU64,
    /// `GetQueueUrl` calls.
    pub queue_url_calls: AtomicU64,
    /// Requests the server could not answer (unknown operation, bad JSON).
    pub bad_requests: AtomicU64,
    /// The last bad request, for the error message.
    pub last_bad: Mutex<Option<String>>,
    /// The process whose CPU time is snapshotted at the first receive and the last delete.
    watch_pid: AtomicU32,
    seen: Mutex<Vec<bool>>,
    marks: Mutex<Marks>,
    done: Condvar,
    finished: AtomicBool,
}

/// Times (and CPU snapshots of the watched process) at the two ends of a run.
#[derive(Debug, Clone, Default)]
pub struct Marks {
    /// When the first `ReceiveMessage` arrived.
    pub first_receive: Option<Instant>,
    /// The watched process's CPU time then.
    pub cpu_at_first_receive: Option<Duration>,
    /// When the `total`-th distinct receipt was deleted.
    pub last_delete: Option<Instant>,
    /// The watched process's CPU time then.
    pub cpu_at_last_delete: Option<Duration>,
    /// The watched process's peak resident set then (bytes).
    pub peak_rss_at_last_delete: Option<u64>,
    /// Requests by action up to then (what the run cost, without the idle polls after it).
    pub requests_at_last_delete: BTreeMap<String, u64>,
}

impl Stats {
    fn new(total: u64, behaviour: Behaviour) -> Stats {
        let slots = usize::try_from(total).unwrap_or(0);
        Stats {
            total,
            behaviour,
            request_count: AtomicU64::new(0),
            requests: Mutex::new(BTreeMap::new()),
            handed_at: Mutex::new(vec![None; slots]),
            residence_us: Mutex::new(Vec::with_capacity(slots)),
            injected_failures: AtomicU64::new(0),
            published: AtomicU64::new(0),
            injected_publish_failures: AtomicU64::new(0),
            publish_batches: AtomicU64::new(0),
            failed_once: Mutex::new(std::collections::HashSet::new()),
            handed_out: AtomicU64::new(0),
            deleted: AtomicU64::new(0),
            duplicate_deletes: AtomicU64::new(0),
            unknown_deletes: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            empty_receives: AtomicU64::new(0),
            delete_calls: AtomicU64::new(0),
            visibility_calls: AtomicU64::new(0),
            queue_url_calls: AtomicU64::new(0),
            bad_requests: AtomicU64::new(0),
            otlp_exports: AtomicU64::new(0),
            last_bad: Mutex::new(None),
            watch_pid: AtomicU32::new(0),
            seen: Mutex::new(vec![false; usize::try_from(total).unwrap_or(0)]),
            marks: Mutex::new(Marks::default()),
            done: Condvar::new(),
            finished: AtomicBool::new(total == 0),
        }
    }

    /// Messages this run hands out.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Requests so far by action.
    pub fn requests(&self) -> BTreeMap<String, u64> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Every request so far.
    pub fn request_total(&self) -> u64 {
        self.requests().values().sum()
    }

    /// The `q`-quantile (0–1) of the time from a message's hand-out to its delete, for the
    /// messages deleted so far.
    pub fn residence_quantile(&self, q: f64) -> Option<Duration> {
        let mut v = self.residence_us.lock().map(|v| v.clone()).ok()?;
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let index = ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        v.get(index).map(|us| Duration::from_micros(*us))
    }

    fn count_request(&self, action: &str) -> u64 {
        if let Ok(mut requests) = self.requests.lock() {
            *requests.entry(action.to_string()).or_insert(0) += 1;
        }
        self.request_count.fetch_add(1, Ordering::Relaxed)
    }

    fn on_hand_out(&self, seqs: std::ops::Range<u64>) {
        let now = Instant::now();
        if let Ok(mut at) = self.handed_at.lock() {
            for seq in seqs {
                if let Some(slot) = at.get_mut(seq as usize) {
                    *slot = Some(now);
                }
            }
        }
    }

    /// Whether this delete entry fails on purpose ([`Faults`]).
    fn inject_delete_failure(&self, receipt: &str) -> bool {
        let (Some(every), Some(seq)) = (
            self.behaviour.faults.fail_first_delete_every,
            seq_of_receipt(receipt),
        ) else {
            return false;
        };
        if every == 0 || seq % every != 0 {
            return false;
        }
        let first = self
            .failed_once
            .lock()
            .map(|mut f| f.insert(seq))
            .unwrap_or(false);
        if first {
            self.injected_failures.fetch_add(1, Ordering::Relaxed);
        }
        first
    }

    /// Snapshot the CPU time of `pid` at the first receive and at the last delete.
    pub fn watch(&self, pid: u32) {
        self.watch_pid.store(pid, Ordering::SeqCst);
    }

    /// The marks so far.
    pub fn marks(&self) -> Marks {
        self.marks.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Wait until every message was deleted, or `limit` passed; true when all were.
    pub fn wait_all_deleted(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let Ok(mut guard) = self.marks.lock() else {
            return false;
        };
        while !self.finished.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            match self.done.wait_timeout(guard, deadline - now) {
                Ok((g, _)) => guard = g,
                Err(_) => return false,
            }
        }
        true
    }

    /// Wait until the first `ReceiveMessage` arrived, or `limit` passed.
    pub fn wait_first_receive(&self, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(t) = self.marks().first_receive {
                return Some(t);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn cpu_of_watched(&self) -> Option<Duration> {
        match self.watch_pid.load(Ordering::SeqCst) {
            0 => None,
            pid => procfs::cpu_time(pid).ok(),
        }
    }

    fn on_receive(&self) {
        let Ok(mut marks) = self.marks.lock() else {
            return;
        };
        if marks.first_receive.is_none() {
            marks.first_receive = Some(Instant::now());
            marks.cpu_at_first_receive = self.cpu_of_watched();
        }
    }

    /// Count one deleted receipt; returns false for a receipt we never issued.
    fn on_delete(&self, receipt: &str) -> bool {
        let Some(seq) = seq_of_receipt(receipt) else {
            self.unknown_deletes.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        let fresh = match self.seen.lock() {
            Ok(mut seen) => match seen.get_mut(seq as usize) {
                Some(slot) if !*slot => {
                    *slot = true;
                    true
                }
                Some(_) => {
                    self.duplicate_deletes.fetch_add(1, Ordering::Relaxed);
                    false
                }
                None => {
                    self.unknown_deletes.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
            },
            Err(_) => false,
        };
        if fresh {
            let handed = self
                .handed_at
                .lock()
                .ok()
                .and_then(|at| at.get(seq as usize).copied().flatten());
            if let (Some(handed), Ok(mut residence)) = (handed, self.residence_us.lock()) {
                residence.push(handed.elapsed().as_micros() as u64);
            }
        }
        if fresh && self.deleted.fetch_add(1, Ordering::SeqCst) + 1 == self.total {
            let now = Instant::now();
            let cpu = self.cpu_of_watched();
            let rss = match self.watch_pid.load(Ordering::SeqCst) {
                0 => None,
                pid => procfs::peak_rss(pid).ok(),
            };
            let requests = self.requests();
            if let Ok(mut marks) = self.marks.lock() {
                marks.requests_at_last_delete = requests;
                marks.last_delete = Some(now);
                marks.cpu_at_last_delete = cpu;
                marks.peak_rss_at_last_delete = rss;
                self.finished.store(true, Ordering::SeqCst);
                self.done.notify_all();
            }
        }
        true
    }

    fn bad(&self, what: String) -> Response<Full<Bytes>> {
        self.bad_requests.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_bad.lock() {
            *last = Some(what.clone());
        }
        let body = serde_json::json!({
            "__type": "com.amazonaws.sqs#InvalidAction",
            "message": what,
        });
        json_response(400, body.to_string())
    }
}

/// A running canned server; stops when dropped.
pub struct Canned {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it has seen.
    pub stats: Arc<Stats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Canned {
    /// Start a server on a free loopback port that hands out `total` messages, each id tagged
    /// with `run` so ids never repeat across runs.
    pub fn start(total: u64, run: u32) -> anyhow::Result<Canned> {
        Canned::start_with(total, run, Behaviour::default())
    }

    /// [`Canned::start`], answering with `behaviour`'s latency and faults.
    pub fn start_with(total: u64, run: u32, behaviour: Behaviour) -> anyhow::Result<Canned> {
        // One thread: the server should take as little of the machine as it can.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats::new(total, behaviour));
        let catalog = Arc::new(Catalog::new(addr, run));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let accept_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("canned-sqs".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let accept = async {
                        while let Ok((stream, _)) = listener.accept().await {
                            let _ = stream.set_nodelay(true);
                            let (stats, catalog) = (accept_stats.clone(), catalog.clone());
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(move |req| {
                                    let (stats, catalog) = (stats.clone(), catalog.clone());
                                    async move {
                                        Ok::<_, Infallible>(answer(req, &stats, &catalog).await)
                                    }
                                });
                                let io = hyper_util::rt::TokioIo::new(stream);
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .keep_alive(true)
                                    .serve_connection(io, service)
                                    .await;
                            });
                        }
                    };
                    tokio::select! {
                        _ = accept => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime here cancels every connection and held long poll.
            })?;
        Ok(Canned {
            addr,
            stats,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL `GetQueueUrl` returns for `queue`.
    pub fn queue_url(&self, queue: &str) -> String {
        format!("http://{}/{ACCOUNT}/{queue}", self.addr)
    }
}

impl Drop for Canned {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The pre-rendered parts of the messages.
struct Catalog {
    addr: SocketAddr,
    run: u32,
    /// Bodies as JSON string literals (quoted, escaped), with the MD5 of the raw body.
    bodies: Vec<(String, String)>,
    /// `MD5OfMessageAttributes` of the (fixed) attributes.
    attributes_md5: String,
}

impl Catalog {
    fn new(addr: SocketAddr, run: u32) -> Catalog {
        let bodies = (0..BODIES)
            .map(|i| {
                let raw = body(i);
                let md5 = hex(&Md5::digest(raw.as_bytes()));
                (serde_json::Value::String(raw).to_string(), md5)
            })
            .collect();
        Catalog {
            addr,
            run,
            bodies,
            attributes_md5: attributes_md5(&[
                ("iniesta_pass", "String", EVENT),
                ("version", "Number", "1"),
            ]),
        }
    }

    /// Append message `seq` as a JSON object.
    fn render(&self, out: &mut String, seq: u64, now_ms: u128) {
        use std::fmt::Write as _;
        let (body, md5) = &self.bodies[(seq % BODIES as u64) as usize];
        let _ = write!(
            out,
            concat!(
                r#"{{"Attributes":{{"ApproximateFirstReceiveTimestamp":"{now}","#,
                r#""ApproximateReceiveCount":"1","SenderId":"AIDAIT2UOQQY3AUEKVGXU","#,
                r#""SentTimestamp":"{sent}"}},"Body":{body},"MD5OfBody":"{md5}","#,
                r#""MD5OfMessageAttributes":"{amd5}","MessageAttributes":{{"#,
                r#""iniesta_pass":{{"DataType":"String","StringValue":"{event}"}},"#,
                r#""version":{{"DataType":"Number","StringValue":"1"}}}},"#,
                r#""MessageId":"{id}","ReceiptHandle":"{receipt}"}}"#
            ),
            now = now_ms,
            sent = now_ms.saturating_sub(15),
            body = body,
            md5 = md5,
            amd5 = self.attributes_md5,
            event = EVENT,
            id = message_id(self.run, seq),
            receipt = receipt_handle(self.run, seq),
        );
    }
}

/// A realistic ~1 KiB order event, distinct per `i`.
fn body(i: usize) -> String {
    let items: Vec<serde_json::Value> = (0..8)
        .map(|k| {
            serde_json::json!({
                "sku": format!("SKU-{:05}-{k}", i * 7 + k),
                "name": format!("Item number {k} of order {i}"),
                "quantity": (i + k) % 5 + 1,
                "unit_price": format!("{}.{:02}", 3 + (i * k) % 40, (i + k * 13) % 100),
            })
        })
        .collect();
    serde_json::json!({
        "protocol": "iniesta",
        "event": "Order.Created",
        "order_id": format!("ord_{i:08}"),
        "customer": {"id": format!("cus_{:06}", i * 31), "email": format!("customer{i}@example.com"), "tier": "gold"},
        "currency": "EUR",
        "items": items,
        "shipping": {"method": "express", "address": {"line1": format!("{i} Rue de la Paix"), "city": "Paris", "postcode": "75002", "country": "FR"}},
        "created_at": "2026-05-09T07:30:00Z",
    })
    .to_string()
}

/// `MessageId`: a UUID whose fields carry the run and the sequence number.
pub fn message_id(run: u32, seq: u64) -> String {
    format!(
        "{run:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (seq >> 48) & 0xffff,
        (seq >> 36) & 0xfff,
        (seq >> 24) & 0xfff,
        seq & 0xff_ffff_ffff
    )
}

/// `ReceiptHandle`: as long as a real one (~180 characters), with the sequence number in it.
pub fn receipt_handle(run: u32, seq: u64) -> String {
    format!(
        "AQEB{run:08x}{seq:016x}Z{}",
        "kQmWcL0xV3JwYnRqZ2dNa2VxTnB5ZUJ1dUhVYTZtY0FQUWdZSzFqR0x2dDlTR3lTUTJDQ1Y0U3BRbmpsaEZ6bG1PTnZIRmFxSE9hVnlRd0tWVzBUbVdqTnZHd3JQYlR5UUxaV0FrS3Z5bXRqc0NhZ0ZQNnM"
    )
}

fn seq_of_receipt(receipt: &str) -> Option<u64> {
    let hex = receipt.get(12..28)?;
    u64::from_str_radix(hex, 16).ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SQS's `MD5OfMessageAttributes`: over the attributes sorted by name, each as length-prefixed
/// name, length-prefixed data type, a transport byte (1 string, 2 binary) and the
/// length-prefixed value.
pub fn attributes_md5(attributes: &[(&str, &str, &str)]) -> String {
    let mut sorted = attributes.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut hasher = Md5::new();
    for (name, data_type, value) in sorted {
        for part in [name, data_type] {
            hasher.update((part.len() as u32).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        hasher.update([1u8]);
        hasher.update((value.len() as u32).to_be_bytes());
        hasher.update(value.as_bytes());
    }
    hex(&hasher.finalize())
}

fn json_response(status: u16, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-amz-json-1.0"),
    );
    headers.insert(
        "x-amzn-requestid",
        hyper::header::HeaderValue::from_static("00000000-0000-4000-8000-000000000000"),
    );
    response
}

async fn answer(req: Request<Incoming>, stats: &Stats, catalog: &Catalog) -> Response<Full<Bytes>> {
    // The host's OTLP span exports (the tracing-on runs point `[tracing]` here): taken and
    // counted, not AWS requests.
    if req.uri().path() == OTLP_PATH {
        let _ = req.into_body().collect().await;
        stats.otlp_exports.fetch_add(1, Ordering::Relaxed);
        return Response::new(Full::new(Bytes::new()));
    }
    let target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return stats.bad(format!("cannot read the request body: {e}")),
    };
    if target.is_empty() && body.starts_with(b"Action=") {
        return sns(&body, stats).await;
    }
    let Some(operation) = target.strip_prefix("AmazonSQS.") else {
        stats.count_request("(not SQS)");
        return stats.bad(format!(
            "not an SQS JSON-protocol request (X-Amz-Target `{target}`, body starts {:?})",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        ));
    };
    let n = stats.count_request(operation);
    let delay = stats.behaviour.latency.nth(n);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let input: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return stats.bad(format!("{operation}: request body is not JSON: {e}")),
    };
    match operation {
        "GetQueueUrl" => {
            stats.queue_url_calls.fetch_add(1, Ordering::Relaxed);
            let name = input["QueueName"].as_str().unwrap_or("queue");
            let url = format!("http://{}/{ACCOUNT}/{name}", catalog.addr);
            json_response(200, serde_json::json!({ "QueueUrl": url }).to_string())
        }
        "ReceiveMessage" => {
            stats.on_receive();
            let max = input["MaxNumberOfMessages"]
                .as_u64()
                .unwrap_or(1)
                .clamp(1, 10);
            let wait = input["WaitTimeSeconds"].as_u64().unwrap_or(0).min(20);
            let start = stats.handed_out.fetch_add(max, Ordering::SeqCst);
            let end = (start + max).min(stats.total);
            if start >= stats.total {
                stats.handed_out.fetch_sub(max, Ordering::SeqCst);
                stats.empty_receives.fetch_add(1, Ordering::Relaxed);
                // An empty queue holds a long poll; at most a second here, so a consumer that
                // drains (waits for its in-flight poll) stops quickly after a run.
                tokio::time::sleep(Duration::from_secs(wait).min(EMPTY_HOLD)).await;
                return json_response(200, r#"{"Messages":[]}"#.into());
            }
            if end < start + max {
                stats
                    .handed_out
                    .fetch_sub(start + max - end, Ordering::SeqCst);
            }
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats.on_hand_out(start..end);
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            let mut out = String::with_capacity(1600 * (end - start) as usize + 16);
            out.push_str(r#"{"Messages":["#);
            for seq in start..end {
                if seq > start {
                    out.push(',');
                }
                catalog.render(&mut out, seq, now_ms);
            }
            out.push_str("]}");
            json_response(200, out)
        }
        "DeleteMessageBatch" => {
            stats.delete_calls.fetch_add(1, Ordering::Relaxed);
            let mut ok = Vec::new();
            let mut failed = Vec::new();
            for entry in input["Entries"].as_array().into_iter().flatten() {
                let id = entry["Id"].as_str().unwrap_or("").to_string();
                let receipt = entry["ReceiptHandle"].as_str().unwrap_or("");
                if stats.inject_delete_failure(receipt) {
                    failed.push(serde_json::json!({
                        "Id": id, "SenderFault": false, "Code": "InternalError",
                        "Message": "injected: try again"
                    }));
                } else if stats.on_delete(receipt) {
                    ok.push(serde_json::json!({ "Id": id }));
                } else {
                    failed.push(serde_json::json!({
                        "Id": id, "SenderFault": true, "Code": "ReceiptHandleIsInvalid",
                        "Message": "unknown receipt handle"
                    }));
                }
            }
            json_response(
                200,
                serde_json::json!({ "Successful": ok, "Failed": failed }).to_string(),
            )
        }
        "DeleteMessage" => {
            stats.delete_calls.fetch_add(1, Ordering::Relaxed);
            stats.on_delete(input["ReceiptHandle"].as_str().unwrap_or(""));
            json_response(200, "{}".into())
        }
        "ChangeMessageVisibility" => {
            stats.visibility_calls.fetch_add(1, Ordering::Relaxed);
            json_response(200, "{}".into())
        }
        "ChangeMessageVisibilityBatch" => {
            stats.visibility_calls.fetch_add(1, Ordering::Relaxed);
            let ok: Vec<serde_json::Value> = input["Entries"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| serde_json::json!({ "Id": e["Id"].as_str().unwrap_or("") }))
                .collect();
            json_response(
                200,
                serde_json::json!({ "Successful": ok, "Failed": [] }).to_string(),
            )
        }
        other => stats.bad(format!("operation {other} is not canned")),
    }
}

/// An SNS query-protocol request: `Publish` or `PublishBatch`.
async fn sns(body: &[u8], stats: &Stats) -> Response<Full<Bytes>> {
    let form: Vec<(String, String)> = form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let action = form
        .iter()
        .find(|(k, _)| k == "Action")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let n = stats.count_request(&action);
    let delay = stats.behaviour.latency.nth(n);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match action.as_str() {
        "Publish" => {
            stats.published.fetch_add(1, Ordering::Relaxed);
            xml_response(format!(
                "<PublishResponse xmlns=\"{SNS_NS}\"><PublishResult><MessageId>{}</MessageId></PublishResult>{META}</PublishResponse>",
                message_id(0xffff_ffff, n)
            ))
        }
        "PublishBatch" => {
            let ids: Vec<&str> = form
                .iter()
                .filter(|(k, _)| {
                    k.starts_with("PublishBatchRequestEntries.member.") && k.ends_with(".Id")
                })
                .map(|(_, v)| v.as_str())
                .collect();
            let call = stats.publish_batches.fetch_add(1, Ordering::Relaxed) + 1;
            let fail_first = stats
                .behaviour
                .faults
                .fail_publish_entry_every
                .is_some_and(|k| k > 0 && call.is_multiple_of(k));
            let (mut ok, mut failed) = (String::new(), String::new());
            for (i, id) in ids.iter().enumerate() {
                if i == 0 && fail_first {
                    stats
                        .injected_publish_failures
                        .fetch_add(1, Ordering::Relaxed);
                    failed.push_str(&format!(
                        "<member><Id>{id}</Id><Code>InternalError</Code><Message>injected: try again</Message><SenderFault>false</SenderFault></member>"
                    ));
                } else {
                    stats.published.fetch_add(1, Ordering::Relaxed);
                    ok.push_str(&format!(
                        "<member><Id>{id}</Id><MessageId>{}</MessageId></member>",
                        message_id(0xffff_fffe, n * 16 + i as u64)
                    ));
                }
            }
            xml_response(format!(
                "<PublishBatchResponse xmlns=\"{SNS_NS}\"><PublishBatchResult><Successful>{ok}</Successful><Failed>{failed}</Failed></PublishBatchResult>{META}</PublishBatchResponse>"
            ))
        }
        other => {
            stats.bad_requests.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut last) = stats.last_bad.lock() {
                *last = Some(format!("SNS action {other} is not canned"));
            }
            let mut response = xml_response(format!(
                "<ErrorResponse xmlns=\"{SNS_NS}\"><Error><Type>Sender</Type><Code>InvalidAction</Code><Message>{other} is not canned</Message></Error>{META}</ErrorResponse>"
            ));
            *response.status_mut() = hyper::StatusCode::BAD_REQUEST;
            response
        }
    }
}

/// Where the canned endpoint takes OTLP/HTTP span exports.
pub const OTLP_PATH: &str = "/v1/traces";

const SNS_NS: &str = "http://sns.amazonaws.com/doc/2010-03-31/";
const META: &str =
    "<ResponseMetadata><RequestId>00000000-0000-4000-8000-000000000000</RequestId></ResponseMetadata>";

fn xml_response(body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/xml"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_carry_their_sequence_number() {
        assert_eq!(seq_of_receipt(&receipt_handle(7, 12345)), Some(12345));
        assert!(receipt_handle(7, 1).len() > 150);
        assert_eq!(message_id(1, 2).len(), 36);
    }

    #[test]
    fn latency_parses_and_stays_within_its_jitter() {
        let l = Latency::parse("20ms±5ms").expect("parse");
        assert_eq!(
            l,
            Latency::new(Duration::from_millis(20), Duration::from_millis(5))
        );
        assert_eq!(Latency::parse("20ms+-5ms"), Ok(l));
        assert_eq!(
            Latency::parse("20ms"),
            Ok(l),
            "a quarter of the mean by default"
        );
        assert_eq!(Latency::parse("0"), Ok(Latency::NONE));
        assert!(Latency::parse("fast").is_err());
        assert!(Latency::parse("20h").is_err());
        let delays: Vec<Duration> = (0..1000).map(|n| l.nth(n)).collect();
        assert!(delays
            .iter()
            .all(|d| (Duration::from_millis(15)..=Duration::from_millis(25)).contains(d)));
        let mean = delays.iter().sum::<Duration>() / 1000;
        assert!((Duration::from_millis(19)..=Duration::from_millis(21)).contains(&mean));
        assert!(delays.iter().any(|d| *d < Duration::from_millis(17)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(23)));
    }

    #[test]
    fn bodies_are_about_a_kibibyte_of_json() {
        let b = body(3);
        assert!((900..1400).contains(&b.len()), "{}", b.len());
        let _: serde_json::Value = serde_json::from_str(&b).expect("json");
    }

    #[test]
    fn attribute_md5_matches_sqs() {
        // The value SQS returns for a single String attribute `a` = `b` (computed with the
        // documented algorithm; boto3 and the Java SDK agree).
        let md5 = attributes_md5(&[("a", "String", "b")]);
        assert_eq!(md5.len(), 32);
        // Order does not matter.
        assert_eq!(
            attributes_md5(&[("x", "String", "1"), ("a", "Number", "2")]),
            attributes_md5(&[("a", "Number", "2"), ("x", "String", "1")])
        );
    }
}
