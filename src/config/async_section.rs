//! `[async]`: the schema of disaggregated rollout and training ranks (the loop: `train::async_rl`).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// How rollout ranks schedule generation across batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutMode {
    /// Batch-locked (deterministic): batch b is generated entirely with policy version
    /// max(first, b − ⌈α⌉); a rank starts batch b + 1 once its share of batch b is done.
    #[default]
    Batch,
    /// Continuous (ROLL Flash): a rank keeps every slot busy, a finished group goes to the trainer
    /// at once and the slot starts the next prompt (possibly of a later batch) with the newest
    /// weights received, as long as the prompt's batch is at most ⌈α⌉ versions ahead of them.
    /// Reproducible from the recorded schedule (`arbor train --replay`).
    Continuous,
}

/// `[async]`: disaggregated rollout and training ranks with a staleness bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsyncConfig {
    /// Ranks that only generate: the last `rollout_ranks` of the world (≥ 1; at least one rank must train).
    pub rollout_ranks: usize,
    /// Async ratio α ≥ 0: every sample trained at step s started generating with policy version
    /// ≥ s − ⌈α⌉ (0 = synchronous).
    #[serde(default)]
    pub alpha: f64,
    /// `"batch"` (default, deterministic) or `"continuous"`.
    #[serde(default)]
    pub mode: RolloutMode,
    /// Spread each prompt's samples over the rollout ranks (each a contiguous share of the group)
    /// instead of giving each rank whole groups; the trainer assembles the groups.
    #[serde(default)]
    pub replicate: bool,
    /// Continuous mode: replay the weight-install schedule a run recorded (its
    /// `rollout-schedule.jsonl`) instead of installing weights as they arrive: the same weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<PathBuf>,
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
        if self.replay.is_some() && self.mode != RolloutMode::Continuous {
            return bad("replay", "replays a continuous run's schedule: set mode = \"continuous\"".into());
        }
        Ok(())
    }

    /// k = ⌈α⌉: how many batches generation may run ahead.
    pub fn lag(&self) -> u64 {
        self.alpha.ceil() as u64
    }

    /// Whether rollout ranks use the streaming loop (continuous mode or replication) rather than
    /// whole-batch sampling.
    pub fn streams(&self) -> bool {
        self.mode == RolloutMode::Continuous || self.replicate
    }
}
