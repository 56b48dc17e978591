//! Generalised advantage estimation (Schulman et al.) for one response with a terminal reward,
//! and the AsyPPO pieces around it (ALGORITHMS.md §5–6): the disjoint split of a prompt's
//! responses over M critics, the aggregate value V̄ and the critics' spread σ, and the
//! uncertainty masks over a batch's tokens.

/// GAE of one response of T tokens with values `v` `[T]` (V(s_t), the value before token t) and
/// a single reward `reward` after the last token (V after the last token is 0):
/// δ_t = r_t + γ·V_{t+1} − V_t, A_t = Σ_l (γλ)^l δ_{t+l}; returns R_t = A_t + V_t are the critic's
/// targets. Writes `adv` and `ret` (each `[T]`).
pub fn gae(v: &[f32], reward: f32, gamma: f32, lambda: f32, adv: &mut [f32], ret: &mut [f32]) {
    let t_len = v.len();
    let mut next_adv = 0.0f64;
    for t in (0..t_len).rev() {
        let r = if t + 1 == t_len { reward as f64 } else { 0.0 };
        let next_v = if t + 1 < t_len { v[t + 1] as f64 } else { 0.0 };
        let delta = r + gamma as f64 * next_v - v[t] as f64;
        next_adv = delta + (gamma as f64) * (lambda as f64) * next_adv;
        adv[t] = next_adv as f32;
        ret[t] = (next_adv + v[t] as f64) as f32;
    }
}

/// The critic that trains on response `sample_index` of its prompt, of `critics`: index mod M, so
/// each prompt's responses are split into M disjoint subsets that together cover them all.
pub fn critic_of(sample_index: u32, critics: usize) -> usize {
    sample_index as usize % critics.max(1)
}

/// How the critics' values become V̄.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    Mean,
    Min,
}

/// V̄ and σ (population standard deviation across critics) of one token from each critic's value.
pub fn aggregate(values: &[f32], how: Aggregate) -> (f32, f32) {
    let m = values.len().max(1) as f64;
    let mean = values.iter().map(|&x| x as f64).sum::<f64>() / m;
    let var = values.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / m;
    let agg = match how {
        Aggregate::Mean => mean as f32,
        Aggregate::Min => values.iter().copied().fold(f32::INFINITY, f32::min),
    };
    (agg, var.sqrt() as f32)
}

/// The tokens with the lowest `low_frac` and the highest `high_frac` of `sigma`: at most ⌊frac·N⌋
/// tokens each, and tokens of equal σ alike. Where equal values straddle the boundary, none of
/// them is taken (a percentile does not split a tie, and a position in the batch says nothing of
/// the critics): fresh critics that all output 0 agree everywhere, and mask nothing rather than
/// the batch's first prompts. Returns (advantage masked, entropy excluded).
pub fn uncertainty_masks(sigma: &[f32], low_frac: f64, high_frac: f64) -> (Vec<bool>, Vec<bool>) {
    let n = sigma.len();
    let mut sorted = sigma.to_vec();
    sorted.sort_by(f32::total_cmp);
    let (k_low, k_high) =
        (((low_frac * n as f64).floor() as usize).min(n), ((high_frac * n as f64).floor() as usize).min(n));
    // below the first value left out of the lowest k_low; above the last left out of the highest
    let low = match k_low {
        0 => vec![false; n],
        k if k == n => vec![true; n],
        k => sigma.iter().map(|s| s.total_cmp(&sorted[k]).is_lt()).collect(),
    };
    let high = match k_high {
        0 => vec![false; n],
        k if k == n => vec![true; n],
        k => sigma.iter().map(|s| s.total_cmp(&sorted[n - 1 - k]).is_gt()).collect(),
    };
    (low, high)
}

/// Explained variance 1 − Var(R − V)/Var(R) of values `v` against targets `r` (0 when Var(R) = 0).
pub fn explained_variance(v: &[f32], r: &[f32]) -> f64 {
    let n = r.len().max(1) as f64;
    let mean = |x: &mut dyn Iterator<Item = f64>| x.sum::<f64>() / n;
    let mr = mean(&mut r.iter().map(|&x| x as f64));
    let var_r = mean(&mut r.iter().map(|&x| (x as f64 - mr).powi(2)));
    let md = mean(&mut r.iter().zip(v).map(|(&a, &b)| a as f64 - b as f64));
    let var_d = mean(&mut r.iter().zip(v).map(|(&a, &b)| (a as f64 - b as f64 - md).powi(2)));
    if var_r > 0.0 {
        1.0 - var_d / var_r
    } else {
        0.0
    }
}

