//! The host side of an isolated plugin: a pool of worker processes per plugin generation,
//! restarted with backoff when they die, and a handler proxy the pipeline calls like any other
//! handler.
//!
//! A call takes a free process from the pool (starting one while the pool is below
//! `plugins.isolate.workers`), sends the request with an id over its stdin, and reads log
//! lines, publish requests and finally the outcome, all tagged with that id, from its stdout.
//! The proxy runs on the pipeline's blocking thread for the call, so context calls (publish,
//! log) run there with the call's own context and span. Each process runs one call at a time:
//! when it dies, only that call fails, answered `Failed` with the cause (signal, exit status,
//! hang) — never `Ack` — so its message is redelivered and its receive count grows until the
//! DLQ takes a true poison message. A call that runs past its binding's timeout kills its
//! process (it is stuck) and fails the same way.

use crate::mutex::lock;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use abi_stable::std_types::{RSlice, RVec};
use iniesta_plugin_api::ffi::{
    BorrowingFfiFuture, HandlerFfi, HandlerShape, HostContextBox, MessageFfi, OutcomeFfi,
};

use super::protocol::{
    attributes_into_ffi, FrameReader, FrameWriter, FromWorker, ToWorker, WireMessage, WireOutcome,
};
use super::{Settings, WorkerStatus};

/// How long a new worker gets to load its plugin and say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a constructor in the worker may take.
const CONSTRUCT_TIMEOUT: Duration = Duration::from_secs(30);
/// The first restart delay; it doubles with each crash in a row, up to `max_backoff`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Crashes in a row from which a worker is reported as crash-looping.
const CRASH_LOOP: u32 = 3;

/// What the reader thread tells the call waiting on a request.
enum Event {
    Log {
        level: u8,
        text: String,
    },
    Publish {
        event: String,
        body: Vec<u8>,
        attributes: Vec<(String, String, String)>,
    },
    Outcome(WireOutcome),
    Constructed(Result<(), String>),
    Died(String),
}

/// One running worker process.
struct Process {
    pid: u32,
    writer: Mutex<Option<FrameWriter<ChildStdin>>>,
    /// Requests waiting for an answer; `None` once the process is dead.
    pending: Mutex<Option<HashMap<u64, mpsc::Sender<Event>>>>,
    child: Mutex<Option<Child>>,
    kill_reason: Mutex<Option<String>>,
    retiring: AtomicBool,
    /// Whether a call has been sent to it and not answered; a process killed for hanging
    /// keeps it set (its message is redelivered).
    in_call: AtomicBool,
    /// Handler ids constructed in this process.
    handlers: Mutex<BTreeSet<u64>>,
}

impl Process {
    /// Whether it can take another call: alive, not being killed, not retired.
    fn usable(&self) -> bool {
        lock(&self.pending).is_some()
            && lock(&self.kill_reason).is_none()
            && !self.retiring.load(Ordering::SeqCst)
    }

    /// Register a request and send it; the receiver gets what the worker says about it.
    fn request(&self, id: u64, message: &ToWorker) -> Result<mpsc::Receiver<Event>, String> {
        let (tx, rx) = mpsc::channel();
        match lock(&self.pending).as_mut() {
            Some(pending) => pending.insert(id, tx),
            None => return Err("the worker has just died".into()),
        };
        if let Err(e) = self.send(message) {
            self.forget(id);
            return Err(e);
        }
        Ok(rx)
    }

    fn forget(&self, id: u64) {
        if let Some(pending) = lock(&self.pending).as_mut() {
            pending.remove(&id);
        }
    }

    fn send(&self, message: &ToWorker) -> Result<(), String> {
        match lock(&self.writer).as_mut() {
            Some(writer) => writer
                .send(message)
                .map_err(|e| format!("cannot write to the worker: {e}")),
            None => Err("the worker is retired".into()),
        }
    }

    /// Kill the process (it hangs); the reader thread reports the death with `reason`.
    fn kill(&self, reason: String) {
        lock(&self.kill_reason).get_or_insert(reason);
        if let Some(child) = lock(&self.child).as_mut() {
            let _ = child.kill();
        }
    }

    /// Close its stdin: it finishes what runs and exits.
    fn retire(&self) {
        self.retiring.store(true, Ordering::SeqCst);
        lock(&self.writer).take();
    }
}

