//! Distributed tracing (`[tracing]`): W3C trace context carried in message attributes, a span
//! for every publish and every handler run, exported over OTLP/HTTP.
//!
//! Off unless `tracing.otlp_endpoint` is set; then, process-wide ([`install`]):
//! - **Publishing** (the CLI, a handler's `ctx.publish`, egress) starts a producer span
//!   `publish {event}` and sends its context as the `traceparent` (and `tracestate`) String
//!   attributes. Its parent is the handler run the publish comes from, else the `traceparent`
//!   the publisher passed itself, else none (a new trace).
//! - **Receiving**: the parent of each handler run is the message's `traceparent`, or, without
//!   one, SQS's `AWSTraceHeader` system attribute (X-Ray's format, set by X-Ray-instrumented
//!   senders). Each binding's call is a consumer span `process {event}`; the handler sees that
//!   span's context as its message's `traceparent` attribute (plugin-api's
//!   `Message::traceparent`), so its own outgoing calls join the trace, and what it publishes
//!   through the host is a child of it (the context travels with the thread that makes the
//!   call; an isolated plugin's publishes are carried out on that thread too).
//!
//! When tracing is off nothing of this runs: each entry point returns after one atomic load.

use std::cell::RefCell;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{
    SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

use crate::config::Config;
use crate::wire::{Attribute, Attributes};

/// The W3C trace-context attribute.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C vendor trace-state attribute.
pub const TRACESTATE: &str = "tracestate";

/// How long one OTLP export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The process's tracer, once [`install`]ed.
struct Installed {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

thread_local! {
    /// The handler run a thread is inside (its consumer span's context), for the publishes it
    /// makes.
    static CURRENT: RefCell<Option<Context>> = const { RefCell::new(None) };
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built.
    #[error("tracing.otlp_endpoint: {0}")]
    Exporter(String),
}

/// Start tracing for this process when the config asks for it (idempotent); `Ok(false)` when
/// it is off. Exports run on `runtime` through the host's HTTP client.
pub fn install(config: &Config, runtime: tokio::runtime::Handle) -> Result<bool, TelemetryError> {
    let Some(endpoint) = &config.tracing.otlp_endpoint else {
        return Ok(false);
    };
    if INSTALLED.get().is_some() {
        return Ok(true);
    }
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let web = crate::web::WebClient::new(endpoint.starts_with("https://"))
        .map_err(TelemetryError::Exporter)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint.clone())
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(OtlpClient { web, runtime })
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let service = config
        .tracing
        .service_name
        .clone()
        .unwrap_or_else(|| config.service.clone());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.tracing.sample_ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    let tracer = provider.tracer("iniesta");
    let _ = INSTALLED.set(Installed { provider, tracer });
    tracing::info!(endpoint = %endpoint, sample_ratio = config.tracing.sample_ratio, "tracing: spans are exported over OTLP");
    Ok(true)
}

/// Export what is left and stop (at the end of `run` and `publish`).
pub async fn shutdown() {
    let Some(installed) = INSTALLED.get() else {
        return;
    };
    let provider = installed.provider.clone();
    // Blocks until the exporter thread is done, and that thread's export runs on this runtime.
    let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    if let Ok(Err(e)) = done {
        tracing::warn!(error = %e, "tracing: the last spans could not be exported");
    }
}

/// Whether spans are made.
pub fn enabled() -> bool {
    INSTALLED.get().is_some()
}

/// A message's attributes as a propagation carrier.
struct Carrier<'a>(&'a Attributes);

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .filter(|a| a.base_type() == "String")
            .map(|a| a.value.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

struct CarrierMut<'a>(&'a mut Attributes);

impl Injector for CarrierMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        // SNS and SQS refuse empty String attributes (an empty `tracestate` is the usual case):
        // only what has a value is sent.
        if value.is_empty() {
            self.0.remove(key);
        } else {
            self.0.insert(key.to_string(), Attribute::string(value));
        }
    }
}

/// The trace a received message belongs to: its `traceparent` attribute, else SQS's
/// `AWSTraceHeader` (X-Ray); `None` when it carries neither (or tracing is off). A malformed
/// header is ignored (the handler run starts a new trace).
pub fn parent_of(attributes: &Attributes, aws_trace_header: Option<&str>) -> Option<Context> {
    if !enabled() {
        return None;
    }
    let from_w3c = TraceContextPropagator::new().extract(&Carrier(attributes));
    if from_w3c.span().span_context().is_valid() {
        return Some(from_w3c);
    }
    let xray = opentelemetry_aws::trace::xray_propagator::span_context_from_str(aws_trace_header?)?;
    xray.is_valid()
        .then(|| Context::new().with_remote_span_context(xray))
}

