//! Policy-loss configuration (`[loss]` in a run TOML) and the aggregation denominators.
//!
//! Defaults are the reference values of ALGORITHMS.md §4/§5: ppo ε_low 0.2 / ε_high 0.28 (clip-higher), dual clip
//! c = 3, cispo ε 0.1 / 0.1, decoupled-PPO weight cap 1.2, k3 KL coefficient 0.001 clamped to [−10, 10], entropy 0,
//! seq-mean-token-mean aggregation.

use serde::{Deserialize, Serialize};

/// Which per-token policy loss ℓ_t (ROLL names; r = π_θ/π_old per token, A = advantage, sg = stop-gradient).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// ℓ = max(−r·A, −clip(r, 1−ε_l, 1+ε_h)·A); for A < 0 with dual clip c: min(that, −c·A).
    #[default]
    Ppo,
    /// Truncated IS: ℓ = −sg(clip(r, 0, 1))·A·logπ.
    Tis,
    /// Tapered off-policy REINFORCE: sequence reward > 0 ⇒ ℓ = −A·logπ, else ℓ = −sg(clip(r, 0, 1))·A·logπ.
    Topr,
    /// ℓ = −sg(clip(r, 1−ε_l, 1+ε_h))·A·logπ (default ε 0.1/0.1).
    Cispo,
    /// ℓ = w·ppo(r = π_θ/π_prox), w = sg(min(π_prox/μ, cap)); μ = behaviour policy recorded at rollout.
    DecoupledPpo,
}

/// What π_old is in the ratio r = π_θ/π_old of ppo, tis, topr and cispo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OldLogprobs {
    /// Recomputed under the weights at the start of the step's updates (verl's and OpenRLHF's
    /// default): with one update a step r ≡ 1, whatever policy sampled the tokens.
    #[default]
    Recompute,
    /// The behaviour log-probs μ recorded when the tokens were sampled (ROLL's default, without
    /// old-log-prob recompute): r then carries the samples' staleness under `[async]` and the
    /// rollout-vs-training mismatch, which tis, topr and cispo exist to correct.
    Behaviour,
}

/// How per-token terms x_t are reduced to a scalar (all denominators are full-batch, all-ranks quantities).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Aggregation {
    /// Σ_t x_t / N_tok, N_tok = response tokens in the whole batch (all-reduced over data-parallel ranks).
    TokenMean,
    /// (1/N_seq)·Σ_s (1/T_s)·Σ_{t∈s} x_t.
    #[default]
    SeqMeanTokenMean,
    /// (1/N_seq)·Σ_s Σ_{t∈s} x_t.
    SeqMeanTokenSum,
    /// Dr.GRPO: (1/N_seq)·Σ_s Σ_{t∈s} x_t / T_max (T_max = `t_max` key; a run's plan sets it to
    /// `rl.max_new_tokens` where the config does not; without either, the batch's longest response).
    ///
    /// verl/ROLL's `seq-mean-token-sum-norm` omit the 1/N_seq (Σ_s Σ_t x_t / T_max); that is this mode times
    /// N_seq, a constant learning-rate scale when the batch size is fixed. We follow the name and Dr.GRPO's code.
    SeqMeanTokenSumNorm,
}

/// Error from [`LossConfig::validate`]: the offending key (relative to the `[loss]` table) and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("key `{key}`: {msg}")]
pub struct LossConfigError {
    /// Key name inside the loss table, e.g. `eps_high`.
    pub key: &'static str,
    /// What is wrong and what would be right.
    pub msg: String,
}

/// Policy-loss configuration; every key optional with the documented default; unknown keys are rejected.
///
/// Total loss = agg(w·ℓ) + kl_coef·agg(KL) − entropy_coef·agg(H).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// Loss kind: "ppo" (default), "tis", "topr", "cispo", "decoupled_ppo".
    pub kind: LossKind,
    /// ε_low: lower clip r ≥ 1−ε_low. Default by kind: 0.2 (ppo, decoupled_ppo), 0.1 (cispo); unused by tis/topr.
    pub eps_low: Option<f32>,
    /// ε_high: upper clip r ≤ 1+ε_high. Default by kind: 0.28 (ppo, decoupled_ppo; clip-higher), 0.1 (cispo).
    pub eps_high: Option<f32>,
    /// Dual clip c for A < 0 (ppo, decoupled_ppo): ℓ = min(ℓ, −c·A). Default 3; 0 disables; otherwise must be > 1.
    pub dual_clip: f32,
    /// Decoupled-PPO importance weight cap: w = min(π_prox/μ, cap). Default 1.2.
    pub decoupled_cap: f32,
    /// Aggregation mode: "token-mean", "seq-mean-token-mean" (default), "seq-mean-token-sum",
    /// "seq-mean-token-sum-norm".
    pub agg: Aggregation,
    /// T_max for "seq-mean-token-sum-norm" (Dr.GRPO uses the generation budget); absent = longest response in the
    /// full batch (max over data-parallel ranks).
    pub t_max: Option<usize>,
    /// β_kl for the k3 KL to the frozen reference: KL_t = exp(k) − k − 1, k = logπ_ref − logπ. Default 0.001;
    /// 0 turns the term off (then no reference log-probs are needed).
    pub kl_coef: f32,
    /// KL_t is clamped to [−kl_clamp, kl_clamp] (zero gradient where clamped). Default 10.
    pub kl_clamp: f32,
    /// β_ent: entropy bonus, subtracted: −β_ent·agg(H). Default 0.
    pub entropy_coef: f32,
    /// π_old of the ratio: "recompute" (default) or "behaviour" (the sampler's log-probs μ; not
    /// read by decoupled_ppo, which takes both).
    pub old_logprobs: OldLogprobs,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            kind: LossKind::Ppo,
            eps_low: None,
            eps_high: None,
            dual_clip: 3.0,
            decoupled_cap: 1.2,
            agg: Aggregation::SeqMeanTokenMean,
            t_max: None,
            kl_coef: 0.001,
            kl_clamp: 10.0,
            entropy_coef: 0.0,
            old_logprobs: OldLogprobs::Recompute,
        }
    }
}

