//! The append-only writer of a dump: creating it, resuming it after a checkpoint (dropping the rows written
//! after it), appending one step's samples and setting text attributes.

use super::{
    check_exists, clear_status_flags, h5err, read_attributes, read_column, truncate, write_at, write_options,
    write_text_attr, Columns, SAMPLE_CHUNK, TOKEN_CHUNK,
};
use crate::error::{Error, Result};
use crate::io::trajectories::{TrajectoryRecord, FORMAT_VERSION};
use hdf5::File;
use std::path::{Path, PathBuf};

pub(in crate::io::trajectories) struct Writer {
    path: PathBuf,
    /// The open file and its datasets (`None` only after reopening the file failed, with `failed` set).
    h5: Option<(File, Columns)>,
    swmr: Swmr,
    samples: u64,
    prompt_len: u64,
    response_len: u64,
    /// Set when a write failed half-way: the datasets may disagree, so further appends are refused.
    failed: Option<String>,
}

/// Where the writer stands with SWMR mode, in which HDF5 orders its metadata writes so that the file
/// on disk is readable at every moment: a kill inside an append loses that append only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Swmr {
    /// Not started: attributes may be written (SWMR mode creates none); the next append starts it.
    Pending,
    /// Appending in SWMR mode.
    On,
    /// A dump an older arbor wrote (HDF5 1.8 file format): appended without SWMR mode.
    Unsupported,
}

impl Writer {
    pub(in crate::io::trajectories) fn create(path: &Path, config_toml: &str) -> Result<Self> {
        let file = write_options().create(path).map_err(|e| h5err(path, "cannot create HDF5 file", e))?;
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
            h5: Some((file, cols)),
            swmr: Swmr::Pending,
            samples: 0,
            prompt_len: 0,
            response_len: 0,
            failed: None,
        };
        w.flush()?;
        Ok(w)
    }

    pub(in crate::io::trajectories) fn resume(path: &Path, first_dropped_step: u64) -> Result<Self> {
        check_exists(path)?;
        // dropping the rows after the checkpoint rewrites metadata and the last chunks
        let dir = path.parent().unwrap_or(Path::new("."));
        let need = (9 * 4 * TOKEN_CHUNK + 9 * 8 * SAMPLE_CHUNK) as u64;
        crate::io::space::ensure_space(dir, need, "the trajectory dump (truncated to the checkpoint)")?;
        let file = open_rw(path)?;
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
            h5: Some((file, cols)),
            swmr: Swmr::Pending,
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
        let (c, p) = (&self.h5()?.1, self.path.as_path());
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
        let c = &self.h5()?.1;
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

    pub(in crate::io::trajectories) fn append(&mut self, records: &[TrajectoryRecord]) -> Result<()> {
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
        self.start_swmr();
        let (c, p, s) = (&self.h5()?.1, self.path.as_path(), self.samples);
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

    pub(in crate::io::trajectories) fn set_attribute(&mut self, name: &str, value: &str) -> Result<()> {
        if let Some(msg) = &self.failed {
            let msg = format!("an earlier write failed ({msg}); the dump can no longer be written to");
            return Err(Error::path(&self.path, std::io::ErrorKind::Other, msg));
        }
        if self.swmr == Swmr::On {
            // SWMR mode creates and removes no attribute: close the file and open it again (the next
            // append starts SWMR mode anew)
            self.h5 = None;
            match open_rw(&self.path).and_then(|file| Ok((Columns::open(&file, &self.path)?, file))) {
                Ok((cols, file)) => self.h5 = Some((file, cols)),
                Err(e) => {
                    self.failed = Some(e.to_string());
                    return Err(e);
                }
            }
            self.swmr = Swmr::Pending;
        }
        write_text_attr(&self.h5()?.0, &self.path, name, value)?;
        self.flush()
    }

    /// Start SWMR mode before the first append, if the file's format allows it.
    fn start_swmr(&mut self) {
        if self.swmr != Swmr::Pending {
            return;
        }
        let Some((file, _)) = &self.h5 else { return };
        self.swmr = match file.start_swmr() {
            Ok(()) => Swmr::On,
            Err(e) => {
                eprintln!(
                    "warning: {}: appended without SWMR mode ({e}): an older arbor's dump, which a kill inside an \
                     append can leave unreadable",
                    self.path.display()
                );
                Swmr::Unsupported
            }
        };
    }

    fn h5(&self) -> Result<&(File, Columns)> {
        self.h5.as_ref().ok_or_else(|| {
            Error::path(&self.path, std::io::ErrorKind::Other, "closed after an earlier failure to reopen it")
        })
    }

    fn flush(&self) -> Result<()> {
        self.h5()?.0.flush().map_err(|e| h5err(&self.path, "flushing", e))
    }

    pub(in crate::io::trajectories) fn samples(&self) -> u64 {
        self.samples
    }

    pub(in crate::io::trajectories) fn path(&self) -> &Path {
        &self.path
    }
}

/// Open a dump for writing. A writer killed in SWMR mode leaves the superblock marked as open for
/// writing, which HDF5 refuses until the mark is cleared (the file is readable all along).
fn open_rw(path: &Path) -> Result<File> {
    write_options().open_rw(path).or_else(|first| {
        clear_status_flags(path)
            .and_then(|()| write_options().open_rw(path).map_err(|e| h5err(path, "", e)))
            .map_err(|_| h5err(path, "cannot open as an HDF5 file for writing", first))
    })
}
