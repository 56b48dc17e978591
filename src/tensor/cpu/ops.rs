//! Row-wise kernels of the transformer on the CPU: embedding, RMSNorm, RoPE, SwiGLU, bias.
//!
//! Shapes use N = tokens, C = channels. Every kernel writes into caller-provided buffers (no
//! allocation); rows are split across the rayon pool when there is enough work.

use crate::tensor::cpu::simd::{self, simd_kernel};
use rayon::prelude::*;

/// Rows per rayon task: big enough that scheduling overhead is noise.
fn rows_per_task(cols: usize) -> usize {
    (16384 / cols.max(1)).max(1)
}

/// `out[i, :] = table[ids[i], :]`. table: [V, C], out: [N, C].
pub fn embedding_forward(out: &mut [f32], table: &[f32], ids: &[u32], c: usize) {
    out.par_chunks_mut(c * rows_per_task(c)).enumerate().for_each(|(blk, chunk)| {
        let first = blk * rows_per_task(c);
        for (r, row) in chunk.chunks_mut(c).enumerate() {
            let id = ids[first + r] as usize;
            row.copy_from_slice(&table[id * c..(id + 1) * c]);
        }
    });
}

/// `dtable[ids[i], :] += dout[i, :]` (serial: rows may repeat a token id).
pub fn embedding_backward(dtable: &mut [f32], dout: &[f32], ids: &[u32], c: usize) {
    for (row, &id) in dout.chunks(c).zip(ids) {
        let id = id as usize;
        dtable[id * c..(id + 1) * c].iter_mut().zip(row).for_each(|(d, g)| *d += g);
    }
}

/// y = x / rms(x) · w per row; `rstd[i] = 1 / sqrt(mean(x[i]²) + eps)`. x, y: [N, C]; w: `[C]`.
pub fn rmsnorm_forward(y: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let c = w.len();
    let rpt = rows_per_task(c);
    y.par_chunks_mut(c * rpt)
        .zip(rstd.par_chunks_mut(rpt))
        .zip(x.par_chunks(c * rpt))
        .for_each(|((yc, rc), xc)| rmsnorm_rows(yc, rc, xc, w, eps));
}

simd_kernel! {
    /// `rmsnorm_forward` on the calling thread (rows = rstd.len()). The mean square is summed in
    /// 8 independent lanes (`simd::dot`), not one chain of c dependent additions.
    pub fn rmsnorm_rows(y: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], eps: f32) -> () {
        let c = w.len();
        for ((yr, r), xr) in y.chunks_mut(c).zip(rstd.iter_mut()).zip(x.chunks(c)) {
            let ms = simd::dot(xr, xr) / c as f32;
            let s = 1.0 / (ms + eps).sqrt();
            *r = s;
            for ((o, &xv), &wv) in yr.iter_mut().zip(xr).zip(w) {
                *o = xv * s * wv;
            }
        }
    }
}

/// RMSNorm backward. Adds the input gradient into `dx` and the weight gradient into `dw`:
/// g = dy·w; dx += rstd·(g − x·rstd²·mean(g·x)); dw += Σ_rows dy·x·rstd.
pub fn rmsnorm_backward(dx: &mut [f32], dw: &mut [f32], dy: &[f32], x: &[f32], w: &[f32], rstd: &[f32]) {
    let c = w.len();
    let rpt = rows_per_task(c);
    dx.par_chunks_mut(c * rpt)
        .zip(dy.par_chunks(c * rpt))
        .zip(x.par_chunks(c * rpt))
        .zip(rstd.par_chunks(rpt))
        .for_each(|(((dxc, dyc), xc), rc)| {
            for (((dxr, dyr), xr), &s) in dxc.chunks_mut(c).zip(dyc.chunks(c)).zip(xc.chunks(c)).zip(rc) {
                let dot: f32 = dyr.iter().zip(w).zip(xr).map(|((g, wv), xv)| g * wv * xv).sum();
                let k = s * s * s * dot / c as f32;
                for (((d, &g), &wv), &xv) in dxr.iter_mut().zip(dyr).zip(w).zip(xr) {
                    *d += s * g * wv - k * xv;
                }
            }
        });
    // dw: columns in parallel, each task sweeps all rows of its column block.
    const COLS: usize = 64;
    dw.par_chunks_mut(COLS).enumerate().for_each(|(blk, dwc)| {
        let j0 = blk * COLS;
        for ((dyr, xr), &s) in dy.chunks(c).zip(x.chunks(c)).zip(rstd) {
            for (jj, d) in dwc.iter_mut().enumerate() {
                *d += dyr[j0 + jj] * xr[j0 + jj] * s;
            }
        }
    });
}

/// out[i, :] += bias. out: [N, W]; bias: `[W]`.
pub fn add_bias(out: &mut [f32], bias: &[f32]) {
    let w = bias.len();
    out.par_chunks_mut(w * rows_per_task(w)).for_each(|chunk| {
        for row in chunk.chunks_mut(w) {
            row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
        }
    });
}

