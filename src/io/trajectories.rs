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

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    /// Optimizer step whose batch this sample belongs to.
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

/// Append-only writer of a trajectory dump. Every [`append`](Self::append) ends with a flush of the file.
pub struct TrajectoryWriter {
    inner: imp::Writer,
}

impl TrajectoryWriter {
    /// Create (truncate) `path`, writing the attributes (`format_version`, `arbor_version`, `config`).
    pub fn create(path: &Path, config_toml: &str) -> Result<Self> {
        Ok(Self { inner: imp::Writer::create(path, config_toml)? })
    }

    /// Reopen an existing dump for a resumed run: rows with `step >= first_dropped_step` (written after the
    /// checkpoint the run resumes from) are removed, the rest kept; appends continue after them. Rows left
    /// incomplete by a crash in the middle of an append are removed too.
    pub fn resume(path: &Path, first_dropped_step: u64) -> Result<Self> {
        Ok(Self { inner: imp::Writer::resume(path, first_dropped_step)? })
    }

    /// Append one step's samples (all datasets grown together), then flush the file. Nothing is written when a
    /// record has per-token arrays of the wrong length. After an HDF5 error the writer refuses further appends.
    pub fn append(&mut self, records: &[TrajectoryRecord]) -> Result<()> {
        for r in records {
            r.validate().map_err(|e| e.within(self.inner.path().display()))?;
        }
        self.inner.append(records)
    }

    /// Set (or replace) a text attribute of the file, e.g. `tokenizer`; then flush. `format_version` is refused.
    pub fn set_attribute(&mut self, name: &str, value: &str) -> Result<()> {
        if name == "format_version" {
            return Err(Error::Invalid(format!(
                "{}: attribute `format_version` is set by the writer",
                self.inner.path().display()
            )));
        }
        self.inner.set_attribute(name, value)
    }

    /// Number of samples in the file.
    pub fn samples(&self) -> u64 {
        self.inner.samples()
    }

    /// Path of the file.
    pub fn path(&self) -> &Path {
        self.inner.path()
    }
}

/// Read a whole dump into memory (complete samples only).
pub fn read_trajectories(path: &Path) -> Result<Trajectories> {
    imp::read_trajectories(path)
}

/// Summarise a dump without reading its token arrays.
pub fn read_summary(path: &Path) -> Result<TrajectorySummary> {
    imp::read_summary(path)
}

/// Number of complete samples given the lengths found on disk: the largest `n` such that every per-sample
/// column has `n` entries, the offsets `n + 1`, and the flat arrays reach `offsets[n]`. Also checks that the
/// offsets used start at 0 and never decrease. `what` names the file in errors.
#[cfg_attr(not(feature = "hdf5"), allow(dead_code))]
fn complete_samples(
    what: &Path,
    per_sample_lens: &[usize],
    prompt_offsets: &[u64],
    response_offsets: &[u64],
    prompt_flat_len: usize,
    response_flat_len: usize,
) -> Result<usize> {
    let mut n = per_sample_lens.iter().copied().min().unwrap_or(0);
    for (name, offs) in [("prompt_offsets", prompt_offsets), ("response_offsets", response_offsets)] {
        if offs.first() != Some(&0) {
            return Err(Error::format(what, format!("dataset `{name}` must start with 0")));
        }
        n = n.min(offs.len() - 1);
    }
    for (name, offs) in [("prompt_offsets", prompt_offsets), ("response_offsets", response_offsets)] {
        if let Some(i) = offs[..=n].windows(2).position(|w| w[1] < w[0]) {
            let msg = format!("dataset `{name}` decreases at index {} ({} -> {})", i + 1, offs[i], offs[i + 1]);
            return Err(Error::format(what, msg));
        }
    }
    while n > 0 && (prompt_offsets[n] > prompt_flat_len as u64 || response_offsets[n] > response_flat_len as u64) {
        n -= 1;
    }
    Ok(n)
}

/// The per-sample columns a summary is computed from (n samples; offsets have n + 1 entries).
#[cfg_attr(not(feature = "hdf5"), allow(dead_code))]
struct SampleColumns<'a> {
    step: &'a [u64],
    policy_version: &'a [u64],
    reward: &'a [f32],
    prompt_offsets: &'a [u64],
    response_offsets: &'a [u64],
}

