//! Training checkpoints with exact resume: `checkpoints/step-N/` holds the HF-layout weights
//! (+ tokenizer), the AdamW moments, the trainer state and a checksum manifest. A checkpoint is
//! written into a temporary directory and renamed into place, so a crash never leaves a partial
//! `step-N` (a run's saves finish that last stage in the background: `train::commit`); the
//! manifest is verified before anything is loaded.
//!
//! All randomness in arbor derives from (seed, step, ...) coordinates, so (weights, moments,
//! step) is the whole state: resuming from step N reproduces the uninterrupted run bit for bit.

use crate::error::{Error, Result};
use crate::io::checksum::{fnv1a64, fnv1a64_more, Checksum64};
use crate::io::{load_hf_dir, save_hf_dir, SaveOptions};
use crate::model::{ModelConfig, Params};
use crate::tokenizer::Tokenizer;
use crate::train::commit::Committer;
use crate::train::AdamW;
use safetensors::Dtype;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const STATE_FILE: &str = "trainer_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const MANIFEST_FILE: &str = "manifest.json";
mod best;
pub use best::{read_best, write_best, Best, BEST_FILE};

/// The resolved run config the checkpoint's steps were trained with (what a resume from it, a
/// rollback included, is compared with: train/run_record.rs).
pub const RUN_CONFIG_FILE: &str = "run_config.toml";

/// Everything besides weights and moments that a resumed run needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    /// The run's seed (a resume with another seed is refused).
    pub seed: u64,
    /// AdamW's step counter t.
    pub adam_t: u64,
    /// Inside the RL phase: the held-out solve rate (sampled, greedy) measured before its first step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rl_eval_before: Option<[f64; 2]>,
    /// With it: that evaluation's k and pass@k (absent in checkpoints written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rl_eval_before_pass_at_k: Option<(u32, f64)>,
    /// State of adaptive sampling (next problem, dynamic batch size, FCI filter) inside an AttnRL phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<SamplingState>,
    /// Consecutive steps up to this one whose update was skipped as non-finite (train/guard.rs):
    /// a resume continues the count, so a requeued diverging run stops where the straight one would.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nonfinite_in_a_row: u64,
    /// A dataset task's [`crate::tasks::Task::fingerprint`] (hex): a resume on other records is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_fingerprint: Option<String>,
    /// Under `[rl] keep_best`: the best evaluation of the RL phase up to this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rl_best: Option<Best>,
}

/// The hex form of a task's fingerprint that a checkpoint keeps.
pub fn data_fingerprint(task: &dyn crate::tasks::Task) -> Option<String> {
    task.fingerprint().map(|h| format!("{h:016x}"))
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Adaptive-sampling state that a resumed AttnRL phase needs (ALGORITHMS.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SamplingState {
    /// Index of the next training problem (the dynamic batch makes it differ from step × prompts).
    pub next_problem: u64,
    /// Prompts of the next step (0 = `prompts_per_step`).
    pub prompts: usize,
    /// Running mean question FCI of all-correct problems and how many were seen.
    pub fci_mean: f64,
    pub fci_count: u64,
}

/// The checksum a manifest entry records, by its key: [`checksum64`] (written since the
/// 2026-12-07 format) or the FNV-1a of older checkpoints (still verified).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sum {
    Checksum64,
    Fnv1a64,
}

impl Sum {
    /// The manifest entry's key for this checksum.
    fn key(self) -> &'static str {
        match self {
            Sum::Checksum64 => "checksum64",
            Sum::Fnv1a64 => "fnv1a64",
        }
    }
}

/// A file's checksum of kind `sum` and its length, read a piece at a time: a checkpoint's files
/// (the moments are 8 bytes a parameter) are never held whole beside the weights training holds.
fn file_checksum(path: &Path, sum: Sum) -> Result<(u64, u64)> {
    use std::io::Read;
    let mut f = io(path, std::fs::File::open(path))?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut c, mut fnv, mut len) = (Checksum64::new(), fnv1a64(&[]), 0u64);
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                match sum {
                    Sum::Checksum64 => c.update(&buf[..n]),
                    Sum::Fnv1a64 => fnv = fnv1a64_more(fnv, &buf[..n]),
                }
                len += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    Ok((if sum == Sum::Checksum64 { c.finish() } else { fnv }, len))
}

