//! A test kit: call a handler the way the host does, without the host, a broker or AWS.
//!
//! ```
//! use iniesta_plugin_api::testing::{Harness, TestMessage, TestOutcome};
//! use iniesta_plugin_api::{Context, Handler, HandlerResult, Message, Outcome};
//!
//! struct Shipper;
//!
//! impl Handler for Shipper {
//!     fn handle(&self, message: &Message<'_>, ctx: &Context<'_>) -> HandlerResult {
//!         let order: serde_json::Value = message.json()?;
//!         ctx.info("shipping");
//!         ctx.publish_json("Order.Shipped", &serde_json::json!({ "id": order["id"] }))?;
//!         Ok(Outcome::Ack)
//!     }
//! }
//!
//! let harness = Harness::new(Shipper);
//! let result = harness.call(&TestMessage::new("Order.Created.shop").json(serde_json::json!({ "id": 7 })));
//! assert_eq!(result.outcome, TestOutcome::Ack);
//! assert_eq!(result.published[0].event, "Order.Shipped");
//! assert_eq!(result.published[0].body, br#"{"id":7}"#);
//! assert!(result.logged("shipping"));
//!
//! // A body that is not JSON: the `?` above returns an error, so the host would redeliver.
//! let result = harness.call(&TestMessage::new("Order.Created.shop").text("oops"));
//! assert!(matches!(result.outcome, TestOutcome::Failed { .. }));
//! ```

use std::sync::{Arc, Mutex};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};

use crate::ffi::{
    AttributeFfi, BorrowingFfiFuture, HandlerBox, HostContextBox, HostContextFfi,
    HostContextFfi_TO, MessageFfi, OutcomeFfi,
};
use crate::{AsyncHandler, BatchHandler, Config, Handler};

/// A message to hand to a handler in a test.
#[derive(Debug, Clone)]
pub struct TestMessage {
    id: String,
    event: String,
    body: Vec<u8>,
    attributes: Vec<(String, String, String)>,
    receive_count: u32,
    sent_timestamp_ms: u64,
}

impl TestMessage {
    /// A message for `event` (give the full name, e.g. `Order.Created.shop`) with body `{}`,
    /// the `iniesta_pass` and `version` attributes the host would see, delivery 1.
    pub fn new(event: &str) -> TestMessage {
        TestMessage {
            id: "test-message-1".into(),
            event: event.into(),
            body: b"{}".to_vec(),
            attributes: vec![
                ("iniesta_pass".into(), "String".into(), event.into()),
                ("version".into(), "Number".into(), "1".into()),
            ],
            receive_count: 1,
            sent_timestamp_ms: 0,
        }
    }

    /// Set the body to a JSON value.
    pub fn json(mut self, body: serde_json::Value) -> Self {
        self.body = body.to_string().into_bytes();
        self
    }

    /// Set the body to text.
    pub fn text(mut self, body: &str) -> Self {
        self.body = body.as_bytes().to_vec();
        self
    }

