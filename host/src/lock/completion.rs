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

/// Most distinct binding ids the in-process records name at once (a bit each). Past it
/// (bindings edited and reloaded many times over) every record is dropped and the names start
/// afresh: duplicates may then run again, never skip a handler wrongly.
pub const MAX_LOCAL_BINDING_IDS: usize = 64;

/// A message id as the records key it: the 128 bits of an SQS message id (a UUID), else the
/// first 128 bits of the id's SHA-256 (a collision is a 2^-128 chance).
type MessageKey = u128;

fn key_of(message_id: &str) -> MessageKey {
    match uuid::Uuid::try_parse(message_id) {
        Ok(uuid) => uuid.as_u128(),
        Err(_) => {
            use sha2::Digest as _;
            let digest = sha2::Sha256::digest(message_id.as_bytes());
            let mut first = [0u8; 16];
            first.copy_from_slice(&digest[..16]);
            u128::from_be_bytes(first)
        }
    }
}

/// One message's record: which bindings completed it (a bit per [`LocalRecords::names`]
/// entry), and until when (ms after [`LocalRecords::base`]; writing again extends it).
#[derive(Debug, Clone, Copy)]
struct Record {
    bindings: u64,
    expires_ms: u64,
}

/// In-process completion records with expiry; memory stays bounded by what completed within
/// one TTL, and by [`MAX_LOCAL_RECORDS`]. A message's record is a 128-bit key, a binding
/// bitmask and an expiry, plus the expiry queue's entry: 64 bytes, about 130 at peak with the
/// tables' spare room (measured: 38 MB for 300,000 messages; the string-keyed records before
/// took 170 MB), so the cap is about 130 MB.
#[derive(Debug)]
pub struct LocalRecords {
    by_message: HashMap<MessageKey, Record>,
    /// (expiry, message), soonest first: pruning pops what has expired.
    expiries: BinaryHeap<Reverse<(u64, MessageKey)>>,
    /// The binding ids the bits stand for.
    names: Vec<String>,
    /// The zero of the expiries.
    base: Instant,
}

impl Default for LocalRecords {
    fn default() -> Self {
        LocalRecords {
            by_message: HashMap::new(),
            expiries: BinaryHeap::new(),
            names: Vec::new(),
            base: Instant::now(),
        }
    }
}

impl LocalRecords {
    /// No records.
    pub fn new() -> Self {
        Self::default()
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }

    /// The bits of `bindings`, naming the new ones first. When they do not all fit beside
    /// the names held, every record and name is dropped before any bit is given out, so a
    /// bit never stands for a binding other than the one it was recorded for.
    fn bits_of(&mut self, bindings: &[String]) -> u64 {
        let new = bindings
            .iter()
            .filter(|b| !self.names.contains(b))
            .collect::<BTreeSet<_>>()
            .len();
        if self.names.len() + new > MAX_LOCAL_BINDING_IDS {
            tracing::debug!(
                records = self.by_message.len(),
                "completion records name {MAX_LOCAL_BINDING_IDS} binding ids: dropping every record and starting afresh"
            );
            *self = LocalRecords {
                base: self.base,
                ..LocalRecords::default()
            };
        }
        let mut bits = 0;
        for binding in bindings.iter().take(MAX_LOCAL_BINDING_IDS) {
            let index = match self.names.iter().position(|n| n == binding) {
                Some(index) => index,
                None => {
                    self.names.push(binding.clone());
                    self.names.len() - 1
                }
            };
            bits |= 1 << index;
        }
        bits
    }

    /// Record that `bindings` completed `message_id`, until `ttl` from now.
    pub fn record(&mut self, message_id: &str, bindings: &[String], ttl: Duration) {
        let now = Instant::now();
        self.prune(now);
        let bits = self.bits_of(bindings);
        let key = key_of(message_id);
        let expires_ms = self.ms(now + ttl);
        match self.by_message.get_mut(&key) {
            // Written again: its queue entry stays; pruning finds the later expiry there.
            Some(record) => {
                record.bindings |= bits;
                record.expires_ms = record.expires_ms.max(expires_ms);
            }
            None => {
                while self.by_message.len() >= MAX_LOCAL_RECORDS {
                    let Some(Reverse((_, oldest))) = self.expiries.pop() else {
                        break;
                    };
                    self.by_message.remove(&oldest);
                }
                self.by_message.insert(
                    key,
                    Record {
                        bindings: bits,
                        expires_ms,
                    },
                );
                self.expiries.push(Reverse((expires_ms, key)));
            }
        }
    }

