//! The policy update of one RL step: `epochs` passes over the step's samples, each split into
//! `mini_batches` optimizer updates, each accumulated over micro-batches of at most `micro_batch`
//! samples and `micro_batch_tokens` positions ([`MicroBatch`]).
//!
//! Accumulation is exact: every micro-batch's loss uses the [`Denominators`] of its whole
//! mini-batch, so each token's weight does not depend on the split and the summed micro-batch
//! gradients equal the one-pass gradient of the mini-batch (up to float summation order; tested in
//! tests/rl_update.rs). π_old is the policy before the step's first update: with one update per
//! step it is the current policy (detached) and costs nothing; otherwise one forward pass over
//! the samples records it first.

use crate::error::{Error, Result};
use crate::model::micro_batch::MicroBatch;
use crate::model::{Batch, Model, Workspace};
use crate::parallel::{Comm, Local, DEFAULT_BUCKET_BYTES};
use crate::rl::{policy_loss, Denominators, LossConfig, LossStats, OldLogprobs, TokenBatch};
use crate::train::engine::Engine;
use crate::train::AdamW;

/// One sampled response, ready for training.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Prompt tokens (as the run's `TextCodec::prompt` encodes them).
    pub prompt: Vec<u32>,
    /// Response tokens (EOS included when generated).
    pub response: Vec<u32>,
    /// Behaviour log-probs μ(o_t) recorded at rollout, one per response token.
    pub behav_logp: Vec<f32>,
    /// Per-token advantages, one per response token.
    pub advantages: Vec<f32>,
    /// Sequence reward (topr branches on its sign).
    pub reward: f32,
}

/// How the step's samples become optimizer updates (`[rl]` keys of the same names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdatePlan {
    /// Passes over the step's samples (≥ 1).
    pub epochs: usize,
    /// Optimizer updates per pass; the samples are cut into this many contiguous mini-batches (≥ 1).
    pub mini_batches: usize,
    /// Samples and positions per forward/backward (gradient accumulation); 0 = no bound.
    pub micro_batch: MicroBatch,
    /// Global-norm clip (0 = off).
    pub grad_clip: f32,
}

impl UpdatePlan {
    /// One update per step, no accumulation.
    pub fn single(grad_clip: f32) -> Self {
        UpdatePlan { epochs: 1, mini_batches: 1, micro_batch: MicroBatch::default(), grad_clip }
    }

    fn updates(&self) -> usize {
        self.epochs.max(1) * self.mini_batches.max(1)
    }
}

/// What the update did (statistics over every micro-batch of every update).
#[derive(Debug, Clone, Default)]
pub struct UpdateReport {
    /// Loss of each optimizer update (summed over its micro-batches).
    pub losses: Vec<f64>,
    /// Pre-clip gradient norm of each update.
    pub grad_norms: Vec<f64>,
    /// Updates skipped for a non-finite loss or gradient norm.
    pub skipped_updates: usize,
    /// Loss statistics summed over all updates.
    pub stats: LossStats,
    /// logπ_old per response token of every sample, concatenated in sample order (the recomputed log-probs).
    pub old_logp: Vec<f32>,
}

/// Reusable buffers of the update (allocated once per run, grown on demand), and the KL
/// reference's engine (made on first use, on the policy engine's device).
pub struct UpdateBuffers {
    ws: Workspace,
    ref_ws: Workspace,
    batch: Batch,
    ref_engine: Option<Engine>,
}

/// What one policy update trains on: the sequences (in order) and the per-token inputs that
/// are not part of a sequence.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpdateBatch<'a> {
    pub samples: &'a [Sample],
    /// π_old per response token (concatenated in sample order), NaN where the policy before the
    /// update is π_old; empty = all of them (the usual case). The off-policy AttnRL pipeline keeps
    /// the generating policy's log-probs for tokens sampled one step earlier. decoupled_ppo takes
    /// them as its μ instead, keeping the policy before the update as π_prox.
    pub fixed_old_logp: &'a [f32],
    /// Per response token, a factor on the entropy bonus's gradient (AsyPPO excludes the tokens
    /// its critics disagree most on); empty = all 1.
    pub entropy_keep: &'a [f32],
}

