//! The one place handlers run, for queue messages and ingress messages alike: every binding
//! that takes a message is called — `inline = true` ones right on the async worker, the
//! others on the blocking pool (an isolated plugin's handler is one of these: it forwards to
//! its worker process) with the binding's timeout — and each call is counted
//! (`iniesta_handler_calls_total`, `iniesta_handler_duration_seconds`) and, when asked,
//! recorded as completed the moment it acks. A binding with limits waits for them first (its
//! timeout starts when its call does); every result is counted by the binding's circuit
//! breaker, which [`admit`] asks before a message's calls start.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::lock::{completion, Locks};
use crate::ops::metrics as m;
use tracing::Instrument as _;

use crate::plugins::call::{self, BatchEntry, CallMessage, Outcome};
use crate::policy::batch::Gatherer;
use crate::policy::{Admission, Health, Permit};
use crate::route::calling::Calling;
use crate::route::Binding;
use crate::telemetry;
use crate::wire::Envelope;

pub use crate::plugins::call::{CallResult, Hold};

/// Where acks are recorded as completions (the lock service), so a redelivered duplicate
/// skips the bindings that already acked.
#[derive(Clone)]
pub struct Recorder {
    /// The lock service keeping completion records.
    pub locks: Arc<dyn Locks>,
    /// How long a record is kept.
    pub ttl: Duration,
}

/// A wait in whole seconds for a visibility delay or an ingress retry: rounded up, plus a
/// random tenth of it at most (the messages an open circuit refused together do not all come
/// back at the moment it half-opens, where all but the probe would be refused again), at least
/// 1, at most SQS's 12 h.
pub fn wait_secs(wait: Duration) -> u32 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let spread = fastrand::u64(0..=secs / 10);
    u32::try_from(secs + spread)
        .unwrap_or(u32::MAX)
        .clamp(1, crate::config::policy::MAX_DELAY_SECS)
}

/// Whether every binding's circuit lets a message through now: `Ok` with, per binding, whether
/// its call is a half-open circuit's probe; else how long the message should wait (the
/// longest any open circuit asks), with the probes this took handed back.
pub fn admit(bindings: &[Arc<Binding>]) -> Result<Vec<bool>, (Duration, Vec<String>)> {
    // Most bindings have no breaker: nothing to ask, nothing allocated.
    if bindings.iter().all(|b| b.guard.breaker.is_none()) {
        return Ok(Vec::new());
    }
    let mut probes = Vec::with_capacity(bindings.len());
    let mut wait: Option<(Duration, Vec<String>)> = None;
    for binding in bindings {
        match binding.guard.admit() {
            Admission::Go { probe } => probes.push(probe),
            Admission::Wait(after) => {
                probes.push(false);
                let (longest, names) = wait.get_or_insert((Duration::ZERO, Vec::new()));
                *longest = (*longest).max(after);
                names.push(binding.name.clone());
            }
        }
    }
    match wait {
        None => Ok(probes),
        Some(refused) => {
            for (binding, probe) in bindings.iter().zip(&probes) {
                if *probe {
                    if let Some(breaker) = &binding.guard.breaker {
                        breaker.abandon_probe();
                    }
                }
            }
            for name in &refused.1 {
                metrics::counter!(m::CIRCUIT_REFUSALS, "binding" => name.clone()).increment(1);
            }
            Err(refused)
        }
    }
}

/// How a call's result counts for its binding's circuit breaker.
fn health(result: &CallResult) -> Health {
    match result {
        CallResult::Outcome(Outcome::Ack) => Health::Ok,
        failed if failed.failure().is_some() => Health::Failed,
        _ => Health::Neutral,
    }
}

/// Wait for a blocking call until `deadline`.
async fn finish(
    task: tokio::task::JoinHandle<Result<Outcome, String>>,
    deadline: Instant,
) -> CallResult {
    match tokio::time::timeout_at(deadline, task).await {
        Ok(Ok(Ok(outcome))) => CallResult::Outcome(outcome),
        Ok(Ok(Err(crash))) => CallResult::Crashed(crash),
        Ok(Err(e)) => CallResult::Crashed(e.to_string()),
        Err(_) => CallResult::TimedOut,
    }
}

