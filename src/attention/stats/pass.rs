//! The blockwise kernel of the statistics pass: one task per (sequence, layer, kv head)
//! recomputes P_{t,s} = exp(scale·q_t·k_s − lse_t) for BLOCK_ROWS query rows × `TILE_COLS` keys
//! at a time and folds each tile straight into per-head accumulators. A task's scratch is one
//! [BLOCK_ROWS, TILE_COLS] tile, whatever the sequence length.

use crate::attention::cpu::BLOCK_ROWS;
use crate::attention::AttnShape;
use crate::tensor::cpu::matmul::gemm_raw;
use crate::tensor::cpu::simd::{self, simd_kernel};
use crate::tensor::shape::GemmShape;

/// Keys per score tile (the tile is BLOCK_ROWS × TILE_COLS floats = 64 KiB).
pub(super) const TILE_COLS: usize = 256;

/// One sequence as the kernel sees it (token indices are local to the sequence).
pub(crate) struct SeqPlan<'a> {
    /// First token of the sequence in the packed batch; its length n.
    pub start: usize,
    pub len: usize,
    /// First response token r (rows r..n are the response, T = n − r).
    pub resp: usize,
    /// Step bounds (step k = bounds[k]..bounds[k+1]); empty when FCI is off for this sequence.
    pub bounds: &'a [usize],
    /// 1/|S_k| per step.
    pub inv_len: Vec<f64>,
    /// Largest step whose FCI may be non-zero (S − 1, or the end-of-thinking step).
    pub kmax: usize,
}

impl SeqPlan<'_> {
    /// Number of steps S (0 without FCI).
    pub fn num_steps(&self) -> usize {
        self.bounds.len().saturating_sub(1)
    }
    /// Response length T.
    pub fn resp_len(&self) -> usize {
        self.len - self.resp
    }
}

/// What a layer contributes: FCI, rhythm statistics (at this position of the rhythm list), or both.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerRole {
    pub layer: usize,
    pub fci: bool,
    pub rhythm: Option<usize>,
}

/// Parameters shared by every task.
#[derive(Debug, Clone, Copy)]
pub(super) struct PassParams {
    pub shape: AttnShape,
    pub delta: usize,
    pub window: usize,
    pub h_lo: usize,
    pub h_hi: usize,
}

/// Result of one task for the `group` query heads of kv head `g`.
pub(super) struct TaskOut {
    pub seq: usize,
    pub role: usize,
    pub g: usize,
    /// [group, S] y_k^{l,h} (zero outside steps 2..=kmax).
    pub fci: Vec<f64>,
    /// [group] Σ over response rows of Σ_s P_{t,s}·(t − s).
    pub dist: Vec<f64>,
    /// [group, T] Σ_s P_{t,s}·min(t − s, W) per response row.
    pub waad: Vec<f32>,
    /// [group, T] Σ_t P_{t,s} over rows t with t − s ∈ [h_lo, h_hi], per response key s.
    pub fai: Vec<f32>,
}

/// Per-row context of the tile kernel.
struct RowCtx<'a> {
    seq: &'a SeqPlan<'a>,
    fci: bool,
    rhythm: bool,
    p: PassParams,
}

/// Columns one row needs: keys [lo, hi), the FCI step cap (valid when ≥ 2) and 1/|S_j|.
struct RowCols {
    lo: usize,
    hi: usize,
    kcap: usize,
    inv_j: f64,
}

impl RowCtx<'_> {
    /// Step j of row t and the last key step k ≤ min(j − Δ, kmax) whose FCI it feeds (0: none).
    fn fci_cap(&self, t: usize) -> (usize, usize) {
        let b = self.seq.bounds;
        if !self.fci || b.len() < 2 {
            return (0, 0);
        }
        let j = b.partition_point(|&x| x <= t) - 1;
        let kcap = if j >= self.p.delta { (j - self.p.delta).min(self.seq.kmax) } else { 0 };
        (j, kcap)
    }

    fn row_cols(&self, t: usize) -> RowCols {
        let (j, kcap) = self.fci_cap(t);
        let inv_j = self.seq.inv_len.get(j).copied().unwrap_or(0.0);
        if self.rhythm {
            RowCols { lo: 0, hi: t + 1, kcap, inv_j }
        } else if kcap >= 2 {
            let b = self.seq.bounds;
            // causal: with Δ = 0 the row's own step is a key step, and its later keys are not seen
            RowCols { lo: b[2], hi: b[kcap + 1].min(t + 1), kcap, inv_j }
        } else {
            RowCols { lo: 0, hi: 0, kcap: 0, inv_j }
        }
    }

    /// First row the task must visit.
    fn first_row(&self) -> usize {
        if self.rhythm {
            return self.seq.resp;
        }
        let b = self.seq.bounds;
        let first_step = 2 + self.p.delta;
        if self.fci && self.seq.kmax >= 2 && first_step < b.len().saturating_sub(1) {
            b[first_step]
        } else {
            self.seq.len
        }
    }
}

