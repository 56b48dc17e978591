//! Parsers of outside bytes under random and mutated input: the run config TOML, safetensors
//! files, checkpoint manifests, JSONL datasets and rank-to-rank messages. Each must return `Ok`
//! or an error that names the file (or message) — never panic — and a few hand-made bad inputs
//! check that the error names the key, line or field that is wrong.
//!
//! Mutations start from valid input written by arbor itself (the shipped configs, a saved model,
//! a saved checkpoint, encoded samples): byte flips, truncations, deleted, duplicated or swapped
//! lines, swapped values and values replaced by edge cases (negative, huge, NaN, wrong type).

use arbor::config::{RunConfig, ADDITION_CONFIG, DEFAULT_CONFIG};
use arbor::error::Error;
use arbor::io::checksum::{checksum64, fnv1a64};
use arbor::io::tensor_file::{parse_header, read_header, read_tensor_f32};
use arbor::io::{load_hf_dir, save_hf_dir, SaveOptions};
use arbor::model::{ModelConfig, Params};
use arbor::rollout::Finish;
use arbor::tasks::jsonl::{parse_records, JsonlTask};
use arbor::tasks::{build, TaskConfig, TaskKind};
use arbor::tokenizer::CharTokenizer;
use arbor::train::async_rl::decode_weights;
use arbor::train::checkpoint::{load_checkpoint, save_checkpoint, CheckpointFiles, TrainerState};
use arbor::train::rl::wire;
use arbor::train::rl::{AttnTrace, Sample, StepSample};
use arbor::train::{AdamW, AdamWConfig};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

mod checkpoints;
mod config_toml;
mod jsonl_datasets;
mod messages;
mod safetensors_files;

const CASES: u32 = 384;

/// Values that stress a parser or a validator where a well-typed value is expected.
const ODD_VALUES: [&str; 22] = [
    "0",
    "-1",
    "1e400",
    "-0.0",
    "nan",
    "inf",
    "-inf",
    "18446744073709551616",
    "9223372036854775807",
    "4294967296",
    "\"\"",
    "\"é\\u0000\"",
    "\"../../x\"",
    "true",
    "[]",
    "{}",
    "[[1]]",
    "0.5",
    "1",
    "\"qwen2\"",
    "\"jsonl\"",
    "65536",
];

/// Tokens inserted into text: structure characters, escapes and multi-byte characters.
const ODD_TOKENS: [&str; 16] =
    ["\"", "[", "]", "{", "}", "=", ",", ":", "\n", "\\", "\\u", "é", "∞", "\u{0}", "[[x]]", "# "];

/// One edit of a text; its fields pick positions, lines and replacements.
#[derive(Debug, Clone)]
struct Edit {
    kind: u8,
    a: Index,
    b: Index,
    byte: u8,
}

fn edits(max: usize) -> impl Strategy<Value = Vec<Edit>> {
    proptest::collection::vec(
        (0u8..9, any::<Index>(), any::<Index>(), any::<u8>()).prop_map(|(kind, a, b, byte)| Edit { kind, a, b, byte }),
        1..=max,
    )
}

/// The value of a TOML `key = value` or JSON `"key": value,` line, as a byte range (without a
/// trailing comma).
fn value_range(line: &str) -> Option<std::ops::Range<usize>> {
    let at = line.find('=').or_else(|| line.find("\":").map(|k| k + 1))?;
    let body = line.trim_end();
    let end = if body.len() > at + 1 && body.ends_with(',') { body.len() - 1 } else { line.len() };
    Some(at + 1..end.max(at + 1))
}