/// Run every binding's handler on one message and collect their results, in the order of
/// `bindings`. `receive_count` is what handlers see; `hold` is kept by every call until it
/// really returns; with a `record`, each ack is recorded as soon as it comes; `probes` (from
/// [`admit`]; empty: none) marks the calls that decide a half-open circuit. With tracing on,
/// each call is a consumer span whose parent is `trace` (the message's producer).
pub async fn call_all(
    envelope: &Envelope,
    receive_count: u32,
    bindings: &[Arc<Binding>],
    hold: &Hold,
    record: Option<&Recorder>,
    probes: &[bool],
    trace: Option<&opentelemetry::Context>,
) -> Vec<CallResult> {
    let shared = Arc::new(CallMessage::new(envelope, receive_count));
    // Every binding's call at once, collected in order; they are futures of this task, so no
    // task is spawned per call. The blocking-pool calls are all started (in this closure)
    // before any inline call runs (when `join_all` first polls), so an inline sibling cannot
    // eat into their timeouts.
    let started = Instant::now();
    let calls: Vec<_> = bindings
        .iter()
        .enumerate()
        .map(|(i, binding)| {
            let probe = probes.get(i).copied().unwrap_or(false);
            // Traced: the handler sees its own run as the message's `traceparent`.
            let run = telemetry::Run::start(
                trace,
                &envelope.event,
                &envelope.message_id,
                &binding.label,
            );
            let (message, traced) = match &run {
                Some(run) => {
                    let mut attributes = envelope.attributes.clone();
                    run.stamp(&mut attributes);
                    let message = CallMessage::with_attributes(envelope, &attributes, receive_count);
                    (Arc::new(message), Some(run.context()))
                }
                None => (shared.clone(), None),
            };
            let span = tracing::info_span!("handle", message_id = %envelope.message_id, event = %envelope.event, binding = %binding.label);
            let job = Job {
                message,
                hold: hold.clone(),
                permit: None,
                span,
                traced,
            };
            // A binding with limits starts its call (and its timeout) once they let it.
            let call = if binding.guard.limits.any() {
                Call::Limited(job)
            } else if let Calling::Blocking = binding.calling {
                Call::Blocking(call_blocking(binding, job))
            } else {
                Call::Deferred(job)
            };
            async move {
                let mut probe = probe;
                let result = async {
                let (result, started) = match call {
                    Call::Blocking(task) => (finish(task, started + binding.timeout).await, started),
                    Call::Deferred(job) => (dispatch(binding, job, started).await, started),
                    Call::Limited(mut job) => {
                        // The wait for a limit is bounded by the binding's timeout: a call
                        // that cannot start in that time (its slots held by hung calls) ends
                        // as a timeout without running, and counts as a failure.
                        let Ok(permit) = tokio::time::timeout(
                            binding.timeout,
                            binding.guard.limits.acquire(&binding.name),
                        )
                        .await
                        else {
                            tracing::warn!(binding = %binding.label, message_id = %envelope.message_id, timeout_secs = binding.timeout.as_secs(),
                                "the call waited its whole timeout for the binding's limit and did not run");
                            let result = CallResult::TimedOut;
                            binding.guard.record(health(&result), probe);
                            metrics::counter!(m::HANDLER_CALLS, "binding" => binding.name.clone(), "result" => result_label(&result)).increment(1);
                            return result;
                        };
                        // The circuit may have opened while it waited: then the call does not
                        // run and its message comes back after the cooldown (nothing counted).
                        if !probe {
                            match binding.guard.admit() {
                                Admission::Go { probe: now } => probe = now,
                                Admission::Wait(after) => {
                                    metrics::counter!(m::CIRCUIT_REFUSALS, "binding" => binding.name.clone()).increment(1);
                                    return CallResult::Outcome(Outcome::Retry {
                                        after_secs: wait_secs(after),
                                    });
                                }
                            }
                        }
                        job.permit = Some(permit);
                        let now = Instant::now();
                        (dispatch(binding, job, now).await, now)
                    }
                };
                binding.guard.record(health(&result), probe);
                metrics::histogram!(m::HANDLER_DURATION, "binding" => binding.name.clone())
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!(m::HANDLER_CALLS, "binding" => binding.name.clone(), "result" => result_label(&result))
                    .increment(1);
                // Each ack is recorded as soon as it comes, before the lock is released, so a
                // duplicate delivered later skips this binding even if a sibling fails.
                if let (CallResult::Outcome(Outcome::Ack), Some(record)) = (&result, record) {
                    record.write(envelope, binding).await;
                }
                result
                }
                .await;
                if let Some(run) = run {
                    run.finish(result_label(&result), result.failure().is_some());
                }
                result
            }
        })
        .collect();
    futures_util::future::join_all(calls).await
}

