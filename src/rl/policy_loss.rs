//! Policy losses (ALGORITHMS.md §5): per-token ℓ_t and its exact gradient ∂ℓ_t/∂logπ_θ, the k3 KL and entropy
//! terms, and their aggregation into the scalar
//!
//! L = agg(w·ℓ) + β_kl·agg(KL) − β_ent·agg(H)
//!
//! with per-token outputs `dlogp[t]` = ∂L/∂logπ_θ(o_t) and `dent[t]` = ∂L/∂H_t for the model's backward.
//! Stop-gradient factors (sg) are constants: e.g. tis ℓ = −sg(clip(r, 0, 1))·A·logπ has ∂ℓ/∂logπ = −clip(r, 0, 1)·A.

use std::ops::Range;

use super::loss_config::{Denominators, LossConfig, LossKind};
use crate::{Error, Result};

/// Packed response tokens of a (micro-)batch: one entry per response token; response s has tokens
/// `seq_starts[s]..seq_starts[s+1]` (`seq_starts[0] == 0`, last entry = token count).
#[derive(Debug, Clone, Copy)]
pub struct TokenBatch<'a> {
    /// Response offsets, length N_seq + 1.
    pub seq_starts: &'a [usize],
    /// logπ_θ(o_t): current policy (the trainer's forward).
    pub logp: &'a [f32],
    /// logπ_old = logπ_prox: recomputed at the start of the update (or the behaviour log-probs when on-policy).
    pub old_logp: &'a [f32],
    /// logμ(o_t): behaviour log-probs recorded at rollout. Required by decoupled_ppo; otherwise only used for the
    /// rollout-vs-train mismatch metric |logπ_old − logμ|.
    pub behav_logp: Option<&'a [f32]>,
    /// logπ_ref(o_t): frozen reference policy, required when kl_coef > 0.
    pub ref_logp: Option<&'a [f32]>,
    /// H_t: entropy of π_θ at position t.
    pub entropy: &'a [f32],
    /// A_t per token (see `advantages::broadcast_to_tokens`).
    pub advantages: &'a [f32],
    /// Sequence reward R_s, one per response (topr branches on R_s > 0).
    pub seq_reward: &'a [f32],
}

impl<'a> TokenBatch<'a> {
    /// Number of response tokens.
    pub fn n_tokens(&self) -> usize {
        self.logp.len()
    }

    /// Number of responses (N_seq, empty ones included).
    pub fn n_seqs(&self) -> usize {
        self.seq_starts.len().saturating_sub(1)
    }

    /// Token range `seq_starts[seqs.start]..seq_starts[seqs.end]` of responses `seqs` (to slice `dlogp`/`dent`).
    pub fn token_range(&self, seqs: Range<usize>) -> Range<usize> {
        self.seq_starts[seqs.start]..self.seq_starts[seqs.end]
    }

    /// The micro-batch of responses `seqs`: all per-token slices cut to [`TokenBatch::token_range`], offsets
    /// rebased to 0 into `starts` (a reusable buffer). Use it with the full batch's [`Denominators`].
    pub fn sub_batch<'b>(&self, seqs: Range<usize>, starts: &'b mut Vec<usize>) -> TokenBatch<'b>
    where
        'a: 'b,
    {
        let toks = self.token_range(seqs.clone());
        starts.clear();
        starts.extend(self.seq_starts[seqs.start..=seqs.end].iter().map(|&o| o - toks.start));
        TokenBatch {
            seq_starts: starts,
            logp: &self.logp[toks.clone()],
            old_logp: &self.old_logp[toks.clone()],
            behav_logp: self.behav_logp.map(|b| &b[toks.clone()]),
            ref_logp: self.ref_logp.map(|r| &r[toks.clone()]),
            entropy: &self.entropy[toks.clone()],
            advantages: &self.advantages[toks],
            seq_reward: &self.seq_reward[seqs],
        }
    }

    fn check(&self, cfg: &LossConfig) -> Result<()> {
        let n = self.logp.len();
        let bad = |msg: String| Err(Error::shape("policy loss batch", msg));
        let unsupported = |msg: String| Err(Error::Invalid(format!("policy loss batch: {msg}")));
        if self.seq_starts.first() != Some(&0) || self.seq_starts.last() != Some(&n) {
            return bad(format!("seq_starts must run from 0 to the token count {n}, got {:?}", self.seq_starts));
        }
        if self.seq_starts.windows(2).any(|w| w[0] > w[1]) {
            return bad("seq_starts must be non-decreasing".into());
        }
        let per_token = [
            ("old_logp", Some(self.old_logp.len())),
            ("behav_logp", self.behav_logp.map(<[f32]>::len)),
            ("ref_logp", self.ref_logp.map(<[f32]>::len)),
            ("entropy", Some(self.entropy.len())),
            ("advantages", Some(self.advantages.len())),
        ];
        for (name, len) in per_token {
            if let Some(len) = len.filter(|&l| l != n) {
                return bad(format!("{name} has {len} entries, logp has {n}"));
            }
        }
        if self.seq_reward.len() != self.n_seqs() {
            return bad(format!("seq_reward has {} entries for {} responses", self.seq_reward.len(), self.n_seqs()));
        }
        if cfg.kind == LossKind::DecoupledPpo && self.behav_logp.is_none() {
            return unsupported("decoupled_ppo needs behav_logp (the rollout's log-probs)".into());
        }
        if cfg.kl_coef != 0.0 && self.ref_logp.is_none() {
            return unsupported(format!(
                "kl_coef = {} needs ref_logp (set kl_coef = 0 to train without a reference)",
                cfg.kl_coef
            ));
        }
        Ok(())
    }
}

