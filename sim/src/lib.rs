//! arbor-sim: deterministic discrete-event simulator of RL training clusters.

pub mod cli;
