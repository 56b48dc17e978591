//! Exact resume: 3 steps + resume + 3 steps equals 6 straight steps bit for bit (weights and
//! metrics), a SIGKILLed run resumed with `--resume latest` (its newest checkpoint's data lost)
//! ends identical to an uninterrupted one, and a corrupt checkpoint is refused with the file named.

mod common;
use arbor::config::{RunConfig, ADDITION_CONFIG};
use arbor::io::load_hf_dir;
use arbor::train::checkpoint::{list_checkpoints, load_checkpoint};
use arbor::train::job;
use common::metrics_without_clock as metrics;
use std::path::Path;
use std::process::Command;

fn config_text(steps: u64, keep: usize) -> String {
    ADDITION_CONFIG
        .replace("hidden_size = 64", "hidden_size = 32")
        .replace("hidden_size = 128", "hidden_size = 32")
        .replace("intermediate_size = 384", "intermediate_size = 64")
        .replace("num_layers = 4", "num_layers = 2")
        .replace("steps = 400", &format!("steps = {steps}"))
        .replace("batch_size = 64", "batch_size = 8")
        .replace("eval_problems = 256", "eval_problems = 16")
        .replace("eval_every = 100", "eval_every = 2")
        + &format!("checkpoint_every = 1\nkeep_checkpoints = {keep}\n")
}

fn config(out: &Path, steps: u64, keep: usize) -> RunConfig {
    let mut c = RunConfig::parse(&config_text(steps, keep), Path::new("resume.toml")).unwrap();
    c.run.out_dir = out.to_path_buf();
    c
}

#[test]
fn three_plus_three_steps_equal_six() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let straight = job::run(&config(a.path(), 6, 10), None, &mut Vec::new()).unwrap();
    job::run(&config(b.path(), 6, 10), None, &mut Vec::new()).unwrap();
    // resume the second run from its step-3 checkpoint: steps 4..6 are redone (named through a
    // symbolic link outside the run: still a rollback of this run, not a loose checkpoint that
    // would move the run directory aside)
    let run_b = b.path().join("addition-sft");
    let ck = b.path().join("ck3");
    std::os::unix::fs::symlink(run_b.join("checkpoints/step-3"), &ck).unwrap();
    // a line torn by a crash, not even UTF-8: dropped, and every other line kept
    let mut torn = std::fs::read(run_b.join("metrics.jsonl")).unwrap();
    torn.extend_from_slice(b"{\"step\": 7, \"x\": \xff\n{\"st");
    std::fs::write(run_b.join("metrics.jsonl"), torn).unwrap();
    let mut log = Vec::new();
    let resumed = job::run(&config(b.path(), 6, 10), Some(&ck), &mut log).unwrap();
    assert_eq!(resumed.losses.len(), 3, "only steps 4..6 run after the resume");
    // the rolled-back line's checkpoints are kept, out of pruning's and --resume latest's sight
    let log = String::from_utf8(log).unwrap();
    assert!(log.contains("3 later checkpoint(s)"), "{log}");
    let aside = run_b.join("checkpoints/superseded-after-step-3");
    assert_eq!(list_checkpoints(&run_b).unwrap().iter().map(|c| c.0).collect::<Vec<_>>(), (1..=6).collect::<Vec<_>>());
    for s in 4..=6 {
        assert!(aside.join(format!("step-{s}/manifest.json")).is_file(), "step-{s} not set aside");
    }
    assert_eq!(straight.final_params, resumed.final_params, "weights differ after resume");
    assert_eq!(
        metrics(&a.path().join("addition-sft")),
        metrics(&b.path().join("addition-sft")),
        "metrics differ after resume"
    );
    let loaded = load_checkpoint(&b.path().join("addition-sft/checkpoints/step-6")).unwrap();
    assert_eq!(loaded.state.step, 6);
    assert_eq!(loaded.params.data, straight.final_params);
}

