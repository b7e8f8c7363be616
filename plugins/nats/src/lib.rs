//! Example egress and ingress plugin for NATS (core NATS through `async-nats`).
//!
//! Egress: every published event goes to a subject (`subject`, default `{event}`: the event
//! name, e.g. `Order.Created.shop`), its attributes as headers plus `Nats-Msg-Id` (the event
//! id, for JetStream deduplication when a stream captures the subject). `publish` returns
//! once the message is flushed to a connected server; while the server is unreachable it
//! fails at once, and the host keeps the event in its outbox until NATS is back.
//!
//! Ingress: subscribes to `subject` (wildcards allowed, optional `queue_group`) and hands each
//! message to the host: the event name is the `iniesta_pass` header (`event_header`) when
//! present, else the subject without `strip_prefix`. Core NATS has no acknowledgements, so
//! this is at-most-once: a message whose handlers fail is logged and not redelivered.
//!
//! Settings (`[[egress]]`/`[[ingress]]` `config`, over the credential profile
//! `[nats.PROFILE]` from the acct file): `url` (default `nats://127.0.0.1:4222`), `user` +
//! `password` or `token`, `name`, `subject`, `queue_group`, `event_header`, `strip_prefix`,
//! `timeout_ms` (connect and flush, default 5000). Error texts never contain credentials.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::header::HeaderMap;
use futures_util::StreamExt;
use iniesta_plugin_api::{
    export_plugin, Config, Egress, EgressError, Event, Incoming, Ingress, IngressOutcome,
    IngressSink,
};
use serde::Deserialize;

/// The settings, from the profile and the entry's `config`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "default_url")]
    url: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    queue_group: Option<String>,
    #[serde(default = "default_event_header")]
    event_header: String,
    #[serde(default)]
    strip_prefix: Option<String>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
}

fn default_url() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_event_header() -> String {
    "iniesta_pass".into()
}
fn default_timeout_ms() -> u64 {
    5000
}

impl Settings {
    fn from(config: &Config) -> Result<Settings, String> {
        // serde's message names the field, never its value.
        let settings: Settings = config.parse().map_err(|e| format!("nats: {e}"))?;
        if settings.user.is_some() != settings.password.is_some() {
            return Err("nats: `user` and `password` go together".into());
        }
        Ok(settings)
    }

    fn options(&self) -> async_nats::ConnectOptions {
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(self.timeout())
            .name(self.name.clone().unwrap_or_else(|| "iniesta".into()));
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        options
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(1))
    }

    /// The server address without any credentials, for messages.
    fn server(&self) -> String {
        let rest = self
            .url
            .split_once("://")
            .map(|(_, r)| r)
            .unwrap_or(&self.url);
        let host = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
        host.to_string()
    }
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("iniesta-nats")
        .enable_all()
        .build()
        .map_err(|e| format!("nats: cannot start a runtime: {e}"))
}

/// Publishes every event to NATS.
pub struct NatsEgress {
    settings: Settings,
    subject: String,
    runtime: Option<tokio::runtime::Runtime>,
    client: Mutex<Option<async_nats::Client>>,
}

impl NatsEgress {
    /// Build from the config; connects on the first publish, so a server that is down now
    /// does not stop the host (its events wait in the host's outbox).
    pub fn new(config: Config) -> Result<Self, String> {
        let settings = Settings::from(&config)?;
        let subject = settings.subject.clone().unwrap_or_else(|| "{event}".into());
        Ok(Self {
            settings,
            subject,
            runtime: Some(runtime(1)?),
            client: Mutex::new(None),
        })
    }

    fn client(&self, rt: &tokio::runtime::Runtime) -> Result<async_nats::Client, String> {
        let mut slot = self
            .client
            .lock()
            .map_err(|_| "nats: client lock poisoned".to_string())?;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let options = self.settings.options();
        let url = self.settings.url.clone();
        let client = rt
            .block_on(async move { options.connect(url).await })
            .map_err(|e| format!("cannot connect to NATS at {}: {e}", self.settings.server()))?;
        *slot = Some(client.clone());
        Ok(client)
    }
}

