//! The sections of a run that every job has (`[run]`, `[model]`, `[train]`, `[parallel]`) and the
//! `[rl]` phase, with their defaults and the checks of each section's own values. Rules that
//! span sections live in `config::rules`.

use super::schedule::ScheduleKind;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A failed check: the dotted key and what is wrong with it.
pub type Violation = (String, String);

fn bad(key: &str, msg: String) -> Result<(), Violation> {
    Err((key.into(), msg))
}

/// `[run]`: naming, seeding, output and threads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Output goes to `<out_dir>/<name>/`.
    pub name: String,
    /// The one seed every random stream derives from.
    pub seed: u64,
    #[serde(default = "default_out_dir")]
    pub out_dir: PathBuf,
    /// Worker threads (0 = all cores).
    #[serde(default)]
    pub threads: usize,
    /// Mirror metrics.jsonl into a TensorBoard event file in the run directory (train/tensorboard.rs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tensorboard: bool,
}

fn default_out_dir() -> PathBuf {
    PathBuf::from("runs")
}

impl RunSection {
    /// Check the section's own values.
    pub fn validate(&self) -> Result<(), Violation> {
        // (a run directory of its own inside out_dir: "." and ".." would name out_dir or its parent)
        if self.name.is_empty() || self.name.contains(['/', '\\']) || self.name == "." || self.name == ".." {
            return bad(
                "run.name",
                format!("{:?} must be a non-empty name without slashes, other than . and ..", self.name),
            );
        }
        Ok(())
    }
}

/// `[model]`: start from an HF directory (`hf_dir`) or build a fresh model from the dims.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// HF model directory to start from; when set, the dimension keys must be absent.
    pub hf_dir: Option<PathBuf>,
    /// "qwen2" (q/k/v biases) or "llama".
    #[serde(default = "default_arch")]
    pub arch: String,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_layers: Option<usize>,
    pub num_heads: Option<usize>,
    pub num_kv_heads: Option<usize>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Standard deviation of the random initialisation of matrices.
    #[serde(default = "default_init_std")]
    pub init_std: f64,
    /// The text a task's prompt is put into, `{prompt}` where it goes (a chat model's format, e.g.
    /// `"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"`); none: the prompt as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_template: Option<String>,
}

fn default_arch() -> String {
    "qwen2".into()
}
/// Most positions of a fresh model's RoPE table (`[model] max_position_embeddings`): 2^20, far
/// beyond any sequence arbor trains or samples.
pub const MAX_POSITIONS: usize = 1 << 20;
fn default_max_pos() -> usize {
    256
}
fn default_theta() -> f64 {
    10000.0
}
fn default_init_std() -> f64 {
    ModelSection::DEFAULT_INIT_STD
}

impl ModelSection {
    /// `init_std` where the file gives none.
    pub const DEFAULT_INIT_STD: f64 = 0.02;

