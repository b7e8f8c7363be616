//! The worker process: `iniesta plugin-worker --file PLUGIN.so` (a hidden subcommand).
//!
//! It loads one plugin file the way the host does, then serves the host over its stdin and
//! stdout (see [`super::protocol`]): constructs handlers, runs calls on a blocking thread pool
//! (several at once), and forwards each handler's context calls — log lines and publishes — to
//! the host. Its own stdout is moved aside for the protocol first, so a plugin that prints to
//! stdout writes to stderr instead (which the host logs with the plugin's name) and cannot
//! corrupt the pipe. When the host closes stdin the worker lets running calls finish, then
//! exits; if the host dies, the same happens.

use crate::mutex::lock;
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RSlice, RStr, RString};
use iniesta_plugin_api::ffi::{
    AttributeFfi, BorrowingFfiFuture, HandlerBox, HandlerShape, HostContextFfi, HostContextFfi_TO,
};

use super::protocol::{
    attributes_from_ffi, FrameReader, FrameWriter, FromWorker, ToWorker, WireOutcome,
};

type Writer = Arc<Mutex<FrameWriter<File>>>;
type Pending = Arc<Mutex<HashMap<u64, mpsc::Sender<Result<String, String>>>>>;

/// How long running calls get to finish after the host closed the pipe.
const DRAIN: Duration = Duration::from_secs(30);

