//! Subcommand implementations behind `src/main.rs` (parsing lives in main.rs; logic lives here).

pub mod bench;
pub mod bench_ceilings;
pub mod bench_comm;
pub mod bench_common;
pub mod bench_env;
pub mod bench_gpu;
#[cfg(feature = "cuda")]
pub mod bench_rl_step;
pub mod compass;
pub mod convert;
pub mod eval;
pub mod experiment;
pub mod experiment_runs;
pub mod inspect;
pub mod launch;
pub mod plot;
pub mod run_progress;
pub mod seeds;
pub mod selftest;
pub mod sweep;
pub mod train;
