//! `iniesta route EVENT [BODY] [-a K=V]...`: which bindings a message would reach, and why.
//!
//! A dry run for debugging `[[bindings]]`: the message goes through the same wire encoding
//! and decoding as a real one (so binary bodies, BSON and attributes behave the same), then
//! every binding is checked the way the pipeline checks it: event patterns, media types, the
//! match DSL condition by condition, the default binding, and the schemas of the bindings that
//! take it. Plugins are not loaded and nothing is published.

use std::fmt::Write as _;

use crate::config::{BindingConfig, Config, InitializationType, Problem};
use crate::wire::{self, Attributes, Envelope};

use super::{media_type_of, Pattern, RouteTable, Rules};

/// Build the message as a consumer would receive it: `event` is the full event name as it
/// arrives (nothing is appended), the body and attributes go through the wire encoding.
pub fn message(
    config: &Config,
    event: &str,
    body: Vec<u8>,
    attributes: Attributes,
) -> anyhow::Result<Envelope> {
    let key = &config.sns.event_key;
    // The size is not a routing question: `iniesta route` takes any body.
    let any_size = wire::SizeLimit {
        max_bytes: usize::MAX,
        explained: String::new(),
    };
    let outgoing = wire::encode(event, "", key, body, attributes, &any_size)?;
    // As delivered raw (a raw subscription, `publish --queue`): the event is the attribute,
    // whatever the body looks like.
    Ok(wire::decode(
        "dry-run",
        &outgoing.body,
        &outgoing.attributes,
        0,
        wire::DeliveryContext::raw(key),
    )?)
}

/// What `iniesta route` prints: the report for people, and the same facts as one JSON object
/// (`--output json`).
#[derive(Debug, Clone)]
pub struct Explanation {
    /// The report, line by line.
    pub text: String,
    /// `message` (the header's facts), `bindings` (each with `index`, `label`, `default`,
    /// `status` = `takes`/`skipped`/`not_needed`, and `checks`: `ok` and `check`), `takers`,
    /// `schema_rejections`, `outcome` = `taken`/`no_binding`/`dead_lettered`, and
    /// `suggestions`.
    pub json: serde_json::Value,
}

/// The checks among report lines (`  ok    …`, `  FAIL  …`) as JSON.
fn checks_of(lines: &str) -> Vec<serde_json::Value> {
    lines
        .lines()
        .filter_map(|line| {
            let (ok, check) = if let Some(rest) = line.strip_prefix("  ok    ") {
                (true, rest)
            } else {
                (false, line.strip_prefix("  FAIL  ")?)
            };
            Some(serde_json::json!({ "ok": ok, "check": check }))
        })
        .collect()
}

/// The header's `name   value` lines as a JSON object.
fn header_json(header: &str) -> serde_json::Value {
    let fields: serde_json::Map<String, serde_json::Value> = header
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once("  ")?;
            Some((
                name.trim().replace(' ', "_"),
                serde_json::Value::String(value.trim().to_string()),
            ))
        })
        .collect();
    serde_json::Value::Object(fields)
}

