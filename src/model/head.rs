//! LM head with fused log-softmax: log-probabilities of target tokens, entropy of the full
//! distribution, and the backward for a per-token weight, in row chunks (no [N, V] buffer).

use crate::error::Result;
use crate::tensor::backend::Backend;
use crate::tensor::cpu::simd::{self, simd_kernel};
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

/// Forward of the head over all N rows of `h` ([N, C]) with weight w ([V, C]), in chunks of
/// `rows` rows through `logits` ([rows, V]).
#[allow(clippy::too_many_arguments)]
pub fn head_forward<B: Backend>(
    be: &B,
    logits: &mut B::Buf,
    rows: usize,
    h: &B::Buf,
    w: B::R<'_>,
    batch: &B::Batch<'_>,
    (n, c, v): (usize, usize, usize),
    (lse, logp, entropy): (&mut B::Buf, &mut B::Buf, &mut B::Buf),
) -> Result<()> {
    let rows = rows.max(1);
    for r0 in (0..n).step_by(rows) {
        let r1 = (r0 + rows).min(n);
        let wv = B::sub_r(&w, 0..v * c);
        be.matmul_nt(B::m(logits, 0..(r1 - r0) * v), B::r(h, r0 * c..r1 * c), wv, r1 - r0, v, c, false)?;
        be.logprob_forward(
            B::r(logits, 0..(r1 - r0) * v),
            v,
            batch,
            r0..r1,
            B::m(lse, r0..r1),
            B::m(logp, r0..r1),
            B::m(entropy, r0..r1),
        )?;
    }
    Ok(())
}

/// Backward of the head: writes dh ([N, C]) and adds into dw ([V, C]), recomputing the logits
/// chunk by chunk, unless `cached` says the forward's single chunk still holds all N rows.
/// `g` = dL/dlogp per row; `ent` = (dL/dH, H) per row when the loss has an entropy term.
#[allow(clippy::too_many_arguments)]
pub fn head_backward<B: Backend>(
    be: &B,
    logits: &mut B::Buf,
    rows: usize,
    dh: &mut B::Buf,
    mut dw: B::M<'_>,
    h: &B::Buf,
    w: B::R<'_>,
    batch: &B::Batch<'_>,
    (n, c, v): (usize, usize, usize),
    lse: &B::Buf,
    g: B::R<'_>,
    ent: Option<(B::R<'_>, &B::Buf)>,
    cached: bool,
) -> Result<()> {
    let rows = rows.max(1);
    for r0 in (0..n).step_by(rows) {
        let r1 = (r0 + rows).min(n);
        let m = r1 - r0;
        let hc = || B::r(h, r0 * c..r1 * c);
        let wv = || B::sub_r(&w, 0..v * c);
        if !(cached && m == n) {
            be.matmul_nt(B::m(logits, 0..m * v), hc(), wv(), m, v, c, false)?;
        }
        let ent_chunk = ent.as_ref().map(|(e, hh)| (B::sub_r(e, r0..r1), B::r(hh, r0..r1)));
        let (lse_c, g_c) = (B::r(lse, r0..r1), B::sub_r(&g, r0..r1));
        be.logprob_backward(B::m(logits, 0..m * v), v, batch, r0..r1, lse_c, g_c, ent_chunk)?;
        be.matmul_nn(B::m(dh, r0 * c..r1 * c), B::r(logits, 0..m * v), wv(), m, c, v, false)?;
        be.matmul_tn(B::sub_m(&mut dw, 0..v * c), B::r(logits, 0..m * v), hc(), v, c, m, true)?;
    }
    Ok(())
}
