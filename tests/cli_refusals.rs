//! Command-line input that used to panic, exit 0 without doing what it said, print an error twice
//! or overwrite an earlier experiment's results: each is refused naming the flag or key, or kept.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn arbor(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arbor")).args(args).current_dir(dir).output().unwrap()
}

/// The stderr of a run that must fail with exit status 1 (an error, not a panic's 101 or a signal).
fn fails(args: &[&str], dir: &Path) -> String {
    let out = arbor(args, dir);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {}\n{err}", out.status);
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    err
}

/// A job of seconds: the addition model shrunk, 2 supervised steps, 1 RL step.
fn tiny_job() -> String {
    common::small_addition(2)
        + "\n[rl]\nsteps = 1\nprompts_per_step = 2\nsamples_per_prompt = 2\nmax_new_tokens = 5\n"
        + "eval_problems = 4\neval_samples = 1\ndump_trajectories = false\n"
}

/// `arbor sft` with `train.steps = 0` exited 0 and named a checkpoint it never wrote.
#[test]
fn sft_without_supervised_steps_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("job.toml");
    std::fs::write(&cfg, tiny_job().replace("steps = 2\n", "steps = 0\n")).unwrap();
    let out_dir = dir.path().join("runs");
    let err = fails(&["sft", "--config", cfg.to_str().unwrap(), "--out-dir", out_dir.to_str().unwrap()], dir.path());
    assert!(err.contains("job.toml") && err.contains("train.steps") && err.contains("sft"), "{err}");
    assert!(!out_dir.exists(), "a refused run wrote {}", out_dir.display());
}

/// `--fci-step-gap 0` was taken (the run config refuses `attnrl.fci_step_gap = 0`).
#[test]
fn inspect_refuses_a_zero_fci_step_gap() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails(&["inspect", "trajectories.h5", "--sample", "0", "--fci-step-gap", "0"], dir.path());
    assert!(err.contains("--fci-step-gap 0") && err.contains("at least 1"), "{err}");
}

/// `bench gemm --n 4294967296` panicked: n·n wrapped.
#[test]
fn bench_gemm_refuses_a_size_whose_square_overflows() {
    let dir = tempfile::tempdir().unwrap();
    for n in ["4294967296", "18446744073709551615"] {
        let err = fails(&["bench", "gemm", "--n", n, "--reps", "1"], dir.path());
        assert!(err.contains(&format!("--n {n}")), "{err}");
    }
}

/// An I/O error printed the OS's message twice (`x: No such file or directory (os error 2): No such
/// file or directory (os error 2)`): once in the error's message, once as its source.
#[test]
fn an_io_error_names_the_path_and_the_os_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails(&["train", "--config", "absent.toml"], dir.path());
    assert_eq!(err.matches("(os error 2)").count(), 1, "{err}");
    assert!(err.contains("absent.toml: "), "{err}");
    // and through a chain of contexts, as the library's callers print it
    let e = anyhow::Error::from(arbor::Error::io(
        "/x/manifest.json",
        std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
    ))
    .context("resuming");
    assert_eq!(format!("{e:#}"), "resuming: /x/manifest.json: gone");
}

/// `experiment compare` with a method listed twice (`seeds` refuses a seed given twice).
#[test]
fn compare_refuses_a_method_given_twice() {
    let dir = tempfile::tempdir().unwrap();
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/default.toml");
    let p = dir.path().join("c.toml");
    let text = format!(
        "[compare]\nbase = {:?}\nrl_steps = 2\neval_every = 1\nmethods = [\"grpo\", \"treerl\", \"grpo\"]\nout_dir = \"x\"\n",
        base.to_str().unwrap()
    );
    std::fs::write(&p, text).unwrap();
    let e = format!("{:#}", arbor::cli::experiment::plan(&p).unwrap_err());
    assert!(e.contains("c.toml") && e.contains("compare.methods") && e.contains("\"grpo\" is given twice"), "{e}");
}

/// Running `seeds` or `compare` again into the same folder moved the earlier runs aside
/// (`seed1.1`, `grpo.1`) but overwrote the earlier seeds.md / compare.md and figures.
#[test]
fn a_second_experiment_into_the_same_folder_keeps_the_earlier_summary() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("job.toml"), tiny_job()).unwrap();
    let ok = |args: &[&str]| {
        let out = arbor(args, d);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    // seeds
    let seeds = ["--threads", "2", "experiment", "seeds", "--config", "job.toml", "--seeds", "1", "--out-dir", "s"];
    ok(&seeds);
    let first = std::fs::read_to_string(d.join("s/seeds.md")).unwrap() + "(the first experiment)\n";
    std::fs::write(d.join("s/seeds.md"), &first).unwrap();
    ok(&seeds);
    assert_eq!(std::fs::read_to_string(d.join("s/seeds.1.md")).unwrap(), first, "the first seeds.md was not kept");
    assert!(d.join("s/seeds.md").is_file() && d.join("s/seed1.1").is_dir());
    // compare: the summary and its figures, the moved summary showing its own figures
    let cmp = "[compare]\nbase = \"job.toml\"\nrl_steps = 1\neval_every = 1\neval_problems = 4\nmethods = [\"grpo\"]\nout_dir = \"c\"\n";
    std::fs::write(d.join("cmp.toml"), cmp).unwrap();
    let compare = ["--threads", "2", "experiment", "compare", "--config", "cmp.toml"];
    ok(&compare);
    let first = std::fs::read_to_string(d.join("c/compare.md")).unwrap();
    assert!(first.contains("](solve_rate_vs_step.png)"), "{first}");
    let png = std::fs::read(d.join("c/solve_rate_vs_step.png")).unwrap();
    ok(&compare);
    let kept = std::fs::read_to_string(d.join("c/compare.1.md")).expect("the first compare.md was not kept");
    assert_eq!(
        kept,
        first
            .replace("](solve_rate_vs_step.png)", "](solve_rate_vs_step.1.png)")
            .replace("](solve_rate_vs_time.png)", "](solve_rate_vs_time.1.png)")
    );
    assert_eq!(std::fs::read(d.join("c/solve_rate_vs_step.1.png")).unwrap(), png);
    for f in ["compare.md", "solve_rate_vs_time.1.png", "effective_ratio.1.png", "effective_ratio.png", "grpo.1"] {
        assert!(d.join("c").join(f).exists(), "{f}");
    }
    // a third run takes the next free number
    ok(&compare);
    assert!(d.join("c/compare.2.md").is_file() && d.join("c/compare.1.md").is_file());
}

/// `--replay` with `--resume` was taken, then failed later with a weights-checksum mismatch: a
/// recorded schedule starts at the run's first step.
#[test]
fn a_replay_is_not_a_resume() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("job.toml");
    std::fs::write(&cfg, tiny_job() + "\n[async]\nrollout_ranks = 1\nmode = \"continuous\"\n").unwrap();
    let schedule = dir.path().join("rollout-schedule.jsonl");
    std::fs::write(&schedule, "").unwrap();
    let args = ["train", "--config", cfg.to_str().unwrap(), "--replay", schedule.to_str().unwrap()];
    let err = fails(&[&args[..], &["--resume", "latest"]].concat(), dir.path());
    assert!(err.contains("--replay") && err.contains("--resume"), "{err}");
}
