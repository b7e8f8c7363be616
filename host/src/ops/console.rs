//! The operator console: a small web page at `/` of the metrics server.
//!
//! It shows the plugins (version, generation, reloads, file), the bindings with what each
//! acked, retried, failed and dead-lettered and their latency and failure rate over the last
//! minute, charts of throughput and in-flight messages and of each binding's latency (p95)
//! and failure rate over the last hour, the true queue and DLQ depths, the latest handler
//! failures with their reasons, and the dead-letter queue: searched by event and reason, paged,
//! with redrive and delete for one message or all that match. The page, its script and its
//! style are compiled into the binary.
//!
//! `/api/state?since=T` returns only the chart points newer than `T` (ms since the Unix epoch):
//! the page asks for the hour once, then for what is new every two seconds.
//!
//! Security: without a token the console must listen on a loopback address and only answers
//! requests whose `Host` is a loopback name (a guard against DNS rebinding). With
//! `console.token_env`, every console request must carry the token — as the
//! `iniesta_console` cookie the page sets after `/?token=...`, or `Authorization: Bearer` —
//! compared in constant time. Actions are POSTs that must carry the page's per-process CSRF
//! token in `X-CSRF-Token` and, when the browser sends one, an `Origin` of this server. The DLQ
//! listing needs the CSRF token too, unless the request proved itself with the verified token
//! in `Authorization: Bearer`: an Authorization header the console does not verify (another
//! scheme, any header without a token configured) exempts nothing.
//! Bodies are never shown unless `console.show_bodies = true`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use subtle::ConstantTimeEq;

use super::errors::FailureKind;
use super::health::Health;
use super::metrics as m;
use super::values::{Distribution, Values};
use super::OpsError;
use crate::config::{BrokerKind, Config};
use crate::dlq::{Action, DeadLetterQueue, Query, Selection};
use crate::route::Routes;
use crate::tasks::Tasks;

/// Where the console listens when `[metrics] listen` is unset.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9090";
/// The cookie that carries the token after `/?token=...`.
const COOKIE: &str = "iniesta_console";
/// Failures kept for the page.
const RECENT_FAILURES: usize = 50;
/// Samples kept (one every [`SAMPLE_EVERY`]: an hour; about 70 KB for the throughput and as
/// much per binding).
const SAMPLES: usize = 1800;
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// The window of the bindings table's latency and failure rate.
const RECENT: Duration = Duration::from_secs(60);
/// Handler results the failure rate counts: the failed calls ([`m::FAILED_RESULTS`]) and the
/// dead-letter outcomes (a retry is counted apart).
const FAILED: &[&str] = &["error", "panic", "timeout", "crashed", "dead_letter"];

const INDEX_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

/// The console's settings, checked before anything starts.
#[derive(Clone)]
pub struct ConsoleSettings {
    /// Where the server listens.
    pub listen: String,
    token: Option<String>,
    show_bodies: bool,
}

impl std::fmt::Debug for ConsoleSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSettings")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("show_bodies", &self.show_bodies)
            .finish()
    }
}

impl ConsoleSettings {
    /// `None` when the console is off. Refuses a token variable that is unset or empty, and a
    /// non-loopback address without a token.
    pub fn from_config(config: &Config) -> Result<Option<ConsoleSettings>, OpsError> {
        if !config.console.enabled {
            return Ok(None);
        }
        let listen = config
            .metrics
            .listen
            .clone()
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let addr: SocketAddr = listen
            .parse()
            .map_err(|_| OpsError::Address(listen.clone()))?;
        let token = match &config.console.token_env {
            None => None,
            Some(var) => match std::env::var(var) {
                Ok(value) if !value.trim().is_empty() => Some(value),
                _ => {
                    return Err(OpsError::Console(format!(
                        "console.token_env = \"{var}\", but ${var} is unset or empty: export the token (e.g. `export {var}=$(openssl rand -hex 32)`), or remove console.token_env to serve on loopback only"
                    )))
                }
            },
        };
        if token.is_none() && !addr.ip().is_loopback() {
            return Err(OpsError::Console(format!(
                "the console would listen on {listen}, which is not a loopback address, without a token: set console.token_env = \"INIESTA_CONSOLE_TOKEN\" and export that variable, or listen on 127.0.0.1"
            )));
        }
        Ok(Some(ConsoleSettings {
            listen,
            token,
            show_bodies: config.console.show_bodies,
        }))
    }
}

