//! arbor-sim: deterministic discrete-event simulator of RL training clusters.
//!
//! A scenario is a pure function of (scenario file, seed): see [`run::run_scenario`].

pub mod activation;
pub mod admission;
pub mod cli;
pub mod control;
pub mod cost;
pub mod decode;
pub mod dispatch;
pub mod dist;
pub mod engine;
pub mod event;
pub mod hardware;
pub mod iheap;
pub mod metrics;
pub mod pieces;
pub mod plot;
pub mod policy_cost;
pub mod report;
pub mod rng;
pub mod run;
pub mod scenario;
mod scenario_check;
pub mod sweep;
pub mod train_parallel;
pub mod trajectory;
pub mod validate;
pub mod worker;