#[derive(Default)]
struct Stats {
    starts: u64,
    /// Crashes no start has replaced yet (restarts = crashes − unreplaced).
    unreplaced: u64,
    crashes: u64,
    consecutive: u32,
    last_crash: Option<String>,
    last_crash_at: Option<SystemTime>,
    next_start: Option<Instant>,
}

struct Inner {
    /// Processes waiting for a call.
    idle: Vec<Arc<Process>>,
    /// Every serving process, idle or busy.
    live: Vec<Arc<Process>>,
    /// Processes being started (they count against the pool size).
    starting: usize,
    /// Handlers by id: (handler name, config JSON). A process constructs one before its
    /// first call of it.
    handlers: BTreeMap<u64, (String, String)>,
}

/// The worker processes serving one plugin generation with one set of isolation settings: a
/// pool of up to `plugins.isolate.workers` processes, each running one call at a time, so a
/// crash takes down only the call that caused it.
pub struct Worker {
    name: String,
    generation: u64,
    file: PathBuf,
    settings: Arc<Settings>,
    inner: Mutex<Inner>,
    freed: Condvar,
    stats: Mutex<Stats>,
    next_id: AtomicU64,
    in_flight: AtomicU64,
    me: Weak<Worker>,
}

static REGISTRY: Mutex<Vec<Weak<Worker>>> = Mutex::new(Vec::new());
static STATE_WRITE: Mutex<()> = Mutex::new(());

/// The worker pool for this plugin generation and settings, shared by every binding of it.
pub fn worker_for(
    plugin: &crate::plugins::LoadedPlugin,
    settings: &Arc<Settings>,
) -> Result<Arc<Worker>, String> {
    // The pools alive now. Dropping one of these may drop its last reference, and a pool's
    // `Drop` reads the registry: declared before the registry's guard, they are dropped after
    // it, on every return.
    let live: Vec<Arc<Worker>>;
    let mut registry = lock(&REGISTRY);
    registry.retain(|w| w.strong_count() > 0);
    live = registry.iter().filter_map(Weak::upgrade).collect();
    if let Some(worker) = live.iter().find(|w| {
        w.name == plugin.name && w.generation == plugin.generation && *w.settings == **settings
    }) {
        return Ok(worker.clone());
    }
    let copy = private_copy(plugin)?;
    let worker = Arc::new_cyclic(|me| Worker {
        name: plugin.name.clone(),
        generation: plugin.generation,
        file: copy,
        settings: settings.clone(),
        inner: Mutex::new(Inner {
            idle: Vec::new(),
            live: Vec::new(),
            starting: 0,
            handlers: BTreeMap::new(),
        }),
        freed: Condvar::new(),
        stats: Mutex::default(),
        next_id: AtomicU64::new(1),
        in_flight: AtomicU64::new(0),
        me: me.clone(),
    });
    registry.push(Arc::downgrade(&worker));
    Ok(worker)
}

/// A private copy of exactly the file the host loaded as this generation, for its workers to
/// load: the original may be replaced at any time (that is how a new version is deployed), and
/// a worker started later must not run the next version under this generation's name.
fn private_copy(plugin: &crate::plugins::LoadedPlugin) -> Result<PathBuf, String> {
    let unchanged = || {
        plugin.fingerprint.is_some()
            && crate::plugins::load::Fingerprint::of(&plugin.file) == plugin.fingerprint
    };
    let changed = || {
        format!(
            "{} changed since generation {} was loaded from it; the reload that follows the change serves the new file",
            plugin.file.display(),
            plugin.generation
        )
    };
    if !unchanged() {
        return Err(changed());
    }
    let bytes = std::fs::read(&plugin.file)
        .map_err(|e| format!("cannot read {}: {e}", plugin.file.display()))?;
    if !unchanged() {
        return Err(changed());
    }
    let dir = private_dir()?;
    let name = plugin
        .file
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "plugin.so".into());
    // One copy per pool: a config reload that changes `[plugins.isolate]` builds a second pool
    // for the same generation, and dropping the old pool removes only its own copy.
    static POOLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let pool = POOLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let copy = dir.join(format!("g{}-p{pool}-{name}", plugin.generation));
    std::fs::write(&copy, &bytes)
        .map_err(|e| format!("cannot copy the plugin to {}: {e}", copy.display()))?;
    Ok(copy)
}

/// This process's private directory for the workers' plugin copies.
static PRIVATE_DIR: Mutex<Option<tempfile::TempDir>> = Mutex::new(None);

