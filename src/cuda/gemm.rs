//! cuBLAS SGEMM for the row-major products of the model.

use crate::cuda::device::{drv, int, Gpu};
use crate::error::{Error, Result};
use crate::tensor::shape::GemmShape;
use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::driver::{CudaView, CudaViewMut};

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
    /// C (+)= op(A)·op(B) in f32 through cuBLAS SGEMM; shapes and row-major layouts as
    /// [`GemmKind`].
    pub(crate) fn gemm(
        &self,
        mut c: CudaViewMut<'_, f32>,
        a: CudaView<'_, f32>,
        b: CudaView<'_, f32>,
        kind: GemmKind,
        shape: GemmShape,
        acc: bool,
    ) -> Result<()> {
        let GemmShape { m, n, k } = shape;
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            if !acc {
                self.stream.memset_zeros(&mut c).map_err(drv("memset"))?;
            }
            return Ok(());
        }
        if a.len() < m * k || b.len() < n * k || c.len() < m * n {
            return Err(Error::shape(format!("GEMM {kind:?} {m}x{n}x{k}"), "operand views too short"));
        }
        let p = gemm_plan(kind, m, n, k);
        let op = |t: bool| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
        let cfg = GemmConfig {
            transa: op(p.trans_first),
            transb: op(p.trans_second),
            m: int(n, "gemm n")?,
            n: int(m, "gemm m")?,
            k: int(k, "gemm k")?,
            alpha: 1.0f32,
            lda: int(p.ld_first, "gemm ld")?,
            ldb: int(p.ld_second, "gemm ld")?,
            beta: if acc { 1.0 } else { 0.0 },
            ldc: int(n, "gemm ldc")?,
        };
        // SAFETY: the views hold at least m·k, n·k and m·n elements (checked above), matching
        // the leading dimensions of the plan.
        unsafe { self.blas.gemm(cfg, &b, &a, &mut c) }.map_err(|e| Error::device("cuBLAS SGEMM", format!("{e:?}")))
    }
}

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
        let GemmShape { m, n, k } = shape;
        let GemmOut { ptr: c, ty: out, len: c_len } = out;
        use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType_t};
        use cudarc::driver::DevicePtr;
        if m == 0 || n == 0 || k == 0 {
            return Err(Error::shape(format!("bf16 GEMM {kind:?} {m}x{n}x{k}"), "empty shapes are not supported"));
        }
        if a.len() < m * k || b.len() < n * k || c_len < m * n || c == 0 {
            return Err(Error::shape(format!("bf16 GEMM {kind:?} {m}x{n}x{k}"), "operand views too short"));
        }
        let p = gemm_plan(kind, m, n, k);
        let op = |t: bool| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
        let (alpha, beta) = (1.0f32, if acc { 1.0f32 } else { 0.0 });
        let c_type = match out {
            OutType::F32 => cudaDataType_t::CUDA_R_32F,
            OutType::Bf16 => cudaDataType_t::CUDA_R_16BF,
        };
        let (bp, ap) = (b.device_ptr(&self.stream).0, a.device_ptr(&self.stream).0);
        // SAFETY: the operands hold at least m·k, n·k and m·n elements of their types (checked
        // above) on this context; the handle runs on `self.stream`, which orders every access.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                op(p.trans_first),
                op(p.trans_second),
                int(n, "gemm n")?,
                int(m, "gemm m")?,
                int(k, "gemm k")?,
                (&alpha) as *const f32 as *const _,
                bp as *const _,
                cudaDataType_t::CUDA_R_16BF,
                int(p.ld_first, "gemm ld")?,
                ap as *const _,
                cudaDataType_t::CUDA_R_16BF,
                int(p.ld_second, "gemm ld")?,
                (&beta) as *const f32 as *const _,
                c as *mut _,
                c_type,
                int(n, "gemm ldc")?,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| Error::device("cuBLAS GemmEx (bf16)", format!("{e:?}")))
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