impl<'a> UpdateBatch<'a> {
    /// Plain sequences: π_old is the policy before the update, every token has the entropy bonus.
    pub fn of(samples: &'a [Sample]) -> Self {
        UpdateBatch { samples, ..UpdateBatch::default() }
    }
}

/// How the update turns a batch into optimizer steps: loss, plan, learning rate, KL reference.
#[derive(Clone, Copy)]
pub struct UpdateSettings<'a> {
    pub loss: &'a LossConfig,
    pub plan: UpdatePlan,
    pub lr: f32,
    /// The frozen policy of the KL term (needed iff `loss.kl_coef > 0`).
    pub reference: Option<&'a Model>,
}

impl UpdateBuffers {
    /// Buffers for `model`.
    pub fn new(model: &Model) -> Self {
        UpdateBuffers {
            ws: Workspace::new(&model.cfg, 0),
            ref_ws: Workspace::new(&model.cfg, 0),
            batch: Batch::new(),
            ref_engine: None,
        }
    }
}

/// Packed positions of the micro-batch `samples`: the batch holds prompt+response of each sample;
/// `resp_pos[j]` is the position whose target is response token j; `starts` are response offsets.
fn pack(samples: &[Sample], batch: &mut Batch, resp_pos: &mut Vec<usize>, starts: &mut Vec<usize>) -> Result<()> {
    batch.clear();
    resp_pos.clear();
    starts.clear();
    starts.push(0);
    let mut seq = Vec::new();
    for s in samples {
        if s.prompt.is_empty() {
            return Err(Error::shape("rl update", "a sample has an empty prompt"));
        }
        if s.behav_logp.len() != s.response.len() || s.advantages.len() != s.response.len() {
            return Err(Error::shape(
                "rl update",
                format!(
                    "a sample has {} response tokens but {} behaviour log-probs and {} advantages",
                    s.response.len(),
                    s.behav_logp.len(),
                    s.advantages.len()
                ),
            ));
        }
        seq.clear();
        seq.extend_from_slice(&s.prompt);
        seq.extend_from_slice(&s.response);
        let base = batch.len() + s.prompt.len() - 1;
        batch.push_lm(&seq, 0)?;
        resp_pos.extend(base..base + s.response.len());
        starts.push(resp_pos.len());
    }
    Ok(())
}

/// Contiguous chunks of `0..n`: `parts` of them (the last ones may be one shorter); empty chunks dropped.
fn chunks(n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.clamp(1, n.max(1));
    let (base, extra) = (n / parts, n % parts);
    let mut out = Vec::with_capacity(parts);
    let mut a = 0;
    for p in 0..parts {
        let len = base + usize::from(p < extra);
        if len > 0 {
            out.push(a..a + len);
        }
        a += len;
    }
    out
}

/// Micro-batch ranges of `samples[range]`, each sample of its prompt's and response's positions.
fn micro_ranges(samples: &[Sample], range: std::ops::Range<usize>, micro: MicroBatch) -> Vec<std::ops::Range<usize>> {
    micro.ranges(range, |i| samples[i].prompt.len() + samples[i].response.len())
}

/// Sum of response lengths of samples before index i (token offsets into the flat per-token arrays).
fn token_offsets(samples: &[Sample]) -> Vec<usize> {
    let mut off = Vec::with_capacity(samples.len() + 1);
    off.push(0);
    for s in samples {
        off.push(off.last().copied().unwrap_or(0) + s.response.len());
    }
    off
}

/// Forward `samples[range]` on `model` and copy its response-token log-probs (and entropies) out.
fn response_logp(
    engine: &mut Engine,
    model: &Model,
    samples: &[Sample],
    ws: &mut Workspace,
    batch: &mut Batch,
    out_logp: &mut Vec<f32>,
    out_ent: Option<&mut Vec<f32>>,
) -> Result<(Vec<usize>, Vec<usize>)> {
    let (mut resp_pos, mut starts) = (Vec::new(), Vec::new());
    pack(samples, batch, &mut resp_pos, &mut starts)?;
    out_logp.clear();
    if batch.is_empty() {
        return Ok((resp_pos, starts));
    }
    engine.forward(model, batch, ws)?;
    out_logp.extend(resp_pos.iter().map(|&i| ws.logprobs[i]));
    if let Some(ent) = out_ent {
        ent.clear();
        ent.extend(resp_pos.iter().map(|&i| ws.entropy[i]));
    }
    Ok((resp_pos, starts))
}

