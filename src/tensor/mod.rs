//! Storage and the handful of operations the model needs, per backend.
//!
//! The CPU backend (`cpu`) is the specification: every fast path (CUDA, fused kernels) is tested
//! against it.

pub mod cpu;
