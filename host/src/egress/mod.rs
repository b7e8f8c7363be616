//! Publishing: turning an event into a wire message and sending it out.
//!
//! Every publish — from the CLI or from a handler through its context — goes through a
//! [`Publisher`], which applies the wire format (`{event}.{service}` under the event key,
//! `version`) and the size limit before any broker call, then hands the message to the
//! destination's [`batch::Batcher`], which shares calls (`PublishBatch`, `SendMessageBatch`)
//! between concurrent publishes.
//!
//! Without `[[egress]]` entries a topic publish goes to the topic, as it always did. With
//! them, it fans out to every entry ([`fanout`]): the built-ins [`builtin`] (`sns`, `sqs`)
//! and plugin egresses ([`plugin`]), each constructed with its credential profile
//! ([`crate::acct`]); an egress that fails is retried with backoff and its events wait in a
//! durable [`outbox`]. `publish --queue` always goes straight to the own queue.

pub mod batch;
pub mod builtin;
pub mod config;
pub mod fanout;
pub mod media_type;
pub mod outbox;
pub mod plugin;
pub mod startup;

use std::sync::Arc;

use crate::acct::{AcctError, Profiles};
use crate::broker::fifo::{is_fifo, FifoSettings};
use crate::broker::{Broker, BrokerError, Target};
use crate::claim_check::{self, ClaimCheck, Service, StoreError};
use crate::config::{Config, InitializationType, PayloadsConfig, Problem};
use crate::plugins::PluginSet;
use crate::wire::{self, Attributes, EncodeError};
use batch::LazyBatcher;
use fanout::{Fanout, NamedEgress, RetrySettings};
use outbox::{Outbox, OutboxError};

/// Where a publish goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The global topic (SNS_PRODUCER).
    Topic,
    /// Straight to this service's queue (`publish --queue`).
    OwnQueue,
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The message is not valid (empty event, too large, bad attribute).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The broker refused or failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The body was too large to send and could not be stored in S3.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An egress failed and its outbox could not keep the event.
    #[error("an egress failed and the outbox cannot keep the event: {0}")]
    Outbox(#[from] OutboxError),
    /// Publishing to the topic needs SNS_PRODUCER.
    #[error("this config does not publish: add \"SNS_PRODUCER\" to `initialization` (or use --queue to send to the queue)")]
    NotProducer,
}

/// A published message: its id and full event name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The broker's message id.
    pub message_id: String,
    /// `{event}.{service}`.
    pub event: String,
    /// Egresses that did not take it now: it waits for them in the outbox.
    pub queued: Vec<String>,
}

/// Publishes events for one service.
pub struct Publisher {
    service: String,
    event_key: String,
    producer: bool,
    fanout: Option<Arc<Fanout>>,
    /// The topic's and the own queue's batchers.
    topic_batcher: LazyBatcher,
    queue_batcher: LazyBatcher,
    /// Size limits (`[payloads]`).
    payloads: PayloadsConfig,
    /// Where bodies too large to send go (`payloads.s3_bucket`).
    claim_check: Option<Arc<ClaimCheck>>,
}

impl Publisher {
    /// A publisher for `config`'s service on `broker`.
    pub fn new(config: &Config, broker: Arc<dyn Broker>) -> Publisher {
        let topic_fifo = config.sns.topic_arn.as_deref().is_some_and(is_fifo);
        let queue_fifo = is_fifo(&config.queue_name());
        Publisher {
            service: config.service.clone(),
            event_key: config.sns.event_key.clone(),
            producer: config.does(InitializationType::SnsProducer),
            fanout: None,
            topic_batcher: batcher_for(config, &broker, Target::Topic, topic_fifo, Retries::Own),
            queue_batcher: batcher_for(
                config,
                &broker,
                Target::Queue(None),
                queue_fifo,
                Retries::Own,
            ),
            payloads: config.payloads.clone(),
            claim_check: None,
        }
    }

    /// Store bodies too large to send in S3 (`payloads.s3_bucket`; [`ClaimCheck::connect`]).
    pub fn with_claim_check(mut self, claim_check: Option<Arc<ClaimCheck>>) -> Publisher {
        self.claim_check = claim_check;
        self
    }