    /// Check the section's own values: positive numbers, a known arch, and either `hf_dir` or
    /// all five dimensions.
    pub fn validate(&self) -> Result<(), Violation> {
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad("model.rope_theta", format!("{} must be > 0", self.rope_theta));
        }
        if !(self.init_std.is_finite() && self.init_std > 0.0) {
            return bad("model.init_std", format!("{} must be > 0", self.init_std));
        }
        if crate::model::Arch::from_model_type(&self.arch).is_none() {
            return bad("model.arch", format!("{:?} is not one of {}", self.arch, crate::model::Arch::names()));
        }
        if self.max_position_embeddings > MAX_POSITIONS {
            return bad(
                "model.max_position_embeddings",
                format!("{} is more than arbor supports (2^20 = {MAX_POSITIONS})", self.max_position_embeddings),
            );
        }
        if let Some(t) = &self.prompt_template {
            let n = t.matches(crate::tokenizer::codec::PROMPT_PLACEHOLDER).count();
            if n != 1 {
                return bad(
                    "model.prompt_template",
                    format!("{t:?} has {n} `{{prompt}}` placeholders; write it exactly once, where the prompt goes"),
                );
            }
        }
        let dims = [self.hidden_size, self.intermediate_size, self.num_layers, self.num_heads, self.num_kv_heads];
        match &self.hf_dir {
            Some(_) if dims.iter().any(Option::is_some) => {
                bad("model.hf_dir", "give either hf_dir or the model dimensions, not both".into())
            }
            Some(d) if d.as_os_str().is_empty() => bad("model.hf_dir", "an empty path".into()),
            Some(_) => self.check_hf_dir_keys(),
            None if dims.iter().any(Option::is_none) => bad(
                "model",
                "without hf_dir, hidden_size, intermediate_size, num_layers, num_heads and num_kv_heads are required"
                    .into(),
            ),
            None => self.check_dims(),
        }
    }

    /// With `hf_dir`, the model's shape comes from its `config.json`: a shape key set to anything
    /// but its default would be silently ignored (`init_std` is a rule: a `[critic]` reads it).
    fn check_hf_dir_keys(&self) -> Result<(), Violation> {
        let ignored = [
            ("model.arch", self.arch != default_arch(), format!("{:?}", self.arch)),
            (
                "model.max_position_embeddings",
                self.max_position_embeddings != default_max_pos(),
                self.max_position_embeddings.to_string(),
            ),
            ("model.rope_theta", self.rope_theta != default_theta(), self.rope_theta.to_string()),
            ("model.tie_word_embeddings", self.tie_word_embeddings, self.tie_word_embeddings.to_string()),
        ];
        match ignored.into_iter().find(|(_, set, _)| *set) {
            Some((key, _, v)) => bad(
                key,
                format!(
                    "{v}: a model loaded from hf_dir takes its shape from the directory's config.json, so this key \
                     would have no effect; drop it (or drop hf_dir to build a fresh model)"
                ),
            ),
            None => Ok(()),
        }
    }

    /// The dimensions of a fresh model make a decoder: every one positive, heads splitting the
    /// width into even head dims (RoPE turns pairs), kv heads dividing the heads (GQA groups).
    fn check_dims(&self) -> Result<(), Violation> {
        let named = [
            ("model.hidden_size", self.hidden_size),
            ("model.intermediate_size", self.intermediate_size),
            ("model.num_layers", self.num_layers),
            ("model.num_heads", self.num_heads),
            ("model.num_kv_heads", self.num_kv_heads),
            ("model.max_position_embeddings", Some(self.max_position_embeddings)),
        ];
        if let Some((key, _)) = named.iter().find(|(_, v)| *v == Some(0)) {
            return bad(key, "0: must be at least 1".into());
        }
        let (c, h, kv) = (self.hidden_size.unwrap_or(1), self.num_heads.unwrap_or(1), self.num_kv_heads.unwrap_or(1));
        if c % h != 0 || (c / h) % 2 != 0 {
            return bad(
                "model.num_heads",
                format!("{h}: hidden_size {c} must split into num_heads heads of an even dimension (RoPE turns pairs)"),
            );
        }
        if h % kv != 0 {
            return bad("model.num_kv_heads", format!("{kv} must divide num_heads = {h} (GQA groups)"));
        }
        self.check_host_memory(crate::model::host_memory::host_memory())
    }

    /// The shape of the fresh model these keys build for a `vocab_size` tokenizer, unchecked
    /// (a missing dimension reads 0; [`crate::config::RunConfig::fresh_model`] checks it).
    pub fn fresh_config(&self, vocab_size: usize) -> crate::model::ModelConfig {
        use crate::model::Arch;
        let hidden = self.hidden_size.unwrap_or(0);
        let heads = self.num_heads.unwrap_or(1).max(1);
        // (validated: a known name)
        let arch = Arch::from_model_type(&self.arch).unwrap_or(Arch::Qwen2);
        crate::model::ModelConfig {
            arch,
            hidden_size: hidden,
            intermediate_size: self.intermediate_size.unwrap_or(0),
            num_layers: self.num_layers.unwrap_or(0),
            num_heads: heads,
            num_kv_heads: self.num_kv_heads.unwrap_or(0),
            head_dim: hidden / heads,
            rms_norm_eps: 1e-6,
            rope_theta: self.rope_theta,
            rope_scaling: None,
            vocab_size,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
            qkv_bias: arch == Arch::Qwen2,
            bos_token_id: None,
            eos_token_ids: Vec::new(),
        }
    }

    /// A fresh model's training state fits in the machine's memory (`available` bytes; None: not
    /// known, no check): see [`crate::model::ModelConfig::training_bytes`]. The vocabulary is the
    /// character tokenizer's, as the run builds it.
    fn check_host_memory(&self, available: Option<crate::model::host_memory::HostMemory>) -> Result<(), Violation> {
        let Some(available) = available else { return Ok(()) };
        let vocab = crate::tokenizer::char::CharTokenizer::default().vocab_size();
        match self.fresh_config(vocab).memory_shortfall(&available) {
            Some(msg) => bad("model", msg),
            None => Ok(()),
        }
    }
}

