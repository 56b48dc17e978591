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
use arbor::io::tensor_file::{parse_header, read_header, read_tensor_f32};
use arbor::io::{load_hf_dir, save_hf_dir, SaveOptions};
use arbor::model::{ModelConfig, Params};
use arbor::rollout::Finish;
use arbor::tasks::jsonl::{parse_records, JsonlTask};
use arbor::tasks::{build, TaskConfig, TaskKind};
use arbor::tokenizer::CharTokenizer;
use arbor::train::async_rl::decode_weights;
use arbor::train::checkpoint::{fnv1a64, load_checkpoint, save_checkpoint, CheckpointFiles, TrainerState};
use arbor::train::rl::wire;
use arbor::train::rl::{AttnTrace, Sample, StepSample};
use arbor::train::{AdamW, AdamWConfig};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

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

// ---------------------------------------------------------------------------------------------
// (a) run config TOML

/// The shipped run configs: configs/*.toml (but the `compare-*` presets of `arbor experiment`,
/// which tests/configs.rs covers) and the embedded ones.
fn shipped_configs() -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut out: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .expect("configs/ is readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("compare-")))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("config is readable");
            (p, text)
        })
        .collect();
    out.sort();
    out.push(("<DEFAULT_CONFIG>".into(), DEFAULT_CONFIG.to_string()));
    out.push(("<ADDITION_CONFIG>".into(), ADDITION_CONFIG.to_string()));
    out
}

fn check_config(text: &str) -> Result<(), TestCaseError> {
    let file = Path::new("fuzzed-run.toml");
    if let Err(e) = RunConfig::parse(text, file) {
        let msg = e.to_string();
        prop_assert!(msg.contains("fuzzed-run.toml"), "the error does not name the file: {msg}");
    }
    Ok(())
}