/// Apply `edits` to `text`: byte flips and truncations (made valid UTF-8 lossily), line
/// deletions, duplications and swaps, swapped `key = value` values, inserted odd tokens and
/// values replaced by odd ones.
fn mutate_text(text: &str, edits: &[Edit]) -> String {
    let mut text = text.to_string();
    for e in edits {
        let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
        let n = lines.len();
        match e.kind {
            0 if !text.is_empty() => {
                let mut bytes = text.into_bytes();
                let i = e.a.index(bytes.len());
                bytes[i] ^= e.byte | 1;
                text = String::from_utf8_lossy(&bytes).into_owned();
                continue;
            }
            1 if !text.is_empty() => {
                let bytes = text.into_bytes();
                text = String::from_utf8_lossy(&bytes[..e.a.index(bytes.len())]).into_owned();
                continue;
            }
            2 => {
                lines.remove(e.a.index(n));
            }
            3 => {
                let l = lines[e.a.index(n)].clone();
                lines.insert(e.b.index(n + 1), l);
            }
            4 => lines.swap(e.a.index(n), e.b.index(n)),
            5 => {
                let (i, j) = (e.a.index(n), e.b.index(n));
                if let (Some(ri), Some(rj)) = (value_range(&lines[i]), value_range(&lines[j])) {
                    let (vi, vj) = (lines[i][ri.clone()].to_string(), lines[j][rj.clone()].to_string());
                    lines[i].replace_range(ri, &vj);
                    let rj = value_range(&lines[j]).unwrap_or(rj);
                    lines[j].replace_range(rj, &vi);
                }
            }
            6 => {
                let i = e.a.index(n);
                if let Some(r) = value_range(&lines[i]) {
                    let v = ODD_VALUES[e.b.index(ODD_VALUES.len())];
                    lines[i].replace_range(r, &format!(" {v}"));
                }
            }
            _ => {
                let tok = ODD_TOKENS[e.b.index(ODD_TOKENS.len())];
                let at = e.a.index(text.len() + 1);
                let at = (0..=at).rev().find(|&k| text.is_char_boundary(k)).unwrap_or(0);
                text.insert_str(at, tok);
                continue;
            }
        }
        text = lines.join("\n");
    }
    text
}

/// Integers and floats at the edges of what a numeric key may hold (TOML spellings).
const ODD_INTEGERS: [&str; 8] =
    ["0", "-1", "1", "2", "65536", "4294967296", "9223372036854775807", "-9223372036854775808"];
const ODD_FLOATS: [&str; 9] = ["0.0", "-1.0", "0.5", "-0.0", "nan", "inf", "-inf", "1e308", "1e-30"];
/// Strings at the edges of what a string key may hold.
const ODD_STRINGS: [&str; 8] =
    ["\"\"", "\"é∞\"", "\"a/b\"", "\"../x\"", "\" \"", "\"\\u0000\"", "\"qwen2\"", "\"x.jsonl\""];

/// Odd value number `k` (modulo their count) of the TOML type of `old`; `None` for an inline table.
fn odd_value(old: &str, k: usize) -> Option<String> {
    let pick = |xs: &[&str]| xs[k % xs.len()].to_string();
    match old.chars().next()? {
        '"' => Some(pick(&ODD_STRINGS)),
        't' | 'f' => Some(if old.starts_with('t') { "false" } else { "true" }.to_string()),
        '[' => Some(pick(&["[]", "[\"\"]", "[0]"])),
        '{' => None,
        _ if old.contains(['.', 'e', 'n']) => Some(pick(&ODD_FLOATS)),
        _ => Some(pick(&ODD_INTEGERS)),
    }
}

/// Give line `i`, when it is a `key = value` line, odd value `k` of its type; whether it was.
fn retype_line(lines: &mut [String], i: usize, k: usize) -> bool {
    let t = lines[i].trim_start();
    if t.starts_with('#') || t.starts_with('[') {
        return false;
    }
    let Some(r) = value_range(&lines[i]) else { return false };
    let Some(new) = odd_value(lines[i][r.clone()].trim(), k) else { return false };
    lines[i].replace_range(r, &format!(" {new}"));
    true
}

/// Replace the values of the `key = value` lines picked by `picks` with odd values of the same
/// TOML type, so the text stays well-typed TOML and reaches the config's validation.
fn retype_values(text: &str, picks: &[(Index, Index)]) -> String {
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    let assignments: Vec<usize> = (0..lines.len()).filter(|&i| retype_line(&mut lines.clone(), i, 0)).collect();
    if assignments.is_empty() {
        return text.to_string();
    }
    for (line, value) in picks {
        retype_line(&mut lines, assignments[line.index(assignments.len())], value.index(1 << 16));
    }
    lines.join("\n")
}

/// Apply `edits` to bytes: flips, truncations, inserted and deleted bytes.
fn mutate_bytes(bytes: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for e in edits {
        if out.is_empty() {
            out.push(e.byte);
            continue;
        }
        let i = e.a.index(out.len());
        match e.kind % 4 {
            0 | 1 => out[i] ^= e.byte | 1,
            2 => out.truncate(i),
            _ => {
                out.remove(i);
                out.insert(e.b.index(out.len() + 1), e.byte);
            }
        }
    }
    out
}
