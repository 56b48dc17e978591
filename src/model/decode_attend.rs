//! The CPU decode's attention kernel: one row's query heads against its slot's cached keys and
//! values (`model::decode::KvCache`: keys transposed in blocks of [`KB`] positions, values
//! row-major), with scores and outputs accumulated in registers. Each score and output is one sum
//! in a fixed order, whatever the tiling, so a row's result does not depend on the batch.

use crate::tensor::cpu::simd::{self, simd_kernel};

/// Positions per key block of the cache (one AVX2 register of scores).
pub(crate) const KB: usize = 8;
/// Key blocks (scores) kept in registers per pass.
const BLOCKS: usize = 8;

/// o[..W] = Σ_j s_j · v[j·stride..][..W], each column summed over j in order; W/8 independent
/// vector sums keep the adds from waiting on each other.
#[inline(always)]
fn value_tile<const W: usize>(o: &mut [f32], s: &[f32], v: &[f32], stride: usize) {
    let mut acc = [0.0f32; W];
    if let Some(last) = s.len().checked_sub(1) {
        assert!(v.len() >= last * stride + W, "value_tile: {} values for {} rows", v.len(), s.len());
    }
    let mut row = v.as_ptr();
    for &pj in s {
        for (l, a) in acc.iter_mut().enumerate() {
            // SAFETY: row j spans [j·stride, j·stride + W) ⊂ v (asserted above for the last j).
            *a += pj * unsafe { *row.add(l) };
        }
        row = row.wrapping_add(stride);
    }
    o[..W].copy_from_slice(&acc);
}

/// Scores of NB key blocks (8 positions each) for one query head: out[b·8 + l] = Σ_p q[p]·k, one
/// sum over p in order per score.
#[inline(always)]
fn score_blocks<const NB: usize>(qh: &[f32], kblk: &[f32], d: usize, out: &mut [f32]) {
    if d == 64 {
        // the common head size as a constant: the blocks' offsets become immediates rather
        // than a chain of adds the loads wait on
        score_blocks_d::<NB, 64>(qh, kblk, out)
    } else {
        score_blocks_d::<NB, 0>(qh, kblk, out)
    }
}

/// `score_blocks` for head size `D` (0: `qh.len()`).
#[inline(always)]
fn score_blocks_d<const NB: usize, const D: usize>(qh: &[f32], kblk: &[f32], out: &mut [f32]) {
    let d = if D == 0 { qh.len() } else { D };
    let mut acc = [[0.0f32; KB]; NB];
    let kblk = &kblk[..NB * d * KB];
    let qh = &qh[..d];
    // one pointer per block, all advanced together: block bi's row p is blocks[bi] + p·KB
    let blocks: [*const f32; NB] = std::array::from_fn(|bi| kblk[bi * d * KB..].as_ptr());
    for (p, &qp) in qh.iter().enumerate() {
        for (a, &blk) in acc.iter_mut().zip(&blocks) {
            for (l, x) in a.iter_mut().enumerate() {
                // SAFETY: p < d, so [(bi·d + p)·KB, +KB) lies within kblk (NB·d·KB long).
                *x += qp * unsafe { *blk.add(p * KB + l) };
            }
        }
    }
    for (bi, a) in acc.iter().enumerate() {
        out[bi * KB..(bi + 1) * KB].copy_from_slice(a);
    }
}

/// Sizes of one [`attend_row`] call: head dim, query heads per KV head, cached positions to
/// attend to, and the score scale (1/√d).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttendShape {
    pub(crate) d: usize,
    pub(crate) group: usize,
    pub(crate) len: usize,
    pub(crate) scale: f32,
}

