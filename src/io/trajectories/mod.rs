//! Trajectory dumps: every sampled response of an RL run, with its rewards, log-probs and advantages, appended
//! step by step to one HDF5 file (layout: `docs/trajectories.md`).
//!
//! All datasets are 1-D, chunked, resizable and compressed (shuffle + deflate). Per-sample columns have one
//! entry per sample; token-level data is stored flat, with `prompt_offsets` / `response_offsets` (one entry more
//! than there are samples, starting at 0) marking where each sample's tokens start and end. The writer flushes
//! the file after every [`TrajectoryWriter::append`], so a run killed between appends leaves a readable file.
//!
//! HDF5 support is the `hdf5` cargo feature (on by default). Without it the types still exist, but creating,
//! resuming or reading a dump returns an error saying that this arbor was built without the feature.
//!
//! Layout of this module: the record and summary types live here; [`TrajectoryWriter`] and the reading
//! functions are in `api`, which hands over to the HDF5 implementation in `h5` (or, without the feature, to
//! `stub`); `summary` holds the format-independent counting of complete samples and per-step statistics.

mod api;
#[cfg(feature = "hdf5")]
mod h5;
#[cfg(not(feature = "hdf5"))]
mod stub;
mod summary;

pub use api::{compact, read_summary, read_trajectories, TrajectoryWriter};

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Version of the layout written by this module (file attribute `format_version`).
pub const FORMAT_VERSION: i64 = 2;

/// Datasets with one entry per sample.
pub const PER_SAMPLE_DATASETS: [&str; 7] =
    ["step", "policy_version", "prompt_id", "sample_index", "reward", "branch_parent", "branch_token"];
/// Offset datasets (one entry per sample plus a leading 0).
pub const OFFSET_DATASETS: [&str; 2] = ["prompt_offsets", "response_offsets"];
/// Flat token-level datasets; all but `prompt_tokens` are aligned with `response_tokens`.
pub const FLAT_DATASETS: [&str; 9] =
    ["prompt_tokens", "response_tokens", "behav_logp", "logp", "advantages", "step_index", "fci", "waad", "fai"];

/// One sample of a training step, as handed to [`TrajectoryWriter::append`].
#[derive(Debug, Clone, Copy)]
pub struct TrajectoryRecord<'a> {
    /// RL step (1-based, within the RL phase) whose batch this sample belongs to.
    pub step: u64,
    /// Version of the policy that generated the sample.
    pub policy_version: u64,
    /// Id of the prompt (task item) the sample answers.
    pub prompt_id: u64,
    /// Index of the sample among those drawn for the same prompt.
    pub sample_index: u32,
    /// Prompt token ids.
    pub prompt: &'a [u32],
    /// Response token ids (may be empty).
    pub response: &'a [u32],
    /// Behaviour-policy log-prob of each response token, recorded at rollout.
    pub behav_logp: &'a [f32],
    /// Log-prob of each response token recomputed by the trainer (NaN where it did not recompute).
    pub logp: &'a [f32],
    /// Advantage of each response token.
    pub advantages: &'a [f32],
    /// Scalar reward of the sample.
    pub reward: f32,
    /// Tree sampling: `sample_index` of the response this continuation branched from (−1: not a continuation).
    pub branch_parent: i64,
    /// Tree sampling: token position in the parent's response where this continuation starts (−1: none).
    pub branch_token: i64,
    /// Step of each response token (steps split by `[attnrl] step_separators`; 0 without tree sampling).
    pub step_index: &'a [u32],
    /// FCI of each response token's step (NaN where not computed).
    pub fci: &'a [f32],
    /// WAAD and FAI of each response token (`[rhythm]`; NaN where not computed).
    pub waad: &'a [f32],
    pub fai: &'a [f32],
}

impl TrajectoryRecord<'_> {
    /// Check that the per-token arrays have one value per response token; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let n = self.response.len();
        for (field, len) in [
            ("behav_logp", self.behav_logp.len()),
            ("logp", self.logp.len()),
            ("advantages", self.advantages.len()),
            ("step_index", self.step_index.len()),
            ("fci", self.fci.len()),
            ("waad", self.waad.len()),
            ("fai", self.fai.len()),
        ] {
            if len != n {
                return Err(Error::shape(
                    format!(
                        "trajectory record (step {}, prompt_id {}, sample_index {})",
                        self.step, self.prompt_id, self.sample_index
                    ),
                    format!("`{field}` has {len} values but the response has {n} tokens"),
                ));
            }
        }
        Ok(())
    }
}

