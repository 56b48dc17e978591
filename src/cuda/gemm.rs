//! cuBLAS products for the row-major matrices of the model: one cublasGemmEx call each, with f32,
//! TF32 or bf16 operands as `[train] dtype` asks (f32 accumulation and result either way).

use crate::cuda::act::{ActView, ActViewMut};
use crate::cuda::device::{drv, int, Arg, Gpu};
use crate::error::{Error, Result};
use crate::tensor::shape::GemmShape;
use crate::tensor::Dtype;
use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType_t};
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, DevicePtrMut};

/// A row-major product as one column-major cuBLAS call: C[m, n] (+)= op(A)·op(B) is computed
/// as Cᵀ[n, m] = op'(B)·op'(A), since a row-major matrix read column-major is its transpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmPlan {
    /// Whether cuBLAS's first operand (our B) is transposed; its leading dimension.
    pub trans_first: bool,
    pub ld_first: usize,
    /// Whether cuBLAS's second operand (our A) is transposed; its leading dimension.
    pub trans_second: bool,
    pub ld_second: usize,
}

/// Which of the three row-major products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmKind {
    /// C = A·Bᵀ with A [m, k], B [n, k].
    Nt,
    /// C = A·B with A [m, k], B [k, n].
    Nn,
    /// C = Aᵀ·B with A [k, m], B [k, n].
    Tn,
}

/// The cuBLAS operands of a row-major product (see [`GemmPlan`]); cuBLAS gets (m, n, k) =
/// (n, m, k) and ldc = n.
pub fn gemm_plan(kind: GemmKind, m: usize, n: usize, k: usize) -> GemmPlan {
    match kind {
        // B [n, k] row-major = Bᵀ column-major (k × n, ld k), transposed back; A [m, k] = Aᵀ (ld k)
        GemmKind::Nt => GemmPlan { trans_first: true, ld_first: k, trans_second: false, ld_second: k },
        // B [k, n] = Bᵀ column-major (n × k, ld n); A [m, k] = Aᵀ (k × m, ld k)
        GemmKind::Nn => GemmPlan { trans_first: false, ld_first: n, trans_second: false, ld_second: k },
        // B [k, n] = Bᵀ (ld n); A [k, m] = Aᵀ column-major (m × k, ld m), transposed to k × m
        GemmKind::Tn => GemmPlan { trans_first: false, ld_first: n, trans_second: true, ld_second: m },
    }
}

impl Gpu {
    /// C (+)= op(A)·op(B) with f32 operands and result, f32 accumulation; shapes and row-major
    /// layouts as [`GemmKind`]; one cublasGemmEx call. The operands enter the product as the
    /// device's [`Gpu::dtype`] says: exactly (f32 compute), rounded to TF32 inside cuBLAS, or rounded to bf16 by
    /// `f32_to_bf16_n` into a reused scratch before a bf16 tensor-core GEMM.
    pub(crate) fn gemm(
        &self,
        mut c: CudaViewMut<'_, f32>,
        a: CudaView<'_, f32>,
        b: CudaView<'_, f32>,
        kind: GemmKind,
        shape: GemmShape,
        acc: bool,
    ) -> Result<()> {
        if self.empty_product(&mut c, shape, acc)? {
            return Ok(());
        }
        let GemmShape { m, n, k } = shape;
        if a.len() < m * k || b.len() < n * k || c.len() < m * n {
            return Err(Error::shape(format!("GEMM {kind:?} {m}x{n}x{k}"), "operand views too short"));
        }
        let (cp, ap, bp) = (self.pm(&mut c), self.pr(&a), self.pr(&b));
        let f32_ops = |compute| ExOperands { c: cp, c_type: R_32F, a: ap, b: bp, ab_type: R_32F, compute };
        match self.dtype() {
            // f32 operands with f32 compute: SGEMM's arithmetic (the default math mode allows no TF32)
            Dtype::F32 => self.gemm_ex(f32_ops(F32), kind, shape, acc),
            Dtype::Tf32 => self.gemm_ex(f32_ops(TF32), kind, shape, acc),
            Dtype::Bf16 => {
                let product = Product { c: cp, c_type: R_32F, b: self.weight_operand(bp, n * k), kind, shape, acc };
                self.gemm_rounded(Operand::F32(ap), m * k, &[product])
            }
        }
    }

