//! All-or-nothing file writes: stage every file under a temporary name in the target directory, then
//! rename them into place, the files there before moved aside until all are in. A failed save
//! leaves no half-written file and keeps what was there before.

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

    /// Flush every staged file to disk and put it in place under its final name, all or nothing:
    /// the files already there are moved aside first and brought back if any rename fails, so a
    /// failed commit leaves the directory as it was (a crash part-way can still leave a mix).
    pub fn commit(mut self) -> Result<()> {
        for (tmp, _) in &self.staged {
            File::open(tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io(tmp, e))?;
        }
        let staged = std::mem::take(&mut self.staged);
        let result = place(&staged);
        if result.is_err() {
            for (t, _) in &staged {
                let _ = std::fs::remove_file(t);
            }
        }
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        result
    }
}

/// Rename each `tmp` to its `dst`, moving the `dst`s that exist aside first; on a failure, undo
/// every step taken and return the error.
fn place(staged: &[(PathBuf, PathBuf)]) -> Result<()> {
    let aside = |dst: &Path| {
        let name = dst.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        dst.with_file_name(format!(".{name}.arbor-old-{}", std::process::id()))
    };
    // one file: a rename over the old one replaces it at once (a kill leaves the old file or the
    // new one; moving it aside first would leave neither under its name for a moment)
    if let [(tmp, dst)] = staged {
        if std::fs::symlink_metadata(dst).is_ok_and(|m| m.is_dir()) {
            return Err(Error::Invalid(format!("{}: a directory is where a file goes", dst.display())));
        }
        return std::fs::rename(tmp, dst).map_err(|e| Error::io(dst, e));
    }
    // 1. the files there now, aside (a directory where a file goes is refused before any change)
    let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
    let undo_moves = |moved: &[(PathBuf, PathBuf)]| {
        for (dst, old) in moved.iter().rev() {
            let _ = std::fs::rename(old, dst);
        }
    };
    for (_, dst) in staged {
        match std::fs::symlink_metadata(dst) {
            Ok(m) if m.is_dir() => {
                undo_moves(&moved);
                return Err(Error::Invalid(format!("{}: a directory is where a file goes", dst.display())));
            }
            Ok(_) => {
                let old = aside(dst);
                if let Err(e) = std::fs::rename(dst, &old) {
                    undo_moves(&moved);
                    return Err(Error::io(dst, e));
                }
                moved.push((dst.clone(), old));
            }
            Err(_) => {}
        }
    }
    // 2. the new files in place
    for (i, (tmp, dst)) in staged.iter().enumerate() {
        if let Err(e) = std::fs::rename(tmp, dst) {
            for (_, placed) in &staged[..i] {
                let _ = std::fs::remove_file(placed);
            }
            undo_moves(&moved);
            return Err(Error::io(dst, e));
        }
    }
    // 3. the old files go
    for (_, old) in &moved {
        let _ = std::fs::remove_file(old);
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    /// A commit that cannot put one file in place leaves every file as it was, and no temporary
    /// or set-aside file; one that can replaces them all and leaves nothing else.
    #[test]
    fn a_commit_is_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("model.safetensors"), b"old weights").unwrap();
        std::fs::create_dir(d.join("config.json")).unwrap();
        let mut s = StagedFiles::new(d).unwrap();
        s.write("model.safetensors", b"new weights").unwrap();
        s.write("config.json", b"{}").unwrap();
        let e = s.commit().unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
        assert_eq!(std::fs::read(d.join("model.safetensors")).unwrap(), b"old weights");
        assert_eq!(listing(d), ["config.json", "model.safetensors"]);

        std::fs::remove_dir(d.join("config.json")).unwrap();
        std::fs::write(d.join("config.json"), b"old config").unwrap();
        let mut s = StagedFiles::new(d).unwrap();
        s.write("model.safetensors", b"new weights").unwrap();
        s.write("config.json", b"{}").unwrap();
        s.write("tokenizer.json", b"[]").unwrap();
        s.commit().unwrap();
        assert_eq!(std::fs::read(d.join("model.safetensors")).unwrap(), b"new weights");
        assert_eq!(std::fs::read(d.join("config.json")).unwrap(), b"{}");
        assert_eq!(listing(d), ["config.json", "model.safetensors", "tokenizer.json"]);
    }
}
