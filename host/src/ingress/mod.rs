//! Ingress: consumers from plugins (`[[ingress]]`) that feed what they receive into the same
//! routing table and bindings as the queue, so a handler binds to an event wherever it came
//! from.
//!
//! A plugin's ingress gets a [`HostSink`] and calls `submit` for each message from its own
//! thread; the host decodes it like a queue message (the event name becomes the event-key
//! attribute), routes it, runs every binding that takes it through the pipeline's
//! [`invoke`](crate::pipeline::invoke) — exactly as a queue message's: `inline = true` on the
//! async worker, the others on the blocking pool with the binding's timeout — and answers with the settlement the queue would get: `Ack` when every
//! binding acked, `Retry` (a retry, an error, no binding), `DeadLetter` (a handler dead-lettered
//! it, its body failed a schema). The plugin acknowledges at its source accordingly, if its
//! source can. Ingress messages take no idempotency lock: deduplication is the source's.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RStr, RString};
use arc_swap::ArcSwap;
use iniesta_plugin_api::ffi::{
    EventFfi, IngressBox, IngressOutcomeFfi, IngressSinkFfi, IngressSinkFfi_TO,
};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acct::Profiles;
use crate::config::{Config, Problem};
use crate::egress::{config::constructor_config, pick_export, profile_of, SetupError};
use crate::ops::metrics as m;
use crate::pipeline::invoke::{self, Hold};
use crate::pipeline::report::report_failures;
use crate::pipeline::{settle, CallResult, Policy, Settlement};
use crate::plugins::Outcome;
use crate::plugins::PluginSet;
use crate::route::{Binding, Routes};
use crate::wire::{self, Attribute, Attributes, Envelope};

/// One message handed over by an ingress, waiting for its outcome.
struct Submission {
    event: EventFfi,
    reply: std::sync::mpsc::SyncSender<IngressOutcomeFfi>,
}

/// What an ingress plugin submits to.
pub struct HostSink {
    name: String,
    tx: mpsc::UnboundedSender<Submission>,
}

fn retry(reason: impl Into<String>) -> IngressOutcomeFfi {
    IngressOutcomeFfi::Retry {
        after_secs: 0,
        reason: RString::from(reason.into()),
    }
}

impl IngressSinkFfi for HostSink {
    fn submit(&self, event: &EventFfi) -> IngressOutcomeFfi {
        // Nothing here may unwind into the plugin's frame.
        catch_unwind(AssertUnwindSafe(|| {
            let (reply, answer) = std::sync::mpsc::sync_channel(1);
            let sent = self.tx.send(Submission {
                event: event.clone(),
                reply,
            });
            if sent.is_err() {
                return retry("the host is stopping");
            }
            answer
                .recv()
                .unwrap_or_else(|_| retry("the host stopped before the bindings ran"))
        }))
        .unwrap_or_else(|_| retry("the host failed to take the message"))
    }

    fn log(&self, level: u8, message: RStr<'_>) {
        let (ingress, message) = (&self.name, message.as_str());
        match level {
            1 => tracing::error!(ingress = %ingress, "{message}"),
            2 => tracing::warn!(ingress = %ingress, "{message}"),
            3 => tracing::info!(ingress = %ingress, "{message}"),
            4 => tracing::debug!(ingress = %ingress, "{message}"),
            _ => tracing::trace!(ingress = %ingress, "{message}"),
        }
    }
}

/// Settings for running ingress messages.
#[derive(Clone)]
pub struct IngressSettings {
    /// The event attribute.
    pub event_key: String,
    /// Messages handled at once, over all ingresses.
    pub max_in_flight: usize,
    /// How long running handlers get on shutdown.
    pub shutdown_timeout: Duration,
    /// Where handler failures are reported (`[errors]` webhook), as for queue messages.
    pub errors: Option<crate::ops::errors::ErrorReporter>,
    /// The console's recent failures, as for queue messages.
    pub failures: Option<Arc<crate::ops::console::RecentFailures>>,
}