/// One recent handler failure, as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FailureView {
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// What happened.
    pub kind: FailureKind,
    /// The binding's label, if a handler ran.
    pub binding: Option<String>,
    /// The event.
    pub event: String,
    /// The message id.
    pub message_id: String,
    /// Deliveries so far.
    pub receive_count: u32,
    /// The error, panic message, timeout or dead-letter reason.
    pub reason: String,
}

/// The latest handler failures (a bounded list; the oldest drops out).
#[derive(Debug, Default)]
pub struct RecentFailures {
    items: Mutex<VecDeque<FailureView>>,
}

impl RecentFailures {
    /// Record one failure.
    pub fn push(
        &self,
        kind: FailureKind,
        binding: Option<&str>,
        event: &str,
        message_id: &str,
        receive_count: u32,
        reason: &str,
    ) {
        let mut items = crate::mutex::lock(&self.items);
        if items.len() >= RECENT_FAILURES {
            items.pop_front();
        }
        items.push_back(FailureView {
            at_ms: now_ms(),
            kind,
            binding: binding.map(str::to_string),
            event: event.to_string(),
            message_id: message_id.to_string(),
            receive_count,
            reason: reason.to_string(),
        });
    }

    /// Newest first.
    pub fn snapshot(&self) -> Vec<FailureView> {
        let items = crate::mutex::lock(&self.items);
        items.iter().rev().cloned().collect()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Counters at one moment, for the throughput chart.
#[derive(Debug, Clone, Copy, Serialize)]
struct Sample {
    t: u64,
    received: f64,
    acked: f64,
    dead_lettered: f64,
    in_flight: f64,
}

/// A binding's handler calls over one sample interval, for its charts.
#[derive(Debug, Clone, Copy, Serialize)]
struct BindingPoint {
    t: u64,
    /// Calls that ended in the interval.
    calls: u64,
    /// Of those, failed ones ([`FAILED`]).
    failed: u64,
    /// Of those, retried ones.
    retried: u64,
    /// Median and 95th percentile duration (ms), when there were calls.
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
}

/// A binding's counts since the start, at one moment.
#[derive(Debug, Clone, Default)]
struct Totals {
    at: u64,
    calls: u64,
    failed: u64,
    retried: u64,
    durations: Distribution,
}

impl Totals {
    /// The calls between `earlier` and these totals.
    fn since(&self, earlier: &Totals) -> BindingPoint {
        let durations = self.durations.since(&earlier.durations);
        let ms = |q: f64| durations.quantile(q).map(|s| (s * 1e6).round() / 1e3);
        BindingPoint {
            t: self.at,
            calls: self.calls.saturating_sub(earlier.calls),
            failed: self.failed.saturating_sub(earlier.failed),
            retried: self.retried.saturating_sub(earlier.retried),
            p50_ms: ms(0.5),
            p95_ms: ms(0.95),
        }
    }
}

/// What the charts show: the throughput samples and each binding's history, under one lock
/// so a reader sees both at the same sample (the page's `since` cursor covers both).
#[derive(Debug, Default)]
struct History {
    series: VecDeque<Sample>,
    bindings: HashMap<String, BindingHistory>,
}

/// The history of one binding: its chart points and the totals of the last minute.
#[derive(Debug, Default)]
struct BindingHistory {
    points: VecDeque<BindingPoint>,
    /// Totals at each sample of the last [`RECENT`] (oldest first).
    recent: VecDeque<Totals>,
}

/// The console of one host.
pub struct Console {
    settings: ConsoleSettings,
    csrf: String,
    config: Config,
    metrics: Values,
    health: Arc<Health>,
    routes: OnceLock<Arc<ArcSwap<Routes>>>,
    failures: Arc<RecentFailures>,
    dlq: Option<Arc<dyn DeadLetterQueue>>,
    history: Mutex<History>,
    /// One dead-letter operation (a listing, a redrive, a delete) at a time: on SQS each holds
    /// the messages it read invisible, and a listing holds them in memory.
    dlq_gate: Arc<tokio::sync::Semaphore>,
    started: std::time::Instant,
    tasks: Tasks,
}

impl Console {
    /// The console for a host; opens the dead-letter queue (if one is configured) and starts
    /// sampling the counters (a task of `tasks`, until they stop).
    pub async fn start(
        settings: ConsoleSettings,
        config: &Config,
        metrics: Values,
        health: Arc<Health>,
        tasks: &Tasks,
    ) -> Result<Arc<Console>, OpsError> {
        let dlq = match crate::dlq::open(config).await {
            Ok(dlq) => Some(dlq),
            Err(crate::dlq::DlqError::NotConfigured) => None,
            Err(e) => return Err(OpsError::Console(format!("the dead-letter queue: {e}"))),
        };
        let console = Arc::new(Console {
            settings,
            csrf: uuid::Uuid::new_v4().simple().to_string(),
            config: config.clone(),
            metrics,
            health,
            routes: OnceLock::new(),
            failures: Arc::new(RecentFailures::default()),
            dlq,
            history: Mutex::new(History::default()),
            dlq_gate: Arc::new(tokio::sync::Semaphore::new(1)),
            started: std::time::Instant::now(),
            tasks: tasks.clone(),
        });
        let weak = Arc::downgrade(&console);
        let stopping = tasks.stopping();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tokio::select! {
                    _ = stopping.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let Some(console) = weak.upgrade() else {
                    break;
                };
                console.sample();
            }
        });
        tracing::info!(listen = %console.settings.listen, token = console.settings.token.is_some(), show_bodies = console.settings.show_bodies, "operator console at http://{}/", console.settings.listen);
        Ok(console)
    }

