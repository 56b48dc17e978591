//! Adaptive sampling (ALGORITHMS.md §3): how many trees a problem gets, which initial responses are branched, the
//! all-correct FCI filter, the zero-advantage filter and the dynamic batch size.
//!
//! acc = c/n, c = correct initial responses out of n. Every random choice draws from
//! `Rng::derive(seed, &[step, prompt_id, BRANCH_STREAM])`, so it does not depend on batch layout.

use serde::{Deserialize, Serialize};

use crate::attnrl::config::TreeRounding;
use crate::rng::Rng;
use crate::{Error, Result};

/// Coordinate tag of the random stream that picks which responses to branch.
pub const BRANCH_STREAM: u64 = 0x4154_4e52_4252_4e43; // "ATNRBRNC"

/// Trees for a problem with `n_correct` of `n` initial responses correct: ⌈n·e^(−acc)⌉ (code) or
/// round(n·e^(−acc)) (paper, halves away from zero), acc = n_correct/n, clamped to [0, n]. 0 for n = 0.
pub fn trees_per_problem(n: usize, n_correct: usize, rounding: TreeRounding) -> usize {
    if n == 0 {
        return 0;
    }
    let acc = n_correct.min(n) as f64 / n as f64;
    let x = n as f64 * (-acc).exp();
    let k = match rounding {
        TreeRounding::Ceil => x.ceil(),
        TreeRounding::Round => x.round(),
    };
    (k.max(0.0) as usize).min(n)
}

/// Indices (ascending) of the initial responses to branch, from their correctness:
///
/// - acc = 0: all;
/// - 0 < acc < 0.5: all correct + (trees − c) incorrect drawn uniformly without replacement;
/// - 0.5 ≤ acc < 1: all incorrect + (trees − (n − c)) correct drawn likewise;
/// - acc = 1: the first `trees` responses (3 for n = 6 under "ceil") if `all_correct_kept` (the problem passed
///   the FCI filter), else none.
///
/// trees = [`trees_per_problem`]; the draw uses `Rng::derive(seed, &[step, prompt_id, BRANCH_STREAM])`.
pub fn responses_to_branch(
    correct: &[bool],
    rounding: TreeRounding,
    all_correct_kept: bool,
    seed: u64,
    step: u64,
    prompt_id: u64,
) -> Vec<usize> {
    let n = correct.len();
    let c = correct.iter().filter(|&&x| x).count();
    let trees = trees_per_problem(n, c, rounding);
    if c == 0 {
        return (0..n).collect();
    }
    if c == n {
        return if all_correct_kept { (0..trees).collect() } else { Vec::new() };
    }
    // acc < 0.5 ⇔ 2c < n: every correct response is branched and incorrect ones are drawn; otherwise every
    // incorrect one is branched and correct ones are drawn.
    let (forced_class, drawn_class) = if 2 * c < n { (true, false) } else { (false, true) };
    let mut out: Vec<usize> = (0..n).filter(|&i| correct[i] == forced_class).collect();
    let mut pool: Vec<usize> = (0..n).filter(|&i| correct[i] == drawn_class).collect();
    let k = trees.saturating_sub(out.len()).min(pool.len());
    let mut rng = Rng::derive(seed, &[step, prompt_id, BRANCH_STREAM]);
    // Partial Fisher–Yates: the first k entries of `pool` become a uniform k-subset.
    for i in 0..k {
        let j = i + rng.below((pool.len() - i) as u64) as usize;
        pool.swap(i, j);
    }
    out.extend_from_slice(&pool[..k]);
    out.sort_unstable();
    out
}

/// Question FCI: the mean over its responses of (mean y over the response's steps, as given — the first response
/// step's zero included). A response with no steps counts as 0.
pub fn question_fci(step_scores: &[&[f32]]) -> Result<f64> {
    if step_scores.is_empty() {
        return Err(Error::shape("question FCI", "a question with no responses"));
    }
    let mut total = 0.0f64;
    for (i, s) in step_scores.iter().enumerate() {
        if let Some(v) = s.iter().find(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!("response {i}: step score {v} must be finite")));
        }
        if !s.is_empty() {
            total += s.iter().map(|&v| f64::from(v)).sum::<f64>() / s.len() as f64;
        }
    }
    Ok(total / step_scores.len() as f64)
}

/// The all-correct filter's running mean: the count-weighted mean FCI of every all-correct problem seen so far.
/// Serialisable so that a resumed run keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct AllCorrectFciFilter {
    /// Mean FCI of the all-correct problems seen (0 while `count` is 0).
    pub mean: f64,
    /// How many all-correct problems have been seen.
    pub count: u64,
}

impl AllCorrectFciFilter {
    /// Fold in the question FCIs of this batch's all-correct problems, then return, per problem, whether it is
    /// kept: FCI > the updated running mean (strictly). An empty batch changes nothing.
    pub fn update_and_filter(&mut self, fcis: &[f64]) -> Result<Vec<bool>> {
        if let Some(v) = fcis.iter().find(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!("question FCI {v} must be finite")));
        }
        if !fcis.is_empty() {
            let total = self.count + fcis.len() as u64;
            let batch_sum: f64 = fcis.iter().sum();
            self.mean = (self.mean * self.count as f64 + batch_sum) / total as f64;
            self.count = total;
        }
        Ok(fcis.iter().map(|&f| f > self.mean).collect())
    }
}

/// Zero-advantage filter: keep a question unless the rewards of all its training paths (the leaves of its
/// branched trees) are equal: all 0 or all 1 with rewards in {0, 1}, also all −p with a format penalty
/// (every node value then equals the root's, so every advantage is 0). A question with no training
/// paths is dropped.
pub fn keep_nonzero_advantage(training_rewards: &[f32]) -> bool {
    training_rewards.first().is_some_and(|&r0| training_rewards.iter().any(|&r| r != r0))
}

/// Dynamic batch: B_m = ⌈(1−λ)·min(⌊B_{m−1}·B′/B″⌋, max) + λ·B_{m−1}⌉, at least 1; B′ = `target_seqs`, B″ =
/// `kept_seqs` (sequences left after filtering at the previous step), λ = `lambda` (0.9), `max` = cap on the
/// target (B″ = 0 makes the target `max`). The floor is exact integer arithmetic; the ceiling ignores a
/// relative excess below 1e-9 (so 0.1·x + 0.9·y landing a rounding error above an integer does not add one).
pub fn next_batch_size(prev: usize, target_seqs: usize, kept_seqs: usize, lambda: f64, max: usize) -> usize {
    let target = if kept_seqs == 0 {
        max
    } else {
        let t = (prev as u128 * target_seqs as u128) / kept_seqs as u128;
        t.min(max as u128) as usize
    };
    let x = (1.0 - lambda) * target as f64 + lambda * prev as f64;
    let rounded = x.round();
    let b = if (x - rounded).abs() <= 1e-9 * rounded.abs().max(1.0) { rounded } else { x.ceil() };
    (b as usize).max(1)
}

/// The dynamic batch's state, serialisable for checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DynamicBatch {
    /// B_m: prompts for the next step.
    pub prompts: usize,
}

impl DynamicBatch {
    /// Start at B_0 prompts per step.
    pub fn new(initial_prompts: usize) -> Self {
        DynamicBatch { prompts: initial_prompts.max(1) }
    }

    /// Advance with the previous step's counts (see [`next_batch_size`]); returns the new B_m.
    pub fn update(&mut self, target_seqs: usize, kept_seqs: usize, lambda: f64, max: usize) -> usize {
        self.prompts = next_batch_size(self.prompts, target_seqs, kept_seqs, lambda, max);
        self.prompts
    }
}