/// The private directory, created on first use with a random name and mode 0700 (a
/// predictable name in a shared /tmp could be planted by another user).
fn private_dir() -> Result<PathBuf, String> {
    let mut dir = lock(&PRIVATE_DIR);
    if let Some(dir) = dir.as_ref() {
        return Ok(dir.path().to_path_buf());
    }
    let made =
        crate::plugins::load::private_tempdir(&format!("iniesta-isolated-{}-", std::process::id()))
            .map_err(|e| {
                format!(
                    "cannot create a private directory in {}: {e}",
                    std::env::temp_dir().display()
                )
            })?;
    let path = made.path().to_path_buf();
    *dir = Some(made);
    Ok(path)
}

/// Set when the host exits ([`remove_private_dir`]): crashed workers are no longer replaced
/// (a replacement due after the exit would find its plugin copy gone).
static EXITING: AtomicBool = AtomicBool::new(false);

/// Remove the private directory with the plugin copies in it (at the host's exit: the
/// workers have loaded their copies, so the files are no longer needed). No worker is
/// started after this.
pub fn remove_private_dir() {
    EXITING.store(true, Ordering::SeqCst);
    if let Some(dir) = lock(&PRIVATE_DIR).take() {
        let path = dir.path().to_path_buf();
        if let Err(e) = dir.close() {
            tracing::debug!(dir = %path.display(), error = %e, "cannot remove the plugin workers' directory");
        }
    }
}

/// The state of every live worker pool in this process.
pub fn status() -> Vec<WorkerStatus> {
    let workers: Vec<Arc<Worker>> = lock(&REGISTRY).iter().filter_map(Weak::upgrade).collect();
    workers.iter().map(|w| w.status()).collect()
}

