//! Long-tail workload mode for system benchmarks (`[workload]`).
//!
//! A tiny CPU model answers in a few dozen tokens with little spread, so a CPU cluster of mpirun
//! processes never shows the long tail that makes a synchronous RL cluster idle. With
//! `[workload]`, every response's length is drawn from a configured distribution (e.g. a
//! truncated lognormal) instead of ending at EOS, and each decode step of a rank lasts at least
//! `decode_step_ms`, as a memory-bound accelerator's decode step does whatever its batch (the
//! rest of the step is slept, not spun, so co-located ranks keep their cores). The draws are
//! seeded by (run seed, step, prompt, sample): the same config gives the same lengths for any
//! batch size or rank count. Rewards of forced-length responses are meaningless; this mode
//! measures the system, not learning.

use arbor_sim::dist::Dist;
use arbor_sim::rng::Rng as SimRng;
use serde::{Deserialize, Serialize};

/// `[workload]`: forced response lengths and an emulated decode-step time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadConfig {
    /// Response length in tokens (`{ kind = "lognormal", median = 24, sigma = 0.8, max = 96 }`,
    /// `constant`, `gaussian`, `pareto`, `gaussian_mixture`); clamped to [1, rl.max_new_tokens].
    pub lengths: Dist,
    /// Least wall time of one decode step of a rank, ms (0 = compute time only).
    #[serde(default)]
    pub decode_step_ms: f64,
}

/// Check a distribution of a trainer config (`key` names it): valid parameters, and parametric
/// (`empirical` reads a CSV relative to a simulator scenario, which a trainer config has not).
pub fn check_parametric(key: &str, d: &Dist) -> Result<(), (String, String)> {
    if matches!(d, Dist::Empirical { .. }) {
        return Err((
            key.into(),
            "kind = \"empirical\" is for simulator scenarios; give a parametric distribution".into(),
        ));
    }
    d.check(key).map_err(|e| (key.into(), format!("{e:#}")))
}

/// Salt of the length stream, so it never coincides with a sampling stream.
const LENGTH_STREAM: u64 = 0x1e6_7a11;

impl WorkloadConfig {
    /// Check the section: (key, message) on error.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(self.decode_step_ms.is_finite() && (0.0..=10_000.0).contains(&self.decode_step_ms)) {
            return Err(("workload.decode_step_ms".into(), format!("{} must be in [0, 10000]", self.decode_step_ms)));
        }
        check_parametric("workload.lengths", &self.lengths)?;
        Ok(())
    }

    /// The forced length of one response, in [1, max_new].
    pub fn length(&self, seed: u64, step: u64, prompt_id: u64, sample_index: u32, max_new: usize) -> usize {
        let mut rng = SimRng::for_coords(seed ^ LENGTH_STREAM, &[step, prompt_id, u64::from(sample_index)]);
        let x = self.lengths.sample(&mut rng).round();
        if x.is_finite() {
            (x.max(1.0) as usize).min(max_new.max(1))
        } else {
            max_new.max(1)
        }
    }

    /// Least duration of a decode step.
    pub fn step_floor(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.decode_step_ms * 1e-3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lognormal() -> WorkloadConfig {
        let text = "lengths = { kind = \"lognormal\", median = 20, sigma = 1.0, max = 200 }\ndecode_step_ms = 2";
        toml::from_str(text).unwrap()
    }

    #[test]
    fn lengths_are_seeded_bounded_and_long_tailed() {
        let w = lognormal();
        w.validate().unwrap();
        let draws: Vec<usize> = (0..4000).map(|i| w.length(7, 3, i / 8, (i % 8) as u32, 128)).collect();
        assert!(draws.iter().all(|&l| (1..=128).contains(&l)));
        let again: Vec<usize> = (0..4000).map(|i| w.length(7, 3, i / 8, (i % 8) as u32, 128)).collect();
        assert_eq!(draws, again, "same seed, same lengths");
        let other: Vec<usize> = (0..4000).map(|i| w.length(8, 3, i / 8, (i % 8) as u32, 128)).collect();
        assert_ne!(draws, other, "the seed matters");
        let mut sorted = draws.clone();
        sorted.sort_unstable();
        let (median, p99) = (sorted[2000], sorted[3960]);
        assert!((17..=23).contains(&median), "median {median} ≈ 20");
        // lognormal σ = 1: p99 ≈ e^2.33 ≈ 10× the median, truncated at 128
        assert!(p99 >= 5 * median, "long tail: p99 {p99} vs median {median}");
        assert!(sorted.iter().filter(|&&l| l == 128).count() > 0, "the tail piles up at the cap");
    }

    #[test]
    fn bad_sections_name_their_key() {
        let mut w = lognormal();
        w.decode_step_ms = -1.0;
        assert_eq!(w.validate().unwrap_err().0, "workload.decode_step_ms");
        let mut w = lognormal();
        w.lengths = Dist::Lognormal { median: 10.0, sigma: -1.0, min: 0.0, max: 10.0 };
        assert_eq!(w.validate().unwrap_err().0, "workload.lengths");
    }
}
