//! arbor: a deterministic RL trainer for language models on verifiable reasoning tasks.
//!
//! Data path: prompt → rollout → reward → advantage → loss → gradient → all-reduce → AdamW.

// Every `unsafe` block and impl says, in a `// SAFETY:` comment, why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod attention;
pub mod attnrl;
pub mod cli;
pub mod config;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod env;
pub mod error;
pub mod io;
pub mod model;
pub mod parallel;
pub mod rl;
pub mod rng;
pub mod rollout;
pub mod tasks;
pub mod tensor;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