impl Drop for NatsEgress {
    fn drop(&mut self) {
        // The host may drop this on one of its async threads, where dropping a runtime
        // would panic.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Egress for NatsEgress {
    fn publish(&self, event: &Event<'_>) -> Result<String, EgressError> {
        let rt = self.runtime.as_ref().ok_or("nats: runtime gone")?;
        let client = self.client(rt)?;
        if client.connection_state() != State::Connected {
            // The client reconnects in the background; fail now so the host keeps the
            // event in its outbox instead of a buffer that dies with the process.
            return Err(format!(
                "not connected to NATS at {} (reconnecting)",
                self.settings.server()
            )
            .into());
        }
        let subject = self.subject.replace("{event}", event.name());
        let mut headers = HeaderMap::new();
        for a in event.attributes() {
            headers.insert(a.name, a.value);
        }
        headers.insert("Nats-Msg-Id", event.id());
        let body = bytes::Bytes::copy_from_slice(event.body());
        let timeout = self.settings.timeout();
        let sent = rt.block_on(async move {
            tokio::time::timeout(timeout, async {
                client
                    .publish_with_headers(subject, headers, body)
                    .await
                    .map_err(|e| e.to_string())?;
                client.flush().await.map_err(|e| e.to_string())
            })
            .await
        });
        match sent {
            Ok(Ok(())) => Ok(String::new()),
            Ok(Err(e)) => Err(format!("NATS publish failed: {e}").into()),
            Err(_) => Err(format!(
                "NATS did not take the message within {} ms",
                timeout.as_millis()
            )
            .into()),
        }
    }
}

/// Subscribes to a subject and hands every message to the host.
pub struct NatsIngress {
    stop: Mutex<Option<tokio::sync::watch::Sender<bool>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl NatsIngress {
    /// Start consuming on a thread of its own (with its own runtime).
    pub fn start(config: Config, sink: IngressSink) -> Result<Self, String> {
        let settings = Settings::from(&config)?;
        let Some(subject) = settings.subject.clone().filter(|s| !s.trim().is_empty()) else {
            return Err(
                "nats ingress: `subject` is required, e.g. config = { subject = \"orders.>\" }"
                    .into(),
            );
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("iniesta-nats-ingress".into())
            .spawn(move || consume(settings, subject, sink, stopped))
            .map_err(|e| format!("nats ingress: cannot start its thread: {e}"))?;
        Ok(Self {
            stop: Mutex::new(Some(stop)),
            thread: Mutex::new(Some(thread)),
        })
    }
}

impl Ingress for NatsIngress {
    fn stop(&self) {
        if let Ok(mut stop) = self.stop.lock() {
            if let Some(stop) = stop.take() {
                let _ = stop.send(true);
            }
        }
        if let Ok(mut thread) = self.thread.lock() {
            if let Some(thread) = thread.take() {
                let _ = thread.join();
            }
        }
    }
}

fn incoming(message: &async_nats::Message, settings: &Settings) -> Incoming {
    let mut attributes = Vec::new();
    let mut event = None;
    let mut id = String::new();
    if let Some(headers) = &message.headers {
        for (name, values) in headers.iter() {
            let name: &str = name.as_ref();
            let Some(value) = values.first() else {
                continue;
            };
            let value = value.as_str().to_string();
            if name == settings.event_header {
                event = Some(value);
            } else if name == "Nats-Msg-Id" {
                id = value;
            } else {
                let data_type = if name == "version" {
                    "Number"
                } else {
                    "String"
                };
                attributes.push((name.to_string(), data_type.to_string(), value));
            }
        }
    }
    let subject = message.subject.as_str();
    let event = event.unwrap_or_else(|| {
        settings
            .strip_prefix
            .as_deref()
            .and_then(|p| subject.strip_prefix(p))
            .unwrap_or(subject)
            .to_string()
    });
    Incoming {
        id,
        event,
        body: message.payload.to_vec(),
        attributes,
    }
}

fn consume(
    settings: Settings,
    subject: String,
    sink: IngressSink,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let rt = match runtime(1) {
        Ok(rt) => rt,
        Err(e) => return sink.error(&e),
    };
    // Messages the client dropped because this consumer fell behind (its subscription buffer
    // was full): core NATS keeps no copy, so they are reported, never silently lost.
    let dropped = Arc::new(AtomicU64::new(0));
    let counter = dropped.clone();
    let options = settings
        .options()
        .retry_on_initial_connect()
        .event_callback(move |event| {
            if let async_nats::Event::SlowConsumer(_) = event {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            std::future::ready(())
        });
    let url = settings.url.clone();
    let (sub_subject, group) = (subject.clone(), settings.queue_group.clone());
    let connect = async move {
        let client = options.connect(url).await.map_err(|e| e.to_string())?;
        let subscriber = match group {
            Some(group) => client.queue_subscribe(sub_subject, group).await,
            None => client.subscribe(sub_subject).await,
        }
        .map_err(|e| e.to_string())?;
        // Wait until the server has the subscription, so nothing published after start-up
        // is missed.
        client.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((client, subscriber))
    };
    // The server may be down at start: keep trying (saying so), and stop when asked to.
    let subscribed = rt.block_on(async {
        tokio::pin!(connect);
        let mut said = false;
        loop {
            tokio::select! {
                result = &mut connect => return Some(result),
                _ = stopped.changed() => return None,
                _ = tokio::time::sleep(settings.timeout()), if !said => {
                    said = true;
                    sink.warn(&format!(
                        "nats ingress: {} does not answer yet; still trying to subscribe to `{subject}`",
                        settings.server()
                    ));
                }
            }
        }
    });
    let (client, mut subscriber) = match subscribed {
        None => return rt.shutdown_background(),
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            return sink.error(&format!(
                "cannot subscribe to `{subject}` at {}: {e}",
                settings.server()
            ))
        }
    };
    sink.info(&format!(
        "nats ingress subscribed to `{subject}` at {}",
        settings.server()
    ));
    loop {
        let next = rt.block_on(async {
            tokio::select! {
                m = subscriber.next() => m,
                _ = stopped.changed() => None,
            }
        });
        let Some(message) = next else { break };
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            sink.error(&format!(
                "nats ingress on `{subject}` fell behind: the client dropped at least {lost} message(s) (slow consumer; core NATS cannot redeliver them). Handle faster, or use a queue group to share the subject among hosts"
            ));
        }
        let incoming = incoming(&message, &settings);
        match sink.submit(&incoming) {
            IngressOutcome::Ack => {}
            IngressOutcome::Retry { reason, .. } => sink.warn(&format!(
                "`{}` on `{}` was not handled ({reason}); core NATS cannot redeliver it: dropped",
                incoming.event, message.subject
            )),
            IngressOutcome::DeadLetter { reason } => sink.warn(&format!(
                "`{}` on `{}` was dead-lettered ({reason}); dropped",
                incoming.event, message.subject
            )),
        }
    }
    rt.block_on(async move {
        let _ = subscriber.unsubscribe().await;
        let _ = client.flush().await;
    });
    rt.shutdown_background();
}

export_plugin! {
    name: "nats",
    egress: {
        "nats" => NatsEgress::new,
    },
    ingress: {
        "nats" => NatsIngress::start,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_is_named_without_credentials() {
        let settings = Settings::from(&Config::from_value(serde_json::json!({
            "url": "nats://alice:s3cret@127.0.0.1:4222", "user": "alice", "password": "s3cret"
        })))
        .expect("valid");
        assert_eq!(settings.server(), "127.0.0.1:4222");
    }

    #[test]
    fn user_without_password_is_refused() {
        let e = Settings::from(&Config::from_value(serde_json::json!({ "user": "alice" })))
            .err()
            .expect("refused");
        assert!(e.contains("password"), "{e}");
    }

    #[test]
    fn unknown_settings_are_refused_by_name() {
        let e = Settings::from(&Config::from_value(
            serde_json::json!({ "passwrd": "s3cret" }),
        ))
        .err()
        .expect("refused");
        assert!(e.contains("passwrd") && !e.contains("s3cret"), "{e}");
    }
}
