//! `[rl]`: the GRPO-family phase after the supervised one, with its defaults and the checks of
//! its own values.

use super::schedule::{LrSchedule, ScheduleKind};
use super::sections::{default_clip, Violation};
use serde::{Deserialize, Serialize};

/// `[rl]`: the GRPO-family phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlSection {
    pub steps: u64,
    #[serde(default = "d_prompts")]
    pub prompts_per_step: usize,
    #[serde(default = "d_samples")]
    pub samples_per_prompt: u32,
    #[serde(default = "d_new_tokens")]
    pub max_new_tokens: usize,
    #[serde(default = "d_temperature")]
    pub temperature: f32,
    /// Peak learning rate of the policy.
    #[serde(default = "d_rl_lr")]
    pub lr: f32,
    /// Learning-rate schedule over the RL steps: "constant" (default), "linear" or "cosine"
    /// decay to `min_lr` at the last step, after `warmup_steps` of linear warmup.
    #[serde(default = "d_rl_schedule")]
    pub schedule: ScheduleKind,
    /// Learning rate at the last RL step for "linear"/"cosine" (default: `lr`, no decay).
    #[serde(default)]
    pub min_lr: Option<f32>,
    /// RL steps of linear warmup from lr/warmup_steps to lr.
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default = "default_clip")]
    pub grad_clip: f32,
    #[serde(default)]
    pub advantage: crate::rl::AdvantageKind,
    /// Drop groups whose rewards are all equal (zero advantage) before the update.
    #[serde(default = "d_true")]
    pub filter_zero_std: bool,
    /// Sequences generated together (KV-cache slots).
    #[serde(default = "d_max_batch")]
    pub max_batch: usize,
    #[serde(default = "d_eval_problems")]
    pub eval_problems: usize,
    /// Samples per held-out problem at temperature 1 (plus one greedy).
    #[serde(default = "d_eval_samples")]
    pub eval_samples: u32,
    #[serde(default)]
    pub eval_every: u64,
    #[serde(default = "d_rl_log")]
    pub log_every: u64,
    /// Passes over each step's samples (PPO epochs).
    #[serde(default = "d_one")]
    pub epochs: usize,
    /// Optimizer updates per pass: the step's samples are cut into this many mini-batches.
    #[serde(default = "d_one")]
    pub mini_batches: usize,
    /// Samples per forward/backward, gradients accumulated exactly; 0 = a whole mini-batch at once.
    #[serde(default)]
    pub micro_batch: usize,
    /// Positions (prompt + response tokens) per forward/backward, beside `micro_batch`; 0 = no
    /// bound. A longer sequence runs alone.
    #[serde(default)]
    pub micro_batch_tokens: usize,
    /// Write `trajectories.h5` (needs the `hdf5` feature; ignored without it).
    #[serde(default = "d_true")]
    pub dump_trajectories: bool,
    /// Keep the checkpoint of the RL step whose held-out evaluation scored best on this metric,
    /// whatever `train.keep_checkpoints` prunes (`checkpoints/best.json` names it); none: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_best: Option<BestMetric>,
}

/// The held-out figure `[rl] keep_best` ranks the RL phase's evaluations by (its metrics.jsonl key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BestMetric {
    /// Sampled at temperature 1 (`eval_solve_rate`).
    EvalSolveRate,
    /// Greedy (`eval_solve_rate_greedy`).
    EvalSolveRateGreedy,
    /// pass@k at k = `eval_samples` (`eval_pass_at_k`).
    EvalPassAtK,
}

impl BestMetric {
    /// The metrics.jsonl key.
    pub fn key(self) -> &'static str {
        match self {
            BestMetric::EvalSolveRate => "eval_solve_rate",
            BestMetric::EvalSolveRateGreedy => "eval_solve_rate_greedy",
            BestMetric::EvalPassAtK => "eval_pass_at_k",
        }
    }
}

fn d_one() -> usize {
    1
}
fn d_prompts() -> usize {
    32
}
fn d_samples() -> u32 {
    8
}
fn d_new_tokens() -> usize {
    8
}
fn d_temperature() -> f32 {
    1.0
}
fn d_rl_lr() -> f32 {
    1e-4
}
fn d_rl_schedule() -> ScheduleKind {
    ScheduleKind::Constant
}
fn d_true() -> bool {
    true
}
fn d_max_batch() -> usize {
    256
}
fn d_eval_problems() -> usize {
    200
}
fn d_eval_samples() -> u32 {
    4
}
fn d_rl_log() -> u64 {
    5
}

