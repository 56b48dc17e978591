//! `[attnrl]` and `[rhythm]` configuration: every key optional with the ALGORITHMS.md default (§1–3, §7); unknown
//! keys are rejected; [`AttnRlConfig::validate`] / [`RhythmConfig::validate`] name the offending key.

use serde::{Deserialize, Serialize};

/// Error from `validate`: the offending key (relative to its table) and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("key `{key}`: {msg}")]
pub struct AttnRlConfigError {
    /// Key name inside the table, e.g. `rho`.
    pub key: &'static str,
    /// What is wrong and what would be right.
    pub msg: String,
}

fn bad<T>(key: &'static str, msg: String) -> Result<T, AttnRlConfigError> {
    Err(AttnRlConfigError { key, msg })
}

/// What scores the branch points of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BranchBy {
    /// AttnRL ATB: steps with high forward context influence y_k (ALGORITHMS.md §2).
    #[default]
    Fci,
    /// TreeRL/EPTree baseline: the tokens with the highest entropy of the sampling distribution.
    Entropy,
    /// Baseline variant: the tokens with the highest −log p of the sampled token.
    NegLogprob,
}

/// How "at least `min_branch_distance` tokens from each other" is measured between two chosen steps a < b.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DistanceRule {
    /// Reference code: the tokens strictly between the steps, start(b) − end(a) ≥ d (a token counts as a
    /// one-token step for the entropy baseline, so t_b − t_a − 1 ≥ d).
    #[default]
    StepGap,
    /// Between the branch points themselves: start(b) − start(a) ≥ d.
    BranchPoint,
}

/// Trees per problem from the initial accuracy: ⌈n·e^(−acc)⌉ (reference code) or round(n·e^(−acc)) (paper).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TreeRounding {
    /// ⌈n·e^(−acc)⌉ (reference code).
    #[default]
    Ceil,
    /// round(n·e^(−acc)), halves away from zero (paper).
    Round,
}

/// AttnRL: steps, ATB branching, tree advantages, adaptive sampling and the dynamic batch (ALGORITHMS.md §1–3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttnRlConfig {
    /// Step separators in fallback order: a step ends just after a token whose text contains the first separator
    /// that occurs anywhere in the response; if none occurs, every token is a step. Default ["\n\n", "\n"]; use
    /// ["\n"] for short synthetic tasks.
    pub step_separators: Vec<String>,
    /// Δ of the FCI sum y_k = Σ_{j ≥ k+Δ} a_{j,k}, in steps. Default 4.
    pub fci_step_gap: usize,
    /// What scores branch points: "fci" (ATB, default), "entropy" or "neg_logprob" (TreeRL/EPTree baseline).
    pub branch_by: BranchBy,
    /// ρ: ATB candidates are steps with y_k ≥ the (1−ρ)-quantile of the response's step scores. Default 0.2.
    pub rho: f64,
    /// N: branch points per branched response. Default 2.
    pub branch_points: usize,
    /// T: continuations sampled from each branch point. Default 2.
    pub continuations: usize,
    /// n: initial responses per prompt. Default 6.
    pub initial_responses: usize,
    /// Minimum branch distance as a fraction of the maximum response length (reference: 512 of 8192). Default
    /// 0.0625.
    pub min_branch_distance_frac: f64,
    /// Minimum branch distance in tokens; overrides `min_branch_distance_frac` when set.
    pub min_branch_distance: Option<usize>,
    /// How the distance between two branch points is measured: "step-gap" (reference code, default) or
    /// "branch-point".
    pub distance_rule: DistanceRule,
    /// Trees per problem: "ceil" (⌈n·e^(−acc)⌉, reference code, default) or "round" (paper).
    pub tree_rounding: TreeRounding,
    /// Branch all-correct problems only when their question FCI beats the running mean. Default true.
    pub all_correct_fci_filter: bool,
    /// Drop questions whose training paths all have reward 0 or all 1. Default true.
    pub zero_advantage_filter: bool,
    /// Adapt the prompts per step: B_m = ⌈(1−λ)·⌊B_{m−1}·B′/B″⌋ + λ·B_{m−1}⌉. Default true.
    pub dynamic_batch: bool,
    /// λ of the dynamic batch. Default 0.9.
    pub dynamic_batch_lambda: f64,
    /// B′: target training sequences per step; absent = prompts_per_step·n·(1 + N·T) (reference: batch·n·5).
    pub target_train_sequences: Option<usize>,
    /// The ⌊B_{m−1}·B′/B″⌋ target is capped at ⌈factor·B_0⌉ prompts (also the target when B″ = 0). Default 4.
    pub dynamic_batch_max_factor: f64,
    /// One-step off-policy pipeline (ALGORITHMS.md §4): one generation call per step makes batch m's
    /// continuations and batch m + 1's initial responses. Default false.
    pub off_policy: bool,
}