/// One token's policy term: ℓ_t (before aggregation), ∂ℓ_t/∂logπ_θ, and which branch was taken.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PolicyTerm {
    /// ℓ_t, including the decoupled weight w (so this is w·ℓ_t).
    pub loss: f64,
    /// ∂(w·ℓ_t)/∂logπ_θ(o_t).
    pub dlogp: f64,
    /// r = exp(logπ_θ − logπ_old).
    pub ratio: f64,
    /// The ratio was clipped: ppo/decoupled — the clipped branch strictly wins (zero gradient); tis/topr — r > 1
    /// was truncated to 1; cispo — r outside [1−ε_l, 1+ε_h].
    pub clipped: bool,
    /// ppo/decoupled with A < 0: the dual-clip branch −c·A strictly wins (zero gradient).
    pub dual_clipped: bool,
    /// Decoupled importance weight w = min(π_prox/μ, cap) (1 for the other kinds).
    pub weight: f64,
    /// Decoupled weight hit the cap.
    pub capped: bool,
}

/// ppo: ℓ = max(−r·A, −clip(r, 1−ε_l, 1+ε_h)·A), for A < 0 with dual clip c: min(ℓ, −c·A).
/// Gradient w.r.t. logπ: −r·A on the unclipped branch (ties go to it), 0 on the clipped and dual-clip branches.
fn ppo_term(r: f64, adv: f64, eps_low: f64, eps_high: f64, dual_clip: Option<f64>) -> PolicyTerm {
    let unclipped = -r * adv;
    let clipped = -r.clamp(1.0 - eps_low, 1.0 + eps_high) * adv;
    let (mut loss, mut dlogp, is_clipped) =
        if unclipped >= clipped { (unclipped, -r * adv, false) } else { (clipped, 0.0, true) };
    let mut dual_clipped = false;
    if let Some(c) = dual_clip.filter(|_| adv < 0.0) {
        let lower = -c * adv;
        if loss > lower {
            (loss, dlogp, dual_clipped) = (lower, 0.0, true);
        }
    }
    PolicyTerm { loss, dlogp, ratio: r, clipped: is_clipped, dual_clipped, weight: 1.0, capped: false }
}

/// Stop-gradient-coefficient losses ℓ = −sg(coef)·A·logπ ⇒ ∂ℓ/∂logπ = −coef·A.
fn sg_term(coef: f64, adv: f64, logp: f64, r: f64, clipped: bool) -> PolicyTerm {
    PolicyTerm { loss: -coef * adv * logp, dlogp: -coef * adv, ratio: r, clipped, weight: 1.0, ..Default::default() }
}

/// Per-token policy term for `cfg.kind` (see [`LossKind`] for each ℓ_t); `seq_reward` is the token's response
/// reward (topr), `behav_logp` the rollout log-prob (decoupled_ppo's w = min(exp(logπ_old − logμ), cap)).
pub fn policy_term(
    cfg: &LossConfig,
    logp: f32,
    old_logp: f32,
    behav_logp: f32,
    adv: f32,
    seq_reward: f32,
) -> PolicyTerm {
    let (logp, adv) = (f64::from(logp), f64::from(adv));
    let r = (logp - f64::from(old_logp)).exp();
    let (eps_low, eps_high) = (f64::from(cfg.eps_low()), f64::from(cfg.eps_high()));
    let dual = cfg.dual_clip_c().map(f64::from);
    match cfg.kind {
        LossKind::Ppo => ppo_term(r, adv, eps_low, eps_high, dual),
        LossKind::Tis => sg_term(r.clamp(0.0, 1.0), adv, logp, r, r > 1.0),
        LossKind::Topr if seq_reward > 0.0 => sg_term(1.0, adv, logp, r, false),
        LossKind::Topr => sg_term(r.clamp(0.0, 1.0), adv, logp, r, r > 1.0),
        LossKind::Cispo => {
            let (lo, hi) = (1.0 - eps_low, 1.0 + eps_high);
            sg_term(r.clamp(lo, hi), adv, logp, r, r < lo || r > hi)
        }
        LossKind::DecoupledPpo => {
            let cap = f64::from(cfg.decoupled_cap);
            let raw = (f64::from(old_logp) - f64::from(behav_logp)).exp();
            let w = raw.min(cap);
            let t = ppo_term(r, adv, eps_low, eps_high, dual);
            PolicyTerm { loss: w * t.loss, dlogp: w * t.dlogp, weight: w, capped: raw > cap, ..t }
        }
    }
}

