//! `http-notify`: an async handler that posts each event it takes to an HTTP service.
//!
//! ```toml
//! [[bindings]]
//! events = ["Order.Created.*"]
//! plugin = "http-notify"
//! config = { url = "https://hooks.example.com/orders", timeout_ms = 5000 }
//! ```
//!
//! Each message becomes one `POST {url}` with the JSON body
//! `{"id": ..., "event": ..., "body": <the message's JSON body>}` and an `Idempotency-Key`
//! header (the message id, so a receiver can drop a redelivered duplicate). The answer decides:
//!
//! | the service answers | the handler returns | the host then |
//! |---|---|---|
//! | 2xx | `Ack` | deletes the message |
//! | 429 or 503 | `Retry` after its `Retry-After` seconds (else 5) | redelivers it then |
//! | another 4xx | `DeadLetter` with the status | moves it to the dead-letter queue |
//! | 5xx, no answer within `timeout_ms`, a network error | an error | redelivers it after the visibility timeout |
//!
//! A body that is not JSON is dead-lettered without a request. The request awaits on the
//! plugin's reactor: while the service takes its time, no thread of the host waits for it.
//! The client (its connection pool, its TLS setup) is built once per binding.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use iniesta_plugin_api::{
    export_plugin, AsyncHandler, Config, Context, HandlerResult, Message, Outcome,
};

type Https = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// Posts events to one URL.
pub struct Notify {
    url: hyper::Uri,
    timeout: Duration,
    client: Client<Https, Full<Bytes>>,
}

impl Notify {
    /// From the binding's config: `url` (http or https, required) and `timeout_ms` (default
    /// 5000).
    pub fn new(config: Config) -> Result<Notify, String> {
        let url: hyper::Uri = config
            .get_str("url")
            .ok_or("config needs `url`, the service to post events to")?
            .parse()
            .map_err(|e| format!("`url` is not a URL: {e}"))?;
        if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
            return Err(format!(
                "`url` must be an http:// or https:// URL, not {url}"
            ));
        }
        let timeout = Duration::from_millis(config.get_u64("timeout_ms").unwrap_or(5000));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::aws_lc_rs::default_provider())
            .map_err(|e| format!("cannot read the system's TLS roots: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Notify {
            url,
            timeout,
            client,
        })
    }
}

impl AsyncHandler for Notify {
    async fn handle(&self, message: &Message<'_>, ctx: &Context<'_>) -> HandlerResult {
        let body: serde_json::Value = match message.json() {
            Ok(body) => body,
            Err(e) => return Ok(Outcome::dead_letter(format!("the body is not JSON: {e}"))),
        };
        let payload = serde_json::json!({
            "id": message.id(),
            "event": message.event(),
            "body": body,
        });
        let request = hyper::Request::post(self.url.clone())
            .header("content-type", "application/json")
            .header("idempotency-key", message.id())
            .body(Full::new(Bytes::from(payload.to_string())))?;
        let response = match tokio::time::timeout(self.timeout, self.client.request(request)).await
        {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => return Err(format!("cannot reach {}: {e}", self.url).into()),
            Err(_) => {
                return Err(format!("{} did not answer within {:?}", self.url, self.timeout).into())
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u32>().ok());
        // Read the answer whole (the connection goes back to the pool).
        let _ = response.into_body().collect().await;
        match status.as_u16() {
            200..=299 => Ok(Outcome::Ack),
            429 | 503 => {
                let after = retry_after.unwrap_or(5);
                ctx.info(&format!(
                    "{} is busy ({status}); retrying in {after} s",
                    self.url
                ));
                Ok(Outcome::retry(after))
            }
            400..=499 => Ok(Outcome::dead_letter(format!(
                "{} refused the event: {status}",
                self.url
            ))),
            _ => Err(format!("{} failed: {status}", self.url).into()),
        }
    }
}

export_plugin! {
    name: "http-notify",
    async_handlers: {
        "http-notify" => Notify::new,
    },
}