    /// The routing table to show (swapped by hot reload).
    pub fn watch_routes(&self, routes: Arc<ArcSwap<Routes>>) {
        let _ = self.routes.set(routes);
    }

    /// Where the pipeline records failures for the page.
    pub fn failures(&self) -> Arc<RecentFailures> {
        self.failures.clone()
    }

    /// Whether `path` is the console's.
    pub fn handles(path: &str) -> bool {
        matches!(path, "/" | "/console.js" | "/console.css") || path.starts_with("/api/")
    }

    fn sample(&self) {
        let sum = |name: &str| self.metrics.sum(name);
        let sample = Sample {
            t: now_ms(),
            received: sum(m::RECEIVED),
            acked: sum(m::ACKED),
            dead_lettered: sum(m::DEAD_LETTERED),
            in_flight: sum(m::IN_FLIGHT),
        };
        // Every binding bound now (the history of a binding a reload removed is dropped).
        let totals: Vec<(String, Totals)> = self
            .routes
            .get()
            .map(|r| r.load_full())
            .iter()
            .flat_map(|r| r.bindings().iter())
            .map(|b| (b.name.clone(), self.totals(&b.name, sample.t)))
            .collect();
        let mut history = crate::mutex::lock(&self.history);
        if history.series.len() >= SAMPLES {
            history.series.pop_front();
        }
        history.series.push_back(sample);
        let at = sample.t;
        let histories = &mut history.bindings;
        histories.retain(|name, _| totals.iter().any(|(n, _)| n == name));
        for (name, totals) in totals {
            let history = histories.entry(name).or_default();
            if let Some(previous) = history.recent.back() {
                if history.points.len() >= SAMPLES {
                    history.points.pop_front();
                }
                history.points.push_back(totals.since(previous));
            }
            while history
                .recent
                .front()
                .is_some_and(|t| at.saturating_sub(t.at) > RECENT.as_millis() as u64)
            {
                history.recent.pop_front();
            }
            history.recent.push_back(totals);
        }
    }