impl std::fmt::Debug for IngressSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressSettings")
            .field("event_key", &self.event_key)
            .field("max_in_flight", &self.max_in_flight)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("errors", &self.errors.is_some())
            .field("failures", &self.failures.is_some())
            .finish()
    }
}

impl IngressSettings {
    /// From a config (`sns.event_key`, `sqs.max_in_flight`, `sqs.shutdown_timeout_secs`).
    pub fn from_config(config: &Config) -> IngressSettings {
        IngressSettings {
            event_key: config.sns.event_key.clone(),
            max_in_flight: config.sqs.max_in_flight.max(1),
            shutdown_timeout: Duration::from_secs(config.sqs.shutdown_timeout_secs),
            errors: None,
            failures: None,
        }
    }
}

/// The started ingresses.
pub struct Ingresses {
    started: Vec<(String, Arc<IngressBox>)>,
    settings: IngressSettings,
    slots: Arc<Semaphore>,
    serving: CancellationToken,
    /// Every task the ingresses run on (one per ingress, one per message being handled).
    tasks: TaskTracker,
}

impl Ingresses {
    /// How many are running.
    pub fn len(&self) -> usize {
        self.started.len()
    }

    /// Whether none is running.
    pub fn is_empty(&self) -> bool {
        self.started.is_empty()
    }

    /// Stop every ingress (no more submissions), then give running handlers the shutdown
    /// timeout to finish. Returns when every task the ingresses ran on is done: a message
    /// still being handled at the timeout is dropped (its ingress is told to retry it).
    pub async fn stop(self) {
        for (name, ingress) in &self.started {
            let ingress = ingress.clone();
            let stopped = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::task::spawn_blocking(move || ingress.stop()),
            )
            .await;
            match stopped {
                Ok(_) => tracing::info!(ingress = %name, "ingress stopped"),
                Err(_) => tracing::warn!(ingress = %name, "ingress did not stop within 10 s"),
            }
        }
        let all = u32::try_from(self.settings.max_in_flight).unwrap_or(u32::MAX);
        if tokio::time::timeout(self.settings.shutdown_timeout, self.slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("ingress handlers still running at the shutdown timeout");
        }
        self.serving.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Start every `[[ingress]]` entry, each feeding `routes`.
pub fn start(
    config: &Config,
    plugins: &PluginSet,
    profiles: Option<&Profiles>,
    routes: Arc<ArcSwap<Routes>>,
    settings: IngressSettings,
) -> Result<Ingresses, SetupError> {
    let slots = Arc::new(Semaphore::new(settings.max_in_flight));
    let serving = CancellationToken::new();
    let tasks = TaskTracker::new();
    let mut started = Vec::new();
    let mut problems = Vec::new();
    for (index, entry) in config.ingress.iter().enumerate() {
        let key = format!("ingress[{index}]");
        let name = entry.label();
        let result: Result<IngressBox, Problem> = (|| {
            let plugin = plugins.get(&entry.plugin).ok_or_else(|| Problem {
                key: format!("{key}.plugin"),
                message: plugins.missing_hint(&entry.plugin),
            })?;
            let export = pick_export(
                &entry.plugin,
                "ingress",
                entry.ingress.as_deref(),
                &plugin.ingresses,
                &key,
            )?;
            let profile = profile_of(profiles, &entry.plugin, entry.profile.as_deref(), &key)?;
            let json = constructor_config(profile, entry.config.as_ref());
            let (tx, rx) = mpsc::unbounded_channel();
            tasks.spawn(serve(
                name.clone(),
                rx,
                routes.clone(),
                settings.clone(),
                slots.clone(),
                serving.clone(),
                tasks.clone(),
            ));
            let sink = IngressSinkFfi_TO::from_value(
                HostSink {
                    name: name.clone(),
                    tx,
                },
                TD_Opaque,
            );
            plugin
                .start_ingress(&export, &json, sink)
                .map_err(|e| Problem {
                    key: format!("{key}.config"),
                    message: format!("ingress `{}/{export}` did not start: {e}", entry.plugin),
                })
        })();
        match result {
            Ok(ingress) => {
                tracing::info!(ingress = %name, plugin = %entry.plugin, "ingress started");
                started.push((name, Arc::new(ingress)));
            }
            Err(problem) => problems.push(problem),
        }
    }
    if !problems.is_empty() {
        for (_, ingress) in &started {
            ingress.stop();
        }
        serving.cancel();
        return Err(SetupError::Invalid(problems));
    }
    Ok(Ingresses {
        started,
        settings,
        slots,
        serving,
        tasks,
    })
}

async fn serve(
    name: String,
    mut rx: mpsc::UnboundedReceiver<Submission>,
    routes: Arc<ArcSwap<Routes>>,
    settings: IngressSettings,
    slots: Arc<Semaphore>,
    serving: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let submission = tokio::select! {
            _ = serving.cancelled() => break,
            s = rx.recv() => match s {
                Some(s) => s,
                None => break,
            },
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            let _ = submission.reply.send(retry("the host is stopping"));
            continue;
        };
        let (name, routes, settings) = (name.clone(), routes.clone(), settings.clone());
        let stopping = serving.clone();
        // The slot travels with the calls: a timed-out handler keeps it until its thread
        // really returns, so stuck handlers cannot pile up threads (as in the pipeline).
        let permit: Hold = Arc::new(permit);
        tasks.spawn(async move {
            // Dropped when serving ends (after the shutdown timeout): the reply goes unsent,
            // so the ingress hears that the host stopped before the bindings ran.
            let outcome = tokio::select! {
                biased;
                outcome = handle(&name, &submission.event, &routes, &settings, &permit) => outcome,
                () = stopping.cancelled() => return,
            };
            let label = match &outcome {
                IngressOutcomeFfi::Ack => "ack",
                IngressOutcomeFfi::Retry { .. } => "retry",
                IngressOutcomeFfi::DeadLetter { .. } => "dead_letter",
            };
            metrics::counter!(m::INGRESS_MESSAGES, "ingress" => name, "result" => label)
                .increment(1);
            let _ = submission.reply.send(outcome);
        });
    }
}

