//! The RL phase (GRPO family, AttnRL trees, multi-turn environments, critics). One step is a
//! pipeline of typed stages, read top to bottom in [`RlTrainer::step`]:
//!
//! 1–3. **rollouts → rewards → advantages** ([`Sampler::sample`], `sampler.rs`; trees in
//!      `tree.rs`, environments in `env_step.rs`) → [`Rollouts`]: every generated sample with its
//!      reward and advantages, and the [`TrainingBatch`] of sequences that train;
//! 4.   **training batch** ([`RlTrainer::training_batch`]): GAE on the critics' values with
//!      AsyPPO's masks (`critic_step.rs`), attention-rhythm shaping (`rhythm.rs`) → [`BatchNotes`];
//! 5.   **update** ([`RlTrainer::update`], `update.rs`): epochs × mini-batches × micro-batches,
//!      then the critics' own update → [`Updated`];
//! 6.   **report** ([`RlTrainer::report`], `report.rs`): counts over ranks, every rank's samples
//!      for the dump → [`StepOutput`] with its [`RlStepReport`].
//!
//! The phase around the steps (evaluations, checkpoints, dumps, resume) is `phase.rs`. Every
//! random draw derives from (seed, step, prompt id, sample index), so the RL step number, the
//! weights and the AdamW moments are the whole state: a resumed phase is bit-identical.

mod critic_step;
pub mod env_step;
pub mod eval;
mod phase;
pub mod report;
pub mod rhythm;
pub mod rollouts;
pub mod sampler;
pub mod tree;
pub mod update;
pub mod wire;

pub use eval::{evaluate, PassAtK, SolveRate};
pub use phase::{check_resume, run_phase, Phase, PhaseStart};
pub(crate) use phase::{run_phase_with, PhaseIo, SampleSource};
pub use report::{AsyncNotes, CriticNotes, RlEvalLine, RlStepReport, SamplerNotes, StreamNotes};
pub use rollouts::{rollout_config, AttnTrace, GroupCounts, RolloutCtx, Rollouts, StepSample, TrainingBatch};
pub use sampler::Sampler;
pub use update::{
    policy_update, policy_update_dp, DpShard, Sample, UpdateBatch, UpdateBuffers, UpdatePlan, UpdateReport,
    UpdateSettings,
};

use crate::attnrl::RhythmConfig;
use crate::config::{AdvantageSource, RlPlan, RlSection, RunConfig};
use crate::error::{Error, Result};
use crate::model::{Model, Workspace};
use crate::parallel::Comm;
use crate::rl::{LossConfig, LossKind};
use crate::rollout::Finish;
use crate::tasks::Task;
use crate::tokenizer::TextCodec;
use crate::train::engine::Engine;
use crate::train::AdamW;
use critic_step::Critics;
use std::time::Instant;

/// What one RL step did.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// The metrics.jsonl line of the step.
    pub report: RlStepReport,
    /// Every sample of the step, in (rank, prompt, sample) order.
    pub samples: Vec<StepSample>,
}

/// How the step's rollouts were obtained (stage 1–3's clock and policy version).
#[derive(Debug, Clone)]
pub struct Sampling {
    /// When the step began.
    pub t0: Instant,
    /// Seconds sampling took (or, under `[async]`, the rollout ranks reported).
    pub t_gen: f64,
    /// The policy version that generated the samples.
    pub policy_version: u64,
    /// `[async]`: staleness and waiting time of the batch.
    pub asynchronous: Option<AsyncNotes>,
}

/// Stage 4's figures for the report.
#[derive(Debug, Clone, Default)]
pub struct BatchNotes {
    pub critic: Option<CriticNotes>,
    pub rhythm_amplified_frac: Option<f64>,
}

/// Stage 5's result.
#[derive(Debug, Clone, Default)]
pub struct Updated {
    pub update: UpdateReport,
    /// Training sequences over all data-parallel ranks.
    pub trained_samples: usize,
    pub lr: f32,
    /// Each critic's value loss (`[critic]` only).
    pub value_losses: Vec<f64>,
    pub t_train: f64,
}

/// `[rhythm]`: the shaping settings and the statistics pass's scratch.
struct Shaping {
    rc: RhythmConfig,
    ws: Workspace,
}

