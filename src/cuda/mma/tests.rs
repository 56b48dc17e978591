//! The tensor-core attention kernels (cuda/attention_mma.cu, attention_mma_bwd.cu) emulated on
//! the host over the warp-level product of the parent module: their copies, fragment loads,
//! tiling, masking and online softmax, checked against the CPU attention of the rounded inputs.

use super::*;
use crate::attention::AttnShape;
use crate::cuda::DkdvPlan;
use crate::tensor::{Backend, Cpu};

/// max |a − b|, a NaN difference counted as infinite (f32::max alone would drop it).
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = (x - y).abs();
            if d.is_nan() {
                f32::INFINITY
            } else {
                d
            }
        })
        .fold(0.0f32, f32::max)
}

const BQ: usize = 64;
const BK: usize = 64;

/// The packed q|k|v rows of a batch and where each sequence starts.
struct Case {
    qkv: Vec<f32>,
    cu: Vec<usize>,
    shape: AttnShape,
}

/// Butterfly over the 4 lanes of a row group (`__shfl_xor_sync` with 1, then 2).
fn quad_reduce(x: &mut [f32; 32], f: impl Fn(f32, f32) -> f32) {
    for mask in [1, 2] {
        let y = *x;
        for lane in 0..32 {
            x[lane] = f(y[lane], y[lane ^ mask]);
        }
    }
}

/// attention_mma.cu's `attn_pack_bf16`, statement for statement over its grid-stride index
/// (groups of 8 outputs): it writes every output exactly once, and what it writes is
/// [`pack_bf16_heads`] (head dims 16, 30, 64, 100 in DM 64 and 128, q|k|v and dO layouts).
#[test]
fn the_pack_kernel_writes_every_padded_row_once() {
    let mut rng = crate::rng::Rng::new(37);
    for (n, heads, hd, dm) in [(5, 8, 16, 64), (3, 4, 30, 64), (4, 18, 64, 64), (2, 6, 100, 128)] {
        let x_stride = heads * hd + 3 * (hd % 2); // a wider row stride than the heads need
        let x: Vec<f32> = (0..n * x_stride).map(|_| rng.normal() as f32).collect();
        let mut out = vec![0u16; n * heads * dm];
        let mut writes = vec![0u32; n * heads * dm];
        let per_row = dm / 8;
        for i in 0..n * heads * per_row {
            let row = i / per_row;
            let d0 = (i - row * per_row) * 8;
            let (t, hh) = (row / heads, row % heads);
            let src = t * x_stride + hh * hd;
            for e in 0..4 {
                let d = d0 + 2 * e;
                let lo = if d < hd { x[src + d] } else { 0.0 };
                let hi = if d + 1 < hd { x[src + d + 1] } else { 0.0 };
                let w = pack_bf16(lo, hi);
                for (k, half) in [(0, w as u16), (1, (w >> 16) as u16)] {
                    out[row * dm + d + k] = half;
                    writes[row * dm + d + k] += 1;
                }
            }
        }
        assert!(
            writes.iter().all(|&w| w == 1),
            "{n} {heads} {hd} {dm}: an output written {:?} times",
            writes.iter().max()
        );
        assert_eq!(out, pack_bf16_heads(&x, x_stride, n, (heads, hd, dm)), "{n} {heads} {hd} {dm}");
    }
}

