//! All-or-nothing file writes: stage every file under a temporary name in the target directory, then
//! rename them into place. A failed save leaves no half-written file and keeps what was there before.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A set of files being written into one directory; nothing is visible under the final names until
/// [`StagedFiles::commit`]. Dropping it uncommitted deletes the temporary files.
#[derive(Debug)]
pub struct StagedFiles {
    dir: PathBuf,
    staged: Vec<(PathBuf, PathBuf)>,
}

impl StagedFiles {
    /// Start staging files for `dir` (created if missing).
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        Ok(StagedFiles { dir: dir.to_path_buf(), staged: Vec::new() })
    }

    /// Reserve a temporary path for the final file `name`; the caller writes it, `commit` renames it.
    pub fn temp_path(&mut self, name: &str) -> PathBuf {
        let tmp = self.dir.join(format!(".{name}.arbor-tmp-{}", std::process::id()));
        self.staged.push((tmp.clone(), self.dir.join(name)));
        tmp
    }

    /// Stage `bytes` as the file `name`.
    pub fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let tmp = self.temp_path(name);
        let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        Ok(())
    }

    /// Flush every staged file to disk and rename it to its final name, in staging order.
    pub fn commit(mut self) -> Result<()> {
        for (tmp, _) in &self.staged {
            File::open(tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io(tmp, e))?;
        }
        let staged = std::mem::take(&mut self.staged);
        for (i, (tmp, dst)) in staged.iter().enumerate() {
            if let Err(e) = std::fs::rename(tmp, dst) {
                for (t, _) in &staged[i..] {
                    let _ = std::fs::remove_file(t);
                }
                return Err(Error::io(dst, e));
            }
        }
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for StagedFiles {
    fn drop(&mut self) {
        for (tmp, _) in &self.staged {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Replace the file `path` with `bytes` all at once: written beside it under a temporary name, flushed
/// and renamed. A failure (a full disk, say) leaves the previous file as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name =
        path.file_name().ok_or_else(|| Error::path(path, std::io::ErrorKind::InvalidInput, "not a file path"))?;
    let mut staged = StagedFiles::new(dir)?;
    staged.write(&name.to_string_lossy(), bytes)?;
    staged.commit()
}