    /// Set the body to raw bytes.
    pub fn bytes(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Add (or replace) a `String` attribute.
    pub fn attribute(self, name: &str, value: &str) -> Self {
        self.typed_attribute(name, "String", value)
    }

    /// Add (or replace) an attribute of any data type (`Number`, `Binary` in base64, ...).
    pub fn typed_attribute(mut self, name: &str, data_type: &str, value: &str) -> Self {
        self.attributes.retain(|(n, _, _)| n != name);
        self.attributes
            .push((name.into(), data_type.into(), value.into()));
        self
    }

    /// Set the message id.
    pub fn id(mut self, id: &str) -> Self {
        self.id = id.into();
        self
    }

    /// Set the delivery count (1 on the first delivery).
    pub fn receive_count(mut self, count: u32) -> Self {
        self.receive_count = count;
        self
    }

    /// Set the sent timestamp (ms since the Unix epoch).
    pub fn sent_timestamp_ms(mut self, ms: u64) -> Self {
        self.sent_timestamp_ms = ms;
        self
    }

    fn to_ffi(&self) -> MessageFfi {
        MessageFfi {
            id: self.id.as_str().into(),
            event: self.event.as_str().into(),
            body: RVec::from(self.body.clone()),
            attributes: self
                .attributes
                .iter()
                .map(|(name, data_type, value)| AttributeFfi {
                    name: name.as_str().into(),
                    data_type: data_type.as_str().into(),
                    value: value.as_str().into(),
                })
                .collect(),
            receive_count: self.receive_count,
            sent_timestamp_ms: self.sent_timestamp_ms,
        }
    }
}

/// What a handler call came to, as the host sees it: the handler's [`HandlerResult`](crate::HandlerResult)
/// after the plugin boundary, panics included.
///
/// | the handler | `TestOutcome` | what the host then does |
/// |---|---|---|
/// | `Ok(Outcome::Ack)` | `Ack` | deletes the message once every binding acked |
/// | `Ok(Outcome::Retry { after_secs })` | `Retry { after_secs }` | visible again after `after_secs` |
/// | `Ok(Outcome::DeadLetter { reason })` | `DeadLetter { reason }` | moves it to the dead-letter queue |
/// | `Err(e)` (also `?`) | `Failed { reason }` (`e`'s text) | logs it; redelivered after the visibility timeout |
/// | a panic | `Panicked { message }` | logs it; redelivered like `Failed` |
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestOutcome {
    /// The handler returned `Ok(Outcome::Ack)`: the host deletes the message once every
    /// binding that took it has acked.
    Ack,
    /// The handler returned `Ok(Outcome::Retry { after_secs })` (or `Outcome::retry(n)`): the
    /// host makes the message visible again after `after_secs`.
    Retry {
        /// Seconds until the message is visible again (0: at once). With several bindings the
        /// host uses the largest.
        after_secs: u32,
    },
    /// The handler returned `Ok(Outcome::DeadLetter { reason })` (or
    /// `Outcome::dead_letter(r)`): the host moves the message to the dead-letter queue.
    DeadLetter {
        /// The reason the handler gave; the host logs it and stores it with the dead letter.
        reason: String,
    },
    /// The handler returned `Err(e)`: the host logs it and leaves the message, which is
    /// redelivered after the visibility timeout.
    Failed {
        /// The error's text (`e.to_string()`), as the host would log it.
        reason: String,
    },
    /// The handler panicked: the panic was caught at the boundary, logged and treated like
    /// `Failed` (redelivered after the visibility timeout).
    Panicked {
        /// The panic message (the `panic!` text).
        message: String,
    },
}

impl From<OutcomeFfi> for TestOutcome {
    fn from(outcome: OutcomeFfi) -> Self {
        match outcome {
            OutcomeFfi::Ack => TestOutcome::Ack,
            OutcomeFfi::Retry { after_secs } => TestOutcome::Retry { after_secs },
            OutcomeFfi::DeadLetter { reason } => TestOutcome::DeadLetter {
                reason: reason.into_string(),
            },
            OutcomeFfi::Failed { reason } => TestOutcome::Failed {
                reason: reason.into_string(),
            },
            OutcomeFfi::Panicked { message } => TestOutcome::Panicked {
                message: message.into_string(),
            },
        }
    }
}

/// An event the handler published through its context (`ctx.publish`, `publish_json` or
/// `publish_with`), recorded by the [`Harness`] instead of being sent. Each publish returned the
/// message id `test-published-N` (N counts from 1 per harness).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedEvent {
    /// The event name exactly as the handler gave it, e.g. `Order.Shipped`. The host would
    /// append `.{service}` unless the name already ends with it.
    pub event: String,
    /// The body bytes as published (`publish_json` wrote compact JSON text); read it with
    /// `String::from_utf8` or `serde_json::from_slice`.
    pub body: Vec<u8>,
    /// The attributes the handler passed to `publish_with`, in order, as
    /// `(name, data type, value)`: `("k", "String", "v")` for `&[("k", "v")]`. Empty for
    /// `publish` and `publish_json`. The attributes the host adds itself (`iniesta_pass`,
    /// `version`) are not included.
    pub attributes: Vec<(String, String, String)>,
}

