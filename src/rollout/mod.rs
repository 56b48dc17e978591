//! Rollout: sampling and batched generation with a KV cache (continuous batching). Tree
//! branching, replication and the async buffer arrive with the RL issues.

pub mod engine;
pub mod request;
pub mod sampler;
pub mod slots;
pub mod workload;

pub use engine::generate;
pub use request::{Completion, Finish, GenerateConfig, Request};
pub use sampler::{sample, SamplingParams};
pub use slots::{LoopStep, Slots, StepInput};
pub use workload::WorkloadConfig;
