//! `[env]`: the multi-turn environment of the RL phase and how its episodes are run.

use crate::env::latency::LatencyModel;
use arbor_sim::dist::Dist;
use serde::{Deserialize, Serialize};

/// How a batch of environments is played.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvMode {
    /// A barrier at every turn: generate all actions, step all environments, wait for the slowest.
    Sync,
    /// Env-level async: every environment runs its own loop; the model serves whichever
    /// requests are waiting, in batches (no barrier between environments).
    #[default]
    Async,
}

/// `[env]` (kind = "guess": the built-in number-guessing game).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvConfig {
    pub kind: String,
    #[serde(default = "d_low")]
    pub low: i64,
    #[serde(default = "d_high")]
    pub high: i64,
    /// Policy turns per episode at most.
    #[serde(default = "d_turns")]
    pub max_turns: u32,
    #[serde(default)]
    pub mode: EnvMode,
    /// Reset latency, ms (a distribution: `{ kind = "lognormal", median = 20, sigma = 1, max = 500 }`).
    pub reset_latency_ms: Option<Dist>,
    /// Step latency, ms.
    pub step_latency_ms: Option<Dist>,
    /// Probability that one reset or step call fails.
    #[serde(default)]
    pub failure_rate: f64,
    /// Further attempts of a failed call before its trajectory (and group) is dropped.
    #[serde(default = "d_retries")]
    pub max_retries: u32,
    /// Redundant environments: groups started beyond `rl.prompts_per_step` per step; the first
    /// groups to finish are kept, the rest aborted.
    #[serde(default)]
    pub extra_groups: usize,
    /// Redundant trajectories: extra samples started per group; the first `samples_per_prompt`
    /// to finish are kept.
    #[serde(default)]
    pub extra_samples: u32,
    /// Held-out games of the evaluation (played without latency).
    #[serde(default = "d_eval_games")]
    pub eval_games: usize,
}

fn d_low() -> i64 {
    1
}
fn d_high() -> i64 {
    16
}
fn d_turns() -> u32 {
    5
}
fn d_retries() -> u32 {
    2
}
fn d_eval_games() -> usize {
    64
}

impl EnvConfig {
    /// Check the section's own values: (key, message) on error. What it needs from other
    /// sections (an `[rl]` phase, group sampling, tp = 1) is checked in `config::rules`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: String| Err((format!("env.{k}"), m));
        if self.kind != "guess" {
            return bad("kind", format!("{:?} is not a known environment (\"guess\")", self.kind));
        }
        // checked: an i64 span such as [-2^63, 0] overflows a plain subtraction
        if self.low > self.high || self.high.checked_sub(self.low).is_none_or(|span| span > 1_000_000) {
            return bad("low", format!("[{}, {}] must be a range of at most 10^6 numbers", self.low, self.high));
        }
        if self.max_turns == 0 || self.max_turns > 255 {
            return bad("max_turns", format!("{} must be in 1..=255", self.max_turns));
        }
        if !(self.failure_rate.is_finite() && (0.0..1.0).contains(&self.failure_rate)) {
            return bad("failure_rate", format!("{} must be in [0, 1)", self.failure_rate));
        }
        for (k, d) in [("reset_latency_ms", &self.reset_latency_ms), ("step_latency_ms", &self.step_latency_ms)] {
            if let Some(d) = d {
                crate::rollout::workload::check_parametric(&format!("env.{k}"), d)?;
            }
        }
        if self.eval_games == 0 {
            return bad("eval_games", "0 must be at least 1".into());
        }
        Ok(())
    }

    /// The latency and failure model.
    pub fn latency(&self) -> LatencyModel {
        LatencyModel {
            reset_ms: self.reset_latency_ms.clone(),
            step_ms: self.step_latency_ms.clone(),
            failure_rate: self.failure_rate,
        }
    }
}
