//! The `arbor` binary: unfinished subcommands and bad input fail with clear messages (exit 1),
//! never a panic (exit 101).

use std::process::Command;

fn arbor(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_arbor")).args(args).output().expect("run arbor");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The addition job shrunk to a 1-layer, width-32 model with `sft_steps` supervised steps, then an
/// `[rl]` section with the given keys.
fn tiny_addition(sft_steps: u64, rl_keys: &str) -> String {
    arbor::config::ADDITION_CONFIG
        .replace("hidden_size = 128", "hidden_size = 32")
        .replace("num_layers = 4", "num_layers = 1")
        .replace("steps = 400", &format!("steps = {sft_steps}"))
        .replace("eval_problems = 256", "eval_problems = 8")
        + "\n[rl]\n"
        + rl_keys
}

/// `tiny_addition` with a small RL phase of `rl_steps` steps (2 prompts × 2 samples, 4 held-out
/// problems × 2 samples), written to `dir/name`.
fn tiny_rl(dir: &std::path::Path, name: &str, sft_steps: u64, rl_steps: u64) -> std::path::PathBuf {
    let rl = format!(
        "steps = {rl_steps}\nprompts_per_step = 2\nsamples_per_prompt = 2\neval_problems = 4\neval_samples = 2\ndump_trajectories = false\n"
    );
    let path = dir.join(name);
    std::fs::write(&path, tiny_addition(sft_steps, &rl)).unwrap();
    path
}

#[test]
fn a_broken_trajectory_dump_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let h5 = dir.path().join("trajectories.h5");
    std::fs::write(&h5, b"not really hdf5").unwrap();
    let (code, err) = arbor(&["inspect", h5.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("trajectories.h5"), "{err}");
    #[cfg(feature = "hdf5")]
    assert!(err.contains("cannot open as an HDF5 file"), "{err}");
    #[cfg(not(feature = "hdf5"))]
    assert!(err.contains("without the `hdf5` feature"), "{err}");
}

#[test]
fn sft_runs_the_supervised_phase_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sft.toml");
    let text = tiny_addition(3, "steps = 5\n");
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(["--threads", "1", "sft", "--config", cfg.to_str().unwrap(), "--out-dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains("rl eval"), "sft must skip the [rl] phase: {stdout}");
    assert!(dir.path().join("addition-sft/checkpoints/step-3/model.safetensors").is_file());
}

#[test]
fn bad_config_names_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let text = arbor::config::ADDITION_CONFIG.replace("lr = 3e-3", "lr = 3e-3\nlearning_rate = 1");
    std::fs::write(&path, text).unwrap();
    let (code, err) = arbor(&["train", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("bad.toml") && err.contains("learning_rate"), "{err}");
    let (code, err) = arbor(&["train", "--config", "/nonexistent/x.toml"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/nonexistent/x.toml"), "{err}");
}

#[test]
fn a_set_key_trains_as_the_edited_file_would_and_a_resume_must_repeat_it() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.toml"), dir.path().join("b.toml"));
    let text = tiny_addition(3, "steps = 1\n").replace("[rl]\nsteps = 1\n", "");
    std::fs::write(&a, &text).unwrap();
    let edited = text.replace("lr = 3e-3", "lr = 1e-3").replace("name = \"addition-sft\"", "name = \"x\"");
    assert_ne!(edited, text);
    std::fs::write(&b, edited).unwrap();
    let train = |cfg: &std::path::Path, out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let mut args =
            vec!["--threads", "1", "train", "--config", cfg.to_str().unwrap(), "--out-dir", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        arbor(&args)
    };
    // (exit status, stdout + stderr) of `train --check`
    let check = |cfg: &std::path::Path, out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let o = Command::new(env!("CARGO_BIN_EXE_arbor"))
            .args(["--threads", "1", "train", "--check", "--config", cfg.to_str().unwrap()])
            .args(["--out-dir", out.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
        )
    };
    let (code, out) = check(&a, "set", &["--set", "train.lr=1e-3", "--set", "run.name=x"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("3 supervised steps × 64 sequences") && out.contains("\nlr = 0.001"), "{out}");
    assert!(!dir.path().join("set").exists(), "--check writes nothing");
    let (code, err) = train(&a, "set", &["--set", "train.lr=1e-3", "--set", "run.name=x"]);
    assert_eq!(code, 0, "{err}");
    let (code, out) = check(&a, "set", &["--set", "train.lr=1e-3", "--set", "run.name=x"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("holds an earlier run: the job moves it aside"), "{out}");
    let (code, err) = train(&b, "edited", &[]);
    assert_eq!(code, 0, "{err}");
    let weights =
        |out: &str| std::fs::read(dir.path().join(out).join("x/checkpoints/step-3/model.safetensors")).unwrap();
    assert!(weights("set") == weights("edited"), "--set trains as the edited file does");
    let recorded = std::fs::read_to_string(dir.path().join("set/x/config.toml")).unwrap();
    assert!(recorded.contains("lr = 0.001"), "{recorded}");
    // the run's progress as `inspect` reads it from config.toml and metrics.jsonl
    let o = Command::new(env!("CARGO_BIN_EXE_arbor")).arg("inspect").arg(dir.path().join("set/x")).output().unwrap();
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && shown.contains("progress: done, all 3 steps (supervised step 3 of 3)"), "{shown}");
    assert!(shown.contains("last supervised step: loss ") && shown.contains("metrics.jsonl last written"), "{shown}");
    // the run recorded the set key: a resume without it changes the run
    let (code, err) = train(&a, "set", &["--set", "run.name=x", "--resume", "latest"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("train.lr: 0.001 → 0.003") && err.contains("--set flags"), "{err}");
    // --check reads as the resume would and writes nothing
    let metrics = std::fs::read(dir.path().join("set/x/metrics.jsonl")).unwrap();
    let (code, out) = check(&a, "set", &["--set", "run.name=x", "--set", "train.lr=1e-3", "--resume", "latest"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("resumes after step 3 from") && out.ends_with("check: OK (nothing was written)\n"), "{out}");
    let (code, out) = check(&a, "set", &["--set", "run.name=x", "--resume", "latest"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("train.lr: 0.001 → 0.003"), "{out}");
    assert!(std::fs::read(dir.path().join("set/x/metrics.jsonl")).unwrap() == metrics);
    let (code, err) = train(&a, "set", &["--set", "run.name=x", "--set", "train.lr=1e-3", "--resume", "latest"]);
    assert_eq!(code, 0, "{err}");
    // bad overrides: clap refuses the form, the config check names the override
    let (code, err) = train(&a, "bad", &["--set", "train.lr"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("expects KEY=VALUE"), "{err}");
    let (code, err) = train(&a, "bad", &["--set", "train.lr=fast"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--set train.lr=fast: key `train.lr`: invalid type: string \"fast\""), "{err}");
    assert!(!dir.path().join("bad").exists(), "a refused config writes nothing");
}

/// `--time-limit`: at the first step end past it the run checkpoints and exits 75, as at a
/// preemption signal, naming the limit; `--resume latest` then ends with the straight run's weights.
/// A limit of 0 stops at the first step end, whatever the machine's speed.
#[test]
fn a_time_limit_stops_the_run_checkpointed_and_the_resume_ends_as_the_straight_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.toml");
    std::fs::write(&cfg, tiny_addition(6, "steps = 1\n").replace("[rl]\nsteps = 1\n", "")).unwrap();
    // `arbor train --config CFG --out-dir DIR/OUT EXTRA`: (exit status, stderr)
    let train = |cfg: &std::path::Path, out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let o = Command::new(env!("CARGO_BIN_EXE_arbor"))
            .args(["--threads", "1", "train", "--config", cfg.to_str().unwrap(), "--out-dir", out.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let run = |out: &str, extra: &[&str]| train(&cfg, out, extra);
    let (code, err) = run("limited", &["--time-limit", "0"]);
    assert_eq!(code, Some(75), "{err}");
    assert!(err.contains("stopped by its time limit (--time-limit 0) after step 1, checkpoint written"), "{err}");
    let weights = |out: &str, step: u64| {
        std::fs::read(dir.path().join(out).join(format!("addition-sft/checkpoints/step-{step}/model.safetensors")))
    };
    assert!(weights("limited", 1).is_ok() && weights("limited", 6).is_err());
    let (code, err) = run("limited", &["--resume", "latest", "--time-limit", "1h"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = run("straight", &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        weights("limited", 6).unwrap() == weights("straight", 6).unwrap(),
        "the resumed run ends as the straight one"
    );
    // a limit that passes at the job's last step stops nothing: the run ends finished (exit 0, not
    // requeued), its final checkpoint written
    let (code, err) = run("last", &["--steps", "1", "--time-limit", "0"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("preempted") && weights("last", 1).is_ok(), "{err}");
    // and with an RL phase: the supervised phase's last step stops (RL follows), the RL phase's does not
    let rl_cfg = tiny_rl(dir.path(), "rl.toml", 1, 1);
    let rl_run = |extra: &[&str]| train(&rl_cfg, "rl", extra);
    let (code, err) = rl_run(&["--time-limit", "0"]);
    assert_eq!(code, Some(75), "{err}");
    let (code, err) = rl_run(&["--resume", "latest", "--time-limit", "0"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("preempted"), "{err}");
    // refused by clap: a malformed limit (`[async]` runs: tests/mpi/)
    let (code, err) = run("bad", &["--time-limit", "4 hours"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not a duration"), "{err}");
    assert!(!dir.path().join("bad").exists());
}

#[test]
fn bench_with_a_broken_model_config_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "qwen2", "hidden_size": 64}"#).unwrap();
    let (code, err) = arbor(&["bench", "train-step", "--model-config", dir.path().to_str().unwrap(), "--steps", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("config.json") && err.contains("num_attention_heads") && err.contains("missing"), "{err}");
    // a temperature that is not a number is refused, not run greedy
    let tiny = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/models/bench-tiny");
    let (code, err) = arbor(&["bench", "generate", "--model-config", tiny, "--temperature", "nan"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--temperature"), "{err}");
}

#[test]
fn bench_train_step_prints_one_json_line() {
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/qwen2_tiny");
    let out = Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(["--threads", "1", "bench", "train-step", "--model-config", cfg, "--batch", "2", "--seq", "16"])
        .args(["--steps", "2", "--warmup", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert!(line["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(line["gflops"].as_f64().unwrap() > 0.0);
    assert_eq!(line["threads"], 1);
}

#[test]
fn experiment_seeds_reports_every_seed_and_eval_reproduces_the_runs_last_eval() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("seeds.toml");
    let text = tiny_addition(
        3,
        "steps = 2\nprompts_per_step = 2\nsamples_per_prompt = 2\neval_problems = 4\neval_samples = 2\ndump_trajectories = false\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let out_dir = dir.path().join("seeds");
    // the held-out count set on the command line: every seed's job and the eval below take it
    let out = Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(["--threads", "1", "experiment", "seeds", "--config", cfg.to_str().unwrap(), "--seeds", "5,6"])
        .args(["--set", "rl.eval_problems=6", "--control", "--out-dir", out_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let md = std::fs::read_to_string(out_dir.join("seeds.md")).unwrap();
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| 5 |") || l.starts_with("| 6 |")).collect();
    assert_eq!(rows.len(), 2, "{md}");
    assert!(md.lines().any(|l| l.starts_with("| mean ± sd |")), "{md}");
    assert!(md.contains("SFT control steps") && md.contains("seeds.toml --set rl.eval_problems=6"), "{md}");
    for seed in [5, 6] {
        // the control trained the arm's 3 supervised steps and at least one more
        let control = out_dir.join(format!("sft-control-seed{seed}/metrics.jsonl"));
        let steps = std::fs::read_to_string(&control).unwrap().lines().filter(|l| l.contains("\"loss\"")).count();
        assert!(steps >= 4, "seed {seed}: the control ran {steps} steps");
        // `arbor eval` of the run's last checkpoint, on the stream of its last eval, gives that eval
        let run = out_dir.join(format!("seed{seed}"));
        let recorded = std::fs::read_to_string(run.join("config.toml")).unwrap();
        assert!(recorded.contains("eval_problems = 6"), "{recorded}");
        let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        let last: serde_json::Value =
            metrics.lines().rfind(|l| l.contains("eval_solve_rate")).map(|l| serde_json::from_str(l).unwrap()).unwrap();
        let ckpt = run.join("checkpoints/step-5");
        assert!(ckpt.join("model.safetensors").is_file(), "no final checkpoint in {}", run.display());
        let ev = Command::new(env!("CARGO_BIN_EXE_arbor"))
            .args(["--threads", "1", "eval", "--config", cfg.to_str().unwrap(), "--seed", &seed.to_string()])
            .args(["--model", ckpt.to_str().unwrap(), "--step", "2", "--json", "--set", "rl.eval_problems=6"])
            .output()
            .unwrap();
        assert!(ev.status.success(), "{}", String::from_utf8_lossy(&ev.stderr));
        let got: serde_json::Value = serde_json::from_slice(&ev.stdout).unwrap();
        assert_eq!(got["eval_problems"], 6, "{got}");
        assert_eq!(got["eval_solve_rate"], last["eval_solve_rate"], "seed {seed}");
        assert_eq!(got["eval_solve_rate_greedy"], last["eval_solve_rate_greedy"], "seed {seed}");
        assert_eq!(got["eval_pass_at_k"], last["eval_pass_at_k"], "seed {seed}");
        // pass@k: at least the sampled solve rate (every reward is 0 or 1 here), at most 1
        let (pass, sampled) = (last["eval_pass_at_k"].as_f64().unwrap(), last["eval_solve_rate"].as_f64().unwrap());
        assert!((sampled..=1.0).contains(&pass), "seed {seed}: pass@k {pass}, sampled {sampled}");
    }
    let (code, err) = arbor(&["experiment", "seeds", "--config", cfg.to_str().unwrap(), "--seeds", "1,1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("seed 1 is given twice"), "{err}");
}

/// `experiment seeds --control` stopped at every step end (`--time-limit 0`, as a job preempted
/// again and again) and continued with `--resume` until it ends: the RL arm's figures are the
/// uninterrupted run's; the calibration and the control continue in place (nothing moved aside)
/// and the control trains the steps it planned; resumed once more, nothing runs and the table is
/// the same.
#[test]
fn experiment_seeds_resumes_every_run_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_rl(dir.path(), "seeds.toml", 2, 2);
    let seeds = |out: &std::path::Path, extra: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_arbor"))
            .args(["--threads", "1", "experiment", "seeds", "--config", cfg.to_str().unwrap(), "--seeds", "7"])
            .args(["--control", "--out-dir", out.to_str().unwrap()])
            .args(extra)
            .output()
            .expect("run arbor");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (o.status.code().unwrap_or(-1), text(&o.stdout), text(&o.stderr))
    };
    // the seed's row up to its RL columns' gains (the wall time and the control's follow)
    let rl_cells = |md: &str| -> String {
        let row = md.lines().find(|l| l.starts_with("| 7 |")).unwrap_or_else(|| panic!("no row of seed 7: {md}"));
        row.split('|').take(8).collect::<Vec<_>>().join("|")
    };
    let straight = dir.path().join("straight");
    let (code, _, err) = seeds(&straight, &[]);
    assert_eq!(code, 0, "{err}");
    let straight_md = std::fs::read_to_string(straight.join("seeds.md")).unwrap();
    let out = dir.path().join("requeued");
    let (code, _, err) = seeds(&out, &["--time-limit", "0"]);
    assert_eq!(code, 75, "{err}");
    assert!(err.contains("stopped by its time limit (--time-limit 0) after step 1"), "{err}");
    // `arbor inspect` of the experiment's directory: a line per run
    let inspect = |dir: &std::path::Path| {
        let o = Command::new(env!("CARGO_BIN_EXE_arbor")).args(["inspect", dir.to_str().unwrap()]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let text = inspect(&out);
    assert!(text.contains("  seed7: supervised step 1 of 2, then 2 RL steps; global step 1 of 4 (25 %)"), "{text}");
    assert!(text.contains("0 of 1 done"), "{text}");
    let (mut stops, mut log) = (1, String::new());
    loop {
        let (code, out, err) = seeds(&out, &["--resume", "--time-limit", "0"]);
        log.push_str(&out);
        match code {
            75 => stops += 1,
            0 => break,
            _ => panic!("exit status {code}: {err}"),
        }
        assert!(stops < 400, "the experiment does not end");
    }
    // at every step end but a run's last: the seed's 4 steps, the calibration's 10 and the
    // control's 3 at least
    assert!(stops >= 3 + 9 + 2, "{stops} stops");
    assert!(log.contains("== seed 7: SFT control,") && log.contains(": resumed from"), "{log}");
    let md = std::fs::read_to_string(out.join("seeds.md")).unwrap();
    assert_eq!(rl_cells(&md), rl_cells(&straight_md), "the resumed RL arm's figures\n{md}\n{straight_md}");
    for run in ["seed7", "sft-calibrate-seed7", "sft-control-seed7"] {
        assert!(out.join(run).is_dir() && !out.join(format!("{run}.1")).exists(), "{run} continued in place");
    }
    // the control trained the steps its row gives, to its last checkpoint
    let row = md.lines().find(|l| l.starts_with("| 7 |")).unwrap();
    let steps: u64 = row.split('|').nth(9).unwrap().trim().parse().unwrap_or_else(|_| panic!("{row}"));
    let control = out.join("sft-control-seed7");
    let losses = std::fs::read_to_string(control.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"loss\""))
        .count();
    assert_eq!(losses as u64, steps, "{row}");
    assert!(control.join(format!("checkpoints/step-{steps}/model.safetensors")).is_file(), "{row}");
    // finished: resumed again, every run is kept and the table is rewritten the same
    let (code, log, err) = seeds(&out, &["--resume"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(log.matches("), kept").count(), 3, "{log}");
    assert_eq!(std::fs::read_to_string(out.join("seeds.md")).unwrap(), md);
    assert!(!out.join("seeds.1.md").exists(), "a resumed experiment rewrites its own table");
    let text = inspect(&out);
    assert!(text.contains(": 3 run(s), summary seeds.md") && text.contains("3 of 3 done"), "{text}");
}

/// `experiment sweep`: every point of the grid runs (first axis slowest) with its settings in its
/// recorded config, and sweep.md has a row per point; a bad value anywhere in the grid is refused
/// before the first job, naming the point and the key; a job array's points and report, and a
/// sweep stopped and continued with `--resume`, give the same table.
#[test]
fn experiment_sweep_runs_every_point_of_the_grid_and_checks_them_all_first() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_rl(dir.path(), "sweep.toml", 2, 1);
    let out = dir.path().join("sweep");
    let sweep_args = |out: &std::path::Path, grid: &[&str], extra: &[&str]| {
        let mut args = vec!["--threads", "1", "experiment", "sweep", "--config", cfg.to_str().unwrap()];
        args.extend_from_slice(&["--out-dir", out.to_str().unwrap(), "--set", "rl.max_new_tokens=4"]);
        for g in grid {
            args.extend_from_slice(&["--grid", g]);
        }
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let sweep_in = |out: &std::path::Path, grid: &[&str], extra: &[&str]| {
        arbor(&sweep_args(out, grid, extra).iter().map(String::as_str).collect::<Vec<_>>())
    };
    // (exit status, stdout)
    let arbor_stdout = |args: &[String]| {
        let o = Command::new(env!("CARGO_BIN_EXE_arbor")).args(args).output().expect("run arbor");
        (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let sweep = |grid: &[&str]| sweep_in(&out, grid, &[]);
    let (code, err) = sweep(&["rl.lr=1e-3,2e-3", "rl.temperature=0.9,-1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("sweep point p1 (rl.lr=1e-3, rl.temperature=-1)") && err.contains("rl.temperature"), "{err}");
    assert!(!out.exists(), "nothing ran");
    let (code, err) = sweep(&["rl.lr=1e-3,2e-3", "rl.temperature=0.9,1.0"]);
    assert_eq!(code, 0, "{err}");
    let md = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    for (i, (lr, t)) in [("0.001", "0.9"), ("0.001", "1.0"), ("0.002", "0.9"), ("0.002", "1.0")].iter().enumerate() {
        let recorded = std::fs::read_to_string(out.join(format!("p{i}-seed1234/config.toml"))).unwrap();
        let rl = &recorded[recorded.find("[rl]").unwrap()..];
        assert!(rl.contains(&format!("\nlr = {lr}\n")) && rl.contains(&format!("temperature = {t}\n")), "p{i}: {rl}");
        assert!(rl.contains("max_new_tokens = 4\n"), "the --set of every point: {rl}");
        assert!(md.lines().any(|l| l.starts_with(&format!("| p{i} | `rl.lr="))), "p{i}: {md}");
    }
    assert!(md.contains("| p1 | `rl.lr=1e-3, rl.temperature=1.0` | 1234 |"), "{md}");
    let png = std::fs::read(out.join("sweep.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "sweep.png is a PNG");
    // as a job array: one point per task, then --report: the same table
    let grid = ["rl.lr=1e-3,2e-3", "rl.temperature=0.9,1.0"];
    let array = dir.path().join("array");
    let (code, err) = sweep_in(&array, &grid, &["--point", "4"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--point 4: the grid has 4 points"), "{err}");
    for p in ["0", "1", "3"] {
        let (code, err) = sweep_in(&array, &grid, &["--point", p]);
        assert_eq!(code, 0, "{err}");
    }
    assert!(!array.join("sweep.md").exists(), "a point of an array writes no summary");
    let (code, err) = sweep_in(&array, &grid, &["--report"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("sweep point p2") && err.contains("p2-seed1234 holds no finished run"), "{err}");
    let (code, err) = sweep_in(&array, &grid, &["--point", "2"]);
    assert_eq!(code, 0, "{err}");
    let (code, err) = sweep_in(&array, &grid, &["--report"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(array.join("sweep.md")).unwrap(), md, "the array's table is the sequential one");
    // stopped by its time limit twice (as a preempted, requeued job), continued with --resume: the
    // same table; a finished sweep resumed runs nothing
    let requeued = dir.path().join("requeued");
    for (flags, stop) in [(&["--time-limit", "0"][..], 1), (&["--resume", "--time-limit", "0"], 2)] {
        let (code, err) = sweep_in(&requeued, &grid, flags);
        assert_eq!(code, 75, "{err}");
        assert!(err.contains(&format!("stopped by its time limit (--time-limit 0) after step {stop}")), "{err}");
    }
    let (code, out) = arbor_stdout(&sweep_args(&requeued, &grid, &["--resume"]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("== p0 (rl.lr=1e-3, rl.temperature=0.9), seed 1234: resumed from"), "{out}");
    assert_eq!(std::fs::read_to_string(requeued.join("sweep.md")).unwrap(), md, "the requeued sweep's table");
    assert!(!requeued.join("p0-seed1234.1").exists(), "the resumed run was not moved aside");
    let (code, out) = arbor_stdout(&sweep_args(&requeued, &grid, &["--resume"]));
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches("), kept").count(), 4, "{out}");
    assert_eq!(std::fs::read_to_string(requeued.join("sweep.md")).unwrap(), md);
}

#[test]
fn experiment_compare_with_control_reports_the_sft_arm() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.toml");
    let text = tiny_addition(
        2,
        "steps = 2\nprompts_per_step = 2\nsamples_per_prompt = 2\neval_problems = 4\neval_samples = 2\n",
    );
    std::fs::write(&base, text).unwrap();
    let out = dir.path().join("cmp");
    let cmp = dir.path().join("cmp.toml");
    std::fs::write(
        &cmp,
        format!(
            "[compare]\nbase = {:?}\nrl_steps = 2\neval_every = 1\neval_problems = 4\nmethods = [\"grpo\"]\nout_dir = {:?}\n",
            base.to_str().unwrap(),
            out.to_str().unwrap()
        ),
    )
    .unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(["--threads", "1", "experiment", "compare", "--config", cmp.to_str().unwrap(), "--control"])
        .args(["--set", "rl.temperature=0.9"])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    let line = md.lines().find(|l| l.starts_with("SFT-only control:")).unwrap_or_else(|| panic!("{md}"));
    assert!(line.contains("grpo's RL wall time") && line.contains("held-out solve rate sampled"), "{line}");
    assert!(line.contains(" s; they took "), "the control's own training time: {line}");
    assert!(out.join("sft-control-seed1234/metrics.jsonl").is_file(), "the control's run directory");
    // the base config's --set reached the method's run
    let recorded = std::fs::read_to_string(out.join("grpo/config.toml")).unwrap();
    assert!(recorded.contains("temperature = 0.9"), "{recorded}");
    // resumed when finished: every run (the method, the calibration, the control) is kept, the
    // summary rewritten the same from their records
    let again = Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(["--threads", "1", "experiment", "compare", "--config", cmp.to_str().unwrap(), "--control"])
        .args(["--set", "rl.temperature=0.9", "--resume"])
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let log = String::from_utf8_lossy(&again.stdout);
    assert_eq!(log.matches("), kept").count(), 3, "{log}");
    assert_eq!(std::fs::read_to_string(out.join("compare.md")).unwrap(), md);
    assert!(!out.join("compare.1.md").exists() && !out.join("grpo.1").exists(), "nothing moved aside");
}

/// The GPU job on a machine without a usable CUDA device stops at once, before writing anything,
/// saying that no CUDA device is usable (not that `[rl]` is unsupported on the GPU).
#[test]
fn the_gpu_job_without_a_gpu_stops_at_once_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    #[cfg(feature = "cuda")]
    if arbor::cuda::unavailable().is_none() {
        println!("skipped: a CUDA device is usable here (the job would run; scripts/gpu-check.sh runs it)");
        return;
    }
    let t0 = std::time::Instant::now();
    let (code, text) = arbor(&[
        "train",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/configs/countdown-gpu.toml"),
        "--out-dir",
        out,
    ]);
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("no usable CUDA device") && !text.contains("[rl]"), "{text}");
    assert!(t0.elapsed().as_secs() < 30, "it should stop at once");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing is written");
    // checked from a machine without a GPU (a login node), the job is valid, with a note
    let gpu = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/countdown-gpu.toml");
    let o = Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(["train", "--check", "--config", gpu, "--out-dir", out])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        text.contains("note: [train] device = \"cuda\": no usable CUDA device") && text.contains("check: OK"),
        "{text}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing is written");
}

#[test]
fn check_refuses_a_dataset_record_the_run_would_refuse_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.jsonl");
    let long = "1+".repeat(40) + "1=";
    std::fs::write(&data, format!("{{\"prompt\": \"1+1=\", \"answer\": 2, \"solution\": \"2\"}}\n{{\"prompt\": \"{long}\", \"answer\": 41, \"solution\": \"41\"}}\n")).unwrap();
    let cfg = dir.path().join("j.toml");
    let text = tiny_addition(3, "steps = 1\n").replace("[rl]\nsteps = 1\n", "");
    let eval = dir.path().join("eval.jsonl");
    std::fs::write(&eval, "{\"prompt\": \"2+2=\", \"answer\": 4, \"solution\": \"4\"}\n").unwrap();
    let data_section = format!(
        "[data]\nkind = \"jsonl\"\npath = {:?}\neval_path = {:?}\n",
        data.display().to_string(),
        eval.display().to_string()
    );
    let start = text.find("[data]").unwrap();
    let end = start + text[start..].find("\n[train]").unwrap();
    std::fs::write(&cfg, format!("{}{}{}", &text[..start], data_section, &text[end..])).unwrap();
    let out = dir.path().join("runs");
    let (code, err) =
        arbor(&["train", "--check", "--config", cfg.to_str().unwrap(), "--out-dir", out.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("{}:2: ", data.display())) && err.contains("max_position_embeddings"), "{err}");
    assert!(!out.exists(), "nothing is written");
}
