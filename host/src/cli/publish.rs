//! `iniesta publish`: publish events to the topic (or with `--queue` to the queue), through
//! the `[[egress]]` fan-out when one is configured.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use futures_util::StreamExt as _;

use super::attributes::{parse_attributes, read_body};
use crate::egress::{Destination, Publisher};
use crate::wire::{Attribute, Attributes};

/// Publishes awaited at once by `publish --file` (enough to fill several batch calls).
const IN_FLIGHT: usize = 100;

/// `iniesta publish` arguments.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The event name; `.{service}` is appended unless already there.
    #[arg(required_unless_present = "file")]
    pub event: Option<String>,
    /// The body (JSON or text; `-` reads standard input). Default `{}`.
    pub body: Option<String>,
    /// An attribute: `KEY=VALUE` (String), `KEY:Number=5`, `KEY:Binary=BASE64`.
    #[arg(short = 'a', long = "attribute", value_name = "KEY=VALUE")]
    pub attributes: Vec<String>,
    /// Send straight to this service's queue instead of the topic.
    #[arg(long)]
    pub queue: bool,
    /// Publish every line of a JSONL file: {"event": .., "body": .., "attributes": {..}}.
    #[arg(long, value_name = "EVENTS.jsonl", conflicts_with_all = ["event", "body"])]
    pub file: Option<PathBuf>,
    /// Encode JSON object bodies as BSON (sent as base64 with `iniesta_content_type =
    /// application/bson`; receivers hand handlers the JSON again).
    #[arg(long)]
    pub binary: bool,
    /// Write this media type into each JSON object body as `mediaType` (microcosm-pubsub
    /// consumers require it there) and as the `media_type` attribute. A body that is not a
    /// JSON object, or that names another media type, is refused before anything is sent.
    #[arg(long, value_name = "TYPE", conflicts_with = "binary")]
    pub media_type: Option<String>,
}

/// One event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its name.
    pub event: String,
    /// The body bytes.
    pub body: Vec<u8>,
    /// Extra attributes.
    pub attributes: Attributes,
}

/// Parse one JSONL line: `{"event": "..", "body": <JSON or string>, "attributes": {..}}`.
pub fn parse_event_line(line: &str) -> anyhow::Result<Event> {
    let value: serde_json::Value = serde_json::from_str(line).context("not valid JSON")?;
    let event = value
        .get("event")
        .and_then(|e| e.as_str())
        .context("no string field `event`")?
        .to_string();
    let body = match value.get("body") {
        None => b"{}".to_vec(),
        Some(serde_json::Value::String(text)) => text.clone().into_bytes(),
        Some(other) => other.to_string().into_bytes(),
    };
    let mut attributes = Attributes::new();
    if let Some(attrs) = value.get("attributes") {
        let attrs = attrs
            .as_object()
            .context("`attributes` must be an object")?;
        for (name, v) in attrs {
            let attribute = match v {
                serde_json::Value::String(s) => Attribute::string(s.clone()),
                serde_json::Value::Number(n) => Attribute::number(n),
                serde_json::Value::Object(o) => Attribute {
                    data_type: o
                        .get("type")
                        .and_then(|t| t.as_str())
                        .unwrap_or("String")
                        .to_string(),
                    value: o
                        .get("value")
                        .map(|v| {
                            v.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string())
                        })
                        .with_context(|| format!("attribute `{name}` has no `value`"))?,
                },
                _ => bail!(
                    "attribute `{name}` must be a string, a number or {{\"type\", \"value\"}}"
                ),
            };
            attributes.insert(name.clone(), attribute);
        }
    }
    Ok(Event {
        event,
        body,
        attributes,
    })
}

