//! Helpers of the multi-process tests (tests/mpi/, tests/launch.rs): starting `arbor` in one
//! process or under `arbor launch`, their configurations, and comparing two runs' checkpoints and
//! metrics.

use super::metrics_without_clock as metrics;
use arbor::config::{RunConfig, ADDITION_CONFIG, DEFAULT_CONFIG};
use arbor::io::load_hf_dir;
use std::path::Path;
use std::process::{Command, Output};

/// `arbor launch --nproc np -- args` (no MPI: collectives over TCP through the launcher).
pub fn launch(np: usize, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_arbor"));
    c.args(["launch", "--nproc", &np.to_string(), "--"]).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

pub fn single(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arbor")).args(args).output().unwrap()
}

/// stdout then stderr.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Two metrics values within relative `tol` (numbers; objects key by key; the rest equal).
pub fn close(a: &serde_json::Value, b: &serde_json::Value, tol: f64) -> bool {
    match (a, b) {
        (serde_json::Value::Number(x), serde_json::Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= tol * (1.0 + x.abs().max(y.abs()))
        }
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w, tol)))
        }
        _ => a == b,
    }
}

/// `tol`: largest weight difference; `metric_tol`: relative tolerance of every metric.
pub fn compare_runs_within(a: &Path, b: &Path, ck: &str, what: &str, tol: f32, metric_tol: f64) {
    let (ca, pa) = load_hf_dir(&a.join(ck)).unwrap();
    let (cb, pb) = load_hf_dir(&b.join(ck)).unwrap();
    assert_eq!(ca, cb, "{what}: the saved model configurations differ");
    let d = super::max_abs_diff(&pa.data, &pb.data);
    eprintln!("{what}: weights max |Δ| = {d:e}");
    assert!(d <= tol, "{what}: weights differ by {d:e}");
    let strip = |mut m: Vec<serde_json::Value>| {
        // `tokens` and `train_state_mib` are the rank's own (share, shard); async adds its staleness bookkeeping
        m.iter_mut().for_each(|v| {
            for k in [
                "tokens",
                "staleness_max",
                "staleness_mean",
                "staleness_hist",
                "trainer_idle_frac",
                "rollout_slot_util",
                "reward_queue_s",
                "mixed_version_frac",
                "train_state_mib",
                // rollout-vs-trainer log-prob differences are rounding noise (~1e-6..1e-5) whose
                // value depends on how the batch is packed per rank; the weights above and the
                // losses are the real check
                "logprob_mismatch_abs_max",
                "logprob_mismatch_abs_mean",
            ] {
                v.as_object_mut().unwrap().remove(k);
            }
        });
        m
    };
    let (ma, mb) = (strip(metrics(a)), strip(metrics(b)));
    assert_eq!(ma.len(), mb.len(), "{what}: metrics line counts differ");
    for (x, y) in ma.iter().zip(&mb) {
        assert!(close(x, y, metric_tol), "{what}: metrics differ:\n{x}\n{y}");
    }
}

/// Write `text` as `dir/run.toml`; its path.
pub fn write_config(dir: &Path, text: &str) -> String {
    let p = dir.join("run.toml");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// The addition job, shrunk to 3 supervised steps of a tiny model.
pub fn sft_config() -> String {
    ADDITION_CONFIG
        .replace("hidden_size = 128", "hidden_size = 32")
        .replace("intermediate_size = 384", "intermediate_size = 64")
        .replace("num_layers = 4", "num_layers = 2")
        .replace("steps = 400", "steps = 3")
        .replace("batch_size = 64", "batch_size = 10")
        .replace("eval_problems = 256", "eval_problems = 9")
        .replace("eval_every = 100", "eval_every = 1")
}

/// The default GRPO job, shortened to 3 RL steps on 5 prompts, with two updates per step and a KL term.
pub fn grpo_config() -> String {
    let base = RunConfig::default_job();
    assert!(base.rl.is_some(), "the embedded default has an RL phase");
    DEFAULT_CONFIG
        .replace(
            "hf_dir = \"configs/warmstart/countdown-sft\"",
            &format!("hf_dir = \"{}/configs/warmstart/countdown-sft\"", env!("CARGO_MANIFEST_DIR")),
        )
        .replace("steps = 1500", "steps = 3")
        .replace("prompts_per_step = 32", "prompts_per_step = 5")
        .replace("eval_problems = 500", "eval_problems = 11")
        .replace("eval_every = 500", "eval_every = 2\nmini_batches = 2\nmicro_batch = 3")
        .replace("kl_coef = 0.0", "kl_coef = 0.01")
        // the TP comparison's weight bound below is one AdamW update at this lr
        .replace("lr = 2e-4\n", "lr = 1e-4\n")
}