#[test]
fn shipped_configs_parse() {
    let configs = shipped_configs();
    assert!(configs.len() >= 4, "found only {} configs", configs.len());
    for (path, text) in &configs {
        RunConfig::parse(text, path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[test]
fn bad_config_values_name_file_key_and_value() {
    let file = Path::new("run.toml");
    let cases = [
        ("[train]\nlr = -1.0", "train.lr", "-1"),
        ("[parallel]\ntp = 0", "parallel.tp", "0"),
        ("[train]\nbatch_size = \"four\"", "line", "four"),
        ("[data]\nkind = \"chess\"", "line", "chess"),
        ("[train]\nstepz = 3", "line", "stepz"),
        // bf16/tf32 products are a GPU setting: the CPU computes in f32
        ("[train]\ndtype = \"bf16\"", "train.dtype", "bf16"),
        ("[train]\ndtype = \"fp8\"", "line", "fp8"),
    ];
    for (extra, key, value) in cases {
        let text = merge_toml(DEFAULT_CONFIG, extra);
        let msg = RunConfig::parse(&text, file).expect_err(extra).to_string();
        assert!(msg.contains("run.toml") && msg.contains(key) && msg.contains(value), "{extra}: {msg}");
    }
}

/// Every `key = value` line of every shipped config, with every odd value of its type in turn:
/// an exhaustive sweep of single-value edits (the proptest below combines several).
#[test]
fn config_validation_never_panics_on_any_single_odd_value() {
    let mut parsed = 0;
    for (path, text) in shipped_configs() {
        let lines: Vec<String> = text.split('\n').map(str::to_string).collect();
        for i in 0..lines.len() {
            for k in 0..ODD_FLOATS.len().max(ODD_STRINGS.len()).max(ODD_INTEGERS.len()) {
                let mut edited = lines.clone();
                if !retype_line(&mut edited, i, k) {
                    break;
                }
                if let Err(e) = RunConfig::parse(&edited.join("\n"), Path::new("sweep.toml")) {
                    assert!(e.to_string().contains("sweep.toml"), "{}: {e}", path.display());
                }
                parsed += 1;
            }
        }
    }
    assert!(parsed > 1000, "swept only {parsed} edits");
}

#[test]
fn env_ranges_that_overflow_are_errors() {
    // found by config_validation_never_panics_on_odd_values: high − low overflowed i64
    let text = format!(
        "{ADDITION_CONFIG}\n[rl]\nsteps = 1\n\n[env]\nkind = \"guess\"\nlow = -9223372036854775808\nhigh = 9223372036854775807\n"
    );
    let msg = RunConfig::parse(&text, Path::new("env.toml")).expect_err("an i64-wide range").to_string();
    assert!(msg.contains("env.toml") && msg.contains("env.low") && msg.contains("-9223372036854775808"), "{msg}");
}

/// `base` with the keys of `extra` (one table header then `key = value` lines) set in that table.
fn merge_toml(base: &str, extra: &str) -> String {
    let mut doc: toml::Table = toml::from_str(base).expect("base parses");
    let extra: toml::Table = toml::from_str(extra).expect("extra parses");
    for (table, kv) in extra {
        let (Some(dst), toml::Value::Table(kv)) =
            (doc.entry(table).or_insert(toml::Value::Table(Default::default())).as_table_mut(), kv)
        else {
            panic!("extra must be one table");
        };
        dst.extend(kv);
    }
    toml::to_string(&doc).expect("serializes")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn config_parse_never_panics_on_arbitrary_text(text in any::<String>()) {
        check_config(&text)?;
    }

    #[test]
    fn config_parse_never_panics_on_toml_like_text(text in "([a-z_]{1,8} = [-0-9a-z\\[\\]\"., ]{0,12}\n|\\[[a-z.]{1,8}\\]\n){0,12}") {
        check_config(&text)?;
        check_config(&format!("{DEFAULT_CONFIG}\n{text}"))?;
    }

    #[test]
    fn config_parse_never_panics_on_mutated_shipped_configs(pick in any::<Index>(), edits in edits(4)) {
        let configs = shipped_configs();
        let (_, text) = &configs[pick.index(configs.len())];
        check_config(&mutate_text(text, &edits))?;
    }

    #[test]
    fn config_validation_never_panics_on_odd_values(
        pick in any::<Index>(),
        picks in proptest::collection::vec((any::<Index>(), any::<Index>()), 1..4),
    ) {
        let configs = shipped_configs();
        let (_, text) = &configs[pick.index(configs.len())];
        check_config(&retype_values(text, &picks))?;
    }
}

// ---------------------------------------------------------------------------------------------
// (b) safetensors files

fn tiny_config_json() -> Value {
    json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8,
           "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
           "vocab_size": 6, "max_position_embeddings": 16, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "tie_word_embeddings": false})
}

fn tiny_params() -> (ModelConfig, Params) {
    let cfg = ModelConfig::from_hf_json(&tiny_config_json(), Path::new("config.json")).expect("tiny config");
    let mut p = Params::zeros(&cfg);
    for (i, x) in p.data.iter_mut().enumerate() {
        *x = (i as f32 * 0.37).sin();
    }
    (cfg, p)
}

/// A model directory written by arbor (one `model.safetensors`) and the file's bytes.
fn saved_model() -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, params) = tiny_params();
    save_hf_dir(dir.path(), &cfg, &params, &SaveOptions::default()).expect("save");
    let bytes = std::fs::read(dir.path().join("model.safetensors")).expect("read");
    (dir, bytes)
}

/// Every reader of safetensors bytes on `bytes` (as `dir/model.safetensors`): no panic, and
/// every error names the file.
fn check_safetensors(dir: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    let file = dir.join("model.safetensors");
    std::fs::write(&file, bytes).expect("write");
    let name = file.display().to_string();
    let in_memory = parse_header(&file, bytes);
    match read_header(&file) {
        Ok(h) => {
            prop_assert!(in_memory.is_ok(), "the file and in-memory readers disagree");
            for t in &h.tensors {
                if let Err(e) = read_tensor_f32(&h, t) {
                    prop_assert!(e.to_string().contains(&name), "{e}");
                }
            }
            let _ = h.load_problems();
        }
        Err(e) => {
            prop_assert!(e.to_string().contains(&name), "{e}");
            prop_assert!(in_memory.is_err(), "the in-memory reader accepted what the file reader refused: {e}");
        }
    }
    if let Err(e) = load_hf_dir(dir) {
        prop_assert!(e.to_string().contains(&name), "load error does not name the file: {e}");
    }
    Ok(())
}

/// `bytes` with its JSON header replaced by `header` (length prefix fixed).
fn with_header(bytes: &[u8], header: &str) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

fn header_text(bytes: &[u8]) -> String {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    String::from_utf8(bytes[8..8 + n].to_vec()).expect("arbor writes UTF-8 headers")
}

