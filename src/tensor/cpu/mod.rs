//! CPU backend: GEMM through the `gemm` crate, elementwise kernels parallelised with rayon.

pub mod matmul;
pub mod ops;
pub mod simd;

pub use matmul::{matmul_nn, matmul_nt, matmul_tn, MatMut, MatRef};
