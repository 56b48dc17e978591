//! The weight-install schedule of a continuous run (`<run>/rollout-schedule.jsonl`): one line per
//! install, `{"rank": world rank, "version": v, "sum": weights checksum, "decode_step": d}` (each
//! rank's first line: the weights it starts from, at decode step 0),
//! written by the training leader as the rollout ranks report their installs. A continuous run is
//! a pure function of the seed and this schedule: `arbor train --replay FILE` installs each version
//! at the recorded decode step and so reproduces the run's samples and weights.

use super::pieces::Install;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;

/// The schedule's file name in the run directory.
pub const FILE: &str = "rollout-schedule.jsonl";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    rank: usize,
    version: u64,
    sum: u64,
    decode_step: u64,
}

/// The line a resumed run writes before its installs: its rollout loops started over after RL step
/// `resumed_after`, so the schedule no longer describes one loop from the start.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Resumed {
    resumed_after: u64,
}

/// Mark the schedule of a run resumed after RL step `step`.
pub fn mark_resume(out: &mut dyn Write, step: u64) -> Result<()> {
    let text = serde_json::to_string(&Resumed { resumed_after: step }).map_err(|e| Error::Invalid(e.to_string()))?;
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| Error::Invalid(format!("writing the rollout schedule: {e}")))
}

/// World rank `rank`'s installs from a schedule file, in order.
pub fn read(path: &Path, rank: usize) -> Result<VecDeque<Install>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = VecDeque::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        if let Ok(r) = serde_json::from_str::<Resumed>(line) {
            return Err(Error::Invalid(format!(
                "{}: line {}: the run was resumed after RL step {}, where its rollout loops started over: \
                 only a run that never stopped can be replayed from its schedule",
                path.display(),
                i + 1,
                r.resumed_after
            )));
        }
        let l: Line = serde_json::from_str(line)
            .map_err(|e| Error::Invalid(format!("{}: line {}: not a schedule line: {e}", path.display(), i + 1)))?;
        if l.rank != rank {
            continue;
        }
        let backwards = |p: &Install| p.version >= l.version || p.decode_step > l.decode_step;
        if let Some(prev) = out.back().copied().filter(backwards) {
            return Err(Error::Invalid(format!(
                "{}: line {}: rank {rank} installs version {} at decode step {} after version {} at step {}: installs must go forward",
                path.display(),
                i + 1,
                l.version,
                l.decode_step,
                prev.version,
                prev.decode_step
            )));
        }
        out.push_back(Install { version: l.version, sum: l.sum, decode_step: l.decode_step });
    }
    Ok(out)
}

/// Append `installs` (world rank, install) to the schedule.
pub fn append(out: &mut dyn Write, installs: &[(usize, Install)]) -> Result<()> {
    for &(rank, x) in installs {
        let line = Line { rank, version: x.version, sum: x.sum, decode_step: x.decode_step };
        let text = serde_json::to_string(&line).map_err(|e| Error::Invalid(e.to_string()))?;
        writeln!(out, "{text}").map_err(|e| Error::Invalid(format!("writing the rollout schedule: {e}")))?;
    }
    out.flush().map_err(|e| Error::Invalid(format!("writing the rollout schedule: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_round_trip_per_rank_and_bad_files_say_where() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let x = |version, decode_step| Install { version, sum: 0xfeed ^ version, decode_step };
        let mut buf = Vec::new();
        append(&mut buf, &[(2, x(1, 0)), (3, x(1, 4)), (2, x(2, 9)), (2, x(3, 9))]).unwrap();
        std::fs::write(&path, &buf).unwrap();
        assert_eq!(read(&path, 2).unwrap(), [x(1, 0), x(2, 9), x(3, 9)]);
        assert_eq!(read(&path, 3).unwrap(), [x(1, 4)]);
        assert!(read(&path, 1).unwrap().is_empty());
        std::fs::write(&path, format!("{}{{\"rank\": 2, \"version\": 1}}\n", String::from_utf8_lossy(&buf))).unwrap();
        let e = read(&path, 2).unwrap_err().to_string();
        assert!(e.contains("line 5") && e.contains(FILE), "{e}");
        let mut back = Vec::new();
        append(&mut back, &[(2, x(2, 9)), (2, x(1, 10))]).unwrap();
        std::fs::write(&path, &back).unwrap();
        let e = read(&path, 2).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("must go forward"), "{e}");
        assert!(read(&dir.path().join("none.jsonl"), 0).unwrap_err().to_string().contains("none.jsonl"));
        // a resumed run's schedule (its loops started over: decode steps from 0 again) is refused
        // naming the resume, not as installs that go backwards
        let mut resumed = Vec::new();
        append(&mut resumed, &[(2, x(1, 0)), (2, x(2, 9))]).unwrap();
        mark_resume(&mut resumed, 4).unwrap();
        append(&mut resumed, &[(2, x(5, 0))]).unwrap();
        std::fs::write(&path, &resumed).unwrap();
        let e = read(&path, 2).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("resumed after RL step 4"), "{e}");
    }
}
