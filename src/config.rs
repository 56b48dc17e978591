//! Run configuration: TOML → typed structs (unknown keys rejected), validated with errors that
//! name the file and key.

use crate::error::{Error, Result};
use crate::model::config::{Arch, ModelConfig};
use crate::train::ScheduleKind;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The embedded default job.
pub const DEFAULT_CONFIG: &str = include_str!("../configs/default.toml");
/// configs/addition-sft.toml: a one-minute supervised job, the base of the tests' configs.
pub const ADDITION_CONFIG: &str = include_str!("../configs/addition-sft.toml");

/// A whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub run: RunSection,
    pub model: ModelSection,
    /// `[data]`: the task (`crate::tasks::TaskConfig`: kind = countdown | arithmetic | jsonl | parquet | addition).
    pub data: crate::tasks::TaskConfig,
    pub train: TrainSection,
    /// Optional RL phase after the supervised phase.
    pub rl: Option<RlSection>,
    /// Policy loss of the RL phase (defaults: ALGORITHMS.md §5 reference values).
    pub loss: Option<crate::rl::LossConfig>,
    /// SPMD layout and fault handling under MPI (defaults when absent).
    #[serde(default)]
    pub parallel: ParallelSection,
    /// AttnRL tree sampling in the RL phase (ATB with `branch_by = "fci"`, TreeRL with "entropy").
    pub attnrl: Option<crate::attnrl::AttnRlConfig>,
    /// Attention-rhythm credit: per-token advantage shaping in the RL phase.
    pub rhythm: Option<crate::attnrl::RhythmConfig>,
    /// `[async]`: disaggregated rollout and train ranks with a staleness bound (ROLL Flash).
    #[serde(rename = "async")]
    pub async_rl: Option<crate::train::async_rl::AsyncConfig>,
    /// `[critic]`: PPO with GAE on value models (count ≥ 2: AsyPPO's mini-critics).
    pub critic: Option<crate::train::critic::CriticConfig>,
    /// `[workload]`: long-tail workload mode for system benchmarks (forced response lengths).
    pub workload: Option<crate::rollout::WorkloadConfig>,
    /// `[env]`: multi-turn environments with latency (replaces `[data]`'s single-turn prompts).
    pub env: Option<crate::env::EnvConfig>,
    /// A resume may change settings the run recorded (`arbor train --allow-config-change`; never
    /// read from or written to a file).
    #[serde(skip)]
    pub allow_config_change: bool,
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
}

impl Default for ParallelSection {
    fn default() -> Self {
        ParallelSection { tp: 1, bucket_mb: 4.0, collective_timeout_s: 300.0, step_timeout_s: 1800.0 }
    }
}

impl ParallelSection {
    /// Bucket size in bytes (at least one f32).
    pub fn bucket_bytes(&self) -> usize {
        ((self.bucket_mb * 1048576.0) as usize).max(4)
    }
}

/// `[rl]`: the GRPO-family phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlSection {
    pub steps: u64,
    #[serde(default = "d_prompts")]
    pub prompts_per_step: usize,
    #[serde(default = "d_samples")]
    pub samples_per_prompt: u32,
    #[serde(default = "d_new_tokens")]
    pub max_new_tokens: usize,
    #[serde(default = "d_temperature")]
    pub temperature: f32,
    /// Peak learning rate of the policy.
    #[serde(default = "d_rl_lr")]
    pub lr: f32,
    /// Learning-rate schedule over the RL steps: "constant" (default), "linear" or "cosine"
    /// decay to `min_lr` at the last step, after `warmup_steps` of linear warmup.
    #[serde(default = "d_rl_schedule")]
    pub schedule: ScheduleKind,
    /// Learning rate at the last RL step for "linear"/"cosine" (default: `lr`, no decay).
    #[serde(default)]
    pub min_lr: Option<f32>,
    /// RL steps of linear warmup from lr/warmup_steps to lr.
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default = "default_clip")]
    pub grad_clip: f32,
    #[serde(default)]
    pub advantage: crate::rl::AdvantageKind,
    /// Drop groups whose rewards are all equal (zero advantage) before the update.
    #[serde(default = "d_true")]
    pub filter_zero_std: bool,
    /// Sequences generated together (KV-cache slots).
    #[serde(default = "d_max_batch")]
    pub max_batch: usize,
    #[serde(default = "d_eval_problems")]
    pub eval_problems: usize,
    /// Samples per held-out problem at temperature 1 (plus one greedy).
    #[serde(default = "d_eval_samples")]
    pub eval_samples: u32,
    #[serde(default)]
    pub eval_every: u64,
    #[serde(default = "d_rl_log")]
    pub log_every: u64,
    /// Passes over each step's samples (PPO epochs).
    #[serde(default = "d_one")]
    pub epochs: usize,
    /// Optimizer updates per pass: the step's samples are cut into this many mini-batches.
    #[serde(default = "d_one")]
    pub mini_batches: usize,
    /// Samples per forward/backward, gradients accumulated exactly; 0 = a whole mini-batch at once.
    #[serde(default)]
    pub micro_batch: usize,
    /// Write `trajectories.h5` (needs the `hdf5` feature; ignored without it).
    #[serde(default = "d_true")]
    pub dump_trajectories: bool,
}

