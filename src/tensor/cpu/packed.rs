//! Products with a weight matrix packed once and reused many times: the decode path multiplies
//! the same weights by a few dozen activation rows per step, where a general GEMM spends as much
//! time re-packing the weights as multiplying.
//!
//! A linear layer's weight W [n, k] ([out, in], Y = X Wᵀ) is stored as panels of `NR` = 32
//! output columns: panel `q` holds W[32q + j, p] at `(q·k + p)·32 + j` (zero past n), one panel
//! row per two cache lines. For each p a kernel loads one panel row and, per activation row of
//! its register tile, broadcasts one value that feeds every column of the row:
//! - AVX-512: up to 12 rows × 32 columns in 24 registers (two FMAs per broadcast, so the two FMA
//!   ports, not the loads, bound it);
//! - AVX2 + FMA: up to 3 rows × 32 columns in 12 registers.
//!
//! The first row tile of each panel pass also prefetches the next panel's rows, so the weights,
//! which stream from L3 on every decode step, arrive while this panel is multiplied.
//!
//! Every output element is a single multiply-add chain over p = 0..k in order, started from
//! zero and added to C only at the end when accumulating. A row's result therefore does not
//! depend on how many rows are multiplied together or where the row sits: batched generation
//! gives bit-identical results whatever the batch composition.

use super::aligned::{AlignedBuf, LINE};

/// Output columns per packed panel (two AVX-512 registers, four AVX2 registers).
pub const NR: usize = 32;
/// Most activation rows per register tile (AVX2: 4 registers per row; AVX-512: 2).
const MR: usize = 3;
#[cfg(target_arch = "x86_64")]
const MR512: usize = 12;

/// A weight matrix W [n, k] packed for `matmul_packed`.
#[derive(Debug, Clone, Default)]
pub struct PackedMatrix {
    n: usize,
    k: usize,
    /// The panels, starting on a cache line: a panel row is whole lines, so the kernels' row
    /// loads never straddle two lines.
    data: AlignedBuf,
}
const _: () = assert!(NR.is_multiple_of(LINE), "a panel row is whole cache lines");

impl PackedMatrix {
    /// Pack row-major W [n, k] (only the first n·k elements of `w` are read).
    pub fn from_rows(w: &[f32], n: usize, k: usize) -> Self {
        assert!(w.len() >= n * k, "PackedMatrix: {} elements for a [{n}, {k}] matrix", w.len());
        let mut data = AlignedBuf::zeros(n.div_ceil(NR) * k * NR);
        if k == 0 {
            return PackedMatrix { n, k, data };
        }
        for (q, panel) in data.chunks_mut(k * NR).enumerate() {
            for j in 0..NR.min(n - q * NR) {
                let row = &w[(q * NR + j) * k..(q * NR + j + 1) * k];
                for (p, &x) in row.iter().enumerate() {
                    panel[p * NR + j] = x;
                }
            }
        }
        PackedMatrix { n, k, data }
    }

    /// The packed panels.
    fn panels(&self) -> &[f32] {
        &self.data
    }

    /// Output features n.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input features k.
    pub fn k(&self) -> usize {
        self.k
    }
}

/// Split m rows into ⌈m/mr⌉ register tiles of near-equal height (32 rows, mr 12 → 11,11,10: no
/// tile so short that FMA latency, not throughput, bounds it).
fn row_tiles(m: usize, mr: usize) -> impl Iterator<Item = (usize, usize)> {
    let tiles = m.div_ceil(mr);
    let (base, extra) = (m.checked_div(tiles).unwrap_or(0), m.checked_rem(tiles).unwrap_or(0));
    (0..tiles).scan(0usize, move |start, t| {
        let h = base + usize::from(t < extra);
        let r = (*start, h);
        *start += h;
        Some(r)
    })
}