/// Per-step and overall statistics from the per-sample columns.
#[cfg_attr(not(feature = "hdf5"), allow(dead_code))]
fn summarise(
    path: &Path,
    format_version: i64,
    arbor_version: String,
    attributes: BTreeMap<String, String>,
    columns: SampleColumns<'_>,
    incomplete_rows: u64,
    datasets: Vec<DatasetInfo>,
) -> TrajectorySummary {
    let SampleColumns { step, policy_version, reward, prompt_offsets, response_offsets } = columns;
    let n = step.len();
    let resp_len = |i: usize| response_offsets[i + 1] - response_offsets[i];
    // step -> (samples, reward sum, response token sum)
    let mut per_step: BTreeMap<u64, (u64, f64, u64)> = BTreeMap::new();
    for i in 0..n {
        let e = per_step.entry(step[i]).or_default();
        e.0 += 1;
        e.1 += reward[i] as f64;
        e.2 += resp_len(i);
    }
    let steps = per_step
        .into_iter()
        .map(|(step, (samples, rsum, lsum))| StepStats {
            step,
            samples,
            reward_mean: rsum / samples as f64,
            response_len_mean: lsum as f64 / samples as f64,
        })
        .collect();
    let policy_versions = policy_version.iter().min().zip(policy_version.iter().max()).map(|(a, b)| (*a, *b));
    let response_tokens = response_offsets[n];
    TrajectorySummary {
        path: path.to_path_buf(),
        format_version,
        arbor_version,
        attributes,
        samples: n as u64,
        incomplete_rows,
        steps,
        policy_versions,
        reward_mean: (n > 0).then(|| reward.iter().map(|&r| r as f64).sum::<f64>() / n as f64),
        response_len_mean: (n > 0).then(|| response_tokens as f64 / n as f64),
        response_len_max: (0..n).map(resp_len).max().unwrap_or(0),
        prompt_tokens: prompt_offsets[n],
        response_tokens,
        datasets,
    }
}

#[cfg(feature = "hdf5")]
mod imp {
    use super::*;
    use hdf5::types::{TypeDescriptor, VarLenUnicode};
    use hdf5::{Dataset, File, H5Type};
    use std::str::FromStr;

    /// Chunk length (elements) of the per-sample and offset datasets.
    const SAMPLE_CHUNK: usize = 1024;
    /// Chunk length (elements) of the flat token-level datasets.
    const TOKEN_CHUNK: usize = 16384;
    const DEFLATE_LEVEL: u8 = 4;

    fn h5err(path: &Path, what: &str, e: hdf5::Error) -> Error {
        Error::format(path, format!("{what}: {e}"))
    }

    /// The twelve datasets of a dump.
    struct Columns {
        step: Dataset,
        policy_version: Dataset,
        prompt_id: Dataset,
        sample_index: Dataset,
        reward: Dataset,
        prompt_offsets: Dataset,
        response_offsets: Dataset,
        prompt_tokens: Dataset,
        response_tokens: Dataset,
        behav_logp: Dataset,
        logp: Dataset,
        advantages: Dataset,
        branch_parent: Dataset,
        branch_token: Dataset,
        step_index: Dataset,
        fci: Dataset,
        waad: Dataset,
        fai: Dataset,
    }

    fn create_column<T: H5Type>(file: &File, path: &Path, name: &str, chunk: usize) -> Result<Dataset> {
        file.new_dataset::<T>()
            .chunk(chunk)
            .shuffle()
            .deflate(DEFLATE_LEVEL)
            .shape(0..)
            .create(name)
            .map_err(|e| h5err(path, &format!("creating dataset `{name}`"), e))
    }

    /// Open dataset `name`, checking that it is 1-D with elements of type `T`.
    fn open_column<T: H5Type>(file: &File, path: &Path, name: &str) -> Result<Dataset> {
        if !file.link_exists(name) {
            return Err(Error::format(path, format!("dataset `{name}` not found (not an arbor trajectory dump?)")));
        }
        let ds = file.dataset(name).map_err(|e| h5err(path, &format!("dataset `{name}`"), e))?;
        let found =
            ds.dtype().and_then(|t| t.to_descriptor()).map_err(|e| h5err(path, &format!("dataset `{name}`"), e))?;
        let want = T::type_descriptor();
        if found != want {
            return Err(Error::format(path, format!("dataset `{name}` has element type {found}, expected {want}")));
        }
        if ds.ndim() != 1 {
            return Err(Error::format(path, format!("dataset `{name}` has shape {:?}, expected 1-D", ds.shape())));
        }
        Ok(ds)
    }

    fn read_column<T: H5Type>(ds: &Dataset, path: &Path, name: &str) -> Result<Vec<T>> {
        ds.read_raw::<T>().map_err(|e| h5err(path, &format!("reading dataset `{name}`"), e))
    }

    /// Write `data` at `at..at + data.len()`, growing the dataset to that length.
    fn write_at<T: H5Type>(ds: &Dataset, path: &Path, name: &str, at: u64, data: &[T]) -> Result<()> {
        let end = at as usize + data.len();
        ds.resize(end).map_err(|e| h5err(path, &format!("resizing dataset `{name}`"), e))?;
        if !data.is_empty() {
            ds.write_slice(data, at as usize..end).map_err(|e| h5err(path, &format!("writing dataset `{name}`"), e))?;
        }
        Ok(())
    }