/// The report `iniesta route` prints.
pub fn explain(config: &Config, envelope: &Envelope) -> Result<Explanation, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut entries = Vec::new();
    for (index, binding) in config.bindings.iter().enumerate() {
        let patterns = super::patterns_of(binding);
        match Rules::compile(binding, &format!("bindings[{index}]"), &config.base_dir) {
            Ok(rules) => entries.push((index, patterns, binding.default, rules)),
            Err(found) => problems.extend(found),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let table = RouteTable::with_rules(entries);
    let takers: Vec<usize> = table.route(envelope).into_iter().copied().collect();
    let mut out = String::new();
    header(&mut out, config, envelope);
    let mut message = header_json(&out);
    // The event as it is, not as the report quotes it.
    message["event"] = envelope.event.clone().into();
    let mut bindings = Vec::new();
    let mut rejections = Vec::new();
    for (index, binding) in config.bindings.iter().enumerate() {
        let Some(rules) = table.rules(index) else {
            continue;
        };
        let label = label(index, binding);
        let takes = takers.contains(&index);
        let mut entry = serde_json::json!({
            "index": index,
            "label": label,
            "default": binding.default,
            "status": if takes { "takes" } else { "skipped" },
        });
        if binding.default && takers.iter().any(|t| *t != index) {
            let _ = writeln!(
                out,
                "\n{label} (default): not needed, other bindings take the message"
            );
            entry["status"] = "not_needed".into();
            entry["checks"] = serde_json::Value::Array(Vec::new());
            bindings.push(entry);
            continue;
        }
        let status = if takes {
            "TAKES the message"
        } else {
            "skipped"
        };
        let default = if binding.default { " (default)" } else { "" };
        let _ = writeln!(out, "\n{label}{default}: {status}");
        let checks_start = out.len();
        let relevant = if binding.default {
            let _ = writeln!(out, "  ok    no other binding takes the message");
            true
        } else {
            events_line(&mut out, binding, envelope)
        };
        if relevant {
            content_lines(&mut out, rules, envelope);
        }
        // The event is not this binding's: its content rules do not matter.
        if !relevant {
            entry["checks"] = checks_of(&out[checks_start..]).into();
            bindings.push(entry);
            continue;
        }
        if takes {
            if let Some(schema) = &rules.schema {
                match schema.check_showing(envelope.payload(), true) {
                    Ok(()) => {
                        let _ = writeln!(out, "  ok    schema {}: valid", schema.path.display());
                    }
                    Err(errors) => {
                        let _ = writeln!(out, "  FAIL  schema {}: {errors}", schema.path.display());
                        rejections.push(label.clone());
                    }
                }
            }
        }
        entry["checks"] = checks_of(&out[checks_start..]).into();
        bindings.push(entry);
    }
    out.push('\n');
    let labels: Vec<String> = takers
        .iter()
        .filter_map(|i| config.bindings.get(*i).map(|b| label(*i, b)))
        .collect();
    if labels.is_empty() {
        out.push_str("result: no binding takes the message; it would stay on the queue until the redrive policy moves it (add a binding, widen one, or add a default)\n");
    } else if !rejections.is_empty() {
        let _ = writeln!(
            out,
            "result: taken by {}, but dead-lettered before any handler runs: the body fails the schema of {}",
            labels.join(", "),
            rejections.join(", ")
        );
    } else {
        let _ = writeln!(
            out,
            "result: {} binding(s) take the message: {}",
            labels.len(),
            labels.join(", ")
        );
    }
    let suggested = suggestions(config, &envelope.event);
    if !suggested.is_empty() {
        let names: Vec<String> = suggested.iter().map(|s| format!("`{}`", s.name)).collect();
        let why = if suggested.iter().any(|s| s.short) {
            " (route takes the full name as it arrives: the publisher appends `.{its service}`)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "did you mean {}? no binding's event patterns match `{}`{why}",
            names.join(" or "),
            envelope.event
        );
    }
    let outcome = if labels.is_empty() {
        "no_binding"
    } else if !rejections.is_empty() {
        "dead_lettered"
    } else {
        "taken"
    };
    let json = serde_json::json!({
        "message": message,
        "bindings": bindings,
        "takers": labels,
        "schema_rejections": rejections,
        "outcome": outcome,
        "suggestions": suggested.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
    });
    Ok(Explanation { text: out, json })
}

/// A name `iniesta route` suggests instead of the one given.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Suggestion {
    /// The full event name a binding takes.
    name: String,
    /// Whether the given name was a short one (the suggestion adds a service suffix).
    short: bool,
}