    /// A binding's handler calls since the start.
    fn totals(&self, binding: &str, at: u64) -> Totals {
        let count = |results: Option<&[&str]>| -> u64 {
            match results {
                Some(results) => self.metrics.counter_sum(
                    m::HANDLER_CALLS,
                    &[("binding", &[binding]), ("result", results)],
                ),
                None => self
                    .metrics
                    .counter_sum(m::HANDLER_CALLS, &[("binding", &[binding])]),
            }
        };
        Totals {
            at,
            calls: count(None),
            failed: count(Some(FAILED)),
            retried: count(Some(&["retry"])),
            durations: self
                .metrics
                .distribution(m::HANDLER_DURATION, &[("binding", binding)])
                .unwrap_or_default(),
        }
    }

    /// A binding's calls over the last minute: count, failure rate, latency.
    fn recent(&self, binding: &str) -> serde_json::Value {
        let history = crate::mutex::lock(&self.history);
        let Some(window) = history
            .bindings
            .get(binding)
            .and_then(|h| Some((h.recent.front()?, h.recent.back()?)))
            .map(|(first, last)| last.since(first))
        else {
            return serde_json::Value::Null;
        };
        serde_json::json!({
            "calls": window.calls,
            "failed": window.failed,
            "retried": window.retried,
            "failure_rate": (window.calls > 0).then(|| window.failed as f64 / window.calls as f64),
            "p50_ms": window.p50_ms,
            "p95_ms": window.p95_ms,
        })
    }

