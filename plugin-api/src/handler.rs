//! The three shapes of handler a plugin can export: [`Handler`] (one blocking call per
//! message), [`AsyncHandler`] (one future per message) and [`BatchHandler`] (one blocking call
//! per batch of messages).

use std::future::Future;

use crate::{Context, Message, Outcome};

/// Any error a handler returns; the message is then left for redelivery.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// What [`Handler::handle`] and [`AsyncHandler::handle`] return.
pub type HandlerResult = Result<Outcome, HandlerError>;

/// What [`BatchHandler::handle_batch`] returns: one result per message, in the order the
/// messages came (as Lambda's `batchItemFailures`, each message succeeds or fails on its own),
/// or an error for the whole batch (every message is then left for redelivery).
pub type BatchResult = Result<Vec<HandlerResult>, HandlerError>;

/// Business logic for one binding. Implement it on a plain Rust type.
///
/// The host calls `handle` on a blocking thread pool, possibly from several threads at once,
/// so the type must be `Send + Sync`; keep per-message state on the stack.
pub trait Handler: Send + Sync + 'static {
    /// Handle one message: return an [`Outcome`], or an error to have it redelivered.
    fn handle(&self, message: &Message<'_>, ctx: &Context<'_>) -> HandlerResult;
}

/// Business logic that awaits: an HTTP call, a database query through an async driver.
///
/// The host polls the returned future on its own async workers — no thread is blocked while
/// it waits — and drops it at the binding's timeout or when a drain runs out of time (the
/// call is cancelled at its next `.await`). Its sockets, timers and `tokio::spawn`s run on a
/// tokio reactor of the plugin's own, started with the plugin's first async handler: use
/// tokio and the crates built on it (reqwest, sqlx, hyper, the AWS SDK) as in any tokio
/// program. Do not block in it: `std::thread::sleep`, blocking I/O or a long computation holds
/// up one of the host's workers (use `tokio::task::spawn_blocking`). Publish with
/// [`Context::publish_async`] and friends, which do not block either.
///
/// Write it with `async fn`:
///
/// ```
/// use iniesta_plugin_api::{AsyncHandler, Context, HandlerResult, Message, Outcome};
///
/// struct Slow;
///
/// impl AsyncHandler for Slow {
///     async fn handle(&self, message: &Message<'_>, ctx: &Context<'_>) -> HandlerResult {
///         tokio::time::sleep(std::time::Duration::from_millis(5)).await;
///         ctx.publish_async("Order.Checked", message.body()).await?;
///         Ok(Outcome::Ack)
///     }
/// }
/// ```
pub trait AsyncHandler: Send + Sync + 'static {
    /// Handle one message: resolve to an [`Outcome`], or an error to have it redelivered.
    fn handle(
        &self,
        message: &Message<'_>,
        ctx: &Context<'_>,
    ) -> impl Future<Output = HandlerResult> + Send;
}

/// Business logic that wants several messages at once: one database transaction, one bulk
/// request.
///
/// The host gathers the messages its binding takes — up to the binding's `batch.max_size`,
/// waiting at most `batch.max_wait_ms` after the first — and calls `handle_batch` on its
/// blocking pool. Return one result per message, in order: each message is acked, retried or
/// dead-lettered on its own; returning a different number of results fails the whole batch.
/// Locks, completion records, retry policies and the circuit breaker still work per message.
pub trait BatchHandler: Send + Sync + 'static {
    /// Handle `messages` (at least one): one result per message, in the same order.
    fn handle_batch(&self, messages: &[Message<'_>], ctx: &Context<'_>) -> BatchResult;
}
