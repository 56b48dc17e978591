//! Storage and the handful of operations the model needs, per backend.
//!
//! The CPU backend (`cpu`) is the specification: every fast path (CUDA, fused kernels) is tested
//! against it. [`Backend`] is the interface the model is written against.

pub mod backend;
pub mod cpu;
pub mod dtype;
pub mod shape;

pub use backend::{Backend, LogitStats, LogprobGrad, PackedBatch};
pub use cpu::Cpu;
pub use dtype::Dtype;
pub use shape::GemmShape;
