//! The lines of `metrics.jsonl`, one typed struct per kind, serialised in one place
//! ([`write_line`]; keys in sorted order). Every key is documented in docs/metrics.md, and
//! `tests/metrics_doc.rs` checks the document against these structs both ways.
//!
//! | line | struct | told apart by |
//! |---|---|---|
//! | supervised step | [`SftStepReport`] | `step` and `loss` |
//! | supervised eval | [`SftEvalLine`] | `step` and `eval_answer_nll` |
//! | RL step | [`RlStepReport`] | `rl_step` and `reward_mean` |
//! | RL eval | [`RlEvalLine`] | `rl_step` and `eval_solve_rate` |
//! | config change on resume | [`ConfigChangeLine`] | `event = "config_change"` |

use crate::error::{Error, Result};
pub use crate::train::rl::report::{
    AsyncNotes, CriticNotes, EnvNotes, RlEvalLine, RlStepReport, SamplerNotes, StreamNotes, TreeNotes,
};
use serde::Serialize;
use std::io::Write;
use std::path::Path;

/// One supervised step.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SftStepReport {
    pub step: u64,
    /// Token-mean next-token NLL of the global batch.
    pub loss: f64,
    /// Gradient norm before clipping (NaN → null when the update was skipped).
    pub grad_norm: f32,
    pub lr: f32,
    /// Packed positions of this rank's share of the batch.
    pub tokens: usize,
    pub step_s: f64,
    pub skipped_updates: usize,
    /// MiB of the rank's GPU in use after the step (`train.device = "cuda"`; absent on the CPU).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_mem_mib: Option<f64>,
}

/// A held-out evaluation of the supervised phase.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SftEvalLine {
    pub step: u64,
    pub eval_answer_nll: f64,
    pub eval_answer_exact: f64,
}

/// A resume that changed settings (`--allow-config-change`): which keys, from what to what.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigChangeLine {
    /// The global step the run resumed from.
    pub step: u64,
    /// Always "config_change".
    pub event: &'static str,
    /// `{key: {"was": old, "now": new}}`.
    pub changes: serde_json::Map<String, serde_json::Value>,
}

/// Append `line` to the metrics file `metrics` (named `path` in errors).
pub fn write_line(metrics: &mut dyn Write, path: &Path, line: &impl Serialize) -> Result<()> {
    let json =
        serde_json::to_value(line).map_err(|e| Error::Invalid(format!("{}: a metrics line: {e}", path.display())))?;
    writeln!(metrics, "{json}").map_err(|e| Error::io(path, e))
}
