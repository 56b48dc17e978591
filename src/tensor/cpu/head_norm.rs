//! Per-head RMSNorm in place (Qwen3's `q_norm` and `k_norm`): each query (or key) head of each
//! row of the fused q|k|v projection is RMS-normed over its head_dim values with one weight shared
//! by the heads, before RoPE.
//!
//! Layout: `x` holds rows of `row_stride` values, the view starting at the first head to norm;
//! row i's head h is `x[i·row_stride + h·d ..][..d]`, d = `w.len()`. The forward keeps what its
//! backward reads: the inputs, contiguous as `raw[(i·heads + h)·d ..][..d]`, and
//! `rstd[i·heads + h]` = 1/sqrt(mean(x²) + eps), as the row RMSNorm computes them.

use crate::tensor::cpu::simd;
use rayon::prelude::*;

/// Norm the first `heads` heads of every row of `x` in place (n = `rstd.len() / heads` rows),
/// keeping the inputs in `raw` when given.
pub fn head_norm_forward(
    x: &mut [f32],
    raw: Option<&mut [f32]>,
    rstd: &mut [f32],
    w: &[f32],
    row_stride: usize,
    heads: usize,
    eps: f32,
) {
    let d = w.len();
    let norm = |xr: &mut [f32], raw: Option<&mut [f32]>, rs: &mut [f32]| {
        let mut raw = raw.map(|r| r.chunks_mut(d));
        for (xh, r) in xr[..heads * d].chunks_mut(d).zip(rs.iter_mut()) {
            if let Some(out) = raw.as_mut().and_then(|it| it.next()) {
                out.copy_from_slice(xh);
            }
            let s = 1.0 / (simd::dot(xh, xh) / d as f32 + eps).sqrt();
            *r = s;
            xh.iter_mut().zip(w).for_each(|(v, &wv)| *v = *v * s * wv);
        }
    };
    let rows = x.par_chunks_mut(row_stride).zip(rstd.par_chunks_mut(heads));
    match raw {
        Some(raw) => rows.zip(raw.par_chunks_mut(heads * d)).for_each(|((xr, rs), rw)| norm(xr, Some(rw), rs)),
        None => rows.for_each(|(xr, rs)| norm(xr, None, rs)),
    }
}

/// The backward of [`head_norm_forward`]: `dx` (strided as `x`) holds ∂L/∂y on entry and ∂L/∂x
/// on return; `dw += Σ_{rows, heads} dy·x·rstd`, summed in row order. g = dy·w;
/// dx = rstd·g − x·rstd³·mean(g·x).
pub fn head_norm_backward(
    dx: &mut [f32],
    dw: &mut [f32],
    raw: &[f32],
    rstd: &[f32],
    w: &[f32],
    row_stride: usize,
    heads: usize,
) {
    let d = w.len();
    let n = rstd.len() / heads.max(1);
    // the weight's gradient first (it reads dy, which the input gradient then overwrites)
    for i in 0..n {
        for h in 0..heads {
            let (dy, x) = (&dx[i * row_stride + h * d..][..d], &raw[(i * heads + h) * d..][..d]);
            let s = rstd[i * heads + h];
            dw.iter_mut().zip(dy).zip(x).for_each(|((g, &dyv), &xv)| *g += dyv * xv * s);
        }
    }
    dx.par_chunks_mut(row_stride).zip(raw.par_chunks(heads * d)).zip(rstd.par_chunks(heads)).for_each(
        |((dr, xr), rs)| {
            for ((dh, xh), &s) in dr[..heads * d].chunks_mut(d).zip(xr.chunks(d)).zip(rs) {
                let dot: f32 = dh.iter().zip(w).zip(xh).map(|((g, wv), xv)| g * wv * xv).sum();
                let k = s * s * s * dot / d as f32;
                dh.iter_mut().zip(w).zip(xh).for_each(|((g, &wv), &xv)| *g = s * *g * wv - k * xv);
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::cpu::ops::{rmsnorm_backward, rmsnorm_forward};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut r = crate::rng::Rng::new(seed);
        (0..n).map(|_| r.normal() as f32).collect()
    }

    /// Heads in the middle of strided rows are normed exactly as the row RMSNorm norms the same
    /// values laid out contiguously, forward and backward, and the values around them are left
    /// alone.
    #[test]
    fn per_head_norm_equals_the_row_norm_of_each_head() {
        let (n, heads, d, stride, at) = (5, 3, 8, 40, 4);
        let w: Vec<f32> = values(d, 1).iter().map(|v| 1.0 + 0.1 * v).collect();
        let x0 = values(n * stride, 2);
        let dy0 = values(n * stride, 3);
        let mut x = x0.clone();
        let (mut raw, mut rstd) = (vec![0.0; n * heads * d], vec![0.0; n * heads]);
        let len = n * stride - at;
        head_norm_forward(&mut x[at..], Some(&mut raw), &mut rstd, &w, stride, heads, 1e-6);
        // the reference: every head a row of its own
        let rows: Vec<f32> = (0..n).flat_map(|i| x0[i * stride + at..][..heads * d].to_vec()).collect();
        assert_eq!(raw, rows);
        let (mut y, mut rs) = (vec![0.0; rows.len()], vec![0.0; n * heads]);
        rmsnorm_forward(&mut y, &mut rs, &rows, &w, 1e-6);
        assert_eq!(rstd, rs);
        for i in 0..n {
            assert_eq!(x[i * stride + at..][..heads * d], y[i * heads * d..][..heads * d], "row {i}");
            assert_eq!(x[i * stride..][..at], x0[i * stride..][..at]);
            assert_eq!(
                x[i * stride + at + heads * d..][..stride - at - heads * d],
                x0[i * stride + at + heads * d..][..stride - at - heads * d]
            );
        }
        let mut dx = dy0.clone();
        let mut dw = vec![0.5; d];
        head_norm_backward(&mut dx[at..][..len], &mut dw, &raw, &rstd, &w, stride, heads);
        let dys: Vec<f32> = (0..n).flat_map(|i| dy0[i * stride + at..][..heads * d].to_vec()).collect();
        let (mut rdx, mut rdw) = (vec![0.0; rows.len()], vec![0.5; d]);
        rmsnorm_backward(&mut rdx, &mut rdw, &dys, &rows, &w, &rs);
        for i in 0..n {
            let (got, want) = (&dx[i * stride + at..][..heads * d], &rdx[i * heads * d..][..heads * d]);
            assert!(got.iter().zip(want).all(|(a, b)| (a - b).abs() <= 1e-6 * (1.0 + b.abs())), "row {i}");
            assert_eq!(dx[i * stride..][..at], dy0[i * stride..][..at]);
        }
        assert!(dw.iter().zip(&rdw).all(|(a, b)| (a - b).abs() <= 1e-5 * (1.0 + b.abs())), "{dw:?} vs {rdw:?}");
        // without `raw` the forward writes the same values
        let mut x2 = x0.clone();
        let mut rstd2 = vec![0.0; n * heads];
        head_norm_forward(&mut x2[at..], None, &mut rstd2, &w, stride, heads, 1e-6);
        assert_eq!(x2, x);
    }
}
