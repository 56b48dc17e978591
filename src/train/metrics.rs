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
    /// MiB of this process's GPU buffers at their peak during the step (the memory pool's
    /// high-water mark: activations, KV cache, weights and moments; absent on the CPU).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_peak_mib: Option<f64>,
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

/// Append `line` to the metrics file `metrics` (named `path` in errors). The line, newline included,
/// is rendered in memory first and handed over in one `write_all`: on a [`SpaceCheckedFile`] that is
/// one space check and (for a line this short) one write(2), so a full disk refuses the whole line and
/// a reader never sees the pieces a formatter would write one by one.
///
/// [`SpaceCheckedFile`]: crate::io::space::SpaceCheckedFile
pub fn write_line(metrics: &mut dyn Write, path: &Path, line: &impl Serialize) -> Result<()> {
    let bad = |e: serde_json::Error| Error::Invalid(format!("{}: a metrics line: {e}", path.display()));
    // through a `Value`, whose map keeps the keys sorted
    let mut bytes = serde_json::to_vec(&serde_json::to_value(line).map_err(bad)?).map_err(bad)?;
    bytes.push(b'\n');
    metrics.write_all(&bytes).map_err(|e| Error::io(path, e))
}

/// The lines of a metrics.jsonl text, parsed as JSON, each with its 1-based line number; blank lines
/// are skipped. A last line with no newline after it that is not valid JSON (or not UTF-8) is one still
/// being written, or one cut short when the writer was killed: it is left out, with a warning on
/// stderr. Any other line that does not parse is an error naming `name:line`.
pub fn parse_lines(name: &str, bytes: &[u8]) -> Result<Vec<(usize, serde_json::Value)>> {
    let mut out = Vec::new();
    let pieces: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let last = pieces.len() - 1; // the piece after the last newline (empty when the text ends with one)
    for (i, raw) in pieces.iter().enumerate() {
        let at = i + 1;
        let parsed =
            std::str::from_utf8(raw).map_err(|e| format!("not UTF-8 text: {e}")).and_then(|text| match text.trim() {
                "" => Ok(None),
                t => serde_json::from_str(t).map(Some).map_err(|e| format!("invalid JSON: {e}")),
            });
        match parsed {
            Ok(Some(v)) => out.push((at, v)),
            Ok(None) => {}
            Err(_) if i == last => {
                eprintln!("warning: {name}:{at}: the last line is incomplete (no newline, not JSON); left out");
            }
            Err(e) => return Err(Error::Invalid(format!("{name}:{at}: {e}"))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the `write` calls it receives.
    #[derive(Default)]
    struct Counting {
        bytes: Vec<u8>,
        calls: usize,
    }

    impl Write for Counting {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.calls += 1;
            self.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_metrics_line_is_one_write_with_sorted_keys() {
        let mut w = Counting::default();
        let line = SftStepReport { step: 3, loss: 1.5, grad_norm: f32::NAN, ..SftStepReport::default() };
        write_line(&mut w, Path::new("m.jsonl"), &line).unwrap();
        assert_eq!(w.calls, 1);
        write_line(
            &mut w,
            Path::new("m.jsonl"),
            &SftEvalLine { step: 3, eval_answer_nll: 0.5, eval_answer_exact: 0.25 },
        )
        .unwrap();
        assert_eq!(w.calls, 2);
        let text = String::from_utf8(w.bytes).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(text.ends_with('\n') && lines.len() == 2, "{text:?}");
        assert_eq!(
            lines[0],
            r#"{"grad_norm":null,"loss":1.5,"lr":0.0,"skipped_updates":0,"step":3,"step_s":0.0,"tokens":0}"#
        );
        assert_eq!(lines[1], r#"{"eval_answer_exact":0.25,"eval_answer_nll":0.5,"step":3}"#);
    }

    #[test]
    fn an_unfinished_last_line_is_left_out_and_a_bad_middle_line_is_an_error() {
        let v = parse_lines("m.jsonl", b"{\"rl_step\":1}\n\n{\"rl_step\":2}\n{\"rl_step\":3,\"rew").unwrap();
        let at: Vec<usize> = v.iter().map(|(at, _)| *at).collect();
        assert_eq!(at, [1, 3]);
        assert_eq!(v[1].1["rl_step"], 2);
        // a cut inside a multi-byte character
        assert_eq!(parse_lines("m.jsonl", b"{\"a\":1}\n{\"b\":\"\xc3").unwrap().len(), 1);
        // a bad line followed by a newline is not one being written
        let e = parse_lines("m.jsonl", b"{\"rl_step\":1}\n{\"rl_step\":2,\"rew\n").unwrap_err().to_string();
        assert!(e.starts_with("m.jsonl:2: invalid JSON"), "{e}");
        let e = parse_lines("m.jsonl", b"{\"rl_step\":1,\"rew\n{\"rl_step\":2}\n").unwrap_err().to_string();
        assert!(e.starts_with("m.jsonl:1: invalid JSON"), "{e}");
        let e = parse_lines("m.jsonl", b"\xff\n{}").unwrap_err().to_string();
        assert!(e.starts_with("m.jsonl:1: not UTF-8"), "{e}");
        assert!(parse_lines("m.jsonl", b"").unwrap().is_empty());
    }
}
