//! The run directory's lifecycle at a job's start (`<out_dir>/<name>/`): nothing a run wrote is
//! ever overwritten or pruned by a later one.
//!
//! - A fresh run in a directory that holds an earlier run's record (`config.toml`,
//!   `metrics.jsonl` or `checkpoints/`) moves that directory aside to `<name>.1` (the first free
//!   number) and starts in an empty one: the earlier run's checkpoints are not pruned as if they
//!   were this run's, and `--resume auto` never continues the wrong run.
//! - A resume from an earlier checkpoint of the same directory (a rollback: later checkpoints
//!   exist) moves the later ones into `checkpoints/superseded-after-step-K/`, where neither
//!   pruning nor `--resume auto|latest` sees them, with the left branch's record as it was: a copy
//!   of `config.toml`, `config-history.jsonl`, `metrics.jsonl`, `trajectories.h5`, the TensorBoard
//!   event file and the async install schedule (the resumed run drops their steps after K or
//!   rewrites them), and its KL reference (`reference/`, hard-linked: a resume before the RL
//!   phase writes a new one). A
//!   superseded checkpoint is refused as a resume into its own run ([`check_resume_target`]);
//!   resumed into another directory, it brings that record as any other run's checkpoint does.
//! - A resume from another run's checkpoint (`<src>/checkpoints/step-K`) into this directory
//!   first copies the source run's record: `config.toml`, `config-history.jsonl`,
//!   `metrics.jsonl` (and `trajectories.h5` when the resumed RL phase reopens it), trimmed to
//!   steps ≤ K when they are opened, its TensorBoard event file (for its wall times), and the RL
//!   phase's KL reference (`reference/`). The rest of a resumed RL phase's state (critics, the
//!   pending tree batch) is read from the checkpoint itself.
//!
//! A resume's checks (its config against the source run's, the RL phase's KL reference and pending
//! batches: job.rs) run before [`prepare`], so a refused resume leaves every directory as it was.
//!
//! Only the writing rank (the world's rank 0) calls [`prepare`].

use crate::error::{Error, Result};
use crate::train::checkpoint::io;
use std::path::{Path, PathBuf};

/// The files of a run's record that a resume into another directory carries over (and the dump,
/// `trajectories.h5`, when the resumed RL phase reopens it: [`prepare`]'s `dump`).
const RECORD_FILES: [&str; 3] = ["config.toml", "config-history.jsonl", "metrics.jsonl"];
const DUMP_FILE: &str = "trajectories.h5";
/// The files of a branch's record that a rollback copies, as they were, beside the superseded
/// checkpoints: the resumed run drops their steps after the rollback's step, rewrites them (the
/// continuous async install schedule: the superseded branch's `--replay` record) or replaces them
/// (the config, after an allowed change).
const SET_ASIDE_FILES: [&str; 5] =
    ["config.toml", "config-history.jsonl", "metrics.jsonl", "trajectories.h5", "rollout-schedule.jsonl"];
/// The folder prefix of a rollback's superseded checkpoints (`superseded-after-step-K[.i]`).
pub const SUPERSEDED_PREFIX: &str = "superseded-after-step-";
/// The RL phase's frozen KL reference, saved in the run directory at the phase's start.
pub const REFERENCE_DIR: &str = "reference";