/// JSON values at the edges of what a config.json or manifest key may hold.
fn odd_json() -> Vec<Value> {
    vec![
        json!(0),
        json!(-1),
        json!(1u64 << 40),
        json!(u64::MAX),
        json!(1e308),
        json!(-0.0),
        json!(0.5),
        Value::Null,
        json!(""),
        json!("../x"),
        json!([]),
        json!([1, 2]),
        json!({}),
        json!(true),
    ]
}

/// Every key of an arbor-written config.json set to every odd JSON value (and removed): loading
/// and inspecting the directory must not panic, and a load error names one of its files.
#[test]
fn config_json_sweep_never_panics() {
    let (dir, _) = saved_model();
    let path = dir.path().join("config.json");
    let good: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    let keys: Vec<String> = good.as_object().expect("object").keys().cloned().collect();
    for key in &keys {
        for value in odd_json().into_iter().map(Some).chain([None]) {
            let mut v = good.clone();
            let obj = v.as_object_mut().expect("object");
            match &value {
                Some(x) => obj.insert(key.clone(), x.clone()),
                None => obj.remove(key),
            };
            std::fs::write(&path, v.to_string()).expect("write");
            if let Err(e) = load_hf_dir(dir.path()) {
                let msg = e.to_string();
                assert!(msg.contains("config.json") || msg.contains("model.safetensors"), "{key} = {value:?}: {msg}");
            }
            let _ = arbor::cli::inspect::run(&arbor::cli::inspect::InspectArgs {
                path: dir.path().to_path_buf(),
                stats_max_numel: 0,
                sample: None,
                model: None,
                fci_step_gap: 4,
            });
        }
    }
}

#[test]
fn bad_safetensors_headers_name_file_tensor_and_problem() {
    let (dir, good) = saved_model();
    let header = header_text(&good);
    let name = "model.layers.0.input_layernorm.weight";
    let err = |bytes: &[u8]| {
        std::fs::write(dir.path().join("model.safetensors"), bytes).expect("write");
        load_hf_dir(dir.path()).expect_err("must fail").to_string()
    };
    let mut v: Value = serde_json::from_str(&header).expect("json");
    v[name]["dtype"] = json!("F8_E9M9");
    let msg = err(&with_header(&good, &v.to_string()));
    assert!(
        msg.contains("model.safetensors") && msg.contains(name) && msg.contains("unknown dtype \"F8_E9M9\""),
        "{msg}"
    );
    let mut v: Value = serde_json::from_str(&header).expect("json");
    v[name]["data_offsets"] = json!([0, 1u64 << 40]);
    let msg = err(&with_header(&good, &v.to_string()));
    assert!(msg.contains("model.safetensors") && msg.contains(name), "{msg}");
    let msg = err(&good[..good.len() - 3]);
    assert!(msg.contains("model.safetensors") && msg.contains("truncated"), "{msg}");
    let msg = err(&[]);
    assert!(msg.contains("model.safetensors") && msg.contains("too short"), "{msg}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn safetensors_readers_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let (dir, _) = saved_model();
        check_safetensors(dir.path(), &bytes)?;
        // a plausible length prefix in front of arbitrary bytes
        let mut framed = ((bytes.len() as u64) / 2).to_le_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        check_safetensors(dir.path(), &framed)?;
    }

    #[test]
    fn safetensors_readers_never_panic_on_mutated_files(edits in edits(4), in_header in any::<bool>()) {
        let (dir, good) = saved_model();
        let bytes = if in_header {
            // edit the JSON header as text, keeping the length prefix right
            with_header(&good, &mutate_text(&header_text(&good), &edits))
        } else {
            mutate_bytes(&good, &edits)
        };
        check_safetensors(dir.path(), &bytes)?;
    }
}

// ---------------------------------------------------------------------------------------------
// (c) checkpoint manifest (and the files it vouches for)

/// Save `params` as the checkpoint of step `step` under `run` (fresh AdamW moments, seed 7).
fn save_tiny(run: &Path, cfg: &ModelConfig, params: &Params, step: u64) -> arbor::Result<PathBuf> {
    let opt = AdamW::for_layout(AdamWConfig::default(), &params.layout);
    let state = TrainerState { step, seed: 7, adam_t: step, rl_eval_before: None, sampling: None };
    let files = CheckpointFiles { tokenizer: None, keep_last: 1, extra: &|_: &Path| Ok(()) };
    save_checkpoint(run, cfg, params, &opt, &state, &files)
}