    fn truncate(ds: &Dataset, path: &Path, name: &str, len: u64) -> Result<()> {
        ds.resize(len as usize).map_err(|e| h5err(path, &format!("resizing dataset `{name}`"), e))
    }

    impl Columns {
        fn create(file: &File, path: &Path) -> Result<Self> {
            Ok(Columns {
                step: create_column::<u64>(file, path, "step", SAMPLE_CHUNK)?,
                policy_version: create_column::<u64>(file, path, "policy_version", SAMPLE_CHUNK)?,
                prompt_id: create_column::<u64>(file, path, "prompt_id", SAMPLE_CHUNK)?,
                sample_index: create_column::<u32>(file, path, "sample_index", SAMPLE_CHUNK)?,
                reward: create_column::<f32>(file, path, "reward", SAMPLE_CHUNK)?,
                prompt_offsets: create_column::<u64>(file, path, "prompt_offsets", SAMPLE_CHUNK)?,
                response_offsets: create_column::<u64>(file, path, "response_offsets", SAMPLE_CHUNK)?,
                prompt_tokens: create_column::<u32>(file, path, "prompt_tokens", TOKEN_CHUNK)?,
                response_tokens: create_column::<u32>(file, path, "response_tokens", TOKEN_CHUNK)?,
                behav_logp: create_column::<f32>(file, path, "behav_logp", TOKEN_CHUNK)?,
                logp: create_column::<f32>(file, path, "logp", TOKEN_CHUNK)?,
                advantages: create_column::<f32>(file, path, "advantages", TOKEN_CHUNK)?,
                branch_parent: create_column::<i64>(file, path, "branch_parent", SAMPLE_CHUNK)?,
                branch_token: create_column::<i64>(file, path, "branch_token", SAMPLE_CHUNK)?,
                step_index: create_column::<u32>(file, path, "step_index", TOKEN_CHUNK)?,
                fci: create_column::<f32>(file, path, "fci", TOKEN_CHUNK)?,
                waad: create_column::<f32>(file, path, "waad", TOKEN_CHUNK)?,
                fai: create_column::<f32>(file, path, "fai", TOKEN_CHUNK)?,
            })
        }

        fn open(file: &File, path: &Path) -> Result<Self> {
            Ok(Columns {
                step: open_column::<u64>(file, path, "step")?,
                policy_version: open_column::<u64>(file, path, "policy_version")?,
                prompt_id: open_column::<u64>(file, path, "prompt_id")?,
                sample_index: open_column::<u32>(file, path, "sample_index")?,
                reward: open_column::<f32>(file, path, "reward")?,
                prompt_offsets: open_column::<u64>(file, path, "prompt_offsets")?,
                response_offsets: open_column::<u64>(file, path, "response_offsets")?,
                prompt_tokens: open_column::<u32>(file, path, "prompt_tokens")?,
                response_tokens: open_column::<u32>(file, path, "response_tokens")?,
                behav_logp: open_column::<f32>(file, path, "behav_logp")?,
                logp: open_column::<f32>(file, path, "logp")?,
                advantages: open_column::<f32>(file, path, "advantages")?,
                branch_parent: open_column::<i64>(file, path, "branch_parent")?,
                branch_token: open_column::<i64>(file, path, "branch_token")?,
                step_index: open_column::<u32>(file, path, "step_index")?,
                fci: open_column::<f32>(file, path, "fci")?,
                waad: open_column::<f32>(file, path, "waad")?,
                fai: open_column::<f32>(file, path, "fai")?,
            })
        }

        fn per_sample_lens(&self) -> [usize; 7] {
            [
                self.step.size(),
                self.policy_version.size(),
                self.prompt_id.size(),
                self.sample_index.size(),
                self.reward.size(),
                self.branch_parent.size(),
                self.branch_token.size(),
            ]
        }

        /// Length reached by all the response-aligned flat arrays.
        fn response_flat_len(&self) -> usize {
            [
                self.response_tokens.size(),
                self.behav_logp.size(),
                self.logp.size(),
                self.advantages.size(),
                self.step_index.size(),
                self.fci.size(),
                self.waad.size(),
                self.fai.size(),
            ]
            .into_iter()
            .min()
            .unwrap_or(0)
        }

