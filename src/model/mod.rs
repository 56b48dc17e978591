//! Decoder-only transformer of the Qwen2/LLaMA family with explicit forward and backward.

pub mod config;
pub mod params;

pub use config::{Arch, ModelConfig};
pub use params::{ParamLayout, ParamSpec, Params};