/// A line the handler logged through its context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// 1 error, 2 warn, 3 info, 4 debug, 5 trace.
    pub level: u8,
    /// The text as the handler logged it.
    pub message: String,
}

/// What one call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallResult {
    /// What the call came to (see [`TestOutcome`]).
    pub outcome: TestOutcome,
    /// Events published through the context during this call, in order (only this call's:
    /// earlier calls on the same harness are not repeated here). A publish that failed because
    /// of [`Harness::fail_publish`] is not recorded.
    pub published: Vec<PublishedEvent>,
    /// Lines logged through the context (`ctx.error/warn/info/debug`) during this call, in
    /// order.
    pub logs: Vec<LogLine>,
}

impl CallResult {
    /// Whether any logged line contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.logs.iter().any(|l| l.message.contains(text))
    }
}

#[derive(Default)]
struct Recording {
    published: Vec<PublishedEvent>,
    logs: Vec<LogLine>,
    fail_publish: Option<String>,
    next_id: u64,
}

#[derive(Clone, Default)]
struct RecordingContext(Arc<Mutex<Recording>>);

impl RecordingContext {
    fn lock(&self) -> std::sync::MutexGuard<'_, Recording> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl HostContextFfi for RecordingContext {
    fn publish(
        &self,
        event: RStr<'_>,
        body: RSlice<'_, u8>,
        attributes: RSlice<'_, AttributeFfi>,
    ) -> RResult<RString, RString> {
        let mut recording = self.lock();
        if let Some(error) = &recording.fail_publish {
            return RResult::RErr(error.as_str().into());
        }
        recording.next_id += 1;
        let id = format!("test-published-{}", recording.next_id);
        recording.published.push(PublishedEvent {
            event: event.as_str().into(),
            body: body.to_vec(),
            attributes: attributes
                .iter()
                .map(|a| {
                    (
                        a.name.to_string(),
                        a.data_type.to_string(),
                        a.value.to_string(),
                    )
                })
                .collect(),
        });
        RResult::ROk(id.into())
    }

    fn log(&self, level: u8, message: RStr<'_>) {
        self.lock().logs.push(LogLine {
            level,
            message: message.as_str().into(),
        });
    }

    fn publish_async<'a>(
        &'a self,
        event: RStr<'a>,
        body: RSlice<'a, u8>,
        attributes: RSlice<'a, AttributeFfi>,
    ) -> BorrowingFfiFuture<'a, RResult<RString, RString>> {
        crate::export::ready(HostContextFfi::publish(self, event, body, attributes))
    }
}

/// Calls one handler the way the host does: through the plugin boundary's panic guard, with a
/// context that records what was published and logged.
pub struct Harness {
    handler: HandlerBox,
    context: RecordingContext,
}

/// What one batch call did: an outcome per message, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchCallResult {
    /// One outcome per message, in the order given (see [`TestOutcome`]). A batch handler
    /// that returned `Err`, panicked or returned the wrong number of results gives every
    /// message the same outcome, as the host would.
    pub outcomes: Vec<TestOutcome>,
    /// Events published during this call, in order.
    pub published: Vec<PublishedEvent>,
    /// Lines logged during this call, in order.
    pub logs: Vec<LogLine>,
}

impl BatchCallResult {
    /// Whether any logged line contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.logs.iter().any(|l| l.message.contains(text))
    }
}

impl Harness {
    /// Wrap a [`Handler`] you constructed yourself.
    pub fn new<H: Handler>(handler: H) -> Harness {
        Harness::built(crate::export::build(Ok::<H, String>(handler)))
    }

