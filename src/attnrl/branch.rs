//! Branch points of a response (ALGORITHMS.md §2): where the T continuations of a tree start.
//!
//! - ATB ([`atb_branch_points`]): candidates are the response steps k ≥ 1 with y_k ≥ θ, θ = the (1−ρ)-quantile of
//!   all the response's step scores (first step included in the quantile, linear interpolation, see
//!   [`quantile_linear`]); if θ = 0 and some score is positive, θ = the smallest positive score. Walking the
//!   candidates from the earliest, a step is chosen if it starts at least d tokens after the response start and
//!   is at least d tokens from every step chosen so far ([`DistanceRule`]), until N are chosen. Too few: the
//!   earliest remaining steps k ≥ 1 fill up to N without the distance rule. A response with fewer than N + 1
//!   steps yields fewer than N points (every step but the first). The branch point is the start token of the step.
//! - Entropy baseline ([`token_branch_points`]): tokens t ∈ [1, T−1) (not the first, whose prefix would be
//!   empty, nor the last, usually the stop token) in descending score order, ties to the earlier token, chosen
//!   under the same distance rule (a token is a one-token step); too few: fill with the best remaining tokens.
//!
//! Points come back sorted ascending, as token offsets into the response: prefix = prompt + response[..point].

use crate::attnrl::config::{AttnRlConfig, BranchBy, DistanceRule};
use crate::attnrl::steps::check_bounds;
use crate::{Error, Result};

/// The p-quantile of `values` with linear interpolation between order statistics (numpy's and torch's default,
/// Hyndman–Fan type 7): sort ascending into x_0..x_{n−1}, h = (n−1)·p, q = x_⌊h⌋ + (h − ⌊h⌋)·(x_⌈h⌉ − x_⌊h⌋).
/// h within 1e-9 of an integer counts as that integer. `None` for no values.
pub fn quantile_linear(values: &[f32], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut x: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
    x.sort_by(f64::total_cmp);
    let h = (x.len() - 1) as f64 * p.clamp(0.0, 1.0);
    // Snap h to an integer it misses by rounding only ((1 − 0.2)·5 = 4.000…01 would otherwise blend in x_5).
    let h = if (h - h.round()).abs() <= 1e-9 { h.round() } else { h };
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    Some(x[lo] + (h - lo as f64) * (x[hi] - x[lo]))
}

/// ATB threshold θ for a response's step scores: the (1−ρ)-quantile, or the smallest positive score when that
/// quantile is 0 and a positive score exists. `None` for no steps.
pub fn atb_threshold(step_scores: &[f32], rho: f64) -> Option<f64> {
    let q = quantile_linear(step_scores, 1.0 - rho)?;
    if q == 0.0 {
        let min_pos = step_scores.iter().map(|&v| f64::from(v)).filter(|&v| v > 0.0).fold(f64::INFINITY, f64::min);
        if min_pos.is_finite() {
            return Some(min_pos);
        }
    }
    Some(q)
}

/// ATB candidate steps: indices k ≥ 1 (response steps; 0 = the first response step, never a candidate) with
/// y_k ≥ [`atb_threshold`], ascending.
pub fn atb_candidates(step_scores: &[f32], rho: f64) -> Result<Vec<usize>> {
    check_finite(step_scores, "step score")?;
    let Some(theta) = atb_threshold(step_scores, rho) else { return Ok(Vec::new()) };
    Ok((1..step_scores.len()).filter(|&k| f64::from(step_scores[k]) >= theta).collect())
}

/// Branch points chosen for one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchChoice {
    /// Token offsets into the response where continuations start, ascending.
    pub points: Vec<usize>,
    /// For ATB: the response step index of each point (same order); for the token baseline: the token itself.
    pub units: Vec<usize>,
    /// How many of the points came from the fill (no candidate satisfied the rules for them).
    pub filled: usize,
}

/// ATB branch points of a response with response-relative step `bounds` [0, e_1, …, T] (strictly rising) and
/// per-step FCI `step_scores` y_k (one per response step; index 0 = the first response step, i.e. full-sequence
/// step 1). `n_points` = N, `min_distance` = d in tokens.
pub fn atb_branch_points(
    bounds: &[usize],
    step_scores: &[f32],
    rho: f64,
    n_points: usize,
    min_distance: usize,
    rule: DistanceRule,
) -> Result<BranchChoice> {
    let n_steps = bounds.len().saturating_sub(1);
    check_bounds(bounds, *bounds.last().unwrap_or(&0), "step bounds")?;
    if step_scores.len() != n_steps {
        return Err(Error::shape(
            "branch points",
            format!(
                "{} step scores for {n_steps} steps (bounds {bounds:?}); need one score per response step",
                step_scores.len()
            ),
        ));
    }
    let candidates = atb_candidates(step_scores, rho)?;
    let spans: Vec<(usize, usize)> = bounds.windows(2).map(|w| (w[0], w[1])).collect();
    let fill_order: Vec<usize> = (1..n_steps).collect();
    let (units, filled) = choose(&candidates, &fill_order, &spans, n_points, min_distance, rule);
    Ok(BranchChoice { points: units.iter().map(|&k| spans[k].0).collect(), units, filled })
}

