//! The public entry points of trajectory dumps: [`TrajectoryWriter`], [`read_trajectories`] and
//! [`read_summary`]. They check their arguments and hand over to the HDF5 implementation (`h5`), or to the
//! `stub` that refuses every call when arbor is built without the `hdf5` feature.

#[cfg(feature = "hdf5")]
use super::h5 as imp;
#[cfg(not(feature = "hdf5"))]
use super::stub as imp;
use super::{Trajectories, TrajectoryRecord, TrajectorySummary};
use crate::error::{Error, Result};
use std::path::Path;

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

    /// Close the dump and [`compact`] it: the end of a run's appends. A dump whose samples would
    /// take over a quarter of the memory this process may use (compaction reads them whole) is
    /// closed and left as it is, with an error saying so.
    pub fn finish(self) -> Result<()> {
        let path = self.path().to_path_buf();
        drop(self);
        let s = read_summary(&path)?;
        // every column in memory: 4 bytes per prompt token, 8 response-aligned arrays of 4 bytes,
        // 8 per-sample columns and 2 offsets of at most 8 bytes each
        let need = 4 * s.prompt_tokens + 32 * s.response_tokens + 80 * s.samples;
        if let Some(mem) = crate::model::host_memory::host_memory().filter(|m| need > m.bytes / 4) {
            return Err(Error::Invalid(format!(
                "{}: its samples take {need} bytes, over a quarter of this process's memory ({} bytes, {})",
                path.display(),
                mem.bytes,
                mem.source
            )));
        }
        compact(&path)
    }
}

/// Samples per append when a dump is rewritten: few appends (each leaves one partial chunk per
/// column behind), a bounded copy of the records' arrays at a time.
const COMPACT_BATCH: usize = 1 << 16;

/// Rewrite the dump at `path` without the space its appends left unused: in SWMR mode every
/// append writes each column's last, partial (compressed) chunk anew elsewhere in the file and
/// never reuses the old place, which doubles the file of a run whose steps are small (the CPU
/// default job's: 2.3 MB for 1.0 MB of chunks). The copy, with the same samples, attributes and
/// layout, is written beside the file and renamed over it: a kill leaves one or the other whole.
/// The samples are read into memory whole.
pub fn compact(path: &Path) -> Result<()> {
    let t = read_trajectories(path)?;
    let tmp = path.with_extension("h5.compacting");
    let written = (|| {
        let mut w = TrajectoryWriter::create(&tmp, &t.config)?;
        w.set_attribute("arbor_version", &t.arbor_version)?;
        for (name, value) in &t.attributes {
            if !matches!(name.as_str(), "format_version" | "arbor_version" | "config") {
                w.set_attribute(name, value)?;
            }
        }
        let mut records = Vec::with_capacity(COMPACT_BATCH.min(t.len()));
        for start in (0..t.len()).step_by(COMPACT_BATCH) {
            records.clear();
            for i in start..t.len().min(start + COMPACT_BATCH) {
                records.push(
                    t.record(i).ok_or_else(|| Error::format(path, format!("sample {i} does not fit the offsets")))?,
                );
            }
            w.append(&records)?;
        }
        drop(w);
        std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io(&tmp, e))
    })();
    match written {
        Ok(()) => std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
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