/// `r` with an error naming `path`.
pub(crate) fn io<T>(path: &Path, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|e| Error::io(path, e))
}

/// Files a trainer adds to a checkpoint (critics, a pending batch): written into the checkpoint's
/// temporary folder, so they are covered by its manifest and appear together with it or not at all.
pub type ExtraFiles<'a> = &'a dyn Fn(&Path) -> Result<()>;

/// What a checkpoint holds besides the weights, the optimizer and the trainer state.
#[derive(Clone, Copy)]
pub struct CheckpointFiles<'a> {
    /// Saved as tokenizer.json (HF layout) when given.
    pub tokenizer: Option<&'a Tokenizer>,
    /// Newest checkpoints kept; older ones are deleted after a successful save.
    pub keep_last: usize,
    /// Writes further files into the checkpoint's folder before it is renamed into place.
    pub extra: ExtraFiles<'a>,
    /// The resolved run config (TOML), saved as [`RUN_CONFIG_FILE`] when given.
    pub run_config: Option<&'a str>,
    /// Where the checkpoint's last stage runs: on the committer's thread while training goes on
    /// (`Some`), or before `save_checkpoint` returns (`None`).
    pub commit: Option<&'a Committer>,
    /// This checkpoint is the RL phase's best so far: once it is in place, `checkpoints/best.json`
    /// names it, and pruning keeps it.
    pub best: Option<&'a Best>,
}

/// Write `checkpoints/step-<state.step>/` under `run_dir` (with the `extra` files) and keep only the
/// newest `keep_last`.
pub fn save_checkpoint(
    run_dir: &Path,
    cfg: &ModelConfig,
    params: &Params,
    opt: &AdamW,
    state: &TrainerState,
    files: &CheckpointFiles,
) -> Result<PathBuf> {
    let CheckpointFiles { tokenizer, keep_last, extra, run_config, commit, best } = *files;
    let best = best.cloned();
    // the previous checkpoint's commit first: its error is this save's, and the prune below sees
    // the folders as they are
    if let Some(c) = commit {
        c.wait()?;
    }
    let root = run_dir.join("checkpoints");
    io(&root, std::fs::create_dir_all(&root))?;
    let final_dir = root.join(format!("step-{}", state.step));
    let tmp = root.join(format!(".step-{}.tmp-{}", state.step, std::process::id()));
    if tmp.exists() {
        io(&tmp, std::fs::remove_dir_all(&tmp))?;
    }
    // the last line of defence of the non-finite guard (crate::train::guard): a checkpoint never
    // holds a NaN or an infinity, so `--resume latest` always has finite weights to go back to
    if let Some(i) = params.data.iter().chain(&opt.m).chain(&opt.v).position(|x| !x.is_finite()) {
        return Err(Error::Invalid(format!(
            "step {}: the weights or optimizer moments hold a non-finite value (element {i}); checkpoint not written",
            state.step
        )));
    }
    // f32 weights and two f32 moments per parameter (the small files fit in the reserve)
    let need = 12 * params.data.len() as u64;
    crate::io::space::ensure_space(&root, need, &format!("checkpoint step-{}", state.step))?;
    // a failed write (a full disk after all) leaves no temporary folder behind
    write_checkpoint_files(&tmp, cfg, params, (tokenizer, run_config), opt, state, extra).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&tmp);
    })?;
    let keep_last = keep_last.max(1);
    match commit {
        Some(c) => {
            let dir = final_dir.clone();
            c.start(move || commit_checkpoint(&tmp, &final_dir, keep_last, best.as_ref()));
            Ok(dir)
        }
        None => commit_checkpoint(&tmp, &final_dir, keep_last, best.as_ref()),
    }
}

