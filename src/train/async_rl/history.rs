//! Exact resumes of batch-mode `[async]` runs at α ≥ 1: the older policy versions a resume needs.
//!
//! Batch b is generated with policy version max(first, b − ⌈α⌉), so after a checkpoint of step D
//! the batches D .. D + ⌈α⌉ − 1 need versions older than the checkpoint's own weights (version D).
//! The leader keeps the weights messages it published of the last ⌈α⌉ + 1 versions (that many
//! copies of the f32 weights in its host memory) and writes the older ones, with the phase's first
//! version, into each checkpoint (`async-history.bin`); a resume
//! reads them on every rank, so the rollout ranks generate those batches with exactly the weights
//! the uninterrupted run used, and the run continues bit for bit (batch mode, replicated or not). A
//! checkpoint without the file (continuous mode, or one written before it existed) resumes as before:
//! the first ⌈α⌉ batches after it use the resumed weights.
//!
//! File: [magic "ARBASH01"][first version u64][count u64] then per version [length u64][weights
//! message] (`messages.rs`: version, checksum, f32 bytes), oldest first; all little-endian.

use super::messages::{decode_weights, u64_at};
use crate::error::{Error, Result};
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

/// The file in a checkpoint's folder.
pub(super) const FILE: &str = "async-history.bin";
const MAGIC: &[u8; 8] = b"ARBASH01";

/// The leader's published weights messages that a checkpoint may need: versions ≥ newest − lag
/// (kept at lag > 0 only: at α = 0 every batch after a checkpoint uses its version or a later one).
pub(super) struct History {
    /// The phase's first version (batch versions are counted from it).
    pub first: u64,
    lag: u64,
    /// (shared with the publishing thread, which may still be sending the newest)
    msgs: VecDeque<(u64, Arc<Vec<u8>>)>,
}

impl History {
    pub fn new(first: u64, lag: u64) -> Self {
        History { first, lag, msgs: VecDeque::new() }
    }

    /// Keep the message of `version` (the newest), dropping those no checkpoint can need any more.
    pub fn push(&mut self, version: u64, msg: impl Into<Arc<Vec<u8>>>) {
        self.msgs.push_back((version, msg.into()));
        let oldest = version.saturating_sub(self.lag);
        while self.msgs.front().is_some_and(|(v, _)| *v < oldest) {
            self.msgs.pop_front();
        }
    }

    /// Write the versions the batches after a checkpoint of step `done` are generated with and the
    /// checkpoint does not hold: max(first, done − lag) .. done − 1.
    pub fn save(&self, dir: &Path, done: u64) -> Result<()> {
        let wanted = done.saturating_sub(self.lag).max(self.first)..done;
        let keep: Vec<&(u64, Arc<Vec<u8>>)> = self.msgs.iter().filter(|(v, _)| wanted.contains(v)).collect();
        if keep.len() as u64 != wanted.end - wanted.start {
            return Err(Error::Invalid(format!(
                "async: the checkpoint of step {done} needs policy versions {wanted:?}, the leader kept {:?}",
                self.msgs.iter().map(|m| m.0).collect::<Vec<_>>()
            )));
        }
        let mut out = Vec::with_capacity(24 + keep.iter().map(|m| 8 + m.1.len()).sum::<usize>());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.first.to_le_bytes());
        out.extend_from_slice(&(keep.len() as u64).to_le_bytes());
        for (_, msg) in keep {
            out.extend_from_slice(&(msg.len() as u64).to_le_bytes());
            out.extend_from_slice(&msg[..]);
        }
        let path = dir.join(FILE);
        std::fs::write(&path, out).map_err(|e| Error::io(&path, e))
    }
}

/// A checkpoint's history, read back: the phase's first version and the weights messages of the
/// versions the resumed batches need.
pub(super) struct Resumed {
    pub first: u64,
    pub msgs: BTreeMap<u64, Vec<u8>>,
}

