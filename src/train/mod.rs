//! Training: optimizer, schedules and the loops: the supervised phase (`pretrain`), then the RL phase (`rl`, `async_rl`).

pub mod adamw;
pub mod async_rl;
pub mod checkpoint;
pub mod commit;
pub mod critic;
pub mod decoding;
pub mod dump;
pub mod engine;
pub mod guard;
pub mod job;
pub mod memory_plan;
pub mod metrics;
pub mod preempt;
pub mod pretrain;
pub mod probe;
pub mod progress;
pub mod rl;
pub mod run_dir;
pub mod run_record;
pub mod schedule;
pub mod tensorboard;

pub use adamw::{clip_and_step, clip_and_step_model, clip_coefficient, clip_grad_norm, grad_norm, AdamW, AdamWConfig};
pub use schedule::{LrSchedule, ScheduleKind};
