//! `[async]`: the schema of disaggregated rollout and training ranks (the loop: `train::async_rl`).

use serde::{Deserialize, Serialize};

/// `[async]`: disaggregated rollout and training ranks with a staleness bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsyncConfig {
    /// Ranks that only generate: the last `rollout_ranks` of the world (≥ 1; at least one rank must train).
    pub rollout_ranks: usize,
    /// Async ratio α ≥ 0: batch b is generated with policy version b − ⌈α⌉ (0 = synchronous).
    #[serde(default)]
    pub alpha: f64,
}

impl AsyncConfig {
    /// Check the section's own values: (key, message) on error. What it needs from other
    /// sections is checked in `config::rules`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: String| Err((format!("async.{k}"), m));
        if self.rollout_ranks == 0 {
            return bad("rollout_ranks", "0 must be at least 1 (without rollout ranks, drop [async])".into());
        }
        if !(self.alpha.is_finite() && (0.0..=64.0).contains(&self.alpha)) {
            return bad("alpha", format!("{} must be a number in [0, 64]", self.alpha));
        }
        Ok(())
    }

    /// k = ⌈α⌉: how many batches generation may run ahead.
    pub fn lag(&self) -> u64 {
        self.alpha.ceil() as u64
    }
}
