//! arbor: a deterministic RL trainer for language models on verifiable reasoning tasks.
//!
//! Data path: prompt → rollout → reward → advantage → loss → gradient → all-reduce → AdamW.

pub mod cli;
pub mod error;
pub mod model;

pub use error::{Error, Result};