    /// Encode an event for `destination` as [`Publisher::publish`] would, without sending it:
    /// the wire format and the size limit (`publish --file` checks every event first).
    pub fn encode(
        &self,
        destination: Destination,
        event: &str,
        body: Vec<u8>,
        attributes: Attributes,
    ) -> Result<wire::Outgoing, EncodeError> {
        let limit = claim_check::size_limit(&self.payloads, service_of(destination));
        wire::encode(
            event,
            &self.service,
            &self.event_key,
            body,
            attributes,
            &limit,
        )
    }

    /// Encode, then store the body in S3 when it is too large to send (or always, with
    /// `payloads.always_through_s3`). With tracing on, the message carries the context of
    /// `span`, the publish's producer span (ended when the caller drops it).
    async fn prepare(
        &self,
        destination: Destination,
        event: &str,
        body: Vec<u8>,
        mut attributes: Attributes,
        span: &mut Option<crate::telemetry::Publishing>,
    ) -> Result<wire::Outgoing, PublishError> {
        *span = crate::telemetry::publishing(
            &wire::full_event_name(event, &self.service),
            &mut attributes,
        );
        let message = self.encode(destination, event, body, attributes)?;
        Ok(match &self.claim_check {
            Some(claim_check) => {
                claim_check
                    .offload(message, service_of(destination))
                    .await?
            }
            None => message,
        })
    }

    /// The batcher for a destination.
    fn batcher(&self, destination: Destination) -> &LazyBatcher {
        match destination {
            Destination::Topic => &self.topic_batcher,
            Destination::OwnQueue => &self.queue_batcher,
        }
    }

    /// Send topic publishes to every configured egress instead (`[[egress]]`).
    pub fn with_fanout(mut self, fanout: Option<Arc<Fanout>>) -> Publisher {
        self.fanout = fanout;
        self
    }

    /// The fan-out, when `[[egress]]` entries are configured.
    pub fn fanout(&self) -> Option<&Arc<Fanout>> {
        self.fanout.as_ref()
    }

    /// Publish one event.
    pub async fn publish(
        &self,
        destination: Destination,
        event: &str,
        body: Vec<u8>,
        attributes: Attributes,
    ) -> Result<Published, PublishError> {
        let mut span = None;
        if let (Destination::Topic, Some(fanout)) = (destination, &self.fanout) {
            let message = self
                .prepare(destination, event, body, attributes, &mut span)
                .await?;
            let report = fanout.publish(&message).await?;
            tracing::debug!(event_id = %report.event_id, event = %message.event, queued = ?report.queued(), "published to every egress");
            return Ok(Published {
                message_id: report.message_id(),
                queued: report.queued().into_iter().map(str::to_string).collect(),
                event: message.event,
            });
        }
        if destination == Destination::Topic && !self.producer {
            return Err(PublishError::NotProducer);
        }
        let message = self
            .prepare(destination, event, body, attributes, &mut span)
            .await?;
        let event = message.event.clone();
        let message_id = self.batcher(destination).publish(message).await?;
        // One line per event: debug, as a handler may publish thousands a second (`publish`
        // prints each id on stdout).
        tracing::debug!(message_id = %message_id, event = %event, ?destination, "published");
        Ok(Published {
            message_id,
            event,
            queued: Vec::new(),
        })
    }
}

/// The service a destination's size limit is taken from. The topic is SNS's (256 KiB) even
/// when `[[egress]]` fans it out: an `sns` egress may be among the entries.
fn service_of(destination: Destination) -> Service {
    match destination {
        Destination::Topic => Service::Sns,
        Destination::OwnQueue => Service::Sqs,
    }
}

/// Why the egresses could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The credential profiles could not be read.
    #[error(transparent)]
    Acct(#[from] AcctError),
    /// The outbox could not be opened.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// Entries name missing plugins, profiles, or refused configs.
    #[error("{} problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// Look up an entry's profile: `None` without one; a problem when it is missing.
pub fn profile_of<'a>(
    profiles: Option<&'a Profiles>,
    plugin: &str,
    profile: Option<&str>,
    key: &str,
) -> Result<Option<&'a serde_json::Map<String, serde_json::Value>>, Problem> {
    let Some(profile) = profile else {
        return Ok(None);
    };
    let Some(profiles) = profiles else {
        return Err(Problem {
            key: format!("{key}.profile"),
            message: AcctError::NoFile.to_string(),
        });
    };
    profiles
        .get(plugin, profile)
        .map(Some)
        .ok_or_else(|| Problem {
            key: format!("{key}.profile"),
            message: format!(
                "the acct file has no profile `[{plugin}.{profile}]` (it has: {})",
                match profiles.names() {
                    names if names.is_empty() => "none".to_string(),
                    names => names.join(", "),
                }
            ),
        })
}

