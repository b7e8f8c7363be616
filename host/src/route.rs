//! Routing: which bindings take an event.
//!
//! Event patterns are exact names or globs where `*` matches any run of characters, dots
//! included (`Order.*` takes `Order.Created.shop`). A message goes to every binding with a
//! matching pattern (fan-out); the default binding takes only events no other binding takes.

use std::collections::HashMap;

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

/// A routing table over bindings of any type `B`.
#[derive(Debug)]
pub struct RouteTable<B> {
    bindings: Vec<B>,
    exact: HashMap<String, Vec<usize>>,
    globs: Vec<(Pattern, usize)>,
    default: Option<usize>,
}

impl<B> RouteTable<B> {
    /// Build a table from bindings with their patterns; `default` marks the default binding.
    pub fn new(entries: Vec<(B, Vec<Pattern>, bool)>) -> Self {
        let mut table = RouteTable {
            bindings: Vec::with_capacity(entries.len()),
            exact: HashMap::new(),
            globs: Vec::new(),
            default: None,
        };
        for (index, (binding, patterns, is_default)) in entries.into_iter().enumerate() {
            table.bindings.push(binding);
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

    /// Every binding that takes `event`, each once, in config order; the default if none does.
    pub fn route(&self, event: &str) -> Vec<&B> {
        let mut hits: Vec<usize> = self.exact.get(event).cloned().unwrap_or_default();
        for (pattern, index) in &self.globs {
            if !hits.contains(index) && pattern.matches(event) {
                hits.push(*index);
            }
        }
        if hits.is_empty() {
            if let Some(default) = self.default {
                hits.push(default);
            }
        }
        hits.sort_unstable();
        hits.into_iter().map(|i| &self.bindings[i]).collect()
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
    /// `bindings[0] (echo/echo)`, for logs.
    pub label: String,
    /// The plugin generation serving this binding.
    pub plugin: std::sync::Arc<crate::plugins::LoadedPlugin>,
    /// The handler's name.
    pub handler_name: String,
    /// The constructed handler.
    pub handler: iniesta_plugin_api::ffi::HandlerBox,
    /// The context handed to every call.
    pub context: iniesta_plugin_api::ffi::HostContextBox,
    /// Per-call timeout.
    pub timeout: std::time::Duration,
    /// Whether this is the default binding.
    pub is_default: bool,
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label)
    }
}

/// The live routing table.
pub type Routes = RouteTable<std::sync::Arc<Binding>>;

/// Construct every binding's handler from the loaded plugins; every problem is reported with
/// its key (`bindings[1].plugin`, `bindings[1].handler`, `bindings[1].config`).
pub fn bind(
    config: &crate::config::Config,
    plugins: &crate::plugins::PluginSet,
    publisher: Option<std::sync::Arc<crate::egress::Publisher>>,
    runtime: Option<tokio::runtime::Handle>,
) -> Result<Routes, Vec<crate::config::Problem>> {
    use crate::config::Problem;
    let mut problems = Vec::new();
    let mut entries = Vec::new();
    for (index, b) in config.bindings.iter().enumerate() {
        let key = format!("bindings[{index}]");
        let Some(plugin) = plugins.get(&b.plugin) else {
            problems.push(Problem {
                key: format!("{key}.plugin"),
                message: plugins.missing_hint(&b.plugin),
            });
            continue;
        };
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
        let handler = match plugin.new_handler(&handler_name, &b.config_json()) {
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
        let label = format!("{key} ({}/{handler_name})", plugin.name);
        let patterns: Vec<Pattern> = b
            .events
            .iter()
            .filter_map(|e| Pattern::parse(e).ok())
            .collect();
        let context = crate::plugins::context::HostContext::boxed(
            publisher.clone(),
            runtime.clone(),
            &plugin.name,
            &label,
        );
        let binding = Binding {
            index,
            label,
            plugin: plugin.clone(),
            handler_name,
            handler,
            context,
            timeout: std::time::Duration::from_secs(
                b.timeout_secs.unwrap_or(config.sqs.handler_timeout_secs),
            ),
            is_default: b.default,
        };
        entries.push((std::sync::Arc::new(binding), patterns, b.default));
    }
    if problems.is_empty() {
        Ok(RouteTable::new(entries))
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

    #[test]
    fn fan_out_exact_glob_then_default() {
        let table = RouteTable::new(vec![
            ("exact", vec![p("Order.Created.shop")], false),
            ("glob", vec![p("Order.*"), p("Order.Created.*")], false),
            ("fallback", vec![], true),
        ]);
        assert_eq!(table.route("Order.Created.shop"), vec![&"exact", &"glob"]);
        assert_eq!(table.route("Order.Paid.shop"), vec![&"glob"]);
        assert_eq!(table.route("Payment.Done.bank"), vec![&"fallback"]);
        let no_default = RouteTable::new(vec![("only", vec![p("A")], false)]);
        assert!(no_default.route("B").is_empty());
    }
}
