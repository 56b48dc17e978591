//! The warp-level tensor-core product of cuda/attention_mma.cu (`mma.sync.m16n8k16` with bf16
//! operands and f32 accumulators) on the host, lane by lane, with the PTX ISA's fragment layout;
//! and the attention kernel's algorithm over it, so that its tiling, masking, online softmax and
//! fragment indexing are checked against the CPU attention without a GPU.

/// One lane's A fragment (four registers of two bf16), B fragment (two registers) and C/D
/// fragment (four f32) of a warp's m16n8k16 product.
pub type FragA = [u32; 4];
pub type FragB = [u32; 2];
pub type FragC = [f32; 4];

fn lo(r: u32) -> f32 {
    half::bf16::from_bits(r as u16).to_f32()
}

fn hi(r: u32) -> f32 {
    half::bf16::from_bits((r >> 16) as u16).to_f32()
}

/// Two f32 as one register of two bf16 (round to nearest even), `lo` in the low half.
pub fn pack_bf16(lo: f32, hi: f32) -> u32 {
    half::bf16::from_f32(lo).to_bits() as u32 | (half::bf16::from_f32(hi).to_bits() as u32) << 16
}

/// d += a · b for the 32 lanes of a warp: A is 16 × 16, B 16 × 8, D 16 × 8, each lane holding the
/// elements the PTX ISA assigns it (lane = 4·gr + tg): A register 0 = row gr, columns 2tg and
/// 2tg + 1; register 1 = row gr + 8; registers 2 and 3 the same rows at columns + 8. B register 0
/// = rows (k) 2tg, 2tg + 1 of column gr; register 1 = rows + 8. D elements 0, 1 = row gr, columns
/// 2tg, 2tg + 1; elements 2, 3 = row gr + 8.
pub fn mma_16816(d: &mut [FragC; 32], a: &[FragA; 32], b: &[FragB; 32]) {
    let (mut am, mut bm) = ([[0.0f32; 16]; 16], [[0.0f32; 8]; 16]);
    for lane in 0..32 {
        let (gr, tg) = (lane / 4, lane % 4);
        for (reg, (row, col)) in
            [(gr, 2 * tg), (gr + 8, 2 * tg), (gr, 2 * tg + 8), (gr + 8, 2 * tg + 8)].into_iter().enumerate()
        {
            am[row][col] = lo(a[lane][reg]);
            am[row][col + 1] = hi(a[lane][reg]);
        }
        bm[2 * tg][gr] = lo(b[lane][0]);
        bm[2 * tg + 1][gr] = hi(b[lane][0]);
        bm[2 * tg + 8][gr] = lo(b[lane][1]);
        bm[2 * tg + 9][gr] = hi(b[lane][1]);
    }
    for (lane, dl) in d.iter_mut().enumerate() {
        let (gr, tg) = (lane / 4, lane % 4);
        for (e, (row, col)) in
            [(gr, 2 * tg), (gr, 2 * tg + 1), (gr + 8, 2 * tg), (gr + 8, 2 * tg + 1)].into_iter().enumerate()
        {
            // bf16 products are exact in f32; the hardware's summation order is unspecified
            dl[e] += (0..16).map(|k| am[row][k] * bm[k][col]).sum::<f32>();
        }
    }
}

fn word(s: &[u16], at: usize) -> u32 {
    s[at] as u32 | (s[at + 1] as u32) << 16
}

/// `ldmatrix.sync.aligned.m8n8.x4.shared.b16` (with `.trans` when `trans`) for a warp: lane l
/// gives `row(l)`, the index in `s` of row l % 8 of matrix l / 8 (8 consecutive elements); matrix
/// i lands in register i of every lane. Lane l receives the elements (row l / 4, columns
/// 2 (l % 4), + 1), the lower column in the low half; with `.trans`, (rows 2 (l % 4), + 1; column
/// l / 4).
pub fn ldmatrix_x4(s: &[u16], row: impl Fn(usize) -> usize, trans: bool) -> [FragA; 32] {
    let m: Vec<[[u16; 8]; 8]> =
        (0..4).map(|i| std::array::from_fn(|r| std::array::from_fn(|c| s[row(8 * i + r) + c]))).collect();
    std::array::from_fn(|lane| {
        let (g, t) = (lane / 4, 2 * (lane % 4));
        std::array::from_fn(|i| {
            let (a, b) = if trans { (m[i][t][g], m[i][t + 1][g]) } else { (m[i][g][t], m[i][g][t + 1]) };
            a as u32 | (b as u32) << 16
        })
    })
}