/// k3 KL to the reference: k = logπ_ref − logπ, KL = exp(k) − k − 1 ∈ [0, ∞), clamped to [−clamp, clamp].
/// Returns (KL, ∂KL/∂logπ) with ∂KL/∂logπ = 1 − exp(k), and 0 where the clamp is active.
pub fn k3_kl(logp: f32, ref_logp: f32, clamp: f32) -> (f64, f64) {
    let k = f64::from(ref_logp) - f64::from(logp);
    let kl = k.exp() - k - 1.0;
    let clamp = f64::from(clamp);
    if kl > clamp {
        (clamp, 0.0)
    } else if kl < -clamp {
        (-clamp, 0.0)
    } else {
        (kl, 1.0 - k.exp())
    }
}

/// Token-summed statistics of one (micro-)batch; [`LossStats::merge`] them across micro-batches and ranks, then
/// read the means. Sums, not means, so that merging is exact.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LossStats {
    /// Response tokens seen.
    pub n_tokens: u64,
    /// Tokens whose ratio was clipped ([`PolicyTerm::clipped`]).
    pub n_clipped: u64,
    /// Tokens on the dual-clip branch.
    pub n_dual_clipped: u64,
    /// Tokens whose decoupled weight hit the cap.
    pub n_capped: u64,
    /// Σ r.
    pub ratio_sum: f64,
    /// Σ (r − 1 − log r): k3 estimate of KL(π_old ‖ π_θ) summed over tokens.
    pub approx_kl_sum: f64,
    /// Σ KL_t to the reference (clamped k3; 0 when no reference).
    pub ref_kl_sum: f64,
    /// Σ H_t.
    pub entropy_sum: f64,
    /// Σ w (decoupled weight, 1 for the other kinds).
    pub weight_sum: f64,
    /// Σ |logπ_old − logμ| over tokens with behaviour log-probs (rollout-vs-train mismatch).
    pub mismatch_abs_sum: f64,
    /// max |logπ_old − logμ|.
    pub mismatch_abs_max: f64,
}

impl LossStats {
    /// Add another shard's sums (max for `mismatch_abs_max`).
    pub fn merge(&mut self, o: &LossStats) {
        self.n_tokens += o.n_tokens;
        self.n_clipped += o.n_clipped;
        self.n_dual_clipped += o.n_dual_clipped;
        self.n_capped += o.n_capped;
        self.ratio_sum += o.ratio_sum;
        self.approx_kl_sum += o.approx_kl_sum;
        self.ref_kl_sum += o.ref_kl_sum;
        self.entropy_sum += o.entropy_sum;
        self.weight_sum += o.weight_sum;
        self.mismatch_abs_sum += o.mismatch_abs_sum;
        self.mismatch_abs_max = self.mismatch_abs_max.max(o.mismatch_abs_max);
    }

    fn per_token(&self, sum: f64) -> f64 {
        if self.n_tokens == 0 {
            0.0
        } else {
            sum / self.n_tokens as f64
        }
    }

    /// Fraction of tokens with a clipped ratio: n_clipped / n_tokens.
    pub fn clip_frac(&self) -> f64 {
        self.per_token(self.n_clipped as f64)
    }
    /// Fraction of tokens on the dual-clip branch.
    pub fn dual_clip_frac(&self) -> f64 {
        self.per_token(self.n_dual_clipped as f64)
    }
    /// Fraction of tokens whose decoupled weight was capped.
    pub fn cap_frac(&self) -> f64 {
        self.per_token(self.n_capped as f64)
    }
    /// Token mean of r = π_θ/π_old.
    pub fn mean_ratio(&self) -> f64 {
        self.per_token(self.ratio_sum)
    }
    /// Token mean of r − 1 − log r (approx KL(π_old ‖ π_θ), ≥ 0).
    pub fn approx_kl(&self) -> f64 {
        self.per_token(self.approx_kl_sum)
    }
    /// Token mean of the clamped k3 KL to the reference.
    pub fn ref_kl(&self) -> f64 {
        self.per_token(self.ref_kl_sum)
    }
    /// Token mean entropy.
    pub fn entropy(&self) -> f64 {
        self.per_token(self.entropy_sum)
    }
    /// Token mean decoupled weight w.
    pub fn mean_weight(&self) -> f64 {
        self.per_token(self.weight_sum)
    }
    /// Token mean |logπ_old − logμ|.
    pub fn mismatch_abs_mean(&self) -> f64 {
        self.per_token(self.mismatch_abs_sum)
    }
}

