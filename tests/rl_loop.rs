//! The GRPO loop end to end on a tiny model: it runs, logs the metrics the trainer promises,
//! evaluates before and after, and is a pure function of the seed.

use arbor::config::{RunConfig, ADDITION_CONFIG};
use arbor::train::job;
use std::path::Path;

fn config(out: &Path) -> RunConfig {
    let text = ADDITION_CONFIG
        .replace("hidden_size = 128", "hidden_size = 32")
        .replace("intermediate_size = 384", "intermediate_size = 64")
        .replace("num_layers = 4", "num_layers = 2")
        .replace("steps = 400", "steps = 30")
        .replace("batch_size = 64", "batch_size = 16")
        .replace("eval_problems = 256", "eval_problems = 16")
        + "\n[rl]\nsteps = 4\nprompts_per_step = 4\nsamples_per_prompt = 4\nmax_new_tokens = 5\n"
        + "eval_problems = 8\neval_samples = 2\nlog_every = 1\nfilter_zero_std = false\n"
        + "\n[loss]\nkind = \"ppo\"\nkl_coef = 0.001\nentropy_coef = 0.01\n";
    let mut cfg = RunConfig::parse(&text, Path::new("rl.toml")).unwrap();
    cfg.run.out_dir = out.to_path_buf();
    cfg
}

#[test]
fn grpo_loop_runs_logs_and_is_deterministic() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ra = job::run(&config(a.path()), None, &mut Vec::new()).unwrap();
    let rb = job::run(&config(b.path()), None, &mut Vec::new()).unwrap();
    assert_eq!(ra.final_params, rb.final_params, "same seed must give the same weights after RL");
    let (before, after) = ra.rl.expect("the config has an [rl] phase");
    assert!((0.0..=1.0).contains(&before.sampled) && (0.0..=1.0).contains(&after.greedy));
    let metrics = std::fs::read_to_string(a.path().join("addition-sft/metrics.jsonl")).unwrap();
    let steps: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("rl_step").is_some() && v.get("reward_mean").is_some())
        .collect();
    assert_eq!(steps.len(), 4);
    for key in [
        "reward_mean",
        "reward_std",
        "solve_rate",
        "response_len_mean",
        "response_len_max",
        "response_clip_ratio",
        "clip_frac",
        "approx_kl",
        "entropy",
        "grad_norm",
        "lr",
        "logprob_mismatch_abs_mean",
        "zero_std_frac",
        "time_generate_s",
        "time_train_s",
        "ref_kl",
        "updates",
        "policy_version",
        "time_reward_s",
        "train_tokens_per_s",
        "dual_clip_frac",
    ] {
        assert!(steps.iter().all(|s| s.get(key).is_some_and(|v| v.is_number())), "metrics lack {key}");
    }
    // (the ppo loss with its default dual clip: its fraction, no decoupled_ppo cap)
    assert!(steps.iter().all(|s| (0.0..=1.0).contains(&s["dual_clip_frac"].as_f64().unwrap())));
    assert!(steps.iter().all(|s| s.get("cap_frac").is_none()));
    // the behaviour log-probs recorded at rollout match the trainer's recomputation
    let mismatch = steps[0]["logprob_mismatch_abs_mean"].as_f64().unwrap();
    assert!(mismatch < 1e-4, "rollout vs train log-prob mismatch {mismatch}");
    let evals = metrics.lines().filter(|l| l.contains("eval_solve_rate")).count();
    assert_eq!(evals, 2, "one eval before the first RL update and one at the end");
    assert!(a.path().join("addition-sft/checkpoints/step-34").is_dir());
}

/// The default job (configs/default.toml) starts from the shipped warm start, which already solves
/// Countdown problems; two RL steps of it run and write a checkpoint and the before/after evals.
#[test]
fn default_job_starts_from_the_shipped_warm_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = RunConfig::default_job();
    cfg.run.out_dir = dir.path().to_path_buf();
    let rl = cfg.rl.as_mut().unwrap();
    rl.steps = 2;
    rl.eval_problems = 100;
    rl.eval_samples = 1;
    rl.prompts_per_step = 4;
    let report = job::run(&cfg, None, &mut Vec::new()).unwrap();
    let (before, after) = report.rl.unwrap();
    assert!(before.greedy >= 0.15, "the warm start should solve some problems greedily: {before:?}");
    assert!((0.0..=1.0).contains(&after.sampled));
    assert!(dir.path().join("default/checkpoints/step-2/model.safetensors").is_file());
}