/// attention_mma.cu's `frag_a` (ldmatrix.x4: matrices (r0, c0), (r0 + 8, c0), (r0, c0 + 8),
/// (r0 + 8, c0 + 8)) for every lane: the A fragment of the 16 × 16 block at (r0, c0).
pub fn ldsm_a(s: &[u16], lds: usize, r0: usize, c0: usize) -> [FragA; 32] {
    ldmatrix_x4(s, |l| (r0 + l % 8 + ((l / 8) & 1) * 8) * lds + c0 + (l / 16) * 8, false)
}

/// `frag_bt2` (ldmatrix.x4): the B fragments of key tiles n0 and n0 + 8, transposes of the 8 × 16
/// blocks of `s` at (n0, c0) and (n0 + 8, c0).
pub fn ldsm_bt2(s: &[u16], lds: usize, n0: usize, c0: usize) -> [[FragB; 32]; 2] {
    split_pair(ldmatrix_x4(s, |l| (n0 + l % 8 + (l / 16) * 8) * lds + c0 + ((l / 8) & 1) * 8, false))
}

/// `frag_b2` (ldmatrix.x4.trans): the B fragments of the 16 × 8 blocks of `s` at (k0, n0) and
/// (k0, n0 + 8).
pub fn ldsm_b2(s: &[u16], lds: usize, k0: usize, n0: usize) -> [[FragB; 32]; 2] {
    split_pair(ldmatrix_x4(s, |l| (k0 + l % 8 + ((l / 8) & 1) * 8) * lds + n0 + (l / 16) * 8, true))
}

/// Registers 0, 1 and 2, 3 of an ldmatrix.x4 as two B fragments.
fn split_pair(r: [FragA; 32]) -> [[FragB; 32]; 2] {
    [std::array::from_fn(|l| [r[l][0], r[l][1]]), std::array::from_fn(|l| [r[l][2], r[l][3]])]
}

/// attention_mma.cu's `attn_pack_bf16` on the host: `heads` rows of `hd` f32 per token (row stride
/// `x_stride`) as [n, heads, dm] bf16 bits, rounded to nearest even, zero past `hd`.
pub fn pack_bf16_heads(x: &[f32], x_stride: usize, n: usize, (heads, hd, dm): (usize, usize, usize)) -> Vec<u16> {
    let mut out = vec![0u16; n * heads * dm];
    for (row, o) in out.chunks_exact_mut(dm).enumerate() {
        let (t, hh) = (row / heads, row % heads);
        for (d, od) in o.iter_mut().take(hd).enumerate() {
            *od = half::bf16::from_f32(x[t * x_stride + hh * hd + d]).to_bits();
        }
    }
    out
}

/// mma.cuh's `copy_rows<DM>`: rows [r0, r0 + 64) of the packed matrix `x` from element `base`
/// (row stride `stride`) into the tile `s` (row stride dm + 8); rows at or past `len` zero.
pub fn copy_rows(s: &mut [u16], dm: usize, x: &[u16], (base, stride): (usize, usize), r0: usize, len: usize) {
    for r in 0..64 {
        let row = &mut s[r * (dm + 8)..r * (dm + 8) + dm];
        if r0 + r < len {
            row.copy_from_slice(&x[base + (r0 + r) * stride..][..dm]);
        } else {
            row.fill(0);
        }
    }
}

/// The A fragment of the 16 × 16 block at (r0, c0) of the row-major bf16 matrix `s` (row stride
/// `lds`), element by element from the PTX fragment layout: what [`ldsm_a`] must load.
pub fn frag_a(s: &[u16], lds: usize, r0: usize, c0: usize) -> [FragA; 32] {
    std::array::from_fn(|lane| {
        let p0 = (r0 + lane / 4) * lds + c0 + 2 * (lane % 4);
        let p1 = p0 + 8 * lds;
        [word(s, p0), word(s, p1), word(s, p0 + 8), word(s, p1 + 8)]
    })
}

/// The B fragment that is the transpose of the 8 × 16 block of `s` at (n0, c0), element by element.
pub fn frag_bt(s: &[u16], lds: usize, n0: usize, c0: usize) -> [FragB; 32] {
    std::array::from_fn(|lane| {
        let p = (n0 + lane / 4) * lds + c0 + 2 * (lane % 4);
        [word(s, p), word(s, p + 8)]
    })
}

/// The B fragment that is the 16 × 8 block of `s` at (k0, n0), element by element.
pub fn frag_b(s: &[u16], lds: usize, k0: usize, n0: usize) -> [FragB; 32] {
    std::array::from_fn(|lane| {
        let c = (k0 + 2 * (lane % 4)) * lds + n0 + lane / 4;
        let at = |r: usize| s[c + r * lds] as u32;
        [at(0) | at(1) << 16, at(8) | at(9) << 16]
    })
}