        /// Read the offsets and return them truncated to the complete samples (`n + 1` entries each).
        fn complete_offsets(&self, path: &Path) -> Result<(Vec<u64>, Vec<u64>)> {
            let mut po = read_column::<u64>(&self.prompt_offsets, path, "prompt_offsets")?;
            let mut ro = read_column::<u64>(&self.response_offsets, path, "response_offsets")?;
            let n = complete_samples(
                path,
                &self.per_sample_lens(),
                &po,
                &ro,
                self.prompt_tokens.size(),
                self.response_flat_len(),
            )?;
            po.truncate(n + 1);
            ro.truncate(n + 1);
            Ok((po, ro))
        }
    }

    /// Options for every file this module opens: no file locking. HDF5 1.10 otherwise holds an exclusive lock
    /// for as long as a file is open for writing, so no other reader (h5py, h5dump, `arbor inspect`) could open
    /// a dump while its run goes on, and a child process that inherits the descriptor keeps the lock after the
    /// writer closed the file. What readers see is consistent between appends, since each append ends with a
    /// flush. The cost: two writers on one file are not detected (a run owns its run directory).
    fn options() -> hdf5::file::FileBuilder {
        let mut b = File::with_options();
        b.with_fapl(|p| p.file_locking(false));
        b
    }

    /// An I/O error naming `path` when it cannot be stat'ed (missing, permission denied), before HDF5's
    /// less readable message.
    fn check_exists(path: &Path) -> Result<()> {
        std::fs::metadata(path).map(|_| ()).map_err(|e| Error::io(path, e))
    }

    fn open_read(path: &Path) -> Result<File> {
        check_exists(path)?;
        // HDF5 refuses to open a file twice in one process with different locking settings: when something else
        // in this process has it open with the default (locking) settings, open it as that one did.
        options()
            .open(path)
            .or_else(|first| File::open(path).map_err(|_| h5err(path, "cannot open as an HDF5 file", first)))
    }

    /// Check `format_version` and read the text attributes.
    fn read_attributes(file: &File, path: &Path) -> Result<(i64, String, String, BTreeMap<String, String>)> {
        let names = file.attr_names().map_err(|e| h5err(path, "listing attributes", e))?;
        if !names.iter().any(|n| n == "format_version") {
            return Err(Error::format(path, "attribute `format_version` not found (not an arbor trajectory dump?)"));
        }
        let version = file
            .attr("format_version")
            .and_then(|a| a.read_scalar::<i64>())
            .map_err(|e| h5err(path, "reading attribute `format_version`", e))?;
        if version != FORMAT_VERSION {
            let msg = format!("attribute `format_version` is {version}; this arbor reads format {FORMAT_VERSION}");
            return Err(Error::format(path, msg));
        }
        let mut attrs = BTreeMap::new();
        for name in names {
            let attr = file.attr(&name).map_err(|e| h5err(path, &format!("attribute `{name}`"), e))?;
            let desc = attr
                .dtype()
                .and_then(|t| t.to_descriptor())
                .map_err(|e| h5err(path, &format!("attribute `{name}`"), e))?;
            let read_err = |e| h5err(path, &format!("reading attribute `{name}`"), e);
            let text = if !attr.is_scalar() {
                format!("({desc} array of shape {:?})", attr.shape())
            } else {
                match desc {
                    TypeDescriptor::VarLenUnicode
                    | TypeDescriptor::VarLenAscii
                    | TypeDescriptor::FixedAscii(_)
                    | TypeDescriptor::FixedUnicode(_) => {
                        attr.read_scalar::<VarLenUnicode>().map_err(read_err)?.as_str().to_owned()
                    }
                    TypeDescriptor::Integer(_) => attr.read_scalar::<i64>().map_err(read_err)?.to_string(),
                    TypeDescriptor::Unsigned(_) => attr.read_scalar::<u64>().map_err(read_err)?.to_string(),
                    TypeDescriptor::Float(_) => attr.read_scalar::<f64>().map_err(read_err)?.to_string(),
                    other => format!("({other})"),
                }
            };
            attrs.insert(name, text);
        }
        let get = |k: &str| attrs.get(k).cloned().unwrap_or_default();
        Ok((version, get("arbor_version"), get("config"), attrs))
    }

    fn write_text_attr(file: &File, path: &Path, name: &str, value: &str) -> Result<()> {
        let v = VarLenUnicode::from_str(value)
            .map_err(|e| Error::format(path, format!("attribute `{name}`: value cannot be stored: {e}")))?;
        if file.attr_names().map_err(|e| h5err(path, "listing attributes", e))?.iter().any(|n| n == name) {
            file.delete_attr(name).map_err(|e| h5err(path, &format!("replacing attribute `{name}`"), e))?;
        }
        file.new_attr::<VarLenUnicode>()
            .create(name)
            .and_then(|a| a.write_scalar(&v))
            .map_err(|e| h5err(path, &format!("writing attribute `{name}`"), e))
    }

