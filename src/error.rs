//! Library error type: every variant names the file, key, tensor or value that is wrong.

use std::path::PathBuf;

/// Errors returned by the arbor library (the CLI wraps them in `anyhow`).
///
/// Each message is whole in its `Display`: an [`Error::Io`] shows the OS's message after the path
/// and reports no `source()`, so a printer that walks the chain (`anyhow`'s `{:#}`, the CLI's
/// `error: …`) shows that message once.
#[derive(Debug)]
pub enum Error {
    /// A configuration file (HF `config.json`, run TOML) has a missing, malformed or invalid key.
    Config { file: PathBuf, key: String, msg: String },
    /// A checkpoint tensor is missing, has the wrong shape or an unsupported dtype (or, with an
    /// empty `tensor`, a checkpoint file is short or damaged).
    Checkpoint { file: PathBuf, tensor: String, msg: String },
    /// An I/O error on a named path (`source`: the OS error, shown in the message; not a
    /// [`std::error::Error::source`], which would show it twice).
    Io { path: PathBuf, source: std::io::Error },
    /// A dataset file has a malformed record (`line` is 1-based; 0 = the file as a whole).
    Dataset { file: PathBuf, line: usize, msg: String },
    /// Not enough free space for a write; checked before writing, so nothing on disk was touched.
    DiskFull { path: PathBuf, what: String, need_mb: f64, reserve_mb: f64, free_mb: f64 },
    /// The run stopped at a signal (SIGUSR1, SIGTERM) or at its `--time-limit` (`why` says which)
    /// after checkpointing global step `step`; not a failure: `arbor train --resume auto` continues
    /// from there.
    Preempted { step: u64, why: String },
    /// A file read from outside is not in the format it should be (a safetensors header, an HDF5
    /// trajectory dump, a `tokenizer.json`), for problems no single tensor, key or line owns.
    Format { path: PathBuf, msg: String },
    /// Tensors, buffers or index lists whose sizes or boundaries do not fit together: `what` names
    /// the operation or the buffers, `msg` what was expected and what was found.
    Shape { what: String, msg: String },
    /// A collective or a rank-to-rank message failed, or a peer sent bytes that do not parse. `rank`
    /// is the rank at fault: the peer whose message was malformed, else the rank that saw the failure.
    Collective { rank: usize, op: String, msg: String },
    /// The accelerator stack failed or is missing: a CUDA driver, NVRTC, cuBLAS or NCCL call, or the
    /// backend's own state. `api` names the library and the call ("CUDA launch m/k", "cuBLAS SGEMM").
    Device { api: String, msg: String },
    /// A value outside what the operation supports (batch too large, token id out of range, ...),
    /// when no file, key, tensor, rank or device is involved.
    Invalid(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Config { file, key, msg } => write!(f, "{}: key `{key}`: {msg}", file.display()),
            // (an empty tensor: the whole file)
            Error::Checkpoint { file, tensor, msg } if tensor.is_empty() => write!(f, "{}: {msg}", file.display()),
            Error::Checkpoint { file, tensor, msg } => write!(f, "{}: tensor `{tensor}`: {msg}", file.display()),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Dataset { file, line, msg } => write!(f, "{}:{line}: {msg}", file.display()),
            Error::DiskFull { path, what, need_mb, reserve_mb, free_mb } => write!(
                f,
                "{}: disk full: writing {what} needs about {need_mb:.2} MB free (with a {reserve_mb:.2} MB reserve), \
                 {free_mb:.2} MB are free; nothing already written was damaged: free some space and resume with \
                 `arbor train --resume latest`",
                path.display()
            ),
            Error::Preempted { step, why } => write!(
                f,
                "preempted: stopped by {why} after step {step}, checkpoint written; resume with `arbor train \
                 --resume auto` (or `latest`)"
            ),
            Error::Format { path, msg } => write!(f, "{}: {msg}", path.display()),
            Error::Shape { what, msg } => write!(f, "{what}: {msg}"),
            Error::Collective { rank, op, msg } => write!(f, "rank {rank}: {op}: {msg}"),
            Error::Device { api, msg } => write!(f, "{api}: {msg}"),
            Error::Invalid(msg) => f.write_str(msg),
        }
    }
}