/// dbias += Σ_rows dout. dout: [N, W]; dbias: `[W]`.
pub fn bias_backward(dbias: &mut [f32], dout: &[f32]) {
    let w = dbias.len();
    const COLS: usize = 64;
    dbias.par_chunks_mut(COLS).enumerate().for_each(|(blk, dc)| {
        let j0 = blk * COLS;
        for row in dout.chunks(w) {
            dc.iter_mut().zip(&row[j0..]).for_each(|(d, g)| *d += g);
        }
    });
}

/// Rotary position embedding tables: cos/sin of pos·θ^(−2i/D), shape [max_pos, D/2].
#[derive(Debug, Clone)]
pub struct RopeTable {
    pub half: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl RopeTable {
    /// Tables for positions 0..max_pos (HF convention: inv_freq in f32, angle = pos·inv_freq in f32).
    pub fn new(head_dim: usize, theta: f64, max_pos: usize) -> Self {
        let half = head_dim / 2;
        let inv: Vec<f32> = (0..half).map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32).collect();
        Self::from_inv_freq(&inv, max_pos)
    }

    /// Tables of the given inverse frequencies (one per rotated pair of a head) for positions
    /// 0..max_pos (a scaled RoPE's, `model::rope_scaling::inv_freq`).
    pub fn from_inv_freq(inv: &[f32], max_pos: usize) -> Self {
        let half = inv.len();
        let mut cos = vec![0.0; max_pos * half];
        let mut sin = vec![0.0; max_pos * half];
        for p in 0..max_pos {
            for i in 0..half {
                let a = (p as f32 * inv[i]) as f64;
                cos[p * half + i] = a.cos() as f32;
                sin[p * half + i] = a.sin() as f32;
            }
        }
        RopeTable { half, cos, sin }
    }

    /// Multiply every cos and sin by `factor` (YaRN's attention factor; 1 leaves the table as it is).
    pub fn scale(&mut self, factor: f32) {
        if factor != 1.0 {
            self.cos.iter_mut().chain(self.sin.iter_mut()).for_each(|x| *x *= factor);
        }
    }

    /// Highest position + 1 the table covers.
    pub fn max_positions(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }
}

/// Rotate (HF "rotate_half" layout: pairs (i, i + D/2)) the first `n_heads` heads of each row
/// of `x` ([N, row_stride]) in place by the angle of that row's position. `inverse` applies the
/// transpose rotation, which is the backward pass.
pub fn rope_apply(
    x: &mut [f32],
    row_stride: usize,
    n_heads: usize,
    positions: &[u32],
    table: &RopeTable,
    inverse: bool,
) {
    let rpt = rows_per_task(row_stride);
    x.par_chunks_mut(row_stride * rpt)
        .enumerate()
        .for_each(|(blk, chunk)| rope_rows(chunk, row_stride, n_heads, &positions[blk * rpt..], table, inverse));
}

/// `rope_apply` on the calling thread; row r uses `positions[r]`.
pub fn rope_rows(
    x: &mut [f32],
    row_stride: usize,
    n_heads: usize,
    positions: &[u32],
    table: &RopeTable,
    inverse: bool,
) {
    let half = table.half;
    let d = 2 * half;
    for (row, &p) in x.chunks_mut(row_stride).zip(positions) {
        let p = p as usize;
        let (cs, sn) = (&table.cos[p * half..(p + 1) * half], &table.sin[p * half..(p + 1) * half]);
        for h in 0..n_heads {
            let (lo, hi) = row[h * d..(h + 1) * d].split_at_mut(half);
            for i in 0..half {
                let (a, b) = (lo[i], hi[i]);
                let (c, s) = (cs[i], if inverse { -sn[i] } else { sn[i] });
                lo[i] = a * c - b * s;
                hi[i] = b * c + a * s;
            }
        }
    }
}

simd_kernel! {
    /// SwiGLU forward on a block of rows, on the calling thread.
    pub fn swiglu_rows(act: &mut [f32], gate_up: &[f32], inter: usize) -> () {
        for (ar, gr) in act.chunks_mut(inter).zip(gate_up.chunks(2 * inter)) {
            let (g, u) = gr.split_at(inter);
            for ((a, &gv), &uv) in ar.iter_mut().zip(g).zip(u) {
                *a = gv * simd::sigmoid(gv) * uv;
            }
        }
    }
}

simd_kernel! {
    /// SwiGLU backward on a block of rows.
    fn swiglu_backward_rows(dgate_up: &mut [f32], dact: &[f32], gate_up: &[f32], inter: usize) -> () {
        for ((dr, ar), gr) in dgate_up.chunks_mut(2 * inter).zip(dact.chunks(inter)).zip(gate_up.chunks(2 * inter)) {
            let (g, u) = gr.split_at(inter);
            let (dg, du) = dr.split_at_mut(inter);
            for j in 0..inter {
                let s = simd::sigmoid(g[j]);
                dg[j] = ar[j] * u[j] * s * (1.0 + g[j] * (1.0 - s));
                du[j] = ar[j] * g[j] * s;
            }
        }
    }
}

