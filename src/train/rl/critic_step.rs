//! The critic side of an RL step (`[critic]`, ALGORITHMS.md §5–6): before the update, GAE
//! advantages on the critics' aggregate value V̄ with AsyPPO's uncertainty masks; after it, each
//! critic's update on its own subset of every prompt's responses.

use super::report::CriticNotes;
use super::rollouts::{CriticTargets, Rollouts, TrainingBatch};
use crate::config::RunConfig;
use crate::error::{Error, Result};
use crate::model::micro_batch::MicroBatch;
use crate::model::Model;
use crate::parallel::Comm;
use crate::rl::gae::{aggregate, critic_of, explained_variance, gae, quantile, uncertainty_masks};
use crate::train::critic::{Critic, CriticConfig, ValueTargets};
use crate::train::engine::Engine;
use std::path::Path;

/// The value models of a `[critic]` phase.
pub struct Critics {
    cfg: CriticConfig,
    pub models: Vec<Critic>,
}

impl Critics {
    /// `[critic]`'s value models for `model`.
    /// Each critic's trunk computes on the device of the policy's `engine`, in its data-parallel
    /// group.
    pub fn new(cc: &CriticConfig, model: &Model, cfg: &RunConfig, engine: &Engine) -> Result<Self> {
        // forwards of at most rl.micro_batch samples, as the policy's update
        let micro = cfg.rl.as_ref().map_or(MicroBatch::default(), |rl| rl.micro());
        let models = (0..cc.count)
            .map(|m| {
                let c = Critic::new(cc, model, m, cfg.run.seed, cfg.model.init_std)?.with_micro_batch(micro);
                c.on_device_of(engine)
            })
            .collect::<Result<_>>()?;
        Ok(Critics { cfg: cc.clone(), models })
    }

    /// Bytes of the critics' weights, gradients and moments (f32).
    pub fn state_bytes(&self) -> usize {
        self.models.iter().map(|c| 4 * 4 * (c.model.params.data.len() + c.head.len())).sum()
    }

    /// Steps during which the policy waits for the critics (`warmup_steps`).
    pub fn warming_up(&self, step: u64) -> bool {
        step < self.cfg.warmup_steps
    }

    /// Bring every critic's weights and moments to the host (before a checkpoint).
    pub fn sync_host(&mut self) -> Result<()> {
        self.models.iter_mut().try_for_each(Critic::sync_host)
    }

    /// Write every critic's state into checkpoint directory `dir` (`critic-<m>.safetensors`).
    pub fn save(&self, dir: &Path) -> Result<()> {
        for (m, c) in self.models.iter().enumerate() {
            c.save(&dir.join(format!("critic-{m}.safetensors")))?;
        }
        Ok(())
    }

    /// Restore every critic from checkpoint directory `dir`.
    pub fn load(&mut self, dir: &Path) -> Result<()> {
        for (m, c) in self.models.iter_mut().enumerate() {
            let path = dir.join(format!("critic-{m}.safetensors"));
            if !path.exists() {
                return Err(Error::path(
                    &path,
                    std::io::ErrorKind::NotFound,
                    format!("the checkpoint has no state for critic {m}"),
                ));
            }
            c.load(&path)?;
        }
        Ok(())
    }

