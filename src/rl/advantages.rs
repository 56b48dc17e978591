//! Outcome advantages from group rewards (ALGORITHMS.md §5): each prompt's G responses form a group g with
//! rewards R_1..R_G; the advantage is constant over a response's tokens ([`broadcast_to_tokens`]).
//!
//! - GRPO: A_i = (R_i − mean_g)/(std_g + 1e-6), std_g the **sample** standard deviation
//!   sqrt(Σ(R_j − mean_g)²/(G − 1)) — torch's default `std`, which verl and ROLL use.
//! - Dr.GRPO: A_i = R_i − mean_g (no std division).
//! - RLOO: A_i = R_i − (1/(G−1))·Σ_{j≠i} R_j = G/(G−1)·(R_i − mean_g).
//! - W-REINFORCE (Zhu et al. 2025, "The Surprising Effectiveness of Negative Reinforcement in LLM
//!   Reasoning"): no baseline; a rewarded response (R > 0) gets A = λ·R with λ = 0.1
//!   ([`W_REINFORCE_POSITIVE_WEIGHT`]), any other A = R − 1 (−1 for a wrong answer, less for a
//!   malformed one). Mostly negative reinforcement: wrong responses lose probability, which flows
//!   to the model's other candidates, so the policy keeps exploring; and a group whose responses are
//!   all wrong, which a baseline silences, still teaches. No group lacks signal (`zero_std` is false
//!   everywhere), so the zero-std filter keeps every group.
//!
//! A group of one response has no baseline: its advantage is 0 (and it counts as zero-std), except
//! under W-REINFORCE, which needs none.
//! Computation is in f64; results are stored as f32.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// GRPO's ε in (R − mean)/(std + ε).
pub const GRPO_STD_EPS: f64 = 1e-6;

/// W-REINFORCE's λ: the weight of positive reinforcement relative to negative (the paper's value).
pub const W_REINFORCE_POSITIVE_WEIGHT: f64 = 0.1;

/// Which group baseline/normalisation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdvantageKind {
    /// A = (R − mean_g)/(std_g + 1e-6), sample std.
    #[default]
    Grpo,
    /// A = R − mean_g.
    DrGrpo,
    /// A = R − mean of the group's other rewards.
    Rloo,
    /// No baseline: A = λ·R for R > 0, else R − 1 (λ = 0.1).
    WReinforce,
}

/// Per-sequence advantages plus, per group, whether its rewards have zero spread.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupAdvantages {
    /// A_s per response, in input order.
    pub advantages: Vec<f32>,
    /// `zero_std[g]`: every reward of group g is equal (std_g = 0), so its advantages are all 0 and it carries no
    /// learning signal; the optional zero-std filter drops these groups.
    pub zero_std: Vec<bool>,
}

impl GroupAdvantages {
    /// Fraction of groups with zero std (a logged metric); 0 for no groups.
    pub fn zero_std_fraction(&self) -> f64 {
        if self.zero_std.is_empty() {
            0.0
        } else {
            self.zero_std.iter().filter(|&&z| z).count() as f64 / self.zero_std.len() as f64
        }
    }
}

/// Offsets of `n_groups` consecutive groups of `group_size` responses: [0, G, 2G, …, n_groups·G].
pub fn uniform_group_starts(n_groups: usize, group_size: usize) -> Vec<usize> {
    (0..=n_groups).map(|g| g * group_size).collect()
}

/// Mean and sample standard deviation sqrt(Σ(x − mean)²/(n − 1)) (std 0 for n ≤ 1), in f64.
pub fn mean_sample_std(x: &[f32]) -> (f64, f64) {
    if x.is_empty() {
        return (0.0, 0.0);
    }
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    if x.len() == 1 {
        return (mean, 0.0);
    }
    let ss = x.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>();
    (mean, (ss / (n - 1.0)).sqrt())
}

/// Zero-std detection: group g (rewards `group_starts[g]..group_starts[g+1]`) has zero std iff all its rewards are
/// equal (exact comparison, so no rounding in the std can hide or fake it). Groups of 0 or 1 responses count as
/// zero-std.
pub fn zero_std_groups(rewards: &[f32], group_starts: &[usize]) -> Vec<bool> {
    group_starts.windows(2).map(|w| rewards[w[0]..w[1]].windows(2).all(|p| p[0] == p[1])).collect()
}

