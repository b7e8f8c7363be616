//! Routing: which bindings take a message.
//!
//! Event patterns are exact names or globs where `*` matches any run of characters, dots
//! included (`Order.*` takes `Order.Created.shop`). A binding may also look at the content:
//! `media_types` (a `media_type` attribute or body field, or microcosm's `mediaType` body
//! field, see [`Rules`]) and a `match` table
//! (the match DSL, [`matcher`]); it takes a message only when its pattern, media types and
//! match conditions all agree. A message goes to every binding that takes it (fan-out); the
//! default binding takes only messages no other binding takes (and only if its own content
//! rules agree). A binding's `schema` ([`schema`]) does not route: a body that fails it is
//! dead-lettered before any handler runs. [`explain`] is the `iniesta route` dry run.

pub mod calling;
pub mod check;
pub mod explain;
pub mod matcher;
pub mod schema;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::config::{BindingConfig, Problem};
use crate::wire::Envelope;
use matcher::Matcher;
use schema::Schema;

/// An event pattern: an exact name or a `*` glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    /// The literal pieces between `*`s; a single piece means an exact name.
    pieces: Vec<String>,
}

impl Pattern {
    /// Parse a pattern; empty names and whitespace are refused.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if text.is_empty() {
            return Err("an event pattern must not be empty".into());
        }
        if text.chars().any(char::is_whitespace) {
            return Err(format!(
                "`{text}` contains whitespace; event names never do"
            ));
        }
        Ok(Pattern {
            text: text.to_string(),
            pieces: text.split('*').map(str::to_string).collect(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern has no `*`.
    pub fn is_exact(&self) -> bool {
        self.pieces.len() == 1
    }

    /// Whether `event` matches.
    pub fn matches(&self, event: &str) -> bool {
        let (first, rest) = match self.pieces.split_first() {
            Some(split) => split,
            None => return false,
        };
        if rest.is_empty() {
            return event == first;
        }
        let Some(mut remaining) = event.strip_prefix(first.as_str()) else {
            return false;
        };
        let (last, middle) = match rest.split_last() {
            Some(split) => split,
            None => return false,
        };
        for piece in middle {
            match remaining.find(piece.as_str()) {
                Some(at) => remaining = &remaining[at + piece.len()..],
                None => return false,
            }
        }
        remaining.len() >= last.len() && remaining.ends_with(last.as_str())
    }

    /// Whether some event starting with `prefix` matches this pattern.
    pub fn can_match_prefix(&self, prefix: &str) -> bool {
        if self.is_exact() {
            return self.text.starts_with(prefix);
        }
        // The literal head before the first `*` must agree with the prefix; the `*` after it
        // can absorb the rest of the prefix, and any tail can follow.
        let head = self.pieces.first().map(String::as_str).unwrap_or("");
        head.starts_with(prefix) || prefix.starts_with(head)
    }
}

/// The attribute (or, failing that, top-level body field) `media_types` are matched against;
/// microcosm-pubsub's body field `mediaType` is read too (see [`crate::media_type`]).
pub const MEDIA_TYPE_KEY: &str = crate::media_type::ATTRIBUTE;

/// What a binding asks of a message's content, compiled from its `[[bindings]]` entry.
#[derive(Debug, Default)]
pub struct Rules {
    /// `match = { ... }`: conditions on the body (MEGA: on its event).
    pub matcher: Option<Matcher>,
    /// `media_types = [...]`, lower-cased; `*` globs allowed.
    pub media_types: Vec<Pattern>,
    /// `schema = "..."`: checked before handlers run, not for routing.
    pub schema: Option<Arc<Schema>>,
}

impl Rules {
    /// Compile a binding's `match`, `media_types` and `schema`; problems are keyed under
    /// `key` (`bindings[2]`), e.g. `bindings[2].match.object.current.user_id`.
    pub fn compile(
        binding: &BindingConfig,
        key: &str,
        base_dir: &Path,
    ) -> Result<Rules, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut rules = Rules::default();
        if let Some(table) = &binding.r#match {
            match Matcher::compile(table) {
                Ok(matcher) => rules.matcher = Some(matcher),
                Err(errors) => problems.extend(errors.into_iter().map(|e| Problem {
                    key: format!("{key}.match.{}", e.key),
                    message: e.message,
                })),
            }
        }
        for (i, media_type) in binding.media_types.iter().enumerate() {
            match Pattern::parse(&crate::media_type::normal(media_type)) {
                Ok(pattern) => rules.media_types.push(pattern),
                Err(_) => problems.push(Problem {
                    key: format!("{key}.media_types[{i}]"),
                    message: format!(
                        "`{media_type}` is not a media type: it must be non-empty, without spaces, e.g. \"application/vnd.acme.order+json\" (`*` matches any run of characters)"
                    ),
                }),
            }
        }
        if let Some(path) = &binding.schema {
            match Schema::load(path, base_dir) {
                Ok(schema) => rules.schema = Some(Arc::new(schema)),
                Err(message) => problems.push(Problem {
                    key: format!("{key}.schema"),
                    message,
                }),
            }
        }
        if problems.is_empty() {
            Ok(rules)
        } else {
            Err(problems)
        }
    }

    /// Whether the content rules (media types, then match) take this message.
    pub fn accepts(&self, envelope: &Envelope) -> bool {
        self.media_type_accepts(envelope)
            && self
                .matcher
                .as_ref()
                .is_none_or(|m| m.matches(envelope.payload()))
    }

    /// Whether `media_types` is unset or the message's media type matches one of them.
    pub fn media_type_accepts(&self, envelope: &Envelope) -> bool {
        if self.media_types.is_empty() {
            return true;
        }
        media_type_of(envelope)
            .is_some_and(|(found, _)| self.media_types.iter().any(|p| p.matches(&found)))
    }
}

