//! One consumer run against a fresh canned endpoint, measured: its rate, its CPU per message,
//! the AWS requests it made per message (by action) and how long messages stayed in it.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bench::canned::{Behaviour, Canned};
use bench::procfs;
use bench::setup::{self, SqsHost};

use crate::results::fmt;
use crate::{peer, Ctx, QUEUE};

/// A consumer under test.
#[derive(Debug, Clone)]
pub(crate) enum Consumer {
    /// The host (`iniesta run`) with a default binding to the quiet echo.
    Host {
        /// `sqs.pollers`.
        pollers: usize,
        /// `sqs.max_in_flight`.
        max_in_flight: usize,
        /// `lock.urls`.
        lock_urls: Vec<String>,
        /// `inline` on the binding.
        inline: bool,
        /// An event the binding publishes for every message it handles.
        publish: Option<String>,
        /// `[tracing]` on, exporting to the canned endpoint.
        tracing: bool,
        /// Another binding than the quiet echo: its plugins directory and its TOML entry.
        binding: Option<(std::path::PathBuf, String)>,
        /// `broker.sqs_client = "sdk"`: the AWS SDK receives and deletes.
        sdk: bool,
    },
    /// A plain boto3 loop.
    Boto3,
    /// An aiobotocore asyncio loop.
    Aiobotocore,
    /// sqs-consumer on Node.js.
    Node,
}

impl Consumer {
    /// The host at `pollers` loops, with 20 slots per loop (the scenarios' long-standing setting).
    pub(crate) fn host(pollers: usize) -> Consumer {
        Consumer::Host {
            pollers,
            max_in_flight: 20 * pollers,
            lock_urls: Vec::new(),
            inline: false,
            publish: None,
            tracing: false,
            binding: None,
            sdk: false,
        }
    }

    /// The host receiving and deleting through the AWS SDK (`broker.sqs_client = "sdk"`).
    pub(crate) fn through_the_sdk(mut self) -> Consumer {
        if let Consumer::Host { sdk, .. } = &mut self {
            *sdk = true;
        }
        self
    }

    /// The host with `binding` (a `[[bindings]]` entry) to a plugin in `plugins`.
    pub(crate) fn bound(mut self, plugins: &std::path::Path, binding: &str) -> Consumer {
        if let Consumer::Host { binding: b, .. } = &mut self {
            *b = Some((plugins.to_path_buf(), binding.to_string()));
        }
        self
    }

    /// The host with tracing on: a span per handler run, exported over OTLP (to the canned
    /// endpoint, which takes and counts the exports).
    pub(crate) fn traced(mut self) -> Consumer {
        if let Consumer::Host { tracing, .. } = &mut self {
            *tracing = true;
        }
        self
    }

    /// The host with `max_in_flight` slots and one loop to start (more join as receives come
    /// back full).
    pub(crate) fn host_with_slots(slots: usize) -> Consumer {
        let mut host = Consumer::host(1);
        if let Consumer::Host { max_in_flight, .. } = &mut host {
            *max_in_flight = slots;
        }
        host
    }

    /// The host with its echo binding `inline = true`.
    pub(crate) fn inline_host(pollers: usize) -> Consumer {
        let mut host = Consumer::host(pollers);
        if let Consumer::Host { inline, .. } = &mut host {
            *inline = true;
        }
        host
    }

    /// The host taking its locks from these Redis servers.
    pub(crate) fn with_locks(mut self, urls: Vec<String>) -> Consumer {
        if let Consumer::Host { lock_urls, .. } = &mut self {
            *lock_urls = urls;
        }
        self
    }

    /// The host's binding publishing `event` (to the topic) for every message it handles.
    pub(crate) fn publishing(mut self, event: &str) -> Consumer {
        if let Consumer::Host { publish, .. } = &mut self {
            *publish = Some(event.to_string());
        }
        self
    }
}

