//! Library error type: every variant names the file, key, tensor or value that is wrong.

use std::path::PathBuf;

/// Errors returned by the arbor library (the CLI wraps them in `anyhow`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration file (HF `config.json`, run TOML) has a missing, malformed or invalid key.
    #[error("{file}: key `{key}`: {msg}")]
    Config { file: PathBuf, key: String, msg: String },
    /// A checkpoint tensor is missing, has the wrong shape or an unsupported dtype.
    #[error("{file}: tensor `{tensor}`: {msg}")]
    Checkpoint { file: PathBuf, tensor: String, msg: String },
    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A dataset file has a malformed record (`line` is 1-based; 0 = the file as a whole).
    #[error("{file}:{line}: {msg}")]
    Dataset { file: PathBuf, line: usize, msg: String },
    /// Not enough free space for a write; checked before writing, so nothing on disk was touched.
    #[error(
        "{path}: disk full: writing {what} needs about {need_mb:.2} MB free (with a {reserve_mb:.2} MB reserve), {free_mb:.2} MB are free; nothing already written was damaged: free some space and resume with `arbor train --resume latest`"
    )]
    DiskFull { path: PathBuf, what: String, need_mb: f64, reserve_mb: f64, free_mb: f64 },
    /// The run stopped at a signal (SIGUSR1, SIGTERM) after checkpointing global step `step`; not a
    /// failure: `arbor train --resume auto` continues from there.
    #[error("preempted: stopped by a signal after step {step}, checkpoint written; resume with `arbor train --resume auto` (or `latest`)")]
    Preempted { step: u64 },
    /// A value outside what the operation supports (batch too large, token id out of range, ...).
    #[error("{0}")]
    Invalid(String),
}

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wrap an `std::io::Error` with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
