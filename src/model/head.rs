//! LM head with fused log-softmax: log-probabilities of target tokens, entropy of the full
//! distribution, and the backward for a per-token weight, in row chunks (no [N, V] buffer).

use crate::tensor::cpu::{matmul_nn, matmul_nt, matmul_tn};
use rayon::prelude::*;

/// Per-row statistics of a logits chunk z: [rows, V]. Writes lse = log Σ exp z,
/// logp = z[target] − lse and entropy = lse − Σ softmax(z)·z.
pub fn logits_stats(z: &[f32], v: usize, targets: &[u32], lse: &mut [f32], logp: &mut [f32], entropy: &mut [f32]) {
    z.par_chunks(v).zip(targets).zip(lse).zip(logp).zip(entropy).for_each(|((((row, &t), l), lp), ent)| {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let (mut sum, mut sz) = (0.0f32, 0.0f32);
        for &x in row {
            let e = (x - m).exp();
            sum += e;
            sz += e * x;
        }
        let lse_v = m + sum.ln();
        *l = lse_v;
        *lp = row[t as usize] - lse_v;
        *ent = lse_v - sz / sum;
    });
}

/// Turn a logits chunk into dL/dz in place, for dL/dlogp = g per row:
/// dz = g·(onehot(target) − softmax(z)).
pub fn logits_backward_inplace(z: &mut [f32], v: usize, targets: &[u32], lse: &[f32], g: &[f32]) {
    z.par_chunks_mut(v).zip(targets).zip(lse).zip(g).for_each(|(((row, &t), &l), &gi)| {
        if gi == 0.0 {
            row.iter_mut().for_each(|x| *x = 0.0);
            return;
        }
        for x in row.iter_mut() {
            *x = -gi * (*x - l).exp();
        }
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
/// chunk by chunk. `g[i]` = dL/dlogp_i.
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
) {
    let n = targets.len();
    let rows = (logits.len() / v).max(1);
    for r0 in (0..n).step_by(rows) {
        let r1 = (r0 + rows).min(n);
        let m = r1 - r0;
        let z = &mut logits[..m * v];
        let hc = &h[r0 * c..r1 * c];
        matmul_nt(z, hc, w, m, v, c, false);
        logits_backward_inplace(z, v, &targets[r0..r1], &lse[r0..r1], &g[r0..r1]);
        matmul_nn(&mut dh[r0 * c..r1 * c], z, w, m, c, v, false);
        matmul_tn(dw, z, hc, v, c, m, true);
    }
}
