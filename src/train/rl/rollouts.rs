//! Stages 1–3 of an RL step and what they hand on: the [`RolloutCtx`] a sampler needs, the
//! [`Rollouts`] it returns (every generated sample with its reward and advantages, the step's
//! group counts, its notes for the report) and the [`TrainingBatch`] inside it: the sequences
//! that train, with π_old, the entropy mask and the critics' targets as fields.

use super::report::SamplerNotes;
use super::update::{Sample, UpdateBatch};
use crate::config::{RlSection, RunConfig};
use crate::error::Result;
use crate::model::Model;
use crate::parallel::Comm;
use crate::rl::broadcast_to_tokens;
use crate::rollout::{Completion, Finish, GenerateConfig, Request, SamplingParams};
use crate::tasks::Problem;
use crate::tasks::Task;
use crate::tokenizer::TextCodec;
use crate::train::engine::Engine;

/// One generated sample of a step, as dumped to trajectories.h5.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSample {
    pub prompt_id: u64,
    pub sample_index: u32,
    /// Training data of the sample (prompt, response, behaviour log-probs, per-token advantages, reward).
    pub data: Sample,
    /// logπ_old recomputed by the trainer per response token; NaN when the sample was not trained on.
    pub logp: Vec<f32>,
    /// Why generation stopped.
    pub finish: Finish,
    /// Attention statistics and tree position of the sample (empty when not computed).
    pub trace: AttnTrace,
    /// The policy version that started generating it, where the samples of one step started
    /// under different versions (`[async]` continuous and replicated rollout); `None`: the step's.
    pub policy_version: Option<u64>,
}

/// What the attention statistics and tree sampling recorded about a generated sample, for the
/// dump (`docs/trajectories.md`). Empty vectors mean "not computed".
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AttnTrace {
    /// A continuation: the `sample_index` of the response it branched from and the token
    /// position in that response where it starts.
    pub branch: Option<(u32, u32)>,
    /// Step of each response token.
    pub step_index: Vec<u32>,
    /// FCI of each response token's step.
    pub fci: Vec<f32>,
    /// WAAD and FAI of each response token.
    pub waad: Vec<f32>,
    pub fai: Vec<f32>,
}

/// What the critics computed for the step's training samples, kept in the training batch for
/// their update.
#[derive(Debug, Clone, PartialEq)]
pub struct CriticTargets {
    /// GAE returns R_t per response token (concatenated over the training samples).
    pub(crate) returns: Vec<f32>,
    /// Each critic's values at the step's start, per token.
    pub(crate) old: Vec<Vec<f32>>,
    /// The critic that trains on each training sample.
    pub(crate) owner: Vec<usize>,
    /// Token offset of each training sample (len + 1).
    pub(crate) offsets: Vec<usize>,
}

/// The sequences one rank trains on at a step, and everything the update needs beyond them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainingBatch {
    pub samples: Vec<Sample>,
    /// For each sample, the generated sample it is (its recomputed log-probs go back there for
    /// the dump); `None` for a tree leaf assembled from several generations.
    pub generated_index: Vec<Option<usize>>,
    /// π_old per response token (concatenated), NaN where it is the policy before the update;
    /// empty = all of them. Set by the off-policy tree sampler.
    pub fixed_old_logp: Vec<f32>,
    /// Per response token, a factor on the entropy bonus's gradient; empty = all 1. Set by the
    /// critics (AsyPPO's uncertainty mask).
    pub entropy_keep: Vec<f32>,
    /// The critics' GAE returns and old values for their update (`[critic]` only).
    pub critic: Option<CriticTargets>,
}

impl TrainingBatch {
    /// What the policy update reads.
    pub fn update_batch(&self) -> UpdateBatch<'_> {
        UpdateBatch { samples: &self.samples, fixed_old_logp: &self.fixed_old_logp, entropy_keep: &self.entropy_keep }
    }

    /// Response tokens of the batch.
    pub fn response_tokens(&self) -> usize {
        self.samples.iter().map(|s| s.response.len()).sum()
    }
}

/// Counts over a rank's prompts (groups) and candidate training sequences, summed over ranks
/// for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GroupCounts {
    /// Candidate training sequences (before zero-signal filtering) and those with a non-zero advantage.
    pub candidates: usize,
    pub effective: usize,
    /// Prompts whose initial responses were all correct / all wrong, and prompts.
    pub all_correct: usize,
    pub all_wrong: usize,
    pub prompts: usize,
    /// Groups whose rewards were all equal (dropped by the zero-std filter) and groups.
    pub zero_std: usize,
    pub groups: usize,
}