    /// Replace the group advantages of `out`'s training samples by GAE on V̄, apply the masks,
    /// and keep the targets of the critics' update in the training batch. The batch-level
    /// statistics (whitening, the AsyPPO percentiles, the diagnostics) are the whole step's:
    /// every data-parallel rank's tokens gathered in rank order, the order of one process.
    pub fn advantages(&mut self, out: &mut Rollouts, dp: &dyn Comm) -> Result<CriticNotes> {
        let cc = &self.cfg;
        let samples: Vec<&super::Sample> = out.batch.samples.iter().collect();
        let values: Vec<Vec<f32>> = self.models.iter_mut().map(|c| c.values(&samples)).collect::<Result<_>>()?;
        let mut offsets = vec![0usize];
        for s in &out.batch.samples {
            offsets.push(offsets[offsets.len() - 1] + s.response.len());
        }
        let n = offsets[offsets.len() - 1];
        let (mut vbar, mut sigma) = (vec![0.0f32; n], vec![0.0f32; n]);
        let mut per = vec![0.0f32; self.models.len()];
        for t in 0..n {
            values.iter().zip(per.iter_mut()).for_each(|(v, p)| *p = v[t]);
            (vbar[t], sigma[t]) = aggregate(&per, cc.aggregate);
        }
        let (mut adv, mut ret) = (vec![0.0f32; n], vec![0.0f32; n]);
        for (i, s) in out.batch.samples.iter().enumerate() {
            let r = offsets[i]..offsets[i + 1];
            gae(&vbar[r.clone()], s.reward, cc.gae_gamma, cc.gae_lambda, &mut adv[r.clone()], &mut ret[r]);
        }
        // the step's tokens on every rank: advantages, σ, V̄ and returns
        let what = "critic token all-gather";
        let gather = |x: &[f32]| crate::parallel::comm::all_gather_in_rank_order(dp, x, what);
        let ((adv_all, at), (sigma_all, _)) = (gather(&adv)?, gather(&sigma)?);
        let ((vbar_all, _), (ret_all, _)) = (gather(&vbar)?, gather(&ret)?);
        let total = adv_all.len();
        if cc.whiten && total > 1 {
            let a = &adv_all;
            let mean = a.iter().map(|&a| a as f64).sum::<f64>() / total as f64;
            let std = (a.iter().map(|&a| (a as f64 - mean).powi(2)).sum::<f64>() / total as f64).sqrt();
            adv.iter_mut().for_each(|a| *a = ((*a as f64 - mean) / (std + 1e-8)) as f32);
        }
        let mut keep = vec![1.0f32; n];
        let (mut masked, mut excluded) = (0usize, 0usize);
        if self.models.len() >= 2 {
            // AsyPPO: percentiles over the step's response tokens, counted over all of them
            let (low, high) = uncertainty_masks(&sigma_all, cc.mask_low_frac, cc.entropy_exclude_high_frac);
            masked = low.iter().filter(|&&m| m).count();
            excluded = high.iter().filter(|&&m| m).count();
            for t in 0..n {
                if low[at + t] {
                    adv[t] = 0.0;
                }
                if high[at + t] {
                    keep[t] = 0.0;
                }
            }
        }
        let mut owner = Vec::with_capacity(out.batch.samples.len());
        out.counts.effective = 0;
        for (i, s) in out.batch.samples.iter_mut().enumerate() {
            let r = offsets[i]..offsets[i + 1];
            s.advantages.copy_from_slice(&adv[r.clone()]);
            out.counts.effective += usize::from(adv[r].iter().any(|&a| a != 0.0));
            let k = out.batch.generated_index[i]
                .ok_or_else(|| Error::Invalid("critic: a training sample without its generation".into()))?;
            out.generated[k].data.advantages.copy_from_slice(&s.advantages);
            owner.push(critic_of(out.generated[k].sample_index, self.models.len()));
        }
        let frac = |c: usize| if total > 0 { c as f64 / total as f64 } else { 0.0 };
        let mean =
            |x: &[f32]| if x.is_empty() { 0.0 } else { x.iter().map(|&a| a as f64).sum::<f64>() / x.len() as f64 };
        let notes = CriticNotes {
            critic_sigma_mean: mean(&sigma_all),
            critic_sigma_p20: quantile(&sigma_all, 0.2),
            critic_sigma_p80: quantile(&sigma_all, 0.8),
            critic_value_mean: mean(&vbar_all),
            critic_explained_variance: explained_variance(&vbar_all, &ret_all),
            adv_masked_frac: frac(masked),
            entropy_excluded_frac: frac(excluded),
            value_losses: Vec::new(),
        };
        out.batch.entropy_keep = keep;
        out.batch.critic = Some(CriticTargets { returns: ret, old: values, owner, offsets });
        Ok(notes)
    }

    /// Train every critic on its subset of `batch` toward the step's returns; the value loss of
    /// each critic (summed over the data-parallel ranks).
    pub fn update(&mut self, batch: &TrainingBatch, dp: &dyn Comm, bucket: usize) -> Result<Vec<f64>> {
        let cc = &self.cfg;
        let train = &batch.samples;
        let b = batch.critic.as_ref().ok_or_else(|| Error::Invalid("critic update before its advantages".into()))?;
        if b.owner.len() != train.len() {
            return Err(Error::Invalid("critic update: the training samples changed since sampling".into()));
        }
        let m_count = self.models.len();
        // tokens per critic over all data-parallel ranks (the token-mean's denominator)
        let mut tokens = vec![0.0f64; m_count];
        for (i, &m) in b.owner.iter().enumerate() {
            tokens[m] += (b.offsets[i + 1] - b.offsets[i]) as f64;
        }
        dp.all_reduce_sum_f64(&mut tokens)?;
        let mut losses = vec![0.0f64; m_count];
        for (m, critic) in self.models.iter_mut().enumerate() {
            let (mut mine, mut ret, mut old) = (Vec::new(), Vec::new(), Vec::new());
            for (i, s) in train.iter().enumerate().filter(|(i, _)| b.owner[*i] == m) {
                let r = b.offsets[i]..b.offsets[i + 1];
                mine.push(s);
                ret.extend_from_slice(&b.returns[r.clone()]);
                old.extend_from_slice(&b.old[m][r]);
            }
            let targets = ValueTargets { returns: &ret, old: &old, tokens_total: tokens[m] };
            losses[m] = critic.train(&mine, targets, cc.value_clip, cc.lr, dp, bucket)?;
        }
        dp.all_reduce_sum_f64(&mut losses)?;
        Ok(losses)
    }
}