/// The message's media type, normalised (lower case, parameters such as `; charset=utf-8`
/// dropped), and where it came from: the `media_type` attribute, else the body's top-level
/// `media_type` field, else its `mediaType` field (microcosm-pubsub's).
pub fn media_type_of(envelope: &Envelope) -> Option<(String, &'static str)> {
    crate::media_type::of(envelope)
}

/// A routing table over bindings of any type `B`.
#[derive(Debug)]
pub struct RouteTable<B> {
    bindings: Vec<B>,
    rules: Vec<Rules>,
    exact: HashMap<String, Vec<usize>>,
    globs: Vec<(Pattern, usize)>,
    default: Option<usize>,
}

impl<B> RouteTable<B> {
    /// Build a table from bindings with their patterns; `default` marks the default binding.
    /// No binding has content rules.
    pub fn new(entries: Vec<(B, Vec<Pattern>, bool)>) -> Self {
        Self::with_rules(
            entries
                .into_iter()
                .map(|(b, patterns, default)| (b, patterns, default, Rules::default()))
                .collect(),
        )
    }

    /// Build a table from bindings with their patterns, default flag and content rules.
    pub fn with_rules(entries: Vec<(B, Vec<Pattern>, bool, Rules)>) -> Self {
        let mut table = RouteTable {
            bindings: Vec::with_capacity(entries.len()),
            rules: Vec::with_capacity(entries.len()),
            exact: HashMap::new(),
            globs: Vec::new(),
            default: None,
        };
        for (index, (binding, patterns, is_default, rules)) in entries.into_iter().enumerate() {
            table.bindings.push(binding);
            table.rules.push(rules);
            if is_default && table.default.is_none() {
                table.default = Some(index);
            }
            for pattern in patterns {
                if pattern.is_exact() {
                    let slot = table.exact.entry(pattern.text.clone()).or_default();
                    if !slot.contains(&index) {
                        slot.push(index);
                    }
                } else {
                    table.globs.push((pattern, index));
                }
            }
        }
        table
    }