/// `[train]`: optimisation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    pub steps: u64,
    /// Sequences per step.
    pub batch_size: usize,
    pub lr: f32,
    #[serde(default)]
    pub min_lr: f32,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default = "default_schedule")]
    pub schedule: ScheduleKind,
    /// Global-norm clip (0 disables).
    #[serde(default = "default_clip")]
    pub grad_clip: f32,
    #[serde(default = "default_wd")]
    pub weight_decay: f32,
    #[serde(default = "default_beta1")]
    pub beta1: f32,
    #[serde(default = "default_beta2")]
    pub beta2: f32,
    #[serde(default = "default_eps")]
    pub eps: f32,
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// Steps between held-out evaluations (0 = only at the end).
    #[serde(default)]
    pub eval_every: u64,
    /// Held-out problems scored (teacher-forced answer NLL / exact) at each evaluation.
    #[serde(default = "default_eval")]
    pub eval_problems: usize,
    /// Steps between checkpoints (1 = every step: a killed run loses at most the step in progress).
    #[serde(default = "default_ckpt_every")]
    pub checkpoint_every: u64,
    /// Newest checkpoints kept (older ones are deleted after a successful save).
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// Where the model computes in both phases (forward, backward, AdamW, RL generation): "cpu"
    /// or "cuda" (one GPU per rank, `cuda::placement`; see `train::engine`).
    #[serde(default)]
    pub device: Device,
    /// Operand type of the matrix products on the GPU ("f32", "tf32" or "bf16"); weights,
    /// activations, gradients, AdamW moments and every accumulation stay f32 (see [`Dtype`]).
    #[serde(default)]
    pub dtype: Dtype,
    /// Gradient checkpointing in both phases: the workspaces keep each decoder layer's input and
    /// the backward recomputes the layer's other activations from it (the same gradients, bit
    /// for bit; activation memory about C numbers a token a layer instead of ~4C + qkv + H·D + 3I,
    /// for one more forward of the layers; `model::workspace`).
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// Steps in a row whose update may be skipped for a non-finite loss or gradient norm before
    /// the run stops (both phases; 0 = stop at the first).
    #[serde(default = "default_max_nonfinite")]
    pub max_nonfinite_steps: u64,
}

/// Compute device of a run (`[train] device`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
}

/// Where and how a run computes: `[train] device` and `dtype`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compute {
    pub device: Device,
    pub dtype: Dtype,
}

impl From<Device> for Compute {
    /// `device` with exact f32 products.
    fn from(device: Device) -> Compute {
        Compute { device, dtype: Dtype::F32 }
    }
}

pub use crate::tensor::Dtype;

fn default_eval() -> usize {
    256
}
fn default_max_nonfinite() -> u64 {
    3
}
fn default_ckpt_every() -> u64 {
    1
}
fn default_keep() -> usize {
    2
}
fn default_schedule() -> ScheduleKind {
    ScheduleKind::Cosine
}
pub(super) fn default_clip() -> f32 {
    1.0
}
fn default_wd() -> f32 {
    0.1
}
fn default_beta1() -> f32 {
    0.9
}
fn default_beta2() -> f32 {
    0.95
}
fn default_eps() -> f32 {
    1e-8
}
fn default_log_every() -> u64 {
    10
}

impl TrainSection {
    /// The run's device and product dtype.
    pub fn compute(&self) -> Compute {
        Compute { device: self.device, dtype: self.dtype }
    }