/// The log-probs of every sample's response tokens under `model` as it stands (teacher forced, at
/// temperature 1: the update's own forward), in forwards of at most `micro`, one vector per
/// sample. The off-policy tree pipeline takes π_old of a batch so, under the weights that generated
/// it (ALGORITHMS.md §4), rather than the sampler's log-probs (tempered, and decoded).
pub(crate) fn teacher_logprobs(
    engine: &mut Engine,
    model: &Model,
    samples: &[Sample],
    micro: MicroBatch,
    ws: &mut Workspace,
) -> Result<Vec<Vec<f32>>> {
    let (mut batch, mut logp) = (Batch::new(), Vec::new());
    let mut out = Vec::with_capacity(samples.len());
    for r in micro_ranges(samples, 0..samples.len(), micro) {
        let part = &samples[r];
        response_logp(engine, model, part, ws, &mut batch, &mut logp, None)?;
        // (one log-prob per response token, the samples' in order)
        let mut at = 0;
        for s in part {
            let n = s.response.len();
            out.push(logp.get(at..at + n).map(<[f32]>::to_vec).unwrap_or_default());
            at += n;
        }
        debug_assert_eq!(at, logp.len());
    }
    Ok(out)
}

/// This rank's place in a data-parallel update: its samples are the global samples
/// `offset..offset + local` of `total`, and `comm` joins the data-parallel ranks.
pub struct DpShard<'c> {
    pub comm: &'c dyn Comm,
    pub offset: usize,
    pub total: usize,
    /// Gradient all-reduce bucket size.
    pub bucket_bytes: usize,
}

/// Run the policy update of one step on `batch` in one process, on `engine`.
pub fn policy_update(
    engine: &mut Engine,
    model: &mut Model,
    opt: &mut AdamW,
    batch: UpdateBatch,
    settings: &UpdateSettings,
    buf: &mut UpdateBuffers,
) -> Result<UpdateReport> {
    let total = batch.samples.len();
    let shard = DpShard { comm: &Local, offset: 0, total, bucket_bytes: DEFAULT_BUCKET_BYTES };
    policy_update_dp(engine, model, opt, batch, settings, buf, &shard)
}

