//! The default job's loop end to end on a smaller config: loss falls, a run is a pure function
//! of its seed, and the checkpoint it writes loads back bit-identically.

use arbor::config::{RunConfig, ADDITION_CONFIG};
use arbor::io::load_hf_dir;
use arbor::train::job;
use std::path::Path;

fn small(out: &Path, seed: u64) -> RunConfig {
    let text = ADDITION_CONFIG
        .replace("hidden_size = 128", "hidden_size = 64")
        .replace("intermediate_size = 384", "intermediate_size = 128")
        .replace("num_layers = 4", "num_layers = 2")
        .replace("steps = 400", "steps = 60")
        .replace("batch_size = 64", "batch_size = 16")
        .replace("eval_problems = 256", "eval_problems = 64");
    let mut cfg = RunConfig::parse(&text, Path::new("test.toml")).unwrap();
    cfg.run.out_dir = out.to_path_buf();
    cfg.run.seed = seed;
    cfg
}

#[test]
fn loss_falls_runs_are_deterministic_and_checkpoints_reload() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small(dir.path(), 7);
    let mut log = Vec::new();
    let a = job::run(&cfg, None, &mut log).unwrap();
    let first: f64 = a.losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = a.losses[a.losses.len() - 5..].iter().sum::<f64>() / 5.0;
    println!("loss {first:.3} → {last:.3}; evals {:?}", a.evals);
    assert!(last < 0.6 * first, "loss did not fall: {first} → {last}");
    let (e0, e1) = (a.evals.first().unwrap().1, a.evals.last().unwrap().1);
    assert!(e1.answer_nll < e0.answer_nll, "held-out answer NLL did not improve: {e0:?} → {e1:?}");

    // same seed → bit-identical weights; another seed → different
    let b = job::run(&cfg, None, &mut Vec::new()).unwrap();
    assert_eq!(a.final_params, b.final_params, "same seed gave different weights");
    let other = tempfile::tempdir().unwrap();
    let c = job::run(&small(other.path(), 8), None, &mut Vec::new()).unwrap();
    assert_ne!(a.final_params, c.final_params);

    // outputs: resolved config, metrics, HF checkpoint with tokenizer
    let run_dir = dir.path().join("addition-sft");
    assert!(RunConfig::load(&run_dir.join("config.toml")).is_ok(), "resolved config must parse back");
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("\"loss\"")).count(), 60);
    let ckpt = run_dir.join("checkpoints/step-60");
    let (_, params) = load_hf_dir(&ckpt).unwrap();
    assert_eq!(params.data, a.final_params);
    assert!(ckpt.join("tokenizer.json").is_file());
}