    /// Answer a console request (auth, CSRF, then the route).
    pub async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if let Err((status, why)) = self.authorize(&request) {
            tracing::debug!(path = %request.uri().path(), status = status.as_u16(), why, "console request refused");
            return respond(status, "text/plain; charset=utf-8", format!("{why}\n"));
        }
        let path = request.uri().path().to_string();
        match (request.method().clone(), path.as_str()) {
            (Method::GET, "/") => {
                if self.settings.token.is_some() && query_param(&request, "token").is_some() {
                    // The token was good (authorize checked it): keep it in a cookie and drop
                    // it from the address bar and history.
                    let mut response = respond(StatusCode::SEE_OTHER, "text/plain", "see /\n");
                    response
                        .headers_mut()
                        .insert(header::LOCATION, HeaderValue::from_static("/"));
                    let token = self.settings.token.as_deref().unwrap_or_default();
                    if let Ok(cookie) = HeaderValue::from_str(&format!(
                        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
                        cookie_safe(token)
                    )) {
                        response.headers_mut().insert(header::SET_COOKIE, cookie);
                    }
                    return response;
                }
                respond(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    INDEX_HTML.replace("{{CSRF}}", &self.csrf),
                )
            }
            (Method::GET, "/console.js") => {
                respond(StatusCode::OK, "text/javascript; charset=utf-8", CONSOLE_JS)
            }
            (Method::GET, "/console.css") => {
                respond(StatusCode::OK, "text/css; charset=utf-8", CONSOLE_CSS)
            }
            (Method::GET, "/api/state") => {
                let since = match number_param(&request, "since", 0) {
                    Ok(since) => since,
                    Err(why) => {
                        return json(StatusCode::BAD_REQUEST, &serde_json::json!({"error": why}))
                    }
                };
                json(StatusCode::OK, &self.state(since as u64))
            }
            (Method::GET, "/api/dlq") => self.dlq_list(&request).await,
            (Method::POST, "/api/dlq/redrive") => self.act(Action::Redrive, request).await,
            (Method::POST, "/api/dlq/delete") => self.act(Action::Delete, request).await,
            (_, "/" | "/console.js" | "/console.css" | "/api/state" | "/api/dlq") => respond(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "only GET\n",
            ),
            (_, "/api/dlq/redrive" | "/api/dlq/delete") => respond(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "only POST\n",
            ),
            _ => respond(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found\n",
            ),
        }
    }

    /// The token (every request) and, for POSTs, the CSRF token and the origin.
    fn authorize(&self, request: &Request<Incoming>) -> Result<(), (StatusCode, &'static str)> {
        let refuse = |status: StatusCode, why: &'static str| Err((status, why));
        // Whether this request proved itself with the token in `Authorization: Bearer`: the
        // one header this console verifies. Any other Authorization header (another scheme, a
        // wrong token, any header at all without console.token_env) proves nothing.
        let mut bearer_verified = false;
        match &self.settings.token {
            Some(token) => {
                let matches =
                    |offered: &str| bool::from(offered.as_bytes().ct_eq(token.as_bytes()));
                let from_bearer = bearer(request);
                bearer_verified = from_bearer.as_deref().is_some_and(matches);
                let offered = query_param(request, "token")
                    .filter(|_| request.uri().path() == "/" && request.method() == Method::GET)
                    .or(from_bearer)
                    .or_else(|| cookie(request, COOKIE));
                if !offered.as_deref().is_some_and(matches) {
                    return refuse(
                        StatusCode::UNAUTHORIZED,
                        "the console needs its token: open /?token=TOKEN once (it is then kept in a cookie), or send Authorization: Bearer TOKEN",
                    );
                }
            }
            None => {
                // Loopback only: refuse names that could point here by DNS rebinding.
                let host = request
                    .headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("");
                if !is_loopback_host(host) {
                    return refuse(
                        StatusCode::FORBIDDEN,
                        "without console.token_env the console answers only requests addressed to localhost or a loopback address",
                    );
                }
            }
        }
        // Actions, and the DLQ listing: on SQS a listing receives the messages (raising their
        // receive counts), so another page must not be able to trigger it with an <img>. A
        // request that carried the verified token in `Authorization: Bearer` cannot come from
        // another page (browsers send no such header cross-site without a CORS preflight,
        // which this server never allows, and another page does not know the token); the
        // mere presence of an Authorization header is no such proof.
        let listing = request.uri().path() == "/api/dlq" && !bearer_verified;
        if request.method() == Method::POST || listing {
            let csrf = request
                .headers()
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !bool::from(csrf.as_bytes().ct_eq(self.csrf.as_bytes())) {
                return refuse(
                    StatusCode::FORBIDDEN,
                    "missing or wrong X-CSRF-Token: actions and DLQ listings must come from the console page (a DLQ listing may instead carry Authorization: Bearer TOKEN when console.token_env is set)",
                );
            }
            if let Some(origin) = request.headers().get(header::ORIGIN) {
                let host = request
                    .headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("");
                let same = origin
                    .to_str()
                    .ok()
                    .and_then(|o| o.strip_prefix("http://"))
                    .map(|o| o.eq_ignore_ascii_case(host))
                    .unwrap_or(false);
                if !same {
                    return refuse(
                        StatusCode::FORBIDDEN,
                        "cross-origin action refused (Origin is not this console)",
                    );
                }
            }
        }
        Ok(())
    }

    fn state(&self, since: u64) -> serde_json::Value {
        let count = |binding: &str, results: &[&str]| -> u64 {
            self.metrics.counter_sum(
                m::HANDLER_CALLS,
                &[("binding", &[binding]), ("result", results)],
            )
        };
        let host = crate::plugins::watch::running_hosts(&self.config)
            .into_iter()
            .find(|h| h.pid == std::process::id());
        let routes = self.routes.get().map(|r| r.load_full());
        let bindings: Vec<serde_json::Value> = routes
            .iter()
            .flat_map(|r| r.bindings().iter())
            .map(|b| {
                serde_json::json!({
                    "label": b.label,
                    "name": b.name,
                    "plugin": b.plugin.name,
                    "version": b.plugin.version,
                    "handler": b.handler_name,
                    "default": b.is_default,
                    "acked": count(&b.name, &["ack"]),
                    "retried": count(&b.name, &["retry"]),
                    "failed": count(&b.name, m::FAILED_RESULTS),
                    "dead_lettered": count(&b.name, &["dead_letter"]),
                    "last_minute": self.recent(&b.name),
                    // The circuit breaker's state, for bindings that have one.
                    "circuit": self.metrics.gauge(m::CIRCUIT_STATE, &[("binding", &b.name)]).map(|state| match state as u8 {
                        1 => "open",
                        2 => "half-open",
                        _ => "closed",
                    }),
                })
            })
            .collect();
        // Plugins as the host's state file has them (with reload counts), else as bound.
        let plugins: Vec<serde_json::Value> = match &host {
            Some(host) => host
                .plugins
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "name": p.name, "version": p.version, "generation": p.generation,
                        "reloads": p.reloads, "file": p.file.display().to_string(),
                        "loaded_at_ms": p.loaded_at * 1000,
                    })
                })
                .collect(),
            None => {
                let mut seen = std::collections::BTreeMap::new();
                for b in routes.iter().flat_map(|r| r.bindings().iter()) {
                    seen.entry(b.plugin.name.clone()).or_insert_with(|| {
                        serde_json::json!({
                            "name": b.plugin.name, "version": b.plugin.version,
                            "generation": b.plugin.generation, "reloads": 0,
                            "file": b.plugin.file.display().to_string(),
                            "loaded_at_ms": b.plugin.loaded_at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
                        })
                    });
                }
                seen.into_values().collect()
            }
        };
        let (samples, binding_series) = {
            let history = crate::mutex::lock(&self.history);
            let samples: Vec<Sample> = history
                .series
                .iter()
                .filter(|s| s.t > since)
                .copied()
                .collect();
            let binding_series: serde_json::Map<String, serde_json::Value> = history
                .bindings
                .iter()
                .map(|(name, history)| {
                    let points: Vec<&BindingPoint> =
                        history.points.iter().filter(|p| p.t > since).collect();
                    (name.clone(), serde_json::json!(points))
                })
                .collect();
            (samples, binding_series)
        };
        // True depths, as the queue-depth reader last saw them (GetQueueAttributes on SQS, a
        // count on the local broker; absent until the first read, or with the reader off).
        let depth = |queue: &str| -> Option<serde_json::Value> {
            let read = |state: &str| {
                self.metrics
                    .gauge(m::QUEUE_MESSAGES, &[("queue", queue), ("state", state)])
            };
            let visible = read("visible")?;
            Some(serde_json::json!({
                "visible": visible,
                "in_flight": read("in_flight").unwrap_or(0.0),
                "delayed": read("delayed").unwrap_or(0.0),
            }))
        };
        let depths = serde_json::json!({
            "queue": depth(&self.config.queue_name()),
            "dead_letter_queue": self.config.sqs.dead_letter_queue.as_deref().and_then(depth),
        });
        serde_json::json!({
            "service": self.config.service,
            "queue": self.config.queue_name(),
            "dead_letter_queue": self.config.sqs.dead_letter_queue,
            "broker": match self.config.broker.kind { BrokerKind::Local => "local", BrokerKind::Aws => "aws" },
            "health": match self.health.status() { Ok(()) => "ready".to_string(), Err(why) => format!("not ready: {why}") },
            "pid": std::process::id(),
            "uptime_secs": self.started.elapsed().as_secs(),
            "show_bodies": self.settings.show_bodies,
            "plugins": plugins,
            "bindings": bindings,
            "series": samples,
            "binding_series": binding_series,
            "depths": depths,
            "failures": self.failures.snapshot(),
            "retained_mb": host.as_ref().map(|h| h.retained_bytes as f64 / 1e6).unwrap_or(0.0),
            // Plugin files refused now, each with the generation that keeps serving.
            "load_failures": host.as_ref().map(|h| h.load_failures.clone()).unwrap_or_default(),
            // Config keys edited in the file that wait for a restart (their old values run).
            "pending_restart": host.as_ref().map(|h| h.pending_restart.clone()).unwrap_or_default(),
        })
    }

    /// Run a dead-letter listing or action: one at a time (another waits for the gate), in a
    /// task of its own, tracked so shutdown waits for it — a browser that goes away must not
    /// cancel a redrive between a send and its delete (the message would be in both queues),
    /// nor a listing before it makes what it read on SQS visible again.
    async fn dlq_task<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, Response<Full<Bytes>>> {
        // (Never closed: the gate lives as long as the console.)
        let Ok(permit) = self.dlq_gate.clone().acquire_owned().await else {
            return Err(json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"error": "the console is stopping"}),
            ));
        };
        let task = self.tasks.spawn(async move {
            let _permit = permit;
            work.await
        });
        task.await.map_err(|e| {
            tracing::error!(error = %e, "console: the dead-letter task failed");
            json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &serde_json::json!({"error": format!("the dead-letter task failed: {e}")}),
            )
        })
    }

    /// `GET /api/dlq?limit=&offset=&event=&reason=&scan=`: one page of the dead letters that
    /// match (an event glob and a reason text, both optional).
    async fn dlq_list(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let bad = |why: String| json(StatusCode::BAD_REQUEST, &serde_json::json!({"error": why}));
        let Some(dlq) = &self.dlq else {
            return json(
                StatusCode::OK,
                &serde_json::json!({"configured": false, "messages": []}),
            );
        };
        let numbers = (|| {
            let scan = match query_param(request, "scan") {
                None => None,
                Some(_) => Some(number_param(request, "scan", 0)?.clamp(1, crate::dlq::MAX_SCAN)),
            };
            Ok::<_, String>((
                number_param(request, "limit", 100)?.clamp(1, 1000),
                number_param(request, "offset", 0)?.min(crate::dlq::MAX_SCAN),
                scan,
            ))
        })();
        let (limit, offset, scan) = match numbers {
            Ok(numbers) => numbers,
            Err(why) => return bad(why),
        };
        let given = |name: &str| -> Vec<String> {
            query_param(request, name)
                .filter(|v| !v.trim().is_empty())
                .into_iter()
                .collect()
        };
        let selection = match Selection::new(&given("event"), &[], &given("reason")) {
            Ok(selection) => selection,
            Err(e) => return bad(e.to_string()),
        };
        let query = Query {
            selection,
            offset,
            limit,
            scan,
        };
        let task_dlq = dlq.clone();
        let searched = match self
            .dlq_task(async move { crate::dlq::search(task_dlq.as_ref(), &query).await })
            .await
        {
            Ok(searched) => searched,
            Err(refused) => return refused,
        };
        match searched {
            Ok(listing) => {
                let messages: Vec<serde_json::Value> = listing
                    .letters
                    .iter()
                    .map(|l| {
                        serde_json::json!({
                            "id": l.id, "event": l.event, "receive_count": l.receive_count,
                            "first_seen_ms": l.first_seen_ms, "last_seen_ms": l.last_seen_ms,
                            "reason": l.reason, "body": l.body_preview(self.settings.show_bodies, 200),
                        })
                    })
                    .collect();
                json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "configured": true, "messages": messages, "limit": limit,
                        "offset": offset, "matching": listing.matching,
                        "scanned": listing.scanned, "complete": listing.complete,
                    }),
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "console: cannot list the dead-letter queue");
                json(
                    StatusCode::BAD_GATEWAY,
                    &serde_json::json!({"error": e.to_string()}),
                )
            }
        }
    }

    /// `POST /api/dlq/redrive` and `/api/dlq/delete` with `{"ids": [..]}`, `{"events": [..]}`,
    /// `{"reasons": [..]}` (combined as in [`Selection`]) or, for a redrive, `{"all": true}`.
    async fn act(&self, action: Action, request: Request<Incoming>) -> Response<Full<Bytes>> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Ask {
            #[serde(default)]
            ids: Vec<String>,
            #[serde(default)]
            events: Vec<String>,
            #[serde(default)]
            reasons: Vec<String>,
            #[serde(default)]
            all: bool,
        }
        let bad = |why: String| json(StatusCode::BAD_REQUEST, &serde_json::json!({"error": why}));
        let Some(dlq) = &self.dlq else {
            return bad("no dead-letter queue is configured (set sqs.dead_letter_queue)".into());
        };
        let body = match Limited::new(request.into_body(), 64 * 1024).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return bad(format!("cannot read the request: {e}")),
        };
        let ask: Ask = match serde_json::from_slice(&body) {
            Ok(a) => a,
            Err(e) => {
                return bad(format!(
                    "expected {{\"ids\": [..]}}, {{\"events\": [..]}}, {{\"reasons\": [..]}} or {{\"all\": true}}: {e}"
                ))
            }
        };
        let selection = match Selection::new(&ask.events, &ask.ids, &ask.reasons) {
            Ok(s) => s,
            Err(e) => return bad(e.to_string()),
        };
        match (ask.all, selection.is_all()) {
            (true, false) => {
                return bad(
                    "`all` selects everything: give it alone, without ids, events or reasons"
                        .into(),
                )
            }
            (false, true) => {
                return bad(match action {
                    Action::Redrive => "nothing selected: give \"ids\", \"events\", \"reasons\", or \"all\": true".into(),
                    Action::Delete => "nothing selected: give \"ids\", \"events\" or \"reasons\" (emptying the queue is `iniesta dlq purge --yes`)".into(),
                })
            }
            _ => {}
        }
        let selection = match action {
            Action::Delete => match selection.for_delete() {
                Ok(selection) => selection,
                Err(e) => return bad(e.to_string()),
            },
            Action::Redrive => selection,
        };
        let dlq = dlq.clone();
        let outcome = match self
            .dlq_task(async move { dlq.act(action, &selection, &crate::dlq::NoProgress).await })
            .await
        {
            Ok(outcome) => outcome,
            Err(refused) => return refused,
        };
        match outcome {
            Ok(report) => {
                tracing::info!(?action, done = report.done, kept = report.kept, failed = report.failed.len(), missing = report.missing.len(), ids = ?ask.ids, events = ?ask.events, reasons = ?ask.reasons, "console: dead-letter action");
                json(StatusCode::OK, &report)
            }
            Err(e) => {
                tracing::warn!(error = %e, ?action, "console: dead-letter action failed");
                json(
                    StatusCode::BAD_GATEWAY,
                    &serde_json::json!({"error": e.to_string()}),
                )
            }
        }
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'none'",
        ),
    );
    response
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    respond(status, "application/json", body)
}