impl Worker {
    /// Construct `handler` with `config` (JSON) in a worker process; the id names it in calls.
    /// Other processes construct it before their first call of it.
    pub fn construct(&self, handler: &str, config: &str) -> Result<u64, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner)
            .handlers
            .insert(id, (handler.to_string(), config.to_string()));
        let result = self
            .checkout(Instant::now() + START_TIMEOUT)
            .and_then(|process| {
                let result = self.prepare(&process, id);
                self.checkin(process);
                result
            });
        if result.is_err() {
            lock(&self.inner).handlers.remove(&id);
        }
        result.map(|()| id)
    }

    /// Forget a handler (its binding was dropped).
    fn forget(&self, id: u64) {
        let live = {
            let mut inner = lock(&self.inner);
            inner.handlers.remove(&id);
            inner.live.clone()
        };
        for process in live {
            if lock(&process.handlers).remove(&id) {
                let _ = process.send(&ToWorker::Forget { id });
            }
        }
    }

    /// Make sure `process` has constructed handler `id`.
    fn prepare(&self, process: &Process, id: u64) -> Result<(), String> {
        if lock(&process.handlers).contains(&id) {
            return Ok(());
        }
        let Some((handler, config)) = lock(&self.inner).handlers.get(&id).cloned() else {
            return Err(format!("handler {id} is no longer bound"));
        };
        construct_in(process, id, &handler, &config)?;
        lock(&process.handlers).insert(id);
        Ok(())
    }

    /// Run one call in a worker process; context calls are served with `ctx` on this thread.
    fn call(
        &self,
        handler: u64,
        message: &MessageFfi,
        ctx: &HostContextBox,
        timeout: Duration,
    ) -> OutcomeFfi {
        let deadline = Instant::now() + timeout;
        let process = match self.checkout(deadline) {
            Ok(process) => process,
            Err(reason) => {
                return failed(format!(
                    "plugin worker for `{}` is unavailable: {reason}",
                    self.name
                ))
            }
        };
        if let Err(reason) = self.prepare(&process, handler) {
            self.checkin(process);
            return failed(format!(
                "plugin worker for `{}` could not construct the handler: {reason}",
                self.name
            ));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request = ToWorker::Call {
            id,
            handler,
            message: WireMessage::from_ffi(message),
        };
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        process.in_call.store(true, Ordering::SeqCst);
        let outcome = self.await_call(&process, id, &request, ctx, deadline, timeout);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.checkin(process);
        outcome
    }

    fn await_call(
        &self,
        process: &Process,
        id: u64,
        request: &ToWorker,
        ctx: &HostContextBox,
        deadline: Instant,
        timeout: Duration,
    ) -> OutcomeFfi {
        let rx = match process.request(id, request) {
            Ok(rx) => rx,
            Err(reason) => {
                // Its worker died before the call reached it: a crash too.
                let reason = format!(
                    "plugin worker for `{}` did not take the call: {reason}",
                    self.name
                );
                crate::plugins::call::note_crash(reason.clone());
                return failed(reason);
            }
        };
        // Time the host spends publishing for the worker (an egress retrying, say) is not the
        // worker hanging: it moves this deadline, up to one more timeout, so a slow publish
        // does not get a healthy worker killed and counted as a crash. (The pipeline's own
        // timeout still reports the call as timed out; its slot waits for this answer.)
        let mut deadline = deadline;
        let latest = deadline + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Event::Log { level, text }) => ctx.log(level, text.as_str().into()),
                Ok(Event::Publish {
                    event,
                    body,
                    attributes,
                }) => {
                    let attributes = attributes_into_ffi(attributes);
                    let publishing = Instant::now();
                    let result = ctx
                        .publish(
                            event.as_str().into(),
                            RSlice::from_slice(&body),
                            RSlice::from_slice(&attributes),
                        )
                        .into_result()
                        .map(|id| id.into_string())
                        .map_err(|e| e.into_string());
                    let _ = process.send(&ToWorker::Published { id, result });
                    deadline = (deadline + publishing.elapsed()).min(latest);
                }
                Ok(Event::Outcome(outcome)) => {
                    let recovered = std::mem::take(&mut lock(&self.stats).consecutive) > 0;
                    if recovered {
                        metrics::gauge!(crate::ops::metrics::WORKER_CRASHES_IN_A_ROW, "plugin" => self.name.clone())
                            .set(0.0);
                        self.write_state();
                    }
                    return outcome.into();
                }
                Ok(Event::Died(reason)) => {
                    let reason = format!(
                        "the plugin worker for `{}` died while handling this message ({reason}); it will be redelivered",
                        self.name
                    );
                    // A crash, not the handler's answer: the pipeline reports it as one.
                    crate::plugins::call::note_crash(reason.clone());
                    return failed(reason);
                }
                Ok(Event::Constructed(_)) => {}
                Err(RecvTimeoutError::Timeout) => {
                    process.forget(id);
                    let reason = format!(
                        "killed: a call hung past the handler timeout of {} s",
                        timeout.as_secs()
                    );
                    tracing::error!(plugin = %self.name, pid = process.pid, timeout_secs = timeout.as_secs(),
                        "plugin worker call hung past the handler timeout; killing that worker process");
                    process.kill(reason.clone());
                    return failed(format!(
                        "the plugin worker for `{}` was {reason}; the message will be redelivered",
                        self.name
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return failed(format!(
                        "the plugin worker for `{}` went away without answering",
                        self.name
                    ))
                }
            }
        }
    }

    /// A free process: an idle one, a new one while the pool is not full (after the crash
    /// backoff), or the next one freed — whichever comes first before `deadline`.
    fn checkout(&self, deadline: Instant) -> Result<Arc<Process>, String> {
        let mut inner = lock(&self.inner);
        loop {
            while let Some(process) = inner.idle.pop() {
                if process.usable() {
                    return Ok(process);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "no worker process became free in time ({} busy, at most {})",
                    inner.live.len(),
                    self.settings.max_workers
                ));
            }
            if inner.live.len() + inner.starting < self.settings.max_workers {
                let next_start = lock(&self.stats).next_start.filter(|at| *at > now);
                match next_start {
                    Some(at) if at > deadline => {
                        return Err(format!(
                            "it is restarting after a crash (next start in {} ms)",
                            at.duration_since(now).as_millis()
                        ))
                    }
                    Some(at) => {
                        inner = wait(&self.freed, inner, at.duration_since(now));
                        continue;
                    }
                    None => {
                        inner.starting += 1;
                        drop(inner);
                        return self.grow();
                    }
                }
            }
            inner = wait(&self.freed, inner, deadline.duration_since(now));
        }
    }

    /// Start one more process for the pool; the caller has counted it in `starting`.
    fn grow(&self) -> Result<Arc<Process>, String> {
        let started = self.start();
        let mut inner = lock(&self.inner);
        inner.starting -= 1;
        match started {
            Ok(process) => {
                inner.live.push(process.clone());
                drop(inner);
                self.write_state();
                Ok(process)
            }
            Err(reason) => {
                drop(inner);
                self.crashed(None, &reason, false);
                Err(reason)
            }
        }
    }

    /// After a crash's backoff: start a process in place of one that died, unless a call has
    /// started one since (no crash left unreplaced), a later crash set a later start, or the
    /// pool is full. The pool is back to its size before the crash without waiting for a call
    /// to need the process.
    fn replace(&self) {
        if EXITING.load(Ordering::SeqCst) {
            return;
        }
        let mut inner = lock(&self.inner);
        {
            let stats = lock(&self.stats);
            let waiting = stats.next_start.is_some_and(|at| at > Instant::now());
            if stats.unreplaced == 0 || waiting {
                return;
            }
        }
        if inner.live.len() + inner.starting >= self.settings.max_workers {
            return;
        }
        inner.starting += 1;
        drop(inner);
        if let Ok(process) = self.grow() {
            self.checkin(process);
        }
    }

    /// A call is done with `process`: it serves the next one, unless it died or was killed.
    fn checkin(&self, process: Arc<Process>) {
        {
            let mut inner = lock(&self.inner);
            if process.usable() && inner.live.iter().any(|p| Arc::ptr_eq(p, &process)) {
                process.in_call.store(false, Ordering::SeqCst);
                inner.idle.push(process);
            }
        }
        self.freed.notify_one();
    }

    /// Spawn a process and wait for it to load the plugin.
    fn start(&self) -> Result<Arc<Process>, String> {
        let mut command = Command::new(&self.settings.binary);
        command
            .arg("plugin-worker")
            .arg("--file")
            .arg(&self.file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        super::sandbox::apply(&mut command, &self.settings, &self.name);
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.settings.binary.display()))?;
        let pid = child.id();
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the worker's pipes were not set up".into());
        };
        {
            let name = self.name.clone();
            let _ = std::thread::Builder::new()
                .name(format!("worker-stderr-{pid}"))
                .spawn(move || forward_stderr(stderr, &name, pid));
        }
        let process = Arc::new(Process {
            pid,
            writer: Mutex::new(Some(FrameWriter::new(stdin))),
            pending: Mutex::new(Some(HashMap::new())),
            child: Mutex::new(Some(child)),
            kill_reason: Mutex::new(None),
            retiring: AtomicBool::new(false),
            in_call: AtomicBool::new(false),
            handlers: Mutex::new(BTreeSet::new()),
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        {
            let reading = process.clone();
            let worker = self.me.clone();
            let name = self.name.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("worker-reader-{pid}"))
                .spawn(move || read_loop(reading, stdout, ready_tx, worker, name));
            if let Err(e) = spawned {
                process.kill(format!("no reader thread: {e}"));
                // Nobody else will reap it.
                if let Some(mut child) = lock(&process.child).take() {
                    let _ = child.wait();
                }
                return Err(format!("cannot start a reader thread: {e}"));
            }
        }
        let ready = match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(FromWorker::Ready { name, .. })) if name == self.name => Ok(()),
            Ok(Ok(FromWorker::Ready { name, .. })) => Err(format!(
                "{} now holds plugin `{name}`, not `{}`",
                self.file.display(),
                self.name
            )),
            Ok(Ok(FromWorker::LoadFailed { reason })) => Err(reason),
            Ok(Ok(other)) => Err(format!("unexpected first message {other:?}")),
            Ok(Err(reason)) => Err(reason),
            Err(_) => Err(format!("not ready after {} s", START_TIMEOUT.as_secs())),
        };
        if let Err(reason) = ready {
            process.kill(reason.clone());
            return Err(format!("the worker did not start: {reason}"));
        }
        let restart = {
            let mut stats = lock(&self.stats);
            stats.starts += 1;
            // A start replaces a crashed process when a crash is still unreplaced; other
            // starts grow the pool.
            let replaces = stats.unreplaced > 0;
            stats.unreplaced = stats.unreplaced.saturating_sub(1);
            replaces
        };
        if restart {
            metrics::counter!(crate::ops::metrics::WORKER_RESTARTS, "plugin" => self.name.clone())
                .increment(1);
        }
        tracing::info!(plugin = %self.name, generation = self.generation, pid, after_crash = restart, "plugin worker started");
        Ok(process)
    }

    /// A process died (`pid`), or failed to start (`None`): count it, log it, and schedule its
    /// replacement. `in_call`: it was running a call (whose message is redelivered), not idle.
    fn crashed(&self, pid: Option<u32>, reason: &str, in_call: bool) {
        let (consecutive, backoff) = {
            let mut stats = lock(&self.stats);
            stats.crashes += 1;
            stats.unreplaced += 1;
            stats.consecutive += 1;
            stats.last_crash = Some(reason.to_string());
            stats.last_crash_at = Some(SystemTime::now());
            let factor = 1u32 << (stats.consecutive - 1).min(16);
            let backoff = (FIRST_BACKOFF * factor).min(self.settings.max_backoff);
            stats.next_start = Some(Instant::now() + backoff);
            (stats.consecutive, backoff)
        };
        metrics::counter!(crate::ops::metrics::WORKER_CRASHES, "plugin" => self.name.clone())
            .increment(1);
        metrics::gauge!(crate::ops::metrics::WORKER_CRASHES_IN_A_ROW, "plugin" => self.name.clone())
            .set(f64::from(consecutive));
        match pid {
            // It never served: neither "died" nor "idle" describes it.
            None => tracing::error!(
                plugin = %self.name, generation = self.generation, reason = %reason,
                crashes_in_a_row = consecutive, restart_in_ms = backoff.as_millis() as u64,
                "plugin worker did not start; another start follows after the backoff"
            ),
            Some(pid) if in_call => tracing::error!(
                plugin = %self.name, generation = self.generation, pid, reason = %reason,
                in_call, crashes_in_a_row = consecutive, restart_in_ms = backoff.as_millis() as u64,
                "plugin worker died; the message it was handling will be redelivered"
            ),
            Some(pid) => tracing::error!(
                plugin = %self.name, generation = self.generation, pid, reason = %reason,
                in_call, crashes_in_a_row = consecutive, restart_in_ms = backoff.as_millis() as u64,
                "plugin worker died while idle (no message lost)"
            ),
        }
        if consecutive >= CRASH_LOOP {
            tracing::error!(
                plugin = %self.name, crashes_in_a_row = consecutive, last_crash = %reason,
                "plugin worker is crash-looping; restarts back off up to {} s", self.settings.max_backoff.as_secs()
            );
        }
        self.write_state();
        // Replace it after the backoff, whether or not a call needs a process then.
        let me = self.me.clone();
        let _ = std::thread::Builder::new()
            .name("worker-restart".into())
            .spawn(move || {
                std::thread::sleep(backoff);
                if let Some(worker) = me.upgrade() {
                    worker.replace();
                }
            });
    }

    /// A process ended. Only a serving process counts as a crash: one that failed to start
    /// was counted by `checkout`, and a retired one no longer serves.
    fn exited(&self, process: &Arc<Process>, reason: String, clean: bool) {
        let in_call = process.in_call.load(Ordering::SeqCst);
        let serving = {
            let mut inner = lock(&self.inner);
            let before = inner.live.len();
            inner.live.retain(|p| !Arc::ptr_eq(p, process));
            inner.idle.retain(|p| !Arc::ptr_eq(p, process));
            inner.live.len() != before
        };
        self.freed.notify_all();
        if serving {
            self.crashed(Some(process.pid), &reason, in_call);
        } else if clean {
            tracing::info!(plugin = %self.name, generation = self.generation, pid = process.pid, "plugin worker retired");
            self.write_state();
        } else {
            tracing::debug!(plugin = %self.name, pid = process.pid, reason = %reason, "a plugin worker that was not serving ended");
        }
    }

    fn status(&self) -> WorkerStatus {
        let pids: Vec<u32> = lock(&self.inner).live.iter().map(|p| p.pid).collect();
        let stats = lock(&self.stats);
        WorkerStatus {
            plugin: self.name.clone(),
            generation: self.generation,
            state: if !pids.is_empty() {
                "running".into()
            } else if stats.next_start.is_some_and(|at| at > Instant::now()) {
                "restarting".into()
            } else {
                "stopped".into()
            },
            pids,
            max_workers: self.settings.max_workers as u64,
            restarts: stats.crashes - stats.unreplaced,
            crashes: stats.crashes,
            crashes_in_a_row: stats.consecutive,
            last_crash: stats.last_crash.clone(),
            last_crash_at: stats.last_crash_at.map(super::unix_secs),
            in_flight: self.in_flight.load(Ordering::SeqCst),
        }
    }

    fn write_state(&self) {
        let Some(dir) = &self.settings.state_dir else {
            return;
        };
        // The snapshot first: taking it may drop another pool's last reference, whose `Drop`
        // writes the state too (and would wait for this lock).
        let snapshot = status();
        let _guard = lock(&STATE_WRITE);
        super::write_status(dir, &snapshot);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // No binding uses this generation any more: its processes finish and exit. They have
        // loaded the plugin already, so its private copy can go.
        {
            let mut inner = lock(&self.inner);
            inner.idle.clear();
            for process in inner.live.drain(..) {
                process.retire();
            }
        }
        let _ = std::fs::remove_file(&self.file);
        // `iniesta plugins` stops listing this pool (the registry no longer upgrades it).
        self.write_state();
    }
}

