//! Distributed tracing (`[tracing]`): spans exported over OTLP/HTTP to a receiver in this
//! test process, for publish → consume → publish → consume on moto, and X-Ray's
//! `AWSTraceHeader` as a parent.

use crate::common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeValue};
use common::aws::{ok, queue_url, sqs, start_host, Moto};
use common::{rt, Scratch};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

const LIMIT: Duration = Duration::from_secs(90);
const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:global";

/// One exported span, as the receiver decoded it.
#[derive(Debug, Clone)]
struct Span {
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    kind: i32,
    service: String,
}

/// An OTLP/HTTP trace receiver on a free loopback port, keeping every span it is sent.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    _runtime: tokio::runtime::Runtime,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Receiver {
    fn start() -> Receiver {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let kept = spans.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let kept = kept.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let kept = kept.clone();
                            async move {
                                use http_body_util::BodyExt as _;
                                let body = request
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let export = ExportTraceServiceRequest::decode(body)
                                    .expect("an OTLP protobuf export");
                                for resource in export.resource_spans {
                                    let service = resource
                                        .resource
                                        .iter()
                                        .flat_map(|r| r.attributes.iter())
                                        .find(|a| a.key == "service.name")
                                        .and_then(|a| a.value.as_ref())
                                        .map(|v| format!("{:?}", v.value))
                                        .unwrap_or_default();
                                    for scope in resource.scope_spans {
                                        for span in scope.spans {
                                            kept.lock().expect("spans").push(Span {
                                                trace_id: hex(&span.trace_id),
                                                span_id: hex(&span.span_id),
                                                parent_span_id: hex(&span.parent_span_id),
                                                name: span.name,
                                                kind: span.kind,
                                                service: service.clone(),
                                            });
                                        }
                                    }
                                }
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                    http_body_util::Full::new(hyper::body::Bytes::new()),
                                ))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            spans,
            _runtime: runtime,
        }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().expect("spans").clone()
    }

    fn url(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }
}

fn config(s: &Scratch, endpoint: &str, otlp: &str) -> PathBuf {
    s.write(
        "iniesta.toml",
        &format!(
            "service = \"receiver\"\nenv = \"test\"\ninitialization = [\"EVENT_POLLING\", \"SNS_PRODUCER\"]\n\
             [broker]\nkind = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n\
             [sns]\ntopic_arn = \"{TOPIC}\"\n\
             [sqs]\nwait_time_seconds = 1\nvisibility_timeout = 5\nfilters = [\"Trace.*\"]\n\
             [tracing]\notlp_endpoint = \"{otlp}\"\n\
             [plugins]\ndirs = [\"{}\"]\n\
             [[bindings]]\nevents = [\"Trace.Start.*\"]\nplugin = \"echo\"\nconfig = {{ publish = \"Trace.Next\", quiet = true }}\n\
             [[bindings]]\nevents = [\"Trace.Next.*\"]\nplugin = \"ledger\"\nconfig = {{ path = \"{}\" }}\n",
            common::plugin_dir().display(),
            s.path("ledger.jsonl").display(),
        ),
    )
}

/// The kinds of OTLP spans (opentelemetry.proto.trace.v1.Span.SpanKind).
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

#[test]
fn one_trace_links_publish_consume_publish_consume() {
    let moto = Moto::start();
    let receiver = Receiver::start();
    let s = Scratch::new();
    let config = config(&s, &moto.url(), &receiver.url());
    ok(&config, &["setup"]);
    // 1. The CLI's publish: a producer span, exported before the command exits.
    ok(&config, &["publish", "Trace.Start", r#"{"n": 1}"#]);
    // 2–4. echo consumes it and publishes Trace.Next; ledger consumes that.
    let host = start_host(&config, s.path("host.log"));
    s.wait_for("Trace.Next handled", LIMIT, || {
        !s.ledger("ledger.jsonl").is_empty()
    });
    // Stopping flushes the host's spans.
    host.stop();
    s.wait_for("four spans", LIMIT, || receiver.spans().len() >= 4);
    let spans = receiver.spans();
    let find = |name: &str, kind: i32| {
        spans
            .iter()
            .find(|s| s.name == name && s.kind == kind)
            .unwrap_or_else(|| panic!("no {name} span (kind {kind}) in {spans:#?}"))
            .clone()
    };
    let publish_start = find("publish Trace.Start.receiver", PRODUCER);
    let process_start = find("process Trace.Start.receiver", CONSUMER);
    let publish_next = find("publish Trace.Next.receiver", PRODUCER);
    let process_next = find("process Trace.Next.receiver", CONSUMER);
    let trace = &publish_start.trace_id;
    for span in [&process_start, &publish_next, &process_next] {
        assert_eq!(&span.trace_id, trace, "one trace: {spans:#?}");
    }
    assert_eq!(
        publish_start.parent_span_id, "",
        "the CLI's publish starts the trace"
    );
    assert_eq!(process_start.parent_span_id, publish_start.span_id);
    assert_eq!(
        publish_next.parent_span_id, process_start.span_id,
        "the handler's publish is a child of its run"
    );
    assert_eq!(process_next.parent_span_id, publish_next.span_id);
    assert!(
        publish_start.service.contains("receiver"),
        "{}",
        publish_start.service
    );
    // The handler saw its own run as the message's traceparent.
    let line = &s.ledger("ledger.jsonl")[0];
    assert_eq!(
        line["attributes"]["traceparent"],
        format!("00-{trace}-{}-01", process_next.span_id),
        "{line}"
    );
}

#[test]
fn an_xray_trace_header_is_the_parent_of_the_handler_run() {
    let moto = Moto::start();
    let receiver = Receiver::start();
    let s = Scratch::new();
    let config = config(&s, &moto.url(), &receiver.url());
    ok(&config, &["setup"]);
    let header = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";
    rt().block_on(async {
        let url = queue_url(&moto.url(), "iniesta-test-receiver").await;
        sqs(&moto.url())
            .send_message()
            .queue_url(url)
            .message_body("{}")
            .message_attributes(
                "iniesta_pass",
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value("Trace.Next.xray")
                    .build()
                    .expect("attribute"),
            )
            .message_system_attributes(
                aws_sdk_sqs::types::MessageSystemAttributeNameForSends::AwsTraceHeader,
                MessageSystemAttributeValue::builder()
                    .data_type("String")
                    .string_value(header)
                    .build()
                    .expect("system attribute"),
            )
            .send()
            .await
            .expect("send");
    });
    let host = start_host(&config, s.path("host.log"));
    s.wait_for("the message handled", LIMIT, || {
        !s.ledger("ledger.jsonl").is_empty()
    });
    host.stop();
    s.wait_for("its span", LIMIT, || {
        receiver
            .spans()
            .iter()
            .any(|s| s.name == "process Trace.Next.xray")
    });
    let spans = receiver.spans();
    let run = spans
        .iter()
        .find(|s| s.name == "process Trace.Next.xray")
        .expect("span");
    assert_eq!(run.trace_id, "5759e988bd862e3fe1be46a994272793");
    assert_eq!(run.parent_span_id, "53995c3f42cd8ad8");
}