/// Pick which of a plugin's egresses/ingresses an entry means.
pub fn pick_export(
    plugin: &str,
    kind: &str,
    wanted: Option<&str>,
    known: &[String],
    key: &str,
) -> Result<String, Problem> {
    let problem = |field: &str, message: String| Problem {
        key: format!("{key}.{field}"),
        message,
    };
    match (wanted, known) {
        (Some(w), known) if known.iter().any(|k| k == w) => Ok(w.to_string()),
        (Some(w), known) => Err(problem(
            kind,
            format!(
                "plugin `{plugin}` has no {kind} `{w}` (it exports: {})",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            ),
        )),
        (None, [only]) => Ok(only.clone()),
        (None, []) => Err(problem(
            "plugin",
            format!("plugin `{plugin}` exports no {kind}"),
        )),
        (None, known) => Err(problem(
            kind,
            format!(
                "plugin `{plugin}` exports several ({}); name one with `{kind} = \"…\"`",
                known.join(", ")
            ),
        )),
    }
}

/// Who retries a batcher's failed entries.
enum Retries {
    /// The batcher, up to `publish.attempts` (publishes from handlers and the CLI).
    Own,
    /// Its caller: the egress fan-out retries each event with `[outbox]`'s policy, so its
    /// batchers try an entry once (retrying inside as well would multiply the attempts).
    Caller,
}

/// A batcher for `target` through `broker` with `[publish]`'s settings (one call in flight on
/// the local broker, so its queues keep publish order); `fifo` when the destination is FIFO.
fn batcher_for(
    config: &Config,
    broker: &Arc<dyn Broker>,
    target: Target,
    fifo: bool,
    retries: Retries,
) -> LazyBatcher {
    let mut settings = batch::Settings::from_config(&config.publish, &target)
        .in_order(config.broker.kind == crate::config::BrokerKind::Local);
    if let Retries::Caller = retries {
        settings.attempts = 1;
    }
    let fifo = fifo.then(|| FifoSettings::from_config(config));
    LazyBatcher::new(broker.clone(), target, settings, fifo)
}

/// How many outbox events the drain has under way at once for a built-in egress to
/// `destination`: a batch's worth (`publish.max_batch`) to a standard one, one at a time to a
/// FIFO one (strict order).
fn drain_window(config: &Config, destination: &str) -> usize {
    if is_fifo(destination) {
        1
    } else {
        config.publish.max_batch.max(1)
    }
}