/// What `read` gives for `path`, or None where the file does not exist; any other failure is an
/// error naming it (a record is never rewritten from a failed read).
pub fn read_if_present<T>(path: &Path, read: impl FnOnce(&Path) -> std::io::Result<T>) -> Result<Option<T>> {
    match read(path) {
        Ok(x) => Ok(Some(x)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// The folder holding the record of the run a checkpoint belongs to (its `config.toml`,
/// `metrics.jsonl`, KL reference, ...): `<run>/checkpoints/step-N` gives `<run>`; a superseded
/// checkpoint, `<run>/checkpoints/superseded-after-step-K/step-N`, the folder it is in (where the
/// rollback set its branch's record aside); a checkpoint copied anywhere else has none.
pub fn run_of_checkpoint(ck: &Path) -> Option<PathBuf> {
    let parent = ck.parent()?;
    if is_superseded_folder(parent) {
        return Some(parent.to_path_buf());
    }
    (parent.file_name()? == "checkpoints").then(|| parent.parent().map(Path::to_path_buf)).flatten()
}

/// Whether `folder` is a rollback's `<run>/checkpoints/superseded-after-step-K[.i]`.
fn is_superseded_folder(folder: &Path) -> bool {
    folder.file_name().is_some_and(|n| n.to_string_lossy().starts_with(SUPERSEDED_PREFIX))
        && folder.parent().and_then(Path::file_name).is_some_and(|n| n == "checkpoints")
}

/// A superseded checkpoint (`<run>/checkpoints/superseded-after-step-K/step-N`) belongs to a branch
/// the run left: resuming it into its own run directory would continue that branch on top of the
/// other one's record (its checkpoints up to N, metrics, dump, KL reference). Refused, with what to
/// do instead; checked before anything is touched.
pub fn check_resume_target(run_dir: &Path, ck: &Path) -> Result<()> {
    let Some(folder) = ck.parent().filter(|f| is_superseded_folder(f)) else { return Ok(()) };
    if folder.parent().and_then(Path::parent).is_some_and(|r| same_dir(r, run_dir)) {
        return Err(Error::Invalid(format!(
            "{}: a superseded checkpoint (a branch this run left when it was rolled back) cannot be resumed \
             into its own run, {}: the run's record now belongs to the other branch; resume it into another \
             directory (another run.name or --out-dir), which starts a run of its own from it",
            ck.display(),
            run_dir.display()
        )));
    }
    Ok(())
}

/// Copy `from` to `to` after checking the room for it (a record can be large: the dump); a copy
/// that fails half-way is removed.
fn copy_checked(from: &Path, to: &Path) -> Result<()> {
    let len = io(from, std::fs::metadata(from))?.len();
    let dir = to.parent().unwrap_or(Path::new("."));
    crate::io::space::ensure_space(dir, len, &format!("a copy of {}", from.display()))?;
    std::fs::copy(from, to).map(|_| ()).map_err(|e| {
        let _ = std::fs::remove_file(to);
        Error::io(to, e)
    })
}

/// Hard-link a directory tree's files into `to` (a copy where linking fails: another file system).
/// The linked files are never written in place (a save stages new files and renames them over).
fn link_tree(from: &Path, to: &Path) -> Result<()> {
    io(to, std::fs::create_dir_all(to))?;
    for entry in io(from, std::fs::read_dir(from))? {
        let entry = io(from, entry)?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if io(&src, entry.file_type())?.is_dir() {
            link_tree(&src, &dst)?;
        } else if std::fs::hard_link(&src, &dst).is_err() {
            copy_checked(&src, &dst)?;
        }
    }
    Ok(())
}

/// Whether `dir` holds the record of a run.
pub fn holds_a_run(dir: &Path) -> bool {
    ["config.toml", "metrics.jsonl", "checkpoints"].iter().any(|f| dir.join(f).exists())
}

/// Whether two paths name the same existing directory.
fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `name` with `.{i}` before its extension (`seeds.md` → `seeds.1.md`; no extension: appended).
pub fn numbered(name: &str, i: u64) -> String {
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}.{i}.{ext}"),
        _ => format!("{name}.{i}"),
    }
}

/// `path` if nothing is there, else the first [`numbered`] name beside it that is free: a record
/// file written where an earlier one of the same name exists keeps both.
pub fn free_file(path: &Path) -> PathBuf {
    if !path.exists() {
        return path.to_path_buf();
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    (1u64..)
        .map(|i| path.with_file_name(numbered(&name, i)))
        .find(|p| !p.exists())
        .expect("an unbounded range has a free name")
}

/// `path` with `.{i}` appended to its last component, for the first `i` ≥ 1 where nothing exists.
fn first_free(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    (1u64..)
        .map(|i| path.with_file_name(format!("{name}.{i}")))
        .find(|p| !p.exists())
        .expect("an unbounded range has a free name")
}

/// Get `run_dir` ready for a run that starts fresh (`resume` = None) or resumes from checkpoint
/// `resume` = (its directory, its step); returns what was moved or copied, one line each, for the
/// log. `dump`: the resumed RL phase reopens its trajectory dump (a resume inside the phase with
/// `dump_trajectories`), so a resume from another run copies that run's dump too (the phase trims
/// it to the checkpoint's step). Call before anything is written into `run_dir`.
pub fn prepare(run_dir: &Path, resume: Option<(&Path, u64)>, dump: bool) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let source = resume.and_then(|(ck, _)| run_of_checkpoint(ck));
    let rollback = source.as_deref().is_some_and(|s| same_dir(s, run_dir));
    if !rollback && holds_a_run(run_dir) {
        let aside = first_free(run_dir);
        io(run_dir, std::fs::rename(run_dir, &aside))?;
        notes.push(format!("{} held an earlier run: moved to {}", run_dir.display(), aside.display()));
    }
    io(run_dir, std::fs::create_dir_all(run_dir))?;
    let Some((_, step)) = resume else { return Ok(notes) };
    if rollback {
        let later: Vec<PathBuf> = crate::train::checkpoint::list_checkpoints(run_dir)?
            .into_iter()
            .filter(|(s, _)| *s > step)
            .map(|(_, d)| d)
            .collect();
        if !later.is_empty() {
            let aside = run_dir.join("checkpoints").join(format!("{SUPERSEDED_PREFIX}{step}"));
            let aside = if aside.exists() { first_free(&aside) } else { aside };
            io(&aside, std::fs::create_dir_all(&aside))?;
            for f in SET_ASIDE_FILES {
                if run_dir.join(f).is_file() {
                    copy_checked(&run_dir.join(f), &aside.join(f))?;
                }
            }
            for f in crate::train::tensorboard::event_files(run_dir)? {
                copy_checked(&f, &aside.join(f.file_name().unwrap_or_default()))?;
            }
            if run_dir.join(REFERENCE_DIR).is_dir() {
                link_tree(&run_dir.join(REFERENCE_DIR), &aside.join(REFERENCE_DIR))?;
            }
            for dir in &later {
                let name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
                io(dir, std::fs::rename(dir, aside.join(name)))?;
            }
            notes.push(format!(
                "resumed from step {step} with {} later checkpoint(s) in the run: moved to {} (with their branch's \
                 record as it was: config, metrics, dump, KL reference)",
                later.len(),
                aside.display()
            ));
        }
        // (after the left branch's copy above)
        trim_config_history(run_dir, step)?;
    } else if let Some(src) = &source {
        let mut copied = Vec::new();
        for f in RECORD_FILES.into_iter().chain(dump.then_some(DUMP_FILE)) {
            if src.join(f).is_file() {
                copy_checked(&src.join(f), &run_dir.join(f))?;
                copied.push(f.to_string());
            }
        }
        // (the TensorBoard events: for their wall times, train/tensorboard.rs)
        for f in crate::train::tensorboard::event_files(src)? {
            let name = f.file_name().unwrap_or_default().to_os_string();
            copy_checked(&f, &run_dir.join(&name))?;
            copied.push(name.to_string_lossy().into_owned());
        }
        trim_config_history(run_dir, step)?;
        if src.join(REFERENCE_DIR).is_dir() {
            link_tree(&src.join(REFERENCE_DIR), &run_dir.join(REFERENCE_DIR))?;
            copied.push(format!("{REFERENCE_DIR}/"));
        }
        if !copied.is_empty() {
            notes.push(format!("resumed from {}'s step {step}: copied its {}", src.display(), copied.join(", ")));
        }
    }
    Ok(notes)
}

/// Keep the lines of `run_dir`'s `config-history.jsonl` whose change took effect by `step` (its
/// `from_step` ≤ `step`): the changes of the branch a resume from checkpoint `step` continues (a
/// rollback's left branch keeps its own history beside its checkpoints).
fn trim_config_history(run_dir: &Path, step: u64) -> Result<()> {
    let path = run_dir.join("config-history.jsonl");
    if !path.is_file() {
        return Ok(());
    }
    let kept = kept_json_lines(&path, |v| v["from_step"].as_u64().is_some_and(|s| s <= step))?;
    crate::io::atomic::write_atomic(&path, &kept)
}

/// Read a file of JSON lines, keeping the lines `keep` accepts as they are (bytes included) and
/// dropping any line that is not JSON (a line torn by a crash); a missing file has no lines. An
/// unreadable file is an error naming it, so that nothing is rewritten from a partial read.
pub fn kept_json_lines(path: &Path, keep: impl Fn(&serde_json::Value) -> bool) -> Result<Vec<u8>> {
    let bytes = read_if_present(path, |p| std::fs::read(p))?.unwrap_or_default();
    let mut out = Vec::with_capacity(bytes.len());
    for line in bytes.split(|b| *b == b'\n') {
        if serde_json::from_slice::<serde_json::Value>(line).is_ok_and(|v| keep(&v)) {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    fn checkpoint(run: &Path, step: u64) {
        // list_checkpoints counts a step-N folder with a manifest
        touch(&run.join(format!("checkpoints/step-{step}/manifest.json")));
    }

    fn steps(run: &Path) -> Vec<u64> {
        crate::train::checkpoint::list_checkpoints(run).unwrap().iter().map(|c| c.0).collect()
    }

    #[test]
    fn a_fresh_run_moves_an_earlier_one_aside() {
        let t = tempfile::tempdir().unwrap();
        let run = t.path().join("r");
        // nothing there, or an empty folder: nothing to move
        assert!(prepare(&run, None, false).unwrap().is_empty());
        assert!(prepare(&run, None, false).unwrap().is_empty());
        checkpoint(&run, 400);
        touch(&run.join("metrics.jsonl"));
        let notes = prepare(&run, None, false).unwrap();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("r.1"), "{notes:?}");
        assert_eq!(steps(&t.path().join("r.1")), vec![400]);
        assert!(t.path().join("r.1/metrics.jsonl").is_file());
        assert!(run.is_dir() && steps(&run).is_empty());
        // a second earlier run goes to the next free name
        touch(&run.join("config.toml"));
        prepare(&run, None, false).unwrap();
        assert!(t.path().join("r.2/config.toml").is_file());
        assert!(!run.join("config.toml").exists());
    }

    #[test]
    fn a_rollback_sets_the_later_checkpoints_aside() {
        let t = tempfile::tempdir().unwrap();
        let run = t.path().join("r");
        for s in [80, 90, 100] {
            checkpoint(&run, s);
        }
        touch(&run.join("config.toml"));
        touch(&run.join("reference/model.safetensors"));
        std::fs::write(run.join("metrics.jsonl"), b"{\"step\":100}\n").unwrap();
        std::fs::write(run.join("rollout-schedule.jsonl"), b"{\"version\":9}\n").unwrap();
        let history = b"{\"from_step\":81,\"changes\":{}}\n{\"from_step\":91,\"changes\":{}}\n";
        std::fs::write(run.join("config-history.jsonl"), history).unwrap();
        let ck = run.join("checkpoints/step-90");
        let notes = prepare(&run, Some((&ck, 90)), false).unwrap();
        assert_eq!(steps(&run), vec![80, 90], "{notes:?}");
        assert!(run.join("checkpoints/superseded-after-step-90/step-100/manifest.json").is_file());
        // the metrics as they were (the resumed run drops step 100's line) go beside them
        let kept = std::fs::read(run.join("checkpoints/superseded-after-step-90/metrics.jsonl")).unwrap();
        assert_eq!(kept, b"{\"step\":100}\n");
        let schedule = std::fs::read(run.join("checkpoints/superseded-after-step-90/rollout-schedule.jsonl")).unwrap();
        assert_eq!(schedule, b"{\"version\":9}\n", "the superseded branch's install schedule");
        assert!(run.join("config.toml").is_file(), "a rollback keeps the run's record in place");
        // and the left branch's config and KL reference (a resume before the RL phase replaces
        // the run's) beside its checkpoints: a resume of one of them into another directory
        // finds its own record there
        let aside = run.join("checkpoints/superseded-after-step-90");
        assert!(aside.join("config.toml").is_file() && aside.join("reference/model.safetensors").is_file());
        // the run's config history keeps the changes its branch made by step 90; the left branch's
        // copy keeps all of them
        let kept = std::fs::read(run.join("config-history.jsonl")).unwrap();
        assert_eq!(kept, b"{\"from_step\":81,\"changes\":{}}\n");
        assert_eq!(std::fs::read(aside.join("config-history.jsonl")).unwrap(), history);
        assert_eq!(run_of_checkpoint(&aside.join("step-100")), Some(aside.clone()));
        // a new reference is saved as save_hf_dir does, staged and renamed over: the link keeps the old
        std::fs::write(run.join("reference/new.tmp"), b"new").unwrap();
        std::fs::rename(run.join("reference/new.tmp"), run.join("reference/model.safetensors")).unwrap();
        assert_eq!(std::fs::read(aside.join("reference/model.safetensors")).unwrap(), b"x");
        // again to the same step: a second folder
        checkpoint(&run, 95);
        prepare(&run, Some((&ck, 90)), false).unwrap();
        assert!(run.join("checkpoints/superseded-after-step-90.1/step-95/manifest.json").is_file());
        // the latest checkpoint: nothing later, nothing moved
        assert!(prepare(&run, Some((&ck, 90)), false).unwrap().is_empty());
    }

    #[test]
    fn a_resume_from_another_run_copies_its_record() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("a"), t.path().join("b"));
        checkpoint(&src, 3);
        for f in ["config.toml", "metrics.jsonl", "trajectories.h5", "reference/model.safetensors"] {
            touch(&src.join(f));
        }
        // b holds a run of its own: moved aside first
        checkpoint(&dst, 7);
        let notes = prepare(&dst, Some((&src.join("checkpoints/step-3"), 3)), true).unwrap();
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert_eq!(steps(&t.path().join("b.1")), vec![7]);
        for f in ["config.toml", "metrics.jsonl", "trajectories.h5", "reference/model.safetensors"] {
            assert!(dst.join(f).is_file(), "{f} not copied: {notes:?}");
        }
        assert!(steps(&dst).is_empty(), "checkpoints are not copied");
        assert_eq!(steps(&src), vec![3], "the source is left as it was");
        // a checkpoint outside any run's checkpoints/ folder: nothing to copy
        let loose = t.path().join("loose/step-3");
        touch(&loose.join("manifest.json"));
        assert_eq!(run_of_checkpoint(&loose), None);
        assert_eq!(run_of_checkpoint(&src.join("checkpoints/step-3")), Some(src.clone()));
        // a superseded checkpoint's record is its folder's (its branch's, set aside by the
        // rollback): it cannot be resumed into its own run, only into another directory
        let superseded = src.join("checkpoints/superseded-after-step-1/step-3");
        assert_eq!(run_of_checkpoint(&superseded), Some(src.join("checkpoints/superseded-after-step-1")));
        assert_eq!(run_of_checkpoint(&src.join("superseded-after-step-1/step-3")), None, "not in checkpoints/");
        let e = check_resume_target(&src, &superseded).unwrap_err().to_string();
        assert!(e.contains("superseded checkpoint") && e.contains("another directory"), "{e}");
        check_resume_target(&t.path().join("elsewhere"), &superseded).unwrap();
        check_resume_target(&src, &src.join("checkpoints/step-3")).unwrap();
        // without the dump flag (a fork that starts its RL phase fresh, or keeps no dump) the dump
        // stays behind
        let other = t.path().join("c");
        prepare(&other, Some((&src.join("checkpoints/step-3"), 3)), false).unwrap();
        assert!(other.join("metrics.jsonl").is_file() && !other.join("trajectories.h5").exists());
    }

    #[test]
    fn kept_lines_drop_torn_lines_and_refuse_unreadable_files() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("m.jsonl");
        assert!(kept_json_lines(&p, |_| true).unwrap().is_empty(), "a missing file has no lines");
        std::fs::write(&p, b"{\"step\":1,\"p\":\"\xc3\xa9\"}\n{\"step\":2}\n{\"step\":3,\"x\":\xff\n{\"ste").unwrap();
        let kept = kept_json_lines(&p, |v| v["step"].as_u64().is_some_and(|s| s <= 2)).unwrap();
        assert_eq!(kept, b"{\"step\":1,\"p\":\"\xc3\xa9\"}\n{\"step\":2}\n".to_vec());
        // a directory where the file should be: an error naming it, not an empty history
        let err = kept_json_lines(t.path(), |_| true).unwrap_err().to_string();
        assert!(err.contains(&t.path().display().to_string()), "{err}");
    }
}