simd_kernel! {
    /// Attention of one row's query heads against cached positions 0..len of its slot:
    /// out_h = softmax(scale · q_h·K) V for every head h (query head h reads KV head h / group).
    /// `kt`: the slot's keys [KV, t_cap/8, D, 8]; `v`: its values [KV, max_len, D].
    /// Each score and output is one sum over D (resp. positions) in order, whatever the tiling.
    /// (An AVX-512VL build holding 16 key blocks in its 32 registers ran the attention alone
    /// 5 % faster but generation 15 % slower: it stays AVX2.)
    pub(crate) fn attend_row(out: &mut [f32], q: &[f32], kt: &[f32], v: &[f32], shape: AttendShape, scores: &mut [f32]) -> () {
        let AttendShape { d, group, len, scale } = shape;
        let kv_dim = q.len() / group;
        let blocks = len.div_ceil(KB);
        for (h, (o, qh)) in out.chunks_mut(d).zip(q.chunks(d)).enumerate() {
            let g = h / group;
            let kg = &kt[g * d * (kt.len() / kv_dim)..];
            // scores of up to BLOCKS key blocks at a time, the blocks split evenly over the
            // passes (9 blocks: 5 + 4, not 8 + 1: a pass takes as long for one block as for
            // eight, its additions chained on each other); the padding lanes of the last block
            // read stale keys and are dropped
            let passes = blocks.div_ceil(BLOCKS);
            let mut jb = 0;
            for pass in 0..passes {
                let nb = blocks / passes + usize::from(pass < blocks % passes);
                let kblk = &kg[jb * d * KB..(jb + nb) * d * KB];
                let out = &mut scores[jb * KB..(jb + nb) * KB];
                // a block count fixed at compile time keeps the accumulators in registers
                match nb {
                    1 => score_blocks::<1>(qh, kblk, d, out),
                    2 => score_blocks::<2>(qh, kblk, d, out),
                    3 => score_blocks::<3>(qh, kblk, d, out),
                    4 => score_blocks::<4>(qh, kblk, d, out),
                    5 => score_blocks::<5>(qh, kblk, d, out),
                    6 => score_blocks::<6>(qh, kblk, d, out),
                    7 => score_blocks::<7>(qh, kblk, d, out),
                        _ => score_blocks::<8>(qh, kblk, d, out),
                }
                jb += nb;
            }
            let s = &mut scores[..len];
            s.iter_mut().for_each(|x| *x *= scale);
            let m = simd::max(s);
            let inv = 1.0 / simd::exp_shift_sum(s, m);
            s.iter_mut().for_each(|x| *x *= inv);
            // outputs 64 columns (eight independent 8-lane sums), then 32, at a time
            let vg = &v[g * (v.len() / (kv_dim / d))..];
            let mut c0 = 0;
            while c0 + 64 <= d {
                value_tile::<64>(&mut o[c0..c0 + 64], s, &vg[c0..], d);
                c0 += 64;
            }
            while c0 + 32 <= d {
                value_tile::<32>(&mut o[c0..c0 + 32], s, &vg[c0..], d);
                c0 += 32;
            }
            if c0 < d {
                o[c0..].fill(0.0);
                for (j, &pj) in s.iter().enumerate() {
                    for (x, &vv) in o[c0..].iter_mut().zip(&vg[j * d + c0..j * d + d]) {
                        *x += pj * vv;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [−1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..n).map(|_| (2.0 * rng.uniform() - 1.0) as f32).collect()
    }

    /// softmax(scale · q·K) V per head in f64 from row-major K, V [len, KV·D].
    fn reference(q: &[f32], k: &[f32], v: &[f32], d: usize, group: usize, len: usize, scale: f32) -> Vec<f64> {
        let kv_dim = q.len() / group;
        let mut out = vec![0.0f64; q.len()];
        for (h, o) in out.chunks_mut(d).enumerate() {
            let g = h / group;
            let s: Vec<f64> = (0..len)
                .map(|j| {
                    (0..d).map(|p| q[h * d + p] as f64 * k[j * kv_dim + g * d + p] as f64).sum::<f64>() * scale as f64
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for (j, w) in e.iter().enumerate() {
                for (p, x) in o.iter_mut().enumerate() {
                    *x += w / z * v[j * kv_dim + g * d + p] as f64;
                }
            }
        }
        out
    }

    #[test]
    fn attend_row_matches_reference_on_ragged_shapes() {
        // (head dim, query heads, kv heads, cached positions, capacity)
        let shapes: [(usize, usize, usize, usize, usize); 5] =
            [(64, 4, 2, 37, 40), (40, 3, 3, 1, 8), (16, 4, 1, 9, 17), (72, 2, 1, 130, 130), (8, 2, 2, 33, 33)];
        for (t, &(d, heads, kv_heads, len, max_len)) in shapes.iter().enumerate() {
            let (kv_dim, group) = (kv_heads * d, heads / kv_heads);
            let t_cap = max_len.div_ceil(KB) * KB;
            let q = values(heads * d, 10 + t as u64);
            // keys and values for every position of the slot: rows past `len` must not matter
            let k = values(max_len * kv_dim, 20 + t as u64);
            let v = values(max_len * kv_dim, 30 + t as u64);
            let mut vh = vec![f32::NAN; kv_dim * max_len];
            let mut kt = vec![f32::NAN; kv_dim * t_cap];
            for pos in 0..max_len {
                for g in 0..kv_heads {
                    for p in 0..d {
                        kt[g * d * t_cap + (pos / KB) * d * KB + p * KB + pos % KB] = k[pos * kv_dim + g * d + p];
                        vh[(g * max_len + pos) * d + p] = v[pos * kv_dim + g * d + p];
                    }
                }
            }
            let scale = 1.0 / (d as f32).sqrt();
            let mut out = vec![0.0; heads * d];
            let mut scores = vec![0.0; t_cap];
            attend_row(&mut out, &q, &kt, &vh, AttendShape { d, group, len, scale }, &mut scores);
            let want = reference(&q, &k, &v, d, group, len, scale);
            for (i, (&o, &w)) in out.iter().zip(&want).enumerate() {
                assert!((o as f64 - w).abs() < 1e-5, "shape {t}, element {i}: {o} vs {w}");
            }
        }
    }
}
