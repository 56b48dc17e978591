//! `[rl] keep_best`: the best held-out evaluation of an RL phase so far, and
//! `checkpoints/best.json`, which names its checkpoint so that pruning keeps it.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The best held-out evaluation of an RL phase so far (`[rl] keep_best`), as `checkpoints/best.json`
/// records it beside the checkpoint it names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Best {
    /// The checkpoint's global step (its folder is `step-<step>`).
    pub step: u64,
    /// The RL step whose evaluation it was.
    pub rl_step: u64,
    /// The metrics.jsonl key ranked by, and its value.
    pub metric: String,
    pub value: f64,
}

/// The file under `checkpoints/` naming the best checkpoint.
pub const BEST_FILE: &str = "best.json";

/// Make `checkpoints/best.json` name `best` (none, or a checkpoint not in `run_dir`: remove it): a
/// resumed RL phase's best is its checkpoint's, which a rollback or a changed `[rl] keep_best`
/// makes differ from the file's.
pub fn write_best(run_dir: &Path, best: Option<&Best>) -> Result<()> {
    let path = run_dir.join("checkpoints").join(BEST_FILE);
    match best.filter(|b| run_dir.join("checkpoints").join(format!("step-{}", b.step)).is_dir()) {
        Some(b) => {
            let json = serde_json::to_vec_pretty(b).map_err(|e| Error::Invalid(format!("{BEST_FILE}: {e}")))?;
            crate::io::atomic::write_atomic(&path, &json)
        }
        None if path.exists() => std::fs::remove_file(&path).map_err(|e| Error::io(&path, e)),
        None => Ok(()),
    }
}

/// The best checkpoint `checkpoints/best.json` names, where the file is there and reads.
pub fn read_best(run_dir: &Path) -> Option<Best> {
    let text = std::fs::read_to_string(run_dir.join("checkpoints").join(BEST_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}
