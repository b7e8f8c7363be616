//! A binding's circuit breaker: closed, it counts failed calls in a row; at
//! `consecutive_failures` it opens and the binding is handed nothing for `cooldown_secs` (the
//! pipeline gives its messages back with that delay); then it is half-open: one message probes
//! it, and a success closes it, a failure opens it again. State is on the tokio clock and in
//! `iniesta_circuit_state{binding}` (0 closed, 1 open, 2 half-open).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::policy::BreakerConfig;
use crate::ops::metrics as m;

/// Where a circuit stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the cooldown ends.
    Open,
    /// One probe call decides.
    HalfOpen,
}

impl CircuitState {
    /// `closed`, `open`, `half-open`.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half-open",
        }
    }

    fn gauge(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::Open => 1.0,
            CircuitState::HalfOpen => 2.0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed {
        in_a_row: u32,
    },
    Open {
        until: Instant,
    },
    /// `probing`: since when a probe runs (one that never reports, its message given back
    /// for another reason or the host stopping, is given up after a cooldown).
    HalfOpen {
        probing: Option<Instant>,
    },
}

/// What a call of the binding may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go on; `probe` when this call decides a half-open circuit.
    Go {
        /// This call is the half-open circuit's probe.
        probe: bool,
    },
    /// Not now: come back after this long.
    Wait(Duration),
}

/// How a call went, as the breaker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// It acked.
    Ok,
    /// An error, a panic, a timeout or a crashed worker.
    Failed,
    /// A retry or a dead-letter outcome: the handler ran and decided; nothing is counted.
    Neutral,
}

/// One binding's circuit breaker.
#[derive(Debug)]
pub struct Breaker {
    binding: String,
    config: BreakerConfig,
    state: Mutex<State>,
    /// Replaced by a reload (or its binding removed): calls still running on it count, but
    /// its state is no longer the binding's gauge.
    retired: AtomicBool,
}

impl Breaker {
    /// A closed circuit for `binding` (shown in the gauge once [`Breaker::show`] is called,
    /// when the bind it is part of succeeded).
    pub fn new(binding: &str, config: BreakerConfig) -> Breaker {
        Breaker {
            binding: binding.to_string(),
            config,
            state: Mutex::new(State::Closed { in_a_row: 0 }),
            retired: AtomicBool::new(false),
        }
    }

    /// Show this circuit's state in `iniesta_circuit_state`.
    pub fn show(&self) {
        let state = Self::view(&crate::mutex::lock(&self.state));
        metrics::gauge!(m::CIRCUIT_STATE, "binding" => self.binding.clone()).set(state.gauge());
    }

