//! Attention-rhythm credit (ROLL, ALGORITHMS.md §7): per-token amplification γ_t from the local (WAAD) and global
//! (FAI) attention statistics of one response, and the shaped advantage Ã_t = γ_t·A_t (both signs; the caller
//! treats Ã as detached, like every advantage).
//!
//! Precise rules (T = response tokens, t = 0..T−1):
//! - Δ_t = |WAAD_t − WAAD_{t+1}| for t ≤ T−2; the last token has no Δ and is never a pre-plan token.
//! - "Top q" of m scores = the k = ⌈q·m⌉ highest (q·m within 1e-9 of an integer counts as that integer), ties
//!   broken towards the earlier token. Pre-plan tokens: top `preplan_frac` of the T−1 values Δ_t. Anchors: top
//!   `anchor_frac` of the T values FAI_t.
//! - Coupled scheme: anchor t is locally dominated (t ∈ D) iff WAAD_t ≤ τ_waad and max Δ_u over the window
//!   u ∈ [max(0, t−k), t−1] is ≥ τ_Δ (an empty window, t = 0, never dominates). Its intro token is the window's
//!   Δ-peak (ties → the earliest u). With β = γ_amp − 1:
//!   γ_t = 1 + β·[t ∈ anchors∖D] + (1−α)·β·[t ∈ D] + α·β·[t is the intro of some t' ∈ D]
//!   (terms add when a token is both; the intro term counts once however many anchors share it).
//!   Defaults β = 0.5, α = 0.4: ×1.5 on plain anchors, ×1.3 on dominated anchors, ×1.2 on their intro tokens.
//! - Local scheme: γ_t = 1 + β·[t pre-plan]. Global scheme: γ_t = 1 + β·[t anchor].
//! - τ's default to batch medians ([`batch_thresholds`]): the median of every WAAD_t, and of every Δ_t, over the
//!   batch's responses (even counts: the mean of the two middle values).

use crate::attnrl::config::{RhythmConfig, RhythmScheme};
use crate::{Error, Result};

/// k = ⌈frac·m⌉ (a product within 1e-9 of an integer counts as that integer), clamped to [0, m].
pub fn top_count(m: usize, frac: f64) -> usize {
    let x = frac * m as f64;
    let r = x.round();
    let k = if (x - r).abs() <= 1e-9 * r.abs().max(1.0) { r } else { x.ceil() };
    (k.max(0.0) as usize).min(m)
}

/// Mask of the top ⌈frac·m⌉ of `scores` (descending; ties → lower index first).
pub fn top_fraction_mask(scores: &[f32], frac: f64) -> Vec<bool> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a])); // stable: equal scores keep index order
    let mut mask = vec![false; scores.len()];
    for &i in &order[..top_count(scores.len(), frac)] {
        mask[i] = true;
    }
    mask
}

/// Δ_t = |WAAD_t − WAAD_{t+1}|, t = 0..T−2 (T−1 values; none for T ≤ 1).
pub fn waad_deltas(waad: &[f32]) -> Vec<f32> {
    waad.windows(2).map(|w| (w[0] - w[1]).abs()).collect()
}

/// Pre-plan mask over the T tokens: top `frac` of Δ_t; the last token is never pre-plan.
pub fn preplan_mask(waad: &[f32], frac: f64) -> Result<Vec<bool>> {
    check_finite(waad, "WAAD")?;
    let mut mask = top_fraction_mask(&waad_deltas(waad), frac);
    if !waad.is_empty() {
        mask.push(false);
    }
    Ok(mask)
}

/// Anchor mask: top `frac` of FAI_t.
pub fn anchor_mask(fai: &[f32], frac: f64) -> Result<Vec<bool>> {
    check_finite(fai, "FAI")?;
    Ok(top_fraction_mask(fai, frac))
}

/// Median (mean of the two middle values for an even count); `None` for no values.
pub fn median(values: &[f32]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut x: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
    x.sort_by(f64::total_cmp);
    let m = x.len() / 2;
    Some(if x.len() % 2 == 1 { x[m] } else { 0.5 * (x[m - 1] + x[m]) })
}

/// τ's of the coupled scheme.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RhythmThresholds {
    /// τ_waad: a dominated anchor has WAAD_t ≤ τ_waad.
    pub tau_waad: f64,
    /// τ_Δ: … and a Δ ≥ τ_Δ in its intro window.
    pub tau_delta: f64,
}