impl Default for AttnRlConfig {
    fn default() -> Self {
        AttnRlConfig {
            step_separators: vec!["\n\n".into(), "\n".into()],
            fci_step_gap: 4,
            branch_by: BranchBy::Fci,
            rho: 0.2,
            branch_points: 2,
            continuations: 2,
            initial_responses: 6,
            min_branch_distance_frac: 0.0625,
            min_branch_distance: None,
            distance_rule: DistanceRule::StepGap,
            tree_rounding: TreeRounding::Ceil,
            all_correct_fci_filter: true,
            zero_advantage_filter: true,
            dynamic_batch: true,
            dynamic_batch_lambda: 0.9,
            target_train_sequences: None,
            dynamic_batch_max_factor: 4.0,
            off_policy: false,
        }
    }
}

impl AttnRlConfig {
    /// Minimum branch distance in tokens: `min_branch_distance`, else ⌊frac·max_response_len⌋.
    pub fn min_branch_distance_tokens(&self, max_response_len: usize) -> usize {
        self.min_branch_distance
            .unwrap_or_else(|| (self.min_branch_distance_frac * max_response_len as f64).floor() as usize)
    }

    /// B′: `target_train_sequences`, else prompts_per_step·n·(1 + N·T) (every problem gets n trees of 1 + N·T
    /// leaves; the reference's batch·n·5 for N = T = 2).
    pub fn target_sequences(&self, prompts_per_step: usize) -> usize {
        self.target_train_sequences.unwrap_or_else(|| {
            let leaves = 1 + self.branch_points.saturating_mul(self.continuations);
            prompts_per_step.saturating_mul(self.initial_responses).saturating_mul(leaves)
        })
    }

    /// Upper bound of the dynamic batch's target: ⌈max_factor·B_0⌉ (at least 1).
    pub fn dynamic_batch_max(&self, prompts_per_step: usize) -> usize {
        ((self.dynamic_batch_max_factor * prompts_per_step as f64).ceil() as usize).max(1)
    }

    /// Check ranges: separators non-empty strings, ρ ∈ (0, 1], N, T, n, Δ ≥ 1, fractions finite in [0, 1],
    /// λ ∈ [0, 1], max factor ≥ 1.
    pub fn validate(&self) -> Result<(), AttnRlConfigError> {
        if let Some(i) = self.step_separators.iter().position(|s| s.is_empty()) {
            return bad("step_separators", format!("entry {i} is empty; every separator needs at least one character"));
        }
        if !(self.rho.is_finite() && self.rho > 0.0 && self.rho <= 1.0) {
            return bad("rho", format!("{} must be in (0, 1]", self.rho));
        }
        for (key, v) in [
            ("fci_step_gap", self.fci_step_gap),
            ("branch_points", self.branch_points),
            ("continuations", self.continuations),
            ("initial_responses", self.initial_responses),
        ] {
            if v == 0 {
                return bad(key, "0 must be at least 1".into());
            }
        }
        if !(self.min_branch_distance_frac.is_finite() && (0.0..=1.0).contains(&self.min_branch_distance_frac)) {
            return bad("min_branch_distance_frac", format!("{} must be in [0, 1]", self.min_branch_distance_frac));
        }
        if !(self.dynamic_batch_lambda.is_finite() && (0.0..=1.0).contains(&self.dynamic_batch_lambda)) {
            return bad("dynamic_batch_lambda", format!("{} must be in [0, 1]", self.dynamic_batch_lambda));
        }
        if self.target_train_sequences == Some(0) {
            return bad("target_train_sequences", "0 must be a positive sequence count".into());
        }
        if !(self.dynamic_batch_max_factor.is_finite() && self.dynamic_batch_max_factor >= 1.0) {
            return bad(
                "dynamic_batch_max_factor",
                format!("{} must be finite and ≥ 1", self.dynamic_batch_max_factor),
            );
        }
        Ok(())
    }
}

/// Which tokens get the attention-rhythm amplification γ (ALGORITHMS.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RhythmScheme {
    /// γ = γ_amp on pre-plan tokens (top q by Δ_t = |WAAD_t − WAAD_{t+1}|).
    Local,
    /// γ = γ_amp on anchors (top q by FAI).
    Global,
    /// Anchors; locally dominated anchors share their amplification with their intro (pre-plan) token.
    #[default]
    Coupled,
}

