//! The real pipeline run in-process, on the test's tokio runtime, against a local broker whose
//! clock follows tokio's.
//!
//! Under `#[tokio::test(start_paused = true)]` tokio's clock moves only when the runtime is
//! idle (auto-advance) or when the test calls `tokio::time::advance`, and the broker reads
//! the same clock ([`Clock::tokio`]): a visibility timeout of 30 s passes in no real time,
//! and waiting for an outcome ([`InProcess::wait_for`]) polls with `tokio::time::sleep`,
//! which is instant. Plugins are the real cdylibs from `target/debug`, bound as `app.rs`
//! binds them; locks come from the config (`[lock]` empty: in-process locks).
//!
//! Tokio does not auto-advance while a `spawn_blocking` task runs (a handler call, a SQLite
//! call): a handler that sleeps in real time holds the paused clock still; a test that wants
//! time to pass meanwhile moves it with `tokio::time::advance` and lets the pipeline's tasks
//! run with [`InProcess::settle_real`].

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use iniesta::broker::local::{Clock, LocalBroker, StoredMessage};
use iniesta::broker::Broker;
use iniesta::config::Config;
use iniesta::pipeline::{Pipeline, Settings};
use iniesta::plugins::PluginSet;
use iniesta::tasks::Tasks;
use iniesta::wire::{encode, Attributes};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::paced::{Calls, Paced};
use super::Scratch;

/// A directory of links to the plugin files the config's bindings name (the workspace's
/// `libNAME.so`): every host a test starts in this process keeps a copy of each plugin it
/// loads mapped until the test binary exits, so loading all of `target/debug` each time
/// (the example plugins are tens of MB) held gigabytes of deleted files in the temp dir.
fn bound_plugins(config: &Config, scratch: &Scratch) -> std::path::PathBuf {
    let dir = scratch.dir.path().join("bound-plugins");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for binding in &config.bindings {
        let file = format!("lib{}.so", binding.plugin.replace('-', "_"));
        let (from, to) = (super::plugin_dir().join(&file), dir.join(&file));
        if from.exists() && !to.exists() {
            std::fs::hard_link(&from, &to)
                .or_else(|_| std::fs::copy(&from, &to).map(|_| ()))
                .expect("link a plugin");
        }
    }
    dir
}

/// One service's pipeline running in-process, with its broker and scratch directory.
pub struct InProcess {
    /// The scratch directory (the broker file, ledgers).
    pub scratch: Scratch,
    /// The config the pipeline runs with.
    pub config: Config,
    /// The broker, on the tokio clock (the pipeline holds a clone of the same file and clock).
    pub broker: Arc<LocalBroker>,
    /// The pipeline's lock service (in-process unless the config names Redis).
    pub locks: Arc<dyn iniesta::lock::Locks>,
    shutdown: CancellationToken,
    run: Option<JoinHandle<()>>,
}

impl InProcess {
    /// Start a pipeline for a config made of `sqs_extra` (lines in `[sqs]`) and `rest`
    /// (bindings, other sections), over the standard header of [`Scratch::config`];
    /// `{scratch}` in `rest` stands for the scratch directory.
    pub async fn start(sqs_extra: &str, rest: &str) -> InProcess {
        InProcess::start_with(sqs_extra, rest, |broker| broker).await
    }

    /// [`InProcess::start`] over a [`Paced`] broker: `latency` (tokio time) on every receive
    /// and delete call; returns what the pipeline asked of it too.
    pub async fn start_paced(
        sqs_extra: &str,
        rest: &str,
        latency: Duration,
    ) -> (InProcess, Arc<Calls>) {
        let mut calls = None;
        let host = InProcess::start_with(sqs_extra, rest, |broker| {
            let paced = Paced::new(broker, latency);
            calls = Some(paced.calls.clone());
            Arc::new(paced)
        })
        .await;
        (host, calls.expect("the broker was wrapped"))
    }