#[test]
fn corrupt_checkpoint_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    job::run(&config(dir.path(), 2, 2), None, &mut Vec::new()).unwrap();
    let ck = dir.path().join("addition-sft/checkpoints/step-2");
    let opt = ck.join("optimizer.safetensors");
    let mut bytes = std::fs::read(&opt).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&opt, bytes).unwrap();
    let err = load_checkpoint(&ck).unwrap_err().to_string();
    assert!(err.contains("optimizer.safetensors") && err.contains("corrupt"), "{err}");
    // keep_checkpoints = 2 pruned step-0..; only the newest two remain
    let left: Vec<u64> = list_checkpoints(&dir.path().join("addition-sft")).unwrap().iter().map(|c| c.0).collect();
    assert_eq!(left, vec![1, 2]);
}

#[test]
fn sigkill_then_resume_latest_matches_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let steps = 400;
    let cfg_path = dir.path().join("kill.toml");
    std::fs::write(&cfg_path, config_text(steps, 2)).unwrap();
    let bin = env!("CARGO_BIN_EXE_arbor");
    let out_a = dir.path().join("a");
    let out_b = dir.path().join("b");
    let run = |out: &Path, extra: &[&str]| {
        Command::new(bin)
            .args([
                "--threads",
                "1",
                "train",
                "--config",
                cfg_path.to_str().unwrap(),
                "--out-dir",
                out.to_str().unwrap(),
            ])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // interrupted run: kill -9 as soon as a few checkpoints exist
    let mut child = run(&out_b, &[]);
    let run_dir = out_b.join("addition-sft");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while list_checkpoints(&run_dir).map(|c| c.last().map_or(0, |x| x.0)).unwrap_or(0) < 5 {
        assert!(std::time::Instant::now() < deadline, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let was_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(was_running, "the run finished before it could be killed; make it longer");
    let killed_at = list_checkpoints(&run_dir).unwrap().last().unwrap().0;
    assert!(killed_at < steps);
    // a node's crash can lose the newest checkpoint's data (its folder renamed into place before
    // its files reached the disk): --resume latest goes on from the one before, saying so
    let newest = run_dir.join(format!("checkpoints/step-{killed_at}"));
    std::fs::write(newest.join("optimizer.safetensors"), b"").unwrap();
    let resumed = run(&out_b, &["--resume", "latest"]).wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{said}");
    assert!(said.contains(&format!("step-{killed_at}: skipped, incomplete")) && said.contains("optimizer"), "{said}");
    assert!(run(&out_a, &[]).wait().unwrap().success());
    let final_ck = format!("addition-sft/checkpoints/step-{steps}");
    let (_, pa) = load_hf_dir(&out_a.join(&final_ck)).unwrap();
    let (_, pb) = load_hf_dir(&out_b.join(&final_ck)).unwrap();
    assert_eq!(pa.data, pb.data, "killed at step {killed_at} and resumed: weights differ");
    assert_eq!(metrics(&out_a.join("addition-sft")), metrics(&out_b.join("addition-sft")));
}

#[test]
fn a_fresh_run_in_a_used_directory_moves_the_earlier_run_aside() {
    let dir = tempfile::tempdir().unwrap();
    let earlier = job::run(&config(dir.path(), 4, 2), None, &mut Vec::new()).unwrap();
    let mut log = Vec::new();
    job::run(&config(dir.path(), 1, 2), None, &mut log).unwrap();
    let log = String::from_utf8(log).unwrap();
    assert!(log.contains("held an earlier run"), "{log}");
    let (run, moved) = (dir.path().join("addition-sft"), dir.path().join("addition-sft.1"));
    let steps = |d: &Path| list_checkpoints(d).unwrap().iter().map(|c| c.0).collect::<Vec<_>>();
    // the new run's checkpoints are its own (the earlier run's step-4 would have pruned them)
    assert_eq!(steps(&run), vec![1]);
    assert_eq!(steps(&moved), vec![3, 4]);
    let (_, params) = load_hf_dir(&moved.join("checkpoints/step-4")).unwrap();
    assert_eq!(params.data, earlier.final_params, "the earlier run's last checkpoint is intact");
    let lines = |d: &Path| metrics(d).iter().filter(|l| l.get("loss").is_some()).count();
    assert_eq!((lines(&run), lines(&moved)), (1, 4), "each run keeps its own metrics");
}