    /// No longer the binding's circuit: the gauge shows closed until a new one shows itself.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        metrics::gauge!(m::CIRCUIT_STATE, "binding" => self.binding.clone())
            .set(CircuitState::Closed.gauge());
    }

    fn cooldown(&self) -> Duration {
        Duration::from_secs(u64::from(self.config.cooldown_secs))
    }

    fn set(&self, state: &mut State, to: State) -> CircuitState {
        *state = to;
        let now = Self::view(&to);
        if !self.retired.load(Ordering::Relaxed) {
            metrics::gauge!(m::CIRCUIT_STATE, "binding" => self.binding.clone()).set(now.gauge());
        }
        now
    }

    fn view(state: &State) -> CircuitState {
        match state {
            State::Closed { .. } => CircuitState::Closed,
            State::Open { .. } => CircuitState::Open,
            State::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// Whether a call may start now.
    pub fn admit(&self) -> Admission {
        let mut state = crate::mutex::lock(&self.state);
        let now = Instant::now();
        match *state {
            State::Closed { .. } => Admission::Go { probe: false },
            State::Open { until } if now < until => Admission::Wait(until - now),
            State::HalfOpen {
                probing: Some(since),
            } if now < since + self.cooldown() => Admission::Wait(since + self.cooldown() - now),
            State::Open { .. } => {
                self.set(&mut state, State::HalfOpen { probing: Some(now) });
                tracing::info!(binding = %self.binding, "circuit half-open: one message probes the binding");
                Admission::Go { probe: true }
            }
            State::HalfOpen { .. } => {
                *state = State::HalfOpen { probing: Some(now) };
                Admission::Go { probe: true }
            }
        }
    }

    /// An admitted probe did not run after all (another binding of its message was refused):
    /// the next message probes instead.
    pub fn abandon_probe(&self) {
        let mut state = crate::mutex::lock(&self.state);
        if let State::HalfOpen { probing: Some(_) } = *state {
            *state = State::HalfOpen { probing: None };
        }
    }

    /// Count a call's result; the new state when it changed.
    pub fn record(&self, health: Health, probe: bool) -> Option<CircuitState> {
        let mut state = crate::mutex::lock(&self.state);
        match (*state, health) {
            (State::Closed { .. }, Health::Ok) => {
                *state = State::Closed { in_a_row: 0 };
                None
            }
            (State::Closed { in_a_row }, Health::Failed) => {
                let in_a_row = in_a_row + 1;
                if in_a_row >= self.config.consecutive_failures {
                    tracing::warn!(binding = %self.binding, failures_in_a_row = in_a_row, cooldown_secs = self.config.cooldown_secs,
                        "circuit open: the binding is handed no message until the cooldown ends (its messages wait on the queue)");
                    Some(self.set(
                        &mut state,
                        State::Open {
                            until: Instant::now() + self.cooldown(),
                        },
                    ))
                } else {
                    *state = State::Closed { in_a_row };
                    None
                }
            }
            (State::HalfOpen { .. }, Health::Ok) if probe => {
                tracing::info!(binding = %self.binding, "circuit closed: the probe succeeded");
                Some(self.set(&mut state, State::Closed { in_a_row: 0 }))
            }
            (State::HalfOpen { .. }, Health::Failed) if probe => {
                tracing::warn!(binding = %self.binding, cooldown_secs = self.config.cooldown_secs, "circuit open again: the probe failed");
                Some(self.set(
                    &mut state,
                    State::Open {
                        until: Instant::now() + self.cooldown(),
                    },
                ))
            }
            (State::HalfOpen { .. }, Health::Neutral) if probe => {
                *state = State::HalfOpen { probing: None };
                None
            }
            // A call admitted before the circuit opened, ending now: the state stands.
            _ => None,
        }
    }

    /// The state now, and how long an open circuit stays open.
    pub fn state(&self) -> (CircuitState, Option<Duration>) {
        let state = crate::mutex::lock(&self.state);
        let open_for = match *state {
            State::Open { until } => Some(until.saturating_duration_since(Instant::now())),
            _ => None,
        };
        (Self::view(&state), open_for)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(
            "b",
            BreakerConfig {
                consecutive_failures: 3,
                cooldown_secs: 60,
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn failures_in_a_row_open_it_a_probe_decides() {
        let b = breaker();
        // A success in between starts the count again.
        for health in [
            Health::Failed,
            Health::Failed,
            Health::Ok,
            Health::Failed,
            Health::Failed,
        ] {
            assert_eq!(b.admit(), Admission::Go { probe: false });
            assert_eq!(b.record(health, false), None);
        }
        assert_eq!(
            b.record(Health::Neutral, false),
            None,
            "neutral counts nothing"
        );
        assert_eq!(b.record(Health::Failed, false), Some(CircuitState::Open));
        assert_eq!(b.admit(), Admission::Wait(Duration::from_secs(60)));
        tokio::time::advance(Duration::from_secs(45)).await;
        assert_eq!(b.admit(), Admission::Wait(Duration::from_secs(15)));
        // A call from before it opened changes nothing.
        assert_eq!(b.record(Health::Ok, false), None);
        assert_eq!(b.state().0, CircuitState::Open);
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(b.admit(), Admission::Go { probe: true });
        assert_eq!(b.state().0, CircuitState::HalfOpen);
        assert_eq!(
            b.admit(),
            Admission::Wait(Duration::from_secs(60)),
            "one probe at a time"
        );
        // A probe that never reports is given up after a cooldown: another message probes.
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(b.admit(), Admission::Wait(Duration::from_secs(40)));
        tokio::time::advance(Duration::from_secs(40)).await;
        assert_eq!(b.admit(), Admission::Go { probe: true });
        // The probe fails: open for another cooldown.
        assert_eq!(b.record(Health::Failed, true), Some(CircuitState::Open));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(b.admit(), Admission::Go { probe: true });
        // A probe that did not run after all: the next message probes.
        b.abandon_probe();
        assert_eq!(b.admit(), Admission::Go { probe: true });
        assert_eq!(b.record(Health::Neutral, true), None);
        assert_eq!(b.admit(), Admission::Go { probe: true });
        assert_eq!(b.record(Health::Ok, true), Some(CircuitState::Closed));
        assert_eq!(b.admit(), Admission::Go { probe: false });
    }
}