/// The RL trainer: one part per stage, chosen once from the config; the model and the
/// optimizer are passed to [`RlTrainer::step`].
pub struct RlTrainer<'a> {
    /// What the sampler reads (settings, task, tokenizer, data-parallel group).
    pub ctx: RolloutCtx<'a>,
    /// Stages 1–3.
    pub sampler: Sampler,
    /// Stage 4: `[rhythm]`.
    shaping: Option<Shaping>,
    /// Stages 4 and 5: `[critic]`'s value models.
    pub critics: Option<Critics>,
    /// Stage 5: loss, KL reference, reusable buffers.
    loss: &'a LossConfig,
    reference: Option<Model>,
    buf: UpdateBuffers,
    /// Where the policy generates, computes and updates (`[train] device`).
    pub engine: Engine,
}

impl<'a> RlTrainer<'a> {
    /// A trainer for `model` on data-parallel group `dp`, computing on `engine`; `reference` is
    /// the frozen policy of the KL term (needed iff kl_coef > 0).
    pub fn new(
        ctx: RolloutCtx<'a>,
        plan: &'a RlPlan,
        model: &Model,
        reference: Option<Model>,
        engine: Engine,
    ) -> Result<Self> {
        let sampler = Sampler::new(plan, model);
        let critics = match &plan.advantage {
            AdvantageSource::Gae(cc) => Some(Critics::new(cc, model, ctx.cfg, &engine)?),
            AdvantageSource::Group(_) | AdvantageSource::Tree => None,
        };
        let shaping = plan.shaping.as_ref().map(|rc| Shaping { rc: rc.clone(), ws: Workspace::new(&model.cfg, 0) });
        let (loss, buf) = (&plan.loss, UpdateBuffers::new(model));
        Ok(RlTrainer { ctx, sampler, shaping, critics, loss, reference, buf, engine })
    }