fn d_one() -> usize {
    1
}

fn d_prompts() -> usize {
    32
}
fn d_samples() -> u32 {
    8
}
fn d_new_tokens() -> usize {
    8
}
fn d_temperature() -> f32 {
    1.0
}
fn d_rl_lr() -> f32 {
    1e-4
}
fn d_rl_schedule() -> ScheduleKind {
    ScheduleKind::Constant
}

impl RlSection {
    /// The policy's learning-rate schedule over the RL steps.
    pub fn lr_schedule(&self) -> crate::train::schedule::LrSchedule {
        crate::train::schedule::LrSchedule {
            kind: self.schedule,
            peak_lr: self.lr,
            min_lr: self.min_lr.unwrap_or(self.lr),
            warmup_steps: self.warmup_steps,
            total_steps: self.steps,
        }
    }
}
fn d_true() -> bool {
    true
}
fn d_max_batch() -> usize {
    256
}
fn d_eval_problems() -> usize {
    200
}
fn d_eval_samples() -> u32 {
    4
}
fn d_rl_log() -> u64 {
    5
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
}

fn default_out_dir() -> PathBuf {
    PathBuf::from("runs")
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
}

fn default_arch() -> String {
    "qwen2".into()
}
fn default_max_pos() -> usize {
    256
}
fn default_theta() -> f64 {
    10000.0
}
fn default_init_std() -> f64 {
    0.02
}

fn default_eval() -> usize {
    256
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
    /// Where the supervised phase's forward and backward run: "cpu" or "cuda" (GPU 0 of each rank).
    #[serde(default)]
    pub device: Device,
    /// Steps in a row whose update may be skipped for a non-finite loss or gradient norm before
    /// the run stops (both phases; 0 = stop at the first).
    #[serde(default = "default_max_nonfinite")]
    pub max_nonfinite_steps: u64,
}

fn default_max_nonfinite() -> u64 {
    3
}