    /// The bindings recorded (and not expired) for `message_id`.
    pub fn completed(&mut self, message_id: &str) -> BTreeSet<String> {
        let now = Instant::now();
        self.prune(now);
        let now_ms = self.ms(now);
        match self.by_message.get(&key_of(message_id)) {
            Some(record) if record.expires_ms > now_ms => self
                .names
                .iter()
                .enumerate()
                .filter(|(i, _)| record.bindings & (1 << i) != 0)
                .map(|(_, name)| name.clone())
                .collect(),
            _ => BTreeSet::new(),
        }
    }

    /// Messages with a record (for tests and metrics).
    pub fn len(&self) -> usize {
        self.by_message.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.by_message.is_empty()
    }

    /// Drop the records that expired. Each record has one entry in the queue, with the
    /// expiry it was first written with; a record written again since is put back with its
    /// later expiry instead of dropped.
    fn prune(&mut self, now: Instant) {
        let now_ms = self.ms(now);
        while let Some(Reverse((expires_ms, key))) = self.expiries.peek().copied() {
            if expires_ms > now_ms {
                break;
            }
            self.expiries.pop();
            match self.by_message.get(&key).map(|r| r.expires_ms) {
                Some(later) if later > now_ms => self.expiries.push(Reverse((later, key))),
                Some(_) => {
                    self.by_message.remove(&key);
                }
                None => {}
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
    async fn uuid_and_other_ids_are_told_apart_and_bindings_come_back_by_name() {
        let mut records = LocalRecords::new();
        let uuid = "1f0c9d3e-8a41-4c55-9a0e-6f2b8d3c1a77";
        records.record(uuid, &["0:a/a".into()], Duration::from_secs(60));
        records.record("local-42", &["1:b/b".into()], Duration::from_secs(60));
        records.record("local-42", &["2:c/c".into()], Duration::from_secs(60));
        assert_eq!(
            records.completed(uuid),
            BTreeSet::from(["0:a/a".to_string()])
        );
        assert_eq!(
            records.completed(&uuid.to_uppercase()),
            BTreeSet::from(["0:a/a".to_string()]),
            "the same UUID, however it is spelt"
        );
        assert_eq!(
            records.completed("local-42"),
            BTreeSet::from(["1:b/b".to_string(), "2:c/c".to_string()])
        );
        assert!(records.completed("local-43").is_empty());
        assert_eq!(records.len(), 2);
    }

    #[tokio::test]
    async fn past_the_binding_id_limit_records_start_afresh_and_never_name_the_wrong_binding() {
        let mut records = LocalRecords::new();
        let ttl = Duration::from_secs(60);
        for i in 0..MAX_LOCAL_BINDING_IDS {
            records.record(&format!("m{i}"), &[format!("{i}:p/h")], ttl);
        }
        assert_eq!(
            records.completed("m63"),
            BTreeSet::from(["63:p/h".to_string()])
        );
        records.record("new", &["64:p/h".into()], ttl);
        assert!(records.completed("m0").is_empty(), "dropped, not misnamed");
        assert_eq!(
            records.completed("new"),
            BTreeSet::from(["64:p/h".to_string()])
        );
        assert_eq!(records.len(), 1);
    }

    #[tokio::test]
    async fn a_record_of_several_bindings_across_the_reset_names_only_them() {
        let mut records = LocalRecords::new();
        let ttl = Duration::from_secs(60);
        for i in 0..MAX_LOCAL_BINDING_IDS - 1 {
            records.record(&format!("m{i}"), &[format!("{i}:p/h")], ttl);
        }
        // One name is left and two are new: everything starts afresh before any bit is set.
        records.record(
            "two",
            &["0:p/h".into(), "x:p/h".into(), "y:p/h".into()],
            ttl,
        );
        assert_eq!(
            records.completed("two"),
            BTreeSet::from([
                "0:p/h".to_string(),
                "x:p/h".to_string(),
                "y:p/h".to_string()
            ])
        );
        records.record("next", &["z:p/h".into()], ttl);
        assert_eq!(
            records.completed("next"),
            BTreeSet::from(["z:p/h".to_string()])
        );
        assert_eq!(
            records.completed("two").len(),
            3,
            "still exactly its own three"
        );
    }

    #[tokio::test]
    async fn one_queue_entry_per_message_however_many_bindings_record_it() {
        let mut records = LocalRecords::new();
        let ttl = Duration::from_millis(30);
        for i in 0..100 {
            for b in 0..5 {
                records.record(&format!("m{i}"), &[format!("{b}:p/h")], ttl);
            }
        }
        assert_eq!(records.len(), 100);
        assert_eq!(records.expiries.len(), 100);
        tokio::time::sleep(Duration::from_millis(50)).await;
        records.record("after", &["0:p/h".into()], ttl);
        assert_eq!((records.len(), records.expiries.len()), (1, 1));
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