/// Run the worker for `file`; returns when the host closes the pipe.
pub fn main(file: &Path) -> ExitCode {
    init_tracing();
    let (input, out) = match take_protocol_pipes() {
        Ok(pipes) => pipes,
        Err(e) => {
            eprintln!("plugin worker: cannot set up the protocol pipes: {e}");
            return ExitCode::from(2);
        }
    };
    let writer: Writer = Arc::new(Mutex::new(FrameWriter::new(out)));
    let origin = file.parent().unwrap_or(Path::new("."));
    let plugin = match crate::plugins::load::load_file(file, origin) {
        Ok(plugin) => plugin,
        Err(e) => {
            let _ = send(
                &writer,
                &FromWorker::LoadFailed {
                    reason: e.to_string(),
                },
            );
            return ExitCode::from(2);
        }
    };
    if send(
        &writer,
        &FromWorker::Ready {
            name: plugin.name.clone(),
            version: plugin.version.clone(),
            handlers: plugin.handlers.clone(),
        },
    )
    .is_err()
    {
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(1024)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("plugin worker: cannot start a thread pool: {e}");
            return ExitCode::from(2);
        }
    };
    let handlers: Arc<RwLock<HashMap<u64, Arc<HandlerBox>>>> = Arc::default();
    let pending: Pending = Arc::default();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut reader = FrameReader::new(std::io::BufReader::new(input));
    loop {
        let request = match reader.recv::<ToWorker>() {
            Ok(Some(request)) => request,
            Ok(None) => break,
            Err(e) => {
                eprintln!("plugin worker: {e}; exiting");
                return ExitCode::from(3);
            }
        };
        match request {
            ToWorker::Construct {
                id,
                handler,
                config,
            } => {
                // Isolated: a plugin built with panic = "abort" may run here.
                // A batch handler wants its batches whole, which the call protocol cannot
                // carry: refused here rather than called one message at a time.
                let result = plugin
                    .new_handler_in_worker(&handler, &config)
                    .map_err(|e| e.to_string())
                    .and_then(|h| match h.shape() {
                        HandlerShape::Batch => Err(format!(
                            "`{handler}` is a batch handler, which does not run isolated (the worker protocol \
                             carries one message per call); take the plugin out of \
                             plugins.isolate.names to bind it"
                        )),
                        _ => Ok(h),
                    })
                    .map(|h| {
                        write(&handlers).insert(id, Arc::new(h));
                    });
                if send(&writer, &FromWorker::Constructed { id, result }).is_err() {
                    break;
                }
            }
            ToWorker::Forget { id } => {
                write(&handlers).remove(&id);
            }
            ToWorker::Call {
                id,
                handler,
                message,
            } => {
                let found = handlers
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&handler)
                    .cloned();
                let Some(found) = found else {
                    let outcome =
                        WireOutcome::Failed(format!("the worker has no handler {handler}"));
                    if send(&writer, &FromWorker::Outcome { id, outcome }).is_err() {
                        break;
                    }
                    continue;
                };
                let (writer, pending, in_flight) =
                    (writer.clone(), pending.clone(), in_flight.clone());
                in_flight.fetch_add(1, Ordering::SeqCst);
                runtime.spawn_blocking(move || {
                    let ffi = message.into_ffi();
                    let ctx = HostContextFfi_TO::from_value(
                        WorkerContext {
                            id,
                            writer: writer.clone(),
                            pending,
                        },
                        TD_Opaque,
                    );
                    let outcome = WireOutcome::from(found.handle(&ffi, &ctx));
                    let _ = send(&writer, &FromWorker::Outcome { id, outcome });
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                });
            }
            ToWorker::Published { id, result } => {
                if let Some(tx) = lock(&pending).remove(&id) {
                    let _ = tx.send(result);
                }
            }
        }
    }
    // The host closed the pipe: this generation is retired (or the host is gone). Let what
    // runs finish, then leave without running the plugin's destructors.
    let started = Instant::now();
    while in_flight.load(Ordering::SeqCst) > 0 && started.elapsed() < DRAIN {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::process::exit(0)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("INIESTA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Move stdin and stdout aside for the protocol — onto close-on-exec descriptors, so a program
/// the plugin starts inherits neither pipe (it could read the host's requests, write into the
/// protocol, or keep a pipe open after this worker dies, hiding the death from the host) — and
/// point descriptor 0 at /dev/null and 1 at stderr. Returns (requests in, answers out).
#[cfg(unix)]
fn take_protocol_pipes() -> std::io::Result<(File, File)> {
    use std::os::fd::AsRawFd;
    let input = move_aside(libc::STDIN_FILENO)?;
    let output = move_aside(libc::STDOUT_FILENO)?;
    let null = File::open("/dev/null")?;
    // SAFETY: both descriptors are open; dup2 atomically replaces descriptors 0 and 1.
    if unsafe { libc::dup2(null.as_raw_fd(), libc::STDIN_FILENO) } < 0
        || unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok((input, output))
}

/// A close-on-exec duplicate of `fd`, owned.
#[cfg(unix)]
fn move_aside(fd: std::os::fd::RawFd) -> std::io::Result<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: fcntl returns a new descriptor we own (or -1).
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if copy < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `copy` is a freshly duplicated, open descriptor owned by nobody else.
    Ok(unsafe { File::from_raw_fd(copy) })
}

fn send(writer: &Writer, message: &FromWorker) -> Result<(), super::protocol::FrameError> {
    lock(writer).send(message)
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

/// The context a handler in the worker gets: everything goes to the host over the pipe.
struct WorkerContext {
    id: u64,
    writer: Writer,
    pending: Pending,
}

impl HostContextFfi for WorkerContext {
    fn publish(
        &self,
        event: RStr<'_>,
        body: RSlice<'_, u8>,
        attributes: RSlice<'_, AttributeFfi>,
    ) -> RResult<RString, RString> {
        let (tx, rx) = mpsc::channel();
        lock(&self.pending).insert(self.id, tx);
        let request = FromWorker::Publish {
            id: self.id,
            event: event.to_string(),
            body: body.to_vec(),
            attributes: attributes_from_ffi(attributes.as_slice()),
        };
        if let Err(e) = send(&self.writer, &request) {
            lock(&self.pending).remove(&self.id);
            return RResult::RErr(format!("cannot reach the host: {e}").into());
        }
        match rx.recv() {
            Ok(Ok(id)) => RResult::ROk(id.into()),
            Ok(Err(e)) => RResult::RErr(e.into()),
            Err(_) => RResult::RErr("the host went away before answering".into()),
        }
    }

    fn log(&self, level: u8, message: RStr<'_>) {
        let _ = send(
            &self.writer,
            &FromWorker::Log {
                id: self.id,
                level,
                text: message.to_string(),
            },
        );
    }

    /// In the worker every call has a thread of its own (an async handler's future is
    /// blocked on there), so an async publish may wait for the host's answer in place.
    fn publish_async<'a>(
        &'a self,
        event: RStr<'a>,
        body: RSlice<'a, u8>,
        attributes: RSlice<'a, AttributeFfi>,
    ) -> BorrowingFfiFuture<'a, RResult<RString, RString>> {
        iniesta_plugin_api::export::ready(HostContextFfi::publish(self, event, body, attributes))
    }
}
