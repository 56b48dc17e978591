//! CPU causal GQA attention on packed sequences (flash-style bookkeeping: only the row
//! log-sum-exp is kept; the backward recomputes P = exp(S − lse)).
//!
//! Work is split into tasks (sequence, kv head); each task walks its query rows in blocks of
//! `BLOCK_ROWS`, touching only keys 0..=row (causal), so no work is spent above the diagonal
//! beyond one block. Extra memory: O(N · BLOCK_ROWS) scratch, never T×T per head.

use crate::tensor::cpu::matmul::gemm_raw;
use crate::tensor::cpu::simd::{self, simd_kernel};
use crate::tensor::shape::GemmShape;
use rayon::prelude::*;

/// Query rows processed per block.
pub const BLOCK_ROWS: usize = 64;

/// Head layout of the fused q|k|v buffer ([N, (H + 2·KV)·D]) and of the output ([N, H·D]).
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    fn qkv_stride(&self) -> usize {
        (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
    }
    fn out_stride(&self) -> usize {
        self.num_heads * self.head_dim
    }
    fn group(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }
    /// Scratch floats `attention_forward`/`attention_backward` need for `n_tokens` tokens.
    pub fn scratch_len(&self, n_tokens: usize) -> usize {
        2 * self.num_kv_heads * n_tokens * BLOCK_ROWS
    }
}

/// What the attention backward reads of its forward, in a backend's views: the q|k|v rows the
/// forward read ([N, (H+2KV)·D]), its output ([N, H·D]) and its row log-sum-exp ([N, H]).
#[derive(Debug, Clone, Copy)]
pub struct AttnSaved<R> {
    pub qkv: R,
    pub out: R,
    pub lse: R,
}

/// A raw pointer that may be shared across rayon tasks which write disjoint regions.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: the wrapper owns nothing; moving the address to another thread is sound because
// every dereference is, each use naming the elements its task alone touches.
unsafe impl Send for SharedMut {}
// SAFETY: a shared `&SharedMut` only hands out copies of the address (`get`); the tasks that
// write through it touch disjoint elements (stated at each use), so no element is accessed by
// two threads at once.
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so closures capture the whole Sync wrapper, not the raw field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

fn tasks(seq_starts: &[usize], kv: usize) -> impl IndexedParallelIterator<Item = (usize, usize)> + '_ {
    let n_seq = seq_starts.len().saturating_sub(1);
    (0..n_seq * kv).into_par_iter().map(move |t| (t / kv, t % kv))
}

/// One parallel task: sequence s (tokens start..start+t_len) × kv head g, with its two scratch
/// halves ([BLOCK_ROWS, T] each) and pointers to its K and V columns in the q|k|v buffer.
struct Task<'a> {
    start: usize,
    t_len: usize,
    /// q|k|v rows of this sequence.
    qkv: &'a [f32],
    k: *const f32,
    v: *const f32,
    scratch: (&'a mut [f32], &'a mut [f32]),
}