    fn describe_filter(f: &hdf5::filters::Filter) -> String {
        use hdf5::filters::Filter;
        match f {
            Filter::Deflate(level) => format!("deflate({level})"),
            Filter::Shuffle => "shuffle".to_owned(),
            Filter::Fletcher32 => "fletcher32".to_owned(),
            other => format!("{other:?}").to_lowercase(),
        }
    }

    fn list_datasets(file: &File, path: &Path) -> Result<Vec<DatasetInfo>> {
        let mut out = Vec::new();
        for name in file.member_names().map_err(|e| h5err(path, "listing members", e))? {
            let info = match file.dataset(&name) {
                Ok(ds) => DatasetInfo {
                    dtype: ds
                        .dtype()
                        .and_then(|t| t.to_descriptor())
                        .map(|d| d.to_string())
                        .unwrap_or_else(|_| "?".into()),
                    shape: ds.shape(),
                    chunk: ds.chunk(),
                    filters: ds.filters().iter().map(describe_filter).collect(),
                    name,
                },
                Err(_) => {
                    DatasetInfo { dtype: "(not a dataset)".into(), shape: vec![], chunk: None, filters: vec![], name }
                }
            };
            out.push(info);
        }
        Ok(out)
    }

    pub(super) fn read_trajectories(path: &Path) -> Result<Trajectories> {
        let file = open_read(path)?;
        let (format_version, arbor_version, config, attributes) = read_attributes(&file, path)?;
        let c = Columns::open(&file, path)?;
        let (prompt_offsets, response_offsets) = c.complete_offsets(path)?;
        let n = prompt_offsets.len() - 1;
        let (np, nr) = (prompt_offsets[n] as usize, response_offsets[n] as usize);
        fn cut<T>(mut v: Vec<T>, len: usize) -> Vec<T> {
            v.truncate(len);
            v
        }
        Ok(Trajectories {
            format_version,
            arbor_version,
            config,
            attributes,
            step: cut(read_column(&c.step, path, "step")?, n),
            policy_version: cut(read_column(&c.policy_version, path, "policy_version")?, n),
            prompt_id: cut(read_column(&c.prompt_id, path, "prompt_id")?, n),
            sample_index: cut(read_column(&c.sample_index, path, "sample_index")?, n),
            reward: cut(read_column(&c.reward, path, "reward")?, n),
            prompt_offsets,
            response_offsets,
            prompt_tokens: cut(read_column(&c.prompt_tokens, path, "prompt_tokens")?, np),
            response_tokens: cut(read_column(&c.response_tokens, path, "response_tokens")?, nr),
            behav_logp: cut(read_column(&c.behav_logp, path, "behav_logp")?, nr),
            logp: cut(read_column(&c.logp, path, "logp")?, nr),
            advantages: cut(read_column(&c.advantages, path, "advantages")?, nr),
            branch_parent: cut(read_column(&c.branch_parent, path, "branch_parent")?, n),
            branch_token: cut(read_column(&c.branch_token, path, "branch_token")?, n),
            step_index: cut(read_column(&c.step_index, path, "step_index")?, nr),
            fci: cut(read_column(&c.fci, path, "fci")?, nr),
            waad: cut(read_column(&c.waad, path, "waad")?, nr),
            fai: cut(read_column(&c.fai, path, "fai")?, nr),
        })
    }

    pub(super) fn read_summary(path: &Path) -> Result<TrajectorySummary> {
        let file = open_read(path)?;
        let (format_version, arbor_version, _, attributes) = read_attributes(&file, path)?;
        let c = Columns::open(&file, path)?;
        let (po, ro) = c.complete_offsets(path)?;
        let n = po.len() - 1;
        let rows = c.per_sample_lens().into_iter().max().unwrap_or(0);
        let mut step = read_column::<u64>(&c.step, path, "step")?;
        let mut policy_version = read_column::<u64>(&c.policy_version, path, "policy_version")?;
        let mut reward = read_column::<f32>(&c.reward, path, "reward")?;
        step.truncate(n);
        policy_version.truncate(n);
        reward.truncate(n);
        let datasets = list_datasets(&file, path)?;
        Ok(summarise(
            path,
            format_version,
            arbor_version,
            attributes,
            SampleColumns {
                step: &step,
                policy_version: &policy_version,
                reward: &reward,
                prompt_offsets: &po,
                response_offsets: &ro,
            },
            (rows - n) as u64,
            datasets,
        ))
    }

    pub(super) struct Writer {
        path: PathBuf,
        file: File,
        cols: Columns,
        samples: u64,
        prompt_len: u64,
        response_len: u64,
        /// Set when a write failed half-way: the datasets may disagree, so further appends are refused.
        failed: Option<String>,
    }