/// No variant reports a `source()`: every message already holds what caused it.
impl std::error::Error for Error {}

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wrap an `std::io::Error` with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// [`Error::Format`]: the file at `path` is malformed.
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.into(), msg: msg.into() }
    }

    /// [`Error::Shape`]: sizes that do not fit together in `what`.
    pub fn shape(what: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Shape { what: what.into(), msg: msg.into() }
    }

    /// [`Error::Collective`]: operation `op` failed at (or was fed bad bytes by) `rank`.
    pub fn collective(rank: usize, op: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Collective { rank, op: op.into(), msg: msg.into() }
    }

    /// [`Error::Device`]: the accelerator call or component `api` failed.
    pub fn device(api: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Device { api: api.into(), msg: msg.into() }
    }

    /// [`Error::Io`] for a problem with a path that the OS did not report (a path with no file
    /// name, a NUL byte, a missing expected file): `kind` classifies it like an OS error would.
    pub fn path(path: impl Into<PathBuf>, kind: std::io::ErrorKind, msg: impl Into<String>) -> Self {
        Error::Io { path: path.into(), source: std::io::Error::new(kind, msg.into()) }
    }

    /// Say where an error happened by putting `context` in front: a [`Error::Shape`] gets it
    /// before `what`, an [`Error::Invalid`] before its text. The other variants already name their
    /// file, tensor, rank or device and are returned unchanged.
    pub fn within(self, context: impl std::fmt::Display) -> Self {
        match self {
            Error::Shape { what, msg } => Error::Shape { what: format!("{context}: {what}"), msg },
            Error::Invalid(msg) => Error::Invalid(format!("{context}: {msg}")),
            other => other,
        }
    }
}

/// `"rank R: {e}"` for a rank's failure that ends a job, labelled once: an error that already
/// starts with the same label (a collective's own, [`Error::Collective`]) is not labelled twice.
pub fn on_rank(rank: usize, e: &dyn std::fmt::Display) -> String {
    let (label, msg) = (format!("rank {rank}: "), e.to_string());
    match msg.starts_with(&label) {
        true => msg,
        false => label + &msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;

    #[test]
    fn a_rank_label_is_given_once() {
        let e = Error::collective(3, "all_gather", "a reply cut short");
        assert_eq!(on_rank(3, &e), "rank 3: all_gather: a reply cut short");
        // another rank's number (a sub-communicator's, a sender's) stays beside the failing rank's
        assert_eq!(on_rank(1, &e), "rank 1: rank 3: all_gather: a reply cut short");
        assert_eq!(on_rank(12, &Error::collective(1, "x", "y")), "rank 12: rank 1: x: y");
        assert_eq!(on_rank(0, &Error::Invalid("injected".into())), "rank 0: injected");
    }

    #[test]
    fn format_names_the_file() {
        let e = Error::format("/m/model.safetensors", "header of 9 bytes is not JSON");
        assert_eq!(e.to_string(), "/m/model.safetensors: header of 9 bytes is not JSON");
        assert!(matches!(e, Error::Format { .. }));
    }

    #[test]
    fn shape_names_what_and_sizes() {
        let e = Error::shape("policy loss", "dlogp has 3 entries, the batch 4 tokens");
        assert_eq!(e.to_string(), "policy loss: dlogp has 3 entries, the batch 4 tokens");
        assert!(matches!(e, Error::Shape { .. }));
    }

    #[test]
    fn collective_names_rank_and_operation() {
        let e = Error::collective(3, "tensor-parallel gather", "sent 12 bytes, expected 16");
        assert_eq!(e.to_string(), "rank 3: tensor-parallel gather: sent 12 bytes, expected 16");
        assert!(matches!(e, Error::Collective { rank: 3, .. }));
    }

    #[test]
    fn device_names_the_api() {
        let e = Error::device("cuBLAS SGEMM", "CUBLAS_STATUS_EXECUTION_FAILED");
        assert_eq!(e.to_string(), "cuBLAS SGEMM: CUBLAS_STATUS_EXECUTION_FAILED");
        assert!(matches!(e, Error::Device { .. }));
    }

    #[test]
    fn within_prefixes_shape_and_invalid_only() {
        let e = Error::shape("split 0", "at token 0 must be inside (0, 4)").within("response 2");
        assert_eq!(e.to_string(), "response 2: split 0: at token 0 must be inside (0, 4)");
        assert!(matches!(e, Error::Shape { .. }));
        let e = Error::Invalid("reward NaN must be finite".into()).within("response 1");
        assert_eq!(e.to_string(), "response 1: reward NaN must be finite");
        let e = Error::collective(2, "broadcast", "root 5 out of range").within("step 3");
        assert_eq!(e.to_string(), "rank 2: broadcast: root 5 out of range");
    }

    #[test]
    fn path_is_an_io_error_with_its_kind() {
        let e = Error::path("/a/b", ErrorKind::InvalidInput, "path contains a NUL byte");
        assert_eq!(e.to_string(), "/a/b: path contains a NUL byte");
        match e {
            Error::Io { source, .. } => assert_eq!(source.kind(), ErrorKind::InvalidInput),
            other => panic!("expected Error::Io, got {other:?}"),
        }
    }
}
