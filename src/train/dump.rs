//! The RL phase's trajectory dump, `runs/<name>/trajectories.h5` (format: docs/trajectories.md):
//! one append per step, flushed, so a killed run leaves a readable file; a resumed run drops the
//! rows written after its checkpoint. Without the `hdf5` feature, or with
//! `[rl] dump_trajectories = false`, nothing is written.

use crate::error::Result;
use crate::train::rl::{Phase, StepSample};

/// File name of the dump inside the run directory.
pub const DUMP_FILE: &str = "trajectories.h5";

/// An open dump (or none).
pub struct Dump {
    #[cfg(feature = "hdf5")]
    writer: Option<crate::io::trajectories::TrajectoryWriter>,
}

impl Dump {
    /// Create the dump for a fresh phase (`done == 0`) or reopen it for one resumed after `done` steps.
    #[cfg(feature = "hdf5")]
    pub fn open(ph: &Phase, done: u64) -> Result<Self> {
        use crate::io::trajectories::TrajectoryWriter;
        if !ph.rl.dump_trajectories {
            return Ok(Dump { writer: None });
        }
        let path = ph.run_dir.join(DUMP_FILE);
        let config = toml::to_string(ph.cfg).unwrap_or_default();
        let writer = if done > 0 && path.is_file() {
            TrajectoryWriter::resume(&path, done + 1)?
        } else {
            TrajectoryWriter::create(&path, &config)?
        };
        Ok(Dump { writer: Some(writer) })
    }

    /// Without the `hdf5` feature: no dump.
    #[cfg(not(feature = "hdf5"))]
    pub fn open(_ph: &Phase, _done: u64) -> Result<Self> {
        Ok(Dump {})
    }

    /// Append RL step `step`'s samples (0-based step; stored as step + 1, policy version = step).
    #[cfg(feature = "hdf5")]
    pub fn append(&mut self, step: u64, samples: &[StepSample]) -> Result<()> {
        use crate::io::trajectories::TrajectoryRecord;
        let Some(w) = self.writer.as_mut() else { return Ok(()) };
        let records: Vec<TrajectoryRecord> = samples
            .iter()
            .map(|s| TrajectoryRecord {
                step: step + 1,
                policy_version: step,
                prompt_id: s.prompt_id,
                sample_index: s.sample_index,
                prompt: &s.data.prompt,
                response: &s.data.response,
                behav_logp: &s.data.behav_logp,
                logp: &s.logp,
                advantages: &s.data.advantages,
                reward: s.data.reward,
            })
            .collect();
        w.append(&records)
    }

    /// Without the `hdf5` feature: nothing to write.
    #[cfg(not(feature = "hdf5"))]
    pub fn append(&mut self, _step: u64, _samples: &[StepSample]) -> Result<()> {
        Ok(())
    }
}