/// `c_to_a`: the A fragment of 16 columns held as two C fragments (columns 0..7, 8..15).
pub fn c_to_a(lo: &[FragC; 32], hi: &[FragC; 32]) -> [FragA; 32] {
    std::array::from_fn(|l| {
        let (x, y) = (lo[l], hi[l]);
        [pack_bf16(x[0], x[1]), pack_bf16(x[2], x[3]), pack_bf16(y[0], y[1]), pack_bf16(y[2], y[3])]
    })
}

/// A warp's C fragments of 8 columns each.
pub type Tiles = Vec<[FragC; 32]>;

/// attention_mma.cu's `row_products2<DM, 8>`: the warp's rows [r0, r0 + 16) of X1 times the
/// transposed 64 rows of Y1 over the `dm` head dims (8 tiles of 8), and the same of X2 and Y2.
pub fn row_products2(dm: usize, (x1, y1): (&[u16], &[u16]), (x2, y2): (&[u16], &[u16]), r0: usize) -> (Tiles, Tiles) {
    let lds = dm + 8;
    let (mut s, mut t) = (vec![[[0.0f32; 4]; 32]; 8], vec![[[0.0f32; 4]; 32]; 8]);
    for kd in 0..dm / 16 {
        let (a1, a2) = (ldsm_a(x1, lds, r0, kd * 16), ldsm_a(x2, lds, r0, kd * 16));
        for nt in (0..8).step_by(2) {
            let [b0, b1] = ldsm_bt2(y1, lds, nt * 8, kd * 16);
            mma_16816(&mut s[nt], &a1, &b0);
            mma_16816(&mut s[nt + 1], &a1, &b1);
            let [b0, b1] = ldsm_bt2(y2, lds, nt * 8, kd * 16);
            mma_16816(&mut t[nt], &a2, &b0);
            mma_16816(&mut t[nt + 1], &a2, &b1);
        }
    }
    (s, t)
}