/// Entropy / −log p baseline: branch points from per-token scores of a response (one per response token).
pub fn token_branch_points(
    token_scores: &[f32],
    n_points: usize,
    min_distance: usize,
    rule: DistanceRule,
) -> Result<BranchChoice> {
    check_finite(token_scores, "token score")?;
    let len = token_scores.len();
    let mut order: Vec<usize> = (1..len.saturating_sub(1)).collect();
    // Descending score; stable sort keeps ascending token order among equal scores.
    order.sort_by(|&a, &b| token_scores[b].total_cmp(&token_scores[a]));
    let spans: Vec<(usize, usize)> = (0..len).map(|t| (t, t + 1)).collect();
    let (units, filled) = choose(&order, &order, &spans, n_points, min_distance, rule);
    Ok(BranchChoice { points: units.clone(), units, filled })
}

/// Branch points of one response per `cfg` (N = `branch_points`, d = `min_branch_distance_tokens(max_response_len)`,
/// `distance_rule`): ATB over `bounds`/`step_scores` when `branch_by = "fci"`, else the token baseline over
/// `token_scores` (the caller passes entropies or −log p according to `branch_by`; unused inputs may be empty).
pub fn branch_points(
    cfg: &AttnRlConfig,
    max_response_len: usize,
    bounds: &[usize],
    step_scores: &[f32],
    token_scores: &[f32],
) -> Result<BranchChoice> {
    let d = cfg.min_branch_distance_tokens(max_response_len);
    match cfg.branch_by {
        BranchBy::Fci => atb_branch_points(bounds, step_scores, cfg.rho, cfg.branch_points, d, cfg.distance_rule),
        BranchBy::Entropy | BranchBy::NegLogprob => {
            token_branch_points(token_scores, cfg.branch_points, d, cfg.distance_rule)
        }
    }
}

/// Greedy choice: walk `candidates` in order, keep a unit whose span starts ≥ d and is ≥ d from every kept span;
/// then fill from `fill_order` (units not yet kept, no distance rule) up to `n`. Returns units sorted ascending
/// and the fill count.
fn choose(
    candidates: &[usize],
    fill_order: &[usize],
    spans: &[(usize, usize)],
    n: usize,
    d: usize,
    rule: DistanceRule,
) -> (Vec<usize>, usize) {
    let far_enough = |a: usize, b: usize| {
        let (first, second) = if spans[a].0 <= spans[b].0 { (spans[a], spans[b]) } else { (spans[b], spans[a]) };
        match rule {
            DistanceRule::StepGap => second.0.saturating_sub(first.1) >= d,
            DistanceRule::BranchPoint => second.0 - first.0 >= d,
        }
    };
    let mut kept: Vec<usize> = Vec::with_capacity(n);
    for &c in candidates {
        if kept.len() == n {
            break;
        }
        if spans[c].0 >= d && kept.iter().all(|&k| far_enough(k, c)) {
            kept.push(c);
        }
    }
    let from_rules = kept.len();
    for &c in fill_order {
        if kept.len() >= n {
            break;
        }
        if !kept.contains(&c) {
            kept.push(c);
        }
    }
    let filled = kept.len() - from_rules;
    kept.sort_unstable();
    (kept, filled)
}

fn check_finite(values: &[f32], what: &str) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(Error::Invalid(format!("{what} {i} is {}; scores must be finite", values[i]))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_linearly() {
        // Sorted [0, 1, 2, 3, 10]: h = 4·0.8 = 3.2 → 3 + 0.2·(10 − 3) = 4.4.
        assert!((quantile_linear(&[3.0, 0.0, 10.0, 1.0, 2.0], 0.8).unwrap() - 4.4).abs() < 1e-12);
        // Two values: h = 0.8 → 1 + 0.8·(5 − 1) = 4.2.
        assert!((quantile_linear(&[5.0, 1.0], 0.8).unwrap() - 4.2).abs() < 1e-12);
        assert_eq!(quantile_linear(&[7.0], 0.3), Some(7.0));
        assert_eq!(quantile_linear(&[], 0.5), None);
    }

    #[test]
    fn zero_quantile_falls_back_to_smallest_positive() {
        // Sorted [0, 0, 0, 0, 0, 0.5]: h = 5·0.8 = 4 → x_4 = 0 → θ = the smallest positive score 0.5.
        let y = [0.0, 0.0, 0.5, 0.0, 0.0, 0.0];
        assert_eq!(atb_threshold(&y, 0.2), Some(0.5));
        assert_eq!(atb_candidates(&y, 0.2).unwrap(), vec![2]);
        // Sorted [0, 0, 0, 0, 0.5]: h = 3.2 → 0 + 0.2·(0.5 − 0) = 0.1 > 0: no fallback.
        assert!((atb_threshold(&[0.0, 0.0, 0.5, 0.0, 0.0], 0.2).unwrap() - 0.1).abs() < 1e-12);
        // Smallest positive among several: sorted [0 ×9, 0.25, 0.75], h = 10·0.8 = 8 → x_8 = 0 → θ = 0.25.
        let y = [0.0, 0.75, 0.0, 0.0, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        assert_eq!(atb_threshold(&y, 0.2), Some(0.25));
        assert_eq!(atb_candidates(&y, 0.2).unwrap(), vec![1, 4]);
        // All zero: θ stays 0, every step but the first is a candidate.
        assert_eq!(atb_candidates(&[0.0; 4], 0.2).unwrap(), vec![1, 2, 3]);
        // The first step is never a candidate even with the top score.
        assert_eq!(atb_candidates(&[9.0, 1.0, 2.0, 3.0, 4.0, 5.0], 0.2).unwrap(), vec![5]);
        assert!(atb_candidates(&[1.0, f32::NAN], 0.2).is_err());
    }
}