/// When no binding's event patterns match `event` (the default binding aside): the names the
/// user may have meant. A short name (`Order.Created`) gets the full names that extend it
/// (`Order.Created.shop` from a binding, or with this config's own service appended); a
/// misspelt name, short or full, gets the nearest name a binding takes (edit distance).
fn suggestions(config: &Config, event: &str) -> Vec<Suggestion> {
    let patterns: Vec<Pattern> = config
        .bindings
        .iter()
        .filter(|b| !b.default)
        .flat_map(super::patterns_of)
        .collect();
    if event.is_empty() || patterns.iter().any(|p| p.matches(event)) {
        return Vec::new();
    }
    let mut found: Vec<Suggestion> = Vec::new();
    let push = |found: &mut Vec<Suggestion>, name: String, short: bool| {
        if !found.iter().any(|s| s.name == name) {
            found.push(Suggestion { name, short });
        }
    };
    // A short name: a binding takes it with a service suffix.
    let dotted = format!("{event}.");
    for pattern in patterns.iter().filter(|p| p.is_exact()) {
        if pattern.as_str().starts_with(&dotted) {
            push(&mut found, pattern.as_str().to_string(), true);
        }
    }
    let own = config.full_event_name(event);
    if own != event && patterns.iter().any(|p| p.matches(&own)) {
        push(&mut found, own, true);
    }
    if !found.is_empty() {
        return found;
    }
    // A misspelt name, compared in full and, for a short name, with the candidate cut to as
    // many segments as it has.
    let segments = event.split('.').count();
    let near = |a: &str, b: &str| {
        let distance = strsim::levenshtein(a, b);
        distance > 0 && distance <= (a.chars().count().max(b.chars().count()) / 5).clamp(1, 3)
    };
    for pattern in &patterns {
        if pattern.is_exact() {
            let name = pattern.as_str();
            let cut: Vec<&str> = name.split('.').take(segments).collect();
            let cut = cut.join(".");
            if near(event, name) {
                push(&mut found, name.to_string(), false);
            } else if cut.len() < name.len() && (near(event, &cut) || event == cut) {
                push(&mut found, name.to_string(), true);
            }
        } else {
            // A glob such as `Order.*`: correct the segments before its `*`.
            let head = pattern.as_str().split('*').next().unwrap_or("");
            let head_segments = head.trim_end_matches('.').split('.').count();
            if head.is_empty() || !head.ends_with('.') || segments <= head_segments {
                continue;
            }
            let parts: Vec<&str> = event.split('.').collect();
            let given = parts[..head_segments].join(".");
            if near(&given, head.trim_end_matches('.')) {
                let fixed = format!("{head}{}", parts[head_segments..].join("."));
                if pattern.matches(&fixed) {
                    push(&mut found, fixed, false);
                }
            }
        }
    }
    found
}

fn label(index: usize, binding: &BindingConfig) -> String {
    match &binding.handler {
        Some(handler) => format!("bindings[{index}] {}/{handler}", binding.plugin),
        None => format!("bindings[{index}] {}", binding.plugin),
    }
}

fn header(out: &mut String, config: &Config, envelope: &Envelope) {
    let payload = envelope.payload();
    let event = if envelope.event.is_empty() {
        "(none: a plain queue message)".to_string()
    } else {
        format!("`{}`", envelope.event)
    };
    let _ = writeln!(out, "event       {event}");
    let _ = writeln!(
        out,
        "payload     {} ({} encoding), {} bytes",
        payload.kind,
        payload.encoding.as_str(),
        envelope.body.len()
    );
    match media_type_of(envelope) {
        Some((media_type, source)) => {
            let _ = writeln!(out, "media type  {media_type} ({source})");
        }
        None => {
            let _ = writeln!(out, "media type  none");
        }
    }
    if config.does(InitializationType::EventPolling)
        && !config.does(InitializationType::QueuePolling)
        && !config.sqs.filters.is_empty()
    {
        let through = config
            .sqs
            .filters
            .iter()
            .find(|filter| match filter.strip_suffix('*') {
                Some(prefix) => envelope.event.starts_with(prefix),
                None => envelope.event == **filter,
            });
        match through {
            Some(filter) => {
                let _ = writeln!(
                    out,
                    "queue       the subscription lets it in (sqs.filters `{filter}`)"
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "queue       NOTE: sqs.filters {:?} keep it off the queue when it is published to the topic (publish --queue bypasses them)",
                    config.sqs.filters
                );
            }
        }
    }
}

/// Report the event patterns; whether one matches.
fn events_line(out: &mut String, binding: &BindingConfig, envelope: &Envelope) -> bool {
    let matched = binding
        .events
        .iter()
        .find(|e| Pattern::parse(e).is_ok_and(|p| p.matches(&envelope.event)));
    match matched {
        Some(pattern) => {
            let _ = writeln!(out, "  ok    events: `{pattern}` matches");
            true
        }
        None => {
            let listed: Vec<String> = binding.events.iter().map(|e| format!("`{e}`")).collect();
            let _ = writeln!(out, "  FAIL  events: none of {} matches", listed.join(", "));
            false
        }
    }
}

