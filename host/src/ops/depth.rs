//! Queue depths as gauges: every `metrics.queue_depth_interval_secs` the host asks the broker
//! how many messages its queue and its dead-letter queue hold — visible, in flight, delayed
//! (SQS's approximate counts, `GetQueueAttributes`) — and sets
//! `iniesta_queue_messages{queue, state}`. Dashboards and autoscalers (KEDA) read the backlog
//! from the host itself, without CloudWatch's delay.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, QueueDepth};
use crate::ops::metrics as m;

/// One queue to watch: its name (the gauge's `queue` label) and what to ask the broker for
/// (`None`: the service's own queue).
#[derive(Debug, Clone)]
pub struct Watched {
    /// The queue's name.
    pub name: String,
    /// `None` for the service's own queue, else the name.
    pub ask: Option<String>,
}

/// Set the gauges of `queue` from `depth`.
fn record(queue: &str, depth: QueueDepth) {
    for (state, value) in [
        ("visible", depth.visible),
        ("in_flight", depth.in_flight),
        ("delayed", depth.delayed),
    ] {
        metrics::gauge!(m::QUEUE_MESSAGES, "queue" => queue.to_string(), "state" => state)
            .set(value as f64);
    }
}

/// Poll every `interval` until `shutdown`: the first reading at once. A failing read is
/// logged once until it works again (the gauges keep their last values meanwhile).
pub async fn run(
    broker: Arc<dyn Broker>,
    queues: Vec<Watched>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut failing = vec![false; queues.len()];
    loop {
        for (queue, failing) in queues.iter().zip(failing.iter_mut()) {
            match broker.depth(queue.ask.as_deref()).await {
                Ok(depth) => {
                    if std::mem::take(failing) {
                        tracing::info!(queue = %queue.name, "queue depth readable again");
                    }
                    record(&queue.name, depth);
                }
                Err(e) => {
                    if !std::mem::replace(failing, true) {
                        tracing::warn!(queue = %queue.name, error = %e, "cannot read the queue depth; iniesta_queue_messages keeps its last values until it can");
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