    /// `Backend::linear_backward` on the device: dx = dy·w, then dw += dyᵀ·x. With bf16
    /// products dy is rounded once for both (it is the A operand of each), where two
    /// [`Gpu::gemm`] calls would round it twice; a dy or x already in bf16 (an activation written
    /// so, cuda::act) is read as it is, and makes both products bf16 ones whatever the dtype.
    pub(crate) fn linear_backward_gemms(
        &self,
        mut dx: CudaViewMut<'_, f32>,
        mut dw: CudaViewMut<'_, f32>,
        dy: ActView<'_>,
        w: CudaView<'_, f32>,
        x: ActView<'_>,
        (m, n, k): (usize, usize, usize),
    ) -> Result<()> {
        let (dx_shape, dw_shape) = (GemmShape::new(m, k, n), GemmShape::new(n, k, m));
        if m == 0 || k == 0 {
            return Ok(());
        }
        if n == 0 {
            // dx = dy·w over an empty inner dimension; dw has no element
            return self.stream.memset_zeros(&mut dx).map_err(drv("memset"));
        }
        if dy.len() < m * n || w.len() < n * k || x.len() < m * k || dx.len() < m * k || dw.len() < n * k {
            return Err(Error::shape(format!("linear backward {m}x{n}x{k}"), "operand views too short"));
        }
        let (dy, x) = match (dy, x) {
            (ActView::F32(dy), ActView::F32(x)) if self.dtype() != Dtype::Bf16 => {
                self.gemm(dx, dy.slice(0..dy.len()), w, GemmKind::Nn, dx_shape, false)?;
                return self.gemm(dw, dy, x, GemmKind::Tn, dw_shape, true);
            }
            (dy, x) => (self.act_operand(&dy), self.act_operand(&x)),
        };
        let wp = self.pr(&w);
        let products = [
            Product {
                c: self.pm(&mut dx),
                c_type: R_32F,
                b: self.weight_operand(wp, n * k),
                kind: GemmKind::Nn,
                shape: dx_shape,
                acc: false,
            },
            Product { c: self.pm(&mut dw), c_type: R_32F, b: x, kind: GemmKind::Tn, shape: dw_shape, acc: true },
        ];
        self.gemm_rounded(dy, m * n, &products)
    }

    /// An activation as a bf16 product's operand: rounded as the product reads it when f32.
    fn act_operand(&self, a: &ActView<'_>) -> Operand {
        match a {
            ActView::F32(v) => Operand::F32(self.pr(v)),
            ActView::Bf16(v) => Operand::Bf16(v.device_ptr(&self.stream).0),
        }
    }

    /// A "bf16" product whose first operand was written in bf16 by the kernel that made it (the
    /// decode step's normed rows, attention output and SwiGLU output: `_o16` kernels): C (+)=
    /// op(A)·op(B) with A taken as is and B rounded, or read from its weight image (cuda::image);
    /// f32 accumulation and C, whatever the device's dtype.
    pub(crate) fn gemm_a16(
        &self,
        mut c: CudaViewMut<'_, f32>,
        a: &CudaView<'_, u16>,
        b: CudaView<'_, f32>,
        kind: GemmKind,
        shape: GemmShape,
        acc: bool,
    ) -> Result<()> {
        if self.empty_product(&mut c, shape, acc)? {
            return Ok(());
        }
        let GemmShape { m, n, k } = shape;
        bf16_operands_fit(kind, shape, (a.len(), b.len(), c.len()))?;
        let bp = self.pr(&b);
        let product =
            Product { c: self.pm(&mut c), c_type: R_32F, b: self.weight_operand(bp, n * k), kind, shape, acc };
        self.gemm_rounded(Operand::Bf16(a.device_ptr(&self.stream).0), m * k, &[product])
    }