/// Decode, route and run one ingress message; its outcome.
async fn handle(
    ingress: &str,
    event: &EventFfi,
    routes: &ArcSwap<Routes>,
    settings: &IngressSettings,
    slot: &Hold,
) -> IngressOutcomeFfi {
    let envelope = match envelope_of(event, &settings.event_key) {
        Ok(e) => e,
        Err(reason) => {
            tracing::warn!(ingress = %ingress, reason = %reason, "ingress message cannot be decoded");
            return IngressOutcomeFfi::DeadLetter {
                reason: reason.into(),
            };
        }
    };
    let bindings: Vec<Arc<Binding>> = routes
        .load_full()
        .route(&envelope)
        .into_iter()
        .cloned()
        .collect();
    if bindings.is_empty() {
        let reason = format!(
            "no binding takes `{}` and there is no default binding",
            envelope.event
        );
        tracing::warn!(ingress = %ingress, message_id = %envelope.message_id, event = %envelope.event, "{reason}");
        return retry(reason);
    }
    if let Some(reason) = crate::route::schema::rejection(&envelope, &bindings) {
        tracing::info!(ingress = %ingress, message_id = %envelope.message_id, event = %envelope.event, reason = %reason, "rejected by a binding's schema");
        return IngressOutcomeFfi::DeadLetter {
            reason: reason.into(),
        };
    }
    // The pipeline's invoke: `inline = true`, timeouts and metrics exactly as for queue
    // messages. An ingress message is delivered once as far as the host knows.
    // An open circuit: the source keeps the message and retries after the cooldown.
    let probes = match invoke::admit(&bindings) {
        Ok(probes) => probes,
        Err((wait, open)) => {
            return IngressOutcomeFfi::Retry {
                after_secs: invoke::wait_secs(wait),
                reason: format!("the circuit of {} is open", open.join(", ")).into(),
            }
        }
    };
    let trace = crate::telemetry::parent_of(&envelope.attributes, None);
    let results =
        invoke::call_all(&envelope, 1, &bindings, slot, None, &probes, trace.as_ref()).await;
    report_failures(
        settings.errors.as_ref(),
        settings.failures.as_deref(),
        1,
        &envelope,
        &bindings,
        &results,
    );
    let labels: Vec<&str> = bindings.iter().map(|b| b.label.as_str()).collect();
    let outcome = match settle(&results, &Policy::of(&bindings), 1) {
        Settlement::Delete => IngressOutcomeFfi::Ack,
        Settlement::RetryAfter(secs) => IngressOutcomeFfi::Retry {
            after_secs: secs,
            reason: format!("retry after {secs} s (a handler's retry or its binding's backoff)")
                .into(),
        },
        Settlement::Leave => retry(failure_text(&bindings, &results)),
        Settlement::DeadLetter(reason) => IngressOutcomeFfi::DeadLetter {
            reason: reason.into(),
        },
    };
    tracing::info!(ingress = %ingress, message_id = %envelope.message_id, event = %envelope.event, bindings = ?labels, outcome = ?outcome, "ingress message handled");
    outcome
}