/// Compute device of the supervised phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
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
fn default_clip() -> f32 {
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

impl RunConfig {
    /// Parse TOML text; `file` names the source in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self> {
        // 1. TOML syntax, then every number of every section finite (a NaN or ±inf never reaches a
        //    typed field, whatever section it is in)
        let tree: toml::Table = toml::from_str(text).map_err(|e| Error::Config {
            file: file.into(),
            key: e.span().map(|s| format!("line {}", line_of(text, s.start))).unwrap_or_default(),
            msg: e.message().to_string(),
        })?;
        if let Some((key, v)) = first_non_finite(&tree, "") {
            return Err(Error::Config { file: file.into(), key, msg: format!("{v} is not a finite number") });
        }
        // 2. the typed schema; a wrong type or unknown key is named by its dotted path and line
        let cfg: RunConfig = toml::from_str(text).map_err(|e| Error::Config {
            file: file.into(),
            key: e.span().map(|s| key_at(text, s.start)).unwrap_or_default(),
            msg: e.message().to_string(),
        })?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// Read and parse a TOML file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    /// The config at `path`, or the embedded default job without one (what every subcommand
    /// taking `--config` does).
    pub fn load_or_default(path: Option<&Path>) -> Result<Self> {
        match path {
            Some(p) => Self::load(p),
            None => Ok(Self::default_job()),
        }
    }

    /// The embedded default job.
    pub fn default_job() -> Self {
        Self::parse(DEFAULT_CONFIG, Path::new("<embedded configs/default.toml>"))
            .expect("embedded default config is valid")
    }

    fn validate(&self, file: &Path) -> Result<()> {
        let bad = |key: &str, msg: String| Err(Error::Config { file: file.into(), key: key.into(), msg });
        if self.run.name.is_empty() || self.run.name.contains(['/', '\\']) {
            return bad("run.name", format!("{:?} must be a non-empty name without slashes", self.run.name));
        }
        self.data.validate().map_err(|(key, msg)| Error::Config {
            file: file.into(),
            key: format!("data.{key}"),
            msg,
        })?;
        if self.train.steps == 0 && self.rl.is_none() {
            return bad("train.steps", "0: a run without an [rl] phase needs supervised steps".into());
        }
        if self.train.batch_size == 0 {
            return bad("train.batch_size", "0 must be at least 1".into());
        }
        if self.train.eval_problems == 0 {
            return bad(
                "train.eval_problems",
                "0 must be at least 1 (every evaluation scores held-out problems)".into(),
            );
        }
        let t = &self.train;
        for (key, v, ok, want) in [
            ("train.lr", t.lr, t.lr > 0.0, "> 0"),
            ("train.min_lr", t.min_lr, t.min_lr >= 0.0 && t.min_lr <= t.lr, "in [0, lr]"),
            ("train.grad_clip", t.grad_clip, t.grad_clip >= 0.0, "≥ 0 (0 disables clipping)"),
            ("train.weight_decay", t.weight_decay, t.weight_decay >= 0.0, "≥ 0"),
            ("train.beta1", t.beta1, (0.0..1.0).contains(&t.beta1), "in [0, 1)"),
            ("train.beta2", t.beta2, (0.0..1.0).contains(&t.beta2), "in [0, 1)"),
            ("train.eps", t.eps, t.eps > 0.0, "> 0"),
        ] {
            if !(v.is_finite() && ok) {
                return bad(key, format!("{v} must be {want}"));
            }
        }
        let m = &self.model;
        if !(m.rope_theta.is_finite() && m.rope_theta > 0.0) {
            return bad("model.rope_theta", format!("{} must be > 0", m.rope_theta));
        }
        if !(m.init_std.is_finite() && m.init_std > 0.0) {
            return bad("model.init_std", format!("{} must be > 0", m.init_std));
        }
        if let Some(rl) = &self.rl {
            for (key, v) in [
                ("rl.prompts_per_step", rl.prompts_per_step),
                ("rl.samples_per_prompt", rl.samples_per_prompt as usize),
                ("rl.max_new_tokens", rl.max_new_tokens),
                ("rl.max_batch", rl.max_batch),
                ("rl.epochs", rl.epochs),
                ("rl.mini_batches", rl.mini_batches),
                ("rl.eval_problems", rl.eval_problems),
            ] {
                if v == 0 {
                    return bad(key, "0 must be at least 1".into());
                }
            }
            // a group advantage compares the samples of one prompt: a group of one has none
            if rl.samples_per_prompt < 2 && self.critic.is_none() && self.attnrl.is_none() {
                return bad(
                    "rl.samples_per_prompt",
                    format!(
                        "{}: the {:?} advantage compares the samples of a prompt, so a group needs at least 2 \
                         (or add a [critic] for per-sample values)",
                        rl.samples_per_prompt, rl.advantage
                    ),
                );
            }
            for (key, v, ok, want) in [
                ("rl.lr", rl.lr, rl.lr > 0.0, "> 0"),
                ("rl.grad_clip", rl.grad_clip, rl.grad_clip >= 0.0, "≥ 0 (0 disables clipping)"),
                ("rl.temperature", rl.temperature, rl.temperature >= 0.0, "≥ 0 (0 = greedy rollouts)"),
            ] {
                if !(v.is_finite() && ok) {
                    return bad(key, format!("{v} must be {want}"));
                }
            }
            if let Some(m) = rl.min_lr {
                if !(m.is_finite() && m >= 0.0 && m <= rl.lr) {
                    return bad("rl.min_lr", format!("{m} must be in [0, rl.lr = {}]", rl.lr));
                }
            }
            if rl.warmup_steps > rl.steps {
                return bad("rl.warmup_steps", format!("{} exceeds rl.steps = {}", rl.warmup_steps, rl.steps));
            }
        }
        if self.train.device == Device::Cuda {
            if !cfg!(feature = "cuda") {
                return bad("train.device", "\"cuda\": this arbor was built without the `cuda` feature".into());
            }
            if self.rl.is_some() || self.parallel.tp > 1 {
                return bad(
                    "train.device",
                    "\"cuda\" drives the supervised phase with data parallelism only; [rl] and tp > 1 run on \
                     the CPU for now"
                        .into(),
                );
            }
        }
        let par = &self.parallel;
        if par.tp == 0 {
            return bad("parallel.tp", "0 must be at least 1".into());
        }
        if par.tp > 1 && (self.attnrl.is_some() || self.rhythm.is_some()) {
            return bad(
                "parallel.tp",
                format!(
                    "{}: the attention-statistics pass ([attnrl], [rhythm]) needs every head on one rank; use tp = 1 with data parallelism",
                    par.tp
                ),
            );
        }
        for (key, v) in [
            ("parallel.bucket_mb", par.bucket_mb),
            ("parallel.collective_timeout_s", par.collective_timeout_s),
            ("parallel.step_timeout_s", par.step_timeout_s),
        ] {
            if !(v.is_finite() && v >= 0.0) || (key == "parallel.bucket_mb" && v == 0.0) {
                return bad(key, format!("{v} must be a finite positive number"));
            }
        }
        if let Some(c) = &self.critic {
            c.validate().map_err(|(key, msg)| Error::Config { file: file.into(), key, msg })?;
            let clash = if self.rl.is_none() {
                Some("[critic] needs an [rl] phase")
            } else if self.attnrl.is_some() {
                Some("[critic] replaces group advantages; it does not combine with [attnrl] trees")
            } else if self.async_rl.is_some() {
                Some("[critic] runs in the synchronous trainer; drop [async]")
            } else {
                None
            };
            if let Some(msg) = clash {
                return Err(Error::Config { file: file.into(), key: "critic".into(), msg: msg.into() });
            }
        }
        if let Some(w) = &self.workload {
            w.validate().map_err(|(key, msg)| Error::Config { file: file.into(), key, msg })?;
            if self.rl.is_none() {
                return bad("workload", "[workload] shapes RL generation: add an [rl] table".into());
            }
        }
        if let Some(e) = &self.env {
            e.validate(self).map_err(|(key, msg)| Error::Config { file: file.into(), key, msg })?;
        }
        if let Some(a) = &self.async_rl {
            a.validate(self).map_err(|(key, msg)| Error::Config { file: file.into(), key, msg })?;
        }
        if let Some(a) = &self.attnrl {
            a.validate().map_err(|e| Error::Config {
                file: file.into(),
                key: format!("attnrl.{}", e.key),
                msg: e.msg,
            })?;
        }
        if let Some(r) = &self.rhythm {
            r.validate().map_err(|e| Error::Config {
                file: file.into(),
                key: format!("rhythm.{}", e.key),
                msg: e.msg,
            })?;
        }
        if (self.attnrl.is_some() || self.rhythm.is_some()) && self.rl.is_none() {
            return bad("attnrl", "[attnrl] and [rhythm] shape the RL phase: add an [rl] table".into());
        }
        if let Some(loss) = &self.loss {
            loss.validate().map_err(|e| Error::Config {
                file: file.into(),
                key: format!("loss.{}", e.key),
                msg: e.msg,
            })?;
        }
        if self.model.arch != "qwen2" && self.model.arch != "llama" {
            return bad("model.arch", format!("{:?} is not \"qwen2\" or \"llama\"", self.model.arch));
        }
        let dims = [
            self.model.hidden_size,
            self.model.intermediate_size,
            self.model.num_layers,
            self.model.num_heads,
            self.model.num_kv_heads,
        ];
        match &self.model.hf_dir {
            Some(_) if dims.iter().any(Option::is_some) => {
                bad("model.hf_dir", "give either hf_dir or the model dimensions, not both".into())
            }
            None if dims.iter().any(Option::is_none) => bad(
                "model",
                "without hf_dir, hidden_size, intermediate_size, num_layers, num_heads and num_kv_heads are required"
                    .into(),
            ),
            _ => Ok(()),
        }
    }

    /// The task of `[data]` (a JSONL dataset is loaded here).
    pub fn task(&self) -> Result<Box<dyn crate::tasks::Task>> {
        crate::tasks::build(&self.data, self.run.seed)
    }

    /// The model configuration for a fresh model with a `vocab_size` tokenizer.
    pub fn fresh_model(&self, vocab_size: usize, eos: u32, file: &Path) -> Result<ModelConfig> {
        let m = &self.model;
        let hidden = m.hidden_size.unwrap_or(0);
        let heads = m.num_heads.unwrap_or(1).max(1);
        let arch = if m.arch == "llama" { Arch::Llama } else { Arch::Qwen2 };
        let cfg = ModelConfig {
            arch,
            hidden_size: hidden,
            intermediate_size: m.intermediate_size.unwrap_or(0),
            num_layers: m.num_layers.unwrap_or(0),
            num_heads: heads,
            num_kv_heads: m.num_kv_heads.unwrap_or(0),
            head_dim: hidden / heads,
            rms_norm_eps: 1e-6,
            rope_theta: m.rope_theta,
            vocab_size,
            max_position_embeddings: m.max_position_embeddings,
            tie_word_embeddings: m.tie_word_embeddings,
            qkv_bias: arch == Arch::Qwen2,
            bos_token_id: None,
            eos_token_id: Some(eos),
        };
        if !hidden.is_multiple_of(heads) {
            return Err(Error::Config {
                file: file.into(),
                key: "model.num_heads".into(),
                msg: format!("{heads} does not divide hidden_size = {hidden}"),
            });
        }
        cfg.validate(file)?;
        Ok(cfg)
    }
}

/// 1-based line of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// The dotted key a TOML error span points into, with its line: the table of the nearest `[header]`
/// above it and the key on its line (`train.steps (line 23)`); the line alone when the span is not
/// on a `key = value` line.
fn key_at(text: &str, at: usize) -> String {
    let line_no = line_of(text, at);
    let mut table = String::new();
    let mut key = None;
    for (i, line) in text.lines().enumerate().take(line_no) {
        let t = line.trim();
        if t.starts_with('[') {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            key = None;
        } else if i + 1 == line_no {
            key = t.split_once('=').map(|(k, _)| k.trim().trim_matches('"').to_string()).filter(|k| !k.is_empty());
        }
    }
    match (key, table.is_empty()) {
        (Some(k), true) => format!("{k} (line {line_no})"),
        (Some(k), false) => format!("{table}.{k} (line {line_no})"),
        (None, false) => format!("{table} (line {line_no})"),
        (None, true) => format!("line {line_no}"),
    }
}

/// The dotted path and value of the first non-finite float in a TOML tree (arrays index as `key[i]`).
/// A distribution's `max = inf` (no cap, its default) is the one infinity allowed.
fn first_non_finite(table: &toml::Table, prefix: &str) -> Option<(String, f64)> {
    fn walk(v: &toml::Value, path: String) -> Option<(String, f64)> {
        match v {
            toml::Value::Float(f) if *f == f64::INFINITY && path.ends_with(".max") => None,
            toml::Value::Float(f) if !f.is_finite() => Some((path, *f)),
            toml::Value::Table(t) => first_non_finite(t, &path),
            toml::Value::Array(a) => a.iter().enumerate().find_map(|(i, x)| walk(x, format!("{path}[{i}]"))),
            _ => None,
        }
    }
    table.iter().find_map(|(k, v)| walk(v, if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_parses_and_bad_keys_are_named() {
        let d = RunConfig::default_job();
        assert_eq!(d.data.kind, crate::tasks::TaskKind::Countdown);
        assert!(d.rl.is_some() && d.model.hf_dir.is_some());
        let bad = ADDITION_CONFIG.replace("batch_size = 64", "batch_size = 64\nbatchsize = 3");
        let e = RunConfig::parse(&bad, Path::new("x.toml")).unwrap_err().to_string();
        assert!(e.contains("x.toml") && e.contains("batchsize"), "{e}");
        let bad = ADDITION_CONFIG.replace("task = \"addition\"", "task = \"chess\"");
        let e = RunConfig::parse(&bad, Path::new("y.toml")).unwrap_err().to_string();
        assert!(e.contains("y.toml") && e.contains("chess"), "{e}");
        let bad = ADDITION_CONFIG.replace("max_digits = 2", "max_digits = 40");
        let e = RunConfig::parse(&bad, Path::new("w.toml")).unwrap_err().to_string();
        assert!(e.contains("w.toml") && e.contains("data.max_digits"), "{e}");
        let bad = ADDITION_CONFIG.replace("lr = 3e-3", "lr = \"fast\"");
        let e = RunConfig::parse(&bad, Path::new("z.toml")).unwrap_err().to_string();
        assert!(e.contains("z.toml"), "{e}");
        let bad = ADDITION_CONFIG.replace("[train]\n", "[train]\ndevice = \"tpu\"\n");
        let e = RunConfig::parse(&bad, Path::new("d.toml")).unwrap_err().to_string();
        assert!(e.contains("d.toml") && e.contains("tpu"), "{e}");
        let bad = ADDITION_CONFIG.replace("[train]\n", "[train]\ndevice = \"cuda\"\n") + "\n[parallel]\ntp = 2\n";
        let e = RunConfig::parse(&bad, Path::new("g.toml")).unwrap_err().to_string();
        assert!(e.contains("g.toml") && e.contains("train.device"), "{e}");
        let bad = ADDITION_CONFIG.to_string() + "\n[parallel]\ntp = 0\n";
        let e = RunConfig::parse(&bad, Path::new("p.toml")).unwrap_err().to_string();
        assert!(e.contains("p.toml") && e.contains("parallel.tp"), "{e}");
        let ok = ADDITION_CONFIG.to_string() + "\n[parallel]\ntp = 2\n";
        assert_eq!(RunConfig::parse(&ok, Path::new("p.toml")).unwrap().parallel.tp, 2);
        let bad = ADDITION_CONFIG.to_string() + "\n[rl]\nsteps = 1\nmini_batches = 0\n";
        let e = RunConfig::parse(&bad, Path::new("m.toml")).unwrap_err().to_string();
        assert!(e.contains("rl.mini_batches"), "{e}");
    }

    #[test]
    fn the_rl_learning_rate_follows_its_schedule_and_bad_bounds_are_named() {
        let rl = RunConfig::default_job().rl.unwrap();
        let s = rl.lr_schedule();
        assert_eq!(s.lr(0), rl.lr, "cosine starts at the peak");
        assert!((s.lr(rl.steps) - 1e-5).abs() < 1e-9, "and ends at min_lr: {}", s.lr(rl.steps));
        assert!(s.lr(rl.steps / 2) < rl.lr && s.lr(rl.steps / 2) > 1e-5);
        let constant =
            RunConfig::parse(&(ADDITION_CONFIG.to_string() + "\n[rl]\nsteps = 10\nlr = 3e-4\n"), Path::new("c.toml"))
                .unwrap()
                .rl
                .unwrap();
        assert_eq!(constant.lr_schedule().lr(9), 3e-4, "the default schedule is constant");
        for (extra, key) in
            [("min_lr = 1e-3", "rl.min_lr"), ("min_lr = -1e-6", "rl.min_lr"), ("warmup_steps = 11", "rl.warmup_steps")]
        {
            let bad = ADDITION_CONFIG.to_string() + &format!("\n[rl]\nsteps = 10\nschedule = \"cosine\"\n{extra}\n");
            let e = RunConfig::parse(&bad, Path::new("s.toml")).unwrap_err().to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
    }
}
