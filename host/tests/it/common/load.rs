//! A steady publisher for reload-under-load tests.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use iniesta::broker::local::LocalBroker;
use iniesta::broker::Broker as _;
use iniesta::config::Config;

/// Publishes `Order.Load` messages with increasing `seq` from a thread until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Start publishing (one message every 15 ms) to the config's local broker.
    pub fn start(config: &Path) -> Load {
        let config = Config::load(config).expect("config");
        let (stop, sent) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s2, n2) = (stop.clone(), sent.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async move {
                let broker = LocalBroker::open(&config).await.expect("broker");
                while !s2.load(Ordering::SeqCst) {
                    let seq = n2.load(Ordering::SeqCst);
                    let message = iniesta::wire::encode(
                        "Order.Load",
                        "receiver",
                        "iniesta_pass",
                        format!("{{\"seq\":{seq}}}").into_bytes(),
                        Default::default(),
                        &iniesta::wire::SizeLimit::sns(),
                    )
                    .expect("encode");
                    broker.publish(&message).await.expect("publish");
                    n2.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            });
        });
        Load {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    /// Stop; the number of messages sent.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("load thread");
        }
        self.sent.load(Ordering::SeqCst)
    }
}

/// How many times each `seq` of a [`Load`] was handled, from ledger lines.
pub fn handled_per_seq(lines: &[serde_json::Value]) -> BTreeMap<u64, usize> {
    let mut per_seq = BTreeMap::new();
    for line in lines {
        let seq = super::body_of(line)["seq"].as_u64().expect("seq");
        *per_seq.entry(seq).or_default() += 1;
    }
    per_seq
}

/// The ledger plugin generations (`mark`) in the order they first handled a message.
pub fn marks_in_order(lines: &[serde_json::Value]) -> Vec<u32> {
    let mut seen = Vec::new();
    for line in lines {
        let mark: u32 = line["mark"]
            .as_str()
            .and_then(|m| m.parse().ok())
            .expect("mark");
        if !seen.contains(&mark) {
            seen.push(mark);
        }
    }
    seen
}