    /// Wrap an [`AsyncHandler`]. Its futures run in the plugin's reactor as they do in the
    /// host: [`call`](Self::call) blocks on one (not from inside an async runtime: use
    /// [`call_async`](Self::call_async) in a `#[tokio::test]`).
    ///
    /// ```
    /// use iniesta_plugin_api::testing::{Harness, TestMessage, TestOutcome};
    /// use iniesta_plugin_api::{AsyncHandler, Context, HandlerResult, Message, Outcome};
    ///
    /// struct Waits;
    ///
    /// impl AsyncHandler for Waits {
    ///     async fn handle(&self, message: &Message<'_>, ctx: &Context<'_>) -> HandlerResult {
    ///         tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    ///         ctx.publish_async("Order.Checked", message.body()).await?;
    ///         Ok(Outcome::Ack)
    ///     }
    /// }
    ///
    /// let result = Harness::new_async(Waits).call(&TestMessage::new("Order.Created.shop"));
    /// assert_eq!(result.outcome, TestOutcome::Ack);
    /// assert_eq!(result.published[0].event, "Order.Checked");
    /// ```
    pub fn new_async<H: AsyncHandler>(handler: H) -> Harness {
        Harness::built(crate::export::build_async(|| Ok::<H, String>(handler)))
    }

    /// Wrap a [`BatchHandler`]; call it with [`call_batch`](Self::call_batch) (or with
    /// [`call`](Self::call), as a batch of one).
    ///
    /// ```
    /// use iniesta_plugin_api::testing::{Harness, TestMessage, TestOutcome};
    /// use iniesta_plugin_api::{BatchHandler, BatchResult, Context, Message, Outcome};
    ///
    /// struct Rows;
    ///
    /// impl BatchHandler for Rows {
    ///     fn handle_batch(&self, messages: &[Message<'_>], _ctx: &Context<'_>) -> BatchResult {
    ///         Ok(messages
    ///             .iter()
    ///             .map(|m| match m.json::<serde_json::Value>() {
    ///                 Ok(_) => Ok(Outcome::Ack),
    ///                 Err(e) => Err(e.into()),
    ///             })
    ///             .collect())
    ///     }
    /// }
    ///
    /// let result = Harness::new_batch(Rows).call_batch(&[
    ///     TestMessage::new("Row.Added.shop"),
    ///     TestMessage::new("Row.Added.shop").text("not json"),
    /// ]);
    /// assert_eq!(result.outcomes[0], TestOutcome::Ack);
    /// assert!(matches!(result.outcomes[1], TestOutcome::Failed { .. }));
    /// ```
    pub fn new_batch<H: BatchHandler>(handler: H) -> Harness {
        Harness::built(crate::export::build_batch(Ok::<H, String>(handler)))
    }

    fn built(handler: Result<HandlerBox, String>) -> Harness {
        match handler {
            Ok(handler) => Harness {
                handler,
                context: RecordingContext::default(),
            },
            // Only an async handler's reactor can fail to start (no thread could be spawned).
            Err(e) => panic!("cannot set the handler up: {e}"),
        }
    }

    /// Construct a [`Handler`] from a binding config, as the host would with
    /// `config = { ... }`.
    pub fn from_config<H, E>(
        constructor: impl FnOnce(Config) -> Result<H, E>,
        config: serde_json::Value,
    ) -> Result<Harness, String>
    where
        H: Handler,
        E: std::fmt::Display,
    {
        let handler = constructor(Config::from_value(config)).map_err(|e| e.to_string())?;
        Ok(Harness::new(handler))
    }

    /// [`from_config`](Self::from_config) for an [`AsyncHandler`]: the constructor runs in
    /// the plugin's reactor, as in the host.
    pub fn from_async_config<H, E>(
        constructor: impl FnOnce(Config) -> Result<H, E>,
        config: serde_json::Value,
    ) -> Result<Harness, String>
    where
        H: AsyncHandler,
        E: std::fmt::Display,
    {
        let config = Config::from_value(config);
        let handler = crate::export::build_async(move || constructor(config))?;
        Ok(Harness {
            handler,
            context: RecordingContext::default(),
        })
    }

    /// [`from_config`](Self::from_config) for a [`BatchHandler`].
    pub fn from_batch_config<H, E>(
        constructor: impl FnOnce(Config) -> Result<H, E>,
        config: serde_json::Value,
    ) -> Result<Harness, String>
    where
        H: BatchHandler,
        E: std::fmt::Display,
    {
        let handler = constructor(Config::from_value(config)).map_err(|e| e.to_string())?;
        Ok(Harness::new_batch(handler))
    }

