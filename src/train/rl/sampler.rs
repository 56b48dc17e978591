//! Stages 1–3 of an RL step, one strategy per run chosen at start-up: generate this rank's
//! share of the step, reward it, and turn rewards into advantages ([`Rollouts`]).
//! - groups: n samples per prompt, group-normalised advantages (GRPO family);
//! - trees (`[attnrl]`): FCI-guided branching, tree node advantages (`tree.rs`);
//! - environments (`[env]`): multi-turn games, one training sample per turn (`env_step.rs`).

use super::env_step::sample_env;
use super::report::TreeNotes;
use super::rollouts::reward;
use super::rollouts::{RolloutCtx, Rollouts, TrainingBatch};
use super::tree::{TreeSampler, TreeState};
use crate::config::{AdvantageSource, RlPlan, Sampler as SamplerPlan};
use crate::env::EnvConfig;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::parallel::partition;
use crate::rl::{group_advantages, AdvantageKind};
use crate::rollout::{Completion, Request};
use crate::train::engine::Engine;
use std::time::Instant;

/// How the RL phase samples.
pub enum Sampler {
    /// n samples per prompt; `filter_zero_std`: groups with equal rewards do not train.
    Groups {
        filter_zero_std: bool,
    },
    Trees(Box<TreeSampler>),
    Env(EnvConfig),
}

impl Sampler {
    /// The sampler of an RL phase's plan for `model`.
    pub fn new(plan: &RlPlan, model: &Model) -> Self {
        let rl = &plan.section;
        match &plan.sampler {
            SamplerPlan::Trees(ac) | SamplerPlan::OffPolicyTrees(ac) => {
                Sampler::Trees(Box::new(TreeSampler::new(ac, model, rl.prompts_per_step)))
            }
            SamplerPlan::Env(ec) => Sampler::Env(ec.clone()),
            // with critics, GAE gives equal-reward groups a signal too
            SamplerPlan::Groups => Sampler::Groups {
                filter_zero_std: rl.filter_zero_std && matches!(plan.advantage, AdvantageSource::Group(_)),
            },
        }
    }

    /// Stages 1–3 at RL step `step` (0-based) with the weights of `model`.
    pub fn sample(&mut self, ctx: &RolloutCtx, engine: &mut Engine, model: &Model, step: u64) -> Result<Rollouts> {
        match self {
            Sampler::Groups { filter_zero_std } => sample_groups(ctx, engine, model, step, *filter_zero_std),
            Sampler::Trees(t) => sample_trees(ctx, t, engine, model, step),
            Sampler::Env(ec) => sample_env(ctx, ec, engine, model, step),
        }
    }

    /// The adaptive state of a tree sampler.
    pub fn tree_state(&self) -> Option<&TreeState> {
        match self {
            Sampler::Trees(t) => Some(&t.state),
            _ => None,
        }
    }

    /// The adaptive state of a tree sampler, to restore it.
    pub fn tree_state_mut(&mut self) -> Option<&mut TreeState> {
        match self {
            Sampler::Trees(t) => Some(&mut t.state),
            _ => None,
        }
    }
}

/// GRPO-family sampling: this rank's share of the prompts × n samples, rewards, group advantages.
fn sample_groups(
    ctx: &RolloutCtx,
    engine: &mut Engine,
    model: &Model,
    step: u64,
    filter_zero_std: bool,
) -> Result<Rollouts> {
    let rl = ctx.rl;
    let (p, n) = (rl.prompts_per_step, rl.samples_per_prompt as usize);
    let mine = partition(p, ctx.dp.size(), ctx.dp.rank());
    let mut problems = Vec::with_capacity(mine.len());
    let mut requests = Vec::with_capacity(mine.len() * n);
    for i in mine.clone() {
        let id = step * p as u64 + i as u64;
        let (ids, prob) = ctx.problem(id)?;
        for s in 0..n as u32 {
            requests.push(Request { prompt_id: id, sample_index: s, prompt: ids.clone() });
        }
        problems.push(prob);
    }
    // 1. rollouts
    let completions = ctx.generate(engine, model, &requests, step, rl.max_new_tokens)?;
    // 2. rewards
    let t_reward = Instant::now();
    let rewards: Vec<f32> =
        completions.iter().enumerate().map(|(k, c)| reward(ctx.task, ctx.codec, &problems[k / n], c)).collect();
    // 3. advantages
    let prompts: Vec<Vec<u32>> = requests.into_iter().step_by(n.max(1)).map(|r| r.prompt).collect();
    let mut out = group_rollouts(&prompts, completions, &rewards, n, rl.advantage, filter_zero_std)?;
    out.notes.time_reward_s = Some(t_reward.elapsed().as_secs_f64());
    Ok(out)
}

