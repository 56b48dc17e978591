//! Checkpoint manifests and the files they vouch for.

use super::safetensors_files::{odd_json, tiny_params};
use super::*;

/// Save `params` as the checkpoint of step `step` under `run` (fresh AdamW moments, seed 7).
pub(crate) fn save_tiny(run: &Path, cfg: &ModelConfig, params: &Params, step: u64) -> arbor::Result<PathBuf> {
    let opt = AdamW::for_layout(AdamWConfig::default(), &params.layout);
    let state = TrainerState { step, seed: 7, adam_t: step, ..TrainerState::default() };
    let files = CheckpointFiles {
        tokenizer: None,
        keep_last: 1,
        extra: &|_: &Path| Ok(()),
        run_config: None,
        commit: None,
        best: None,
    };
    save_checkpoint(run, cfg, params, &opt, &state, &files)
}

/// A checkpoint written by arbor; returns (run dir guard, checkpoint dir).
fn saved_checkpoint() -> (tempfile::TempDir, PathBuf) {
    let run = tempfile::tempdir().expect("tempdir");
    let (cfg, params) = tiny_params();
    let dir = save_tiny(run.path(), &cfg, &params, 3).expect("save checkpoint");
    (run, dir)
}

/// Damage the file at `path` in place, its size unchanged: one bit of byte `at` (or of the last
/// byte, for an `at` past the end) flipped.
fn flip_a_bit(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).expect("read");
    let at = at.min(bytes.len() - 1);
    bytes[at] ^= 1;
    std::fs::write(path, &bytes).expect("write");
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
    m["files"][name] = json!({"bytes": bytes.len(), "checksum64": format!("{:016x}", checksum64(bytes))});
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
    let msg = err(&manifest.replacen("\"checksum64\": \"", "\"checksum64\": \"0", 1));
    assert!(msg.contains("checksum") && msg.contains("corrupt"), "{msg}");
    std::fs::write(dir.join("manifest.json"), &manifest).expect("restore");
    replace_vouched(&dir, "trainer_state.json", b"{\"step\": 3, \"seed\": -7, \"adam_t\": 3}");
    let msg = load_checkpoint(&dir).expect_err("negative seed").to_string();
    assert!(msg.contains("trainer_state.json"), "{msg}");
}

/// `arbor inspect` of a checkpoint checks its files against the manifest as a resume does: a
/// damaged byte of the optimizer file, which nothing else it reads would notice, fails it.
#[test]
fn inspect_checks_a_checkpoint_against_its_manifest() {
    use arbor::cli::inspect::{run, InspectArgs};
    let (_run, dir) = saved_checkpoint();
    let args = InspectArgs { path: dir.clone(), stats_max_numel: 0, sample: None, model: None, fci_step_gap: None };
    run(&args).expect("an intact checkpoint passes");
    flip_a_bit(&dir.join("optimizer.safetensors"), usize::MAX);
    let msg = run(&args).expect_err("a damaged checkpoint fails").to_string();
    assert!(msg.contains("1 problem"), "{msg}");
}

/// `arbor inspect RUN_DIR` checks every checkpoint of a run and says which one a resume takes:
/// the newest intact one, past a damaged newer one (which fails the command).
#[test]
fn inspect_of_a_run_lists_its_checkpoints_and_the_one_a_resume_takes() {
    let (run, newest) = saved_checkpoint();
    let older = run.path().join("checkpoints/step-2");
    std::fs::create_dir_all(&older).expect("mkdir");
    for entry in std::fs::read_dir(&newest).expect("read") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), older.join(entry.file_name())).expect("copy");
    }
    std::fs::create_dir_all(run.path().join("checkpoints/superseded-after-step-1/step-9")).expect("mkdir");
    let inspect = || {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_arbor"))
            .args(["inspect", run.path().to_str().expect("utf-8")])
            .output()
            .expect("run arbor");
        (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let (ok, out) = inspect();
    assert!(ok, "{out}");
    assert!(
        out.contains("2 checkpoint(s)") && out.contains("step-3: intact") && out.contains("step-2: intact"),
        "{out}"
    );
    assert!(out.lines().any(|l| l.contains("step-3") && l.contains("takes this one")), "{out}");
    assert!(out.contains("superseded-after-step-1/: 1 checkpoint(s)"), "{out}");
    flip_a_bit(&newest.join("optimizer.safetensors"), 0);
    let (ok, out) = inspect();
    assert!(!ok, "a damaged checkpoint passed: {out}");
    assert!(out.contains("problem: step-3") && out.contains("optimizer.safetensors"), "{out}");
    assert!(out.lines().any(|l| l.contains("step-2") && l.contains("takes this one")), "{out}");
}

/// A checkpoint written before the checksum64 format (manifest entries with `fnv1a64`) still
/// loads, and its checksums are still checked; an entry with no checksum at all is refused.
#[test]
fn an_older_checkpoints_fnv1a64_manifest_is_still_verified() {
    let (_run, dir) = saved_checkpoint();
    let path = dir.join("manifest.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("manifest")).expect("json");
    for (name, entry) in m["files"].as_object_mut().expect("files") {
        let bytes = std::fs::read(dir.join(name)).expect("file");
        *entry = json!({"bytes": bytes.len(), "fnv1a64": format!("{:016x}", fnv1a64(&bytes))});
    }
    std::fs::write(&path, m.to_string()).expect("write");
    let loaded = load_checkpoint(&dir).expect("an fnv1a64 manifest loads");
    assert_eq!(loaded.state.step, 3);
    // one byte of the weights changed (same size): the old checksum catches it
    flip_a_bit(&dir.join("model.safetensors"), usize::MAX);
    let msg = load_checkpoint(&dir).expect_err("corrupt").to_string();
    assert!(msg.contains("model.safetensors") && msg.contains("corrupt"), "{msg}");
    m["files"]["model.safetensors"].as_object_mut().expect("entry").remove("fnv1a64");
    std::fs::write(&path, m.to_string()).expect("write");
    let msg = load_checkpoint(&dir).expect_err("no checksum").to_string();
    assert!(msg.contains("model.safetensors") && msg.contains("no checksum"), "{msg}");
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
        for field in ["checksum64", "bytes"] {
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