/// Advantages of `rewards` grouped by `group_starts` (offsets: group g is `group_starts[g]..group_starts[g+1]`,
/// from 0 to `rewards.len()`), per [`AdvantageKind`].
pub fn group_advantages(kind: AdvantageKind, rewards: &[f32], group_starts: &[usize]) -> Result<GroupAdvantages> {
    if group_starts.first() != Some(&0)
        || group_starts.last() != Some(&rewards.len())
        || group_starts.windows(2).any(|w| w[0] > w[1])
    {
        return Err(Error::shape(
            "group_starts",
            format!("must rise from 0 to the reward count {}, got {group_starts:?}", rewards.len()),
        ));
    }
    if kind == AdvantageKind::WReinforce {
        let advantages = rewards
            .iter()
            .map(|&r| {
                let r = f64::from(r);
                (if r > 0.0 { W_REINFORCE_POSITIVE_WEIGHT * r } else { r - 1.0 }) as f32
            })
            .collect();
        return Ok(GroupAdvantages { advantages, zero_std: vec![false; group_starts.len() - 1] });
    }
    let zero_std = zero_std_groups(rewards, group_starts);
    let mut advantages = vec![0.0f32; rewards.len()];
    for (g, w) in group_starts.windows(2).enumerate() {
        let group = &rewards[w[0]..w[1]];
        let n = group.len();
        if n < 2 || zero_std[g] {
            continue; // no baseline, or all rewards equal: every advantage is exactly 0
        }
        let (mean, std) = mean_sample_std(group);
        let out = &mut advantages[w[0]..w[1]];
        for (a, &r) in out.iter_mut().zip(group) {
            let centred = f64::from(r) - mean;
            *a = match kind {
                AdvantageKind::Grpo => centred / (std + GRPO_STD_EPS),
                AdvantageKind::DrGrpo => centred,
                AdvantageKind::Rloo => centred * n as f64 / (n as f64 - 1.0),
                AdvantageKind::WReinforce => unreachable!("handled above: no group baseline"),
            } as f32;
        }
    }
    Ok(GroupAdvantages { advantages, zero_std })
}