/// Stage 3 of group sampling: `prompts.len()` groups of `n` completions each (in group order),
/// with their rewards, become [`Rollouts`] with group advantages and the step's counts. With
/// `filter_zero_std`, groups whose rewards are all equal do not train.
pub(crate) fn group_rollouts(
    prompts: &[Vec<u32>],
    completions: Vec<Completion>,
    rewards: &[f32],
    n: usize,
    kind: AdvantageKind,
    filter_zero_std: bool,
) -> Result<Rollouts> {
    if completions.len() != prompts.len() * n || rewards.len() != completions.len() {
        return Err(Error::shape(
            "group rollouts",
            format!(
                "{} prompts × {n} samples need as many completions and rewards, got {} and {}",
                prompts.len(),
                completions.len(),
                rewards.len()
            ),
        ));
    }
    let group_starts: Vec<usize> = (0..=prompts.len()).map(|g| g * n).collect();
    let adv = group_advantages(kind, rewards, &group_starts)?;
    let mut out = Rollouts { generated: Vec::with_capacity(completions.len()), ..Rollouts::default() };
    out.counts.prompts = prompts.len();
    out.counts.zero_std = adv.zero_std.iter().filter(|&&z| z).count();
    out.counts.groups = adv.zero_std.len();
    for g in 0..prompts.len() {
        let r = &rewards[g * n..(g + 1) * n];
        out.counts.all_correct += usize::from(r.iter().all(|&x| x >= 1.0));
        out.counts.all_wrong += usize::from(r.iter().all(|&x| x < 1.0));
    }
    for (k, c) in completions.into_iter().enumerate() {
        let no_signal = filter_zero_std && adv.zero_std[k / n];
        out.push(prompts[k / n].clone(), c, adv.advantages[k], rewards[k], !no_signal);
    }
    Ok(out)
}

/// Tree sampling (`[attnrl]`): this data-parallel rank's questions.
fn sample_trees(
    ctx: &RolloutCtx,
    sampler: &mut TreeSampler,
    engine: &mut Engine,
    model: &Model,
    step: u64,
) -> Result<Rollouts> {
    let mut tb = sampler.sample(ctx, engine, model, step)?;
    let next_prompts = sampler.state.batch.prompts;
    let n = sampler.ac.initial_responses.max(1);
    let initial = &tb.generated[..tb.questions * n];
    let mut out = Rollouts::default();
    out.counts.candidates = tb.candidates;
    out.counts.effective = tb.effective;
    out.counts.all_correct =
        (0..tb.questions).filter(|q| initial[q * n..(q + 1) * n].iter().all(|s| s.data.reward >= 1.0)).count();
    out.counts.all_wrong =
        (0..tb.questions).filter(|q| initial[q * n..(q + 1) * n].iter().all(|s| s.data.reward < 1.0)).count();
    out.counts.prompts = tb.questions;
    out.counts.zero_std = tb.dropped_questions;
    out.counts.groups = tb.questions;
    let mut points = [tb.branch_points as f64, tb.filled_points as f64];
    ctx.dp.all_reduce_sum_f64(&mut points)?;
    out.notes.tree =
        Some(TreeNotes { branch_points: points[0] as u64, branch_points_filled: points[1] as u64, next_prompts });
    out.batch = TrainingBatch {
        generated_index: vec![None; tb.train.len()],
        samples: tb.train,
        fixed_old_logp: std::mem::take(&mut tb.fixed_old_logp),
        ..TrainingBatch::default()
    };
    out.generated = tb.generated;
    out.sampling = Some(sampler.state.save());
    Ok(out)
}
