//! The plugin's own tokio reactor, for async handlers.
//!
//! A plugin is a cdylib: it links its own copy of tokio, whose thread-local "current runtime"
//! the host's runtime never sets. An async handler's future is polled by the host's async
//! workers, and every poll first enters this reactor ([`Reactor::enter`]), so the sockets,
//! timers and `tokio::spawn`s the handler creates belong to a runtime of the plugin's own
//! tokio that one thread of its own drives. No thread per message: the reactor thread only
//! waits for I/O and timers and runs what the handler spawns; the handler's code runs on the
//! host's workers.
//!
//! One reactor serves every async handler of a plugin file; it starts with the first and
//! stops when the last one is dropped (a hot reload drops the old generation's handlers), so
//! a reloaded plugin does not leave a thread behind.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

/// The reactor shared by this plugin's async handlers while any of them lives.
static SHARED: Mutex<Weak<Reactor>> = Mutex::new(Weak::new());

/// A running current-thread tokio runtime, driven by a thread of its own until dropped.
pub(crate) struct Reactor {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Reactor {
    /// The plugin's reactor: the running one, or a new one when none runs.
    pub(crate) fn shared() -> std::io::Result<Arc<Reactor>> {
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(reactor) = shared.upgrade() {
            return Ok(reactor);
        }
        let reactor = Arc::new(Reactor::start()?);
        *shared = Arc::downgrade(&reactor);
        Ok(reactor)
    }

    fn start() -> std::io::Result<Reactor> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("iniesta-plugin-reactor")
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("iniesta-plugin-reactor".into())
            .spawn(move || {
                // Drives I/O, timers and spawned tasks until the last handler is gone; the
                // runtime is dropped here, on its own thread, never on a host worker.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(Reactor {
            handle,
            stop: Some(stop),
        })
    }

    /// Block this (non-async) thread on `future`, polled in the reactor's context.
    pub(crate) fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.handle.block_on(future)
    }

    /// `future`, polled — and dropped — in the reactor's context.
    pub(crate) fn enter<F: Future>(self: &Arc<Self>, future: F) -> InReactor<F> {
        InReactor {
            reactor: self.clone(),
            future: Some(future),
        }
    }

    /// Run `f` (a handler's constructor) in the reactor's context: it may spawn tasks or
    /// create resources bound to the reactor (a lazily connecting pool).
    pub(crate) fn within<T>(&self, f: impl FnOnce() -> T) -> T {
        let _entered = self.handle.enter();
        f()
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pin_project_lite::pin_project! {
    /// A future polled inside its plugin's reactor (see [`Reactor::enter`]).
    ///
    /// A cancelled call's future is dropped inside the reactor too: the handler's locals may
    /// need it in their destructors (a pooled connection returns itself by spawning a task),
    /// and a panic there, outside any runtime, would abort the process across the boundary.
    pub(crate) struct InReactor<F> {
        reactor: Arc<Reactor>,
        // `None` once dropped.
        #[pin]
        future: Option<F>,
    }

    impl<F> PinnedDrop for InReactor<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let _entered = this.reactor.handle.enter();
            let mut future = this.future;
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                future.set(None)
            }));
        }
    }
}

impl<F: Future> Future for InReactor<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = this.reactor.handle.enter();
        match this.future.as_pin_mut() {
            Some(future) => future.poll(cx),
            None => Poll::Pending,
        }
    }
}