/// One binding's call: started on the blocking pool, to be made (inline, awaited or batched)
/// when polled, or to be made once its limits let it.
enum Call {
    Blocking(tokio::task::JoinHandle<Result<Outcome, String>>),
    Deferred(Job),
    Limited(Job),
}

/// What travels with one binding's call of a message: the message, its slot's `hold` and the
/// binding's limit `permit` (kept until the call really returns), the call's span and trace.
struct Job {
    message: Arc<CallMessage>,
    hold: Hold,
    permit: Option<Permit>,
    span: tracing::Span,
    traced: Option<opentelemetry::Context>,
}

/// Make one binding's call the way its handler is called, its timeout running from
/// `started`. The job's hold and permit last as long as the call: on the blocking pool and in
/// a batch until its thread returns, otherwise until the call ends here.
async fn dispatch(binding: &Arc<Binding>, job: Job, started: Instant) -> CallResult {
    let deadline = started + binding.timeout;
    match &binding.calling {
        Calling::Blocking => finish(call_blocking(binding, job), deadline).await,
        Calling::Inline => call_inline(binding, job),
        Calling::Async => call_async(binding, job, deadline).await,
        Calling::Batch(batches) => call_batched(binding, batches, job).await,
    }
}

/// Call an async handler: its future is polled right here, on this message's task (no thread
/// of its own), and dropped — the call cancelled — at `deadline`.
async fn call_async(binding: &Binding, job: Job, deadline: Instant) -> CallResult {
    let call = telemetry::within(
        job.traced,
        call::handle_async(&binding.handler, &binding.context, &job.message),
    )
    .instrument(job.span);
    match tokio::time::timeout_at(deadline, call).await {
        Ok(outcome) => CallResult::Outcome(outcome),
        Err(_) => CallResult::TimedOut,
    }
}

/// Hand a message to its batch handler's next batch and wait for its result: the message that
/// opens a batch starts the task that gathers and runs it (see [`crate::policy::batch`]).
async fn call_batched(
    binding: &Arc<Binding>,
    batches: &Gatherer<BatchEntry>,
    job: Job,
) -> CallResult {
    let Job {
        message,
        hold,
        permit,
        span,
        traced,
    } = job;
    let (reply, answer) = tokio::sync::oneshot::channel();
    let entry = BatchEntry {
        message,
        hold,
        permit,
        reply,
    };
    // Used only when this message opens a batch: the batch then runs in its own task, with
    // this message's span and trace.
    let owner = binding.clone();
    batches.join(entry, move |batch| async move {
        run_batch(&owner, batch, span, traced).await
    });
    answer.await.unwrap_or_else(|_| {
        CallResult::Crashed("the batch it was in was dropped before its call ended".into())
    })
}