/// The tile copies' index (mma.cuh `copy_rows<DM, NT>`, wgmma.cuh `copy_rows_cm<DM, NT>`): for
/// both head-dim buckets and blocks of one or two warpgroups, thread t keeps one column and steps
/// RS = NT / (DM / 8) rows, each step RS · DM elements on in the tile (the kernels' `dst + i * RS *
/// DM`, which must be where the layout puts that row); together the threads cover every 16-byte
/// segment of the tile exactly once, each copy 16-byte aligned and inside its row.
#[test]
fn the_tile_copies_cover_each_row_segment_once() {
    // wgmma.cuh's core-matrix layout: row r's segment c at ((r / 8) (DM / 8) + c) 64 + (r % 8) 8
    let cm_at = |dm: usize, r: usize, c: usize| ((r >> 3) * (dm / 8) + c) * 64 + (r & 7) * 8;
    for dm in [64, 128] {
        let c = dm / 8;
        for nt in [128, 256] {
            let rs = nt / c;
            let (mut hits, mut hits_cm) = (vec![0u32; 64 * dm], vec![0u32; 64 * dm]);
            for t in 0..nt {
                // copy_rows: column t % C of rows t / C + i RS
                let (col, rt) = ((t % c) * 8, t / c);
                // copy_rows_cm: segment (t / 8) % C of rows (t % 8) | (t / 8C) 8, + i RS
                let (seg, rt_cm) = ((t >> 3) % c, (t & 7) | ((t / (8 * c)) << 3));
                for i in 0..64 / rs {
                    let (r, at) = (rt + i * rs, tile_at(dm, rt, col) + i * rs * dm);
                    assert_eq!(at, tile_at(dm, r, col), "DM {dm}, {nt} threads: row {r}'s step left the layout");
                    assert_eq!(at % 8, 0, "a copy is not 16-byte aligned");
                    assert!(at / dm == r, "DM {dm}: row {r}'s segment {col} left its row");
                    let (r_cm, at_cm) = (rt_cm + i * rs, cm_at(dm, rt_cm, seg) + i * rs * dm);
                    assert_eq!(at_cm, cm_at(dm, r_cm, seg), "DM {dm}, {nt} threads: core-matrix row {r_cm}");
                    for e in 0..8 {
                        hits[at + e] += 1;
                        hits_cm[at_cm + e] += 1;
                    }
                }
            }
            for (name, h) in [("copy_rows", &hits), ("copy_rows_cm", &hits_cm)] {
                assert!(
                    h.iter().all(|&x| x == 1),
                    "{name} DM {dm}, {nt} threads: an element copied {:?} times",
                    h.iter().max()
                );
            }
        }
    }
}

/// The ldmatrix loads of the kernels (`frag_a`, `frag_bt2`, `frag_b2`) from a tile that
/// `copy_rows` filled hand every lane the registers the PTX fragment layout assigns it from the
/// unpermuted matrix, element for element, for random matrices of both widths, at every block
/// position the kernels use.
#[test]
fn ldmatrix_loads_equal_the_element_wise_fragments() {
    let mut rng = crate::rng::Rng::new(31);
    for dm in [64, 128] {
        let m: Vec<u16> = (0..64 * dm).map(|_| rng.next_u64() as u16).collect();
        let mut tile = vec![0u16; 64 * dm];
        copy_rows(&mut tile, dm, &m, (0, dm), 0, 64);
        assert_ne!(tile, m, "DM {dm}: the tile is not permuted");
        for r0 in (0..64).step_by(16) {
            for c0 in (0..dm).step_by(16) {
                assert_eq!(ldsm_a(&tile, dm, r0, c0), frag_a(&m, dm, r0, c0), "A at ({r0}, {c0})");
                let [b0, b1] = ldsm_bt2(&tile, dm, r0, c0);
                assert_eq!(b0, frag_bt(&m, dm, r0, c0), "Bᵀ at ({r0}, {c0})");
                assert_eq!(b1, frag_bt(&m, dm, r0 + 8, c0), "Bᵀ at ({}, {c0})", r0 + 8);
                let [b0, b1] = ldsm_b2(&tile, dm, r0, c0);
                assert_eq!(b0, frag_b(&m, dm, r0, c0), "B at ({r0}, {c0})");
                assert_eq!(b1, frag_b(&m, dm, r0, c0 + 8), "B at ({r0}, {})", c0 + 8);
            }
        }
    }
    // the loads differ from one another: a transposed load is not a plain one
    let tile: Vec<u16> = (0..64 * 72).map(|i| i as u16).collect();
    assert_ne!(ldmatrix_x4(&tile, |l| l * 72, false), ldmatrix_x4(&tile, |l| l * 72, true));
}