/// A checkpoint's last stage, once its files are written into `tmp`: each file flushed to disk
/// and checksummed into the manifest, the folder renamed to `final_dir` (over a checkpoint of the
/// same step), `best.json` naming it where it is the best so far (`best`), and the oldest
/// checkpoints beyond `keep_last` removed, but for the best. A failure removes `tmp`.
pub(crate) fn commit_checkpoint(
    tmp: &Path,
    final_dir: &Path,
    keep_last: usize,
    best: Option<&Best>,
) -> Result<PathBuf> {
    let root = final_dir.parent().unwrap_or(final_dir);
    let into_place = || -> Result<()> {
        write_manifest(tmp)?;
        if final_dir.exists() {
            remove_checkpoint_dir(final_dir)?;
        }
        io(final_dir, std::fs::rename(tmp, final_dir))
    };
    into_place().inspect_err(|_| {
        let _ = std::fs::remove_dir_all(tmp);
    })?;
    sync(root)?;
    if best.is_some() {
        write_best(root.parent().unwrap_or(root), best)?;
    }
    prune(root, keep_last, final_dir)?;
    Ok(final_dir.to_path_buf())
}

/// Remove the temporary folders (`checkpoints/.step-N.tmp-PID`) of checkpoints whose writer died
/// before renaming them into place, and those of removals a kill interrupted
/// (`.step-N.tmp-removed`); returns how many. Called when a run (or a resume) starts.
pub fn remove_stale_temporaries(run_dir: &Path) -> Result<usize> {
    let root = run_dir.join("checkpoints");
    if !root.is_dir() {
        return Ok(0);
    }
    let mut removed = 0;
    for entry in io(&root, std::fs::read_dir(&root))? {
        let path = io(&root, entry)?.path();
        let name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with(".step-") && name.contains(".tmp-") && path.is_dir() {
            io(&path, std::fs::remove_dir_all(&path))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The files of a checkpoint, written into `tmp`.
fn write_checkpoint_files(
    tmp: &Path,
    cfg: &ModelConfig,
    params: &Params,
    (tokenizer, run_config): (Option<&Tokenizer>, Option<&str>),
    opt: &AdamW,
    state: &TrainerState,
    extra: ExtraFiles,
) -> Result<()> {
    save_hf_dir(tmp, cfg, params, &SaveOptions::default())?;
    extra(tmp)?;
    if let Some(t) = tokenizer {
        t.save_to_dir(tmp)?;
    }
    if let Some(text) = run_config {
        io(tmp, std::fs::write(tmp.join(RUN_CONFIG_FILE), text))?;
    }
    let n = opt.m.len();
    let shape = vec![n];
    let (m_bytes, v_bytes): (&[u8], &[u8]) = (bytemuck::cast_slice(&opt.m), bytemuck::cast_slice(&opt.v));
    let tensors = [
        ("exp_avg", safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), m_bytes)),
        ("exp_avg_sq", safetensors::tensor::TensorView::new(Dtype::F32, shape, v_bytes)),
    ];
    let mut views = Vec::new();
    for (name, view) in tensors {
        views.push((name, view.map_err(|e| Error::Invalid(format!("optimizer state: {e}")))?));
    }
    let opt_path = tmp.join(OPTIMIZER_FILE);
    safetensors::serialize_to_file(views, None, &opt_path).map_err(|e| Error::format(&opt_path, e.to_string()))?;
    let state_json = serde_json::to_vec_pretty(state).map_err(|e| Error::Invalid(e.to_string()))?;
    io(tmp, std::fs::write(tmp.join(STATE_FILE), state_json))
}

/// The manifest of the files in `dir`: every file but the manifest itself, by name, with its size
/// and checksum; each file on disk first (a folder renamed into place before its data is flushed
/// could come back from a node's crash with empty files).
fn manifest_of(dir: &Path) -> Result<Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in io(dir, std::fs::read_dir(dir))? {
        let path = io(dir, entry)?.path();
        let name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if name == MANIFEST_FILE {
            continue;
        }
        sync(&path)?;
        let (sum, len) = file_checksum(&path, Sum::Checksum64)?;
        files.insert(name, serde_json::json!({"bytes": len, Sum::Checksum64.key(): format!("{sum:016x}")}));
    }
    serde_json::to_vec_pretty(&serde_json::json!({ "files": files })).map_err(|e| Error::Invalid(e.to_string()))
}