    impl Writer {
        pub(super) fn create(path: &Path, config_toml: &str) -> Result<Self> {
            let file = options().create(path).map_err(|e| h5err(path, "cannot create HDF5 file", e))?;
            file.new_attr::<i64>()
                .create("format_version")
                .and_then(|a| a.write_scalar(&FORMAT_VERSION))
                .map_err(|e| h5err(path, "writing attribute `format_version`", e))?;
            write_text_attr(&file, path, "arbor_version", env!("CARGO_PKG_VERSION"))?;
            write_text_attr(&file, path, "config", config_toml)?;
            let cols = Columns::create(&file, path)?;
            write_at(&cols.prompt_offsets, path, "prompt_offsets", 0, &[0u64])?;
            write_at(&cols.response_offsets, path, "response_offsets", 0, &[0u64])?;
            let w = Writer {
                path: path.to_path_buf(),
                file,
                cols,
                samples: 0,
                prompt_len: 0,
                response_len: 0,
                failed: None,
            };
            w.flush()?;
            Ok(w)
        }

        pub(super) fn resume(path: &Path, first_dropped_step: u64) -> Result<Self> {
            check_exists(path)?;
            // dropping the rows after the checkpoint rewrites metadata and the last chunks
            let dir = path.parent().unwrap_or(Path::new("."));
            let need = (9 * 4 * TOKEN_CHUNK + 9 * 8 * SAMPLE_CHUNK) as u64;
            crate::io::space::ensure_space(dir, need, "the trajectory dump (truncated to the checkpoint)")?;
            let file =
                options().open_rw(path).map_err(|e| h5err(path, "cannot open as an HDF5 file for writing", e))?;
            read_attributes(&file, path)?;
            let cols = Columns::open(&file, path)?;
            let (po, ro) = cols.complete_offsets(path)?;
            let n = po.len() - 1;
            let mut step = read_column::<u64>(&cols.step, path, "step")?;
            step.truncate(n);
            let keep: Vec<bool> = step.iter().map(|&s| s < first_dropped_step).collect();
            let kept = keep.iter().filter(|&&k| k).count();
            let mut w = Writer {
                path: path.to_path_buf(),
                file,
                cols,
                samples: kept as u64,
                prompt_len: 0,
                response_len: 0,
                failed: None,
            };
            if keep[..kept].iter().all(|&k| k) {
                // The kept rows are a prefix (the normal case: steps never decrease): cut everything after them.
                w.prompt_len = po[kept];
                w.response_len = ro[kept];
                w.truncate_all()?;
            } else {
                w.compact(&keep, &po, &ro)?;
            }
            w.flush()?;
            Ok(w)
        }

        /// Shrink every dataset to the writer's counts.
        fn truncate_all(&self) -> Result<()> {
            let (c, p) = (&self.cols, self.path.as_path());
            for (ds, name) in [
                (&c.step, "step"),
                (&c.policy_version, "policy_version"),
                (&c.prompt_id, "prompt_id"),
                (&c.sample_index, "sample_index"),
                (&c.reward, "reward"),
                (&c.branch_parent, "branch_parent"),
                (&c.branch_token, "branch_token"),
            ] {
                truncate(ds, p, name, self.samples)?;
            }
            truncate(&c.prompt_offsets, p, "prompt_offsets", self.samples + 1)?;
            truncate(&c.response_offsets, p, "response_offsets", self.samples + 1)?;
            truncate(&c.prompt_tokens, p, "prompt_tokens", self.prompt_len)?;
            for (ds, name) in [
                (&c.response_tokens, "response_tokens"),
                (&c.behav_logp, "behav_logp"),
                (&c.logp, "logp"),
                (&c.advantages, "advantages"),
                (&c.step_index, "step_index"),
                (&c.fci, "fci"),
                (&c.waad, "waad"),
                (&c.fai, "fai"),
            ] {
                truncate(ds, p, name, self.response_len)?;
            }
            Ok(())
        }