/// Quantile q ∈ [0, 1] of `x` (nearest rank on the sorted values; 0 for an empty slice).
pub fn quantile(x: &[f32], q: f64) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    let mut s = x.to_vec();
    s.sort_by(f32::total_cmp);
    s[((q * (s.len() - 1) as f64).round() as usize).min(s.len() - 1)] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f64]) {
        for (x, y) in a.iter().zip(b) {
            assert!((*x as f64 - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn gae_with_lambda_1_is_the_reward_minus_the_value() {
        // γ = λ = 1: A_t = R − V_t, returns = R everywhere
        let v = [0.2f32, 0.5, -0.1];
        let (mut a, mut r) = ([0.0; 3], [0.0; 3]);
        gae(&v, 1.0, 1.0, 1.0, &mut a, &mut r);
        close(&a, &[0.8, 0.5, 1.1]);
        close(&r, &[1.0, 1.0, 1.0]);
    }

    #[test]
    fn gae_with_lambda_below_1_matches_a_hand_computation() {
        // V = [0.5, 0.25], R = 1, γ = 0.9, λ = 0.5:
        // δ1 = 1 − 0.25 = 0.75; δ0 = 0 + 0.9·0.25 − 0.5 = −0.275
        // A1 = 0.75; A0 = −0.275 + 0.45·0.75 = 0.0625; returns A + V = [0.5625, 1.0]
        let v = [0.5f32, 0.25];
        let (mut a, mut r) = ([0.0; 2], [0.0; 2]);
        gae(&v, 1.0, 0.9, 0.5, &mut a, &mut r);
        close(&a, &[0.0625, 0.75]);
        close(&r, &[0.5625, 1.0]);
        // λ = 0: one-step TD errors
        gae(&v, 1.0, 0.9, 0.0, &mut a, &mut r);
        close(&a, &[-0.275, 0.75]);
    }

    #[test]
    fn responses_split_into_disjoint_covering_subsets() {
        for m in 1..5 {
            for g in [1u32, 4, 7, 8] {
                let mut count = vec![0; m];
                for i in 0..g {
                    count[critic_of(i, m)] += 1;
                }
                assert_eq!(count.iter().sum::<u32>(), g, "every response has exactly one critic");
                let (lo, hi) = (count.iter().min().unwrap(), count.iter().max().unwrap());
                assert!(hi - lo <= 1, "balanced: {count:?}");
            }
        }
    }

    #[test]
    fn masks_take_at_most_their_fractions_and_treat_ties_alike() {
        let sigma = [0.3f32, 0.1, 0.1, 0.9, 0.5, 0.1, 0.7, 0.2, 0.9, 0.4];
        let (low, high) = uncertainty_masks(&sigma, 0.2, 0.2);
        // three tokens tie at 0.1 across the boundary of the lowest two: none is masked
        assert!(!low.contains(&true));
        // two tie at 0.9 and are the top two
        assert_eq!(high.iter().filter(|&&x| x).count(), 2);
        assert!(high[3] && high[8]);
        // the lowest 30 %: the three at 0.1; 40 %: and 0.2
        let (low, _) = uncertainty_masks(&sigma, 0.35, 0.0);
        assert_eq!(low, [false, true, true, false, false, true, false, false, false, false]);
        let (low, _) = uncertainty_masks(&sigma, 0.4, 0.0);
        assert_eq!(low, [false, true, true, false, false, true, false, true, false, false]);
        // fresh critics (σ = 0 everywhere): nothing masked, nothing excluded; all of them: all
        let (low, high) = uncertainty_masks(&[0.0; 10], 0.2, 0.2);
        assert!(!low.contains(&true) && !high.contains(&true));
        let (low, high) = uncertainty_masks(&[0.0; 10], 1.0, 1.0);
        assert!(!low.contains(&false) && !high.contains(&false));
        let (low, high) = uncertainty_masks(&sigma, 0.0, 0.35);
        assert!(!low.contains(&true));
        assert_eq!(high.iter().filter(|&&x| x).count(), 3);
        assert!(high[6], "0.7 is third highest");
    }

    #[test]
    fn aggregate_and_spread() {
        assert_eq!(aggregate(&[1.0, 3.0], Aggregate::Mean), (2.0, 1.0));
        assert_eq!(aggregate(&[1.0, 3.0], Aggregate::Min), (1.0, 1.0));
        assert!((explained_variance(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]) - 1.0).abs() < 1e-12);
        assert!(explained_variance(&[0.0, 0.0, 0.0], &[1.0, 2.0, 3.0]).abs() < 1e-12);
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), 2.0);
    }
}