    /// C = op(A)·op(B) into an activation (`Backend::matmul_nt_to_act`): an f32 C as
    /// [`Gpu::gemm`] or [`Gpu::gemm_a16`]; a bf16 C (with bf16 products) from a bf16 tensor-core
    /// GEMM whose f32 accumulators cuBLAS rounds to bf16 as it writes them.
    pub(crate) fn gemm_to_act(
        &self,
        c: ActViewMut<'_>,
        a: ActView<'_>,
        b: CudaView<'_, f32>,
        kind: GemmKind,
        shape: GemmShape,
    ) -> Result<()> {
        let mut c = match c {
            ActViewMut::F32(c) => {
                return match a {
                    ActView::F32(a) => self.gemm(c, a, b, kind, shape, false),
                    ActView::Bf16(a) => self.gemm_a16(c, &a, b, kind, shape, false),
                }
            }
            ActViewMut::Bf16(c) => c,
        };
        let GemmShape { m, n, k } = shape;
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            return self.stream.memset_zeros(&mut c).map_err(drv("memset"));
        }
        bf16_operands_fit(kind, shape, (a.len(), b.len(), c.len()))?;
        let a = match a {
            ActView::F32(a) => Operand::F32(self.pr(&a)),
            ActView::Bf16(a) => Operand::Bf16(a.device_ptr(&self.stream).0),
        };
        let cp = c.device_ptr_mut(&self.stream).0;
        let b = self.weight_operand(self.pr(&b), n * k);
        let product = Product { c: cp, c_type: R_16BF, b, kind, shape, acc: false };
        self.gemm_rounded(a, m * k, &[product])
    }

    /// Whether the product has an empty dimension, after doing what it asks: nothing (m or n is 0),
    /// or C zeroed when k is 0 and the product does not accumulate.
    fn empty_product(&self, c: &mut CudaViewMut<'_, f32>, shape: GemmShape, acc: bool) -> Result<bool> {
        let GemmShape { m, n, k } = shape;
        if m == 0 || n == 0 {
            return Ok(true);
        }
        if k == 0 && !acc {
            self.stream.memset_zeros(c).map_err(drv("memset"))?;
        }
        Ok(k == 0)
    }

    /// The second operand of a bf16 product whose f32 data is at `bp` (`len` elements): a weight
    /// with a registered image is not rounded again (cuda::image).
    fn weight_operand(&self, bp: u64, len: usize) -> Operand {
        match self.image_of(bp, len) {
            Some(image) => Operand::Bf16(image),
            None => Operand::F32(bp),
        }
    }

    /// "bf16" products sharing their first operand: A (`a_len` = m·k elements of every product)
    /// is rounded into the scratch once unless it is already bf16, each product's B too (into the
    /// same second slot: the stream runs a product before the next rounding); then one bf16
    /// tensor-core GEMM each into its f32 C.
    fn gemm_rounded(&self, a: Operand, a_len: usize, products: &[Product]) -> Result<()> {
        let mut guard = self.bf16_scratch.lock().map_err(|_| Error::device("CUDA scratch", "poisoned"))?;
        // the rounded A, then the rounded B (from 0 when A is already bf16)
        let b_at = if matches!(a, Operand::F32(_)) { a_len.next_multiple_of(BF16_ALIGN) } else { 0 };
        let b_len = |p: &Product| if matches!(p.b, Operand::F32(_)) { p.shape.n * p.shape.k } else { 0 };
        let need = (b_at + products.iter().map(b_len).max().unwrap_or(0)).max(1);
        if guard.as_ref().is_none_or(|s| s.len() < need) {
            *guard = None; // freed first: its memory may serve the larger one
            *guard = Some(self.alloc(need, "the bf16 operands of a product")?);
        }
        let scratch = guard.as_mut().ok_or_else(|| Error::device("CUDA scratch", "missing"))?;
        let base = scratch.device_ptr_mut(&self.stream).0;
        let a16 = match a {
            Operand::F32(ap) => {
                self.round_bf16(base, ap, a_len)?;
                base
            }
            Operand::Bf16(ap) => ap,
        };
        for p in products {
            debug_assert_eq!(p.shape.m * p.shape.k, a_len, "products sharing A share its size");
            let b16 = match p.b {
                Operand::F32(bp) => {
                    let at = base + 2 * b_at as u64;
                    self.round_bf16(at, bp, p.shape.n * p.shape.k)?;
                    at
                }
                Operand::Bf16(bp) => bp,
            };
            let ops = ExOperands { c: p.c, c_type: p.c_type, a: a16, b: b16, ab_type: R_16BF, compute: F32 };
            self.gemm_ex(ops, p.kind, p.shape, p.acc)?;
        }
        Ok(())
    }

    /// `out[i] = bf16(x[i])` (round to nearest even) for `n` elements at device addresses.
    pub(crate) fn round_bf16(&self, out: u64, x: u64, n: usize) -> Result<()> {
        let blocks = n.div_ceil(256).min(self.sms() as usize * 16).max(1) as u32;
        let args = [Arg::P(out), Arg::P(x), Arg::L(n as i64)];
        self.launch("elementwise", "f32_to_bf16_n", (blocks, 1, 1), (256, 1, 1), 0, &args)
    }

    /// One cublasGemmEx call for the row-major product of `kind` (see [`GemmPlan`]): the caller
    /// guarantees m·k, n·k and m·n elements of the operands' types behind the pointers.
    fn gemm_ex(&self, ops: ExOperands, kind: GemmKind, shape: GemmShape, acc: bool) -> Result<()> {
        // (profiled by operand type, kind and the n x k it multiplies by: the projection)
        let name = || {
            let t = if ops.ab_type == R_16BF {
                "bf16"
            } else if ops.compute == TF32 {
                "tf32"
            } else {
                "f32"
            };
            format!("gemm {t} {kind:?} n={} k={}", shape.n, shape.k)
        };
        self.profiled(name, || self.gemm_ex_now(ops, kind, shape, acc))
    }

    fn gemm_ex_now(&self, ops: ExOperands, kind: GemmKind, shape: GemmShape, acc: bool) -> Result<()> {
        let GemmShape { m, n, k } = shape;
        let p = gemm_plan(kind, m, n, k);
        let op = |t: bool| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
        let (alpha, beta) = (1.0f32, if acc { 1.0f32 } else { 0.0 });
        // SAFETY: the pointers hold at least m·k, n·k and m·n elements of their types on this
        // context (the callers check or allocate them); the handle runs on `self.stream`, which
        // orders every access.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                op(p.trans_first),
                op(p.trans_second),
                int(n, "gemm n")?,
                int(m, "gemm m")?,
                int(k, "gemm k")?,
                (&alpha) as *const f32 as *const _,
                ops.b as *const _,
                ops.ab_type,
                int(p.ld_first, "gemm ld")?,
                ops.a as *const _,
                ops.ab_type,
                int(p.ld_second, "gemm ld")?,
                (&beta) as *const f32 as *const _,
                ops.c as *mut _,
                ops.c_type,
                int(n, "gemm ldc")?,
                ops.compute,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| Error::device(format!("cuBLAS GemmEx ({kind:?} {m}x{n}x{k})"), format!("{e:?}")))
    }
}

