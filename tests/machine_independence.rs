//! Results do not depend on the CPU's vector width: a job computed with the AVX-512 kernels and
//! the same job capped to AVX2 + FMA (`ARBOR_ISA=avx2`, what a CPU without AVX-512 runs) write
//! identical weights and metrics. (The portable kernels of CPUs without AVX2 + FMA round the
//! decode products' multiply and add separately: they may sample other tokens.)

use arbor::tensor::cpu::isa::{detected, Isa};
use std::path::Path;
use std::process::Command;

fn run(dir: &Path, isa: Option<&str>) -> (Vec<u8>, Vec<serde_json::Value>) {
    let cfg = dir.join("job.toml");
    let text = arbor::config::ADDITION_CONFIG
        .replace("hidden_size = 128", "hidden_size = 32")
        .replace("num_layers = 4", "num_layers = 2")
        .replace("steps = 400", "steps = 4")
        .replace("eval_problems = 256", "eval_problems = 8")
        + "\n[rl]\nsteps = 3\nprompts_per_step = 4\nsamples_per_prompt = 4\neval_problems = 8\ndump_trajectories = false\n";
    std::fs::write(&cfg, text).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_arbor"));
    cmd.args(["--threads", "2", "train", "--config", cfg.to_str().unwrap(), "--out-dir", dir.to_str().unwrap()]);
    cmd.env_remove("ARBOR_ISA");
    if let Some(v) = isa {
        cmd.env("ARBOR_ISA", v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{isa:?}: {}", String::from_utf8_lossy(&out.stderr));
    let run = dir.join("addition-sft");
    let weights = std::fs::read(run.join("checkpoints/step-7/model.safetensors")).unwrap();
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            // wall-clock fields differ run to run
            if let Some(o) = v.as_object_mut() {
                o.retain(|k, _| !(k.ends_with("_s") || k.ends_with("per_s") || k == "time"));
            }
            v
        })
        .collect();
    (weights, metrics)
}

#[test]
fn avx512_and_avx2_runs_write_the_same_bits() {
    let cpu = detected();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let widest = run(dirs[0].path(), None);
    let avx2 = run(dirs[1].path(), Some("avx2"));
    if cpu < Isa::Avx512 {
        println!("this CPU lacks AVX-512 ({cpu:?}): both runs used the same kernels");
    }
    assert!(widest.0 == avx2.0, "the AVX-512 and AVX2 runs wrote different weights (CPU {cpu:?})");
    assert_eq!(widest.1, avx2.1, "metrics differ between the AVX-512 and AVX2 runs");
    assert!(widest.1.iter().any(|m| m.get("eval_solve_rate").is_some()), "the job ran its RL evaluation");
    // a bad value is refused by name before anything runs
    let out = Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(["eval", "--problems", "1"])
        .env("ARBOR_ISA", "sse9")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ARBOR_ISA") && err.contains("sse9"), "{err}");
}
