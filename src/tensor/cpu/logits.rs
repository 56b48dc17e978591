//! Fused log-softmax over rows of logits on the CPU: log-sum-exp, log-probability of a target
//! and entropy per row, and the matching backward in place (the LM head runs these on row chunks,
//! never on an [N, V] buffer).

use crate::tensor::cpu::simd::{self, simd_kernel};
use rayon::prelude::*;

/// Per-row statistics of a logits chunk z: [rows, V]. Writes lse = log Σ exp z,
/// logp = `z[target]` − lse and entropy = lse − Σ softmax(z)·z.
pub fn logits_stats(z: &[f32], v: usize, targets: &[u32], lse: &mut [f32], logp: &mut [f32], entropy: &mut [f32]) {
    z.par_chunks(v).zip(targets).zip(lse).zip(logp).zip(entropy).for_each(|((((row, &t), l), lp), ent)| {
        let (m, sum, sz) = row_moments(row);
        let lse_v = m + sum.ln();
        *l = lse_v;
        *lp = row[t as usize] - lse_v;
        *ent = lse_v - sz / sum;
    });
}

simd_kernel! {
    /// (max z, Σ e^(z−max), Σ e^(z−max)·z) of one row, with 8 independent lanes. A −∞ logit
    /// adds nothing to the second sum (e^(z−max)·z would be 0·(−∞) = NaN), as on the GPU
    /// (cuda/logprob.cu).
    fn row_moments(row: &[f32]) -> (f32, f32, f32) {
        let m = simd::max(row);
        let (mut s, mut sz) = ([0.0f32; 8], [0.0f32; 8]);
        let split = row.len() - row.len() % 8;
        for c in row[..split].chunks_exact(8) {
            for j in 0..8 {
                let e = simd::exp(c[j] - m);
                s[j] += e;
                sz[j] += if c[j] == f32::NEG_INFINITY { 0.0 } else { e * c[j] };
            }
        }
        let (mut ts, mut tsz) = (0.0f32, 0.0f32);
        for &x in &row[split..] {
            let e = simd::exp(x - m);
            ts += e;
            tsz += if x == f32::NEG_INFINITY { 0.0 } else { e * x };
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
