//! Free-space checks before the run writes: every write of a run directory (a metrics line, a step's
//! trajectory records, a checkpoint) first checks that the filesystem has room for it plus a
//! reserve. A write that would fill the disk is refused before it starts, so a full disk stops the
//! run with an error that says how much space was needed, and never leaves a half-written HDF5
//! file or checkpoint behind (HDF5 cannot roll back a failed flush).

use crate::error::{Error, Result};
use std::path::Path;

/// Space kept free beyond each write's own estimate: HDF5's metadata and chunk rewrites, the
/// small files written beside a checkpoint, and the reserve that lets a resume truncate the dump.
pub const RESERVE_BYTES: u64 = 1 << 20;

/// Bytes available to this process on the filesystem holding `path` (statvfs `f_bavail` blocks).
pub fn free_bytes(path: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::path(path, std::io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: `statvfs` is a plain C struct of integers, for which all-zero bytes are a value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path that outlives the call and `st` a properly sized,
    // writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(Error::io(path, std::io::Error::last_os_error()));
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Refuse (with [`Error::DiskFull`]) a write of about `need` bytes of `what` under `dir` when the
/// filesystem has less than `need` + [`RESERVE_BYTES`] free.
pub fn ensure_space(dir: &Path, need: u64, what: &str) -> Result<()> {
    let free = free_bytes(dir)?;
    if free >= need.saturating_add(RESERVE_BYTES) {
        return Ok(());
    }
    let mb = |b: u64| b as f64 / 1e6;
    Err(Error::DiskFull {
        path: dir.to_path_buf(),
        what: what.to_string(),
        need_mb: mb(need + RESERVE_BYTES),
        reserve_mb: mb(RESERVE_BYTES),
        free_mb: mb(free),
    })
}

/// An append-only file whose every write first checks [`ensure_space`] (metrics.jsonl): on a full
/// disk the write is refused before any byte of it lands. It is not buffered and each `write` is
/// checked on its own, so a record that must land whole is handed over in one `write_all` of the
/// complete record (as [`write_line`](crate::train::metrics::write_line) does with a metrics line),
/// never piece by piece through a formatter.
pub struct SpaceCheckedFile {
    file: std::fs::File,
    path: std::path::PathBuf,
}

impl SpaceCheckedFile {
    pub fn new(file: std::fs::File, path: &Path) -> Self {
        SpaceCheckedFile { file, path: path.to_path_buf() }
    }
}

impl std::io::Write for SpaceCheckedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        ensure_space(dir, buf.len() as u64, &name).map_err(std::io::Error::other)?;
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read_and_an_impossible_write_is_refused_with_figures() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        ensure_space(dir.path(), 1, "a metrics line").unwrap();
        let e = ensure_space(dir.path(), free + (1 << 40), "checkpoint step-3").unwrap_err().to_string();
        assert!(e.contains("disk full") && e.contains("checkpoint step-3") && e.contains("MB are free"), "{e}");
        assert!(free_bytes(&dir.path().join("missing")).is_err());
    }
}