/// Result of [`policy_loss`]: this (micro-)batch's share of the loss (shares add up to the full-batch loss when
/// full-batch [`Denominators`] are used) and its statistics.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LossOutput {
    /// L = policy_loss + β_kl·kl_loss − β_ent·entropy_loss.
    pub loss: f64,
    /// agg(w·ℓ).
    pub policy_loss: f64,
    /// agg(KL) (before β_kl).
    pub kl_loss: f64,
    /// agg(H) (before β_ent).
    pub entropy_loss: f64,
    /// Token-summed statistics.
    pub stats: LossStats,
}

impl LossOutput {
    /// Accumulate another micro-batch's output: losses add, statistics merge.
    pub fn accumulate(&mut self, o: &LossOutput) {
        self.loss += o.loss;
        self.policy_loss += o.policy_loss;
        self.kl_loss += o.kl_loss;
        self.entropy_loss += o.entropy_loss;
        self.stats.merge(&o.stats);
    }
}

/// Σ|a − b| and max|a − b| over paired log-probs (in f64), as the loss statistics' mismatch
/// terms count them.
pub fn abs_diff_stats(a: &[f32], b: &[f32]) -> (f64, f64) {
    a.iter().zip(b).fold((0.0, 0.0), |(sum, max), (&x, &y)| {
        let d = (f64::from(x) - f64::from(y)).abs();
        (sum + d, f64::max(max, d))
    })
}

/// The policy loss of a (micro-)batch, writing `dlogp[t]` = ∂L/∂logπ_θ(o_t) = a_t·(∂(w·ℓ_t)/∂logπ + β_kl·∂KL_t/∂logπ)
/// and `dent[t]` = ∂L/∂H_t = −β_ent·a_t, where a_t is the aggregation weight ([`Denominators::token_weight`]).
///
/// `denom`: the FULL batch's denominators (all micro-batches, all data-parallel ranks) for exact gradient
/// accumulation; `None` uses this batch's own ([`Denominators::new`]).
pub fn policy_loss(
    batch: &TokenBatch,
    cfg: &LossConfig,
    denom: Option<&Denominators>,
    dlogp: &mut [f32],
    dent: &mut [f32],
) -> Result<LossOutput> {
    batch.check(cfg)?;
    let n = batch.n_tokens();
    if dlogp.len() != n || dent.len() != n {
        return Err(Error::shape(
            "policy loss",
            format!("dlogp/dent have {}/{} entries, the batch has {n} tokens", dlogp.len(), dent.len()),
        ));
    }
    let denom = denom.copied().unwrap_or_else(|| Denominators::new(cfg, batch.seq_starts));
    let (beta_kl, beta_ent) = (f64::from(cfg.kl_coef), f64::from(cfg.entropy_coef));
    let mut out = LossOutput::default();
    let st = &mut out.stats;
    for (s, w) in batch.seq_starts.windows(2).enumerate() {
        let a = denom.token_weight(cfg.agg, w[1] - w[0]);
        let reward = batch.seq_reward[s];
        for t in w[0]..w[1] {
            let behav = batch.behav_logp.map_or(batch.old_logp[t], |b| b[t]);
            let term = policy_term(cfg, batch.logp[t], batch.old_logp[t], behav, batch.advantages[t], reward);
            let (kl, dkl) = match batch.ref_logp {
                Some(rf) => k3_kl(batch.logp[t], rf[t], cfg.kl_clamp),
                None => (0.0, 0.0),
            };
            let h = f64::from(batch.entropy[t]);
            out.policy_loss += a * term.loss;
            out.kl_loss += a * kl;
            out.entropy_loss += a * h;
            dlogp[t] = (a * (term.dlogp + beta_kl * dkl)) as f32;
            dent[t] = (-beta_ent * a) as f32;

            st.n_tokens += 1;
            st.n_clipped += u64::from(term.clipped);
            st.n_dual_clipped += u64::from(term.dual_clipped);
            st.n_capped += u64::from(term.capped);
            st.ratio_sum += term.ratio;
            st.approx_kl_sum += term.ratio - 1.0 - term.ratio.ln();
            st.ref_kl_sum += kl;
            st.entropy_sum += h;
            st.weight_sum += term.weight;
            if batch.behav_logp.is_some() {
                let d = (f64::from(batch.old_logp[t]) - f64::from(behav)).abs();
                st.mismatch_abs_sum += d;
                st.mismatch_abs_max = st.mismatch_abs_max.max(d);
            }
        }
    }
    out.loss = out.policy_loss + beta_kl * out.kl_loss - beta_ent * out.entropy_loss;
    Ok(out)
}
