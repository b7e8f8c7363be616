//! The host's own HTTP client: plain HTTP, or HTTPS through rustls with the system's CA
//! certificates. The error sinks (webhook, Sentry), the OTLP span exporter and the lean SQS
//! client (`broker::sqs_http`) POST through it.

use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// What an endpoint answered.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The response headers (Sentry's rate limits are read from them).
    pub headers: hyper::HeaderMap,
    /// The response body; `None` when it could not be read whole or was over
    /// [`MAX_ANSWER_BYTES`].
    pub body: Option<Bytes>,
}

/// The largest response body [`WebClient::post`] reads: an SQS receive of ten 1 MiB messages
/// fits even when every character of every body is escaped (`\u0001`, six bytes each).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// Why a POST got no answer.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The connection or the exchange failed.
    #[error("{0}")]
    Transport(String),
    /// No answer within the timeout.
    #[error("no answer within {} s", .0.as_secs())]
    Timeout(Duration),
}

/// How long a connection may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The User-Agent of every POST.
pub const USER_AGENT: &str = concat!("iniesta/", env!("CARGO_PKG_VERSION"));

/// A POST of `body` to `uri` as `content_type`, with iniesta's User-Agent and `headers`.
pub fn post_request(
    uri: hyper::Uri,
    content_type: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<hyper::Request<Full<Bytes>>, hyper::http::Error> {
    let mut request = hyper::Request::post(uri)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .header(hyper::header::USER_AGENT, USER_AGENT);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Full::new(Bytes::from(body)))
}

/// A plain-HTTP or HTTP-and-HTTPS client.
#[derive(Clone)]
pub enum WebClient {
    /// `http://` only.
    Http(Client<HttpConnector, Full<Bytes>>),
    /// `https://` (and `http://`).
    Https(Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>),
}

impl WebClient {
    /// A client for `https` or plain-HTTP endpoints; `Err` names why HTTPS is unavailable.
    /// Connections are pooled and kept alive, connect within [`CONNECT_TIMEOUT`], and send
    /// without Nagle's delay (a small request waiting on a delayed ACK costs 40 ms).
    pub fn new(https: bool) -> Result<WebClient, String> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        if !https {
            return Ok(WebClient::Http(
                Client::builder(TokioExecutor::new()).build(http),
            ));
        }
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::aws_lc_rs::default_provider())
            .map_err(|e| {
                format!(
                    "https:// needs the system's CA certificates, which cannot be loaded ({e}); install them (e.g. the ca-certificates package) or use http:// through a proxy"
                )
            })?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(WebClient::Https(
            Client::builder(TokioExecutor::new()).build(connector),
        ))
    }

    /// Send `request` and read the whole answer (so the connection can be reused), within
    /// `timeout`.
    pub async fn post(
        &self,
        request: hyper::Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Answer, PostError> {
        let exchange = async {
            let response = match self {
                WebClient::Http(c) => c.request(request).await,
                WebClient::Https(c) => c.request(request).await,
            }
            .map_err(|e| {
                // The client's error names the failing step; its source says why.
                PostError::Transport(match std::error::Error::source(&e) {
                    Some(cause) => format!("{e}: {cause}"),
                    None => e.to_string(),
                })
            })?;
            let status = response.status().as_u16();
            let (parts, body) = response.into_parts();
            let body = http_body_util::Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .ok()
                .map(|collected| collected.to_bytes());
            Ok(Answer {
                status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| PostError::Timeout(timeout))?
    }
}
