//! Stage 6 of an RL step: the typed metrics line ([`RlStepReport`]), serialised once into
//! metrics.jsonl. Every key is documented in docs/metrics.md (a test checks both ways).

use serde::{Deserialize, Serialize};

/// One `metrics.jsonl` line of an RL step. Optional groups appear only when their feature ran.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RlStepReport {
    pub rl_step: u64,
    pub policy_version: u64,
    pub reward_mean: f64,
    pub reward_std: f64,
    pub solve_rate: f64,
    pub response_len_mean: f64,
    pub response_len_max: usize,
    pub response_clip_ratio: f64,
    pub loss: f64,
    pub clip_frac: f64,
    /// ppo and decoupled_ppo with `loss.dual_clip`: fraction of response tokens on the dual-clip branch.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dual_clip_frac: Option<f64>,
    /// decoupled_ppo: fraction of response tokens whose weight π_prox/μ was capped at `loss.decoupled_cap`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cap_frac: Option<f64>,
    pub approx_kl: f64,
    pub ref_kl: f64,
    pub entropy: f64,
    pub grad_norm: f64,
    pub updates: usize,
    pub lr: f32,
    pub skipped_updates: usize,
    pub logprob_mismatch_abs_mean: f64,
    pub logprob_mismatch_abs_max: f64,
    pub trained_samples: usize,
    pub valid_tokens: f64,
    pub effective_sample_ratio: f64,
    pub all_correct_ratio: f64,
    pub all_wrong_ratio: f64,
    pub zero_std_frac: f64,
    pub prompts: f64,
    pub gen_tokens_per_s: f64,
    pub train_tokens_per_s: f64,
    pub time_generate_s: f64,
    pub time_train_s: f64,
    pub step_s: f64,
    pub train_state_mib: f64,
    /// MiB of the rank's GPU in use after the step (`train.device = "cuda"`; absent on the CPU).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub device_mem_mib: Option<f64>,
    /// MiB of this process's GPU buffers at their peak during the step (the memory pool's
    /// high-water mark: activations, KV cache, weights and moments; absent on the CPU).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub device_peak_mib: Option<f64>,
    #[serde(flatten)]
    pub sampler: SamplerNotes,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub critic: Option<CriticNotes>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub asynchronous: Option<AsyncNotes>,
}

/// What the sampler measured (travels from rollout ranks to the trainer under `[async]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SamplerNotes {
    /// Group sampling: seconds spent computing rewards and advantages.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub time_reward_s: Option<f64>,
    #[serde(flatten, skip_serializing_if = "Option::is_none", default)]
    pub tree: Option<TreeNotes>,
    #[serde(flatten, skip_serializing_if = "Option::is_none", default)]
    pub env: Option<EnvNotes>,
    /// `[rhythm]`: fraction of response tokens whose advantage was amplified (γ > 1). Stage 4
    /// sets it; under `[async]` the rollout rank shapes with the policy that generated the batch.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rhythm_amplified_frac: Option<f64>,
}

impl SamplerNotes {
    /// Notes of several rollout ranks' shares of one batch: the slowest reward time.
    pub fn merge(&mut self, other: &SamplerNotes) {
        self.time_reward_s = match (self.time_reward_s, other.time_reward_s) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.tree = self.tree.or(other.tree);
        if self.env.is_none() {
            self.env.clone_from(&other.env);
        }
        // rank 0's share, as the synchronous data-parallel trainer reports it
        self.rhythm_amplified_frac = self.rhythm_amplified_frac.or(other.rhythm_amplified_frac);
    }
}

/// `[attnrl]` tree sampling (summed over data-parallel ranks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TreeNotes {
    pub branch_points: u64,
    pub branch_points_filled: u64,
    /// Questions of the next batch (the dynamic batch size).
    pub next_prompts: usize,
}

/// `[env]` rollouts (summed over data-parallel ranks).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EnvNotes {
    pub env_groups_kept: u64,
    pub env_groups_failed: u64,
    pub env_groups_aborted: u64,
    pub env_trajectories_failed: u64,
    pub env_retries: u64,
    pub env_turns: u64,
    pub env_trajectories: u64,
    pub time_env_rollout_s: f64,
}

/// `[critic]`: the value models' statistics (this rank's batch) and losses (all ranks).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CriticNotes {
    pub critic_sigma_mean: f64,
    pub critic_sigma_p20: f64,
    pub critic_sigma_p80: f64,
    pub critic_value_mean: f64,
    pub critic_explained_variance: f64,
    pub adv_masked_frac: f64,
    pub entropy_excluded_frac: f64,
    /// Value loss of critic m, written as `critic_<m>_value_loss`.
    pub value_losses: Vec<f64>,
}

impl Serialize for CriticNotes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(7 + self.value_losses.len()))?;
        m.serialize_entry("critic_sigma_mean", &self.critic_sigma_mean)?;
        m.serialize_entry("critic_sigma_p20", &self.critic_sigma_p20)?;
        m.serialize_entry("critic_sigma_p80", &self.critic_sigma_p80)?;
        m.serialize_entry("critic_value_mean", &self.critic_value_mean)?;
        m.serialize_entry("critic_explained_variance", &self.critic_explained_variance)?;
        m.serialize_entry("adv_masked_frac", &self.adv_masked_frac)?;
        m.serialize_entry("entropy_excluded_frac", &self.entropy_excluded_frac)?;
        for (k, l) in self.value_losses.iter().enumerate() {
            m.serialize_entry(&format!("critic_{k}_value_loss"), l)?;
        }
        m.end()
    }
}

/// `[async]`: how old the trained batch was and how long the trainer waited for it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AsyncNotes {
    /// Steps between a sample's starting policy version and the trainer's (batch mode: the same
    /// for every sample of a batch), mean and max over the batch.
    pub staleness_mean: f64,
    pub staleness_max: u64,
    pub time_wait_batch_s: f64,
    /// Fraction of the step the trainer spent waiting for the batch.
    pub trainer_idle_frac: f64,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamNotes>,
}

/// `[async]` streaming modes (continuous, replicated): what the rollout ranks reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StreamNotes {
    /// Samples of the batch by staleness 0, 1, …, ⌈α⌉.
    pub staleness_hist: Vec<u64>,
    /// Busy fraction of the rollout ranks' slots since the previous step.
    pub rollout_slot_util: f64,
    /// Mean seconds from a sample's completion to its group share leaving the rollout rank.
    pub reward_queue_s: f64,
    /// Fraction of samples whose weights changed while they were generated.
    pub mixed_version_frac: f64,
}

/// A held-out evaluation line of the RL phase.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RlEvalLine {
    /// RL steps done when it was measured (0 = before the first).
    pub rl_step: u64,
    pub eval_solve_rate: f64,
    pub eval_solve_rate_greedy: f64,
    /// pass@k, k = `rl.eval_samples` (under `[env]`: games won by at least one sample).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_pass_at_k: Option<f64>,
}
