//! How the pipeline calls a binding's handler, decided once when the binding is made: from
//! the handler's shape (what the plugin wrote) and the binding's `inline` and
//! `[bindings.batch]`, which must fit it.

use iniesta_plugin_api::ffi::HandlerShape;

use crate::config::BindingConfig;
use crate::plugins::call::BatchEntry;
use crate::policy::batch::Gatherer;

/// How a binding's handler is called (an isolated handler is always [`Calling::Blocking`]
/// here: its worker process runs whatever the plugin wrote).
pub enum Calling {
    /// A sync handler, on the blocking pool with the binding's timeout.
    Blocking,
    /// A sync handler bound `inline = true`: on the async worker that holds the message.
    Inline,
    /// An async handler: its future, polled on the message's own task.
    Async,
    /// A batch handler: its messages gathered into batches per `[bindings.batch]`.
    Batch(Gatherer<BatchEntry>),
}

impl Calling {
    /// How to call a handler of `shape` bound by `binding`; `Err` with the key at fault
    /// (under `key`, e.g. `bindings[2]`) and why, when the binding's settings do not fit it.
    pub fn of(
        shape: HandlerShape,
        binding: &BindingConfig,
        key: &str,
    ) -> Result<Calling, (String, String)> {
        if binding.batch.is_some() && shape != HandlerShape::Batch {
            return Err((
                format!("{key}.batch"),
                format!(
                    "is not a batch handler (it is {}); remove [{key}.batch]",
                    name(shape)
                ),
            ));
        }
        if binding.inline && shape != HandlerShape::Sync {
            return Err((
                format!("{key}.inline"),
                format!(
                    "is {}: `inline` is for sync handlers (an async handler already runs on the async workers, a batch runs on the blocking pool); remove it",
                    name(shape)
                ),
            ));
        }
        Ok(match shape {
            HandlerShape::Sync if binding.inline => Calling::Inline,
            HandlerShape::Sync => Calling::Blocking,
            HandlerShape::Async => Calling::Async,
            HandlerShape::Batch => {
                Calling::Batch(Gatherer::new(&binding.batch.clone().unwrap_or_default()))
            }
        })
    }
}

/// How a handler's shape reads in messages.
fn name(shape: HandlerShape) -> &'static str {
    match shape {
        HandlerShape::Sync => "a sync handler",
        HandlerShape::Async => "an async handler",
        HandlerShape::Batch => "a batch handler",
    }
}