/// Run `body` on every (sequence, kv head) task in parallel.
fn for_each_task(
    seq_starts: &[usize],
    shape: AttnShape,
    qkv: &[f32],
    scratch: &mut [f32],
    body: impl Fn(usize, Task<'_>) + Sync + Send,
) {
    let (h_n, kv_n, d, qs) = (shape.num_heads, shape.num_kv_heads, shape.head_dim, shape.qkv_stride());
    let n = *seq_starts.last().unwrap_or(&0);
    assert!(qkv.len() >= n * qs && scratch.len() >= shape.scratch_len(n));
    let scr = SharedMut(scratch.as_mut_ptr());
    tasks(seq_starts, kv_n).for_each(|(s, g)| {
        let (start, t_len) = (seq_starts[s], seq_starts[s + 1] - seq_starts[s]);
        if t_len == 0 {
            return;
        }
        // SAFETY: task (s, g) owns scratch [2·BLOCK_ROWS·(KV·start + g·T), +2·BLOCK_ROWS·T): the
        // regions of distinct tasks are disjoint since Σ_s KV·T_s = KV·N, and lie inside
        // `scratch` (length ≥ 2·KV·N·BLOCK_ROWS, asserted above).
        let scratch = unsafe {
            let p = scr.get().add(2 * BLOCK_ROWS * (kv_n * start + g * t_len));
            (
                std::slice::from_raw_parts_mut(p, BLOCK_ROWS * t_len),
                std::slice::from_raw_parts_mut(p.add(BLOCK_ROWS * t_len), BLOCK_ROWS * t_len),
            )
        };
        let rows = &qkv[start * qs..(start + t_len) * qs];
        let (k, v) = (rows[(h_n + g) * d..].as_ptr(), rows[(h_n + kv_n + g) * d..].as_ptr());
        body(g, Task { start, t_len, qkv: rows, k, v, scratch });
    });
}

/// out[br, cols] = alpha · X[br, d] · Yᵀ where X rows start at `x` (row stride `x_rs`) and Y's
/// `cols` rows start at `y` (row stride `y_rs`): the score block S = scale·Q Kᵀ and dP = dO Vᵀ.
///
/// # Safety
/// The `br` rows of X and `cols` rows of Y (each `d` wide) must lie inside their buffers, and
/// `out` must hold br·cols floats that no other thread touches.
unsafe fn rows_times_rows_t(
    out: &mut [f32],
    (x, x_rs): (*const f32, usize),
    (y, y_rs): (*const f32, usize),
    (br, cols, d): (usize, usize, usize),
    alpha: f32,
) {
    gemm_raw(GemmShape::new(br, cols, d), out.as_mut_ptr(), cols, (x, x_rs, 1), (y, 1, y_rs), alpha, false)
}

/// Forward: out = softmax(scale·Q Kᵀ + causal mask) V per sequence and head; lse[i·H + h] is the
/// row log-sum-exp of the scaled scores. qkv: [N, (H+2KV)·D] with RoPE applied; out: [N, H·D].
pub fn attention_forward(
    out: &mut [f32],
    lse: &mut [f32],
    scratch: &mut [f32],
    qkv: &[f32],
    seq_starts: &[usize],
    shape: AttnShape,
) {
    let (h_n, d) = (shape.num_heads, shape.head_dim);
    let (qs, os) = (shape.qkv_stride(), shape.out_stride());
    let n = *seq_starts.last().unwrap_or(&0);
    assert!(out.len() >= n * os && lse.len() >= n * h_n);
    let scale = 1.0 / (d as f32).sqrt();
    let (out_p, lse_p) = (SharedMut(out.as_mut_ptr()), SharedMut(lse.as_mut_ptr()));
    for_each_task(seq_starts, shape, qkv, scratch, |g, task| {
        let Task { start, t_len, qkv: base, k: k_ptr, v: v_ptr, scratch: (sbuf, _) } = task;
        for h in g * shape.group()..(g + 1) * shape.group() {
            let q_ptr = base[h * d..].as_ptr();
            for r0 in (0..t_len).step_by(BLOCK_ROWS) {
                let br = BLOCK_ROWS.min(t_len - r0);
                let cols = r0 + br;
                // S[br, cols] = scale · Q[r0.., :] · K[0..cols, :]ᵀ
                // SAFETY: Q rows r0..r0+br and K rows 0..cols (cols ≤ T) of this sequence lie inside
                // qkv (checked above); sbuf is this task's BLOCK_ROWS·T ≥ br·cols floats.
                unsafe { rows_times_rows_t(sbuf, (q_ptr.add(r0 * qs), qs), (k_ptr, qs), (br, cols, d), scale) };
                let mut lse_blk = [0.0f32; BLOCK_ROWS];
                causal_softmax_rows(&mut sbuf[..br * cols], cols, r0, &mut lse_blk[..br]);
                for (i, &l) in lse_blk[..br].iter().enumerate() {
                    // SAFETY: lse element (start + r0 + i, h) belongs to this task only.
                    unsafe { *lse_p.get().add((start + r0 + i) * h_n + h) = l };
                }
                // O[r0.., h] = P[br, cols] · V[0..cols, :]
                // SAFETY: output columns [h·D, (h+1)·D) of this sequence's rows are written by this
                // task only (head h belongs to kv group g).
                unsafe {
                    gemm_raw(
                        GemmShape::new(br, d, cols),
                        out_p.get().add((start + r0) * os + h * d),
                        os,
                        (sbuf.as_ptr(), cols, 1),
                        (v_ptr, qs, 1),
                        1.0,
                        false,
                    )
                };
            }
        }
    });
}

/// Backward of `attention_forward`. Writes (overwrites) dqkv: [N, (H+2KV)·D] given dout: [N, H·D]
/// and the forward's qkv, out and lse (`saved`):
/// dP = dO Vᵀ, dS = P ⊙ (dP − rowsum(dO ⊙ O)), dQ = scale·dS K, dK = scale·dSᵀ Q, dV = Pᵀ dO.
pub fn attention_backward(
    dqkv: &mut [f32],
    scratch: &mut [f32],
    dout: &[f32],
    saved: AttnSaved<&[f32]>,
    seq_starts: &[usize],
    shape: AttnShape,
) {
    let AttnSaved { qkv, out, lse } = saved;
    let (h_n, kv_n, d) = (shape.num_heads, shape.num_kv_heads, shape.head_dim);
    let (qs, os) = (shape.qkv_stride(), shape.out_stride());
    let n = *seq_starts.last().unwrap_or(&0);
    assert!(dqkv.len() >= n * qs && dout.len() >= n * os && out.len() >= n * os && lse.len() >= n * h_n);
    let scale = 1.0 / (d as f32).sqrt();
    let dqkv_p = SharedMut(dqkv.as_mut_ptr());
    for_each_task(seq_starts, shape, qkv, scratch, |g, task| {
        let Task { start, t_len, qkv: base, k: k_ptr, v: v_ptr, scratch: (pbuf, dpbuf) } = task;
        // This task owns rows [start, start+T) × the columns of the q heads of group g, k head g
        // and v head g of dqkv; no other task touches them.
        // SAFETY: start < n (the task has T ≥ 1 tokens) and dqkv holds ≥ n·qs floats (asserted),
        // so row `start` is inside dqkv.
        let dbase = unsafe { dqkv_p.get().add(start * qs) };
        // SAFETY: both column offsets are below qs = (H + 2·KV)·D, so they stay in row `start`.
        let (dk_ptr, dv_ptr) = unsafe { (dbase.add((h_n + g) * d), dbase.add((h_n + kv_n + g) * d)) };
        for r in 0..t_len {
            // SAFETY: row r < T of this sequence, D floats at the columns of k head g and v head g:
            // inside dqkv and written by this task only (zeroed before the products accumulate).
            unsafe {
                std::ptr::write_bytes(dk_ptr.add(r * qs), 0, d);
                std::ptr::write_bytes(dv_ptr.add(r * qs), 0, d);
            }
        }
        for h in g * shape.group()..(g + 1) * shape.group() {
            let q_ptr = base[h * d..].as_ptr();
            let do_ptr = dout[start * os + h * d..].as_ptr();
            // SAFETY: h < H, so column h·D is inside row `start` of dqkv.
            let dq_ptr = unsafe { dbase.add(h * d) };
            for r0 in (0..t_len).step_by(BLOCK_ROWS) {
                let br = BLOCK_ROWS.min(t_len - r0);
                let cols = r0 + br;
                // SAFETY: Q rows r0..r0+br and K, V rows 0..cols (cols ≤ T) of this sequence lie
                // in qkv, and dO rows r0..r0+br in dout (≥ n·os floats, asserted); pbuf and dpbuf
                // are this task's scratch halves of BLOCK_ROWS·T ≥ br·cols floats each.
                unsafe {
                    // P block (recomputed scores) and dP = dO Vᵀ
                    rows_times_rows_t(pbuf, (q_ptr.add(r0 * qs), qs), (k_ptr, qs), (br, cols, d), scale);
                    rows_times_rows_t(dpbuf, (do_ptr.add(r0 * os), os), (v_ptr, qs), (br, cols, d), 1.0);
                }
                let (mut lse_blk, mut di_blk) = ([0.0f32; BLOCK_ROWS], [0.0f32; BLOCK_ROWS]);
                for i in 0..br {
                    let tok = start + r0 + i;
                    lse_blk[i] = lse[tok * h_n + h];
                    let row = tok * os + h * d..tok * os + (h + 1) * d;
                    di_blk[i] = simd::dot(&out[row.clone()], &dout[row]);
                }
                causal_softmax_grad_rows(
                    &mut pbuf[..br * cols],
                    &mut dpbuf[..br * cols],
                    cols,
                    r0,
                    &lse_blk[..br],
                    &di_blk[..br],
                );
                // SAFETY: the three products read dS / P ([br, cols] in this task's scratch), K, Q
                // and dO rows of this sequence (inside qkv and dout, as above) and write dQ rows
                // r0..r0+br of head h and dK, dV rows 0..cols of kv head g: rows of this sequence
                // in columns that belong to this task alone, in dqkv, which aliases no input.
                unsafe {
                    // dQ[r0.., h] = scale · dS · K[0..cols]
                    gemm_raw(
                        GemmShape::new(br, d, cols),
                        dq_ptr.add(r0 * qs),
                        qs,
                        (dpbuf.as_ptr(), cols, 1),
                        (k_ptr, qs, 1),
                        scale,
                        false,
                    );
                    // dK[0..cols] += scale · dSᵀ · Q[r0..]
                    gemm_raw(
                        GemmShape::new(cols, d, br),
                        dk_ptr,
                        qs,
                        (dpbuf.as_ptr(), 1, cols),
                        (q_ptr.add(r0 * qs), qs, 1),
                        scale,
                        true,
                    );
                    // dV[0..cols] += Pᵀ · dO[r0..]
                    gemm_raw(
                        GemmShape::new(cols, d, br),
                        dv_ptr,
                        qs,
                        (pbuf.as_ptr(), 1, cols),
                        (do_ptr.add(r0 * os), os, 1),
                        1.0,
                        true,
                    );
                }
            }
        }
    });
}

simd_kernel! {
    /// Causal softmax of a block of score rows s ([br, cols], row i is query r0 + i): keys
    /// 0..=r0+i are normalised, the rest zeroed; writes each row's log-sum-exp.
    fn causal_softmax_rows(s: &mut [f32], cols: usize, r0: usize, lse: &mut [f32]) -> () {
        for (i, (row, l)) in s.chunks_mut(cols).zip(lse.iter_mut()).enumerate() {
            let valid = r0 + i + 1;
            let (live, masked) = row.split_at_mut(valid);
            let m = simd::max(live);
            let sum = simd::exp_shift_sum(live, m);
            let inv = 1.0 / sum;
            live.iter_mut().for_each(|v| *v *= inv);
            masked.iter_mut().for_each(|v| *v = 0.0);
            *l = m + sum.ln();
        }
    }
}

simd_kernel! {
    /// Backward of the causal softmax on a block: p holds scores S (in), becomes P = e^(S − lse);
    /// dp holds dP = dO Vᵀ (in), becomes dS = P ⊙ (dP − Di). Masked entries are zeroed.
    fn causal_softmax_grad_rows(p: &mut [f32], dp: &mut [f32], cols: usize, r0: usize, lse: &[f32], di: &[f32]) -> () {
        for (i, (pr, dr)) in p.chunks_mut(cols).zip(dp.chunks_mut(cols)).enumerate() {
            let valid = r0 + i + 1;
            let (l, d) = (lse[i], di[i]);
            for (pv, dv) in pr[..valid].iter_mut().zip(dr[..valid].iter_mut()) {
                *pv = simd::exp(*pv - l);
                *dv = *pv * (*dv - d);
            }
            pr[valid..].iter_mut().for_each(|v| *v = 0.0);
            dr[valid..].iter_mut().for_each(|v| *v = 0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive reference in f64: materialise S = scale·QKᵀ per (sequence, head), causal softmax,
    /// O = PV; backward by the textbook formulas. Returns (out, dqkv).
    fn naive(qkv: &[f32], dout: &[f32], starts: &[usize], sh: AttnShape) -> (Vec<f64>, Vec<f64>) {
        let (h_n, kv_n, d) = (sh.num_heads, sh.num_kv_heads, sh.head_dim);
        let (qs, os) = (sh.qkv_stride(), sh.out_stride());
        let n = *starts.last().unwrap();
        let scale = 1.0 / (d as f64).sqrt();
        let (mut out, mut dqkv) = (vec![0.0f64; n * os], vec![0.0f64; n * qs]);
        let at = |tok: usize, col: usize| qkv[tok * qs + col] as f64;
        for w in starts.windows(2) {
            let (s0, t) = (w[0], w[1] - w[0]);
            for h in 0..h_n {
                let g = h / (h_n / kv_n);
                let (qc, kc, vc) = (h * d, (h_n + g) * d, (h_n + kv_n + g) * d);
                let mut p = vec![vec![0.0f64; t]; t];
                for i in 0..t {
                    let sc: Vec<f64> = (0..=i)
                        .map(|j| (0..d).map(|x| at(s0 + i, qc + x) * at(s0 + j, kc + x)).sum::<f64>() * scale)
                        .collect();
                    let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = sc.iter().map(|v| (v - m).exp()).sum();
                    for j in 0..=i {
                        p[i][j] = (sc[j] - m).exp() / z;
                    }
                    for x in 0..d {
                        out[(s0 + i) * os + h * d + x] = (0..=i).map(|j| p[i][j] * at(s0 + j, vc + x)).sum();
                    }
                }
                for i in 0..t {
                    let dov = |x: usize| dout[(s0 + i) * os + h * d + x] as f64;
                    let dp: Vec<f64> = (0..=i).map(|j| (0..d).map(|x| dov(x) * at(s0 + j, vc + x)).sum()).collect();
                    let di: f64 = (0..=i).map(|j| p[i][j] * dp[j]).sum();
                    for j in 0..=i {
                        let ds = p[i][j] * (dp[j] - di) * scale;
                        for x in 0..d {
                            dqkv[(s0 + i) * qs + qc + x] += ds * at(s0 + j, kc + x);
                            dqkv[(s0 + j) * qs + kc + x] += ds * at(s0 + i, qc + x);
                            dqkv[(s0 + j) * qs + vc + x] += p[i][j] * dov(x);
                        }
                    }
                }
            }
        }
        (out, dqkv)
    }

    #[test]
    fn multi_block_gqa_matches_naive_reference() {
        let sh = AttnShape { num_heads: 4, num_kv_heads: 2, head_dim: 8 };
        // lengths span 1, 2 and 3 row blocks, plus an empty sequence
        let starts = [0usize, 150, 150, 220, 225];
        let n = 225;
        let mut rng = crate::rng::Rng::new(3);
        let qkv: Vec<f32> = (0..n * sh.qkv_stride()).map(|_| rng.normal() as f32).collect();
        let dout: Vec<f32> = (0..n * sh.out_stride()).map(|_| rng.normal() as f32).collect();
        let (mut out, mut lse, mut scratch) = (vec![0.0; n * 32], vec![0.0; n * 4], vec![0.0; sh.scratch_len(n)]);
        attention_forward(&mut out, &mut lse, &mut scratch, &qkv, &starts, sh);
        let mut dqkv = vec![f32::NAN; n * sh.qkv_stride()];
        attention_backward(&mut dqkv, &mut scratch, &dout, AttnSaved { qkv: &qkv, out: &out, lse: &lse }, &starts, sh);
        let (want_out, want_d) = naive(&qkv, &dout, &starts, sh);
        // (a NaN difference counts as infinite: f64::max alone would drop it)
        let err = |a: &[f32], b: &[f64]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (*x as f64 - y).abs())
                .map(|d| if d.is_nan() { f64::INFINITY } else { d })
                .fold(0.0, f64::max)
        };
        let (eo, ed) = (err(&out, &want_out), err(&dqkv, &want_d));
        assert!(eo < 1e-5, "forward max error {eo}");
        assert!(ed < 1e-4, "backward max error {ed}");
    }
}