/// What one consumer run measured.
#[derive(Debug, Clone)]
pub(crate) struct Measured {
    /// Messages deleted per second, first receive to last delete.
    pub(crate) rate: f64,
    /// The consumer's CPU time per message over the same span.
    pub(crate) cpu_us_per_message: f64,
    /// Its peak resident set at the last delete.
    pub(crate) peak_rss: Option<u64>,
    /// Its threads right after the last delete (idle pool threads linger for 10 s, so this
    /// is about the most it ran).
    pub(crate) threads: Option<u64>,
    /// Receives that returned messages.
    pub(crate) batches: u64,
    /// The canned endpoint's own CPU per message (to see it is not the bottleneck).
    pub(crate) bench_cpu_us_per_message: f64,
    /// AWS requests up to the last delete, by action.
    pub(crate) requests: BTreeMap<String, u64>,
    /// Messages in the run.
    pub(crate) messages: u64,
    /// From a message's hand-out to its delete: median and 99th percentile (ms).
    pub(crate) residence_ms: (f64, f64),
}

impl Measured {
    /// AWS requests per message: all of them, or those of one action.
    pub(crate) fn requests_per_message(&self, action: Option<&str>) -> f64 {
        let count: u64 = match action {
            Some(a) => self.requests.get(a).copied().unwrap_or(0),
            None => self.requests.values().sum(),
        };
        count as f64 / self.messages.max(1) as f64
    }
}

/// Run one consumer against a fresh canned endpoint until `n` messages are deleted.
pub(crate) fn run_consumer(
    ctx: &Ctx,
    consumer: &Consumer,
    n: u64,
    behaviour: Behaviour,
) -> anyhow::Result<Measured> {
    let run = ctx.next_run();
    let canned = Canned::start_with(n, run, behaviour)?;
    let dir = tempfile::tempdir_in(ctx.scratch.path())?;
    let log = dir.path().join("consumer.log");
    let mut child = match consumer {
        Consumer::Host {
            pollers,
            max_in_flight,
            lock_urls,
            inline,
            publish,
            tracing,
            binding,
            sdk,
        } => {
            let config = SqsHost {
                endpoint: canned.url(),
                queue: QUEUE.into(),
                pollers: *pollers,
                max_in_flight: *max_in_flight,
                lock_urls: lock_urls.clone(),
                plugins: binding
                    .as_ref()
                    .map(|(dir, _)| dir.clone())
                    .unwrap_or_else(|| ctx.echo_plugins.clone()),
                inline: *inline,
                publish: publish.clone(),
                otlp_endpoint: tracing
                    .then(|| format!("{}{}", canned.url(), bench::canned::OTLP_PATH)),
                binding: binding.as_ref().map(|(_, toml)| toml.clone()),
                sqs_client: if *sdk { "sdk" } else { "lean" },
            };
            let path = dir.path().join("iniesta.toml");
            std::fs::write(&path, config.config())?;
            setup::spawn_host(&ctx.host, &path, &log)?
        }
        Consumer::Boto3 => spawn(peer::boto3::command(ctx, &canned), &log)?,
        Consumer::Aiobotocore => spawn(peer::aiobotocore::command(ctx, &canned), &log)?,
        Consumer::Node => spawn(peer::node::command(ctx, &canned), &log)?,
    };
    canned.stats.watch(child.id());
    let bench_cpu_before = procfs::own_cpu_time();
    // Generous: a consumer slower than 100 msg/s is broken, not slow.
    let limit = Duration::from_secs(60) + Duration::from_millis(n.saturating_mul(10));
    let started = Instant::now();
    let mut all = false;
    while started.elapsed() < limit {
        if canned.stats.wait_all_deleted(Duration::from_millis(200)) {
            all = true;
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "{consumer:?} exited early ({status}) after {} of {n} deletes:\n{}",
                canned.stats.deleted.load(Ordering::SeqCst),
                setup::tail(&log, 30)
            );
        }
    }
    let bench_cpu = procfs::own_cpu_time().saturating_sub(bench_cpu_before);
    let threads = procfs::threads(child.id()).ok();
    let _ = setup::terminate(&mut child, Duration::from_secs(10))?;
    let stats = &canned.stats;
    if !all {
        bail!(
            "{consumer:?}: only {} of {n} messages deleted in {limit:?} (handed out {}, bad requests {}: {:?}):\n{}",
            stats.deleted.load(Ordering::SeqCst),
            stats.handed_out.load(Ordering::SeqCst),
            stats.bad_requests.load(Ordering::SeqCst),
            stats.last_bad.lock().ok().and_then(|l| l.clone()),
            setup::tail(&log, 30)
        );
    }
    let bad = stats.bad_requests.load(Ordering::SeqCst);
    let dups = stats.duplicate_deletes.load(Ordering::SeqCst);
    if bad > 0 || dups > 0 {
        bail!("{consumer:?}: {bad} bad request(s), {dups} duplicate delete(s)");
    }
    let marks = stats.marks();
    let (Some(t0), Some(t1), Some(c0), Some(c1)) = (
        marks.first_receive,
        marks.last_delete,
        marks.cpu_at_first_receive,
        marks.cpu_at_last_delete,
    ) else {
        bail!("{consumer:?}: incomplete marks {marks:?}");
    };
    let elapsed = t1.duration_since(t0).as_secs_f64();
    let ms = |q: f64| {
        stats
            .residence_quantile(q)
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(f64::NAN)
    };
    Ok(Measured {
        rate: n as f64 / elapsed,
        cpu_us_per_message: c1.saturating_sub(c0).as_secs_f64() * 1e6 / n as f64,
        peak_rss: marks.peak_rss_at_last_delete,
        threads,
        batches: stats.batches.load(Ordering::SeqCst),
        bench_cpu_us_per_message: bench_cpu.as_secs_f64() * 1e6 / n as f64,
        requests: marks.requests_at_last_delete,
        messages: n,
        residence_ms: (ms(0.5), ms(0.99)),
    })
}