fn wait<'a, T>(
    condvar: &Condvar,
    guard: std::sync::MutexGuard<'a, T>,
    timeout: Duration,
) -> std::sync::MutexGuard<'a, T> {
    match condvar.wait_timeout(guard, timeout) {
        Ok((guard, _)) => guard,
        Err(poisoned) => poisoned.into_inner().0,
    }
}

fn construct_in(process: &Process, id: u64, handler: &str, config: &str) -> Result<(), String> {
    let rx = process.request(
        id,
        &ToWorker::Construct {
            id,
            handler: handler.to_string(),
            config: config.to_string(),
        },
    )?;
    loop {
        match rx.recv_timeout(CONSTRUCT_TIMEOUT) {
            Ok(Event::Constructed(result)) => return result,
            Ok(Event::Died(reason)) => {
                return Err(format!("the worker died in the constructor ({reason})"))
            }
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => {
                process.kill("a constructor hung".into());
                return Err(format!(
                    "the constructor did not return within {} s",
                    CONSTRUCT_TIMEOUT.as_secs()
                ));
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err("the worker went away during the constructor".into())
            }
        }
    }
}

/// Read the worker's frames until it closes its end, then report its death.
fn read_loop(
    process: Arc<Process>,
    stdout: std::process::ChildStdout,
    ready: mpsc::Sender<Result<FromWorker, String>>,
    worker: Weak<Worker>,
    name: String,
) {
    let mut reader = FrameReader::new(stdout);
    let mut ready = Some(ready);
    let ended = loop {
        let frame = match reader.recv::<FromWorker>() {
            Ok(Some(frame)) => frame,
            Ok(None) => break None,
            Err(e) => break Some(e.to_string()),
        };
        if let Some(tx) = ready.take() {
            let _ = tx.send(Ok(frame));
            continue;
        }
        let (id, event, last) = match frame {
            FromWorker::Log { id, level, text } => (id, Event::Log { level, text }, false),
            FromWorker::Publish {
                id,
                event,
                body,
                attributes,
            } => (
                id,
                Event::Publish {
                    event,
                    body,
                    attributes,
                },
                false,
            ),
            FromWorker::Outcome { id, outcome } => (id, Event::Outcome(outcome), true),
            FromWorker::Constructed { id, result } => (id, Event::Constructed(result), true),
            FromWorker::Ready { .. } | FromWorker::LoadFailed { .. } => continue,
        };
        let mut pending = lock(&process.pending);
        let Some(pending) = pending.as_mut() else {
            continue;
        };
        let tx = if last {
            pending.remove(&id)
        } else {
            pending.get(&id).cloned()
        };
        if let Some(tx) = tx {
            let _ = tx.send(event);
        }
    };
    if let Some(e) = &ended {
        tracing::error!(plugin = %name, pid = process.pid, error = %e, "cannot read from the plugin worker; stopping it");
        process.kill(format!("protocol error: {e}"));
    }
    // The pipe is closed: the process is exiting (or was killed). Reap it for its status.
    let status = wait_for_exit(&process);
    let reason = lock(&process.kill_reason)
        .clone()
        .unwrap_or_else(|| describe(status));
    let waiting = lock(&process.pending).take().unwrap_or_default();
    if let Some(tx) = ready.take() {
        let _ = tx.send(Err(reason.clone()));
    }
    for (_, tx) in waiting {
        let _ = tx.send(Event::Died(reason.clone()));
    }
    let clean = process.retiring.load(Ordering::SeqCst)
        && status.is_some_and(|s| s.success())
        && lock(&process.kill_reason).is_none();
    match worker.upgrade() {
        Some(worker) => worker.exited(&process, reason, clean),
        None if clean => {
            tracing::info!(plugin = %name, pid = process.pid, "plugin worker retired")
        }
        None => {
            tracing::warn!(plugin = %name, pid = process.pid, reason = %reason, "retired plugin worker ended badly")
        }
    }
}

