//! Latency and failure injection: wraps any environment so that each reset and step takes a
//! time drawn from a distribution (a real sleep) and fails with a given probability.
//!
//! Every draw is keyed by (seed, game, sample, turn, attempt), so a trajectory meets the same
//! latencies and failures whichever runner mode or rank plays it: sync and env-level async runs
//! of one config differ only in wall time.

use crate::env::{Env, EnvFailure, Turn};
use arbor_sim::dist::Dist;
use arbor_sim::rng::Rng as SimRng;
use std::time::Duration;

/// Latency distributions (milliseconds) and a failure rate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencyModel {
    pub reset_ms: Option<Dist>,
    pub step_ms: Option<Dist>,
    /// Probability that one call fails (after its latency).
    pub failure_rate: f64,
}

/// Which call of a trajectory, for the random streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallKey {
    pub seed: u64,
    pub game: u64,
    pub sample: u32,
    /// 0 = reset, t + 1 = the step after turn t.
    pub call: u32,
    pub attempt: u32,
}

impl LatencyModel {
    /// Latency and failure of one call.
    pub fn draw(&self, key: CallKey) -> (Duration, bool) {
        let mut rng = SimRng::for_coords(
            key.seed ^ 0x1a7e,
            &[key.game, u64::from(key.sample), u64::from(key.call), u64::from(key.attempt)],
        );
        let dist = if key.call == 0 { &self.reset_ms } else { &self.step_ms };
        let ms = dist.as_ref().map_or(0.0, |d| d.sample(&mut rng));
        let fail = self.failure_rate > 0.0 && rng.uniform() < self.failure_rate;
        let ms = if ms.is_finite() { ms.clamp(0.0, 600_000.0) } else { 0.0 };
        (Duration::from_secs_f64(ms * 1e-3), fail)
    }
}

/// An environment behind a slow, unreliable connection.
pub struct Latent<E> {
    pub inner: E,
    pub model: LatencyModel,
    pub key: CallKey,
    /// Sleep for the drawn latencies (false: draw failures only, e.g. for evaluation).
    pub sleep: bool,
}

impl<E: Env> Latent<E> {
    fn call<T>(&mut self, f: impl FnOnce(&mut E) -> Result<T, EnvFailure>) -> Result<T, EnvFailure> {
        let (wait, fail) = self.model.draw(self.key);
        if self.sleep && !wait.is_zero() {
            std::thread::sleep(wait);
        }
        if fail {
            return Err(EnvFailure(format!(
                "injected failure (game {}, sample {}, call {}, attempt {})",
                self.key.game, self.key.sample, self.key.call, self.key.attempt
            )));
        }
        f(&mut self.inner)
    }
}

impl<E: Env> Env for Latent<E> {
    fn reset(&mut self) -> Result<String, EnvFailure> {
        self.call(|e| e.reset())
    }

    fn step(&mut self, action: &str) -> Result<Turn, EnvFailure> {
        self.call(|e| e.step(action))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_keyed_and_the_failure_rate_holds() {
        let m = LatencyModel {
            reset_ms: None,
            step_ms: Some(Dist::Lognormal { median: 5.0, sigma: 1.0, min: 0.0, max: 50.0 }),
            failure_rate: 0.25,
        };
        let key = |i: u64| CallKey { seed: 1, game: i, sample: 2, call: 1, attempt: 0 };
        let draws: Vec<_> = (0..4000).map(|i| m.draw(key(i))).collect();
        assert_eq!(draws, (0..4000).map(|i| m.draw(key(i))).collect::<Vec<_>>());
        let fails = draws.iter().filter(|d| d.1).count() as f64 / 4000.0;
        assert!((fails - 0.25).abs() < 0.03, "failure rate {fails}");
        assert!(draws.iter().all(|d| d.0 <= Duration::from_millis(50)));
        let reset = m.draw(CallKey { call: 0, ..key(0) });
        assert_eq!(reset.0, Duration::ZERO, "no reset latency configured");
    }
}
