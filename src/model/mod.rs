//! Decoder-only transformer of the Qwen2/LLaMA family with explicit forward and backward.

pub mod batch;
pub mod config;
pub mod decode;
mod decode_attend;
pub mod decode_stack;
pub mod head;
pub mod host_memory;
pub mod init;
mod layer;
pub mod micro_batch;
pub mod params;
pub mod rope_scaling;
pub mod shard;
pub mod transformer;
pub mod workspace;

pub use batch::Batch;
pub use config::{Arch, ModelConfig};
pub use params::{ParamLayout, ParamSpec, Params};
pub use transformer::Model;
pub use workspace::Workspace;