    /// [`InProcess::start`], the pipeline running over `wrap(broker)`.
    pub async fn start_with(
        sqs_extra: &str,
        rest: &str,
        wrap: impl FnOnce(Arc<LocalBroker>) -> Arc<dyn Broker>,
    ) -> InProcess {
        let scratch = Scratch::new();
        let rest = rest.replace("{scratch}", &scratch.dir.path().display().to_string());
        let path = scratch.config(sqs_extra, &rest);
        let config = Config::read(&path).expect("the config reads");
        let broker = Arc::new(
            LocalBroker::open(&config)
                .await
                .expect("the local broker opens")
                .with_clock(Clock::tokio()),
        );
        let set = PluginSet::scan(&[bound_plugins(&config, &scratch)]);
        // Handlers publish to the same broker (unwrapped: publishes are not what a wrapper
        // paces or counts).
        let publisher = Arc::new(iniesta::egress::Publisher::new(&config, broker.clone()));
        let routes = iniesta::route::bind(
            &config,
            &set,
            Some(publisher),
            Some(tokio::runtime::Handle::current()),
            &iniesta::policy::Guards::new(None),
        )
        .unwrap_or_else(|problems| panic!("the bindings bind: {problems:?}"));
        let locks = iniesta::lock::from_config(&config.lock, &config.base_dir, &Tasks::new())
            .await
            .expect("the lock service starts");
        let pipeline = Pipeline::new(
            wrap(broker.clone()),
            Arc::new(ArcSwap::from_pointee(routes)),
            locks.clone(),
            Settings::from_config(&config),
        );
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(pipeline.run(shutdown.clone()));
        InProcess {
            scratch,
            config,
            broker,
            locks,
            shutdown,
            run: Some(run),
        }
    }

    /// Publish `body` as event `event` to the service's topic, sent by the service itself.
    pub async fn publish(&self, event: &str, body: &str) {
        let message = encode(
            event,
            &self.config.service,
            "iniesta_pass",
            body.as_bytes().to_vec(),
            Attributes::new(),
            &iniesta::wire::SizeLimit::sns(),
        )
        .expect("the message encodes");
        self.broker.publish(&message).await.expect("publishes");
    }

    /// The messages on the service's queue.
    pub async fn queue(&self) -> Vec<StoredMessage> {
        self.messages(&self.config.queue_name()).await
    }

    /// The messages on the dead-letter queue.
    pub async fn dead_letters(&self) -> Vec<StoredMessage> {
        let dlq = self
            .config
            .sqs
            .dead_letter_queue
            .clone()
            .expect("the config names a dead-letter queue");
        self.messages(&dlq).await
    }

    /// The messages on `queue`.
    pub async fn messages(&self, queue: &str) -> Vec<StoredMessage> {
        self.broker.messages(queue).await.expect("messages")
    }

    /// Poll `check` every (paused, so instant) 100 ms until it returns `Some`, failing with
    /// `what` after `limit` of tokio time.
    pub async fn wait_for<T, F, Fut>(&self, what: &str, limit: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(found) = check().await {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out (tokio time) waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Poll `check` every 20 ms of real time, without moving tokio's clock (for while a
    /// handler blocks: a tokio sleep would not end before it returns), failing with `what`
    /// after `limit` of real time.
    pub async fn wait_real<T, F, Fut>(&self, what: &str, limit: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let started = std::time::Instant::now();
        loop {
            if let Some(found) = check().await {
                return found;
            }
            assert!(
                started.elapsed() < limit,
                "timed out (real time) waiting for {what}"
            );
            InProcess::settle_real(Duration::from_millis(20)).await;
        }
    }

    /// Let the pipeline's tasks run for `real` wall-clock time without moving tokio's clock
    /// (a blocking wait holds auto-advance, as a running handler does).
    pub async fn settle_real(real: Duration) {
        tokio::task::spawn_blocking(move || std::thread::sleep(real))
            .await
            .expect("the blocking wait ends");
    }

    /// Cancel the run (a first Ctrl-C) and wait for it to drain and return.
    pub async fn stop(mut self) -> InProcess {
        self.shutdown.cancel();
        if let Some(run) = self.run.take() {
            run.await
                .expect("the pipeline's run returns without panicking");
        }
        self
    }

    /// The shutdown token, to cancel without waiting.
    pub fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Wait for the run to return (after [`InProcess::shutdown`] was cancelled).
    pub async fn join(&mut self) {
        if let Some(run) = self.run.take() {
            run.await
                .expect("the pipeline's run returns without panicking");
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