/// τ's for a batch: the configured values, else the medians of every WAAD_t and every Δ_t over the batch's
/// responses (`waads[i]` = WAAD of response i). With no values to take a median of, τ_waad = −∞ / τ_Δ = +∞,
/// so nothing is dominated.
pub fn batch_thresholds(waads: &[&[f32]], cfg: &RhythmConfig) -> Result<RhythmThresholds> {
    for (i, w) in waads.iter().enumerate() {
        check_finite(w, &format!("response {i}: WAAD"))?;
    }
    let tau_waad = match cfg.tau_waad {
        Some(v) => v,
        None => {
            let all: Vec<f32> = waads.iter().flat_map(|w| w.iter().copied()).collect();
            median(&all).unwrap_or(f64::NEG_INFINITY)
        }
    };
    let tau_delta = match cfg.tau_delta {
        Some(v) => v,
        None => {
            let all: Vec<f32> = waads.iter().flat_map(|w| waad_deltas(w)).collect();
            median(&all).unwrap_or(f64::INFINITY)
        }
    };
    Ok(RhythmThresholds { tau_waad, tau_delta })
}

/// Per-token marks and γ of one response.
#[derive(Debug, Clone, PartialEq)]
pub struct RhythmMarks {
    /// Pre-plan tokens (top `preplan_frac` by Δ).
    pub preplan: Vec<bool>,
    /// Anchors (top `anchor_frac` by FAI).
    pub anchors: Vec<bool>,
    /// Locally dominated anchors D (coupled scheme; all false otherwise).
    pub dominated: Vec<bool>,
    /// Intro tokens of dominated anchors (coupled scheme; all false otherwise).
    pub intro: Vec<bool>,
    /// γ_t.
    pub gamma: Vec<f32>,
}

/// Marks and γ_t of a response from its WAAD_t and FAI_t (one per response token) under `cfg.scheme`;
/// `thresholds` are used by the coupled scheme only.
pub fn rhythm_marks(
    waad: &[f32],
    fai: &[f32],
    cfg: &RhythmConfig,
    thresholds: RhythmThresholds,
) -> Result<RhythmMarks> {
    if waad.len() != fai.len() {
        return Err(Error::shape(
            "rhythm marks",
            format!("WAAD has {} tokens but FAI has {}; both need one value per response token", waad.len(), fai.len()),
        ));
    }
    let t_len = waad.len();
    let preplan = preplan_mask(waad, cfg.preplan_frac)?;
    let anchors = anchor_mask(fai, cfg.anchor_frac)?;
    let beta = cfg.gamma_amp - 1.0;
    let mut dominated = vec![false; t_len];
    let mut intro = vec![false; t_len];
    let gamma: Vec<f64> = match cfg.scheme {
        RhythmScheme::Local => preplan.iter().map(|&p| 1.0 + if p { beta } else { 0.0 }).collect(),
        RhythmScheme::Global => anchors.iter().map(|&a| 1.0 + if a { beta } else { 0.0 }).collect(),
        RhythmScheme::Coupled => {
            let delta = waad_deltas(waad);
            for t in (0..t_len).filter(|&t| anchors[t]) {
                let lo = t.saturating_sub(cfg.intro_window);
                // Window u ∈ [lo, t−1]; Δ-peak with ties to the earliest u.
                let peak = (lo..t).fold(None, |best: Option<usize>, u| match best {
                    Some(b) if delta[b] >= delta[u] => Some(b),
                    _ => Some(u),
                });
                if let Some(u) = peak {
                    if f64::from(waad[t]) <= thresholds.tau_waad && f64::from(delta[u]) >= thresholds.tau_delta {
                        dominated[t] = true;
                        intro[u] = true;
                    }
                }
            }
            (0..t_len)
                .map(|t| {
                    let mut g = 1.0;
                    if anchors[t] && !dominated[t] {
                        g += beta;
                    }
                    if dominated[t] {
                        g += (1.0 - cfg.alpha) * beta;
                    }
                    if intro[t] {
                        g += cfg.alpha * beta;
                    }
                    g
                })
                .collect()
        }
    };
    Ok(RhythmMarks { preplan, anchors, dominated, intro, gamma: gamma.into_iter().map(|g| g as f32).collect() })
}

/// Ã_t = γ_t·A_t.
pub fn shape_advantages(gamma: &[f32], advantages: &[f32]) -> Result<Vec<f32>> {
    if gamma.len() != advantages.len() {
        return Err(Error::shape(
            "rhythm advantages",
            format!("{} γ values for {} advantages; need one per response token", gamma.len(), advantages.len()),
        ));
    }
    Ok(gamma.iter().zip(advantages).map(|(g, a)| g * a).collect())
}

fn check_finite(values: &[f32], what: &str) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(Error::Invalid(format!("{what} of token {i} is {}; it must be finite", values[i]))),
        None => Ok(()),
    }
}