/// Mutable accumulators of one query head.
struct HeadAcc<'a> {
    fci: &'a mut [f64],
    dist: &'a mut f64,
    waad: &'a mut [f32],
    fai: &'a mut [f32],
}

/// Run one (sequence, layer, kv head) task. `qkv` and `lse` are the layer's full workspace
/// buffers ([N, (H+2KV)·D] after RoPE and [N, H]).
pub(super) fn run_task(
    qkv: &[f32],
    lse: &[f32],
    seq: &SeqPlan<'_>,
    role: (usize, LayerRole),
    g: usize,
    p: PassParams,
    seq_idx: usize,
) -> TaskOut {
    let (h_n, kv_n, d) = (p.shape.num_heads, p.shape.num_kv_heads, p.shape.head_dim);
    let group = h_n / kv_n;
    let qs = (h_n + 2 * kv_n) * d;
    let (s_n, t_len) = (seq.num_steps(), if role.1.rhythm.is_some() { seq.resp_len() } else { 0 });
    let mut out = TaskOut {
        seq: seq_idx,
        role: role.0,
        g,
        fci: vec![0.0; if role.1.fci { group * s_n } else { 0 }],
        dist: vec![0.0; group],
        waad: vec![0.0; group * t_len],
        fai: vec![0.0; group * t_len],
    };
    let cx = RowCtx { seq, fci: role.1.fci, rhythm: role.1.rhythm.is_some(), p };
    let row_lo = cx.first_row();
    if row_lo >= seq.len {
        return out;
    }
    let rows = &qkv[seq.start * qs..(seq.start + seq.len) * qs];
    let k_ptr = rows[(h_n + g) * d..].as_ptr();
    let scale = 1.0 / (d as f32).sqrt();
    // Short sequences get a tile of their own size (batches of many short responses are common).
    let mut tile = vec![0.0f32; BLOCK_ROWS.min(seq.len - row_lo) * TILE_COLS.min(seq.len)];
    let mut fci_chunks = out.fci.chunks_mut(s_n.max(1));
    let mut waad_chunks = out.waad.chunks_mut(t_len.max(1));
    let mut fai_chunks = out.fai.chunks_mut(t_len.max(1));
    for (hh, dist) in out.dist.iter_mut().enumerate() {
        let h = g * group + hh;
        let mut acc = HeadAcc {
            fci: fci_chunks.next().unwrap_or_default(),
            dist,
            waad: waad_chunks.next().unwrap_or_default(),
            fai: fai_chunks.next().unwrap_or_default(),
        };
        let q_ptr = rows[h * d..].as_ptr();
        for r0 in (row_lo..seq.len).step_by(BLOCK_ROWS) {
            let br = BLOCK_ROWS.min(seq.len - r0);
            let mut lse_blk = [0.0f32; BLOCK_ROWS];
            for (i, l) in lse_blk[..br].iter_mut().enumerate() {
                *l = lse[(seq.start + r0 + i) * h_n + h];
            }
            // Rows only ever need more keys further down, so the last row bounds the block.
            let last = cx.row_cols(r0 + br - 1);
            // Rhythm rows read every key; FCI rows start at step 2 (steps 0 and 1 are zeroed).
            let lo = if cx.rhythm || last.hi == 0 { 0 } else { seq.bounds[2] };
            for c0 in (lo..last.hi).step_by(TILE_COLS) {
                let w = TILE_COLS.min(last.hi - c0);
                // S[br, w] = scale · Q[r0.., h] · K[c0.., g]ᵀ
                // SAFETY: query rows r0..r0+br and key rows c0..c0+w lie inside this sequence's
                // rows of qkv (r0 + br ≤ n and c0 + w ≤ last.hi ≤ n); `tile` holds br·w floats
                // and is owned by this task.
                unsafe {
                    gemm_raw(
                        GemmShape::new(br, w, d),
                        tile.as_mut_ptr(),
                        w,
                        (q_ptr.add(r0 * qs), qs, 1),
                        (k_ptr.add(c0 * qs), 1, qs),
                        scale,
                        false,
                    )
                };
                tile_pass(&mut tile[..br * w], w, c0, r0, &lse_blk[..br], &cx, &mut acc);
            }
        }
    }
    out
}