/// `iniesta publish`: validate every event, then publish them in order.
pub async fn run(
    path: &Path,
    args: PublishArgs,
    acct: &crate::acct::AcctSource,
) -> anyhow::Result<ExitCode> {
    let config = crate::validate::load_for_publishing(path)?;
    // Validate everything before publishing anything.
    let events: Vec<Event> = match &args.file {
        Some(file) => {
            let handle = std::fs::File::open(file)
                .with_context(|| format!("cannot open {}", file.display()))?;
            let mut events = Vec::new();
            for (n, line) in std::io::BufReader::new(handle).lines().enumerate() {
                let line = line
                    .with_context(|| format!("{}: cannot read line {}", file.display(), n + 1))?;
                if line.trim().is_empty() {
                    continue;
                }
                events.push(
                    parse_event_line(&line)
                        .with_context(|| format!("{}: line {}", file.display(), n + 1))?,
                );
            }
            events
        }
        None => {
            let event = args.event.clone().context("EVENT is required")?;
            let body = read_body(args.body.as_deref())?;
            vec![Event {
                event,
                body,
                attributes: Attributes::new(),
            }]
        }
    };
    let extra = parse_attributes(&args.attributes)?;
    let events = match &args.media_type {
        Some(media_type) => with_media_type(events, &extra, media_type)?,
        None => events,
    };
    let events = if args.binary {
        to_bson_events(events)?
    } else {
        events
    };
    let broker = crate::broker::open(&config)
        .await
        .with_context(|| format!("cannot open the broker for {}", path.display()))?;
    let fanout = crate::egress::startup::fanout_for_publish(&config, acct, broker.clone()).await?;
    let claim_check = crate::claim_check::ClaimCheck::connect(&config).await;
    crate::telemetry::install(&config, tokio::runtime::Handle::current())?;
    let publisher = Publisher::new(&config, broker)
        .with_fanout(fanout)
        .with_claim_check(claim_check);
    let destination = if args.queue {
        Destination::OwnQueue
    } else {
        Destination::Topic
    };
    // Every event must encode (size, attribute types) before the first one is sent.
    for (n, event) in events.iter().enumerate() {
        let mut attributes = event.attributes.clone();
        for (name, attribute) in &extra {
            attributes
                .entry(name.clone())
                .or_insert_with(|| attribute.clone());
        }
        publisher
            .encode(destination, &event.event, event.body.clone(), attributes)
            .with_context(|| match &args.file {
                Some(file) => format!(
                    "{}: event {} (`{}`); nothing was published",
                    file.display(),
                    n + 1,
                    event.event
                ),
                None => format!("cannot publish `{}`", event.event),
            })?;
    }
    // Many publishes at once, so the batcher fills its calls (PublishBatch and
    // SendMessageBatch take 10); they enter it in file order, which keeps FIFO groups in
    // order, and their ids are printed in file order.
    let publisher = &publisher;
    let total = events.len();
    let started = std::time::Instant::now();
    // A file: a bar on stderr while it goes, one summary line at the end (stdout keeps one
    // `ID EVENT` line per event, for scripts).
    let bar = args.file.as_ref().map(|_| {
        super::progress::Bar::new(
            u64::try_from(total).unwrap_or(u64::MAX),
            "{spinner} {msg} [{bar:30}] {pos}/{len} ({per_sec}, {eta})",
            "publish",
        )
    });
    // After a failure no new event is started; those already under way finish and are
    // reported, so nothing is sent without its id being printed.
    let stopped = std::sync::atomic::AtomicBool::new(false);
    let stopped = &stopped;
    let publishes = events.into_iter().map(|mut event| {
        for (name, attribute) in &extra {
            event
                .attributes
                .entry(name.clone())
                .or_insert_with(|| attribute.clone());
        }
        async move {
            if stopped.load(std::sync::atomic::Ordering::Acquire) {
                return None;
            }
            Some(
                publisher
                    .publish(destination, &event.event, event.body, event.attributes)
                    .await
                    .with_context(|| format!("cannot publish `{}`", event.event)),
            )
        }
    });
    // A fan-out (topic publishes only) keeps each egress's order by publishing one event at
    // a time.
    // So does a FIFO destination when bodies may go through S3 first: an event enters its
    // batcher once its body is stored, and stores finish in any order.
    let fifo = match destination {
        Destination::Topic => config
            .topic_name()
            .is_some_and(|t| crate::broker::fifo::is_fifo(&t)),
        Destination::OwnQueue => crate::broker::fifo::is_fifo(&config.queue_name()),
    };
    let in_flight = if (destination == Destination::Topic && publisher.fanout().is_some())
        || (fifo && config.payloads.s3_bucket.is_some())
    {
        1
    } else {
        IN_FLIGHT
    };
    let mut published = futures_util::stream::iter(publishes).buffered(in_flight);
    let mut failure: Option<anyhow::Error> = None;
    let (mut after, mut failed_too, mut not_sent) = (0usize, 0usize, 0usize);
    while let Some(result) = published.next().await {
        match result {
            Some(Ok(published)) => {
                if failure.is_some() {
                    after += 1;
                }
                println!("{} {}", published.message_id, published.event);
                if let Some(bar) = &bar {
                    bar.bar().inc(1);
                }
                super::outbox::report_queued(&published);
            }
            Some(Err(e)) => {
                stopped.store(true, std::sync::atomic::Ordering::Release);
                if failure.is_none() {
                    failure = Some(e);
                } else {
                    failed_too += 1;
                }
            }
            None => not_sent += 1,
        }
    }
    drop(bar);
    // The publishes' spans go out before the process ends.
    crate::telemetry::shutdown().await;
    let sent = total - failed_too - not_sent - usize::from(failure.is_some());
    if args.file.is_some() {
        let secs = started.elapsed().as_secs_f64();
        let to = match destination {
            Destination::OwnQueue => format!("the queue {}", config.queue_name()),
            Destination::Topic => "the topic".to_string(),
        };
        eprintln!(
            "published {sent} of {total} event(s) to {to} in {secs:.1} s ({:.0}/s)",
            sent as f64 / secs.max(1e-6)
        );
    }
    if let Some(e) = failure {
        return Err(e.context(format!(
            "publishing stopped: {after} later event(s) already under way were published (ids above), \
             {failed_too} more failed, {not_sent} were not sent"
        )));
    }
    Ok(ExitCode::SUCCESS)
}