/// The longest stderr line logged as one record; a longer run of bytes is cut into pieces.
const STDERR_LINE_MAX: usize = 16 * 1024;

/// Log everything a worker writes to stderr, line by line, until the pipe closes. Bytes that
/// are not UTF-8 are shown with replacement characters, and a line with no end is logged in
/// pieces, so the host keeps reading (a worker whose stderr is not drained would block, and
/// one whose pipe is closed would fail on its next write).
fn forward_stderr(stderr: impl Read, name: &str, pid: u32) {
    let mut reader = std::io::BufReader::new(stderr);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let read = (&mut reader)
            .take(STDERR_LINE_MAX as u64)
            .read_until(b'\n', &mut line);
        match read {
            Ok(0) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                tracing::warn!(plugin = %name, pid, "worker stderr: {text}");
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(plugin = %name, pid, error = %e, "cannot read the worker's stderr");
                return;
            }
        }
    }
}

fn wait_for_exit(process: &Process) -> Option<ExitStatus> {
    let started = Instant::now();
    loop {
        let mut guard = lock(&process.child);
        let child = guard.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                guard.take();
                return Some(status);
            }
            Ok(None) if started.elapsed() > Duration::from_secs(2) => {
                // Its pipe is closed but it lives on: it is of no use any more.
                let _ = child.kill();
            }
            Ok(None) => {}
            Err(_) => return None,
        }
        drop(guard);
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `killed by signal 11 (SIGSEGV)`, `exited with status 3`.
fn describe(status: Option<ExitStatus>) -> String {
    let Some(status) = status else {
        return "ended (status unknown)".into();
    };
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            let name = match signal {
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGABRT => " (SIGABRT: abort, e.g. a failed allocation or panic = \"abort\")",
                libc::SIGKILL => " (SIGKILL: killed, e.g. by the kernel's OOM killer)",
                libc::SIGBUS => " (SIGBUS)",
                libc::SIGILL => " (SIGILL)",
                libc::SIGFPE => " (SIGFPE)",
                libc::SIGTERM => " (SIGTERM)",
                _ => "",
            };
            return format!("killed by signal {signal}{name}");
        }
    }
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "ended".into(),
    }
}