/// Read checkpoint `ck`'s history for a resume after step `done` at lag `lag` with a model of
/// `n_params` parameters. `Ok(None)`: no file, or it lacks a version this lag needs (α raised on
/// resume); the resume then counts batch versions from `done`. A damaged file is an error naming it.
pub(super) fn read(ck: &Path, done: u64, lag: u64, n_params: usize) -> Result<Option<Resumed>> {
    let path = ck.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let bad = |msg: String| Error::Format { path: path.clone(), msg };
    if bytes.get(..8) != Some(&MAGIC[..]) {
        return Err(bad("not an arbor async history (bad magic)".into()));
    }
    let what = "async history";
    let first = u64_at(&bytes, 8, what, "first version").map_err(|e| bad(e.to_string()))?;
    let count = u64_at(&bytes, 16, what, "count").map_err(|e| bad(e.to_string()))?;
    let (mut at, mut msgs) = (24usize, BTreeMap::new());
    for i in 0..count {
        let len = u64_at(&bytes, at, what, "message length").map_err(|e| bad(e.to_string()))?;
        let end = usize::try_from(len).ok().and_then(|l| (at + 8).checked_add(l)).filter(|&e| e <= bytes.len());
        let end = end.ok_or_else(|| bad(format!("version entry {i} of {len} bytes runs past the file's end")))?;
        let msg = &bytes[at + 8..end];
        let w = decode_weights(msg, n_params).map_err(|e| bad(e.to_string()))?;
        msgs.insert(w.version, msg.to_vec());
        at = end;
    }
    if at != bytes.len() {
        return Err(bad(format!("{} bytes after its {count} versions", bytes.len() - at)));
    }
    let wanted = done.saturating_sub(lag).max(first)..done;
    if !wanted.clone().all(|v| msgs.contains_key(&v)) {
        return Ok(None);
    }
    msgs.retain(|v, _| wanted.contains(v));
    Ok(Some(Resumed { first, msgs }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::checksum::checksum64;

    fn msg(version: u64, x: f32) -> Vec<u8> {
        let bytes = x.to_le_bytes();
        [&version.to_le_bytes()[..], &checksum64(&bytes).to_le_bytes(), &bytes].concat()
    }

    #[test]
    fn a_checkpoint_keeps_the_versions_its_next_batches_need_and_a_resume_reads_them_back() {
        let dir = tempfile::tempdir().unwrap();
        // lag 2, the phase started at version 0; versions 0..=5 published
        let mut h = History::new(0, 2);
        for v in 0..=5 {
            h.push(v, msg(v, v as f32));
        }
        h.save(dir.path(), 5).unwrap();
        let r = read(dir.path(), 5, 2, 1).unwrap().unwrap();
        assert_eq!((r.first, r.msgs.keys().copied().collect::<Vec<_>>()), (0, vec![3, 4]));
        assert_eq!(r.msgs[&4], msg(4, 4.0));
        // α raised on resume: version 2 is not there, so the resume counts from its own step
        assert!(read(dir.path(), 5, 3, 1).unwrap().is_none());
        // α lowered: a subset
        assert_eq!(read(dir.path(), 5, 1, 1).unwrap().unwrap().msgs.len(), 1);
        // early in the phase the versions are clamped at its first
        let mut h = History::new(7, 2);
        for v in 7..=8 {
            h.push(v, msg(v, 1.0));
        }
        h.save(dir.path(), 8).unwrap();
        assert_eq!(read(dir.path(), 8, 2, 1).unwrap().unwrap().msgs.keys().copied().collect::<Vec<_>>(), vec![7]);
        // a version the leader no longer has is a bug, said so
        let mut h = History::new(0, 1);
        h.push(4, msg(4, 0.0));
        assert!(h.save(dir.path(), 4).unwrap_err().to_string().contains("needs policy versions 3..4"));
        assert!(read(tempfile::tempdir().unwrap().path(), 4, 1, 1).unwrap().is_none(), "no file");
    }

    #[test]
    fn a_damaged_history_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = History::new(0, 1);
        for v in 0..=3 {
            h.push(v, msg(v, 2.0));
        }
        h.save(dir.path(), 3).unwrap();
        let path = dir.path().join(FILE);
        let good = std::fs::read(&path).unwrap();
        for (what, bytes) in [
            ("magic", b"NOTHIST!".iter().chain(&good[8..]).copied().collect::<Vec<u8>>()),
            ("past the file's end", good[..good.len() - 1].to_vec()),
            ("after its", [&good[..], b"x"].concat()),
            ("corrupted", {
                let mut b = good.clone();
                *b.last_mut().unwrap() ^= 1;
                b
            }),
        ] {
            std::fs::write(&path, bytes).unwrap();
            let e = read(dir.path(), 3, 1, 1).err().unwrap().to_string();
            assert!(e.contains(FILE) && e.contains(what), "{what}: {e}");
        }
    }
}