/// Build the fan-out for a config's `[[egress]]` entries (`None` without entries): construct
/// every egress with its profile, open the outbox. Every problem is reported with its key.
pub fn build_fanout(
    config: &Config,
    plugins: &PluginSet,
    profiles: Option<&Profiles>,
    broker: Arc<dyn Broker>,
) -> Result<Option<Fanout>, SetupError> {
    if config.egress.is_empty() {
        return Ok(None);
    }
    let mut problems = Vec::new();
    let mut egresses = Vec::new();
    for (index, entry) in config.egress.iter().enumerate() {
        let key = format!("egress[{index}]");
        let name = entry.label();
        let built: Result<Arc<dyn fanout::Egress>, Problem> = match entry.plugin.as_str() {
            config::BUILTIN_SNS | config::BUILTIN_SQS if entry.profile.is_some() => Err(Problem {
                key: format!("{key}.profile"),
                message:
                    "the built-in egresses take no profile: they use the broker's AWS credentials"
                        .into(),
            }),
            config::BUILTIN_SNS => {
                let topic = config.sns.topic_arn.clone().unwrap_or_default();
                let batcher = batcher_for(
                    config,
                    &broker,
                    Target::Topic,
                    is_fifo(&topic),
                    Retries::Caller,
                );
                let window = drain_window(config, &topic);
                Ok(Arc::new(builtin::SnsEgress::new(batcher, topic, window)))
            }
            config::BUILTIN_SQS => {
                let queue = entry
                    .config
                    .as_ref()
                    .and_then(|c| c.get("queue"))
                    .and_then(|q| q.as_str())
                    .unwrap_or_default()
                    .to_string();
                let target = Target::Queue(Some(queue.clone()));
                let batcher =
                    batcher_for(config, &broker, target, is_fifo(&queue), Retries::Caller);
                let window = drain_window(config, &queue);
                Ok(Arc::new(builtin::SqsEgress::new(batcher, queue, window)))
            }
            plugin_name => (|| {
                let plugin = plugins.get(plugin_name).ok_or_else(|| Problem {
                    key: format!("{key}.plugin"),
                    message: plugins.missing_hint(plugin_name),
                })?;
                let export = pick_export(
                    plugin_name,
                    "egress",
                    entry.egress.as_deref(),
                    &plugin.egresses,
                    &key,
                )?;
                let profile = profile_of(profiles, plugin_name, entry.profile.as_deref(), &key)?;
                let json = config::constructor_config(profile, entry.config.as_ref());
                let egress = plugin.new_egress(&export, &json).map_err(|e| Problem {
                    key: format!("{key}.config"),
                    message: format!("egress `{plugin_name}/{export}` refused its config: {e}"),
                })?;
                Ok(Arc::new(plugin::PluginEgress::new(
                    plugin.clone(),
                    export,
                    entry.profile.clone(),
                    egress,
                )) as Arc<dyn fanout::Egress>)
            })(),
        };
        let built = match (built, &entry.media_type) {
            (Ok(egress), Some(media_type)) => Ok(Arc::new(media_type::MediaTypeEgress::new(
                egress,
                media_type.clone(),
            )) as Arc<dyn fanout::Egress>),
            (built, _) => built,
        };
        match built {
            Ok(egress) => {
                tracing::info!(egress = %name, what = %egress.describe(), "egress ready");
                egresses.push(NamedEgress { name, egress });
            }
            Err(problem) => problems.push(problem),
        }
    }
    if !problems.is_empty() {
        return Err(SetupError::Invalid(problems));
    }
    let outbox = Outbox::open(&config.resolve(&config.outbox.path))?;
    Ok(Some(Fanout::new(
        egresses,
        outbox,
        RetrySettings::from_config(config),
    )))
}

/// What a plugin exports, for the `plugins` table: handlers, `egress:NAME`, `ingress:NAME`.
pub fn exports(plugin: &crate::plugins::LoadedPlugin) -> String {
    plugin
        .handlers
        .iter()
        .cloned()
        .chain(plugin.egresses.iter().map(|e| format!("egress:{e}")))
        .chain(plugin.ingresses.iter().map(|i| format!("ingress:{i}")))
        .collect::<Vec<_>>()
        .join(",")
}

/// The `[[egress]]` and `[[ingress]]` part of `iniesta plugins`: names, plugins and profile
/// names (never a profile's values), and what waits in the outbox.
pub async fn render_configured(config: &Config) -> String {
    let mut out = String::new();
    if config.egress.is_empty() && config.ingress.is_empty() {
        return out;
    }
    out.push_str("\nEGRESS/INGRESS   PLUGIN           PROFILE\n");
    for e in &config.egress {
        out.push_str(&format!(
            "egress  {:<16} {:<16} {}\n",
            e.label(),
            e.egress
                .as_deref()
                .map(|x| format!("{}/{x}", e.plugin))
                .unwrap_or_else(|| e.plugin.clone()),
            e.profile.as_deref().unwrap_or("-")
        ));
    }
    for i in &config.ingress {
        out.push_str(&format!(
            "ingress {:<16} {:<16} {}\n",
            i.label(),
            i.ingress
                .as_deref()
                .map(|x| format!("{}/{x}", i.plugin))
                .unwrap_or_else(|| i.plugin.clone()),
            i.profile.as_deref().unwrap_or("-")
        ));
    }
    let path = config.resolve(&config.outbox.path);
    if path.exists() {
        if let Ok(outbox) = Outbox::open(&path) {
            if let Ok(backlog) = outbox.backlog().await {
                for b in backlog {
                    out.push_str(&format!(
                        "outbox: {} event(s) waiting for `{}` ({} attempt(s) so far{})\n",
                        b.pending,
                        b.egress,
                        b.max_attempts,
                        b.last_error
                            .map(|e| format!("; last error: {e}"))
                            .unwrap_or_default()
                    ));
                }
            }
        }
    }
    out
}