simd_kernel! {
    /// Fold one score tile (rows r0.., keys c0..c0+w, row stride w) into a head's accumulators:
    /// P = e^(S − lse) on the keys each row needs, then the look-back and WAAD sums, the FAI band
    /// and the FCI step sums.
    fn tile_pass(tile: &mut [f32], w: usize, c0: usize, r0: usize, lse: &[f32], cx: &RowCtx<'_>, acc: &mut HeadAcc<'_>) -> () {
        let (seq, p) = (cx.seq, cx.p);
        let b = seq.bounds;
        for (i, &l) in lse.iter().enumerate() {
            let t = r0 + i;
            let rc = cx.row_cols(t);
            let (a, e) = (rc.lo.max(c0), rc.hi.min(c0 + w));
            if a >= e {
                continue;
            }
            let row = &mut tile[i * w + a - c0..i * w + e - c0];
            if cx.rhythm {
                let (dist, waad) = exp_weighted(row, l, (t - a) as f32, p.window as f32);
                *acc.dist += dist as f64;
                acc.waad[t - seq.resp] += waad;
                // FAI band: keys s ≥ r with h_lo ≤ t − s ≤ h_hi.
                if t >= seq.resp + p.h_lo {
                    let s_lo = seq.resp.max(t.saturating_sub(p.h_hi)).max(a);
                    let s_hi = (t - p.h_lo + 1).min(e);
                    if s_lo < s_hi {
                        let dst = &mut acc.fai[s_lo - seq.resp..s_hi - seq.resp];
                        for (f, &v) in dst.iter_mut().zip(&row[s_lo - a..s_hi - a]) {
                            *f += v;
                        }
                    }
                }
            } else {
                exp_in_place(row, l);
            }
            if rc.kcap >= 2 {
                let from = a.max(b[2]);
                let mut k = b.partition_point(|&x| x <= from) - 1;
                while k <= rc.kcap && b[k] < e {
                    let (sa, sb) = (b[k].max(from), b[k + 1].min(e));
                    if sa < sb {
                        acc.fci[k] += lane_sum(&row[sa - a..sb - a]) as f64 * rc.inv_j * seq.inv_len[k];
                    }
                    k += 1;
                }
            }
        }
    }
}

/// Lanes of the independent accumulators (one AVX2 register of f32).
const LANES: usize = 8;

/// x ← e^(x − l); returns (Σ p_j·d_j, Σ p_j·min(d_j, W)) with distances d_j = d0 − j.
#[inline(always)]
fn exp_weighted(x: &mut [f32], l: f32, d0: f32, window: f32) -> (f32, f32) {
    let (mut sd, mut sw) = ([0.0f32; LANES], [0.0f32; LANES]);
    let mut dist = [0.0f32; LANES];
    for (j, v) in dist.iter_mut().enumerate() {
        *v = d0 - j as f32;
    }
    let split = x.len() - x.len() % LANES;
    let (body, rest) = x.split_at_mut(split);
    for c in body.chunks_exact_mut(LANES) {
        for j in 0..LANES {
            let pv = simd::exp(c[j] - l);
            c[j] = pv;
            sd[j] += pv * dist[j];
            sw[j] += pv * if dist[j] < window { dist[j] } else { window };
            dist[j] -= LANES as f32;
        }
    }
    let (mut td, mut tw) = (0.0f32, 0.0f32);
    for (j, v) in rest.iter_mut().enumerate() {
        let dj = dist[j];
        *v = simd::exp(*v - l);
        td += *v * dj;
        tw += *v * if dj < window { dj } else { window };
    }
    (sd.iter().sum::<f32>() + td, sw.iter().sum::<f32>() + tw)
}

/// x ← e^(x − l).
#[inline(always)]
fn exp_in_place(x: &mut [f32], l: f32) {
    x.iter_mut().for_each(|v| *v = simd::exp(*v - l));
}

/// Σ x with 8 independent partial sums.
#[inline(always)]
fn lane_sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for j in 0..LANES {
            acc[j] += c[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}
