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
}

/// Read a whole dump into memory (complete samples only).
pub fn read_trajectories(path: &Path) -> Result<Trajectories> {
    imp::read_trajectories(path)
}

/// Summarise a dump without reading its token arrays.
pub fn read_summary(path: &Path) -> Result<TrajectorySummary> {
    imp::read_summary(path)
}
