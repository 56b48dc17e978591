//! LM head with fused log-softmax: log-probabilities of target tokens, entropy of the full
//! distribution, and the backward for a per-token weight, in row chunks (no [N, V] buffer).

use crate::tensor::cpu::simd::{self, simd_kernel};
use crate::tensor::cpu::{matmul_nn, matmul_nt, matmul_tn};
use rayon::prelude::*;

/// Per-row statistics of a logits chunk z: [rows, V]. Writes lse = log Σ exp z,
/// logp = z[target] − lse and entropy = lse − Σ softmax(z)·z.
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
    /// (max z, Σ e^(z−max), Σ e^(z−max)·z) of one row, with 8 independent lanes.
    fn row_moments(row: &[f32]) -> (f32, f32, f32) {
        let m = simd::max(row);
        let (mut s, mut sz) = ([0.0f32; 8], [0.0f32; 8]);
        let split = row.len() - row.len() % 8;
        for c in row[..split].chunks_exact(8) {
            for j in 0..8 {
                let e = simd::exp(c[j] - m);
                s[j] += e;
                sz[j] += e * c[j];
            }
        }
        let (mut ts, mut tsz) = (0.0f32, 0.0f32);
        for &x in &row[split..] {
            let e = simd::exp(x - m);
            ts += e;
            tsz += e * x;
        }
        (m, s.iter().sum::<f32>() + ts, sz.iter().sum::<f32>() + tsz)
    }
}

simd_kernel! {
    /// row ← −g · e^(row − lse) (the softmax part of dL/dz).
    fn scaled_softmax_row(row: &mut [f32], lse: f32, g: f32) -> () {
        for x in row.iter_mut() {
            *x = -g * simd::exp(*x - lse);
        }
    }
}

/// Turn a logits chunk into dL/dz in place, for dL/dlogp = g per row:
/// dz = g·(onehot(target) − softmax(z)).
pub fn logits_backward_inplace(z: &mut [f32], v: usize, targets: &[u32], lse: &[f32], g: &[f32]) {
    z.par_chunks_mut(v).zip(targets).zip(lse).zip(g).for_each(|(((row, &t), &l), &gi)| {
        if gi == 0.0 {
            row.iter_mut().for_each(|x| *x = 0.0);
            return;
        }
        scaled_softmax_row(row, l, gi);
        row[t as usize] += gi;
    });
}

/// Forward of the head over all rows of `h` ([N, C]) with weight w ([V, C]), chunked by
/// `logits.len() / V` rows.
#[allow(clippy::too_many_arguments)]
pub fn head_forward(
    logits: &mut [f32],
    h: &[f32],
    w: &[f32],
    targets: &[u32],
    c: usize,
    v: usize,
    lse: &mut [f32],
    logp: &mut [f32],
    entropy: &mut [f32],
) {
    let n = targets.len();
    let rows = (logits.len() / v).max(1);
    for r0 in (0..n).step_by(rows) {
        let r1 = (r0 + rows).min(n);
        let z = &mut logits[..(r1 - r0) * v];
        matmul_nt(z, &h[r0 * c..r1 * c], w, r1 - r0, v, c, false);
        logits_stats(z, v, &targets[r0..r1], &mut lse[r0..r1], &mut logp[r0..r1], &mut entropy[r0..r1]);
    }
}

/// Backward of the head: writes dh ([N, C]) and adds into dw ([V, C]), recomputing the logits
/// chunk by chunk, unless `cached` says the forward's single chunk still holds all N rows.
/// `g[i]` = dL/dlogp_i.
#[allow(clippy::too_many_arguments)]
pub fn head_backward(
    logits: &mut [f32],
    dh: &mut [f32],
    dw: &mut [f32],
    h: &[f32],
    w: &[f32],
    targets: &[u32],
    lse: &[f32],
    g: &[f32],
    c: usize,
    v: usize,
    cached: bool,
) {
    let n = targets.len();
    let rows = (logits.len() / v).max(1);
    for r0 in (0..n).step_by(rows) {
        let r1 = (r0 + rows).min(n);
        let m = r1 - r0;
        let z = &mut logits[..m * v];
        let hc = &h[r0 * c..r1 * c];
        if !(cached && m == n) {
            matmul_nt(z, hc, w, m, v, c, false);
        }
        logits_backward_inplace(z, v, &targets[r0..r1], &lse[r0..r1], &g[r0..r1]);
        matmul_nn(&mut dh[r0 * c..r1 * c], z, w, m, c, v, false);
        matmul_tn(dw, z, hc, v, c, m, true);
    }
}