    /// Check the section's own values (whether `steps = 0` is allowed depends on `[rl]`: a rule).
    pub fn validate(&self) -> Result<(), Violation> {
        if self.batch_size == 0 {
            return bad("train.batch_size", "0 must be at least 1".into());
        }
        if self.eval_problems == 0 {
            return bad(
                "train.eval_problems",
                "0 must be at least 1 (every evaluation scores held-out problems)".into(),
            );
        }
        // (0 would not mean "never": the last step always logs and checkpoints)
        for (key, v) in [
            ("train.log_every", self.log_every),
            ("train.checkpoint_every", self.checkpoint_every),
            ("train.keep_checkpoints", self.keep_checkpoints as u64),
        ] {
            if v == 0 {
                return bad(key, "0 must be at least 1".into());
            }
        }
        for (key, v, ok, want) in [
            ("train.lr", self.lr, self.lr > 0.0, "> 0"),
            ("train.min_lr", self.min_lr, self.min_lr >= 0.0 && self.min_lr <= self.lr, "in [0, lr]"),
            ("train.grad_clip", self.grad_clip, self.grad_clip >= 0.0, "≥ 0 (0 disables clipping)"),
            ("train.weight_decay", self.weight_decay, self.weight_decay >= 0.0, "≥ 0"),
            ("train.beta1", self.beta1, (0.0..1.0).contains(&self.beta1), "in [0, 1)"),
            ("train.beta2", self.beta2, (0.0..1.0).contains(&self.beta2), "in [0, 1)"),
            ("train.eps", self.eps, self.eps > 0.0, "> 0"),
        ] {
            if !(v.is_finite() && ok) {
                return bad(key, format!("{v} must be {want}"));
            }
        }
        if self.schedule == ScheduleKind::Constant && self.min_lr != 0.0 {
            return bad(
                "train.min_lr",
                format!(
                    "{}: schedule = \"constant\" stays at train.lr, so min_lr would have no effect; drop it or set \
                     schedule = \"linear\" or \"cosine\"",
                    self.min_lr
                ),
            );
        }
        if self.device == Device::Cuda && !cfg!(feature = "cuda") {
            return bad("train.device", "\"cuda\": this arbor was built without the `cuda` feature".into());
        }
        if self.dtype != Dtype::F32 && self.device != Device::Cuda {
            return bad(
                "train.dtype",
                format!("\"{}\" needs train.device = \"cuda\" (the CPU computes in f32)", self.dtype.name()),
            );
        }
        Ok(())
    }
}

/// `[parallel]`: world = dp × tp under mpirun/srun; dp is world / tp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParallelSection {
    /// Tensor-parallel ranks per model replica (must divide the world size, and the model's
    /// heads, kv heads and MLP width; see `model::shard`).
    pub tp: usize,
    /// Gradient all-reduce bucket size in MiB.
    pub bucket_mb: f64,
    /// A collective that does not complete in this many seconds aborts the job (0 = never).
    pub collective_timeout_s: f64,
    /// A training step that does not complete in this many seconds aborts the job (0 = never).
    pub step_timeout_s: f64,
    /// ZeRO stage 1: each data-parallel rank keeps the policy's AdamW moments for its part of
    /// the weights only and updates that part, then the parts are gathered (`parallel::zero`; the
    /// same weights bit for bit, 8/dp bytes of moments a parameter instead of 8).
    pub shard_optimizer: bool,
}

impl Default for ParallelSection {
    fn default() -> Self {
        ParallelSection {
            tp: 1,
            bucket_mb: 4.0,
            collective_timeout_s: 300.0,
            step_timeout_s: 1800.0,
            shard_optimizer: false,
        }
    }
}

/// Longest `[parallel]` timeout, in seconds (1e9 s, about 31 years: what "never" is inside arbor).
/// The timeouts become `Duration`s and deadlines (`now + timeout`), which overflow far above it.
pub const MAX_TIMEOUT_S: f64 = 1e9;

impl ParallelSection {
    /// Bucket size in bytes (at least one f32).
    pub fn bucket_bytes(&self) -> usize {
        ((self.bucket_mb * 1048576.0) as usize).max(4)
    }

    /// Check the section's own values.
    pub fn validate(&self) -> Result<(), Violation> {
        if self.tp == 0 {
            return bad("parallel.tp", "0 must be at least 1".into());
        }
        for (key, v) in [
            ("parallel.bucket_mb", self.bucket_mb),
            ("parallel.collective_timeout_s", self.collective_timeout_s),
            ("parallel.step_timeout_s", self.step_timeout_s),
        ] {
            if !(v.is_finite() && v >= 0.0) || (key == "parallel.bucket_mb" && v == 0.0) {
                return bad(key, format!("{v} must be a finite positive number"));
            }
        }
        for (key, v) in [
            ("parallel.collective_timeout_s", self.collective_timeout_s),
            ("parallel.step_timeout_s", self.step_timeout_s),
        ] {
            if v > MAX_TIMEOUT_S {
                return bad(key, format!("{v:e} s is more than the longest timeout, 1e9 s (use 0 for no timeout)"));
            }
        }
        Ok(())
    }
}
