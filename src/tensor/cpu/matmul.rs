//! Matrix products on row-major f32 buffers through the `gemm` crate (BLIS-style, AVX2/FMA,
//! rayon-parallel). Transposes are expressed as strides, never materialised.

use crate::tensor::shape::GemmShape;
use gemm::Parallelism;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Number of GEMM calls made so far (all threads); tests use it to attribute allocations.
pub static GEMM_CALLS: AtomicUsize = AtomicUsize::new(0);
/// Wall time spent in pool-parallel GEMM calls (the model's projections), in nanoseconds;
/// `arbor bench train-step` divides it by the step time.
pub static GEMM_PARALLEL_NANOS: AtomicUsize = AtomicUsize::new(0);

/// Below this many multiply-adds a product runs on the calling thread (rayon overhead dominates).
const PARALLEL_MIN_MACS: usize = 1 << 18;

/// The inner-dimension block of the products the `gemm` crate blocks by its cache model.
const K_BLOCK: usize = 512;

/// The blocks of the inner dimension `k` in which an `m × n` product is summed, where arbor
/// blocks it itself; `None` where the crate's own order is already the same on every machine.
///
/// The crate sums a product's inner dimension in blocks, one block's products added to C after
/// the other, so where k is blocked the rounding depends on the block size. For outputs larger
/// than 64 × 64 in either dimension (and over 256 elements, with more than one row and column)
/// it takes the size from the L1 data cache's size and ways (at least 512: 512 on a 32 KiB 8-way
/// L1, 1024 on a 48 KiB 12-way one), so the same product rounded differently on different CPUs.
/// There arbor cuts k as the crate does with 512 — ⌈k/512⌉ blocks of equal size (the last
/// shorter) — and hands it each block, which the crate never cuts again (its block is at least
/// 512): the sums of a 32 KiB 8-way machine (what the crate did on one) on every machine. The
/// crate's other paths (smaller outputs: blocks of 512, or 1024 for ≤ 256 elements; vectors:
/// none) depend on nothing but the shape.
fn k_blocks(m: usize, n: usize, k: usize) -> Option<impl Iterator<Item = std::ops::Range<usize>>> {
    if k <= K_BLOCK || m < 2 || n < 2 || (m <= 64 && n <= 64) || m * n <= 256 {
        return None;
    }
    let blocks = k.div_ceil(K_BLOCK);
    let size = k.div_ceil(blocks);
    Some((0..blocks).map(move |i| i * size..((i + 1) * size).min(k)))
}

/// A read-only strided matrix view: element (i, j) is at `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

/// A mutable strided matrix view.
pub struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// Row-major [rows, cols] matrix with row stride `rs`.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize, rs: usize) -> Self {
        MatRef { data, rows, cols, rs, cs: 1 }
    }
    /// The transpose (a view, no copy).
    pub fn t(self) -> Self {
        MatRef { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(last < self.data.len(), "matrix view out of bounds: {} >= {}", last, self.data.len());
        }
    }
}

impl<'a> MatMut<'a> {
    /// Row-major [rows, cols] matrix with row stride `rs`.
    pub fn rows(data: &'a mut [f32], rows: usize, cols: usize, rs: usize) -> Self {
        MatMut { data, rows, cols, rs, cs: 1 }
    }
}

