//! Which kernel of cuda/decode_attention.cu attends a decode step's queries to the KV cache
//! ([`decode_attn_entry`]), and, in the tests, the per-group kernel (`decode_attn_gqa_*`) on the
//! host, lane by lane, against a direct softmax attention, and the q|k|v epilogue
//! (`decode_qkv_store_*`) statement by statement against the CPU's bias, RoPE and cache store.

use crate::cuda::device::Gpu;
use crate::cuda::plans::DecodeAttn;

/// The head-dim bucket (64 or 128) of the per-group decode attention for a GQA group of `group`
/// query heads of `head_dim` dims, or None where the per-head kernel runs (asked for, or a group
/// over 8 heads, or head dims over 128).
pub fn decode_attn_entry(kernel: DecodeAttn, group: usize, head_dim: usize) -> Option<usize> {
    match (kernel, group, head_dim) {
        (DecodeAttn::PerGroup, 1..=8, 1..=64) => Some(64),
        (DecodeAttn::PerGroup, 1..=8, 65..=128) => Some(128),
        _ => None,
    }
}

/// The fewest positions the per-group kernel gives a split of a row.
pub const MIN_SPLIT: usize = 128;
/// The most splits of a row.
pub const MAX_SPLITS: usize = 16;

/// How the per-group kernel splits each row's positions (flash-decoding): (splits, positions per
/// split) for a step of `rows` rows over `kv` kv heads with a cache of `max_len` positions on a
/// GPU of `sms` multiprocessors. Enough splits that the blocks fill the GPU twice over, each of at
/// least [`MIN_SPLIT`] positions (a multiple of 32), at most [`MAX_SPLITS`]; `forced` > 0 sets the
/// positions per split instead. A function of the step's shape only (not of its rows' lengths),
/// so a captured decode step stays right for every later step of its shape.
pub fn decode_splits(rows: usize, kv: usize, max_len: usize, sms: usize, forced: usize) -> (usize, usize) {
    let max_len = max_len.max(1);
    let split_len = match forced {
        0 => {
            let want = (2 * sms).div_ceil((rows * kv).max(1));
            // (rounded down: no split shorter than MIN_SPLIT)
            let splits = want.min(max_len / MIN_SPLIT).clamp(1, MAX_SPLITS);
            max_len.div_ceil(splits).next_multiple_of(32)
        }
        f => f,
    };
    (max_len.div_ceil(split_len), split_len)
}

/// Floats of the per-group kernel's partial results for a step of `rows` rows over `kv` kv heads
/// in `splits` splits at head-dim bucket `dm` (acc `[8][dm]`, m `[8]`, l `[8]` per row, kv head and
/// split; cuda/decode_attention.cu).
pub fn partial_len(rows: usize, kv: usize, splits: usize, dm: usize) -> usize {
    rows * kv * splits * (8 * dm + 16)
}

/// The device's decode attention kernel and split.
impl Gpu {
    /// The decode attention kernel from now on (the default, [`DecodeAttn::PerGroup`], reads the
    /// cache once per GQA group; `PerHead` is kept for comparison and as the fallback).
    pub fn set_decode_attn(&self, kernel: DecodeAttn) {
        self.decode_attn.set(kernel);
    }

    /// The decode attention kernel.
    pub fn decode_attn(&self) -> DecodeAttn {
        self.decode_attn.get()
    }

    /// Split every row's positions into splits of `len` positions in the per-group decode
    /// attention (0, the default: as many as fill the GPU, `cuda::decode_attn::decode_splits`);
    /// a fixed length lets a test run the split path on short sequences.
    pub fn set_decode_split(&self, len: usize) {
        self.decode_split.store(len, std::sync::atomic::Ordering::Relaxed);
    }