fn failed(reason: String) -> OutcomeFfi {
    OutcomeFfi::Failed {
        reason: reason.into(),
    }
}

/// The handler the pipeline holds for a binding of an isolated plugin.
pub struct IsolatedHandler {
    worker: Arc<Worker>,
    id: u64,
    timeout: Duration,
}

impl IsolatedHandler {
    /// A proxy for handler `id` in `worker`; calls are abandoned (and the worker killed) after
    /// `timeout`.
    pub fn new(worker: Arc<Worker>, id: u64, timeout: Duration) -> Self {
        IsolatedHandler {
            worker,
            id,
            timeout,
        }
    }
}

/// In the host an isolated handler is a blocking call whatever the plugin wrote (an async
/// one is awaited in the worker); batch handlers are refused isolated (see the worker).
impl HandlerFfi for IsolatedHandler {
    fn handle(&self, message: &MessageFfi, ctx: &HostContextBox) -> OutcomeFfi {
        self.worker.call(self.id, message, ctx, self.timeout)
    }

    fn shape(&self) -> HandlerShape {
        HandlerShape::Sync
    }

    fn handle_async<'a>(
        &'a self,
        message: &'a MessageFfi,
        ctx: &'a HostContextBox,
    ) -> BorrowingFfiFuture<'a, OutcomeFfi> {
        iniesta_plugin_api::export::ready(HandlerFfi::handle(self, message, ctx))
    }

    fn handle_batch(
        &self,
        messages: RSlice<'_, MessageFfi>,
        ctx: &HostContextBox,
    ) -> RVec<OutcomeFfi> {
        iniesta_plugin_api::export::one_by_one(messages, |m| HandlerFfi::handle(self, m, ctx))
    }
}

impl Drop for IsolatedHandler {
    fn drop(&mut self) {
        self.worker.forget(self.id);
    }
}