/// C = alpha·A·B (+ C if `accumulate`). Shapes: A [m, k], B [k, n], C [m, n]. `parallel` lets the
/// product use the rayon pool (pass false inside an already-parallel loop).
pub fn gemm(c: MatMut<'_>, a: MatRef<'_>, b: MatRef<'_>, alpha: f32, accumulate: bool, parallel: bool) {
    let (m, n, k) = (c.rows, c.cols, a.cols);
    assert_eq!(a.rows, m, "gemm: A rows {} != C rows {}", a.rows, m);
    assert_eq!(b.rows, k, "gemm: B rows {} != A cols {}", b.rows, k);
    assert_eq!(b.cols, n, "gemm: B cols {} != C cols {}", b.cols, n);
    if m == 0 || n == 0 {
        return;
    }
    a.check();
    b.check();
    let c_ref = MatRef { data: c.data, rows: m, cols: n, rs: c.rs, cs: c.cs };
    c_ref.check();
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    c.data[i * c.rs + j * c.cs] = 0.0;
                }
            }
        }
        return;
    }
    if let Some(blocks) = k_blocks(m, n, k) {
        // one product per block of the inner dimension, each added to the last (module docs)
        for (i, r) in blocks.enumerate() {
            let a_r = MatRef { data: &a.data[r.start * a.cs..], cols: r.len(), ..a };
            let b_r = MatRef { data: &b.data[r.start * b.rs..], rows: r.len(), ..b };
            let c_r = MatMut { data: &mut *c.data, ..c };
            gemm(c_r, a_r, b_r, alpha, accumulate || i > 0, parallel);
        }
        return;
    }
    GEMM_CALLS.fetch_add(1, Ordering::Relaxed);
    let par = if parallel && m * n * k >= PARALLEL_MIN_MACS { Parallelism::Rayon(0) } else { Parallelism::None };
    let t0 = parallel.then(std::time::Instant::now);
    // SAFETY: every view was bounds-checked above for its full extent (last element index <
    // len); `c` is borrowed mutably so it aliases neither `a` nor `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.data.as_mut_ptr(),
            c.cs as isize,
            c.rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            par,
        );
    }
    if let Some(t0) = t0 {
        GEMM_PARALLEL_NANOS.fetch_add(t0.elapsed().as_nanos() as usize, Ordering::Relaxed);
    }
}

/// `C[m,n]` (+)= `A[m,k]` · `B[n,k]`ᵀ — a linear layer's forward, Y = X Wᵀ with W in [out, in] layout.
pub fn matmul_nt(c: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize, accumulate: bool) {
    gemm(MatMut::rows(c, m, n, n), MatRef::rows(a, m, k, k), MatRef::rows(b, n, k, k).t(), 1.0, accumulate, true);
}

/// `C[m,n]` (+)= `A[m,k]` · `B[k,n]` — a linear layer's input gradient, dX = dY W.
pub fn matmul_nn(c: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize, accumulate: bool) {
    gemm(MatMut::rows(c, m, n, n), MatRef::rows(a, m, k, k), MatRef::rows(b, k, n, n), 1.0, accumulate, true);
}

/// `C[m,n]` (+)= `A[k,m]`ᵀ · `B[k,n]` — a linear layer's weight gradient, dW = dYᵀ X.
pub fn matmul_tn(c: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize, accumulate: bool) {
    if m > n {
        // Wide outputs run 5–10 % faster as Cᵀ = Bᵀ A written through a column-major view
        // (measured on the dW shapes of a transformer layer).
        let ct = MatMut { data: c, rows: n, cols: m, rs: 1, cs: n };
        gemm(ct, MatRef::rows(b, k, n, n).t(), MatRef::rows(a, k, m, m), 1.0, accumulate, true);
        return;
    }
    gemm(MatMut::rows(c, m, n, n), MatRef::rows(a, k, m, m).t(), MatRef::rows(b, k, n, n), 1.0, accumulate, true);
}

