//! Fused log-softmax over rows of logits on the CPU: log-sum-exp, log-probability of a target
//! and entropy per row, and the matching backward in place (the LM head runs these on row chunks,
//! never on an [N, V] buffer).

use crate::tensor::cpu::simd::{self, simd_kernel};
use rayon::prelude::*;

/// Per-row statistics of a logits chunk z: [rows, V]. Writes lse = log Σ exp z,
/// logp = `z[target]` − lse and entropy = lse − Σ softmax(z)·z, computed with m = max z as
/// ln Σ e^(z−m) − Σ e^(z−m)·(z−m) / Σ e^(z−m): a sum of two non-negative terms, the same for z and
/// z + c (lse − Σ e^(z−m)·z / Σ e^(z−m) would cancel two terms of the size of m).
pub fn logits_stats(z: &[f32], v: usize, targets: &[u32], lse: &mut [f32], logp: &mut [f32], entropy: &mut [f32]) {
    z.par_chunks(v).zip(targets).zip(lse).zip(logp).zip(entropy).for_each(|((((row, &t), l), lp), ent)| {
        let (m, sum, sz) = row_moments(row);
        let ln_sum = sum.ln();
        let lse_v = m + ln_sum;
        *l = lse_v;
        *lp = row[t as usize] - lse_v;
        *ent = ln_sum - sz / sum;
    });
}

simd_kernel! {
    /// (max z, Σ e^(z−max), Σ e^(z−max)·(z−max)) of one row, with 8 independent lanes. A −∞
    /// logit adds nothing to the last sum (e^(z−max)·(z−max) would be 0·(−∞) = NaN), as on the
    /// GPU (cuda/logprob.cu).
    fn row_moments(row: &[f32]) -> (f32, f32, f32) {
        let m = simd::max(row);
        let (mut s, mut sz) = ([0.0f32; 8], [0.0f32; 8]);
        let split = row.len() - row.len() % 8;
        for c in row[..split].chunks_exact(8) {
            for j in 0..8 {
                let e = simd::exp(c[j] - m);
                s[j] += e;
                sz[j] += if c[j] == f32::NEG_INFINITY { 0.0 } else { e * (c[j] - m) };
            }
        }
        let (mut ts, mut tsz) = (0.0f32, 0.0f32);
        for &x in &row[split..] {
            let e = simd::exp(x - m);
            ts += e;
            tsz += if x == f32::NEG_INFINITY { 0.0 } else { e * (x - m) };
        }
        (m, s.iter().sum::<f32>() + ts, sz.iter().sum::<f32>() + tsz)
    }
}

simd_kernel! {
    /// row ← −p·(g + e·(log p + H)) with p = e^(row − lse): the softmax part of dL/dz for
    /// dL/dlogp = g and dL/dH = e (dH/dz_j = −p_j·(log p_j + H)).
    fn scaled_softmax_row(row: &mut [f32], lse: f32, g: f32, e: f32, h: f32) -> () {
        for x in row.iter_mut() {
            let logp = *x - lse;
            *x = -simd::exp(logp) * (g + e * (logp + h));
        }
    }
}

/// Turn a logits chunk into dL/dz in place, for dL/dlogp = g and (optionally) dL/dH = e per row,
/// H the row's entropy: dz = g·(onehot(target) − p) − e·p·(log p + H).
pub fn logits_backward_inplace(
    z: &mut [f32],
    v: usize,
    targets: &[u32],
    lse: &[f32],
    g: &[f32],
    ent: Option<(&[f32], &[f32])>,
) {
    z.par_chunks_mut(v).zip(targets).zip(lse).zip(g).enumerate().for_each(|(i, (((row, &t), &l), &gi))| {
        let (ei, hi) = ent.map_or((0.0, 0.0), |(e, h)| (e[i], h[i]));
        if gi == 0.0 && ei == 0.0 {
            row.iter_mut().for_each(|x| *x = 0.0);
            return;
        }
        scaled_softmax_row(row, l, gi, ei, hi);
        row[t as usize] += gi;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (lse, entropy) of one row in f64: the reference.
    fn exact(row: &[f32]) -> (f64, f64) {
        let m = row.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x as f64));
        let sum: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
        let lse = m + sum.ln();
        let h = -row.iter().filter(|x| x.is_finite()).map(|&x| (x as f64 - lse).exp() * (x as f64 - lse)).sum::<f64>();
        (lse, h)
    }

    fn entropy_of(row: &[f32]) -> f32 {
        let (mut l, mut lp, mut h) = ([0.0f32], [0.0f32], [0.0f32]);
        logits_stats(row, row.len(), &[0], &mut l, &mut lp, &mut h);
        h[0]
    }

    /// The entropy is shift-invariant (it does not subtract two sums of the size of the logits),
    /// and not negative for a near-deterministic row, at any offset of the logits.
    #[test]
    fn the_entropy_is_shift_invariant_and_not_negative() {
        let base = [0.0f32, -1.0, -2.0, -3.0];
        let h0 = entropy_of(&base);
        assert!((h0 as f64 - exact(&base).1).abs() < 1e-6, "{h0} vs {}", exact(&base).1);
        for shift in [1e2f32, 1e4, -1e4, 3e5] {
            let shifted = base.map(|x| x + shift);
            let h = entropy_of(&shifted);
            assert!((h - h0).abs() < 1e-5, "shift {shift}: {h} vs {h0}");
        }
        // 8 lanes and a tail (V = 11), a −∞ logit among them; multiples of 2^-10, so that
        // adding 1e4 (whose f32 ulp is 2^-10) keeps every difference exact
        let wide: Vec<f32> = (0..11)
            .map(|j| if j == 4 { f32::NEG_INFINITY } else { ((j as f32 * 0.7).sin() * 1024.0).round() / 1024.0 })
            .collect();
        let h_wide = entropy_of(&wide);
        assert!((h_wide as f64 - exact(&wide).1).abs() < 1e-6, "{h_wide} vs {}", exact(&wide).1);
        let h_wide_shifted = entropy_of(&wide.iter().map(|x| x + 1e4).collect::<Vec<_>>());
        assert!((h_wide_shifted - h_wide).abs() < 1e-5, "{h_wide_shifted} vs {h_wide}");
        for top in [10.0f32, 15.0, 16.0, 17.0, 18.0, 19.0, 20.0, 30.0, 100.0] {
            for shift in [0.0f32, 1e2, 1e4, -1e4] {
                let row = [top + shift, shift, shift, shift];
                let h = entropy_of(&row);
                let want = exact(&[top, 0.0, 0.0, 0.0]).1;
                assert!(h >= 0.0 && (h as f64 - want).abs() <= 1e-6 + 1e-5 * want, "{row:?}: {h} vs {want}");
            }
        }
    }
}