/// A checkpoint written by arbor; returns (run dir guard, checkpoint dir).
fn saved_checkpoint() -> (tempfile::TempDir, PathBuf) {
    let run = tempfile::tempdir().expect("tempdir");
    let (cfg, params) = tiny_params();
    let dir = save_tiny(run.path(), &cfg, &params, 3).expect("save checkpoint");
    (run, dir)
}

/// `load_checkpoint` must not panic; its errors name a path inside the checkpoint (or the one a
/// manifest entry points at).
fn check_checkpoint(dir: &Path, manifest_names: &[String]) -> Result<(), TestCaseError> {
    if let Err(e) = load_checkpoint(dir) {
        let msg = e.to_string();
        let names_it = msg.contains(&dir.display().to_string())
            || manifest_names.iter().any(|n| Path::new(n).is_absolute() && msg.contains(n.as_str()));
        prop_assert!(names_it, "the error names no file of the checkpoint: {msg}");
    }
    Ok(())
}

/// The file names a manifest text lists (when it still parses).
fn listed(manifest: &str) -> Vec<String> {
    serde_json::from_str::<Value>(manifest)
        .ok()
        .and_then(|v| v.get("files").and_then(Value::as_object).map(|m| m.keys().cloned().collect()))
        .unwrap_or_default()
}

/// Rewrite `name` in the checkpoint and its manifest entry, so the file's own parser sees it.
fn replace_vouched(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).expect("write");
    let path = dir.join("manifest.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("manifest")).expect("json");
    m["files"][name] = json!({"bytes": bytes.len(), "fnv1a64": format!("{:016x}", fnv1a64(bytes))});
    std::fs::write(&path, m.to_string()).expect("write manifest");
}

#[test]
fn bad_manifests_and_vouched_files_name_file_and_problem() {
    let (_run, dir) = saved_checkpoint();
    load_checkpoint(&dir).expect("the saved checkpoint loads");
    let manifest = std::fs::read_to_string(dir.join("manifest.json")).expect("manifest");
    let err = |text: &str| {
        std::fs::write(dir.join("manifest.json"), text).expect("write");
        load_checkpoint(&dir).expect_err("must fail").to_string()
    };
    let msg = err(&manifest[..manifest.len() / 2]);
    assert!(msg.contains("manifest.json") && msg.contains("not valid JSON"), "{msg}");
    let msg = err("{\"files\": []}");
    assert!(msg.contains("manifest.json") && msg.contains("files"), "{msg}");
    let msg = err(&manifest.replacen("\"fnv1a64\": \"", "\"fnv1a64\": \"0", 1));
    assert!(msg.contains("checksum") && msg.contains("corrupt"), "{msg}");
    std::fs::write(dir.join("manifest.json"), &manifest).expect("restore");
    replace_vouched(&dir, "trainer_state.json", b"{\"step\": 3, \"seed\": -7, \"adam_t\": 3}");
    let msg = load_checkpoint(&dir).expect_err("negative seed").to_string();
    assert!(msg.contains("trainer_state.json"), "{msg}");
}