/// A producer span for a publish of `event`, its context written into `attributes`
/// (`traceparent`, `tracestate`); `None` when tracing is off. The span ends when dropped.
pub fn publishing(event: &str, attributes: &mut Attributes) -> Option<Publishing> {
    let installed = INSTALLED.get()?;
    let parent = CURRENT
        .with(|c| c.borrow().clone())
        .or_else(|| {
            let given = TraceContextPropagator::new().extract(&Carrier(attributes));
            given.span().span_context().is_valid().then_some(given)
        })
        .unwrap_or_default();
    let span = installed
        .tracer
        .span_builder(format!("publish {event}"))
        .with_kind(SpanKind::Producer)
        .with_attributes([
            KeyValue::new("messaging.system", "aws_sns"),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("iniesta.event", event.to_string()),
        ])
        .start_with_context(&installed.tracer, &parent);
    let cx = parent.with_span(span);
    attributes.remove(TRACESTATE);
    TraceContextPropagator::new().inject_context(&cx, &mut CarrierMut(attributes));
    Some(Publishing(cx))
}

/// A publish's producer span, ended when dropped (after the publish returned).
pub struct Publishing(Context);

impl Drop for Publishing {
    fn drop(&mut self) {
        self.0.span().end();
    }
}

/// One handler run's consumer span.
pub struct Run {
    cx: Context,
}

impl Run {
    /// Start the span of `binding`'s call for a message of `event` whose trace is `parent`;
    /// `None` when tracing is off.
    pub fn start(
        parent: Option<&Context>,
        event: &str,
        message_id: &str,
        binding: &str,
    ) -> Option<Run> {
        let installed = INSTALLED.get()?;
        let parent = parent.cloned().unwrap_or_default();
        let span = installed
            .tracer
            .span_builder(format!("process {event}"))
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new("messaging.system", "aws_sqs"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.message.id", message_id.to_string()),
                KeyValue::new("iniesta.event", event.to_string()),
                KeyValue::new("iniesta.binding", binding.to_string()),
            ])
            .start_with_context(&installed.tracer, &parent);
        Some(Run {
            cx: parent.with_span(span),
        })
    }

    /// `attributes` with this run's context as their `traceparent` (what the handler sees).
    pub fn stamp(&self, attributes: &mut Attributes) {
        attributes.remove(TRACEPARENT);
        attributes.remove(TRACESTATE);
        TraceContextPropagator::new().inject_context(&self.cx, &mut CarrierMut(attributes));
    }

    /// This run's context, to [`enter`] on the thread that makes the call.
    pub fn context(&self) -> Context {
        self.cx.clone()
    }

    /// End the span with the call's result (`result` as in `iniesta_handler_calls_total`).
    pub fn finish(self, result: &'static str, failed: bool) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("iniesta.result", result));
        if failed {
            span.set_status(Status::error(result));
        }
        span.end();
    }
}

/// Make the run of `context` (from [`Run::context`]) the current one on this thread until the
/// guard is dropped: the handler call's publishes become children of the run. `None`: nothing.
pub fn enter(context: Option<Context>) -> Option<Entered> {
    let context = context?;
    let before = CURRENT.with(|c| c.replace(Some(context)));
    Some(Entered { before })
}

/// `future`, with the run of `context` current on its thread during each of its polls (an
/// async handler's publishes become children of the run, whichever worker polls it). `None`:
/// the future as it is.
pub fn within<F: std::future::Future>(context: Option<Context>, future: F) -> Within<F> {
    Within { context, future }
}

pin_project_lite::pin_project! {
    /// See [`within`].
    pub struct Within<F> {
        context: Option<Context>,
        #[pin]
        future: F,
    }
}

impl<F: std::future::Future> std::future::Future for Within<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        let _entered = enter(this.context.clone());
        this.future.poll(cx)
    }
}

/// Restores the thread's previous current run when dropped.
pub struct Entered {
    before: Option<Context>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        let before = self.before.take();
        CURRENT.with(|c| *c.borrow_mut() = before);
    }
}

/// The OTLP exporter's HTTP client: the host's hyper client, each request run on the host's
/// runtime (the exporter's own thread has none).
struct OtlpClient {
    web: crate::web::WebClient,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for OtlpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OtlpClient")
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let request = hyper::Request::from_parts(parts, http_body_util::Full::new(body));
        let web = self.web.clone();
        let answer = self
            .runtime
            .spawn(async move { web.post(request, EXPORT_TIMEOUT).await })
            .await??;
        Ok(http::Response::builder()
            .status(answer.status)
            .body(bytes::Bytes::new())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_costs_nothing_and_changes_nothing() {
        let mut attributes = Attributes::new();
        assert!(publishing("E", &mut attributes).is_none());
        assert!(attributes.is_empty());
        assert!(Run::start(None, "E", "m", "b").is_none());
        assert!(parent_of(
            &attributes,
            Some("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1")
        )
        .is_none());
    }

    #[test]
    fn the_xray_header_reads_as_a_w3c_parent() {
        let xray = opentelemetry_aws::trace::xray_propagator::span_context_from_str(
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
        )
        .expect("parses");
        assert_eq!(
            xray.trace_id().to_string(),
            "5759e988bd862e3fe1be46a994272793"
        );
        assert_eq!(xray.span_id().to_string(), "53995c3f42cd8ad8");
        assert!(xray.is_sampled());
    }
}