    /// The forced positions per split of the decode attention (0: chosen per step).
    pub fn decode_split(&self) -> usize {
        self.decode_split.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WARPS: usize = 4;

    /// One row's cached keys and values of one kv head ([len][d] each) and its group's queries
    /// ([group][d]).
    struct Case {
        q: Vec<Vec<f32>>,
        k: Vec<Vec<f32>>,
        v: Vec<Vec<f32>>,
    }

    fn warp_max(x: &[f32; 32]) -> f32 {
        x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
    }

    fn warp_sum(x: &[f32; 32]) -> f32 {
        // the butterfly's order: lanes combined pairwise at distances 16, 8, 4, 2, 1
        let mut v = *x;
        for o in [16, 8, 4, 2, 1] {
            let w = v;
            for (lane, x) in v.iter_mut().enumerate() {
                *x = w[lane] + w[lane ^ o];
            }
        }
        v[0]
    }

    /// `decode_attn_gqa<TC, DM>` for one block (kv head, row) with one split, statement for
    /// statement; returns out[group][d].
    fn emulate(c: &Case, dm: usize) -> Vec<Vec<f32>> {
        let part = emulate_split(c, dm, 0, c.k.len());
        part.iter().map(|(o, _, l)| o.iter().map(|x| if *l > 0.0 { x / l } else { 0.0 }).collect()).collect()
    }

    /// `decode_attn_merge<DM>` for one (row, kv head): the splits' (acc, m, l) in order.
    fn emulate_merge(splits: &[Vec<(Vec<f32>, f32, f32)>]) -> Vec<Vec<f32>> {
        let group = splits[0].len();
        (0..group)
            .map(|hh| {
                let mt = splits.iter().fold(f32::NEG_INFINITY, |a, z| a.max(z[hh].1));
                (0..splits[0][hh].0.len())
                    .map(|dd| {
                        let (mut lt, mut o) = (0.0f32, 0.0f32);
                        for z in splits {
                            let f = if z[hh].1 == f32::NEG_INFINITY { 0.0 } else { (z[hh].1 - mt).exp() };
                            lt += z[hh].2 * f;
                            o += z[hh].0[dd] * f;
                        }
                        if lt > 0.0 {
                            o / lt
                        } else {
                            0.0
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// The block of split [begin, min(len, end)) of `decode_attn_gqa<TC, DM>` for one (kv head,
    /// row), statement for statement: four warps taking chunks of 32 positions in turn, lanes as
    /// arrays; returns each head's unnormalised (acc [d], m, l), what the kernel writes to
    /// `partial` (its loops index as the kernel's do).
    #[allow(clippy::needless_range_loop)]
    fn emulate_split(c: &Case, dm: usize, begin: usize, end: usize) -> Vec<(Vec<f32>, f32, f32)> {
        let (group, d) = (c.q.len(), c.q[0].len());
        let end = end.min(c.k.len());
        let (g_max, dl) = (8, dm / 32);
        let scale = 1.0 / (d as f32).sqrt();
        let s_q: Vec<Vec<f32>> = (0..g_max)
            .map(|hh| (0..dm).map(|dd| if hh < group && dd < d { c.q[hh][dd] * scale } else { 0.0 }).collect())
            .collect();
        let mut s_m = vec![vec![f32::NEG_INFINITY; g_max]; WARPS];
        let mut s_l = vec![vec![0.0f32; g_max]; WARPS];
        let mut s_acc = vec![vec![vec![0.0f32; dm]; g_max]; WARPS];
        for warp in 0..WARPS {
            let mut m = vec![[f32::NEG_INFINITY; 32]; g_max];
            let mut l = vec![[0.0f32; 32]; g_max];
            let mut acc = vec![vec![[0.0f32; 32]; dl]; g_max];
            let mut j0 = begin + warp * 32;
            while j0 < end {
                let valid = |lane: usize| j0 + lane < end;
                let mut s = vec![[0.0f32; 32]; g_max];
                for lane in (0..32).filter(|&l| valid(l)) {
                    for dd in 0..d {
                        let kd = c.k[j0 + lane][dd];
                        for hh in 0..group {
                            s[hh][lane] += s_q[hh][dd] * kd;
                        }
                    }
                }
                let mut p = vec![[0.0f32; 32]; g_max];
                for hh in 0..group {
                    let sc: [f32; 32] =
                        std::array::from_fn(|lane| if valid(lane) { s[hh][lane] } else { f32::NEG_INFINITY });
                    let cmax = warp_max(&sc);
                    let mut pl = [0.0f32; 32];
                    for lane in 0..32 {
                        let mn = m[hh][lane].max(cmax);
                        pl[lane] = if valid(lane) { (sc[lane] - mn).exp() } else { 0.0 };
                    }
                    let total = warp_sum(&pl);
                    for lane in 0..32 {
                        let mn = m[hh][lane].max(cmax);
                        let corr = (m[hh][lane] - mn).exp();
                        l[hh][lane] = l[hh][lane] * corr + total;
                        for a in acc[hh].iter_mut() {
                            a[lane] *= corr;
                        }
                        m[hh][lane] = mn;
                    }
                    p[hh] = pl;
                }
                for jj in 0..32.min(end - j0) {
                    for lane in 0..32 {
                        for e in 0..dl {
                            let dd = lane + 32 * e;
                            let v = if dd < d { c.v[j0 + jj][dd] } else { 0.0 };
                            for hh in 0..group {
                                acc[hh][e][lane] += p[hh][jj] * v;
                            }
                        }
                    }
                }
                j0 += WARPS * 32;
            }
            for hh in 0..g_max {
                s_m[warp][hh] = m[hh][0];
                s_l[warp][hh] = l[hh][0];
                for e in 0..dl {
                    for lane in 0..32 {
                        s_acc[warp][hh][lane + 32 * e] = acc[hh][e][lane];
                    }
                }
            }
        }
        (0..group)
            .map(|hh| {
                let mt = (0..WARPS).fold(f32::NEG_INFINITY, |a, w| a.max(s_m[w][hh]));
                let (mut acc, mut lt) = (vec![0.0f32; d], 0.0f32);
                for w in 0..WARPS {
                    let f = if s_m[w][hh] == f32::NEG_INFINITY { 0.0 } else { (s_m[w][hh] - mt).exp() };
                    lt += s_l[w][hh] * f;
                    for (dd, o) in acc.iter_mut().enumerate() {
                        *o += s_acc[w][hh][dd] * f;
                    }
                }
                (acc, mt, lt)
            })
            .collect()
    }

    /// softmax(q·k / sqrt(d)) v in f64, one head.
    fn reference(q: &[f32], k: &[Vec<f32>], v: &[Vec<f32>]) -> Vec<f64> {
        let scale = 1.0 / (q.len() as f64).sqrt();
        let s: Vec<f64> =
            k.iter().map(|kr| q.iter().zip(kr).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale).collect();
        let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
        let total: f64 = w.iter().sum();
        (0..q.len()).map(|dd| w.iter().zip(v).map(|(p, vr)| p * vr[dd] as f64).sum::<f64>() / total).collect()
    }

    /// The per-group kernel's algorithm equals a direct softmax attention for every head of the
    /// group: lengths 1 (one warp, one valid lane), 31, 32, 33 and 200 (every warp, several chunks
    /// each, a partial last chunk), groups 1, 2, 7 and 8, head dims 16, 30, 64 and 128.
    #[test]
    fn the_per_group_decode_attention_equals_softmax_attention() {
        let mut rng = crate::rng::Rng::new(43);
        for (group, d, dm) in [(7, 64, 64), (1, 16, 64), (2, 30, 64), (8, 128, 128), (4, 100, 128)] {
            for len in [1, 31, 32, 33, 200] {
                let mut rows = |n: usize| -> Vec<Vec<f32>> {
                    (0..n).map(|_| (0..d).map(|_| 2.0 * rng.normal() as f32).collect()).collect()
                };
                let c = Case { q: rows(group), k: rows(len), v: rows(len) };
                let got = emulate(&c, dm);
                for (hh, row) in got.iter().enumerate() {
                    let want = reference(&c.q[hh], &c.k, &c.v);
                    let err = row.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, |m: f64, d| {
                        if d.is_nan() {
                            f64::INFINITY
                        } else {
                            m.max(d)
                        }
                    });
                    assert!(err < 1e-5, "group {group} d {d} len {len} head {hh}: off by {err:e}");
                }
            }
        }
    }

    /// A row's positions split over blocks (flash-decoding) and merged give the direct softmax
    /// attention too: splits of 32, 40 and 128 positions over a cache of 256, so rows of length
    /// 1, 33 and 200 leave trailing splits empty (m = -inf, l = 0, weight 0 in the merge); and
    /// dropping the merge's rescale of a split fails it.
    #[test]
    fn split_positions_merge_to_softmax_attention() {
        let mut rng = crate::rng::Rng::new(44);
        let max_len = 256;
        for (group, d, dm) in [(7, 64, 64), (2, 30, 64), (8, 128, 128)] {
            for len in [1, 33, 200] {
                let mut rows = |n: usize| -> Vec<Vec<f32>> {
                    (0..n).map(|_| (0..d).map(|_| 2.0 * rng.normal() as f32).collect()).collect()
                };
                let c = Case { q: rows(group), k: rows(len), v: rows(len) };
                for split_len in [32, 40, 128] {
                    let (splits, at) = decode_splits(1, 1, max_len, 132, split_len);
                    assert_eq!(at, split_len);
                    let parts: Vec<_> =
                        (0..splits).map(|z| emulate_split(&c, dm, z * split_len, (z + 1) * split_len)).collect();
                    let got = emulate_merge(&parts);
                    for (hh, row) in got.iter().enumerate() {
                        let want = reference(&c.q[hh], &c.k, &c.v);
                        let err = row.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
                        assert!(
                            err < 1e-5,
                            "group {group} d {d} len {len} split {split_len} head {hh}: off by {err:e}"
                        );
                    }
                    if len > split_len {
                        // a merge that adds the splits without rescaling them to the common maximum
                        let flat: Vec<Vec<f32>> = (0..group)
                            .map(|hh| {
                                let lt: f32 = parts.iter().map(|z| z[hh].2).sum();
                                (0..d).map(|dd| parts.iter().map(|z| z[hh].0[dd]).sum::<f32>() / lt).collect()
                            })
                            .collect();
                        let want = reference(&c.q[0], &c.k, &c.v);
                        let err = flat[0].iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
                        assert!(err > 1e-3, "an unrescaled merge went unnoticed (len {len}, split {split_len})");
                    }
                }
            }
        }
    }

    /// Splits fill the GPU twice over where rows are few, never go under 128 positions or over 16
    /// splits, leave large batches unsplit, cover the cache, and follow a forced length.
    #[test]
    fn rows_split_where_few_blocks_would_leave_the_gpu_idle() {
        // 256 rows × 2 kv heads = 512 blocks ≥ 2 × 132: one split
        assert_eq!(decode_splits(256, 2, 272, 132, 0), (1, 288));
        // 16 rows × 2 = 32 blocks: 9 wanted, 2 fit 272 positions at ≥ 128 (136, rounded up to 32s)
        assert_eq!(decode_splits(16, 2, 272, 132, 0), (2, 160));
        // just past one split's worth: no split shorter than 128
        assert_eq!(decode_splits(1, 2, 130, 132, 0), (1, 160));
        assert_eq!(decode_splits(1, 2, 257, 132, 0), (2, 160));
        // one row at 8192 positions: capped at 16 splits of 512
        assert_eq!(decode_splits(1, 2, 8192, 132, 0), (16, 512));
        assert_eq!(decode_splits(4, 2, 100, 132, 0), (1, 128));
        assert_eq!(decode_splits(4, 2, 100, 132, 32), (4, 32));
        for (rows, kv, max_len) in [(1, 1, 1), (3, 2, 4096), (64, 4, 2048), (7, 1, 333), (1, 2, 129), (2, 1, 383)] {
            let (splits, len) = decode_splits(rows, kv, max_len, 132, 0);
            assert!((1..=MAX_SPLITS).contains(&splits) && len % 32 == 0, "{rows} {kv} {max_len}");
            assert!(splits * len >= max_len && (splits - 1) * len < max_len, "{rows} {kv} {max_len}: {splits} × {len}");
            assert!(splits == 1 || len >= MIN_SPLIT);
        }
    }

    /// Groups up to 8 and head dims up to 128 take the per-group kernel unless the per-head one is
    /// asked for; the rest fall back to the per-head kernel.
    #[test]
    fn the_per_group_kernel_runs_where_it_fits() {
        assert_eq!(decode_attn_entry(DecodeAttn::PerGroup, 7, 64), Some(64));
        assert_eq!(decode_attn_entry(DecodeAttn::PerGroup, 1, 100), Some(128));
        assert_eq!(decode_attn_entry(DecodeAttn::PerGroup, 9, 64), None);
        assert_eq!(decode_attn_entry(DecodeAttn::PerGroup, 4, 256), None);
        assert_eq!(decode_attn_entry(DecodeAttn::PerHead, 7, 64), None);
    }

    /// `decode_qkv_store<TC>` on the host, statement for statement: one block per row, its work
    /// items (rotation pairs of the q and k heads, then the values) strided over 128 threads.
    /// `bf16` rounds what is stored in the cache as `store_f` does. Returns how many times each
    /// cache element was written.
    #[allow(clippy::too_many_arguments)]
    fn emulate_qkv_store(
        qkv: &mut [f32],
        bias: Option<&[f32]>,
        (k_cache, v_cache): (&mut [f32], &mut [f32]),
        slots: &[usize],
        positions: &[u32],
        rope: &crate::tensor::cpu::ops::RopeTable,
        (h, kv, d, max_len): (usize, usize, usize, usize),
        bf16: bool,
    ) -> Vec<u32> {
        let store = |x: f32| if bf16 { half::bf16::from_f32(x).to_f32() } else { x };
        let mut writes = vec![0u32; 2 * k_cache.len()];
        let qkv_stride = (h + 2 * kv) * d;
        let half = d / 2;
        for (i, &slot) in slots.iter().enumerate() {
            let (p, s) = (positions[i] as usize, slot);
            let (cs, sn) = (&rope.cos[p * half..], &rope.sin[p * half..]);
            let row = &mut qkv[i * qkv_stride..(i + 1) * qkv_stride];
            let pairs = (h + kv) * half;
            let v_col = (h + kv) * d;
            let items = pairs + kv * d;
            for thread in 0..128 {
                for idx in (thread..items).step_by(128) {
                    if idx < pairs {
                        let hh = idx / half;
                        let j = idx - hh * half;
                        let (lo, hi) = (hh * d + j, hh * d + j + half);
                        let (mut a, mut bb) = (row[lo], row[hi]);
                        if let Some(bias) = bias {
                            a += bias[lo];
                            bb += bias[hi];
                        }
                        let (c, sv) = (cs[j], sn[j]);
                        let (ra, rb) = (a * c - bb * sv, bb * c + a * sv);
                        if hh < h {
                            row[lo] = ra;
                            row[hi] = rb;
                        } else {
                            let dst = ((s * kv + (hh - h)) * max_len + p) * d + j;
                            k_cache[dst] = store(ra);
                            k_cache[dst + half] = store(rb);
                            writes[dst] += 1;
                            writes[dst + half] += 1;
                        }
                    } else {
                        let c = idx - pairs;
                        let (g, dd) = (c / d, c % d);
                        let mut v = row[v_col + c];
                        if let Some(bias) = bias {
                            v += bias[v_col + c];
                        }
                        let dst = ((s * kv + g) * max_len + p) * d + dd;
                        v_cache[dst] = store(v);
                        writes[k_cache.len() + dst] += 1;
                    }
                }
            }
        }
        writes
    }

    /// The fused epilogue equals the three passes it replaces (add_bias_f32, rope_f32,
    /// kv_cache_store), as the CPU makes them: the rotated queries bit for bit in qkv, the rotated
    /// keys and the values in their slot and position (bf16-rounded for a bf16 cache), each
    /// written once, nothing else in the cache touched, the keys and values in qkv left as they
    /// were; with and without a bias, over several GQA shapes (a work-item count over and under the
    /// block's 128 threads) and a step that prefills one slot beside decoding others.
    #[test]
    fn the_qkv_epilogue_equals_bias_rope_and_the_cache_store() {
        use crate::tensor::cpu::ops::{self, RopeTable};
        let mut rng = crate::rng::Rng::new(17);
        for (h, kv, d) in [(2usize, 1usize, 8usize), (14, 2, 64), (4, 4, 16), (8, 2, 128)] {
            for (with_bias, bf16) in [(false, false), (true, false), (true, true)] {
                let (slots_n, max_len) = (3, 12);
                let rope = RopeTable::new(d, 10_000.0, max_len);
                let qkv_w = (h + 2 * kv) * d;
                // slot 1 prefills 3 positions, slots 0 and 2 decode one each
                let (slots, positions) = (vec![1usize, 1, 1, 0, 2], vec![0u32, 1, 2, 7, 11]);
                let mut rand = |n: usize| (0..n).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect::<Vec<f32>>();
                let qkv0 = rand(slots.len() * qkv_w);
                let bias = with_bias.then(|| rand(qkv_w));
                let cache_len = slots_n * kv * max_len * d;
                let sentinel = 1234.5f32;
                // the three passes, on the CPU
                let mut want = qkv0.clone();
                if let Some(bias) = &bias {
                    for row in want.chunks_mut(qkv_w) {
                        row.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
                    }
                }
                ops::rope_rows(&mut want, qkv_w, h + kv, &positions, &rope, false);
                let (mut want_k, mut want_v) = (vec![sentinel; cache_len], vec![sentinel; cache_len]);
                let round = |x: f32| if bf16 { half::bf16::from_f32(x).to_f32() } else { x };
                for (i, row) in want.chunks(qkv_w).enumerate() {
                    for c in 0..kv * d {
                        let dst = ((slots[i] * kv + c / d) * max_len + positions[i] as usize) * d + c % d;
                        want_k[dst] = round(row[h * d + c]);
                        want_v[dst] = round(row[(h + kv) * d + c]);
                    }
                }
                let mut got = qkv0.clone();
                let (mut k, mut v) = (vec![sentinel; cache_len], vec![sentinel; cache_len]);
                let shape = (h, kv, d, max_len);
                let writes = emulate_qkv_store(
                    &mut got,
                    bias.as_deref(),
                    (&mut k, &mut v),
                    &slots,
                    &positions,
                    &rope,
                    shape,
                    bf16,
                );
                let what = format!("H {h} KV {kv} D {d} bias {with_bias} bf16 {bf16}");
                for (i, (g_row, (w_row, q0_row))) in
                    got.chunks(qkv_w).zip(want.chunks(qkv_w).zip(qkv0.chunks(qkv_w))).enumerate()
                {
                    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&g_row[..h * d]), bits(&w_row[..h * d]), "{what}: row {i}'s queries");
                    assert_eq!(bits(&g_row[h * d..]), bits(&q0_row[h * d..]), "{what}: row {i}'s k|v in qkv changed");
                }
                assert_eq!(
                    k.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    want_k.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    "{what}: keys"
                );
                assert_eq!(
                    v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    want_v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    "{what}: values"
                );
                let stored = slots.len() * kv * d;
                assert_eq!(writes.iter().filter(|&&w| w == 1).count(), 2 * stored, "{what}: elements written once");
                assert!(writes.iter().all(|&w| w <= 1), "{what}: an element written twice");
            }
        }
    }
}
