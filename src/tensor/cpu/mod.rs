//! CPU backend: GEMM through the `gemm` crate, elementwise kernels parallelised with rayon, and a
//! pre-packed-weight product for the decode path.

pub mod aligned;
pub mod backend;
pub mod head_norm;
pub mod isa;
pub mod logits;
pub mod matmul;
pub mod ops;
pub mod packed;
pub mod reduce;
pub mod simd;

pub use aligned::AlignedBuf;
pub use backend::Cpu;
pub use matmul::{matmul_nn, matmul_nt, matmul_tn, MatMut, MatRef};
pub use packed::{matmul_packed, PackedMatrix};
