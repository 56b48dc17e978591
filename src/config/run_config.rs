//! The schema of a whole run configuration: one field per TOML section (unknown keys rejected).
//! Parsing, validation and the plan are in `mod.rs`, `rules.rs` and `plan.rs`.

use super::{AsyncConfig, CriticConfig, ModelSection, ParallelSection, RlSection, RunSection, TrainSection};
use serde::{Deserialize, Serialize};

/// A whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub run: RunSection,
    pub model: ModelSection,
    /// `[data]`: the task (`crate::tasks::TaskConfig`: kind = countdown | arithmetic | jsonl | parquet | addition).
    pub data: crate::tasks::TaskConfig,
    pub train: TrainSection,
    /// Optional RL phase after the supervised phase.
    pub rl: Option<RlSection>,
    /// Policy loss of the RL phase (defaults: ALGORITHMS.md §5 reference values).
    pub loss: Option<crate::rl::LossConfig>,
    /// SPMD layout and fault handling under MPI (defaults when absent).
    #[serde(default)]
    pub parallel: ParallelSection,
    /// AttnRL tree sampling in the RL phase (ATB with `branch_by = "fci"`, TreeRL with "entropy").
    pub attnrl: Option<crate::attnrl::AttnRlConfig>,
    /// Attention-rhythm credit: per-token advantage shaping in the RL phase.
    pub rhythm: Option<crate::attnrl::RhythmConfig>,
    /// `[async]`: disaggregated rollout and train ranks with a staleness bound (ROLL Flash).
    #[serde(rename = "async")]
    pub async_rl: Option<AsyncConfig>,
    /// `[critic]`: PPO with GAE on value models (count ≥ 2: AsyPPO's mini-critics).
    pub critic: Option<CriticConfig>,
    /// `[workload]`: long-tail workload mode for system benchmarks (forced response lengths).
    pub workload: Option<crate::rollout::WorkloadConfig>,
    /// `[env]`: multi-turn environments with latency (replaces `[data]`'s single-turn prompts).
    pub env: Option<crate::env::EnvConfig>,
    /// A resume may change settings the run recorded (`arbor train --allow-config-change`; never
    /// read from or written to a file).
    #[serde(skip)]
    pub allow_config_change: bool,
}