/// Every ldmatrix phase of the kernels (8 lanes giving 8 row addresses of 16 bytes) reads 8
/// distinct 16-byte bank groups of shared memory (32 banks of 4 bytes): no bank conflict, at
/// every block position of both tile widths; the copies' phases (8 consecutive threads) write 8
/// distinct groups too. Unpermuted rows of 128 or 256 bytes would put all 8 in one group.
#[test]
fn the_tile_permutation_leaves_no_bank_conflict() {
    let group = |at: usize| (at * 2 % 128) / 16;
    let distinct = |ats: &[usize]| {
        let mut g: Vec<usize> = ats.iter().map(|&a| group(a)).collect();
        g.sort_unstable();
        g.dedup();
        g.len() == ats.len()
    };
    for dm in [64, 128] {
        for r0 in (0..64).step_by(16) {
            for c0 in (0..dm).step_by(16) {
                for (name, addr) in [
                    ("frag_a", a_addr as fn(usize, usize, usize, usize) -> usize),
                    ("frag_bt2", bt2_addr),
                    ("frag_b2", b2_addr),
                ] {
                    for phase in 0..4 {
                        let ats: Vec<usize> = (8 * phase..8 * phase + 8).map(|l| addr(dm, r0, c0, l)).collect();
                        assert!(distinct(&ats), "DM {dm} {name} at ({r0}, {c0}) phase {phase}: {ats:?}");
                    }
                }
                let plain: Vec<usize> = (0..8).map(|l| (r0 + l) * dm + c0).collect();
                assert!(!distinct(&plain), "DM {dm}: the unpermuted rows should conflict");
            }
        }
        let c = dm / 8;
        for first in (0..64 * c).step_by(8) {
            let ats: Vec<usize> = (first..first + 8).map(|idx| tile_at(dm, idx / c, idx % c * 8)).collect();
            assert!(distinct(&ats), "DM {dm}: copies {first}.. write one bank group twice");
        }
    }
}

