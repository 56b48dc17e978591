//! CUDA backend (feature `cuda`): arbor's kernels (cuda/*.cu, compiled at run time by NVRTC and
//! cached), cuBLAS SGEMM, and NCCL, all loaded dynamically so that a build with this feature runs
//! on machines without CUDA and says why when asked for a GPU.
//!
//! The model code is not duplicated: [`Gpu`] implements [`crate::tensor::Backend`] and runs the
//! same generic forward and backward as the CPU (`Model::forward_on` / `backward_on`).

pub mod act;
pub mod attention;
pub mod backend;
pub mod batch;
pub mod decode;
pub mod decode_attn;
mod decode_step;
pub mod device;
mod driver_error;
pub mod gemm;
pub mod generate;
pub mod graphs;
pub mod image;
pub mod kv_cache;
pub mod mma;
pub mod model;
pub mod nccl;
pub mod nvrtc;
pub mod placement;
pub mod plans;
pub mod pool;
pub mod profile;
pub mod sample;
pub mod stats;

pub use backend::GpuRope;
pub use batch::GpuBatch;
pub use decode::GpuDecoder;
pub use device::{device_count, unavailable, Arg, Gpu};
pub use kv_cache::GpuKvCache;
pub use model::GpuModel;
pub use placement::this_process_memory;
pub use plans::{AttnMma, AttnRows, DecodeAttn, DkdvPlan};
pub use pool::PoolPolicy;
