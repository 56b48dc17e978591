//! The `arbor` binary: unfinished subcommands and bad input fail with clear messages (exit 1),
//! never a panic (exit 101).

use std::process::Command;

fn arbor(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_arbor")).args(args).output().expect("run arbor");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
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
    let text = arbor::config::ADDITION_CONFIG
        .replace("hidden_size = 128", "hidden_size = 32")
        .replace("num_layers = 4", "num_layers = 1")
        .replace("steps = 400", "steps = 3")
        .replace("eval_problems = 256", "eval_problems = 8")
        + "\n[rl]\nsteps = 5\n";
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
fn bench_with_a_broken_model_config_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "qwen2", "hidden_size": 64}"#).unwrap();
    let (code, err) = arbor(&["bench", "train-step", "--model-config", dir.path().to_str().unwrap(), "--steps", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("config.json") && err.contains("num_attention_heads") && err.contains("missing"), "{err}");
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