/// Run one batch on the blocking pool with the binding's timeout and answer every message in
/// it. The messages' slots and permits travel with the call until its thread returns. With
/// tracing on, the call runs in the run of the batch's first message.
async fn run_batch(
    binding: &Arc<Binding>,
    batch: Vec<BatchEntry>,
    span: tracing::Span,
    traced: Option<opentelemetry::Context>,
) {
    let count = batch.len();
    metrics::histogram!(m::BATCH_SIZE, "binding" => binding.name.clone()).record(count as f64);
    let mut replies = Vec::with_capacity(count);
    let mut messages = Vec::with_capacity(count);
    let mut keep = Vec::with_capacity(count);
    for entry in batch {
        replies.push(entry.reply);
        messages.push(entry.message);
        keep.push((entry.hold, entry.permit));
    }
    let started = Instant::now();
    let task = {
        let binding = binding.clone();
        tokio::task::spawn_blocking(move || {
            let _keep = keep;
            let _entered = span.enter();
            let _run = telemetry::enter(traced);
            let batch: Vec<_> = messages.iter().map(|m| m.ffi().clone()).collect();
            call::handle_batch(&binding.handler, &binding.context, &batch)
        })
    };
    let results: Vec<CallResult> =
        match tokio::time::timeout_at(started + binding.timeout, task).await {
            Ok(Ok(outcomes)) => outcomes.into_iter().map(CallResult::Outcome).collect(),
            Ok(Err(e)) => vec![CallResult::Crashed(e.to_string()); count],
            Err(_) => vec![CallResult::TimedOut; count],
        };
    for (reply, result) in replies.into_iter().zip(results) {
        let _ = reply.send(result);
    }
}

/// Start a handler call on the blocking pool (the caller abandons it at its timeout). The
/// job's hold and permit travel with the call until its thread really returns.
fn call_blocking(
    binding: &Arc<Binding>,
    job: Job,
) -> tokio::task::JoinHandle<Result<Outcome, String>> {
    let binding = binding.clone();
    tokio::task::spawn_blocking(move || {
        let Job {
            message,
            hold: _hold,
            permit: _permit,
            span,
            traced,
        } = job;
        let _entered = span.enter();
        let _run = telemetry::enter(traced);
        call::handle(
            &binding.handler,
            &binding.context,
            &message,
            binding.isolated,
        )
    })
}

/// Call an `inline = true` handler right here, on the async worker. It cannot be abandoned,
/// so a call past its timeout is only reported (its outcome still counts).
fn call_inline(binding: &Binding, job: Job) -> CallResult {
    let started = std::time::Instant::now();
    let answer = {
        let _entered = job.span.enter();
        let _run = telemetry::enter(job.traced);
        call::handle(
            &binding.handler,
            &binding.context,
            &job.message,
            binding.isolated,
        )
    };
    let took = started.elapsed();
    if took > binding.timeout {
        metrics::counter!(m::INLINE_OVERRUNS, "binding" => binding.name.clone()).increment(1);
        tracing::warn!(binding = %binding.label, took_ms = took.as_millis() as u64, timeout_secs = binding.timeout.as_secs(),
            "an inline handler ran past its timeout, holding up an async worker thread all along; bind handlers that can block without `inline`");
    }
    match answer {
        Ok(outcome) => CallResult::Outcome(outcome),
        Err(crash) => CallResult::Crashed(crash),
    }
}

/// The `result` label of a handler call in `iniesta_handler_calls_total`.
pub fn result_label(result: &CallResult) -> &'static str {
    match result {
        CallResult::Outcome(Outcome::Ack) => "ack",
        CallResult::Outcome(Outcome::Retry { .. }) => "retry",
        CallResult::Outcome(Outcome::DeadLetter { .. }) => "dead_letter",
        CallResult::Outcome(Outcome::Failed { .. }) => "error",
        CallResult::Outcome(Outcome::Panicked { .. }) => "panic",
        CallResult::TimedOut => "timeout",
        CallResult::Crashed(_) => "crashed",
    }
}

impl Recorder {
    /// Record that `binding` acked `envelope`'s message (a failure is logged: at worst a
    /// redelivered duplicate runs the binding again).
    async fn write(&self, envelope: &Envelope, binding: &Binding) {
        let id = completion::id_of(binding);
        if let Err(e) = self
            .locks
            .record_completions(&envelope.message_id, std::slice::from_ref(&id), self.ttl)
            .await
        {
            tracing::warn!(message_id = %envelope.message_id, event = %envelope.event, binding = %binding.label, error = %e,
                "cannot record the completion; a redelivered duplicate may run this binding again");
        }
    }
}