    /// Make every publish through the context fail with `error` (to test error paths).
    pub fn fail_publish(&self, error: &str) -> &Self {
        self.context.lock().fail_publish = Some(error.into());
        self
    }

    fn context(&self) -> HostContextBox {
        HostContextFfi_TO::from_value(self.context.clone(), TD_Opaque)
    }

    fn take(&self) -> (Vec<PublishedEvent>, Vec<LogLine>) {
        let mut recording = self.context.lock();
        (
            std::mem::take(&mut recording.published),
            std::mem::take(&mut recording.logs),
        )
    }

    /// Call the handler with `message`, blocking until it is done; returns the outcome and
    /// what was published and logged during this call. Works for every handler shape; for an
    /// async handler, not from inside an async runtime (use [`call_async`](Self::call_async)).
    pub fn call(&self, message: &TestMessage) -> CallResult {
        // Blocking on an async handler inside a runtime would abort in the plugin boundary;
        // say what to use instead, as a plain test failure.
        if self.handler.shape() == crate::ffi::HandlerShape::Async
            && tokio::runtime::Handle::try_current().is_ok()
        {
            panic!(
                "Harness::call blocks on an async handler's future, which cannot happen inside an async runtime (this is a #[tokio::test]?): use `harness.call_async(&message).await`"
            );
        }
        let outcome = self.handler.handle(&message.to_ffi(), &self.context());
        let (published, logs) = self.take();
        CallResult {
            outcome: outcome.into(),
            published,
            logs,
        }
    }

    /// Call the handler with `message` the way the host calls an async handler: the future
    /// is awaited here (in a `#[tokio::test]`, say) and runs in the plugin's reactor. Dropping
    /// the returned future cancels the call, as the host's timeout does.
    pub async fn call_async(&self, message: &TestMessage) -> CallResult {
        let (message, ctx) = (message.to_ffi(), self.context());
        let outcome = self.handler.handle_async(&message, &ctx).await;
        let (published, logs) = self.take();
        CallResult {
            outcome: outcome.into(),
            published,
            logs,
        }
    }