/// The most sequences an RL step samples (prompts × samples).
const MAX_STEP_SEQUENCES: u128 = 1 << 24;
/// The most sequences decoded together (`max_batch`) on any device: the GPU's decode kernels put
/// a step's rows on grid y (limit 65,535), and the CPU and the streaming rollout keep the same bound.
pub const MAX_BATCH: usize = 65_535;

impl RlSection {
    /// How the passes over a step's sequences are cut into forwards.
    pub fn micro(&self) -> crate::model::micro_batch::MicroBatch {
        crate::model::micro_batch::MicroBatch { samples: self.micro_batch, tokens: self.micro_batch_tokens }
    }

    /// The policy's learning-rate schedule over the RL steps.
    pub fn lr_schedule(&self) -> LrSchedule {
        LrSchedule {
            kind: self.schedule,
            peak_lr: self.lr,
            min_lr: self.min_lr.unwrap_or(self.lr),
            warmup_steps: self.warmup_steps,
            total_steps: self.steps,
        }
    }

    /// Check the section's own values (whether a group of one sample is allowed depends on
    /// `[critic]` and `[attnrl]`: a rule).
    pub fn validate(&self) -> Result<(), Violation> {
        let bad = |key: &str, msg: String| Err((key.to_string(), msg));
        if self.steps == 0 {
            return bad(
                "rl.steps",
                "0: an [rl] phase needs at least 1 step (drop the [rl] table for a supervised-only run)".into(),
            );
        }
        for (key, v) in [
            ("rl.prompts_per_step", self.prompts_per_step),
            ("rl.samples_per_prompt", self.samples_per_prompt as usize),
            ("rl.max_new_tokens", self.max_new_tokens),
            ("rl.max_batch", self.max_batch),
            ("rl.epochs", self.epochs),
            ("rl.mini_batches", self.mini_batches),
            ("rl.eval_problems", self.eval_problems),
            ("rl.eval_samples", self.eval_samples as usize),
            ("rl.log_every", self.log_every as usize),
        ] {
            if v == 0 {
                return bad(key, "0 must be at least 1".into());
            }
        }
        if self.max_batch > MAX_BATCH {
            return bad(
                "rl.max_batch",
                format!(
                    "{}: train.device = \"cuda\" decodes at most 65,535 sequences together, and every device is \
                     held to that bound",
                    self.max_batch
                ),
            );
        }
        // a step's sequences are held in memory together
        let per_step = (self.prompts_per_step as u128) * (self.samples_per_prompt as u128);
        if per_step > MAX_STEP_SEQUENCES {
            return bad(
                "rl.prompts_per_step",
                format!(
                    "{} prompts × {} samples = {per_step} sequences a step: at most 2^24",
                    self.prompts_per_step, self.samples_per_prompt
                ),
            );
        }
        // an evaluation's requests are built together too (eval_problems × eval_samples sampled,
        // eval_problems greedy)
        let per_eval = (self.eval_problems as u128) * (self.eval_samples as u128 + 1);
        if per_eval > MAX_STEP_SEQUENCES {
            return bad(
                "rl.eval_problems",
                format!(
                    "{} problems × ({} samples + 1 greedy) = {per_eval} sequences an evaluation: at most 2^24",
                    self.eval_problems, self.eval_samples
                ),
            );
        }
        for (key, v, ok, want) in [
            ("rl.lr", self.lr, self.lr > 0.0, "> 0"),
            ("rl.grad_clip", self.grad_clip, self.grad_clip >= 0.0, "≥ 0 (0 disables clipping)"),
            ("rl.temperature", self.temperature, self.temperature >= 0.0, "≥ 0 (0 = greedy rollouts)"),
        ] {
            if !(v.is_finite() && ok) {
                return bad(key, format!("{v} must be {want}"));
            }
        }
        if let Some(m) = self.min_lr {
            if !(m.is_finite() && m >= 0.0 && m <= self.lr) {
                return bad("rl.min_lr", format!("{m} must be in [0, rl.lr = {}]", self.lr));
            }
        }
        if let (Some(m), ScheduleKind::Constant) = (self.min_lr, self.schedule) {
            return bad(
                "rl.min_lr",
                format!(
                    "{m}: schedule = \"constant\" stays at rl.lr, so min_lr would have no effect; drop it or set \
                     schedule = \"linear\" or \"cosine\""
                ),
            );
        }
        if self.warmup_steps > self.steps {
            return bad("rl.warmup_steps", format!("{} exceeds rl.steps = {}", self.warmup_steps, self.steps));
        }
        Ok(())
    }
}
