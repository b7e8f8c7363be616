//! Completion records: "binding B acked message M", kept for a while so a redelivered
//! duplicate of M does not run B again.
//!
//! A record names the binding by [`binding_id`]: its position in `[[bindings]]` plus its
//! plugin and handler names. That stays the same across restarts and hot reloads of the same
//! config; reordering or editing bindings changes it, and then a duplicate may run a binding
//! again (the safe direction: at-least-once, never a wrong skip of a different handler unless
//! two bindings swap places with the same plugin and handler).
//!
//! Records are written only after a handler acked, so reading "any node has it" can never
//! skip a handler that did not succeed. They expire after `lock.completion_ttl_secs`.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::route::Binding;

/// The id a completion record uses for a binding: `{index}:{plugin}/{handler}`.
pub fn binding_id(index: usize, plugin: &str, handler: &str) -> String {
    format!("{index}:{plugin}/{handler}")
}

/// [`binding_id`] of a bound binding.
pub fn id_of(binding: &Binding) -> String {
    binding_id(binding.index, &binding.plugin.name, &binding.handler_name)
}

/// Most in-process records kept: past it the soonest-expiring are dropped early (which can
/// only make a duplicate run again, never skip a handler wrongly).
pub const MAX_LOCAL_RECORDS: usize = 1_000_000;

/// In-process completion records with expiry; memory stays bounded by what completed within
/// one TTL, and by [`MAX_LOCAL_RECORDS`].
#[derive(Debug, Default)]
pub struct LocalRecords {
    by_message: HashMap<String, HashMap<String, Instant>>,
    /// (expiry, message, binding), soonest first: pruning pops what has expired.
    expiries: BinaryHeap<Reverse<(Instant, String, String)>>,
}

impl LocalRecords {
    /// No records.
    pub fn new() -> Self {
        Self::default()
    }

    /// Record that `bindings` completed `message_id`, until `ttl` from now.
    pub fn record(&mut self, message_id: &str, bindings: &[String], ttl: Duration) {
        let now = Instant::now();
        self.prune(now);
        while self.expiries.len() + bindings.len() > MAX_LOCAL_RECORDS {
            let Some(Reverse((_, message, binding))) = self.expiries.pop() else {
                break;
            };
            self.forget(&message, &binding, None);
        }
        let expires = now + ttl;
        let entry = self.by_message.entry(message_id.to_string()).or_default();
        for binding in bindings {
            entry.insert(binding.clone(), expires);
            self.expiries
                .push(Reverse((expires, message_id.to_string(), binding.clone())));
        }
    }

    /// The bindings recorded (and not expired) for `message_id`.
    pub fn completed(&mut self, message_id: &str) -> BTreeSet<String> {
        let now = Instant::now();
        self.prune(now);
        self.by_message
            .get(message_id)
            .map(|m| {
                m.iter()
                    .filter(|(_, expires)| **expires > now)
                    .map(|(b, _)| b.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Records held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.by_message.values().map(HashMap::len).sum()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.by_message.is_empty()
    }

    fn prune(&mut self, now: Instant) {
        while let Some(Reverse((expires, _, _))) = self.expiries.peek() {
            if *expires > now {
                break;
            }
            let Some(Reverse((_, message, binding))) = self.expiries.pop() else {
                break;
            };
            self.forget(&message, &binding, Some(now));
        }
    }

    /// Drop a record; with `expired_by`, only if it was not written again with a later expiry.
    fn forget(&mut self, message: &str, binding: &str, expired_by: Option<Instant>) {
        if let Some(bindings) = self.by_message.get_mut(message) {
            if bindings
                .get(binding)
                .is_some_and(|e| expired_by.is_none_or(|now| *e <= now))
            {
                bindings.remove(binding);
            }
            if bindings.is_empty() {
                self.by_message.remove(message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_position_plugin_and_handler() {
        assert_eq!(binding_id(2, "ledger", "ledger"), "2:ledger/ledger");
    }

    #[tokio::test]
    async fn records_expire_and_memory_is_bounded() {
        let mut records = LocalRecords::new();
        let short = Duration::from_millis(30);
        records.record("m1", &["0:a/a".into(), "1:b/b".into()], short);
        records.record("m2", &["0:a/a".into()], Duration::from_secs(60));
        assert_eq!(
            records.completed("m1"),
            BTreeSet::from(["0:a/a".to_string(), "1:b/b".to_string()])
        );
        assert!(records.completed("m3").is_empty());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(records.completed("m1").is_empty(), "expired");
        assert_eq!(records.len(), 1, "expired records are dropped, not kept");
        for i in 0..1000 {
            records.record(&format!("x{i}"), &["0:a/a".into()], short);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        records.record("y", &["0:a/a".into()], short);
        assert_eq!(records.len(), 2, "m2 and y remain");
    }

    #[tokio::test]
    async fn rewriting_a_record_extends_it() {
        let mut records = LocalRecords::new();
        records.record("m", &["0:a/a".into()], Duration::from_millis(20));
        records.record("m", &["0:a/a".into()], Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(records.completed("m").len(), 1);
    }
}