    /// Every binding that takes the message, each once, in config order: its event pattern
    /// matches and its content rules agree. The default binding if none does (and its own
    /// content rules agree).
    pub fn route(&self, envelope: &Envelope) -> Vec<&B> {
        let mut hits: Vec<usize> = self
            .by_event(&envelope.event)
            .into_iter()
            .filter(|i| self.rules[*i].accepts(envelope))
            .collect();
        if hits.is_empty() {
            if let Some(default) = self.default {
                if self.rules[default].accepts(envelope) {
                    hits.push(default);
                }
            }
        }
        hits.into_iter().map(|i| &self.bindings[i]).collect()
    }

    /// Positions of the bindings whose event patterns match `event`, in config order
    /// (content rules and the default binding not considered).
    pub fn by_event(&self, event: &str) -> Vec<usize> {
        let mut hits: Vec<usize> = self.exact.get(event).cloned().unwrap_or_default();
        for (pattern, index) in &self.globs {
            if !hits.contains(index) && pattern.matches(event) {
                hits.push(*index);
            }
        }
        hits.sort_unstable();
        hits
    }

    /// The content rules of the binding at `index`.
    pub fn rules(&self, index: usize) -> Option<&Rules> {
        self.rules.get(index)
    }

    /// The default binding's position, if there is one.
    pub fn default_index(&self) -> Option<usize> {
        self.default
    }

    /// All bindings, in config order.
    pub fn bindings(&self) -> &[B] {
        &self.bindings
    }

    /// Whether a default binding exists.
    pub fn has_default(&self) -> bool {
        self.default.is_some()
    }
}

/// A binding with its handler constructed and ready to call.
pub struct Binding {
    /// Position in `[[bindings]]`.
    pub index: usize,
    /// `bindings[0] (echo/echo)`, for logs (points into the file).
    pub label: String,
    /// The binding's name (`name`, else `PLUGIN/HANDLER`; see
    /// [`crate::config::plugins::binding_names`]): the `binding` label of its metrics, stable
    /// when bindings are reordered.
    pub name: String,
    /// The plugin generation serving this binding.
    pub plugin: std::sync::Arc<crate::plugins::LoadedPlugin>,
    /// The handler's name.
    pub handler_name: String,
    /// The constructed handler.
    pub handler: iniesta_plugin_api::ffi::HandlerBox,
    /// How the handler is called: blocking or inline (sync), a future (async), in batches.
    pub calling: calling::Calling,
    /// The context handed to every call.
    pub context: iniesta_plugin_api::ffi::HostContextBox,
    /// Per-call timeout.
    pub timeout: std::time::Duration,
    /// The handler runs in an isolated worker process (`[plugins.isolate]`): its call can
    /// end in a crash of that process.
    pub isolated: bool,
    /// Whether this is the default binding.
    pub is_default: bool,
    /// `schema = "..."`: bodies that fail it are dead-lettered before any handler runs.
    pub schema: Option<Arc<Schema>>,
    /// `[bindings.retry]`: how its failed calls are retried (settlement applies it).
    pub retry: Option<crate::config::policy::RetryConfig>,
    /// Its limits and circuit breaker, kept across reloads by name (see [`crate::policy`]).
    pub guard: Arc<crate::policy::Guard>,
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label)
    }
}

/// The live routing table.
pub type Routes = RouteTable<std::sync::Arc<Binding>>;

/// A binding's `events` as patterns (the ones that parse: the others are config problems,
/// reported by the config check).
pub fn patterns_of(binding: &crate::config::BindingConfig) -> Vec<Pattern> {
    binding
        .events
        .iter()
        .filter_map(|e| Pattern::parse(e).ok())
        .collect()
}