impl LossConfig {
    /// ε_low in effect: the configured value, else 0.1 for cispo and 0.2 for the others.
    pub fn eps_low(&self) -> f32 {
        self.eps_low.unwrap_or(if self.kind == LossKind::Cispo { 0.1 } else { 0.2 })
    }

    /// ε_high in effect: the configured value, else 0.1 for cispo and 0.28 (clip-higher) for the others.
    pub fn eps_high(&self) -> f32 {
        self.eps_high.unwrap_or(if self.kind == LossKind::Cispo { 0.1 } else { 0.28 })
    }

    /// Dual-clip constant c in effect: `None` when `dual_clip` is 0 (disabled).
    pub fn dual_clip_c(&self) -> Option<f32> {
        (self.dual_clip != 0.0).then_some(self.dual_clip)
    }

    /// Check ranges: 0 ≤ ε_low < 1, ε_high ≥ 0, dual_clip = 0 or > 1, cap > 0, t_max > 0, coefficients ≥ 0 and finite.
    pub fn validate(&self) -> Result<(), LossConfigError> {
        let bad = |key: &'static str, msg: String| Err(LossConfigError { key, msg });
        let el = self.eps_low();
        if !(0.0..1.0).contains(&el) {
            return bad("eps_low", format!("{el} must be in [0, 1)"));
        }
        let eh = self.eps_high();
        if !(eh.is_finite() && eh >= 0.0) {
            return bad("eps_high", format!("{eh} must be finite and ≥ 0"));
        }
        if !(self.dual_clip == 0.0 || (self.dual_clip.is_finite() && self.dual_clip > 1.0)) {
            return bad("dual_clip", format!("{} must be 0 (off) or a finite value > 1", self.dual_clip));
        }
        if !(self.decoupled_cap.is_finite() && self.decoupled_cap > 0.0) {
            return bad("decoupled_cap", format!("{} must be finite and > 0", self.decoupled_cap));
        }
        if self.t_max == Some(0) {
            return bad("t_max", "0 must be a positive token count".into());
        }
        if !(self.kl_clamp.is_finite() && self.kl_clamp > 0.0) {
            return bad("kl_clamp", format!("{} must be finite and > 0", self.kl_clamp));
        }
        for (key, v) in [("kl_coef", self.kl_coef), ("entropy_coef", self.entropy_coef)] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(key, format!("{v} must be finite and ≥ 0"));
            }
        }
        Ok(())
    }
}

/// Full-batch aggregation denominators. Gradient accumulation is exact when every micro-batch uses the
/// denominators of the whole (all-ranks) batch: each token's weight in [`Denominators::token_weight`] then does not
/// depend on how the batch is split, so the micro-batch gradients and losses sum to the full-batch ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Denominators {
    /// N_tok: response tokens in the batch (sum over data-parallel ranks).
    pub tokens: f64,
    /// N_seq: non-empty responses in the batch (sum over data-parallel ranks).
    pub seqs: f64,
    /// T_max for seq-mean-token-sum-norm: the configured `t_max`, else the longest response (max over ranks).
    pub t_max: f64,
}

impl Denominators {
    /// Denominators of the batch whose response s spans tokens `seq_starts[s]..seq_starts[s+1]`.
    pub fn new(cfg: &LossConfig, seq_starts: &[usize]) -> Self {
        let lens = seq_starts.windows(2).map(|w| w[1].saturating_sub(w[0]));
        let (mut tokens, mut seqs, mut longest) = (0usize, 0usize, 0usize);
        for len in lens {
            tokens += len;
            seqs += usize::from(len > 0);
            longest = longest.max(len);
        }
        Denominators { tokens: tokens as f64, seqs: seqs as f64, t_max: cfg.t_max.unwrap_or(longest) as f64 }
    }

    /// Combine two shards' denominators the way a data-parallel all-reduce does: tokens and seqs add, t_max is
    /// the max (a configured t_max is equal on every rank, so it is unchanged).
    pub fn combine(self, other: Denominators) -> Self {
        Denominators {
            tokens: self.tokens + other.tokens,
            seqs: self.seqs + other.seqs,
            t_max: self.t_max.max(other.t_max),
        }
    }

    /// Weight a_t of each token of a response of length `seq_len` so that agg(x) = Σ_t a_t·x_t:
    /// 1/N_tok (token-mean), 1/(N_seq·T_s), 1/N_seq, 1/(N_seq·T_max). Zero when the denominator is zero.
    pub fn token_weight(&self, agg: Aggregation, seq_len: usize) -> f64 {
        let denom = match agg {
            Aggregation::TokenMean => self.tokens,
            Aggregation::SeqMeanTokenMean => self.seqs * seq_len as f64,
            Aggregation::SeqMeanTokenSum => self.seqs,
            Aggregation::SeqMeanTokenSumNorm => self.seqs * self.t_max,
        };
        if denom > 0.0 {
            1.0 / denom
        } else {
            0.0
        }
    }
}