/// `accumulate_product<NO, NT>`: acc[n] += C · Y[:, 8n .. 8n + 8), C held as C fragments.
pub fn accumulate_product(acc: &mut [[FragC; 32]], c: &[[FragC; 32]], y: &[u16], lds: usize) {
    for kk in 0..c.len() / 2 {
        let a = c_to_a(&c[2 * kk], &c[2 * kk + 1]);
        for (n, pair) in acc.chunks_exact_mut(2).enumerate() {
            let [b0, b1] = ldsm_b2(y, lds, kk * 16, n * 16);
            mma_16816(&mut pair[0], &a, &b0);
            mma_16816(&mut pair[1], &a, &b1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::AttnShape;
    use crate::cuda::DkdvPlan;
    use crate::tensor::{Backend, Cpu};

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

    /// mma.cuh's `copy_rows<DM>` index: 128 threads striding over 64 rows of DM / 8 copies each
    /// cover every 16-byte segment of the tile's DM columns exactly once, never the padding.
    #[test]
    fn the_tile_copies_cover_each_row_segment_once() {
        for dm in [64, 128] {
            let (lds, c) = (dm + 8, dm / 8);
            let mut hits = vec![0u32; 64 * lds];
            for thread in 0..128 {
                for idx in (thread..64 * c).step_by(128) {
                    let (r, col) = (idx / c, (idx - (idx / c) * c) * 8);
                    assert_eq!((r * lds + col) % 8, 0, "a copy is not 16-byte aligned");
                    for e in 0..8 {
                        hits[r * lds + col + e] += 1;
                    }
                }
            }
            for r in 0..64 {
                assert!(hits[r * lds..r * lds + dm].iter().all(|&h| h == 1), "DM {dm} row {r}");
                assert!(hits[r * lds + dm..(r + 1) * lds].iter().all(|&h| h == 0), "DM {dm} row {r}: padding");
            }
        }
    }

    /// The ldmatrix loads of the kernels (`frag_a`, `frag_bt2`, `frag_b2`) hand every lane the
    /// registers the PTX fragment layout assigns it, element for element, for random shared-memory
    /// tiles of both row strides, at every block position the kernels use.
    #[test]
    fn ldmatrix_loads_equal_the_element_wise_fragments() {
        let mut rng = crate::rng::Rng::new(31);
        for dm in [64, 128] {
            let lds = dm + 8;
            let tile: Vec<u16> = (0..64 * lds).map(|_| rng.next_u64() as u16).collect();
            for r0 in (0..64).step_by(16) {
                for c0 in (0..dm).step_by(16) {
                    assert_eq!(ldsm_a(&tile, lds, r0, c0), frag_a(&tile, lds, r0, c0), "A at ({r0}, {c0})");
                    let [b0, b1] = ldsm_bt2(&tile, lds, r0, c0);
                    assert_eq!(b0, frag_bt(&tile, lds, r0, c0), "Bᵀ at ({r0}, {c0})");
                    assert_eq!(b1, frag_bt(&tile, lds, r0 + 8, c0), "Bᵀ at ({}, {c0})", r0 + 8);
                    let [b0, b1] = ldsm_b2(&tile, lds, r0, c0);
                    assert_eq!(b0, frag_b(&tile, lds, r0, c0), "B at ({r0}, {c0})");
                    assert_eq!(b1, frag_b(&tile, lds, r0, c0 + 8), "B at ({r0}, {})", c0 + 8);
                }
            }
        }
        // the loads differ from one another: a transposed load is not a plain one
        let tile: Vec<u16> = (0..64 * 72).map(|i| i as u16).collect();
        assert_ne!(ldmatrix_x4(&tile, |l| l * 72, false), ldmatrix_x4(&tile, |l| l * 72, true));
    }

    /// attention_mma.cu's `attn_fwd_mma<DM>`, statement for statement: one block per (query tile
    /// of 64, head, sequence), four warps of 16 rows, lanes as arrays. Returns (out, lse).
    fn emulate(case: &Case, dm: usize) -> (Vec<f32>, Vec<f32>) {
        let AttnShape { num_heads: nh, num_kv_heads: kvh, head_dim: hd } = case.shape;
        let stride = (nh + 2 * kvh) * hd;
        let n = *case.cu.last().unwrap();
        let (lds, nt_n, kd_n, no_n) = (dm + 8, BK / 8, dm / 16, dm / 8);
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
                    let (mut qs, mut ks, mut vs) = (vec![0u16; BQ * lds], vec![0u16; BK * lds], vec![0u16; BK * lds]);
                    load(&mut qs, h, q0, start, len);
                    for warp in 0..4 {
                        let wr = warp * 16;
                        let qa: Vec<[FragA; 32]> = (0..kd_n).map(|kd| ldsm_a(&qs, lds, wr, kd * 16)).collect();
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
                                    let [b0, b1] = ldsm_bt2(&ks, lds, pair * 16, kd * 16);
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
                                        assert!(
                                            !inside || (j <= i && j < len),
                                            "an unmasked block holds a masked score"
                                        );
                                        let x =
                                            if inside || (j <= i && j < len) { *se * sl2 } else { f32::NEG_INFINITY };
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
                            accumulate_product(&mut o, &s, &vs, lds);
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
            let err = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
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

    /// attention_mma.cu's `attn_bwd_dq_mma<DM>` and `attn_bwd_dkdv_mma<DM>` (with `plan`'s
    /// `heads_per_block`, and `attn_bwd_group_sum_f32` after it for the per-head plan) statement
    /// for statement, after the f32 delta kernel: the packed dqkv ([N, (H + 2KV)·D], NaN where
    /// unwritten).
    fn emulate_bwd(case: &Case, dm: usize, plan: DkdvPlan, (out, lse, dout): (&[f32], &[f32], &[f32])) -> Vec<f32> {
        let AttnShape { num_heads: nh, num_kv_heads: kvh, head_dim: hd } = case.shape;
        let stride = (nh + 2 * kvh) * hd;
        let n = *case.cu.last().unwrap();
        let (lds, nt_n, no_n) = (dm + 8, 8, dm / 8);
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
            let mut tiles = vec![vec![0u16; 64 * lds]; 4];
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
                            accumulate_product(&mut acc, &s, ks, lds);
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
                                accumulate_product(&mut dva[warp], &st, os, lds);
                                accumulate_product(&mut dka[warp], &dpt, qs, lds);
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
                    let sum =
                        |p: &[f32]| (0..share).fold(0.0f32, |acc, hh| acc + p[(t * ys + g * share + hh) * hd + d]);
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
            let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            let mut plans = Vec::new();
            for plan in [DkdvPlan::PerHead, DkdvPlan::Grouped] {
                let got = emulate_bwd(&case, dm, plan, (&out, &lse, &dout));
                assert!(
                    got.iter().all(|x| x.is_finite()),
                    "head dim {hd} {plan:?}: an element of dqkv was not written"
                );
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
}
