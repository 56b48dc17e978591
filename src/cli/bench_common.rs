//! What `arbor bench` and `arbor bench gpu` share: the model loader, the median of timings and
//! the FLOP count of a training step.

use crate::io::load_hf_dir;
use crate::model::init::init_params;
use crate::model::{Model, ModelConfig};
use std::path::Path;

/// Median of a sample.
pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// The model at `path`: an HF directory with safetensors, or a config.json (or a directory holding
/// only one) with random weights drawn from `seed`.
pub(crate) fn load_model(path: &Path, seed: u64) -> anyhow::Result<Model> {
    let (dir, cfg_file) = if path.is_dir() {
        (path.to_path_buf(), path.join("config.json"))
    } else {
        (path.parent().unwrap_or(Path::new(".")).to_path_buf(), path.to_path_buf())
    };
    let has_weights = dir.join("model.safetensors").is_file() || dir.join("model.safetensors.index.json").is_file();
    if path.is_dir() && has_weights {
        let (cfg, params) = load_hf_dir(&dir)?;
        return Ok(Model::new(cfg, params)?);
    }
    let cfg = ModelConfig::from_hf_file(&cfg_file)?;
    let params = init_params(&cfg, seed, 0.02);
    Ok(Model::new(cfg, params)?)
}

/// FLOPs of one training step, counted like scripts/peer/torch_train_step.py:
/// 6·(matmul parameters)·tokens + 6·L·B·T²·H·D (causal attention, forward + backward).
pub fn train_step_flops(cfg: &ModelConfig, batch: usize, seq: usize) -> f64 {
    let total = cfg.num_params();
    let embed = cfg.vocab_size * cfg.hidden_size;
    let matmul_params = if cfg.tie_word_embeddings { total } else { total - embed };
    let tokens = (batch * seq) as f64;
    6.0 * matmul_params as f64 * tokens
        + 6.0 * (cfg.num_layers * batch * seq * seq * cfg.num_heads * cfg.head_dim) as f64
}

/// Whether step `i` of a bench loop is the profiled one (`profile` on; the step after the
/// warm-up and timed ones, `at`); profiling starts with it.
#[cfg(feature = "cuda")]
pub(crate) fn profiled_step(gpu: &crate::cuda::Gpu, profile: bool, i: usize, at: usize) -> bool {
    let p = profile && i == at;
    if p {
        gpu.set_profiling(true);
    }
    p
}

/// With `profile` on, the profiled step's operations into `line["profile"]` (the 15 largest).
#[cfg(feature = "cuda")]
pub(crate) fn add_profile(gpu: &crate::cuda::Gpu, profile: bool, line: &mut serde_json::Value) -> anyhow::Result<()> {
    if profile {
        let report = gpu.profile_report()?;
        gpu.set_profiling(false);
        line["profile"] = report.to_json(15);
    }
    Ok(())
}