/// C[m, n] (+)= A[m, k] · Wᵀ with W packed; A and C row-major with row strides k and n.
/// Single-threaded: callers parallelise over independent row blocks.
pub fn matmul_packed(c: &mut [f32], a: &[f32], m: usize, w: &PackedMatrix, accumulate: bool) {
    let (n, k) = (w.n, w.k);
    assert!(a.len() >= m * k && c.len() >= m * n, "matmul_packed: buffers too small for m = {m}, n = {n}, k = {k}");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        use super::isa::{active, Isa};
        let isa = active();
        if isa == Isa::Avx512 {
            // SAFETY: `active` reports AVX-512 only when the CPU has AVX-512F; sizes checked as below.
            unsafe { avx512::matmul(c, a, m, w, accumulate) };
            return;
        }
        if isa == Isa::Avx2 {
            // SAFETY: `active` reports AVX2 only when the CPU has AVX2 and FMA; the buffer sizes
            // were checked against m, n, k, which bound every access of the kernel.
            unsafe { avx2::matmul(c, a, m, w, accumulate) };
            return;
        }
    }
    portable(c, a, m, w, accumulate);
}

/// The same product without SIMD intrinsics (same summation order per element, but separate
/// multiply and add where the AVX2 kernel fuses them).
fn portable(c: &mut [f32], a: &[f32], m: usize, w: &PackedMatrix, accumulate: bool) {
    let (n, k) = (w.n, w.k);
    for (q, panel) in w.panels().chunks(k * NR).enumerate() {
        let cols = NR.min(n - q * NR);
        for i in 0..m {
            let ar = &a[i * k..(i + 1) * k];
            let mut acc = [0.0f32; NR];
            for (p, &x) in ar.iter().enumerate() {
                for (s, &b) in acc.iter_mut().zip(&panel[p * NR..(p + 1) * NR]) {
                    *s += x * b;
                }
            }
            let cr = &mut c[i * n + q * NR..i * n + q * NR + cols];
            for (o, &s) in cr.iter_mut().zip(&acc) {
                *o = if accumulate { *o + s } else { s };
            }
        }
    }
}

/// Depth of one pass over a panel: 128 × 32 floats (16 KiB) of weights stay in L1 while every
/// row tile consumes them. Deeper products run in passes whose running sums round-trip through
/// a scratch buffer unchanged, so the chain per element (and its result) is the same.
const KC: usize = 128;

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// Running sums of one panel between depth passes ([m, NR]).
    static PARTIAL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Where one register tile's depth pass starts and ends, and what it reads and writes.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Tile {
    /// Rows of A (stride `lda`) at the pass's first depth; the panel's rows (`NR` floats each).
    a: *const f32,
    lda: usize,
    b: *const f32,
    /// The same depth range of the next panel, fetched into cache by the first row tile (null:
    /// none).
    next: *const f32,
    /// Depth of the pass; rows in the tile.
    kc: usize,
    h: usize,
    /// Output rows (stride `ldc`) at the panel's first column; the rows' running sums ([h, NR]).
    c: *mut f32,
    ldc: usize,
    partial: *mut f32,
    /// Start from zero (else from the running sums); write C (else store the running sums).
    first: bool,
    last: bool,
    /// Valid columns of the panel; add to C instead of overwriting it.
    cols: usize,
    accumulate: bool,
}

