//! `shapes`: an async handler and a batch handler, for the host's tests and the bench.
//!
//! - `waiter` (async) awaits `sleep_ms` (config, default 10; 0: no timer at all) on a tokio
//!   timer, then appends `id` to the file `out` (config, optional) and acks. A body `panic`
//!   panics after its first await, `forever` never resolves (a timeout, or a drain, must
//!   cancel it), `publish` publishes `publish_as` (config, default `Waited`) with the body
//!   `{"from":"ID"}` through the host without blocking, `fail` returns an error. It appends `start id` to `started` (config, optional) when it begins and
//!   `drop id` to `dropped` when its future is dropped unfinished (a cancelled call).
//! - `rows` (batch) appends one line per call to `out` (config): the batch's size, then its
//!   message ids, space-separated. Per message, a body `bad` fails it, `later` retries it after
//!   1 s, `dead` dead-letters it, anything else acks it; a body `whole` fails the whole batch.
//!   With `sleep_ms` it sleeps that long before answering.

use std::time::Duration;

use iniesta_plugin_api::{
    export_plugin, AsyncHandler, BatchHandler, BatchResult, Config, Context, HandlerResult,
    Message, Outcome,
};

/// Append `line` to the file at `path`, in one write (calls running at once do not
/// interleave their lines).
fn note(path: &str, line: &str) -> Result<(), String> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open {path}: {e}"))?;
    file.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("cannot write {path}: {e}"))
}

/// The async handler.
pub struct Waiter {
    sleep: Duration,
    out: Option<String>,
    started: Option<String>,
    dropped: Option<String>,
    publish_as: String,
}

/// Notes `drop id` when dropped before it was disarmed: the call was cancelled.
struct Cancelled<'a> {
    path: Option<&'a str>,
    id: &'a str,
}

impl Drop for Cancelled<'_> {
    fn drop(&mut self) {
        if let Some(path) = self.path {
            let _ = note(path, &format!("drop {}", self.id));
        }
    }
}

impl AsyncHandler for Waiter {
    async fn handle(&self, message: &Message<'_>, ctx: &Context<'_>) -> HandlerResult {
        if let Some(path) = &self.started {
            note(path, &format!("start {}", message.id()))?;
        }
        let mut armed = Cancelled {
            path: self.dropped.as_deref(),
            id: message.id(),
        };
        let body = message.body_str().unwrap_or_default();
        let outcome = match body {
            "panic" => {
                tokio::task::yield_now().await;
                armed.path = None;
                panic!("waiter was asked to panic by message {}", message.id())
            }
            "forever" => {
                std::future::pending::<()>().await;
                Ok(Outcome::Ack)
            }
            "fail" => Err("waiter was asked to fail".into()),
            "publish" => {
                let body = format!(r#"{{"from":"{}"}}"#, message.id());
                ctx.publish_async(&self.publish_as, body).await?;
                Ok(Outcome::Ack)
            }
            _ => {
                if !self.sleep.is_zero() {
                    tokio::time::sleep(self.sleep).await;
                }
                if let Some(path) = &self.out {
                    note(path, message.id())?;
                }
                Ok(Outcome::Ack)
            }
        };
        armed.path = None;
        outcome
    }
}

/// The batch handler.
pub struct Rows {
    out: Option<String>,
    sleep: Duration,
}

impl BatchHandler for Rows {
    fn handle_batch(&self, messages: &[Message<'_>], _ctx: &Context<'_>) -> BatchResult {
        if let Some(path) = &self.out {
            let ids: Vec<&str> = messages.iter().map(|m| m.id()).collect();
            note(path, &format!("{} {}", messages.len(), ids.join(" ")))?;
        }
        std::thread::sleep(self.sleep);
        if messages.iter().any(|m| m.body_str() == Some("whole")) {
            return Err("rows was asked to fail the whole batch".into());
        }
        Ok(messages
            .iter()
            .map(|m| match m.body_str() {
                Some("bad") => Err("a bad row".into()),
                Some("later") => Ok(Outcome::retry(1)),
                Some("dead") => Ok(Outcome::dead_letter("a dead row")),
                _ => Ok(Outcome::Ack),
            })
            .collect())
    }
}

export_plugin! {
    name: "shapes",
    async_handlers: {
        "waiter" => |config: Config| Ok::<_, String>(Waiter {
            sleep: Duration::from_millis(config.get_u64("sleep_ms").unwrap_or(10)),
            out: config.get_str("out").map(str::to_string),
            started: config.get_str("started").map(str::to_string),
            dropped: config.get_str("dropped").map(str::to_string),
            publish_as: config.get_str("publish_as").unwrap_or("Waited").to_string(),
        }),
    },
    batch_handlers: {
        "rows" => |config: Config| Ok::<_, String>(Rows {
            out: config.get_str("out").map(str::to_string),
            sleep: Duration::from_millis(config.get_u64("sleep_ms").unwrap_or(0)),
        }),
    },
}