    /// Call the handler with several messages at once, the way the host calls a batch
    /// handler (any other handler takes them one by one).
    pub fn call_batch(&self, messages: &[TestMessage]) -> BatchCallResult {
        let batch: Vec<MessageFfi> = messages.iter().map(TestMessage::to_ffi).collect();
        let outcomes = self
            .handler
            .handle_batch(RSlice::from_slice(&batch), &self.context());
        let (published, logs) = self.take();
        BatchCallResult {
            outcomes: outcomes.into_iter().map(TestOutcome::from).collect(),
            published,
            logs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BatchResult, Context, HandlerResult, Message, Outcome};
    use std::future::Future as _;

    struct Boom;

    impl Handler for Boom {
        fn handle(&self, message: &Message<'_>, ctx: &Context<'_>) -> HandlerResult {
            match message.body_str() {
                Some("panic") => panic!("boom"),
                Some("retry") => Ok(Outcome::retry(5)),
                Some("dead") => Ok(Outcome::dead_letter("bad")),
                Some("publish") => {
                    ctx.publish_with("Next", "x", &[("k", "v")])?;
                    Ok(Outcome::Ack)
                }
                _ => Ok(Outcome::Ack),
            }
        }
    }

    #[test]
    fn outcomes_panics_and_publishes_are_recorded() {
        let h = Harness::new(Boom);
        assert_eq!(
            h.call(&TestMessage::new("E").text("ok")).outcome,
            TestOutcome::Ack
        );
        assert_eq!(
            h.call(&TestMessage::new("E").text("retry")).outcome,
            TestOutcome::Retry { after_secs: 5 }
        );
        assert_eq!(
            h.call(&TestMessage::new("E").text("dead")).outcome,
            TestOutcome::DeadLetter {
                reason: "bad".into()
            }
        );
        match h.call(&TestMessage::new("E").text("panic")).outcome {
            TestOutcome::Panicked { message } => assert_eq!(message, "boom"),
            other => panic!("{other:?}"),
        }
        let r = h.call(&TestMessage::new("E").text("publish"));
        assert_eq!(r.published.len(), 1);
        assert_eq!(
            r.published[0].attributes,
            vec![("k".into(), "String".into(), "v".into())]
        );
        h.fail_publish("down");
        match h.call(&TestMessage::new("E").text("publish")).outcome {
            TestOutcome::Failed { reason } => assert!(reason.contains("down")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn messages_carry_what_the_host_would_give() {
        struct Echo;
        impl Handler for Echo {
            fn handle(&self, m: &Message<'_>, ctx: &Context<'_>) -> HandlerResult {
                ctx.info(&format!(
                    "{}|{}|{:?}|{}",
                    m.id(),
                    m.event(),
                    m.attribute("tenant"),
                    m.receive_count()
                ));
                Ok(Outcome::Ack)
            }
        }
        let r = Harness::new(Echo).call(
            &TestMessage::new("A.b")
                .id("m9")
                .attribute("tenant", "acme")
                .receive_count(3),
        );
        assert!(r.logged("m9|A.b|Some(\"acme\")|3"), "{:?}", r.logs);
    }

    struct Waits;

    impl AsyncHandler for Waits {
        async fn handle(&self, message: &Message<'_>, ctx: &Context<'_>) -> HandlerResult {
            match message.body_str() {
                Some("panic") => {
                    // Panics after its first poll: caught in a later poll, not only in the
                    // call that made the future.
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    panic!("late boom")
                }
                Some("forever") => {
                    std::future::pending::<()>().await;
                    Ok(Outcome::Ack)
                }
                Some("spawn") => {
                    // A task spawned from a handler runs on the plugin's reactor.
                    let task = tokio::spawn(async { 40 + 2 });
                    let n = task.await?;
                    ctx.publish_async("Spawned", n.to_string()).await?;
                    Ok(Outcome::Ack)
                }
                _ => {
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    ctx.publish_with_async("Next", "x", &[("k", "v")]).await?;
                    ctx.info("waited");
                    Ok(Outcome::retry(3))
                }
            }
        }
    }

    #[test]
    fn async_handlers_run_their_timers_and_tasks_in_the_plugin_reactor_and_panics_are_caught() {
        let h = Harness::new_async(Waits);
        let r = h.call(&TestMessage::new("E"));
        assert_eq!(r.outcome, TestOutcome::Retry { after_secs: 3 });
        assert_eq!(r.published[0].event, "Next");
        assert!(r.logged("waited"));
        let r = h.call(&TestMessage::new("E").text("spawn"));
        assert_eq!(r.outcome, TestOutcome::Ack);
        assert_eq!(r.published[0].body, b"42");
        match h.call(&TestMessage::new("E").text("panic")).outcome {
            TestOutcome::Panicked { message } => assert_eq!(message, "late boom"),
            other => panic!("{other:?}"),
        }
        h.fail_publish("down");
        match h.call(&TestMessage::new("E")).outcome {
            TestOutcome::Failed { reason } => assert!(reason.contains("down"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(h.handler.shape(), crate::ffi::HandlerShape::Async);
    }

    #[tokio::test]
    async fn an_async_call_is_awaited_by_the_caller_and_cancelled_by_dropping_it() {
        let h = Harness::new_async(Waits);
        let r = h.call_async(&TestMessage::new("E")).await;
        assert_eq!(r.outcome, TestOutcome::Retry { after_secs: 3 });
        let forever = TestMessage::new("E").text("forever");
        let cut =
            tokio::time::timeout(std::time::Duration::from_millis(20), h.call_async(&forever))
                .await;
        assert!(cut.is_err(), "a pending handler never resolves");
    }

    /// Spawns a task from its destructor, as a pooled connection returning itself does, and
    /// notes that it could.
    struct SpawnsOnDrop;

    static SPAWNED_ON_DROP: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);

    impl Drop for SpawnsOnDrop {
        fn drop(&mut self) {
            tokio::spawn(async {});
            SPAWNED_ON_DROP.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    struct Holds;

    impl AsyncHandler for Holds {
        async fn handle(&self, _message: &Message<'_>, _ctx: &Context<'_>) -> HandlerResult {
            let _connection = SpawnsOnDrop;
            std::future::pending::<()>().await;
            Ok(Outcome::Ack)
        }
    }

    /// A cancelled call's future is dropped in the plugin's reactor. Here it is polled and
    /// dropped on a plain thread, as a host's worker (another tokio) does: outside the reactor,
    /// the destructor's spawn would panic there and abort the process.
    #[test]
    fn a_cancelled_call_is_dropped_inside_the_reactor() {
        let h = Harness::new_async(Holds);
        let (message, ctx) = (TestMessage::new("E").to_ffi(), h.context());
        let mut call = Box::pin(h.handler.handle_async(&message, &ctx));
        let waker = std::task::Waker::noop();
        let polled = call
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker));
        assert!(polled.is_pending());
        drop(call);
        assert!(
            SPAWNED_ON_DROP.load(std::sync::atomic::Ordering::SeqCst),
            "the destructor ran whole, in the reactor"
        );
    }

    /// The constructor of an async handler runs in the reactor too: it may spawn.
    #[test]
    fn an_async_constructor_may_spawn() {
        let built = Harness::from_async_config(
            |_config| {
                tokio::spawn(async {});
                Ok::<_, String>(Waits)
            },
            serde_json::json!({}),
        );
        assert!(built.is_ok());
    }

    #[tokio::test]
    #[should_panic(expected = "use `harness.call_async(&message).await`")]
    async fn a_blocking_call_of_an_async_handler_inside_a_runtime_says_what_to_use() {
        Harness::new_async(Waits).call(&TestMessage::new("E"));
    }

    struct Rows;

    impl BatchHandler for Rows {
        fn handle_batch(&self, messages: &[Message<'_>], ctx: &Context<'_>) -> BatchResult {
            ctx.info(&format!("batch of {}", messages.len()));
            match messages.first().and_then(|m| m.body_str()) {
                Some("whole") => Err("the database is down".into()),
                Some("short") => Ok(vec![Ok(Outcome::Ack)]),
                Some("panic") => panic!("batch boom"),
                _ => Ok(messages
                    .iter()
                    .map(|m| match m.body_str() {
                        Some("bad") => Err("bad row".into()),
                        Some("later") => Ok(Outcome::retry(9)),
                        _ => Ok(Outcome::Ack),
                    })
                    .collect()),
            }
        }
    }

    #[test]
    fn a_batch_gets_one_outcome_per_message_and_a_whole_batch_failure_reaches_every_message() {
        let h = Harness::new_batch(Rows);
        let m = |body: &str| TestMessage::new("E").text(body);
        let r = h.call_batch(&[m("ok"), m("bad"), m("later")]);
        assert_eq!(
            r.outcomes,
            vec![
                TestOutcome::Ack,
                TestOutcome::Failed {
                    reason: "bad row".into()
                },
                TestOutcome::Retry { after_secs: 9 }
            ]
        );
        assert!(r.logged("batch of 3"));
        let failed = |reason: &str| TestOutcome::Failed {
            reason: reason.into(),
        };
        assert_eq!(
            h.call_batch(&[m("whole"), m("ok")]).outcomes,
            vec![
                failed("the database is down"),
                failed("the database is down")
            ]
        );
        assert_eq!(
            h.call_batch(&[m("short"), m("ok")]).outcomes,
            vec![
                failed("the batch handler returned 1 results for 2 messages"),
                failed("the batch handler returned 1 results for 2 messages")
            ]
        );
        let panicked = h.call_batch(&[m("panic"), m("ok")]).outcomes;
        assert!(panicked.iter().all(|o| *o
            == TestOutcome::Panicked {
                message: "batch boom".into()
            }));
        // A single call is a batch of one; a sync handler takes a batch one by one.
        assert_eq!(
            h.call(&m("later")).outcome,
            TestOutcome::Retry { after_secs: 9 }
        );
        let sync = Harness::new(Boom).call_batch(&[m("retry"), m("ok")]);
        assert_eq!(
            sync.outcomes,
            vec![TestOutcome::Retry { after_secs: 5 }, TestOutcome::Ack]
        );
    }
}
