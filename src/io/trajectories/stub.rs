//! Trajectory dumps without the `hdf5` cargo feature: every call that would create, resume or read a dump
//! returns an error saying so.

use super::{Trajectories, TrajectoryRecord, TrajectorySummary};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

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
