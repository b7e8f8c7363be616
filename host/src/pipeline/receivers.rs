//! How many receive loops take turns: adaptive, between `sqs.pollers` and `sqs.max_pollers`.
//!
//! At SQS's real latency (10–30 ms a call) one receive loop moves at most ten messages per
//! round trip, about 500 a second. So the pipeline starts `max_pollers` loops and lets only the
//! first [`Receivers::active`] of them receive: one more takes turns each time a receive comes
//! back full while there is room for another full batch (the queue has more than the loops are
//! taking), one fewer after each empty receive (the queue is drained; an idle loop costs a
//! request per long poll). It never goes under `pollers` nor over `max_pollers`; the
//! `iniesta_receive_loops` gauge shows the count.

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ops::metrics as m;

/// The adaptive count of receive loops.
pub struct Receivers {
    min: usize,
    max: usize,
    active: watch::Sender<usize>,
}

/// What one receive brought, for [`Receivers::after_receive`].
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// Messages asked for.
    pub asked: usize,
    /// Messages the broker returned.
    pub got: usize,
    /// A full receive (`sqs.max_messages`, or `max_in_flight` when that is smaller).
    pub full: usize,
    /// In-flight slots free after this receive's messages took theirs.
    pub free_slots: usize,
}

impl Receivers {
    /// Start with `min` loops taking turns, never fewer, never more than `max`.
    pub fn new(min: usize, max: usize) -> Receivers {
        let min = min.max(1);
        let max = max.max(min);
        let (active, _) = watch::channel(min);
        metrics::gauge!(m::RECEIVE_LOOPS).set(min as f64);
        Receivers { min, max, active }
    }

    /// The most loops: how many the pipeline starts.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Loops taking turns now.
    pub fn active(&self) -> usize {
        *self.active.borrow()
    }

    /// Wait until loop `index` (0-based) may receive; `false` if `shutdown` came first.
    pub async fn turn(&self, index: usize, shutdown: &CancellationToken) -> bool {
        if index < self.active() {
            return true;
        }
        let mut active = self.active.subscribe();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => false,
            woken = active.wait_for(|n| index < *n) => woken.is_ok(),
        }
    }

    /// Grow or shrink after a receive (see the module docs); returns the new count.
    pub fn after_receive(&self, r: Received) -> usize {
        let grow = r.got > 0 && r.got >= r.full && r.asked >= r.full && r.free_slots >= r.full;
        let shrink = r.got == 0;
        let (min, max) = (self.min, self.max);
        self.active.send_if_modified(|n| {
            let next = if grow {
                (*n + 1).min(max)
            } else if shrink {
                n.saturating_sub(1).max(min)
            } else {
                *n
            };
            let changed = next != *n;
            *n = next;
            // Set under the channel's lock, so racing loops cannot leave a stale value.
            metrics::gauge!(m::RECEIVE_LOOPS).set(next as f64);
            changed
        });
        self.active()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(free_slots: usize) -> Received {
        Received {
            asked: 10,
            got: 10,
            full: 10,
            free_slots,
        }
    }

    #[test]
    fn grows_on_full_receives_with_room_and_shrinks_on_empty_ones_within_bounds() {
        let r = Receivers::new(2, 4);
        assert_eq!(r.active(), 2);
        assert_eq!(r.after_receive(full(50)), 3);
        assert_eq!(r.after_receive(full(50)), 4);
        assert_eq!(r.after_receive(full(50)), 4, "never over max");
        // Full, but no room for another full batch: the slots are the limit, not the loops.
        assert_eq!(r.after_receive(full(9)), 4);
        let partial = Received {
            asked: 10,
            got: 3,
            full: 10,
            free_slots: 50,
        };
        assert_eq!(
            r.after_receive(partial),
            4,
            "a partial receive changes nothing"
        );
        let empty = Received { got: 0, ..partial };
        assert_eq!(r.after_receive(empty), 3);
        assert_eq!(r.after_receive(empty), 2);
        assert_eq!(r.after_receive(empty), 2, "never under min");
    }

    #[test]
    fn a_smaller_ask_than_a_full_batch_does_not_grow() {
        let r = Receivers::new(1, 8);
        let small = Received {
            asked: 4,
            got: 4,
            full: 10,
            free_slots: 50,
        };
        assert_eq!(r.after_receive(small), 1);
        assert_eq!(Receivers::new(3, 1).max(), 3, "max is at least min");
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_waits_for_its_turn_and_stops_at_shutdown() {
        let r = std::sync::Arc::new(Receivers::new(1, 3));
        let shutdown = CancellationToken::new();
        assert!(r.turn(0, &shutdown).await);
        let waiting = {
            let (r, shutdown) = (r.clone(), shutdown.clone());
            tokio::spawn(async move { r.turn(1, &shutdown).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        r.after_receive(full(50));
        assert!(
            waiting.await.expect("join"),
            "loop 1 takes turns after a full receive"
        );
        let parked = {
            let (r, shutdown) = (r.clone(), shutdown.clone());
            tokio::spawn(async move { r.turn(2, &shutdown).await })
        };
        tokio::task::yield_now().await;
        shutdown.cancel();
        assert!(!parked.await.expect("join"), "shutdown ends the wait");
    }
}
