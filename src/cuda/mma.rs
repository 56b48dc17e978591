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

/// mma.cuh's `tile_at<DM>`: the index in a 64 × `dm` shared-memory tile of row `r`'s 8 elements
/// from column `c` (a multiple of 8). The tiles are unpadded; segment c / 8 of row r is stored at
/// segment (c / 8) ^ (r mod 8) of its group of 8, so the 8 consecutive rows an ldmatrix phase
/// reads fall in distinct banks.
pub fn tile_at(dm: usize, r: usize, c: usize) -> usize {
    let seg = c / 8;
    r * dm + ((seg & !7) | ((seg ^ r) & 7)) * 8
}

/// The tile index lane `l` gives `frag_a`'s ldmatrix.x4 (matrices (r0, c0), (r0 + 8, c0),
/// (r0, c0 + 8), (r0 + 8, c0 + 8)).
pub fn a_addr(dm: usize, r0: usize, c0: usize, l: usize) -> usize {
    tile_at(dm, r0 + l % 8 + ((l / 8) & 1) * 8, c0 + (l / 16) * 8)
}

/// The tile index lane `l` gives `frag_bt2`'s ldmatrix.x4 (matrices (n0, c0), (n0, c0 + 8),
/// (n0 + 8, c0), (n0 + 8, c0 + 8)).
pub fn bt2_addr(dm: usize, n0: usize, c0: usize, l: usize) -> usize {
    tile_at(dm, n0 + l % 8 + (l / 16) * 8, c0 + ((l / 8) & 1) * 8)
}

/// The tile index lane `l` gives `frag_b2`'s ldmatrix.x4.trans (matrices (k0, n0), (k0 + 8, n0),
/// (k0, n0 + 8), (k0 + 8, n0 + 8)).
pub fn b2_addr(dm: usize, k0: usize, n0: usize, l: usize) -> usize {
    tile_at(dm, k0 + l % 8 + ((l / 8) & 1) * 8, n0 + (l / 16) * 8)
}

/// attention_mma.cu's `frag_a` for every lane: the A fragment of the 16 × 16 block at (r0, c0) of
/// the tile `s` (64 × `dm`, stored as [`tile_at`] says).
pub fn ldsm_a(s: &[u16], dm: usize, r0: usize, c0: usize) -> [FragA; 32] {
    ldmatrix_x4(s, |l| a_addr(dm, r0, c0, l), false)
}

/// `frag_bt2`: the B fragments of key tiles n0 and n0 + 8, transposes of the 8 × 16 blocks of
/// the tile `s` at (n0, c0) and (n0 + 8, c0).
pub fn ldsm_bt2(s: &[u16], dm: usize, n0: usize, c0: usize) -> [[FragB; 32]; 2] {
    split_pair(ldmatrix_x4(s, |l| bt2_addr(dm, n0, c0, l), false))
}

/// `frag_b2` (ldmatrix.x4.trans): the B fragments of the 16 × 8 blocks of the tile `s` at
/// (k0, n0) and (k0, n0 + 8).
pub fn ldsm_b2(s: &[u16], dm: usize, k0: usize, n0: usize) -> [[FragB; 32]; 2] {
    split_pair(ldmatrix_x4(s, |l| b2_addr(dm, k0, n0, l), true))
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

/// What mma.cuh's `copy_rows<DM, NT>` copies (its thread mapping is checked in tests.rs): rows
/// [r0, r0 + 64) of the packed matrix `x` from element `base` (row stride `stride`) into the tile
/// `s` (64 × dm, as [`tile_at`] says); rows at or past `len` zero.
pub fn copy_rows(s: &mut [u16], dm: usize, x: &[u16], (base, stride): (usize, usize), r0: usize, len: usize) {
    for r in 0..64 {
        for c in (0..dm).step_by(8) {
            let seg = &mut s[tile_at(dm, r, c)..][..8];
            if r0 + r < len {
                seg.copy_from_slice(&x[base + (r0 + r) * stride + c..][..8]);
            } else {
                seg.fill(0);
            }
        }
    }
}

/// The A fragment of the 16 × 16 block at (r0, c0) of the row-major bf16 matrix `s` (row stride
/// `lds`, unpermuted), element by element from the PTX fragment layout: what [`ldsm_a`] must load
/// from the tile that holds this matrix.
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
    let (mut s, mut t) = (vec![[[0.0f32; 4]; 32]; 8], vec![[[0.0f32; 4]; 32]; 8]);
    for kd in 0..dm / 16 {
        let (a1, a2) = (ldsm_a(x1, dm, r0, kd * 16), ldsm_a(x2, dm, r0, kd * 16));
        for nt in (0..8).step_by(2) {
            let [b0, b1] = ldsm_bt2(y1, dm, nt * 8, kd * 16);
            mma_16816(&mut s[nt], &a1, &b0);
            mma_16816(&mut s[nt + 1], &a1, &b1);
            let [b0, b1] = ldsm_bt2(y2, dm, nt * 8, kd * 16);
            mma_16816(&mut t[nt], &a2, &b0);
            mma_16816(&mut t[nt + 1], &a2, &b1);
        }
    }
    (s, t)
}

/// `accumulate_product<NO, NT>`: `acc[n]` += C · Y[:, 8n .. 8n + 8), C held as C fragments, Y a tile
/// of `dm` = 8 NO columns.
pub fn accumulate_product(acc: &mut [[FragC; 32]], c: &[[FragC; 32]], y: &[u16], dm: usize) {
    for kk in 0..c.len() / 2 {
        let a = c_to_a(&c[2 * kk], &c[2 * kk + 1]);
        for (n, pair) in acc.chunks_exact_mut(2).enumerate() {
            let [b0, b1] = ldsm_b2(y, dm, kk * 16, n * 16);
            mma_16816(&mut pair[0], &a, &b0);
            mma_16816(&mut pair[1], &a, &b1);
        }
    }
}

#[cfg(test)]
mod tests;