/// A whole dump read back into memory ([`read_trajectories`]). Columns are truncated to the complete samples.
#[derive(Debug, Clone, Default)]
pub struct Trajectories {
    /// File attribute `format_version`.
    pub format_version: i64,
    /// File attribute `arbor_version`.
    pub arbor_version: String,
    /// File attribute `config` (the run's TOML text).
    pub config: String,
    /// Every file attribute, rendered as text (strings as is, numbers in decimal).
    pub attributes: BTreeMap<String, String>,
    /// Per-sample columns.
    pub step: Vec<u64>,
    pub policy_version: Vec<u64>,
    pub prompt_id: Vec<u64>,
    pub sample_index: Vec<u32>,
    pub reward: Vec<f32>,
    pub branch_parent: Vec<i64>,
    pub branch_token: Vec<i64>,
    /// Offsets into the flat arrays (length = samples + 1, starting at 0).
    pub prompt_offsets: Vec<u64>,
    pub response_offsets: Vec<u64>,
    /// Flat token-level arrays.
    pub prompt_tokens: Vec<u32>,
    pub response_tokens: Vec<u32>,
    pub behav_logp: Vec<f32>,
    pub logp: Vec<f32>,
    pub advantages: Vec<f32>,
    pub step_index: Vec<u32>,
    pub fci: Vec<f32>,
    pub waad: Vec<f32>,
    pub fai: Vec<f32>,
}

impl Trajectories {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.step.len()
    }

    /// Whether the dump holds no sample.
    pub fn is_empty(&self) -> bool {
        self.step.is_empty()
    }

    /// Sample `i` as a record borrowing from the columns (`None` when out of range, or when the columns were
    /// modified so that the offsets no longer fit the flat arrays).
    pub fn record(&self, i: usize) -> Option<TrajectoryRecord<'_>> {
        let range = |offs: &[u64]| Some(*offs.get(i)? as usize..*offs.get(i + 1)? as usize);
        let (p, r) = (range(&self.prompt_offsets)?, range(&self.response_offsets)?);
        Some(TrajectoryRecord {
            step: *self.step.get(i)?,
            policy_version: *self.policy_version.get(i)?,
            prompt_id: *self.prompt_id.get(i)?,
            sample_index: *self.sample_index.get(i)?,
            prompt: self.prompt_tokens.get(p)?,
            response: self.response_tokens.get(r.clone())?,
            behav_logp: self.behav_logp.get(r.clone())?,
            logp: self.logp.get(r.clone())?,
            advantages: self.advantages.get(r.clone())?,
            reward: *self.reward.get(i)?,
            branch_parent: *self.branch_parent.get(i)?,
            branch_token: *self.branch_token.get(i)?,
            step_index: self.step_index.get(r.clone())?,
            fci: self.fci.get(r.clone())?,
            waad: self.waad.get(r.clone())?,
            fai: self.fai.get(r)?,
        })
    }
}

/// Samples of one step, as summarised by [`read_summary`].
#[derive(Debug, Clone, PartialEq)]
pub struct StepStats {
    pub step: u64,
    pub samples: u64,
    pub reward_mean: f64,
    pub response_len_mean: f64,
}

/// One dataset of the file, as listed by [`read_summary`].
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetInfo {
    pub name: String,
    /// Element type (`uint64`, `float32`, ...), or what the object is when it is not a dataset.
    pub dtype: String,
    pub shape: Vec<usize>,
    pub chunk: Option<Vec<usize>>,
    /// Filter pipeline, e.g. `["shuffle", "deflate(4)"]`.
    pub filters: Vec<String>,
}

/// What `arbor inspect` prints about a dump; reads only the per-sample columns and offsets.
#[derive(Debug, Clone, PartialEq)]
pub struct TrajectorySummary {
    pub path: PathBuf,
    pub format_version: i64,
    pub arbor_version: String,
    /// Every file attribute rendered as text (including `config`).
    pub attributes: BTreeMap<String, String>,
    /// Complete samples.
    pub samples: u64,
    /// Rows past the last complete sample (left by a run killed in the middle of an append); ignored.
    pub incomplete_rows: u64,
    /// Per step, in increasing step order.
    pub steps: Vec<StepStats>,
    /// Smallest and largest policy version (`None` when empty).
    pub policy_versions: Option<(u64, u64)>,
    /// Mean reward over all samples (`None` when empty).
    pub reward_mean: Option<f64>,
    pub response_len_mean: Option<f64>,
    pub response_len_max: u64,
    pub prompt_tokens: u64,
    pub response_tokens: u64,
    pub datasets: Vec<DatasetInfo>,
}