/// The checks of a product on bf16 operands: no empty dimension, and operands of m·k, n·k and m·n
/// elements at least (`lens`: A, B, C).
fn bf16_operands_fit(kind: GemmKind, shape: GemmShape, (a, b, c): (usize, usize, usize)) -> Result<()> {
    let GemmShape { m, n, k } = shape;
    let what = || format!("bf16 GEMM {kind:?} {m}x{n}x{k}");
    if m == 0 || n == 0 || k == 0 {
        return Err(Error::shape(what(), "empty shapes are not supported"));
    }
    if a < m * k || b < n * k || c < m * n {
        return Err(Error::shape(what(), "operand views too short"));
    }
    Ok(())
}

/// An operand of a "bf16" product: f32 to round, or already bf16.
#[derive(Debug, Clone, Copy)]
enum Operand {
    F32(u64),
    Bf16(u64),
}

/// One product of [`Gpu::gemm_rounded`]: C at `c` (of type `c_type`) (+)= op(A)·op(B) of `kind`
/// and `shape`.
#[derive(Debug, Clone, Copy)]
struct Product {
    c: u64,
    c_type: cudaDataType_t,
    b: Operand,
    kind: GemmKind,
    shape: GemmShape,
    acc: bool,
}

/// The device pointers and types of one cublasGemmEx call.
#[derive(Clone, Copy)]
struct ExOperands {
    c: u64,
    c_type: cudaDataType_t,
    a: u64,
    b: u64,
    ab_type: cudaDataType_t,
    compute: cublasComputeType_t,
}