/// The manifest of the files in `tmp`, written last.
fn write_manifest(tmp: &Path) -> Result<()> {
    let manifest = manifest_of(tmp)?;
    io(tmp, std::fs::write(tmp.join(MANIFEST_FILE), manifest))?;
    sync(&tmp.join(MANIFEST_FILE))?;
    sync(tmp)
}

/// Seal a finished folder of files (the RL phase's KL reference) with a manifest of them,
/// written under a temporary name and renamed (a hard link of the folder's previous manifest, in
/// a rolled-back branch's record, keeps the old one). [`verify_sealed`] checks it.
pub fn seal_folder(dir: &Path) -> Result<()> {
    let manifest = manifest_of(dir)?;
    crate::io::atomic::write_atomic(&dir.join(MANIFEST_FILE), &manifest)?;
    sync(dir)
}

/// Check a folder sealed by [`seal_folder`] against its manifest: sizes, then checksums. A folder
/// without a manifest (written before folders were sealed, or by a writer that stopped before
/// sealing it) is taken as it is.
pub fn verify_sealed(dir: &Path) -> Result<()> {
    if !dir.join(MANIFEST_FILE).is_file() {
        return Ok(());
    }
    verify_checksums(dir, &read_manifest(dir, &[])?)
}

/// Flush a file's or a directory's entries to disk.
fn sync(path: &Path) -> Result<()> {
    io(path, std::fs::File::open(path).and_then(|f| f.sync_all()))
}

/// Remove a checkpoint folder: renamed to a temporary name first ([`remove_stale_temporaries`]
/// removes it at the next start), so that a kill part-way never leaves a `step-N` folder without
/// its manifest (which no listing, pruning or resume would see again).
fn remove_checkpoint_dir(dir: &Path) -> Result<()> {
    let name = dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let doomed = dir.with_file_name(format!(".{name}.tmp-removed"));
    if doomed.exists() {
        io(&doomed, std::fs::remove_dir_all(&doomed))?;
    }
    io(dir, std::fs::rename(dir, &doomed))?;
    io(&doomed, std::fs::remove_dir_all(&doomed))
}