/// [`policy_update`] on one data-parallel rank: mini-batches are cut from the GLOBAL sample order
/// (so the updates are the same for any number of ranks), each micro-batch is normalised by the
/// all-reduced denominators of its global mini-batch, and gradients are all-reduced before the
/// step. Every rank makes the same collectives in the same order, whatever its share.
pub fn policy_update_dp(
    engine: &mut Engine,
    model: &mut Model,
    opt: &mut AdamW,
    batch: UpdateBatch,
    settings: &UpdateSettings,
    buf: &mut UpdateBuffers,
    dp: &DpShard,
) -> Result<UpdateReport> {
    let UpdateBatch { samples, fixed_old_logp, entropy_keep } = batch;
    let UpdateSettings { loss: loss_cfg, plan, lr, reference } = *settings;
    if loss_cfg.kl_coef > 0.0 && reference.is_none() {
        return Err(Error::Invalid("rl update: kl_coef > 0 needs a reference model".into()));
    }
    let mut report = UpdateReport::default();
    if dp.total == 0 {
        return Ok(report);
    }
    if dp.offset + samples.len() > dp.total {
        return Err(Error::shape(
            "rl update",
            format!("local samples {}..{} exceed the global count {}", dp.offset, dp.offset + samples.len(), dp.total),
        ));
    }
    let offsets = token_offsets(samples);
    let micro = plan.micro_batch;
    // global mini-batches, intersected with this rank's samples (possibly empty)
    let mine = dp.offset..dp.offset + samples.len();
    let minis: Vec<std::ops::Range<usize>> = chunks(dp.total, plan.mini_batches)
        .into_iter()
        .map(|g| {
            let (a, b) = (g.start.max(mine.start), g.end.min(mine.end));
            if a < b {
                a - dp.offset..b - dp.offset
            } else {
                0..0
            }
        })
        .collect();
    // π_old (and π_ref): one forward pass before any update, when there will be several updates.
    let mut tmp = Vec::new();
    let precompute_old = plan.updates() > 1;
    let mut ref_logp = Vec::new();
    if let (Some(rf), None) = (reference, &buf.ref_engine) {
        buf.ref_engine = Some(engine.frozen(rf)?);
    }
    if precompute_old || reference.is_some() {
        for r in micro_ranges(samples, 0..samples.len(), micro) {
            if precompute_old {
                response_logp(engine, model, &samples[r.clone()], &mut buf.ws, &mut buf.batch, &mut tmp, None)?;
                report.old_logp.extend_from_slice(&tmp);
            }
            if let (Some(rf), Some(re)) = (reference, buf.ref_engine.as_mut()) {
                response_logp(re, rf, &samples[r], &mut buf.ref_ws, &mut buf.batch, &mut tmp, None)?;
                ref_logp.extend_from_slice(&tmp);
            }
        }
    }
    let (mut logp, mut ent) = (Vec::new(), Vec::new());
    let (mut behav, mut adv, mut rewards) = (Vec::new(), Vec::new(), Vec::new());
    let (mut d_resp, mut e_resp, mut dlogp, mut dent) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let with_ent = loss_cfg.entropy_coef != 0.0;
    // decoupled_ppo reads μ beside π_prox itself
    let decoupled = loss_cfg.kind == crate::rl::LossKind::DecoupledPpo;
    let behaviour_ratio = loss_cfg.old_logprobs == OldLogprobs::Behaviour && !decoupled;
    for _epoch in 0..plan.epochs.max(1) {
        for mini in &minis {
            let mut starts = Vec::with_capacity(mini.len() + 1);
            starts.push(0usize);
            for s in &samples[mini.clone()] {
                starts.push(starts.last().copied().unwrap_or(0) + s.response.len());
            }
            let local = Denominators::new(loss_cfg, &starts);
            let (mut sums, mut tmax) = ([local.tokens, local.seqs], [local.t_max]);
            dp.comm.all_reduce_sum_f64(&mut sums)?;
            dp.comm.all_reduce_max_f64(&mut tmax)?;
            let denom = Denominators { tokens: sums[0], seqs: sums[1], t_max: tmax[0] };
            engine.zero_grads(model)?;
            let mut loss = 0.0f64;
            for r in micro_ranges(samples, mini.clone(), micro) {
                let part = &samples[r.clone()];
                let (resp_pos, starts) =
                    response_logp(engine, model, part, &mut buf.ws, &mut buf.batch, &mut logp, Some(&mut ent))?;
                if logp.is_empty() {
                    continue;
                }
                let toks = offsets[r.start]..offsets[r.end];
                behav.clear();
                adv.clear();
                rewards.clear();
                for s in part {
                    behav.extend_from_slice(&s.behav_logp);
                    adv.extend_from_slice(&s.advantages);
                    rewards.push(s.reward);
                }
                // the trainer's log-probs before the update (a recompute, or this forward while
                // the one update has not been made)
                let old: &[f32] = if precompute_old { &report.old_logp[toks.clone()] } else { &logp };
                let trainer_logp = old;
                let fixed = match fixed_old_logp.is_empty() {
                    true => None,
                    false => Some(fixed_old_logp.get(toks.clone()).ok_or_else(|| {
                        Error::shape("rl update", "the fixed π_old does not cover every response token")
                    })?),
                };
                if let (Some(fixed), true) = (fixed, decoupled) {
                    for (b, &f) in behav.iter_mut().zip(fixed) {
                        if !f.is_nan() {
                            *b = f;
                        }
                    }
                }
                let merged: Vec<f32>;
                let old = match fixed {
                    // π_old is the sampler's μ: the ratio carries staleness and rollout mismatch
                    _ if behaviour_ratio => &behav,
                    None => old,
                    // decoupled_ppo keeps the proximal policy as π_old: the generating policy's
                    // log-probs became its μ (above)
                    Some(_) if decoupled => old,
                    Some(fixed) => {
                        merged = old.iter().zip(fixed).map(|(&o, &f)| if f.is_nan() { o } else { f }).collect();
                        &merged
                    }
                };
                let tb = TokenBatch {
                    seq_starts: &starts,
                    logp: &logp,
                    old_logp: old,
                    behav_logp: Some(&behav),
                    ref_logp: reference.map(|_| &ref_logp[toks.clone()]),
                    entropy: &ent,
                    advantages: &adv,
                    seq_reward: &rewards,
                };
                d_resp.clear();
                d_resp.resize(logp.len(), 0.0);
                e_resp.clear();
                e_resp.resize(logp.len(), 0.0);
                let mut out = policy_loss(&tb, loss_cfg, Some(&denom), &mut d_resp, &mut e_resp)?;
                if behaviour_ratio {
                    // π_old is μ itself: the rollout-vs-trainer mismatch is the trainer's own
                    // log-probs against μ
                    let (sum, max) = crate::rl::policy_loss::abs_diff_stats(trainer_logp, &behav);
                    (out.stats.mismatch_abs_sum, out.stats.mismatch_abs_max) = (sum, max);
                }
                loss += out.loss;
                report.stats.merge(&out.stats);
                if !precompute_old && report.old_logp.len() < offsets[r.end] {
                    report.old_logp.extend_from_slice(&logp);
                }
                let n = buf.batch.len();
                dlogp.clear();
                dlogp.resize(n, 0.0);
                dent.clear();
                dent.resize(n, 0.0);
                for (j, &i) in resp_pos.iter().enumerate() {
                    dlogp[i] = d_resp[j];
                    dent[i] = e_resp[j] * entropy_keep.get(toks.start + j).copied().unwrap_or(1.0);
                }
                let dent_arg = with_ent.then_some(dent.as_slice());
                engine.accumulate(model, &buf.batch, &dlogp, dent_arg, &mut buf.ws)?;
            }
            engine.reduce_grads(dp.comm, dp.bucket_bytes)?;
            let mut l = [loss];
            dp.comm.all_reduce_sum_f64(&mut l)?;
            // a non-finite loss or gradient norm skips the update (the optimizer refuses the norm)
            let norm = match l[0].is_finite() {
                true => engine.step(opt, model, lr, plan.grad_clip, dp.comm)?,
                false => f32::NAN,
            };
            report.skipped_updates += crate::train::guard::NonFiniteGuard::is_bad(l[0], norm as f64) as usize;
            report.losses.push(l[0]);
            report.grad_norms.push(norm as f64);
        }
    }
    reduce_stats(dp.comm, &mut report.stats)?;
    Ok(report)
}