/// Broadcast per-sequence values to their tokens: `out[t] = seq_values[s]` for t in `seq_starts[s]..seq_starts[s+1]`.
///
/// # Panics
/// If `seq_starts` does not have `seq_values.len() + 1` entries or does not end at `out.len()`.
pub fn broadcast_to_tokens(seq_values: &[f32], seq_starts: &[usize], out: &mut [f32]) {
    assert_eq!(seq_starts.len(), seq_values.len() + 1, "seq_starts must have one entry more than seq_values");
    assert_eq!(seq_starts.last().copied(), Some(out.len()), "seq_starts must end at the token count");
    for (w, &v) in seq_starts.windows(2).zip(seq_values) {
        out[w[0]..w[1]].fill(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f32, b: f64) -> bool {
        (f64::from(a) - b).abs() <= 1e-6 * b.abs().max(1.0)
    }

    #[test]
    fn grpo_hand_values_use_sample_std() {
        // Group [1, 0, 0, 1]: mean 0.5, Σ(x−m)² = 1, sample std sqrt(1/3); population std would be 0.5.
        let adv = group_advantages(AdvantageKind::Grpo, &[1.0, 0.0, 0.0, 1.0], &[0, 4]).unwrap();
        let s = (1.0f64 / 3.0).sqrt();
        let want = [0.5 / (s + 1e-6), -0.5 / (s + 1e-6), -0.5 / (s + 1e-6), 0.5 / (s + 1e-6)];
        for (a, w) in adv.advantages.iter().zip(want) {
            assert!(close(*a, w), "{a} vs {w}");
        }
        assert!((f64::from(adv.advantages[0]) - 1.0).abs() > 0.1, "population std would give 0.5/0.5 ≈ 1");
        let (m, sd) = mean_sample_std(&[2.0, 4.0, 9.0]);
        assert!((m - 5.0).abs() < 1e-12 && (sd - 13.0f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn dr_grpo_and_rloo_hand_values() {
        let r = [1.0, 0.0, 0.0, 0.0, /* group 2 */ 3.0, 1.0];
        let gs = [0, 4, 6];
        let dr = group_advantages(AdvantageKind::DrGrpo, &r, &gs).unwrap();
        assert_eq!(dr.advantages, vec![0.75, -0.25, -0.25, -0.25, 1.0, -1.0]);
        let rloo = group_advantages(AdvantageKind::Rloo, &r, &gs).unwrap();
        // R_i − mean of the others: 1 − 0 = 1; 0 − 1/3; …; 3 − 1 = 2; 1 − 3 = −2.
        let want = [1.0, -1.0 / 3.0, -1.0 / 3.0, -1.0 / 3.0, 2.0, -2.0];
        for (a, w) in rloo.advantages.iter().zip(want) {
            assert!(close(*a, w), "{a} vs {w}");
        }
    }

    #[test]
    fn w_reinforce_weighs_positives_by_a_tenth_and_keeps_every_group() {
        // Groups: all correct, mixed, all wrong (with a malformed response at −0.5), a single response.
        let r = [1.0, 1.0, /* */ 1.0, 0.0, /* */ 0.0, -0.5, /* */ 0.0];
        let gs = [0, 2, 4, 6, 7];
        let adv = group_advantages(AdvantageKind::WReinforce, &r, &gs).unwrap();
        assert_eq!(adv.advantages, vec![0.1, 0.1, 0.1, -1.0, -1.0, -1.5, -1.0]);
        assert_eq!(adv.zero_std, vec![false; 4], "no group lacks signal without a baseline");
        assert_eq!(adv.zero_std_fraction(), 0.0);
        assert!(group_advantages(AdvantageKind::WReinforce, &[1.0, 2.0], &[0, 1]).is_err());
        let kind: AdvantageKind = serde_json::from_str("\"w-reinforce\"").unwrap();
        assert_eq!(kind, AdvantageKind::WReinforce);
    }

    #[test]
    fn zero_std_groups_are_detected_and_get_zero_advantage() {
        let r = [1.0, 1.0, 1.0, /* */ 0.0, 1.0, 0.0, /* */ 0.0, 0.0, 0.0, /* */ 0.7];
        let gs = [0, 3, 6, 9, 10];
        for kind in [AdvantageKind::Grpo, AdvantageKind::DrGrpo, AdvantageKind::Rloo] {
            let adv = group_advantages(kind, &r, &gs).unwrap();
            assert_eq!(adv.zero_std, vec![true, false, true, true]);
            assert!((adv.zero_std_fraction() - 0.75).abs() < 1e-12);
            assert_eq!(&adv.advantages[..3], &[0.0; 3]);
            assert_eq!(&adv.advantages[6..], &[0.0; 4]);
            assert!(adv.advantages[4] > 0.0 && adv.advantages[3] < 0.0);
        }
    }

    #[test]
    fn broadcast_and_bad_offsets() {
        let mut out = [0.0f32; 5];
        broadcast_to_tokens(&[2.0, -1.0, 7.0], &[0, 2, 2, 5], &mut out);
        assert_eq!(out, [2.0, 2.0, 7.0, 7.0, 7.0]);
        assert_eq!(uniform_group_starts(3, 4), vec![0, 4, 8, 12]);
        assert!(group_advantages(AdvantageKind::Grpo, &[1.0, 2.0], &[0, 1]).is_err());
        assert!(group_advantages(AdvantageKind::Grpo, &[1.0, 2.0], &[0, 2, 1, 2]).is_err());
    }

    proptest! {
        #[test]
        fn every_kind_centres_each_group(
            groups in prop::collection::vec(prop::collection::vec(-5.0f32..5.0, 1..9), 1..6),
        ) {
            let rewards: Vec<f32> = groups.iter().flatten().copied().collect();
            let mut gs = vec![0];
            for g in &groups { gs.push(gs.last().unwrap() + g.len()); }
            for kind in [AdvantageKind::Grpo, AdvantageKind::DrGrpo, AdvantageKind::Rloo] {
                let adv = group_advantages(kind, &rewards, &gs).unwrap();
                for w in gs.windows(2) {
                    let a = &adv.advantages[w[0]..w[1]];
                    let sum: f64 = a.iter().map(|&v| f64::from(v)).sum();
                    let scale: f64 = a.iter().map(|&v| f64::from(v).abs()).sum::<f64>().max(1.0);
                    prop_assert!(sum.abs() <= 1e-5 * scale, "{kind:?} group sum {sum}");
                }
                if kind == AdvantageKind::Grpo {
                    // Non-degenerate groups come out with sample std ≈ 1 (up to the 1e-6 in the denominator).
                    for (g, w) in gs.windows(2).enumerate() {
                        let (_, sd) = mean_sample_std(&rewards[w[0]..w[1]]);
                        if !adv.zero_std[g] && sd > 1e-3 {
                            let (_, asd) = mean_sample_std(&adv.advantages[w[0]..w[1]]);
                            prop_assert!((asd - 1.0).abs() < 1e-3, "std {asd}");
                        }
                    }
                }
            }
        }
    }
}
