//! Files arbor reads and writes: HF checkpoints (config.json + safetensors, sharded or not).

pub mod atomic;
pub mod checksum;
pub mod dtype;
pub mod hf;
pub mod space;
pub mod tensor_file;
pub mod tfevents;
pub mod trajectories;

pub use dtype::StoreDtype;
pub use hf::{load_hf_dir, load_hf_dir_with_report, save_hf_dir, LoadedCheckpoint, SaveOptions, SaveSummary};