/// SwiGLU: act[i, j] = silu(gate[i, j]) · up[i, j] where gate_up rows are [gate (I) | up (I)].
pub fn swiglu_forward(act: &mut [f32], gate_up: &[f32], inter: usize) {
    let rpt = rows_per_task(2 * inter);
    act.par_chunks_mut(inter * rpt)
        .zip(gate_up.par_chunks(2 * inter * rpt))
        .for_each(|(ac, gc)| swiglu_rows(ac, gc, inter));
}

/// SwiGLU backward: d gate = dact·up·σ(g)·(1 + g·(1 − σ(g))), d up = dact·silu(g).
pub fn swiglu_backward(dgate_up: &mut [f32], dact: &[f32], gate_up: &[f32], inter: usize) {
    let rpt = rows_per_task(2 * inter);
    dgate_up
        .par_chunks_mut(2 * inter * rpt)
        .zip(dact.par_chunks(inter * rpt))
        .zip(gate_up.par_chunks(2 * inter * rpt))
        .for_each(|((dc, ac), gc)| swiglu_backward_rows(dc, ac, gc, inter));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Central finite difference of a scalar function of one input element.
    fn fd(f: &dyn Fn(&[f32]) -> f64, x: &[f32], i: usize) -> f64 {
        let h = 1e-2f32;
        let mut xp = x.to_vec();
        xp[i] += h;
        let mut xm = x.to_vec();
        xm[i] -= h;
        (f(&xp) - f(&xm)) / (2.0 * h as f64)
    }

    fn vals(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| (((i as u32).wrapping_mul(2654435761u32) ^ seed) % 1000) as f32 / 500.0 - 1.0).collect()
    }

    #[test]
    fn rmsnorm_backward_matches_finite_differences() {
        let (n, c) = (3, 8);
        let x = vals(n * c, 1);
        let w: Vec<f32> = vals(c, 2).iter().map(|v| 1.0 + 0.5 * v).collect();
        let dy = vals(n * c, 3);
        let loss = |xx: &[f32]| {
            let mut y = vec![0.0; n * c];
            let mut r = vec![0.0; n];
            rmsnorm_forward(&mut y, &mut r, xx, &w, 1e-6);
            y.iter().zip(&dy).map(|(a, b)| (a * b) as f64).sum::<f64>()
        };
        let mut y = vec![0.0; n * c];
        let mut r = vec![0.0; n];
        rmsnorm_forward(&mut y, &mut r, &x, &w, 1e-6);
        let mut dx = vec![0.0; n * c];
        let mut dw = vec![0.0; c];
        rmsnorm_backward(&mut dx, &mut dw, &dy, &x, &w, &r);
        #[allow(clippy::needless_range_loop)]
        for i in 0..n * c {
            let want = fd(&loss, &x, i);
            assert!((dx[i] as f64 - want).abs() < 2e-3, "dx[{i}] {} vs {want}", dx[i]);
        }
    }

    #[test]
    fn swiglu_backward_matches_finite_differences() {
        let (n, inter) = (2, 5);
        let gu = vals(n * 2 * inter, 7);
        let da = vals(n * inter, 9);
        let loss = |g: &[f32]| {
            let mut a = vec![0.0; n * inter];
            swiglu_forward(&mut a, g, inter);
            a.iter().zip(&da).map(|(x, y)| (x * y) as f64).sum::<f64>()
        };
        let mut d = vec![0.0; n * 2 * inter];
        swiglu_backward(&mut d, &da, &gu, inter);
        #[allow(clippy::needless_range_loop)]
        for i in 0..gu.len() {
            let want = fd(&loss, &gu, i);
            assert!((d[i] as f64 - want).abs() < 2e-3, "d[{i}] {} vs {want}", d[i]);
        }
    }

    #[test]
    fn rope_inverse_undoes_forward_and_preserves_norm() {
        let table = RopeTable::new(8, 10000.0, 32);
        let x0 = vals(4 * 24, 5);
        let pos = [0u32, 3, 17, 31];
        let mut x = x0.clone();
        rope_apply(&mut x, 24, 2, &pos, &table, false);
        // position 0 is the identity; other rows changed but kept their norm per head
        assert_eq!(&x[..16], &x0[..16]);
        assert!(x[24..40] != x0[24..40]);
        let n0: f32 = x0[24..32].iter().map(|v| v * v).sum();
        let n1: f32 = x[24..32].iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-5);
        // heads beyond n_heads untouched
        assert_eq!(&x[40..48], &x0[40..48]);
        rope_apply(&mut x, 24, 2, &pos, &table, true);
        assert!(x.iter().zip(&x0).all(|(a, b)| (a - b).abs() < 1e-6));
    }
}