/// Construct every binding's handler from the loaded plugins; every problem is reported with
/// its key (`bindings[1].plugin`, `bindings[1].handler`, `bindings[1].config`). Each binding
/// takes its guard (limits, circuit breaker) from `guards`, which keeps them across reloads.
pub fn bind(
    config: &crate::config::Config,
    plugins: &crate::plugins::PluginSet,
    publisher: Option<std::sync::Arc<crate::egress::Publisher>>,
    runtime: Option<tokio::runtime::Handle>,
    guards: &Arc<crate::policy::Guards>,
) -> Result<Routes, Vec<crate::config::Problem>> {
    let mut problems = Vec::new();
    let mut entries = Vec::new();
    let names = crate::config::plugins::binding_names(&config.bindings);
    // A misspelt name in `plugins.isolate.names` would quietly run that plugin in-process.
    for (i, name) in config.plugins.isolate.names.iter().enumerate() {
        if !name.trim().is_empty() && plugins.get(name).is_none() {
            problems.push(Problem {
                key: format!("plugins.isolate.names[{i}]"),
                message: plugins.missing_hint(name),
            });
        }
    }
    for (index, b) in config.bindings.iter().enumerate() {
        if b.disabled {
            continue;
        }
        let key = format!("bindings[{index}]");
        let Some(plugin) = plugins.get(&b.plugin) else {
            problems.push(Problem {
                key: format!("{key}.plugin"),
                message: plugins.missing_hint(&b.plugin),
            });
            continue;
        };
        // A panic = "abort" build may run only isolated: in the host its panic ends the host.
        if let Some(why) = plugin.in_process_refusal() {
            if !config.plugins.isolate.isolates(&plugin.name) {
                problems.push(Problem {
                    key: format!("{key}.plugin"),
                    message: why,
                });
                continue;
            }
        }
        let handler_name = match (&b.handler, plugin.handlers.as_slice()) {
            (Some(h), known) if known.contains(h) => h.clone(),
            (Some(h), known) => {
                problems.push(Problem {
                    key: format!("{key}.handler"),
                    message: format!(
                        "plugin `{}` has no handler `{h}` (it exports: {})",
                        plugin.name,
                        known.join(", ")
                    ),
                });
                continue;
            }
            (None, [only]) => only.clone(),
            (None, known) => {
                problems.push(Problem {
                    key: format!("{key}.handler"),
                    message: format!(
                        "plugin `{}` exports several handlers ({}); name one with `handler = \"...\"`",
                        plugin.name,
                        known.join(", ")
                    ),
                });
                continue;
            }
        };
        let running = publisher.is_some();
        let handler = match crate::isolate::new_handler(config, b, plugin, &handler_name, running) {
            Ok(h) => h,
            Err(e) => {
                problems.push(Problem {
                    key: format!("{key}.config"),
                    message: format!(
                        "handler `{}/{handler_name}` refused its config: {e}",
                        plugin.name
                    ),
                });
                continue;
            }
        };
        let calling = match calling::Calling::of(handler.shape(), b, &key) {
            Ok(calling) => calling,
            Err((key, why)) => {
                problems.push(Problem {
                    key,
                    message: format!("handler `{}/{handler_name}` {why}", plugin.name),
                });
                continue;
            }
        };
        let rules = match Rules::compile(b, &key, &config.base_dir) {
            Ok(rules) => rules,
            Err(found) => {
                problems.extend(found);
                continue;
            }
        };
        let label = format!("{key} ({}/{handler_name})", plugin.name);
        let name = names.get(index).cloned().unwrap_or_default();
        let patterns = patterns_of(b);
        // What a handler publishes goes out as `{event}.{service}`: if this binding's own
        // patterns take that, the handler feeds itself (the context warns).
        let own = patterns.clone();
        let service = config.service.clone();
        let consumes: crate::plugins::context::Consumes = std::sync::Arc::new(move |event| {
            let full = crate::wire::full_event_name(event, &service);
            own.iter().any(|p| p.matches(&full)).then_some(full)
        });
        let context = crate::plugins::context::HostContext::boxed(
            publisher.clone(),
            runtime.clone(),
            &plugin.name,
            &label,
            &name,
            Some(consumes),
        );
        let guard = guards.guard(&name, b);
        let binding = Binding {
            index,
            label,
            name,
            plugin: plugin.clone(),
            handler_name,
            handler,
            calling,
            context,
            timeout: std::time::Duration::from_secs(
                b.timeout_secs.unwrap_or(config.sqs.handler_timeout_secs),
            ),
            is_default: b.default,
            schema: rules.schema.clone(),
            isolated: config.plugins.isolate.isolates(&plugin.name),
            retry: b.retry.clone(),
            guard,
        };
        entries.push((std::sync::Arc::new(binding), patterns, b.default, rules));
    }
    if problems.is_empty() {
        guards.install(
            entries
                .iter()
                .map(|(binding, ..)| (binding.name.clone(), binding.guard.clone()))
                .collect(),
        );
        Ok(RouteTable::with_rules(entries))
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).expect("valid")
    }

    #[test]
    fn glob_semantics() {
        assert!(p("Order.*").matches("Order.Created.shop"));
        assert!(p("Order.*").matches("Order."));
        assert!(!p("Order.*").matches("Order"));
        assert!(p("*.shop").matches("Order.Created.shop"));
        assert!(p("Order.*.shop").matches("Order.Created.shop"));
        assert!(!p("Order.*.shop").matches("Order.Created.cart"));
        assert!(p("*").matches("anything.at.all"));
        assert!(p("a*a").matches("aa"));
        assert!(!p("a*a").matches("a"));
        assert!(p("hello.iniesta").matches("hello.iniesta"));
        assert!(!p("hello.iniesta").matches("hello.iniestas"));
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse("a b").is_err());
    }

    #[test]
    fn prefix_reachability() {
        assert!(p("Order.*").can_match_prefix("Order."));
        assert!(p("Order.Created.*").can_match_prefix("Order."));
        assert!(p("Ord*").can_match_prefix("Order."));
        assert!(p("*").can_match_prefix("Order."));
        assert!(!p("Payment.*").can_match_prefix("Order."));
        assert!(p("Order.Created.shop").can_match_prefix("Order."));
        assert!(!p("Order").can_match_prefix("Order."));
    }

    fn envelope(event: &str, body: &str, attributes: &[(&str, &str)]) -> Envelope {
        let mut attrs: crate::wire::Attributes = attributes
            .iter()
            .map(|(k, v)| (k.to_string(), crate::wire::Attribute::string(*v)))
            .collect();
        attrs.insert("iniesta_pass".into(), crate::wire::Attribute::string(event));
        crate::wire::decode(
            "m",
            body.as_bytes(),
            &attrs,
            0,
            crate::wire::DeliveryContext::raw("iniesta_pass"),
        )
        .expect("decodes")
    }

    fn event(name: &str) -> Envelope {
        envelope(name, "{}", &[])
    }

    fn rules(toml_text: &str) -> Rules {
        let binding: BindingConfig =
            toml::from_str(&format!("plugin = \"x\"\n{toml_text}")).expect("toml");
        Rules::compile(&binding, "bindings[0]", Path::new(".")).expect("compiles")
    }

    #[test]
    fn fan_out_exact_glob_then_default() {
        let table = RouteTable::new(vec![
            ("exact", vec![p("Order.Created.shop")], false),
            ("glob", vec![p("Order.*"), p("Order.Created.*")], false),
            ("fallback", vec![], true),
        ]);
        assert_eq!(
            table.route(&event("Order.Created.shop")),
            vec![&"exact", &"glob"]
        );
        assert_eq!(table.route(&event("Order.Paid.shop")), vec![&"glob"]);
        assert_eq!(table.route(&event("Payment.Done.bank")), vec![&"fallback"]);
        let no_default = RouteTable::new(vec![("only", vec![p("A")], false)]);
        assert!(no_default.route(&event("B")).is_empty());
    }

    #[test]
    fn content_rules_filter_and_fall_back_to_the_default() {
        let table = RouteTable::with_rules(vec![
            ("added", vec![p("Cart.*")], false, rules("match = { name = \"item.added\" }")),
            ("orders", vec![p("Cart.*")], false, rules("media_types = [\"application/vnd.acme.order+json\", \"application/vnd.acme.v2.*\"]")),
            ("fallback", vec![], true, Rules::default()),
        ]);
        let added = r#"{"name": "item.added"}"#;
        assert_eq!(table.route(&envelope("Cart.X", added, &[])), vec![&"added"]);
        assert_eq!(
            table.route(&envelope("Cart.X", "{}", &[])),
            vec![&"fallback"]
        );
        assert_eq!(
            table.route(&envelope(
                "Cart.X",
                added,
                &[(
                    "media_type",
                    "Application/Vnd.Acme.Order+JSON; charset=utf-8"
                )]
            )),
            vec![&"added", &"orders"],
            "attribute, case and parameters ignored"
        );
        assert_eq!(
            table.route(&envelope(
                "Cart.X",
                r#"{"media_type": "application/vnd.acme.v2.cart"}"#,
                &[]
            )),
            vec![&"orders"],
            "body field, glob"
        );
        assert_eq!(
            table.route(&envelope(
                "Cart.X",
                r#"{"media_type": "application/vnd.acme.v2.cart"}"#,
                &[("media_type", "text/plain")]
            )),
            vec![&"fallback"],
            "the attribute wins over the body field"
        );
        // A default with content rules takes only what they accept.
        let picky = RouteTable::with_rules(vec![("d", vec![], true, rules("match = { a = 1 }"))]);
        assert_eq!(picky.route(&envelope("E", r#"{"a": 1}"#, &[])), vec![&"d"]);
        assert!(picky.route(&envelope("E", r#"{"a": 2}"#, &[])).is_empty());
    }

    /// microcosm-pubsub writes the media type as `mediaType` in the body (its consumer reads
    /// it there); a `media_types` binding takes such a message.
    #[test]
    fn microcosm_body_media_type_routes() {
        let table = RouteTable::with_rules(vec![
            (
                "created",
                vec![p("*")],
                false,
                rules("media_types = [\"application/vnd.globality.pubsub._.created.*\"]"),
            ),
            ("fallback", vec![], true, Rules::default()),
        ]);
        let microcosm = r#"{"mediaType": "application/vnd.globality.pubsub._.created.order", "uri": "http://o/1", "opaqueData": {}}"#;
        assert_eq!(
            table.route(&envelope("E", microcosm, &[])),
            vec![&"created"]
        );
        assert_eq!(
            media_type_of(&envelope("E", microcosm, &[])),
            Some((
                "application/vnd.globality.pubsub._.created.order".to_string(),
                "body field `mediaType`"
            ))
        );
        // The attribute still wins, then `media_type`, then `mediaType`.
        let both = r#"{"media_type": "a/first", "mediaType": "b/second"}"#;
        assert_eq!(
            media_type_of(&envelope("E", both, &[])).map(|(t, _)| t),
            Some("a/first".to_string())
        );
        assert_eq!(
            media_type_of(&envelope("E", both, &[("media_type", "c/attr")])).map(|(t, _)| t),
            Some("c/attr".to_string())
        );
        assert_eq!(
            table.route(&envelope("E", r#"{"mediaType": 5}"#, &[])),
            vec![&"fallback"]
        );
    }

    #[test]
    fn rule_problems_name_their_keys() {
        let binding: BindingConfig = toml::from_str(
            "plugin = \"x\"\nmedia_types = [\"\", \"a b\"]\nschema = \"nope.json\"\n[match]\nsubject = { match = \"(\" }\n",
        )
        .expect("toml");
        let problems =
            Rules::compile(&binding, "bindings[3]", Path::new(".")).expect_err("refused");
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "bindings[3].match.subject",
                "bindings[3].media_types[0]",
                "bindings[3].media_types[1]",
                "bindings[3].schema"
            ],
            "{problems:?}"
        );
    }
}