/// What stages 1–3 produced on this rank: samples generated, rewarded and given advantages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rollouts {
    /// Every generated sample of this rank, in order.
    pub generated: Vec<StepSample>,
    /// The sequences that train.
    pub batch: TrainingBatch,
    pub counts: GroupCounts,
    /// The sampler's own figures for the step report.
    pub notes: SamplerNotes,
    /// A tree sampler's adaptive state after this step (what a checkpoint of it stores), where a
    /// trainer that did not sample needs it (`[async]`: sampled on rollout ranks).
    pub sampling: Option<crate::train::checkpoint::SamplingState>,
}

impl Rollouts {
    /// Record one completion of `prompt` with its sequence-level advantage (broadcast to every
    /// token) and reward; it becomes a training sequence when `train` and it is not empty.
    pub(crate) fn push(&mut self, prompt: Vec<u32>, c: Completion, advantage: f32, reward: f32, train: bool) {
        let mut tok_adv = vec![0.0f32; c.tokens.len()];
        broadcast_to_tokens(&[advantage], &[0, c.tokens.len()], &mut tok_adv);
        if !c.tokens.is_empty() {
            self.counts.candidates += 1;
            self.counts.effective += usize::from(advantage != 0.0);
        }
        let data = Sample { prompt, response: c.tokens, behav_logp: c.logprobs, advantages: tok_adv, reward };
        if train && !data.response.is_empty() {
            self.batch.samples.push(data.clone());
            self.batch.generated_index.push(Some(self.generated.len()));
        }
        self.generated.push(StepSample {
            prompt_id: c.prompt_id,
            sample_index: c.sample_index,
            logp: vec![f32::NAN; data.response.len()],
            finish: c.finish,
            data,
            trace: AttnTrace::default(),
            policy_version: None,
        });
    }
}

/// What a sampler reads: the run's settings, the task, the text codec and the data-parallel group.
pub struct RolloutCtx<'a> {
    pub cfg: &'a RunConfig,
    pub rl: &'a RlSection,
    pub task: &'a dyn Task,
    pub codec: &'a TextCodec,
    pub dp: &'a dyn Comm,
}

impl RolloutCtx<'_> {
    /// Generate `requests` at RL step `step` (0-based) with the rollout settings of `[rl]`.
    pub fn generate(
        &self,
        engine: &mut Engine,
        model: &Model,
        requests: &[Request],
        step: u64,
        max_new: usize,
    ) -> Result<Vec<Completion>> {
        engine.generate(model, requests, &rollout_config(self.cfg, self.rl, self.codec, step, max_new))
    }

    /// Prompt tokens and problem of training problem `id`.
    pub fn problem(&self, id: u64) -> Result<(Vec<u32>, crate::tasks::Problem)> {
        problem(self.task, self.codec, crate::tasks::SPLIT_TRAIN, id)
    }
}

/// Generation settings of the RL phase at step `step` (0-based; every request's random stream is
/// keyed by step + 1), with at most `max_new` new tokens, stopping at `codec`'s stop ids.
pub fn rollout_config(cfg: &RunConfig, rl: &RlSection, codec: &TextCodec, step: u64, max_new: usize) -> GenerateConfig {
    GenerateConfig {
        sampling: SamplingParams { temperature: rl.temperature, top_p: 1.0, top_k: 0, max_new_tokens: max_new },
        stop_tokens: codec.stop_ids().to_vec(),
        seed: cfg.run.seed,
        step: step + 1,
        max_batch: rl.max_batch,
        workload: cfg.workload.clone(),
    }
}

/// One problem's prompt tokens ([`TextCodec::prompt`]) and the problem.
pub fn problem(task: &dyn Task, codec: &TextCodec, split: u64, index: u64) -> Result<(Vec<u32>, Problem)> {
    let p = task.problem(split, index);
    Ok((codec.prompt(&p.prompt)?, p))
}

/// The task's reward of completion `c` of problem `p` (stop ids dropped, decoded).
pub fn reward(task: &dyn Task, codec: &TextCodec, p: &Problem, c: &Completion) -> f32 {
    response_reward(task, codec, p, &[&c.tokens])
}

/// The task's reward of the response made of `parts` in order (stop ids dropped, decoded as one
/// text): a tree's continuation is graded as the whole response it completes, the original
/// response's tokens before the split point followed by its own.
pub fn response_reward(task: &dyn Task, codec: &TextCodec, p: &Problem, parts: &[&[u32]]) -> f32 {
    task.reward(p, &codec.response_text(parts))
}
