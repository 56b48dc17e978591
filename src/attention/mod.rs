//! Causal grouped-query attention over packed sequences, forward and backward.
//!
//! The statistics pass (FCI, FAI, WAAD) of the AttnRL issue builds on the row log-sum-exp values
//! this forward stores.

pub mod cpu;
pub mod stats;

pub use cpu::{attention_backward, attention_forward, AttnSaved, AttnShape};