    /// A context for `cfg`'s RL phase with `codec` on data-parallel group `dp`.
    pub fn context(
        cfg: &'a RunConfig,
        rl: &'a RlSection,
        task: &'a dyn Task,
        codec: &'a TextCodec,
        dp: &'a dyn Comm,
    ) -> RolloutCtx<'a> {
        RolloutCtx { cfg, rl, task, codec, dp }
    }

    /// One RL step (0-based `step`): rollouts → rewards → advantages → training batch → update → report.
    pub fn step(&mut self, model: &mut Model, opt: &mut AdamW, step: u64) -> Result<StepOutput> {
        let t0 = Instant::now();
        let rollouts: Rollouts = self.sampler.sample(&self.ctx, &mut self.engine, model, step)?;
        let sampling = Sampling { t0, t_gen: t0.elapsed().as_secs_f64(), policy_version: step, asynchronous: None };
        self.train_on(model, opt, step, rollouts, sampling, None)
    }

    /// Stages 4–6 on rollouts made here or received from rollout ranks (`[async]`: `source`, which
    /// publishes the updated weights before the report, so rollout ranks get them at once).
    pub(crate) fn train_on(
        &mut self,
        model: &mut Model,
        opt: &mut AdamW,
        step: u64,
        mut rollouts: Rollouts,
        sampling: Sampling,
        source: Option<&mut dyn SampleSource>,
    ) -> Result<StepOutput> {
        let t1 = Instant::now();
        if source.is_some() {
            // [async] trees: the sampler's state after this batch came with it, for the checkpoint
            if let (Some(t), Some(s)) = (self.sampler.tree_state_mut(), rollouts.sampling) {
                *t = tree::TreeState::restore(&s, self.ctx.rl.prompts_per_step);
            }
        }
        let notes: BatchNotes = self.training_batch(model, &mut rollouts)?;
        let mut updated: Updated = self.update(model, opt, step, &rollouts.batch)?;
        updated.t_train = t1.elapsed().as_secs_f64();
        if let Some(src) = source {
            // the rollout ranks get the new weights from the host, published by the first
            // trainer rank alone (the others' host weights are brought up to date before any
            // checkpoint, by sync_host)
            if self.ctx.dp.rank() == 0 {
                self.engine.sync_weights(model)?;
            }
            src.published(model, step)?;
        }
        self.report((model, opt), step, rollouts, notes, updated, sampling)
    }

    /// Stage 4: the critics' advantages and masks, then rhythm shaping, on the batch in place.
    pub fn training_batch(&mut self, model: &Model, rollouts: &mut Rollouts) -> Result<BatchNotes> {
        let mut notes = BatchNotes::default();
        if let Some(critics) = self.critics.as_mut() {
            notes.critic = Some(critics.advantages(rollouts, self.ctx.dp)?);
        }
        if let Some(Shaping { rc, ws }) = self.shaping.as_mut() {
            let shaping = (&*rc, self.ctx.rl.micro());
            let dp = Some(self.ctx.dp);
            notes.rhythm_amplified_frac =
                Some(rhythm::shape_rollouts(&mut self.engine, model, ws, shaping, rollouts, dp)?);
        }
        Ok(notes)
    }

    /// Stage 5: the policy update on every rank's batch (the policy waits while the critics warm
    /// up), then the critics' update.
    pub fn update(&mut self, model: &mut Model, opt: &mut AdamW, step: u64, batch: &TrainingBatch) -> Result<Updated> {
        let (cfg, rl, dp) = (self.ctx.cfg, self.ctx.rl, self.ctx.dp);
        let lr = rl.lr_schedule().lr(step);
        let counts = dp.all_gather_bytes(&(batch.samples.len() as u64).to_le_bytes())?;
        let counts: Vec<usize> = counts
            .iter()
            .enumerate()
            .map(|(r, b)| match <[u8; 8]>::try_from(b.as_slice()) {
                Ok(b) => Ok(u64::from_le_bytes(b) as usize),
                Err(_) => Err(Error::collective(
                    r,
                    "all-gather of the training sample counts",
                    format!("a {}-byte count (8 expected): ranks disagree on the protocol", b.len()),
                )),
            })
            .collect::<Result<_>>()?;
        let shard = DpShard {
            comm: dp,
            offset: counts[..dp.rank()].iter().sum(),
            total: counts.iter().sum(),
            bucket_bytes: cfg.parallel.bucket_bytes(),
        };
        let update = if self.critics.as_ref().is_some_and(|c| c.warming_up(step)) {
            // its π_old is unknown, so the dump gets NaN
            UpdateReport { old_logp: vec![f32::NAN; batch.response_tokens()], ..UpdateReport::default() }
        } else {
            let plan = UpdatePlan {
                epochs: rl.epochs,
                mini_batches: rl.mini_batches,
                micro_batch: rl.micro(),
                grad_clip: rl.grad_clip,
            };
            let settings = UpdateSettings { loss: self.loss, plan, lr, reference: self.reference.as_ref() };
            policy_update_dp(&mut self.engine, model, opt, batch.update_batch(), &settings, &mut self.buf, &shard)?
        };
        let value_losses = match self.critics.as_mut() {
            Some(c) => c.update(batch, dp, cfg.parallel.bucket_bytes())?,
            None => Vec::new(),
        };
        Ok(Updated { update, trained_samples: shard.total, lr, value_losses, t_train: 0.0 })
    }

    /// Stage 6: the step's report over all ranks and every rank's samples (for the dump).
    pub fn report(
        &self,
        (model, opt): (&Model, &AdamW),
        step: u64,
        rollouts: Rollouts,
        notes: BatchNotes,
        updated: Updated,
        sampling: Sampling,
    ) -> Result<StepOutput> {
        let Rollouts { mut generated, batch, counts, notes: sampler_notes, .. } = rollouts;
        let (dp, rl) = (self.ctx.dp, self.ctx.rl);
        let Updated { update, trained_samples, lr, value_losses, t_train } = updated;
        // the trainer's π_old goes into the dump with each generated sample it trained on
        let mut off = 0;
        for (s, of) in batch.samples.iter().zip(&batch.generated_index) {
            let len = s.response.len();
            if let Some(k) = of {
                generated[*k].logp.copy_from_slice(&update.old_logp[off..off + len]);
            }
            off += len;
        }
        // counts over all ranks
        let valid_tokens: usize =
            batch.samples.iter().map(|s| s.advantages.iter().filter(|&&a| a != 0.0).count()).sum::<usize>();
        let train_tokens: usize = batch.samples.iter().map(|s| s.prompt.len() + s.response.len()).sum();
        let c = counts;
        let mut sums = [
            valid_tokens as f64,
            train_tokens as f64,
            c.candidates as f64,
            c.effective as f64,
            c.all_correct as f64,
            c.all_wrong as f64,
            c.prompts as f64,
            c.zero_std as f64,
            c.groups as f64,
        ];
        dp.all_reduce_sum_f64(&mut sums)?;
        let frac = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        // every rank's samples, in global (rank) order, for the metrics and the dump
        if dp.size() > 1 {
            let all = dp.all_gather_bytes(&wire::encode(&generated))?;
            generated = Vec::new();
            for bytes in &all {
                generated.extend(wire::decode(bytes)?);
            }
        }
        let secs = sampling.t0.elapsed().as_secs_f64();
        let n_samples = generated.len().max(1) as f64;
        let rewards: Vec<f64> = generated.iter().map(|s| s.data.reward as f64).collect();
        let reward_mean = rewards.iter().sum::<f64>() / n_samples;
        let reward_std = (rewards.iter().map(|&r| (r - reward_mean).powi(2)).sum::<f64>() / n_samples).sqrt();
        let lens: Vec<usize> = generated.iter().map(|s| s.data.response.len()).collect();
        let gen_tokens: usize = lens.iter().sum();
        let clipped = generated.iter().filter(|s| s.finish == Finish::Length).count() as f64 / n_samples;
        let st = &update.stats;
        let mean = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
        let report = RlStepReport {
            rl_step: step + 1,
            policy_version: sampling.policy_version,
            reward_mean,
            reward_std,
            solve_rate: solve_rate(&rewards),
            response_len_mean: gen_tokens as f64 / n_samples,
            response_len_max: lens.iter().max().copied().unwrap_or(0),
            response_clip_ratio: clipped,
            loss: mean(&update.losses),
            clip_frac: st.clip_frac(),
            dual_clip_frac: (matches!(self.loss.kind, LossKind::Ppo | LossKind::DecoupledPpo)
                && self.loss.dual_clip_c().is_some())
            .then(|| st.dual_clip_frac()),
            cap_frac: (self.loss.kind == LossKind::DecoupledPpo).then(|| st.cap_frac()),
            approx_kl: st.approx_kl(),
            ref_kl: st.ref_kl(),
            entropy: st.entropy(),
            grad_norm: mean(&update.grad_norms),
            updates: update.losses.len(),
            lr,
            skipped_updates: update.skipped_updates,
            logprob_mismatch_abs_mean: st.mismatch_abs_mean(),
            logprob_mismatch_abs_max: st.mismatch_abs_max,
            trained_samples,
            valid_tokens: sums[0],
            effective_sample_ratio: frac(sums[3], sums[2]),
            all_correct_ratio: frac(sums[4], sums[6]),
            all_wrong_ratio: frac(sums[5], sums[6]),
            zero_std_frac: frac(sums[7], sums[8]),
            prompts: sums[6],
            gen_tokens_per_s: gen_tokens as f64 / sampling.t_gen.max(1e-9),
            train_tokens_per_s: sums[1] * rl.epochs.max(1) as f64 / t_train.max(1e-9),
            time_generate_s: sampling.t_gen,
            time_train_s: t_train,
            step_s: secs,
            train_state_mib: self.state_bytes(model, opt) as f64 / (1u64 << 20) as f64,
            device_mem_mib: self.engine.device_mem_mib(),
            device_peak_mib: self.engine.take_device_peak_mib(),
            sampler: SamplerNotes {
                rhythm_amplified_frac: notes.rhythm_amplified_frac.or(sampler_notes.rhythm_amplified_frac),
                ..sampler_notes
            },
            critic: notes.critic.map(|c| CriticNotes { value_losses, ..c }),
            asynchronous: sampling
                .asynchronous
                .map(|a| AsyncNotes { trainer_idle_frac: (a.time_wait_batch_s / secs.max(1e-9)).min(1.0), ..a }),
        };
        Ok(StepOutput { report, samples: generated })
    }

    /// Bring the policy's and the critics' weights and moments to the host (checkpoints, the
    /// phase's end); nothing to do on the CPU.
    pub fn sync_host(&mut self, model: &mut Model, opt: &mut AdamW) -> Result<()> {
        self.engine.sync_host(model, opt)?;
        match self.critics.as_mut() {
            Some(c) => c.sync_host(),
            None => Ok(()),
        }
    }

    /// Bytes of the training state: the policy's weights, gradients and AdamW moments, the
    /// reference weights, and each critic's weights, gradients and moments (f32).
    pub fn state_bytes(&self, model: &Model, opt: &AdamW) -> usize {
        // weights and gradients, the moments this rank keeps (a part of them where sharded)
        let policy = 2 * model.params.data.len() + opt.m.len() + opt.v.len();
        let reference = self.reference.as_ref().map_or(0, |r| r.params.data.len());
        4 * (policy + reference) + self.critics.as_ref().map_or(0, Critics::state_bytes)
    }
}

/// Fraction of `rewards` above 0: the samples that solved their problem. A malformed answer's
/// −`format_penalty` counts as unsolved, as in the held-out evaluation; 0 for no samples.
fn solve_rate(rewards: &[f64]) -> f64 {
    if rewards.is_empty() {
        return 0.0;
    }
    rewards.iter().filter(|&&r| r > 0.0).count() as f64 / rewards.len() as f64
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_solve_rate_counts_positive_rewards_only() {
        assert_eq!(super::solve_rate(&[1.0, -1.0, 0.0, -1.0]), 0.25);
        assert_eq!(super::solve_rate(&[1.0, 1.0, -0.0, 0.0]), 0.5);
        assert_eq!(super::solve_rate(&[]), 0.0);
    }
}
