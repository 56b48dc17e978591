//! Rollout: sampling and batched generation with a KV cache (continuous batching). Tree
//! branching, replication and the async buffer arrive with the RL issues.

pub mod engine;
pub mod sampler;
pub mod workload;

pub use engine::{generate, Completion, Finish, GenerateConfig, Request, Slots};
pub use sampler::{sample, SamplingParams};
pub use workload::WorkloadConfig;