        /// Rewrite the dump keeping only the rows where `keep` is true (steps out of order in the file).
        fn compact(&mut self, keep: &[bool], po: &[u64], ro: &[u64]) -> Result<()> {
            let p = self.path.clone();
            let c = &self.cols;
            fn rows<T: Copy>(v: &[T], keep: &[bool]) -> Vec<T> {
                v.iter().zip(keep).filter(|(_, &k)| k).map(|(x, _)| *x).collect()
            }
            fn ranges<T: Copy>(v: &[T], offs: &[u64], keep: &[bool]) -> Vec<T> {
                let mut out = Vec::new();
                for (i, _) in keep.iter().enumerate().filter(|(_, &k)| k) {
                    out.extend_from_slice(&v[offs[i] as usize..offs[i + 1] as usize]);
                }
                out
            }
            fn new_offsets(offs: &[u64], keep: &[bool]) -> Vec<u64> {
                let mut out = vec![0u64];
                for (i, _) in keep.iter().enumerate().filter(|(_, &k)| k) {
                    out.push(out[out.len() - 1] + offs[i + 1] - offs[i]);
                }
                out
            }
            macro_rules! rewrite_rows {
                ($field:ident, $t:ty) => {{
                    let v = rows(&read_column::<$t>(&c.$field, &p, stringify!($field))?, keep);
                    truncate(&c.$field, &p, stringify!($field), 0)?;
                    write_at(&c.$field, &p, stringify!($field), 0, &v)?;
                }};
            }
            macro_rules! rewrite_ranges {
                ($field:ident, $t:ty, $offs:expr) => {{
                    let v = ranges(&read_column::<$t>(&c.$field, &p, stringify!($field))?, $offs, keep);
                    truncate(&c.$field, &p, stringify!($field), 0)?;
                    write_at(&c.$field, &p, stringify!($field), 0, &v)?;
                }};
            }
            rewrite_rows!(step, u64);
            rewrite_rows!(policy_version, u64);
            rewrite_rows!(prompt_id, u64);
            rewrite_rows!(sample_index, u32);
            rewrite_rows!(reward, f32);
            rewrite_rows!(branch_parent, i64);
            rewrite_rows!(branch_token, i64);
            rewrite_ranges!(prompt_tokens, u32, po);
            rewrite_ranges!(response_tokens, u32, ro);
            rewrite_ranges!(behav_logp, f32, ro);
            rewrite_ranges!(logp, f32, ro);
            rewrite_ranges!(advantages, f32, ro);
            rewrite_ranges!(step_index, u32, ro);
            rewrite_ranges!(fci, f32, ro);
            rewrite_ranges!(waad, f32, ro);
            rewrite_ranges!(fai, f32, ro);
            let (npo, nro) = (new_offsets(po, keep), new_offsets(ro, keep));
            for (ds, name, v) in
                [(&c.prompt_offsets, "prompt_offsets", &npo), (&c.response_offsets, "response_offsets", &nro)]
            {
                truncate(ds, &p, name, 0)?;
                write_at(ds, &p, name, 0, v)?;
            }
            self.prompt_len = npo[npo.len() - 1];
            self.response_len = nro[nro.len() - 1];
            Ok(())
        }

        pub(super) fn append(&mut self, records: &[TrajectoryRecord]) -> Result<()> {
            if let Some(msg) = &self.failed {
                let msg = format!("an earlier append failed ({msg}); the dump can no longer be appended to");
                return Err(Error::path(&self.path, std::io::ErrorKind::Other, msg));
            }
            if records.is_empty() {
                return Ok(());
            }
            // HDF5 cannot undo a write that fails half-way (a full disk would leave chunks and metadata
            // that disagree), so the room is checked first: the raw bytes of the records, the last
            // (compressed) chunk of every column rewritten, and the metadata within the reserve
            let tokens: usize = records.iter().map(|r| r.prompt.len() + r.response.len()).sum();
            let raw = 4 * 9 * tokens + 8 * 16 * records.len();
            let need = (raw + 9 * 4 * TOKEN_CHUNK + 9 * 8 * SAMPLE_CHUNK) as u64;
            let dir = self.path.parent().unwrap_or(Path::new("."));
            crate::io::space::ensure_space(dir, need, "the trajectory dump")?;
            match self.write_records(records) {
                Ok(()) => Ok(()),
                Err(e) => {
                    self.failed = Some(e.to_string());
                    Err(e)
                }
            }
        }