/// The loops shared by the SIMD kernels: panels × depth passes of `KC` × row tiles of at most
/// `mr` rows, each handed to `tile`.
///
/// # Safety
/// `a` must hold m·k and `c` m·n elements; `tile` must stay within the tile it is given.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn drive(
    c: &mut [f32],
    a: &[f32],
    m: usize,
    w: &PackedMatrix,
    accumulate: bool,
    mr: usize,
    mut tile: impl FnMut(Tile),
) {
    let (n, k) = (w.n, w.k);
    let cp = c.as_mut_ptr();
    PARTIAL.with_borrow_mut(|partial| {
        if k > KC && partial.len() < m * NR {
            partial.resize(m * NR, 0.0);
        }
        let (ap, pp) = (a.as_ptr(), partial.as_mut_ptr());
        for q in 0..n.div_ceil(NR) {
            let cols = NR.min(n - q * NR);
            for k0 in (0..k).step_by(KC) {
                let kc = KC.min(k - k0);
                // SAFETY: the panels hold ⌈n/NR⌉·k·NR floats, panel q's depth rows k0.. starting
                // at (q·k + k0)·NR; q < ⌈n/NR⌉ and k0 < k keep the offset inside them.
                let b = unsafe { w.panels().as_ptr().add((q * k + k0) * NR) };
                // SAFETY: (q + 1)·NR < n means panel q + 1 exists, so its rows k0.. (k·NR further
                // on) are inside the panels too.
                let next = if (q + 1) * NR < n { unsafe { b.add(k * NR) } } else { std::ptr::null() };
                for (r0, h) in row_tiles(m, mr) {
                    tile(Tile {
                        next: if r0 == 0 { next } else { std::ptr::null() },
                        // SAFETY: r0 < m and k0 < k, and A holds m·k floats (this function's
                        // contract), so row r0, depth k0 is inside A.
                        a: unsafe { ap.add(r0 * k + k0) },
                        lda: k,
                        b,
                        kc,
                        h,
                        // SAFETY: r0 < m and q·NR < n, and C holds m·n floats (the contract).
                        c: unsafe { cp.add(r0 * n + q * NR) },
                        ldc: n,
                        // Only read or written when k > KC (a pass that is not both first and
                        // last), when the scratch holds m·NR floats; with a single pass it may be
                        // empty, so the address is formed without `add`'s in-bounds requirement.
                        partial: pp.wrapping_add(r0 * NR),
                        first: k0 == 0,
                        last: k0 + kc == k,
                        cols,
                        accumulate,
                    });
                }
            }
        }
    })
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{drive, PackedMatrix, Tile, MR, NR};
    use std::arch::x86_64::*;

    /// Vector registers per tile row.
    const V: usize = NR / 8;

    /// # Safety
    /// The CPU must support AVX2 and FMA; `a` must hold m·k and `c` m·n elements.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn matmul(c: &mut [f32], a: &[f32], m: usize, w: &PackedMatrix, accumulate: bool) {
        // SAFETY: sizes per this function's contract; each tile stays within its rows and panel.
        unsafe {
            drive(c, a, m, w, accumulate, MR, |t| match t.h {
                1 => tile::<1>(t),
                2 => tile::<2>(t),
                _ => tile::<3>(t),
            })
        }
    }

    /// One H × 32 tile over depth kc: rows a[0..H) times panel rows b[0..kc).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile<const H: usize>(t: Tile) {
        let (a, b, c, ldc, partial) = (t.a, t.b, t.c, t.ldc, t.partial);
        let mut acc = [[_mm256_setzero_ps(); V]; H];
        if !t.first {
            for (r, row) in acc.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(partial.add(r * NR + 8 * j));
                }
            }
        }
        for p in 0..t.kc {
            if !t.next.is_null() {
                _mm_prefetch::<_MM_HINT_T0>(t.next.add(p * NR) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(t.next.add(p * NR + 16) as *const i8);
            }
            // The H broadcasts first, then one panel vector at a time: 3·4 accumulators, 3
            // broadcasts and 1 panel vector are the 16 ymm registers. (Loading all four panel
            // vectors first needs 17, and the compiler spilled two accumulators to the stack,
            // which put a store-to-load round trip into their FMA chains.)
            let mut x = [_mm256_setzero_ps(); H];
            for (r, xr) in x.iter_mut().enumerate() {
                *xr = _mm256_broadcast_ss(&*a.add(r * t.lda + p));
            }
            for j in 0..V {
                let bj = _mm256_loadu_ps(b.add(p * NR + 8 * j));
                for (row, &xr) in acc.iter_mut().zip(&x) {
                    row[j] = _mm256_fmadd_ps(xr, bj, row[j]);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            if !t.last {
                for (j, v) in row.iter().enumerate() {
                    _mm256_storeu_ps(partial.add(r * NR + 8 * j), *v);
                }
                continue;
            }
            let mut tmp = [0.0f32; NR];
            for (j, v) in row.iter().enumerate() {
                _mm256_storeu_ps(tmp.as_mut_ptr().add(8 * j), *v);
            }
            let cr = c.add(r * ldc);
            for (j, &s) in tmp[..t.cols].iter().enumerate() {
                let o = cr.add(j);
                *o = if t.accumulate { *o + s } else { s };
            }
        }
    }
}

/// The AVX-512 kernel: two 16-lane registers per row of a 12 × 32 tile. Each output element is
/// the same fused multiply-add chain as in the AVX2 kernel, so both give the same bits.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{drive, PackedMatrix, Tile, MR512, NR};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX-512F; `a` must hold m·k and `c` m·n elements.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn matmul(c: &mut [f32], a: &[f32], m: usize, w: &PackedMatrix, accumulate: bool) {
        // SAFETY: sizes per this function's contract; each tile stays within its rows and panel.
        unsafe {
            drive(c, a, m, w, accumulate, MR512, |t| match t.h {
                1 => tile::<1>(t),
                2 => tile::<2>(t),
                3 => tile::<3>(t),
                4 => tile::<4>(t),
                5 => tile::<5>(t),
                6 => tile::<6>(t),
                7 => tile::<7>(t),
                8 => tile::<8>(t),
                9 => tile::<9>(t),
                10 => tile::<10>(t),
                11 => tile::<11>(t),
                _ => tile::<12>(t),
            })
        }
    }

    /// One H × 32 tile over depth kc (see the AVX2 kernel).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile<const H: usize>(t: Tile) {
        let (a, b, c, ldc, partial) = (t.a, t.b, t.c, t.ldc, t.partial);
        // valid columns of each half of the panel
        let lanes = |n: usize| -> __mmask16 {
            if n >= 16 {
                0xffff
            } else {
                (1u16 << n) - 1
            }
        };
        let mask = [lanes(t.cols), lanes(t.cols.saturating_sub(16))];
        let mut acc = [[_mm512_setzero_ps(); 2]; H];
        if !t.first {
            for (r, v) in acc.iter_mut().enumerate() {
                v[0] = _mm512_loadu_ps(partial.add(r * NR));
                v[1] = _mm512_loadu_ps(partial.add(r * NR + 16));
            }
        }
        for p in 0..t.kc {
            if !t.next.is_null() {
                _mm_prefetch::<_MM_HINT_T0>(t.next.add(p * NR) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(t.next.add(p * NR + 16) as *const i8);
            }
            let b0 = _mm512_loadu_ps(b.add(p * NR));
            let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
            for (r, v) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.add(r * t.lda + p));
                v[0] = _mm512_fmadd_ps(x, b0, v[0]);
                v[1] = _mm512_fmadd_ps(x, b1, v[1]);
            }
        }
        for (r, v) in acc.iter().enumerate() {
            if !t.last {
                _mm512_storeu_ps(partial.add(r * NR), v[0]);
                _mm512_storeu_ps(partial.add(r * NR + 16), v[1]);
                continue;
            }
            let cr = c.add(r * ldc);
            for (half, (&out, &mk)) in v.iter().zip(&mask).enumerate() {
                if mk == 0 {
                    continue;
                }
                let o = cr.add(16 * half);
                let mut out = out;
                if t.accumulate {
                    out = _mm512_add_ps(_mm512_maskz_loadu_ps(mk, o), out);
                }
                _mm512_mask_storeu_ps(o, mk, out);
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

    #[test]
    fn row_tiles_cover_every_row_once_with_at_most_mr() {
        for m in 0..50 {
            let tiles: Vec<_> = row_tiles(m, MR).collect();
            let mut next = 0;
            for &(start, h) in &tiles {
                assert_eq!(start, next);
                assert!((1..=MR).contains(&h));
                next += h;
            }
            assert_eq!(next, m);
            assert_eq!(tiles.len(), m.div_ceil(MR));
        }
    }

    #[test]
    fn matches_naive_product_on_ragged_shapes() {
        let shapes =
            [(1, 1, 1), (1, 16, 8), (3, 17, 5), (7, 33, 40), (13, 50, 64), (32, 48, 29), (6, 15, 100), (9, 20, 600)];
        for (t, &(m, n, k)) in shapes.iter().enumerate() {
            let a = values(m * k, 1 + t as u64);
            let w = values(n * k, 100 + t as u64);
            let c0 = values(m * n, 200 + t as u64);
            let packed = PackedMatrix::from_rows(&w, n, k);
            assert_eq!((packed.n(), packed.k()), (n, k));
            for accumulate in [false, true] {
                let mut c = c0.clone();
                matmul_packed(&mut c, &a, m, &packed, accumulate);
                let mut c_portable = c0.clone();
                portable(&mut c_portable, &a, m, &packed, accumulate);
                for i in 0..m {
                    for j in 0..n {
                        let dot: f64 = (0..k).map(|p| a[i * k + p] as f64 * w[j * k + p] as f64).sum();
                        let want = dot + if accumulate { c0[i * n + j] as f64 } else { 0.0 };
                        for got in [c[i * n + j], c_portable[i * n + j]] {
                            assert!(
                                (got as f64 - want).abs() < 1e-5 * (1.0 + k as f64).sqrt(),
                                "m={m} n={n} k={k} ({i},{j}): {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_whatever_the_batch() {
        let (n, k) = (37, 531);
        let w = PackedMatrix::from_rows(&values(n * k, 5), n, k);
        let a = values(23 * k, 6);
        let mut all = vec![0.0; 23 * n];
        matmul_packed(&mut all, &a, 23, &w, false);
        for (i, want) in all.chunks(n).enumerate() {
            let mut one = vec![0.0; n];
            matmul_packed(&mut one, &a[i * k..(i + 1) * k], 1, &w, false);
            assert_eq!(one, want, "row {i}");
            let m = 23 - i;
            let mut tail = vec![0.0; m * n];
            matmul_packed(&mut tail, &a[i * k..], m, &w, false);
            assert_eq!(&tail[..n], want, "row {i} as the first of {m}");
        }
    }

    /// The AVX-512 and AVX2 kernels run the same chain per element: the same bits.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_and_avx2_kernels_agree_bit_for_bit() {
        if !(std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx2")) {
            println!("skipped: this CPU lacks AVX-512F or AVX2");
            return;
        }
        for (m, n, k) in [(1, 16, 8), (13, 50, 64), (32, 48, 600), (25, 7, 3)] {
            let w = PackedMatrix::from_rows(&values(n * k, 7), n, k);
            let a = values(m * k, 8);
            for accumulate in [false, true] {
                let c0 = values(m * n, 9);
                let (mut x, mut y) = (c0.clone(), c0.clone());
                // SAFETY: both features were detected above; buffers sized m·k and m·n.
                unsafe {
                    avx2::matmul(&mut x, &a, m, &w, accumulate);
                    avx512::matmul(&mut y, &a, m, &w, accumulate);
                }
                assert_eq!(x, y, "m={m} n={n} k={k} accumulate={accumulate}");
            }
        }
    }

    #[test]
    fn panels_start_on_a_cache_line_and_keep_their_values() {
        for (n, k) in [(1, 1), (16, 3), (37, 531), (512, 256)] {
            let w = values(n * k, 11);
            let p = PackedMatrix::from_rows(&w, n, k);
            assert_eq!(p.panels().as_ptr() as usize % 64, 0, "[{n}, {k}]");
            assert_eq!(p.panels()[k * NR - NR], w[k - 1], "W[0, k-1] is panel 0's last row, column 0");
        }
    }

    #[test]
    fn empty_shapes_are_no_ops() {
        let w = PackedMatrix::from_rows(&[], 0, 4);
        let mut c: Vec<f32> = vec![];
        matmul_packed(&mut c, &[1.0; 8], 2, &w, false);
        let w = PackedMatrix::from_rows(&[], 3, 0);
        let mut c = vec![7.0; 6];
        matmul_packed(&mut c, &[], 2, &w, false);
        assert_eq!(c, vec![0.0; 6]);
    }
}