/// Structured edits of a saved manifest: entries removed, renamed (to paths inside and outside
/// the checkpoint) or given odd sizes and checksums, `files` of the wrong type.
#[test]
fn manifest_sweep_never_panics() {
    let (_run, dir) = saved_checkpoint();
    let path = dir.join("manifest.json");
    let good: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    let names: Vec<String> = good["files"].as_object().expect("files").keys().cloned().collect();
    let mut variants: Vec<Value> = Vec::new();
    for name in &names {
        let mut v = good.clone();
        v["files"].as_object_mut().expect("files").remove(name);
        variants.push(v);
        for new_name in
            ["", ".", "..", "../manifest.json", "missing.bin", "model.safetensors/", "/nonexistent-arbor-file"]
        {
            let mut v = good.clone();
            let files = v["files"].as_object_mut().expect("files");
            let entry = files.remove(name).expect("entry");
            files.insert(new_name.to_string(), entry);
            variants.push(v);
        }
        for field in ["fnv1a64", "bytes"] {
            for odd in odd_json() {
                let mut v = good.clone();
                v["files"][name.as_str()][field] = odd;
                variants.push(v);
            }
        }
        let mut v = good.clone();
        v["files"][name.as_str()] = json!("not an object");
        variants.push(v);
    }
    for odd in odd_json() {
        variants.push(json!({ "files": odd }));
    }
    for v in &variants {
        std::fs::write(&path, v.to_string()).expect("write");
        let listed = v["files"].as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
        if let Err(e) = check_checkpoint(&dir, &listed) {
            panic!("{v}: {e}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES / 2))]

    #[test]
    fn checkpoint_load_never_panics_on_mutated_manifests(edits in edits(3)) {
        let (_run, dir) = saved_checkpoint();
        let path = dir.join("manifest.json");
        let text = mutate_text(&std::fs::read_to_string(&path).expect("manifest"), &edits);
        std::fs::write(&path, &text).expect("write");
        check_checkpoint(&dir, &listed(&text))?;
    }

    #[test]
    fn checkpoint_load_never_panics_on_mutated_vouched_files(pick in 0usize..3, edits in edits(3)) {
        let (_run, dir) = saved_checkpoint();
        let name = ["trainer_state.json", "optimizer.safetensors", "config.json"][pick];
        let good = std::fs::read(dir.join(name)).expect("read");
        let bytes = if name.ends_with(".json") {
            mutate_text(&String::from_utf8_lossy(&good), &edits).into_bytes()
        } else {
            mutate_bytes(&good, &edits)
        };
        replace_vouched(&dir, name, &bytes);
        check_checkpoint(&dir, &[])?;
    }
}

// ---------------------------------------------------------------------------------------------
// (d) JSONL datasets

const GOOD_JSONL: &str = concat!(
    "{\"prompt\": \"12+30=\", \"answer\": 42, \"solution\": \"42\"}\n",
    "{\"prompt\": \"What is 1/2 + 1/4?\", \"answer\": \"3/4\", \"level\": 2}\n",
    "\n",
    "{\"prompt\": \"Say \\\"hi\\\"\\n\", \"answer\": \"hi\", \"solution\": null, \"tags\": [\"a\", {\"b\": 1}]}\n",
    "{\"prompt\": \"2*3=\", \"answer\": 6.0e0}\n",
);

/// Parse `text`; an error must be a dataset error naming the file and a line of the text, and
/// the alphabet check on what parsed must not panic either.
fn check_jsonl(text: &str) -> Result<(), TestCaseError> {
    let file = Path::new("fuzzed.jsonl");
    let lines = text.lines().count();
    match parse_records(text, file) {
        Ok(records) => {
            prop_assert!(records.iter().all(|r| (1..=lines).contains(&r.line)));
            let task =
                JsonlTask { kind: "jsonl", path: file.into(), train: records, eval: Vec::new(), eval_path: None };
            if let Err(e) = task.check_alphabet(&CharTokenizer::default()) {
                let msg = e.to_string();
                prop_assert!(msg.starts_with("fuzzed.jsonl:") && msg.contains("is not in"), "{msg}");
            }
        }
        Err(Error::Dataset { file: f, line, msg }) => {
            prop_assert_eq!(f.as_path(), file);
            prop_assert!((1..=lines).contains(&line), "line {} of {}: {}", line, lines, msg);
        }
        Err(e) => prop_assert!(false, "not a dataset error: {}", e),
    }
    Ok(())
}

fn write_dataset(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write dataset");
    path
}

#[test]
fn jsonl_records_outside_the_alphabet_fail_when_the_task_is_built() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut good = String::new();
    for i in 0..40 {
        good += &format!("{{\"prompt\": \"{i}+1=\", \"answer\": {}}}\n", i + 1);
    }
    let cfg = |path: PathBuf, eval: Option<PathBuf>| TaskConfig {
        path: Some(path),
        eval_path: eval,
        ..TaskConfig::new(TaskKind::Jsonl)
    };
    build(&cfg(write_dataset(dir.path(), "good.jsonl", &good), None), 1).expect("an ASCII dataset builds");
    let bad = format!("{good}{{\"prompt\": \"1+1=\", \"answer\": \"2\", \"solution\": \"two → 2\"}}\n");
    let path = write_dataset(dir.path(), "bad.jsonl", &bad);
    let msg = build(&cfg(path.clone(), None), 1).err().map(|e| e.to_string()).unwrap_or_default();
    let at = format!("{}:41: `solution`: character '→' (U+2192)", path.display());
    assert!(msg.starts_with(&at), "{msg}");
    // the held-out file is checked as well, before any training or evaluation
    let eval = write_dataset(dir.path(), "eval.jsonl", "{\"prompt\": \"3×4=\", \"answer\": 12}\n");
    let msg = build(&cfg(write_dataset(dir.path(), "train.jsonl", &good), Some(eval.clone())), 1)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.starts_with(&format!("{}:1: `prompt`: character '×'", eval.display())), "{msg}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn jsonl_parse_never_panics_on_arbitrary_text(text in any::<String>()) {
        check_jsonl(&text)?;
    }

    #[test]
    fn jsonl_parse_never_panics_on_json_like_lines(
        lines in proptest::collection::vec("\\{(\"(prompt|answer|solution|x)\": ([-0-9.e]{1,6}|\"[ -~é∞]{0,6}\"|null|\\[\\]|\\{\\}|true), ?){0,4}\\}", 0..6)
    ) {
        check_jsonl(&lines.join("\n"))?;
    }

    #[test]
    fn jsonl_parse_never_panics_on_mutated_datasets(edits in edits(4)) {
        check_jsonl(&mutate_text(GOOD_JSONL, &edits))?;
    }
}

// ---------------------------------------------------------------------------------------------
// (e) rank-to-rank messages

fn step_sample(i: u32) -> StepSample {
    let n = i as usize % 3;
    StepSample {
        prompt_id: u64::from(i),
        sample_index: i,
        data: Sample {
            prompt: vec![1, 3 + i],
            response: vec![5; n],
            behav_logp: vec![-0.25; n],
            advantages: vec![0.5; n],
            reward: 1.0,
        },
        logp: vec![-0.5; n],
        finish: if i.is_multiple_of(2) { Finish::Stop } else { Finish::Length },
        trace: AttnTrace { branch: (i % 2 == 1).then_some((0, 1)), fci: vec![0.1; n], ..AttnTrace::default() },
    }
}

#[test]
fn short_and_malformed_messages_say_what_is_wrong() {
    let samples: Vec<StepSample> = (0..3).map(step_sample).collect();
    let bytes = wire::encode(&samples);
    assert_eq!(wire::decode(&bytes).expect("round trip"), samples);
    let msg = wire::decode(&bytes[..bytes.len() - 2]).expect_err("truncated").to_string();
    assert!(msg.contains("gathered samples") && msg.contains("sample 2") && msg.contains("truncated"), "{msg}");
    let msg = wire::decode(&[0xff; 8]).expect_err("absurd count").to_string();
    assert!(msg.contains("`sample count`") && msg.contains("18446744073709551615"), "{msg}");
    let msg = decode_weights(&[0; 12], 1).expect_err("short weights").to_string();
    assert!(msg.contains("weights message of 12 bytes"), "{msg}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn message_decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400), n in 0usize..64) {
        let _ = wire::decode(&bytes);
        let _ = decode_weights(&bytes, n);
    }

    #[test]
    fn message_decoders_never_panic_on_mutated_messages(count in 0u32..5, edits in edits(4)) {
        let samples: Vec<StepSample> = (0..count).map(step_sample).collect();
        let good = wire::encode(&samples);
        let bad = mutate_bytes(&good, &edits);
        if let Err(e) = wire::decode(&bad) {
            prop_assert!(e.to_string().starts_with("gathered samples: malformed message"), "{}", e);
        }
        for cut in [0, good.len() / 3, good.len().saturating_sub(1)] {
            if cut < good.len() {
                prop_assert!(wire::decode(&good[..cut]).is_err(), "a message cut at {} decoded", cut);
            }
        }
    }
}

#[test]
fn a_checkpoint_of_non_finite_weights_is_never_written() {
    let run = tempfile::tempdir().expect("tempdir");
    let (cfg, mut params) = tiny_params();
    params.data[5] = f32::NAN;
    let err = save_tiny(run.path(), &cfg, &params, 4).unwrap_err();
    assert!(err.to_string().contains("non-finite") && err.to_string().contains("element 5"), "{err}");
    assert!(arbor::train::checkpoint::list_checkpoints(run.path()).unwrap().is_empty());
}