/// `[rhythm]`: ROLL's attention-rhythm credit assignment (ALGORITHMS.md §7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RhythmConfig {
    /// "local", "global" or "coupled" (default).
    pub scheme: RhythmScheme,
    /// Fraction of heads (lowest mean look-back) averaged into Ā^loc. Default 0.3.
    pub local_head_frac: f64,
    /// Fraction of heads (highest mean look-back) averaged into Ā^glob. Default 0.3.
    pub global_head_frac: f64,
    /// Layers used, evenly spaced in [⌊L/3⌋, ⌊2L/3⌋]. Default 5.
    pub layers: usize,
    /// W: WAAD_t = Σ_{s≤t} Ā^loc_{t,s}·min(t − s, W). Default 10.
    pub waad_window: usize,
    /// FAI_s averages Ā^glob_{t,s} over t ∈ [s + min_offset, min(T, s + max_offset)]. Default 10.
    pub fai_min_offset: usize,
    /// See `fai_min_offset`. Default 100.
    pub fai_max_offset: usize,
    /// q of the pre-plan tokens: the top q fraction by Δ_t. Default 0.4.
    pub preplan_frac: f64,
    /// Fraction of tokens that are anchors: the top fraction by FAI. Default 0.4.
    pub anchor_frac: f64,
    /// γ_amp: the amplification of the local and global schemes. Default 1.5.
    pub gamma_amp: f64,
    /// α: share of a dominated anchor's amplification moved to its intro token. Default 0.4.
    pub alpha: f64,
    /// k: the intro token of anchor t is searched in [t−k, t−1]. Default 3.
    pub intro_window: usize,
    /// τ_waad: an anchor is locally dominated only if WAAD_t ≤ τ_waad. Absent = the batch median of WAAD.
    pub tau_waad: Option<f64>,
    /// τ_Δ: … and max Δ over its intro window ≥ τ_Δ. Absent = the batch median of Δ.
    pub tau_delta: Option<f64>,
}

impl Default for RhythmConfig {
    fn default() -> Self {
        RhythmConfig {
            scheme: RhythmScheme::Coupled,
            local_head_frac: 0.3,
            global_head_frac: 0.3,
            layers: 5,
            waad_window: 10,
            fai_min_offset: 10,
            fai_max_offset: 100,
            preplan_frac: 0.4,
            anchor_frac: 0.4,
            gamma_amp: 1.5,
            alpha: 0.4,
            intro_window: 3,
            tau_waad: None,
            tau_delta: None,
        }
    }
}

impl RhythmConfig {
    /// Check ranges: head fractions in (0, 1] (each selects at least one head) summing to ≤ 1,
    /// other fractions in [0, 1], layers, W ≥ 1, offsets ordered, γ_amp ≥ 1, α ∈ [0, 1], 1 ≤ k ≤ 3,
    /// τ's finite.
    pub fn validate(&self) -> Result<(), AttnRlConfigError> {
        for (key, v) in [("local_head_frac", self.local_head_frac), ("global_head_frac", self.global_head_frac)] {
            if !(v.is_finite() && v > 0.0 && v <= 1.0) {
                return bad(key, format!("{v} must be in (0, 1]: the heads of that kind are at least one"));
            }
        }
        for (key, v) in [("preplan_frac", self.preplan_frac), ("anchor_frac", self.anchor_frac), ("alpha", self.alpha)]
        {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return bad(key, format!("{v} must be in [0, 1]"));
            }
        }
        if self.local_head_frac + self.global_head_frac > 1.0 {
            return bad(
                "global_head_frac",
                format!("local {} + global {} must not exceed 1", self.local_head_frac, self.global_head_frac),
            );
        }
        for (key, v) in [("layers", self.layers), ("waad_window", self.waad_window)] {
            if v == 0 {
                return bad(key, "0 must be at least 1".into());
            }
        }
        if self.fai_max_offset < self.fai_min_offset {
            return bad(
                "fai_max_offset",
                format!("{} must be ≥ fai_min_offset {}", self.fai_max_offset, self.fai_min_offset),
            );
        }
        if !(self.gamma_amp.is_finite() && self.gamma_amp >= 1.0) {
            return bad("gamma_amp", format!("{} must be finite and ≥ 1", self.gamma_amp));
        }
        if !(1..=3).contains(&self.intro_window) {
            return bad("intro_window", format!("{} must be in 1..=3", self.intro_window));
        }
        for (key, v) in [("tau_waad", self.tau_waad), ("tau_delta", self.tau_delta)] {
            if let Some(v) = v {
                if !v.is_finite() {
                    return bad(key, format!("{v} must be finite"));
                }
            }
        }
        Ok(())
    }
}
