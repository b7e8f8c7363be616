//! The routing checks of `[[bindings]]` that need the routing code: the `match` DSL, media
//! types and schemas compile, and every event pattern parses and can be reached.

use crate::config::{BindingConfig, Config, InitializationType, Problem};

use super::{Pattern, Rules};

/// Problems with `binding` (keyed under `key`, e.g. `bindings[2]`) that compiling its rules
/// and parsing its patterns find.
pub fn binding_problems(config: &Config, key: &str, binding: &BindingConfig) -> Vec<Problem> {
    let mut problems = Rules::compile(binding, key, &config.base_dir)
        .err()
        .unwrap_or_default();
    for (j, event) in binding.events.iter().enumerate() {
        let ekey = format!("{key}.events[{j}]");
        match Pattern::parse(event) {
            Ok(pattern) => {
                if let Some(message) = unreachable_reason(config, &pattern) {
                    problems.push(Problem::new(ekey, message));
                }
            }
            Err(e) => problems.push(Problem::new(ekey, e)),
        }
    }
    problems
}

/// Why no event this host receives could ever match `pattern`, if that is so.
///
/// Only EVENT_POLLING without QUEUE_POLLING restricts what arrives: the subscription's
/// filter policy lets through only names matching `sqs.filters`. Ingress plugins
/// (`[[ingress]]`) bring events that never pass that filter, so with any of them
/// configured every pattern may be reached.
fn unreachable_reason(config: &Config, pattern: &Pattern) -> Option<String> {
    if !config.does(InitializationType::EventPolling)
        || config.does(InitializationType::QueuePolling)
        || config.sqs.filters.is_empty()
        || !config.ingress.is_empty()
    {
        return None;
    }
    let reachable = config
        .sqs
        .filters
        .iter()
        .any(|filter| match filter.strip_suffix('*') {
            Some(prefix) => pattern.can_match_prefix(prefix),
            None => pattern.matches(filter),
        });
    if reachable {
        None
    } else {
        Some(format!(
            "`{}` can never match: the queue only receives events matching sqs.filters {:?} (add a filter for it, or fix the pattern; published names end in `.{{service}}`)",
            pattern.as_str(),
            config.sqs.filters
        ))
    }
}