/// Completed checkpoints under `run_dir/checkpoints`, oldest first, as (step, dir).
pub fn list_checkpoints(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let root = run_dir.join("checkpoints");
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in io(&root, std::fs::read_dir(&root))? {
        let path = io(&root, entry)?.path();
        let name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok()) {
            if path.join(MANIFEST_FILE).is_file() {
                out.push((step, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Remove all but the `keep_last` latest checkpoints, never `written` (the one just written:
/// later ones can only be left from another run, which run_dir.rs moves aside at the start) nor
/// the one `best.json` names.
fn prune(root: &Path, keep_last: usize, written: &Path) -> Result<()> {
    let run_dir = root.parent().unwrap_or(root);
    let all = list_checkpoints(run_dir)?;
    let best = read_best(run_dir).map(|b| root.join(format!("step-{}", b.step)));
    for (_, dir) in all.iter().take(all.len().saturating_sub(keep_last)) {
        if dir != written && Some(dir) != best.as_ref() {
            remove_checkpoint_dir(dir)?;
        }
    }
    Ok(())
}

/// A checkpoint read back after its manifest checked out.
#[derive(Debug)]
pub struct LoadedState {
    pub config: ModelConfig,
    pub params: Params,
    pub exp_avg: Vec<f32>,
    pub exp_avg_sq: Vec<f32>,
    pub state: TrainerState,
}

/// Save a training checkpoint of `model`, which may be a tensor-parallel shard: the shards'
/// weights and AdamW moments are gathered into the full model's layout (a collective over the
/// model's tensor-parallel group, so every rank of the group calls this), and only the rank with
/// `write` writes `checkpoints/step-N/`. An optimizer sharded over the data-parallel group `dp`
/// (`[parallel] shard_optimizer`) has its moments gathered first (a collective over `dp`), so a
/// checkpoint is the same whatever the sharding. Returns the directory on the writing rank.
pub fn save_model_checkpoint(
    run_dir: &Path,
    model: &crate::model::Model,
    opt: &AdamW,
    state: &TrainerState,
    files: &CheckpointFiles,
    (write, dp): (bool, &dyn crate::parallel::Comm),
) -> Result<Option<PathBuf>> {
    let whole;
    let opt = match opt.is_shard(model.params.data.len()) {
        true => {
            whole = whole_optimizer(opt, &model.params.layout, dp)?;
            &whole
        }
        false => opt,
    };
    if model.tp.is_none() {
        return match write {
            true => save_checkpoint(run_dir, &model.cfg, &model.params, opt, state, files).map(Some),
            false => Ok(None),
        };
    }
    let params = model.gather(&model.params.data)?;
    let (m, v) = (model.gather(&opt.m)?.data, model.gather(&opt.v)?.data);
    if !write {
        return Ok(None);
    }
    let mut full_opt = AdamW::for_layout(opt.cfg, &params.layout);
    (full_opt.m, full_opt.v, full_opt.t) = (m, v, opt.t);
    save_checkpoint(run_dir, model.full_config(), &params, &full_opt, state, files).map(Some)
}

/// The whole optimizer of which `opt` is this rank's part (`parallel::zero`): every rank's
/// moments gathered over `dp`.
fn whole_optimizer(opt: &AdamW, layout: &crate::model::ParamLayout, dp: &dyn crate::parallel::Comm) -> Result<AdamW> {
    let mut whole = AdamW::for_layout(opt.cfg, layout);
    whole.t = opt.t;
    let own = opt.range();
    whole.m[own.clone()].copy_from_slice(&opt.m);
    whole.v[own].copy_from_slice(&opt.v);
    crate::parallel::zero::gather_shards(dp, &mut whole.m)?;
    crate::parallel::zero::gather_shards(dp, &mut whole.v)?;
    Ok(whole)
}

/// A checkpoint checked whole: sizes ([`check_complete`]), then checksums
/// ([`verify_checksums`]); the number of files its manifest lists.
pub fn check_intact(dir: &Path) -> Result<usize> {
    let files = check_complete(dir)?;
    verify_checksums(dir, &files).map(|()| files.len())
}

/// The newest checkpoint under `run_dir/checkpoints` that is intact, for `--resume latest|auto`:
/// every file there at the size its manifest gives ([`check_complete`]) and with its checksum
/// ([`verify_checksums`]), with one line per newer one skipped and why (a folder a crash left with
/// truncated files, or one whose bytes were damaged since: the run goes on from the one before,
/// and the rollback sets the broken one aside with the later record). The one returned is read
/// twice, here and by the load; the second read usually comes from the page cache.
pub fn newest_intact(run_dir: &Path) -> Result<(Option<PathBuf>, Vec<String>)> {
    let mut skipped = Vec::new();
    for (_, dir) in list_checkpoints(run_dir)?.into_iter().rev() {
        match check_complete(&dir) {
            Err(e) => skipped.push(format!("{}: skipped, incomplete: {e}", dir.display())),
            Ok(files) => match verify_checksums(&dir, &files) {
                Err(e) => skipped.push(format!("{}: skipped, corrupt: {e}", dir.display())),
                Ok(()) => return Ok((Some(dir), skipped)),
            },
        }
    }
    Ok((None, skipped))
}

/// A checkpoint's manifest read and checked: the files every checkpoint has are listed, each name
/// is a file of the folder, and each file is there at the size the manifest gives (not the
/// checksums: [`load_checkpoint`] reads the contents). Returns the manifest's `files`.
pub fn check_complete(dir: &Path) -> Result<serde_json::Map<String, serde_json::Value>> {
    read_manifest(dir, &["config.json", "model.safetensors", OPTIMIZER_FILE, STATE_FILE])
}

/// The manifest of `dir` read and checked: it lists the `required` files, each name is a file of
/// the folder, and each file is there at the size the manifest gives. Returns its `files`.
fn read_manifest(dir: &Path, required: &[&str]) -> Result<serde_json::Map<String, serde_json::Value>> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let text = io(&manifest_path, std::fs::read_to_string(&manifest_path))?;
    let manifest: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config {
        file: manifest_path.clone(),
        key: "<json>".into(),
        msg: format!("not valid JSON: {e}"),
    })?;
    let files = manifest.get("files").and_then(|f| f.as_object()).ok_or_else(|| Error::Config {
        file: manifest_path.clone(),
        key: "files".into(),
        msg: "missing".into(),
    })?;
    // the manifest vouches for the files a checkpoint needs, and names nothing outside its folder
    for &required in required {
        if !files.contains_key(required) {
            return Err(Error::Config {
                file: manifest_path.clone(),
                key: format!("files.{required}"),
                msg: "missing: the manifest does not vouch for a file every checkpoint has".into(),
            });
        }
    }
    for (name, meta) in files {
        if name.is_empty() || name.contains(['/', '\\']) || name == ".." || name == "." {
            return Err(Error::Config {
                file: manifest_path.clone(),
                key: format!("files.{name}"),
                msg: "not a file name inside the checkpoint folder".into(),
            });
        }
        let path = dir.join(name);
        let len = io(&path, std::fs::metadata(&path))?.len();
        if meta.get("bytes").and_then(|b| b.as_u64()) != Some(len) {
            return Err(Error::Checkpoint {
                file: path,
                tensor: String::new(),
                msg: format!("{len} bytes where the manifest gives {}: the checkpoint is incomplete", meta["bytes"]),
            });
        }
    }
    Ok(files.clone())
}

/// Each file of a checkpoint's manifest (`files`, from [`check_complete`]) read and checked
/// against the checksum its entry gives.
pub fn verify_checksums(dir: &Path, files: &serde_json::Map<String, serde_json::Value>) -> Result<()> {
    for (name, meta) in files {
        let path = dir.join(name);
        // the entry's checksum: this format's, or an older checkpoint's FNV-1a
        let (sum, want) = [Sum::Checksum64, Sum::Fnv1a64]
            .into_iter()
            .find_map(|sum| meta.get(sum.key()).and_then(|v| v.as_str()).map(|w| (sum, w)))
            .ok_or_else(|| Error::Checkpoint {
                file: path.clone(),
                tensor: String::new(),
                msg: format!("the manifest gives no checksum for it (no `{}`)", Sum::Checksum64.key()),
            })?;
        let got = format!("{:016x}", file_checksum(&path, sum)?.0);
        if got != want {
            return Err(Error::Checkpoint {
                file: path,
                tensor: String::new(),
                msg: format!("checksum {got} does not match the manifest's {want}: the checkpoint is corrupt"),
            });
        }
    }
    Ok(())
}

/// Verify the manifest of a checkpoint directory (sizes and checksums), then load it.
pub fn load_checkpoint(dir: &Path) -> Result<LoadedState> {
    verify_checksums(dir, &check_complete(dir)?)?;
    let (config, params) = load_hf_dir(dir)?;
    // the moments read one at a time straight into their buffers (the file is not held whole: a
    // resume's host holds the weights and the two moments, 12 bytes a parameter, and no more)
    let opt_path = dir.join(OPTIMIZER_FILE);
    let header = crate::io::tensor_file::read_header(&opt_path)?;
    let read = |name: &str| -> Result<Vec<f32>> {
        let bad = |msg: String| Error::Checkpoint { file: opt_path.clone(), tensor: name.into(), msg };
        let entry = header.tensors.iter().find(|t| t.name == name).ok_or_else(|| bad("missing".into()))?;
        if entry.dtype != "F32" || entry.shape != [params.data.len()] {
            let want = params.data.len();
            return Err(bad(format!("expected F32 [{want}], found {} {:?}", entry.dtype, entry.shape)));
        }
        crate::io::tensor_file::read_tensor_f32(&header, entry)
    };
    let (exp_avg, exp_avg_sq) = (read("exp_avg")?, read("exp_avg_sq")?);
    let state_path = dir.join(STATE_FILE);
    let text = io(&state_path, std::fs::read_to_string(&state_path))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| Error::Config {
        file: state_path.clone(),
        key: "<json>".into(),
        msg: e.to_string(),
    })?;
    Ok(LoadedState { config, params, exp_avg, exp_avg_sq, state })
}

#[cfg(test)]
mod tests;