/// attention_mma.cu's `attn_fwd_tc<MmaOps, DM>`, statement for statement: one block per (query tile
/// of 64, head, sequence), four warps of 16 rows, lanes as arrays. Returns (out, lse).
fn emulate(case: &Case, dm: usize) -> (Vec<f32>, Vec<f32>) {
    let AttnShape { num_heads: nh, num_kv_heads: kvh, head_dim: hd } = case.shape;
    let stride = (nh + 2 * kvh) * hd;
    let n = *case.cu.last().unwrap();
    let (nt_n, kd_n, no_n) = (BK / 8, dm / 16, dm / 8);
    let (mut out, mut lse) = (vec![f32::NAN; n * nh * hd], vec![f32::NAN; n * nh]);
    let sl2 = std::f32::consts::LOG2_E / (hd as f32).sqrt();
    // attn_pack_bf16 of q|k|v, then copy_rows of head `head`'s rows from it
    let heads = nh + 2 * kvh;
    let packed = pack_bf16_heads(&case.qkv, stride, n, (heads, hd, dm));
    let load = |s: &mut Vec<u16>, head: usize, r0: usize, start: usize, len: usize| {
        copy_rows(s, dm, &packed, (start * heads * dm + head * dm, heads * dm), r0, len);
    };
    for seq in 0..case.cu.len() - 1 {
        let (start, len) = (case.cu[seq], case.cu[seq + 1] - case.cu[seq]);
        for h in 0..nh {
            let g = h / (nh / kvh);
            for q0 in (0..len).step_by(BQ) {
                let (mut qs, mut ks, mut vs) = (vec![0u16; BQ * dm], vec![0u16; BK * dm], vec![0u16; BK * dm]);
                load(&mut qs, h, q0, start, len);
                for warp in 0..4 {
                    let wr = warp * 16;
                    let qa: Vec<[FragA; 32]> = (0..kd_n).map(|kd| ldsm_a(&qs, dm, wr, kd * 16)).collect();
                    let mut o = vec![[[0.0f32; 4]; 32]; no_n];
                    let (mut m0, mut m1) = ([f32::NEG_INFINITY; 32], [f32::NEG_INFINITY; 32]);
                    let (mut l0, mut l1) = ([0.0f32; 32], [0.0f32; 32]);
                    let row = |lane: usize, e: usize| q0 + wr + lane / 4 + if e < 2 { 0 } else { 8 };
                    let kend = (q0 + BQ).min(len);
                    for k0 in (0..kend).step_by(BK) {
                        load(&mut ks, nh + g, k0, start, len);
                        load(&mut vs, nh + kvh + g, k0, start, len);
                        let mut s = vec![[[0.0f32; 4]; 32]; nt_n];
                        for (pair, st) in s.chunks_exact_mut(2).enumerate() {
                            for (kd, qf) in qa.iter().enumerate() {
                                let [b0, b1] = ldsm_bt2(&ks, dm, pair * 16, kd * 16);
                                mma_16816(&mut st[0], qf, &b0);
                                mma_16816(&mut st[1], qf, &b1);
                            }
                        }
                        let (mut mx0, mut mx1) = ([f32::NEG_INFINITY; 32], [f32::NEG_INFINITY; 32]);
                        // the kernel's unmasked blocks (wholly before the query block)
                        let inside = k0 + BK - 1 <= q0 && k0 + BK <= len;
                        for (nt, st) in s.iter_mut().enumerate() {
                            for (lane, sl) in st.iter_mut().enumerate() {
                                for (e, se) in sl.iter_mut().enumerate() {
                                    let j = k0 + nt * 8 + 2 * (lane % 4) + (e & 1);
                                    let i = row(lane, e);
                                    assert!(!inside || (j <= i && j < len), "an unmasked block holds a masked score");
                                    let x = if inside || (j <= i && j < len) { *se * sl2 } else { f32::NEG_INFINITY };
                                    *se = x;
                                    let mx = if e < 2 { &mut mx0[lane] } else { &mut mx1[lane] };
                                    *mx = mx.max(x);
                                }
                            }
                        }
                        quad_reduce(&mut mx0, f32::max);
                        quad_reduce(&mut mx1, f32::max);
                        for lane in 0..32 {
                            let (mn0, mn1) = (m0[lane].max(mx0[lane]), m1[lane].max(mx1[lane]));
                            let c0 = if mn0 == f32::NEG_INFINITY { 1.0 } else { (m0[lane] - mn0).exp2() };
                            let c1 = if mn1 == f32::NEG_INFINITY { 1.0 } else { (m1[lane] - mn1).exp2() };
                            l0[lane] *= c0;
                            l1[lane] *= c1;
                            for on in o.iter_mut() {
                                on[lane][0] *= c0;
                                on[lane][1] *= c0;
                                on[lane][2] *= c1;
                                on[lane][3] *= c1;
                            }
                            for st in s.iter_mut() {
                                for (e, se) in st[lane].iter_mut().enumerate() {
                                    let mn = if e < 2 { mn0 } else { mn1 };
                                    let x = *se;
                                    let p = if !inside && x == f32::NEG_INFINITY { 0.0 } else { (x - mn).exp2() };
                                    *se = p;
                                    if e < 2 {
                                        l0[lane] += p
                                    } else {
                                        l1[lane] += p
                                    }
                                }
                            }
                            (m0[lane], m1[lane]) = (mn0, mn1);
                        }
                        accumulate_product(&mut o, &s, &vs, dm);
                    }
                    quad_reduce(&mut l0, |a, b| a + b);
                    quad_reduce(&mut l1, |a, b| a + b);
                    for lane in 0..32 {
                        let tg = lane % 4;
                        for (e2, (m, l)) in [(m0[lane], l0[lane]), (m1[lane], l1[lane])].into_iter().enumerate() {
                            let i = row(lane, 2 * e2);
                            if i >= len {
                                continue;
                            }
                            let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
                            if tg == 0 {
                                lse[(start + i) * nh + h] = (m + l.log2()) * std::f32::consts::LN_2;
                            }
                            for (nn, on) in o.iter().enumerate() {
                                let d = nn * 8 + 2 * tg;
                                for (dd, x) in [(d, on[lane][2 * e2]), (d + 1, on[lane][2 * e2 + 1])] {
                                    if dd < hd {
                                        out[(start + i) * nh * hd + h * hd + dd] = x * inv;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    (out, lse)
}

/// Random packed q|k|v rows of sequences of 1, 150, 64 and 70 tokens (one and several tiles,
/// a tile exactly), and the batch the CPU attention reads them with.
fn packed_case(rng: &mut crate::rng::Rng, nh: usize, kvh: usize, hd: usize) -> (Case, crate::model::Batch) {
    let (mut cu, mut b) = (vec![0], crate::model::Batch::new());
    for l in [1usize, 150, 64, 70] {
        cu.push(cu.last().unwrap() + l);
        b.push(&vec![0; l], &vec![0; l]).unwrap();
    }
    let n = *cu.last().unwrap();
    let qkv: Vec<f32> = (0..n * (nh + 2 * kvh) * hd).map(|_| rng.normal() as f32).collect();
    (Case { qkv, cu, shape: AttnShape { num_heads: nh, num_kv_heads: kvh, head_dim: hd } }, b)
}

/// The emulated tensor-core forward equals the CPU attention of the bf16-rounded q, k, v: the
/// log-sum-exp within f32 rounding, the output within the bf16 rounding of P (2⁻⁸ relative);
/// causal masking across several query and key tiles, GQA, head dims 16 (padded), 64 and 128,
/// packed sequences of 1 to 150 tokens; every output element written.
#[test]
fn the_tensor_core_forward_equals_the_cpu_attention_of_rounded_inputs() {
    let mut rng = crate::rng::Rng::new(19);
    for (nh, kvh, hd, dm) in [(4, 2, 16, 64), (2, 1, 30, 64), (2, 1, 64, 64), (2, 2, 128, 128)] {
        let (case, b) = packed_case(&mut rng, nh, kvh, hd);
        let (shape, n) = (case.shape, b.len());
        let (out, lse) = emulate(&case, dm);
        let rounded: Vec<f32> = case.qkv.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect();
        let (mut want, mut want_lse) = (vec![0.0; n * nh * hd], vec![0.0; n * nh]);
        let mut scratch = vec![0.0; Cpu.attn_scratch_len(shape, n)];
        Cpu.attention_forward(&mut want, &mut want_lse, &mut scratch, &rounded, &b.packed(), shape).unwrap();
        assert!(out.iter().chain(&lse).all(|x| x.is_finite()), "head dim {hd}: an element was not written");
        let err = max_abs_diff;
        let (e_out, e_lse) = (err(&out, &want), err(&lse, &want_lse));
        assert!(e_lse < 1e-4, "head dim {hd}: lse off by {e_lse}");
        assert!(e_out < 1e-2, "head dim {hd}: output off by {e_out}");
        // and the rounding of P is visible: not the f32 attention of the rounded inputs
        assert!(e_out > 0.0, "head dim {hd}: P was not rounded");
    }
}

/// `copy_rows<DM>` of head `head`'s rows [r0, r0 + 64) of the sequence at `start` from a
/// packed matrix of `heads` heads.
fn load_rows(
    s: &mut [u16],
    dm: usize,
    (x, heads): (&[u16], usize),
    head: usize,
    r0: usize,
    (start, len): (usize, usize),
) {
    copy_rows(s, dm, x, (start * heads * dm + head * dm, heads * dm), r0, len);
}

/// attention_mma_bwd.cu's `attn_bwd_dq_tc<MmaOps, DM>` and `attn_bwd_dkdv_tc<MmaOps, DM>` (with `plan`'s
/// `heads_per_block`, and `attn_bwd_group_sum_f32` after it for the per-head plan) statement
/// for statement, after the f32 delta kernel: the packed dqkv ([N, (H + 2KV)·D], NaN where
/// unwritten).
fn emulate_bwd(case: &Case, dm: usize, plan: DkdvPlan, (out, lse, dout): (&[f32], &[f32], &[f32])) -> Vec<f32> {
    let AttnShape { num_heads: nh, num_kv_heads: kvh, head_dim: hd } = case.shape;
    let stride = (nh + 2 * kvh) * hd;
    let n = *case.cu.last().unwrap();
    let (nt_n, no_n) = (8, dm / 8);
    let scale = 1.0 / (hd as f32).sqrt();
    let (log2e, sl2) = (std::f32::consts::LOG2_E, std::f32::consts::LOG2_E / (hd as f32).sqrt());
    let mut delta = vec![0.0f32; n * nh];
    for t in 0..n {
        for h in 0..nh {
            let r = t * nh * hd + h * hd;
            delta[t * nh + h] = (0..hd).map(|d| dout[r + d] * out[r + d]).sum();
        }
    }
    // attn_pack_bf16 of q|k|v and of dO
    let qkv16 = pack_bf16_heads(&case.qkv, stride, n, (nh + 2 * kvh, hd, dm));
    let do16 = pack_bf16_heads(dout, nh * hd, n, (nh, hd, dm));
    let (pq, po) = ((&qkv16[..], nh + 2 * kvh), (&do16[..], nh));
    let mut dqkv = vec![f32::NAN; n * stride];
    let group = nh / kvh;
    let (ys, per) = if plan == DkdvPlan::PerHead { (nh, 1) } else { (kvh, group) };
    let (mut pk, mut pv) = (vec![f32::NAN; n * ys * hd], vec![f32::NAN; n * ys * hd]);
    let zero = || vec![[[0.0f32; 4]; 32]; no_n];
    let row = |base: usize, lane: usize, e: usize| base + lane / 4 + if e < 2 { 0 } else { 8 };
    for seq in 0..case.cu.len() - 1 {
        let sl = (case.cu[seq], case.cu[seq + 1] - case.cu[seq]);
        let (start, len) = sl;
        let mut tiles = vec![vec![0u16; 64 * dm]; 4];
        // dQ: blocks of 64 query rows of one head
        for h in 0..nh {
            let g = h / (nh / kvh);
            for q0 in (0..len).step_by(64) {
                load_rows(&mut tiles[0], dm, pq, h, q0, sl);
                load_rows(&mut tiles[1], dm, po, h, q0, sl);
                for warp in 0..4 {
                    let wr = warp * 16;
                    let mut acc = zero();
                    for k0 in (0..(q0 + 64).min(len)).step_by(64) {
                        load_rows(&mut tiles[2], dm, pq, nh + g, k0, sl);
                        load_rows(&mut tiles[3], dm, pq, nh + kvh + g, k0, sl);
                        let (qs, os, ks, vs) = (&tiles[0], &tiles[1], &tiles[2], &tiles[3]);
                        let (mut s, dp) = row_products2(dm, (qs, ks), (os, vs), wr);
                        let inside = k0 + 63 <= q0 && q0 + 64 <= len;
                        for nt in 0..nt_n {
                            for lane in 0..32 {
                                for e in 0..4 {
                                    let j = k0 + nt * 8 + 2 * (lane % 4) + (e & 1);
                                    let i = row(q0 + wr, lane, e);
                                    let (l, dl) = if i < len {
                                        (lse[(start + i) * nh + h] * log2e, delta[(start + i) * nh + h])
                                    } else {
                                        (0.0, 0.0)
                                    };
                                    assert!(
                                        !inside || (j <= i && i < len),
                                        "an unmasked dQ block holds a masked score"
                                    );
                                    let p = if inside || (j <= i && i < len) {
                                        (s[nt][lane][e] * sl2 - l).exp2()
                                    } else {
                                        0.0
                                    };
                                    s[nt][lane][e] = p * (dp[nt][lane][e] - dl);
                                }
                            }
                        }
                        accumulate_product(&mut acc, &s, ks, dm);
                    }
                    for lane in 0..32 {
                        for e in 0..4 {
                            let (i, d) = (row(q0 + wr, lane, e), (e & 1) + 2 * (lane % 4));
                            for (nn, an) in acc.iter().enumerate() {
                                if i < len && nn * 8 + d < hd {
                                    dqkv[(start + i) * stride + h * hd + nn * 8 + d] = an[lane][e] * scale;
                                }
                            }
                        }
                    }
                }
            }
        }
        // dK, dV: blocks of 64 keys against `per` consecutive query heads of one group, the
        // block's y times `per` the first (per = the group: y is the kv head, the sums are dK
        // and dV; per = 1: y is the query head, the sums are partials for the group sum below)
        for y in 0..ys {
            let (h_first, g) = (y * per, y * per / group);
            for k0 in (0..len).step_by(64) {
                load_rows(&mut tiles[0], dm, pq, nh + g, k0, sl);
                load_rows(&mut tiles[1], dm, pq, nh + kvh + g, k0, sl);
                let (mut dka, mut dva) = (vec![zero(); 4], vec![zero(); 4]);
                for h in h_first..h_first + per {
                    for q0 in (k0..len).step_by(64) {
                        load_rows(&mut tiles[2], dm, pq, h, q0, sl);
                        load_rows(&mut tiles[3], dm, po, h, q0, sl);
                        let at = |c: usize| (start + q0 + c) * nh + h;
                        let ls: Vec<f32> =
                            (0..64).map(|c| if q0 + c < len { lse[at(c)] * log2e } else { 0.0 }).collect();
                        let ds: Vec<f32> = (0..64).map(|c| if q0 + c < len { delta[at(c)] } else { 0.0 }).collect();
                        let (ks, vs, qs, os) = (&tiles[0], &tiles[1], &tiles[2], &tiles[3]);
                        for warp in 0..4 {
                            let wr = warp * 16;
                            let (mut st, mut dpt) = row_products2(dm, (ks, qs), (vs, os), wr);
                            let inside = k0 + 63 <= q0 && q0 + 64 <= len;
                            for nt in 0..nt_n {
                                for lane in 0..32 {
                                    for e in 0..4 {
                                        let c = nt * 8 + 2 * (lane % 4) + (e & 1);
                                        let (i, j) = (q0 + c, row(k0 + wr, lane, e));
                                        assert!(
                                            !inside || (j <= i && i < len),
                                            "an unmasked dK/dV block holds a masked score"
                                        );
                                        let p = if inside || (j <= i && i < len) {
                                            (st[nt][lane][e] * sl2 - ls[c]).exp2()
                                        } else {
                                            0.0
                                        };
                                        st[nt][lane][e] = p;
                                        dpt[nt][lane][e] = p * (dpt[nt][lane][e] - ds[c]);
                                    }
                                }
                            }
                            accumulate_product(&mut dva[warp], &st, os, dm);
                            accumulate_product(&mut dka[warp], &dpt, qs, dm);
                        }
                    }
                }
                for warp in 0..4 {
                    for lane in 0..32 {
                        for e in 0..4 {
                            let (j, d) = (row(k0 + warp * 16, lane, e), (e & 1) + 2 * (lane % 4));
                            for nn in 0..no_n {
                                if j < len && nn * 8 + d < hd {
                                    let r = ((start + j) * ys + y) * hd + nn * 8 + d;
                                    pk[r] = dka[warp][nn][lane][e] * scale;
                                    pv[r] = dva[warp][nn][lane][e];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    // attn_bwd_group_sum_f32 (per-head plan): each kv head's sum of its group's partials, in
    // head order; with the grouped plan the sums are 0 + the block's own
    let share = ys / kvh;
    for t in 0..n {
        for g in 0..kvh {
            for d in 0..hd {
                let sum = |p: &[f32]| (0..share).fold(0.0f32, |acc, hh| acc + p[(t * ys + g * share + hh) * hd + d]);
                dqkv[t * stride + (nh + g) * hd + d] = sum(&pk);
                dqkv[t * stride + (nh + kvh + g) * hd + d] = sum(&pv);
            }
        }
    }
    dqkv
}

/// The emulated tensor-core backward (dQ by query blocks; dK, dV by key blocks summed over the
/// group's heads) equals the CPU backward of the bf16-rounded inputs within bf16 rounding, on
/// the shapes of the forward test; every element of dqkv written.
#[test]
fn the_tensor_core_backward_equals_the_cpu_backward_of_rounded_inputs() {
    use crate::attention::AttnSaved;
    let mut rng = crate::rng::Rng::new(29);
    for (nh, kvh, hd, dm) in [(4, 2, 16, 64), (2, 1, 30, 64), (2, 1, 64, 64), (4, 2, 128, 128)] {
        let (case, b) = packed_case(&mut rng, nh, kvh, hd);
        let (shape, n, stride) = (case.shape, b.len(), (nh + 2 * kvh) * hd);
        let dout: Vec<f32> = (0..n * nh * hd).map(|_| rng.normal() as f32).collect();
        let round = |v: &[f32]| v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect::<Vec<f32>>();
        let (rq, rdo) = (round(&case.qkv), round(&dout));
        let (mut out, mut lse) = (vec![0.0; n * nh * hd], vec![0.0; n * nh]);
        let mut scratch = vec![0.0; Cpu.attn_scratch_len(shape, n)];
        Cpu.attention_forward(&mut out, &mut lse, &mut scratch, &rq, &b.packed(), shape).unwrap();
        let mut want = vec![0.0; n * stride];
        let saved = AttnSaved { qkv: &rq[..], out: &out[..], lse: &lse[..] };
        Cpu.attention_backward(&mut want, &mut scratch, &rdo, saved, &b.packed(), shape).unwrap();
        let scale = want.iter().fold(1.0f32, |m, x| m.max(x.abs()));
        let max_diff = max_abs_diff;
        let mut plans = Vec::new();
        for plan in [DkdvPlan::PerHead, DkdvPlan::Grouped] {
            let got = emulate_bwd(&case, dm, plan, (&out, &lse, &dout));
            assert!(got.iter().all(|x| x.is_finite()), "head dim {hd} {plan:?}: an element of dqkv was not written");
            let err = max_diff(&got, &want);
            println!("head dim {hd} {plan:?}: dqkv max error {err:.3e} (scale {scale:.2})");
            assert!(err < 2e-2 * scale, "head dim {hd} {plan:?}: dqkv off by {err} (scale {scale})");
            plans.push(got);
        }
        // the plans differ only in the order of f32 additions over the group's heads
        let diff = max_diff(&plans[0], &plans[1]);
        assert!(diff < 1e-5 * scale, "head dim {hd}: the plans differ by {diff}");
        assert!(diff > 0.0 || nh == kvh, "head dim {hd}: the grouped plan was not exercised");
    }
}