fn spawn(mut cmd: Command, log: &std::path::Path) -> anyhow::Result<std::process::Child> {
    setup::spawn_logged(&mut cmd, log)
}
/// [`run_consumer`] `--runs` times on an endpoint answering at once.
pub(crate) fn repeat(
    ctx: &Ctx,
    label: &str,
    consumer: &Consumer,
    n: u64,
) -> anyhow::Result<Vec<Measured>> {
    repeat_with(ctx, label, consumer, n, Behaviour::default())
}

/// [`run_consumer`] `--runs` times on an endpoint that behaves as `behaviour` says.
pub(crate) fn repeat_with(
    ctx: &Ctx,
    label: &str,
    consumer: &Consumer,
    n: u64,
    behaviour: Behaviour,
) -> anyhow::Result<Vec<Measured>> {
    let mut out = Vec::new();
    for i in 0..ctx.options.runs {
        let m = run_consumer(ctx, consumer, n, behaviour)
            .with_context(|| format!("{label}, run {}", i + 1))?;
        eprintln!(
            "  {label} run {}: {} msg/s, {:.1} µs CPU/msg (endpoint {:.1} µs/msg), {} batches, {:.3} requests/msg, hand-out to delete p50 {:.1} ms p99 {:.1} ms",
            i + 1,
            fmt(m.rate, 0),
            m.cpu_us_per_message,
            m.bench_cpu_us_per_message,
            m.batches,
            m.requests_per_message(None),
            m.residence_ms.0,
            m.residence_ms.1
        );
        out.push(m);
    }
    Ok(out)
}
/// The runs' rates.
pub(crate) fn rates(v: &[Measured]) -> Vec<f64> {
    v.iter().map(|m| m.rate).collect()
}
/// The runs' CPU per message.
pub(crate) fn cpus(v: &[Measured]) -> Vec<f64> {
    v.iter().map(|m| m.cpu_us_per_message).collect()
}