        fn write_records(&mut self, records: &[TrajectoryRecord]) -> Result<()> {
            let n = records.len();
            let np: usize = records.iter().map(|r| r.prompt.len()).sum();
            let nr: usize = records.iter().map(|r| r.response.len()).sum();
            let mut prompt_tokens = Vec::with_capacity(np);
            let mut response_tokens = Vec::with_capacity(nr);
            let mut behav_logp = Vec::with_capacity(nr);
            let mut logp = Vec::with_capacity(nr);
            let mut advantages = Vec::with_capacity(nr);
            let (mut step_index, mut fci) = (Vec::with_capacity(nr), Vec::with_capacity(nr));
            let (mut waad, mut fai) = (Vec::with_capacity(nr), Vec::with_capacity(nr));
            let mut prompt_offsets = Vec::with_capacity(n);
            let mut response_offsets = Vec::with_capacity(n);
            for r in records {
                prompt_tokens.extend_from_slice(r.prompt);
                response_tokens.extend_from_slice(r.response);
                behav_logp.extend_from_slice(r.behav_logp);
                logp.extend_from_slice(r.logp);
                advantages.extend_from_slice(r.advantages);
                step_index.extend_from_slice(r.step_index);
                fci.extend_from_slice(r.fci);
                waad.extend_from_slice(r.waad);
                fai.extend_from_slice(r.fai);
                prompt_offsets.push(self.prompt_len + prompt_tokens.len() as u64);
                response_offsets.push(self.response_len + response_tokens.len() as u64);
            }
            let step: Vec<u64> = records.iter().map(|r| r.step).collect();
            let policy_version: Vec<u64> = records.iter().map(|r| r.policy_version).collect();
            let prompt_id: Vec<u64> = records.iter().map(|r| r.prompt_id).collect();
            let sample_index: Vec<u32> = records.iter().map(|r| r.sample_index).collect();
            let reward: Vec<f32> = records.iter().map(|r| r.reward).collect();
            let branch_parent: Vec<i64> = records.iter().map(|r| r.branch_parent).collect();
            let branch_token: Vec<i64> = records.iter().map(|r| r.branch_token).collect();

            // Flat data first, per-sample columns next, offsets last: a reader counts a sample only once all of
            // these cover it.
            let (c, p, s) = (&self.cols, self.path.as_path(), self.samples);
            write_at(&c.prompt_tokens, p, "prompt_tokens", self.prompt_len, &prompt_tokens)?;
            write_at(&c.response_tokens, p, "response_tokens", self.response_len, &response_tokens)?;
            write_at(&c.behav_logp, p, "behav_logp", self.response_len, &behav_logp)?;
            write_at(&c.logp, p, "logp", self.response_len, &logp)?;
            write_at(&c.advantages, p, "advantages", self.response_len, &advantages)?;
            write_at(&c.step_index, p, "step_index", self.response_len, &step_index)?;
            write_at(&c.fci, p, "fci", self.response_len, &fci)?;
            write_at(&c.waad, p, "waad", self.response_len, &waad)?;
            write_at(&c.fai, p, "fai", self.response_len, &fai)?;
            write_at(&c.step, p, "step", s, &step)?;
            write_at(&c.policy_version, p, "policy_version", s, &policy_version)?;
            write_at(&c.prompt_id, p, "prompt_id", s, &prompt_id)?;
            write_at(&c.sample_index, p, "sample_index", s, &sample_index)?;
            write_at(&c.reward, p, "reward", s, &reward)?;
            write_at(&c.branch_parent, p, "branch_parent", s, &branch_parent)?;
            write_at(&c.branch_token, p, "branch_token", s, &branch_token)?;
            write_at(&c.prompt_offsets, p, "prompt_offsets", s + 1, &prompt_offsets)?;
            write_at(&c.response_offsets, p, "response_offsets", s + 1, &response_offsets)?;
            self.flush()?;
            self.samples += n as u64;
            self.prompt_len += np as u64;
            self.response_len += nr as u64;
            Ok(())
        }

        pub(super) fn set_attribute(&mut self, name: &str, value: &str) -> Result<()> {
            write_text_attr(&self.file, &self.path, name, value)?;
            self.flush()
        }

        fn flush(&self) -> Result<()> {
            self.file.flush().map_err(|e| h5err(&self.path, "flushing", e))
        }

        pub(super) fn samples(&self) -> u64 {
            self.samples
        }

        pub(super) fn path(&self) -> &Path {
            &self.path
        }
    }
}

#[cfg(not(feature = "hdf5"))]
mod imp {
    use super::*;

    fn unsupported(path: &Path) -> Error {
        Error::path(
            path,
            std::io::ErrorKind::Unsupported,
            "this arbor was built without the `hdf5` feature, so it cannot read or write HDF5 trajectory dumps \
             (rebuild with default features; needs libhdf5-dev)",
        )
    }

    pub(super) fn read_trajectories(path: &Path) -> Result<Trajectories> {
        Err(unsupported(path))
    }

    pub(super) fn read_summary(path: &Path) -> Result<TrajectorySummary> {
        Err(unsupported(path))
    }

    /// Never constructed: every constructor fails without the `hdf5` feature.
    pub(super) struct Writer {
        path: PathBuf,
        never: std::convert::Infallible,
    }

    impl Writer {
        pub(super) fn create(path: &Path, _config_toml: &str) -> Result<Self> {
            Err(unsupported(path))
        }

        pub(super) fn resume(path: &Path, _first_dropped_step: u64) -> Result<Self> {
            Err(unsupported(path))
        }

        pub(super) fn append(&mut self, _records: &[TrajectoryRecord]) -> Result<()> {
            match self.never {}
        }

        pub(super) fn set_attribute(&mut self, _name: &str, _value: &str) -> Result<()> {
            match self.never {}
        }

        pub(super) fn samples(&self) -> u64 {
            match self.never {}
        }

        pub(super) fn path(&self) -> &Path {
            &self.path
        }
    }
}