const R_32F: cudaDataType_t = cudaDataType_t::CUDA_R_32F;
const R_16BF: cudaDataType_t = cudaDataType_t::CUDA_R_16BF;
const F32: cublasComputeType_t = cublasComputeType_t::CUBLAS_COMPUTE_32F;
const TF32: cublasComputeType_t = cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32;
/// The second bf16 operand starts on a multiple of this many elements (256 bytes), so both
/// operands keep the alignment the tensor-core kernels want.
const BF16_ALIGN: usize = 128;

/// Storage type of a mixed-precision GEMM output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutType {
    F32,
    Bf16,
}

/// The output operand of a mixed-precision GEMM: a device pointer to `len` elements of type `ty`
/// (u16 bit patterns for bf16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmOut {
    pub ptr: u64,
    pub ty: OutType,
    pub len: usize,
}

impl Gpu {
    /// Mixed precision: C (+)= op(A)·op(B) with A and B in bf16 (as u16 bit patterns), f32
    /// accumulation (cublasGemmEx, CUBLAS_COMPUTE_32F) and C in f32 or bf16 (`out.ty`); shapes and
    /// row-major layouts as [`GemmKind`]. `out` holds m·n elements of the output type (u16 for
    /// bf16, f32 otherwise; a bf16 C is passed as its u16 view).
    pub fn gemm_bf16(
        &self,
        out: GemmOut,
        a: &CudaView<'_, u16>,
        b: &CudaView<'_, u16>,
        kind: GemmKind,
        shape: GemmShape,
        acc: bool,
    ) -> Result<()> {
        let GemmOut { ptr: c, ty: out, len: c_len } = out;
        bf16_operands_fit(kind, shape, (a.len(), b.len(), if c == 0 { 0 } else { c_len }))?;
        let c_type = match out {
            OutType::F32 => R_32F,
            OutType::Bf16 => R_16BF,
        };
        let (bp, ap) = (b.device_ptr(&self.stream).0, a.device_ptr(&self.stream).0);
        let ops = ExOperands { c, c_type, a: ap, b: bp, ab_type: R_16BF, compute: F32 };
        self.gemm_ex(ops, kind, shape, acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::cpu::{matmul_nn, matmul_nt, matmul_tn};

    /// cuBLAS SGEMM semantics on the host (column-major, op = transpose or not) for the operands
    /// of `p`: cuBLAS's (m, n, k), its first and second operands and C (leading dimension m).
    fn sgemm_colmajor(p: GemmPlan, (m, n, k): (usize, usize, usize), a: &[f32], b: &[f32], c: &mut [f32], beta: f32) {
        let (ta, lda, tb, ldb, ldc) = (p.trans_first, p.ld_first, p.trans_second, p.ld_second, m);
        for j in 0..n {
            for i in 0..m {
                let mut s = 0.0f64;
                for l in 0..k {
                    let av = if ta { a[l + i * lda] } else { a[i + l * lda] };
                    let bv = if tb { b[j + l * ldb] } else { b[l + j * ldb] };
                    s += av as f64 * bv as f64;
                }
                c[i + j * ldc] = beta * c[i + j * ldc] + s as f32;
            }
        }
    }

    /// common.cuh's `f32_to_bf16` (what `f32_to_bf16_n` writes), step for step on the host.
    fn f32_to_bf16_kernel(f: f32) -> u16 {
        let mut u = f.to_bits();
        if u & 0x7fff_ffff > 0x7f80_0000 {
            return ((u >> 16) | 0x0040) as u16;
        }
        u = u.wrapping_add(0x7fff + ((u >> 16) & 1));
        (u >> 16) as u16
    }

    /// The kernel's rounding of "bf16" product operands is IEEE round-to-nearest-even (the `half`
    /// crate's, which PyTorch's bf16 conversion matches): ties to even, overflow to ±inf, NaN kept
    /// NaN, subnormals and signed zeros; over special values and a million random bit patterns.
    #[test]
    fn operands_round_to_nearest_even_bf16() {
        let specials = [
            0.0f32,
            -0.0,
            1.0,
            f32::from_bits(0x3f80_8000), // 1 + 2^-8: a tie, rounds to even (down)
            f32::from_bits(0x3f81_8000), // a tie that rounds up
            f32::MAX,
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::from_bits(0x7f80_0001), // NaN with its payload in the low bits only
        ];
        let mut rng = crate::rng::Rng::new(5);
        let randoms = (0..1_000_000).map(|_| f32::from_bits(rng.next_u64() as u32));
        for x in specials.into_iter().chain(randoms) {
            let (got, want) = (f32_to_bf16_kernel(x), half::bf16::from_f32(x));
            if x.is_nan() {
                assert!(half::bf16::from_bits(got).is_nan(), "{x:e} ({:#x}) did not stay NaN", x.to_bits());
            } else {
                assert_eq!(got, want.to_bits(), "{x:e} ({:#x})", x.to_bits());
            }
        }
        assert_eq!(f32_to_bf16_kernel(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16_kernel(f32::from_bits(0x3f81_8000)), 0x3f82);
    }

    /// The plans, run through an emulated column-major SGEMM, equal the CPU's row-major products.
    #[test]
    fn gemm_plans_reproduce_the_row_major_products() {
        let (m, n, k) = (5, 7, 3);
        let mut rng = crate::rng::Rng::new(3);
        let mut rand = |len: usize| (0..len).map(|_| rng.uniform() as f32 - 0.5).collect::<Vec<f32>>();
        for kind in [GemmKind::Nt, GemmKind::Nn, GemmKind::Tn] {
            for acc in [false, true] {
                let (a, b, c0) = (rand(m * k), rand(n * k), rand(m * n));
                let mut want = c0.clone();
                match kind {
                    GemmKind::Nt => matmul_nt(&mut want, &a, &b, m, n, k, acc),
                    GemmKind::Nn => matmul_nn(&mut want, &a, &b, m, n, k, acc),
                    GemmKind::Tn => matmul_tn(&mut want, &a, &b, m, n, k, acc),
                }
                let p = gemm_plan(kind, m, n, k);
                let mut got = c0.clone();
                let beta = if acc { 1.0 } else { 0.0 };
                sgemm_colmajor(p, (n, m, k), &b, &a, &mut got, beta);
                let err = want.iter().zip(&got).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
                assert!(err < 1e-5, "{kind:?} acc {acc}: max error {err}");
            }
        }
    }
}