/// `publish --media-type`: every body gets `mediaType` and the `media_type` attribute (the
/// `-a` attributes considered), or the whole publish is refused.
fn with_media_type(
    events: Vec<Event>,
    extra: &Attributes,
    media_type: &str,
) -> anyhow::Result<Vec<Event>> {
    events
        .into_iter()
        .map(|mut event| {
            for (name, attribute) in extra {
                event
                    .attributes
                    .entry(name.clone())
                    .or_insert_with(|| attribute.clone());
            }
            event.body = crate::media_type::stamp(&event.body, &mut event.attributes, media_type)
                .with_context(|| {
                format!(
                    "--media-type {media_type}: cannot write it into `{}`; nothing was published",
                    event.event
                )
            })?;
            Ok(event)
        })
        .collect()
}

/// `publish --binary`: every body becomes a BSON document, marked with the content type.
fn to_bson_events(events: Vec<Event>) -> anyhow::Result<Vec<Event>> {
    use iniesta_plugin_api::payload::{BSON_CONTENT_TYPE, CONTENT_TYPE_ATTRIBUTE};
    events
        .into_iter()
        .map(|mut event| {
            let value: serde_json::Value = serde_json::from_slice(&event.body).with_context(|| {
                format!("--binary: the body of `{}` is not JSON; only JSON objects are encoded as BSON", event.event)
            })?;
            event.body = crate::wire::payload::json_to_bson(&value)
                .map_err(|e| anyhow::anyhow!("--binary: the body of `{}` cannot be encoded as BSON: {e}", event.event))?;
            event.attributes.insert(
                CONTENT_TYPE_ATTRIBUTE.to_string(),
                Attribute::string(BSON_CONTENT_TYPE),
            );
            Ok(event)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines_parse() {
        let e = parse_event_line(
            r#"{"event":"Order.Created","body":{"id":1},"attributes":{"k":"v","n":2}}"#,
        )
        .expect("ok");
        assert_eq!(e.event, "Order.Created");
        assert_eq!(e.body, br#"{"id":1}"#);
        assert_eq!(e.attributes["n"], Attribute::number(2));
        let text = parse_event_line(r#"{"event":"E","body":"plain"}"#).expect("ok");
        assert_eq!(text.body, b"plain");
        assert!(parse_event_line(r#"{"body":1}"#).is_err());
        assert!(parse_event_line("nope").is_err());
    }
}