fn failure_text(bindings: &[Arc<Binding>], results: &[CallResult]) -> String {
    bindings
        .iter()
        .zip(results)
        .filter_map(|(b, r)| {
            let why = match r {
                CallResult::Outcome(Outcome::Failed { reason }) => reason.clone(),
                CallResult::Outcome(Outcome::Panicked { message }) => {
                    format!("panicked: {message}")
                }
                CallResult::TimedOut => "timed out".to_string(),
                CallResult::Crashed(e) => e.clone(),
                CallResult::Outcome(_) => return None,
            };
            Some(format!("{}: {why}", b.label))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// An ingress message as the pipeline sees a queue message: the event name is put under the
/// event key, binary/BSON bodies are decoded like queue bodies.
pub fn envelope_of(event: &EventFfi, event_key: &str) -> Result<Envelope, String> {
    let mut attributes = Attributes::new();
    for a in event.attributes.iter() {
        attributes.insert(
            a.name.to_string(),
            Attribute {
                data_type: a.data_type.to_string(),
                value: a.value.to_string(),
            },
        );
    }
    if !event.name.is_empty() {
        attributes.insert(
            event_key.to_string(),
            Attribute::string(event.name.as_str()),
        );
    }
    let id = if event.id.is_empty() {
        uuid::Uuid::new_v4().to_string()
    } else {
        event.id.to_string()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    // An ingress event is never an SNS envelope: its body is the body.
    wire::decode(
        &id,
        event.body.as_slice(),
        &attributes,
        now,
        wire::DeliveryContext::raw(event_key),
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi_stable::std_types::RVec;
    use iniesta_plugin_api::ffi::AttributeFfi;

    #[test]
    fn the_event_name_goes_under_the_event_key() {
        let event = EventFfi {
            id: "".into(),
            name: "Order.Created.shop".into(),
            body: RVec::from(b"{\"id\":1}".to_vec()),
            attributes: RVec::from(vec![AttributeFfi {
                name: "k".into(),
                data_type: "String".into(),
                value: "v".into(),
            }]),
        };
        let e = envelope_of(&event, "iniesta_pass").expect("decodes");
        assert_eq!(e.event, "Order.Created.shop");
        assert_eq!(e.body, b"{\"id\":1}");
        assert_eq!(e.attributes["k"].value, "v");
        assert!(!e.message_id.is_empty());
    }

    #[test]
    fn a_body_shaped_like_an_sns_envelope_does_not_choose_the_event() {
        let spoof = br#"{"Type":"Notification","MessageId":"x","TopicArn":"arn:aws:sns:us-east-1:1:global","Message":"{}","MessageAttributes":{"iniesta_pass":{"Type":"String","Value":"Admin.Delete"}}}"#;
        let event = EventFfi {
            id: "".into(),
            name: "Probe.Spoof.web".into(),
            body: RVec::from(spoof.to_vec()),
            attributes: RVec::new(),
        };
        let e = envelope_of(&event, "iniesta_pass").expect("decodes");
        assert_eq!(e.event, "Probe.Spoof.web");
        assert_eq!(e.body, spoof, "the body is the body");
    }
}
