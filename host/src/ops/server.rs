//! The HTTP endpoint for `[metrics] listen`: `GET /metrics` (Prometheus text format) and
//! `GET /health` or `/readyz` (readiness: `200 ready`, or `503` with the reason) and `GET /livez`
//! (liveness: `200 alive`, or `503` naming the core loops that ended). HTTP/1.1 over plain TCP: bind it to
//! a loopback or private address, or put a proxy in front of it. With `[console] enabled` it
//! also serves the operator console (`/`, `/api/...`; see [`super::console`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use super::health::Health;
use super::OpsError;
use crate::tasks::Tasks;

/// What the endpoint serves.
pub struct Endpoint {
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Answers `/health`, `/readyz` and `/livez`.
    pub health: Arc<Health>,
    /// Serves `/` and `/api/...` when `[console] enabled`.
    pub console: Option<Arc<super::console::Console>>,
}

/// Bind the configured address (before anything else starts, so a taken port fails start-up).
pub async fn bind(addr: &str) -> Result<TcpListener, OpsError> {
    let parsed: SocketAddr = addr
        .parse()
        .map_err(|_| OpsError::Address(addr.to_string()))?;
    TcpListener::bind(parsed)
        .await
        .map_err(|source| OpsError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// Serve until `tasks` stop (open connections then finish their request in progress and
/// close); also keeps the recorder's histograms tidy. Every task is one of `tasks`.
pub fn serve(listener: TcpListener, endpoint: Arc<Endpoint>, tasks: &Tasks) {
    let upkeep = endpoint.metrics.clone();
    let stopping = tasks.stopping();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = stopping.cancelled() => return,
                _ = tick.tick() => upkeep.run_upkeep(),
            }
        }
    });
    let connections = tasks.clone();
    let stopping = tasks.stopping();
    tasks.spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stopping.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, _) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let endpoint = endpoint.clone();
            let stopping = stopping.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let endpoint = endpoint.clone();
                    async move {
                        if let Some(console) = &endpoint.console {
                            if super::console::Console::handles(request.uri().path()) {
                                return Ok::<_, Infallible>(console.answer(request).await);
                            }
                        }
                        Ok::<_, Infallible>(answer(&endpoint, &request))
                    }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(connection);
                let served = tokio::select! {
                    served = connection.as_mut() => served,
                    _ = stopping.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(e) = served {
                    tracing::debug!(error = %e, "metrics endpoint: connection ended with an error");
                }
            });
        }
    });
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

fn answer(endpoint: &Endpoint, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET\n".into(),
        );
    }
    match request.uri().path() {
        "/metrics" => {
            super::metrics::collect_process();
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                endpoint.metrics.render(),
            )
        }
        "/livez" => match endpoint.health.liveness() {
            Ok(()) => text(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "alive\n".into(),
            ),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                format!("not alive: {reason}\n"),
            ),
        },
        "/health" | "/readyz" => match endpoint.health.status() {
            Ok(()) => text(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "ready\n".into(),
            ),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                format!("not ready: {reason}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try /metrics, /livez, /readyz or /health\n".into(),
        ),
    }
}