/// C[m, n] = alpha·A[m, k]·B[k, n] (+ C) on raw row/column-strided pointers (`a` and `b` are
/// (pointer, row stride, column stride); C has unit column stride), single-threaded. For kernels whose
/// parallel tasks write disjoint column blocks of one shared buffer (attention heads).
///
/// # Safety
/// Every element addressed by the strides must be in bounds of its allocation; `c` must not
/// overlap `a` or `b`, nor any region another thread accesses concurrently.
pub unsafe fn gemm_raw(
    shape: GemmShape,
    c: *mut f32,
    c_rs: usize,
    a: (*const f32, usize, usize),
    b: (*const f32, usize, usize),
    alpha: f32,
    accumulate: bool,
) {
    let GemmShape { m, n, k } = shape;
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    if let Some(blocks) = k_blocks(m, n, k) {
        for (i, r) in blocks.enumerate() {
            let a_r = (a.0.wrapping_add(r.start * a.2), a.1, a.2);
            let b_r = (b.0.wrapping_add(r.start * b.1), b.1, b.2);
            // SAFETY: each block addresses a part of what the whole product addresses
            unsafe { gemm_raw(GemmShape::new(m, n, r.len()), c, c_rs, a_r, b_r, alpha, accumulate || i > 0) };
        }
        return;
    }
    GEMM_CALLS.fetch_add(1, Ordering::Relaxed);
    gemm::gemm(
        m,
        n,
        k,
        c,
        1,
        c_rs as isize,
        accumulate,
        a.0,
        a.2 as isize,
        a.1 as isize,
        b.0,
        b.2 as isize,
        b.1 as isize,
        1.0,
        alpha,
        false,
        false,
        false,
        Parallelism::None,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    fn transpose(x: &[f32], r: usize, c: usize) -> Vec<f32> {
        let mut t = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                t[j * r + i] = x[i * c + j];
            }
        }
        t
    }

    #[test]
    fn all_transpose_variants_match_naive() {
        let (m, n, k) = (37, 70, 129);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 31) as f32 / 15.0 - 1.0).collect();
        let want = naive(&a, &b, m, n, k);
        let close = |got: &[f32]| got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-3 * (1.0 + w.abs()));

        let mut c = vec![0.0; m * n];
        matmul_nn(&mut c, &a, &b, m, n, k, false);
        assert!(close(&c));
        let bt = transpose(&b, k, n);
        matmul_nt(&mut c, &a, &bt, m, n, k, false);
        assert!(close(&c));
        let at = transpose(&a, m, k);
        matmul_tn(&mut c, &at, &b, m, n, k, false);
        assert!(close(&c));
        // accumulate adds on top
        matmul_nn(&mut c, &a, &b, m, n, k, true);
        assert!(c.iter().zip(&want).all(|(g, w)| (g - 2.0 * w).abs() < 2e-3 * (1.0 + w.abs())));
    }

    /// C = A·B summed as the products promise on every machine: each element's products of
    /// each block of the inner dimension chained by fused multiply-adds from zero, the blocks'
    /// sums added to C in order (`blocks`: the block size, a shorter last block).
    fn blocked(a: &[f32], b: &[f32], (m, n, k): (usize, usize, usize), size: usize) -> Vec<f32> {
        let mut c = vec![0.0f32; m * n];
        for (i, j) in (0..m).flat_map(|i| (0..n).map(move |j| (i, j))) {
            for (q, start) in (0..k).step_by(size).enumerate() {
                let acc = (start..(start + size).min(k)).fold(0.0f32, |acc, p| a[i * k + p].mul_add(b[p * n + j], acc));
                c[i * n + j] = if q == 0 { acc } else { c[i * n + j] + acc };
            }
        }
        c
    }

    #[test]
    fn long_inner_dimensions_are_summed_in_the_same_blocks_on_every_machine() {
        // (the crate's cache-sized blocks would give a 48 KiB 12-way L1 blocks of 1024: other bits)
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (m, n, k) in [(70usize, 5usize, 1000usize), (65, 80, 1537), (130, 2, 600), (96, 96, 513)] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1013) as f32 / 377.0 - 1.3).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 997) as f32 / 411.0 - 1.1).collect();
            let size = k.div_ceil(k.div_ceil(K_BLOCK));
            let want = blocked(&a, &b, (m, n, k), size);
            assert_ne!(bits(&want), bits(&blocked(&a, &b, (m, n, k), 1024)), "{m}×{n}×{k}: the block size shows");
            let mut c = vec![0.0; m * n];
            matmul_nn(&mut c, &a, &b, m, n, k, false);
            assert_eq!(bits(&c), bits(&want), "{m}×{n}×{k}");
            // a transposed operand and the raw entry point: the same sums
            let mut t = vec![0.0; m * n];
            matmul_tn(&mut t, &transpose(&a, m, k), &b, m, n, k, false);
            assert_eq!(bits(&t), bits(&want), "{m}×{n}×{k}, Aᵀ");
            let mut r = vec![0.0; m * n];
            // SAFETY: the views cover exactly the three buffers
            unsafe {
                gemm_raw(GemmShape::new(m, n, k), r.as_mut_ptr(), n, (a.as_ptr(), k, 1), (b.as_ptr(), n, 1), 1.0, false)
            };
            assert_eq!(bits(&r), bits(&want), "{m}×{n}×{k}, raw");
        }
        // outputs of at most 64 × 64: the crate's own fixed blocks of 512, whatever the machine
        let (m, n, k) = (40, 64, 1100);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 31) % 101) as f32 / 50.0 - 1.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 17) % 89) as f32 / 44.0 - 1.0).collect();
        let mut c = vec![0.0; m * n];
        matmul_nn(&mut c, &a, &b, m, n, k, false);
        assert_eq!(bits(&c), bits(&blocked(&a, &b, (m, n, k), 512)));
    }
}