/// A whole-number query parameter, `default` when absent; anything else is refused, named.
fn number_param(request: &Request<Incoming>, name: &str, default: usize) -> Result<usize, String> {
    match query_param(request, name) {
        None => Ok(default),
        Some(text) => text
            .parse::<usize>()
            .map_err(|_| format!("`{name}` must be a whole number, not {text:?}")),
    }
}

fn query_param(request: &Request<Incoming>, name: &str) -> Option<String> {
    let query = request.uri().query()?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi * 16 + lo);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            // `+` stays `+` (not a space): tokens are often base64.
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Cookie values may not hold `;`, `,`, spaces or quotes: percent-encode anything else.
fn cookie_safe(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~!$&'()*+/:=?@[]^`{|}".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn bearer(request: &Request<Incoming>) -> Option<String> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    value.strip_prefix("Bearer ").map(|t| t.trim().to_string())
}

fn cookie(request: &Request<Incoming>, name: &str) -> Option<String> {
    for value in request.headers().get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=') {
                if k == name {
                    return Some(percent_decode(v));
                }
            }
        }
    }
    None
}

/// Whether a `Host` header names this machine's loopback (`localhost`, `127.x`, `[::1]`).
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost:9090",
            "127.0.0.1:1",
            "[::1]:9090",
            "LOCALHOST",
            "127.0.0.2",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["example.com:9090", "10.0.0.1:80", "", "localhost.evil.com"] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn percent_decoding_and_cookie_encoding() {
        assert_eq!(percent_decode("a%20b+c"), "a b+c");
        assert_eq!(percent_decode("bad%zz%"), "bad%zz%");
        assert_eq!(cookie_safe("a b;c"), "a%20b%3Bc");
        assert_eq!(percent_decode(&cookie_safe("t ok;,\"")), "t ok;,\"");
        // A base64 token (`openssl rand -base64 24`) survives the cookie round trip.
        let token = "q+3/Zk9w+Yh1x0T/ab+cdEFGhij4kl==";
        assert_eq!(percent_decode(&cookie_safe(token)), token);
        assert_eq!(percent_decode("q%2B3+x"), "q+3+x");
    }

    #[test]
    fn recent_failures_are_bounded_newest_first() {
        let f = RecentFailures::default();
        for i in 0..(RECENT_FAILURES + 5) {
            f.push(FailureKind::Error, None, "E", &i.to_string(), 1, "boom");
        }
        let snap = f.snapshot();
        assert_eq!(snap.len(), RECENT_FAILURES);
        assert_eq!(snap[0].message_id, (RECENT_FAILURES + 4).to_string());
    }
}