fn content_lines(out: &mut String, rules: &Rules, envelope: &Envelope) {
    if !rules.media_types.is_empty() {
        let wanted: Vec<String> = rules
            .media_types
            .iter()
            .map(|p| format!("`{}`", p.as_str()))
            .collect();
        match media_type_of(envelope) {
            Some((found, _)) => match rules.media_types.iter().find(|p| p.matches(&found)) {
                Some(pattern) => {
                    let _ = writeln!(
                        out,
                        "  ok    media_types: `{}` matches {found}",
                        pattern.as_str()
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "  FAIL  media_types: none of {} matches {found}",
                        wanted.join(", ")
                    );
                }
            },
            None => {
                let _ = writeln!(
                    out,
                    "  FAIL  media_types: the message has no media type (no `media_type` attribute, no `media_type` or `mediaType` body field); wants {}",
                    wanted.join(", ")
                );
            }
        }
    }
    let Some(matcher) = &rules.matcher else {
        return;
    };
    if matcher.is_empty() {
        return;
    }
    let payload = envelope.payload();
    if !payload.kind.is_json() {
        let _ = writeln!(
            out,
            "  FAIL  match: the body is {}; match conditions apply to JSON and MEGA bodies",
            payload.kind
        );
        return;
    }
    for check in matcher.explain(payload) {
        let mark = if check.holds { "ok  " } else { "FAIL" };
        let place = if check.resolved == check.path {
            String::new()
        } else {
            format!(" ({})", check.resolved)
        };
        let actual = check.actual.as_deref().unwrap_or("missing");
        let _ = writeln!(
            out,
            "  {mark}  match {}{place} {}: found {actual}",
            check.path, check.condition
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(bindings: &str) -> Config {
        Config::parse(
            &format!(
                "service = \"s\"\n[sns]\ntopic_arn = \"arn:aws:sns:us-east-1:0:global\"\n[sqs]\nfilters = [\"Order.*\", \"user.*\"]\n{bindings}"
            ),
            Path::new("."),
        )
        .expect("parses")
    }

    fn report(config: &Config, event: &str, body: &str, attributes: &[(&str, &str)]) -> String {
        let attributes: Attributes = attributes
            .iter()
            .map(|(k, v)| (k.to_string(), wire::Attribute::string(*v)))
            .collect();
        let envelope =
            message(config, event, body.as_bytes().to_vec(), attributes).expect("message");
        explain(config, &envelope).expect("explains").text
    }

    #[test]
    fn says_which_binding_takes_it_and_why() {
        let c = config(
            "[[bindings]]\nevents = [\"user.*\"]\nplugin = \"ledger\"\n[bindings.match]\nname = { match = 'user:(.*)' }\nemail = { not = { empty = true } }\n\
             [[bindings]]\nevents = [\"Order.*\"]\nplugin = \"echo\"\n\
             [[bindings]]\ndefault = true\nplugin = \"echo\"\nhandler = \"echo\"\n",
        );
        let body =
            r#"{"protocol":"mega","event":{"name":"user:updated","attributes":{"email":"j@x"}}}"#;
        let out = report(&c, "user.updated.svc", body, &[]);
        assert!(out.contains("payload     mega (plain encoding)"), "{out}");
        assert!(
            out.contains("bindings[0] ledger: TAKES the message"),
            "{out}"
        );
        assert!(
            out.contains("ok    match name (event.name) match 'user:(.*)': found \"user:updated\""),
            "{out}"
        );
        assert!(
            out.contains("ok    match email (event.attributes.email)"),
            "{out}"
        );
        assert!(out.contains("bindings[1] echo: skipped"), "{out}");
        assert!(
            out.contains("FAIL  events: none of `Order.*` matches"),
            "{out}"
        );
        assert!(
            out.contains("bindings[2] echo/echo (default): not needed"),
            "{out}"
        );
        assert!(
            out.contains("result: 1 binding(s) take the message: bindings[0] ledger"),
            "{out}"
        );
        // A failing condition: the default takes it instead.
        let body = r#"{"protocol":"mega","event":{"name":"cart:updated"}}"#;
        let out = report(&c, "user.updated.svc", body, &[]);
        assert!(out.contains("FAIL  match name (event.name)"), "{out}");
        assert!(
            out.contains("FAIL  match email (event.email) not (empty = true): found missing"),
            "{out}"
        );
        assert!(
            out.contains("bindings[2] echo/echo (default): TAKES"),
            "{out}"
        );
        // Off the subscription's filters: noted.
        let out = report(&c, "Payment.Done.svc", "{}", &[]);
        assert!(out.contains("NOTE: sqs.filters"), "{out}");
    }

    #[test]
    fn the_json_form_carries_the_same_verdicts_and_checks() {
        let c = config(
            "[[bindings]]\nevents = [\"user.*\"]\nplugin = \"ledger\"\n[bindings.match]\nemail = { not = { empty = true } }\n\
             [[bindings]]\nevents = [\"Order.*\"]\nplugin = \"echo\"\n\
             [[bindings]]\ndefault = true\nplugin = \"echo\"\n",
        );
        let body =
            r#"{"protocol":"mega","event":{"name":"user:updated","attributes":{"email":"j@x"}}}"#;
        let envelope = message(
            &c,
            "user.updated.svc",
            body.as_bytes().to_vec(),
            Attributes::new(),
        )
        .expect("message");
        let json = explain(&c, &envelope).expect("explains").json;
        assert_eq!(json["outcome"], "taken");
        assert_eq!(json["takers"], serde_json::json!(["bindings[0] ledger"]));
        assert_eq!(json["message"]["event"], "user.updated.svc");
        let statuses: Vec<&str> = json["bindings"]
            .as_array()
            .expect("bindings")
            .iter()
            .filter_map(|b| b["status"].as_str())
            .collect();
        assert_eq!(statuses, ["takes", "skipped", "not_needed"]);
        assert_eq!(json["bindings"][0]["checks"][0]["ok"], true);
        assert_eq!(json["bindings"][1]["checks"][0]["ok"], false);
        assert!(json["bindings"][1]["checks"][0]["check"]
            .as_str()
            .is_some_and(|c| c.starts_with("events: none of")));
        // Nothing takes a misspelt event: the outcome says so and names the nearest.
        let c = config("[[bindings]]\nevents = [\"Order.Created.shop\"]\nplugin = \"echo\"\n");
        let envelope =
            message(&c, "Order.Craeted.shop", b"{}".to_vec(), Attributes::new()).expect("message");
        let json = explain(&c, &envelope).expect("explains").json;
        assert_eq!(json["outcome"], "no_binding");
        assert_eq!(
            json["suggestions"],
            serde_json::json!(["Order.Created.shop"])
        );
    }

    /// Issue 24: "did you mean" for short names (no service suffix) as well as full ones.
    #[test]
    fn short_and_misspelt_names_get_suggestions() {
        let c = config(
            "[[bindings]]\nevents = [\"Order.Created.shop\"]\nplugin = \"a\"\n\
             [[bindings]]\nevents = [\"user.*\"]\nplugin = \"b\"\n\
             [[bindings]]\ndefault = true\nplugin = \"c\"\n",
        );
        // The short name of a bound full name.
        let out = report(&c, "Order.Created", "{}", &[]);
        assert!(
            out.contains(
                "did you mean `Order.Created.shop`? no binding's event patterns match `Order.Created` (route takes the full name as it arrives"
            ),
            "{out}"
        );
        // A short name, misspelt.
        let out = report(&c, "Order.Craeted", "{}", &[]);
        assert!(out.contains("did you mean `Order.Created.shop`?"), "{out}");
        // A full name, misspelt.
        let out = report(&c, "Order.Craeted.shop", "{}", &[]);
        assert!(out.contains("did you mean `Order.Created.shop`?"), "{out}");
        // A misspelt head of a glob.
        let out = report(&c, "usr.updated.svc", "{}", &[]);
        assert!(out.contains("did you mean `user.updated.svc`?"), "{out}");
        // A name a binding takes: no suggestion; a name far from every binding: none either.
        assert!(!report(&c, "Order.Created.shop", "{}", &[]).contains("did you mean"));
        assert!(!report(&c, "Payment.Done", "{}", &[]).contains("did you mean"));
    }

    #[test]
    fn text_bodies_media_types_and_no_taker() {
        let c = config(
            "[[bindings]]\nevents = [\"Order.*\"]\nplugin = \"a\"\nmedia_types = [\"application/vnd.acme.*\"]\n\
             [[bindings]]\nevents = [\"Order.*\"]\nplugin = \"b\"\nmatch = { id = 1 }\n",
        );
        let out = report(
            &c,
            "Order.X.s",
            "just text",
            &[("media_type", "application/vnd.acme.order")],
        );
        assert!(
            out.contains("media type  application/vnd.acme.order (attribute `media_type`)"),
            "{out}"
        );
        assert!(
            out.contains("ok    media_types: `application/vnd.acme.*` matches"),
            "{out}"
        );
        assert!(out.contains("FAIL  match: the body is text"), "{out}");
        assert!(out.contains("result: 1 binding(s)"), "{out}");
        let out = report(&c, "Order.X.s", r#"{"id": 2}"#, &[]);
        assert!(
            out.contains("FAIL  media_types: the message has no media type"),
            "{out}"
        );
        assert!(
            out.contains("result: no binding takes the message"),
            "{out}"
        );
    }
}