/// Sum the loss statistics over the data-parallel ranks (max for the mismatch maximum).
fn reduce_stats(comm: &dyn Comm, st: &mut LossStats) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let mut v = [
        st.n_tokens as f64,
        st.n_clipped as f64,
        st.n_dual_clipped as f64,
        st.n_capped as f64,
        st.ratio_sum,
        st.approx_kl_sum,
        st.ref_kl_sum,
        st.entropy_sum,
        st.weight_sum,
        st.mismatch_abs_sum,
    ];
    comm.all_reduce_sum_f64(&mut v)?;
    let mut m = [st.mismatch_abs_max];
    comm.all_reduce_max_f64(&mut m)?;
    *st = LossStats {
        n_tokens: v[0] as u64,
        n_clipped: v[1] as u64,
        n_dual_clipped: v[2] as u64,
        n_capped: v[3] as u64,
        ratio_sum: v[4],
        approx_kl_sum: v[5],
        ref_kl_sum: v[6],
        entropy_sum: v[7],
        weight_sum: v[8],
        mismatch_abs_sum: v[9],
        mismatch_abs_max: m[0],
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_range_in_order() {
        assert_eq!(chunks(10, 3), vec![0..4, 4..7, 7..10]);
        assert_eq!(chunks(2, 5), vec![0..1, 1..2]);
        assert_eq!(chunks(0, 2), Vec::<std::ops::Range<usize>>::new());
        // (the micro-batches: train::micro_batch's tests)
    }
}
