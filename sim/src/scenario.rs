//! Scenario files (TOML): cluster, model, workload, policies, calibration and validation cases.
//!
//! Parsing uses `deny_unknown_fields` everywhere; every key is documented in sim/README.md.

use crate::dist::Dist;
use crate::scenario_check::refuse_non_finite_table;
pub use crate::scenario_check::{key_shape, INF_ALLOWED};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Hardware of the cluster (per GPU figures).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Hardware {
    /// Total GPUs in the job.
    pub gpus: u32,
    /// HBM bandwidth per GPU, TB/s (H100/H800: 3.35).
    #[serde(default = "d_hbm")]
    pub hbm_tb_per_s: f64,
    /// Dense bf16 peak per GPU, TFLOP/s (H100/H800: 989).
    #[serde(default = "d_peak")]
    pub peak_tflops: f64,
    /// Bandwidth for trainer → inference weight transfer (disaggregated), GB/s.
    #[serde(default = "d_link")]
    pub link_gb_per_s: f64,
    /// Bandwidth for in-place resharding (colocated), GB/s.
    #[serde(default = "d_intra")]
    pub intra_node_gb_per_s: f64,
    /// HBM capacity per GPU, GB (H100/H800: 80); bounds the KV cache of an inference worker.
    #[serde(default = "d_hbm_gb")]
    pub hbm_gb: f64,
    /// Host link per GPU for offload/reload between phases, GB/s (PCIe Gen5: ~25).
    #[serde(default = "d_pcie")]
    pub pcie_gb_per_s: f64,
    /// NCCL all-reduce bus bandwidth inside a tensor-parallel group, GB/s (decode model).
    #[serde(default = "d_allreduce_bw")]
    pub allreduce_gb_per_s: f64,
    /// Sustained HBM bandwidth of streaming kernels (elementwise, copies), GB/s: the training passes'
    /// activation traffic moves at it ([`crate::activation`]). Absent: that traffic is not charged
    /// (the training cost is FLOPs / (peak · mfu) alone, as before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_gb_per_s: Option<f64>,
    /// GPUs per node: a disaggregated split gives the trainer whole nodes when the job spans two or
    /// more of them. Absent: any GPU count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus_per_node: Option<u32>,
    /// Hardware profile (`h800`, `h100`): fills every hardware, inference and training constant the
    /// file does not set, and switches the decode step to the first-principles model
    /// ([`crate::decode`]). See [`crate::hardware`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}
fn d_pcie() -> f64 {
    25.0
}
fn d_allreduce_bw() -> f64 {
    160.0
}
fn d_hbm() -> f64 {
    3.35
}
fn d_peak() -> f64 {
    989.0
}
fn d_link() -> f64 {
    25.0
}
fn d_intra() -> f64 {
    200.0
}
fn d_hbm_gb() -> f64 {
    80.0
}

/// The policy model.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// Parameters N, billions.
    pub params_b: f64,
    /// KV-cache bytes per token (2 · layers · kv_heads · head_dim · 2 bytes for bf16).
    pub kv_bytes_per_token: f64,
    /// Transformer layers (decode model: all-reduces per step and attention FLOPs). Needed with
    /// `hardware.profile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<u32>,
    /// Hidden size (default `sqrt(N / (12 · layers))`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<u32>,
    /// MLP intermediate size (default `4 · hidden`); sizes the activation traffic of a layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ffn_hidden: Option<u32>,
    /// Vocabulary size; sizes the output layer's activation traffic (absent: not charged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab: Option<u32>,
}

/// Inference engine constants (the decode/prefill cost model).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Inference {
    /// GPUs per inference worker (tensor-parallel group).
    #[serde(default = "one")]
    pub tp: u32,
    /// Maximum sequences decoded together per worker (continuous batching slots).
    #[serde(default = "d_conc")]
    pub max_concurrency: u32,
    /// Fixed per-decode-step overhead, ms (kernel launches, sampling, scheduling).
    #[serde(default = "d_overhead")]
    pub decode_overhead_ms: f64,
    /// Fraction of HBM bandwidth a decode step achieves (the usual calibration knob).
    #[serde(default = "d_bw_eff")]
    pub bandwidth_efficiency: f64,
    /// Achieved fraction of peak FLOP/s in prefill.
    #[serde(default = "d_prefill_mfu")]
    pub prefill_mfu: f64,
    /// Fraction of a worker's HBM the engine may use for weights and KV cache (vLLM
    /// `gpu_memory_utilization`, SGLang `mem_fraction_static`).
    #[serde(default = "d_mem_util")]
    pub memory_utilization: f64,
    /// KV-cache capacity of one worker, tokens. Absent: derived as
    /// (tp · hbm_gb · memory_utilization − 2N bytes) / kv_bytes_per_token; `inf` disables the limit.
    #[serde(default)]
    pub kv_capacity_tokens: Option<f64>,
    /// Per-sequence cost of one decode step, µs (scheduler, sampling, detokenisation).
    #[serde(default)]
    pub per_seq_overhead_us: f64,
    /// Latency of one all-reduce inside a TP group, µs (two per layer per decode step).
    #[serde(default)]
    pub allreduce_latency_us: f64,
    /// Fraction of dense peak the decode GEMMs reach (`2N` FLOPs per sequence per step, overlapping
    /// the weight read). Absent: decode compute is not modelled (memory bound only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_mfu: Option<f64>,
    /// Fraction of dense peak decode attention reaches (`4 · hidden · layers` FLOPs per cached
    /// token per step). Absent: attention compute is not modelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_efficiency: Option<f64>,
    /// Pinned groups one engine decodes at once (ROLL: a prompt's n-sample request pinned to one
    /// engine); further groups pinned there wait in its queue. Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_groups_per_engine: Option<u32>,
    /// How a pinned n-sample request is scheduled: `sequence` (each sample alone; absent) or
    /// `request` (admitted and preempted as one unit; see `admission.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission: Option<Admission>,
}

/// Scheduling unit of an engine's admission and preemption.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Admission {
    /// Every sequence on its own (vLLM V1, SGLang: an n-sample request becomes n requests).
    Sequence,
    /// A pinned group's samples together (vLLM V0 `SequenceGroup`).
    Request,
}
fn one() -> u32 {
    1
}
fn d_conc() -> u32 {
    256
}
fn d_overhead() -> f64 {
    5.0
}
fn d_bw_eff() -> f64 {
    0.6
}
fn d_prefill_mfu() -> f64 {
    0.4
}
fn d_mem_util() -> f64 {
    0.9
}

/// Training constants.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Training {
    /// Model FLOP utilisation of training: time = 6·N·tokens / (mfu · peak · gpus).
    #[serde(default = "d_mfu")]
    pub mfu: f64,
    /// Fixed time per update (optimizer step, logprob recompute bookkeeping), s.
    #[serde(default)]
    pub update_overhead_s: f64,
    /// Fixed latency of one weight synchronisation, s (added to 2N bytes / bandwidth).
    #[serde(default)]
    pub sync_overhead_s: f64,
    /// Fraction of GPUs given to training under disaggregated placement.
    #[serde(default = "d_train_fraction")]
    pub train_fraction: f64,
    /// Trainer tensor-parallel degree (absent: derived from the model size, see `train_parallel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tp: Option<u32>,
    /// Trainer pipeline-parallel degree (absent: derived).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pp: Option<u32>,
    /// Micro-batches per pipeline replica per step (absent: 4 · pp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micro_batches: Option<u32>,
}
fn d_mfu() -> f64 {
    0.35
}
fn d_train_fraction() -> f64 {
    0.25
}

/// The RL workload.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Prompts (groups) per training step, P.
    pub prompts_per_step: u32,
    /// Responses per prompt, n (group size).
    pub responses_per_prompt: u32,
    /// Prompt length, tokens.
    pub prompt_tokens: u32,
    /// Response length per generation turn, tokens.
    pub response_tokens: Dist,
    /// Cap on tokens generated per turn.
    pub max_response_tokens: u32,
    /// Per-prompt difficulty: lengths of one prompt's responses share a factor exp(σ_p · Z).
    #[serde(default)]
    pub prompt_difficulty_sigma: f64,
    /// Within-prompt length correlation ρ in [0, 1): a sample's standard-normal length deviate is
    /// `√ρ · Z_prompt + √(1 − ρ) · Z_sample` (Gaussian copula: the marginal distribution of
    /// `response_tokens` is unchanged, and the log-lengths of a lognormal correlate with ρ).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub prompt_correlation: f64,
    /// Generation turns per trajectory (rounded, at least 1). Default 1 (single-turn RLVR).
    #[serde(default)]
    pub turns: Option<Dist>,
    /// Observation tokens appended by the environment after each turn.
    #[serde(default)]
    pub obs_tokens_per_turn: u32,
    /// Environment step latency after each generation turn but the last, s.
    #[serde(default)]
    pub env_step_s: Option<Dist>,
    /// Environment reset latency before the first turn, s.
    #[serde(default)]
    pub env_reset_s: Option<Dist>,
    /// Reward latency per sample, s.
    #[serde(default)]
    pub reward_s: Option<Dist>,
    /// Probability that an environment step crashes (fail-stop): the trajectory restarts from reset.
    #[serde(default)]
    pub fail_stop_prob: f64,
    /// Probability that an environment step is slow (fail-slow).
    #[serde(default)]
    pub fail_slow_prob: f64,
    /// Latency multiplier of a fail-slow step.
    #[serde(default = "d_slow")]
    pub fail_slow_factor: f64,
}
fn is_zero(v: &f64) -> bool {
    *v == 0.0
}
fn d_slow() -> f64 {
    10.0
}

/// Whole-run phase structure.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Generate a batch, barrier, train, sync weights, repeat.
    Sync,
    /// Rollout runs continuously on inference GPUs, bounded by the async ratio α.
    Async,
    /// Async with α = 1.
    OneStepOffPolicy,
}

/// Where generation and training run.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// All GPUs generate, then all GPUs train (time-shared).
    Colocated,
    /// Separate inference and training GPUs (`train_fraction`).
    Disaggregated,
}

/// How requests reach inference workers.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Dispatch {
    /// Round-robin assignment at launch; rewards after the generation barrier.
    Static,
    /// Least-loaded worker / shared queue; rewards as soon as a response finishes.
    Queue,
}

/// One scheduling policy to simulate.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Name used in tables and validation cases.
    pub name: String,
    /// `sync`, `async` or `one_step_off_policy`.
    pub mode: Mode,
    /// `colocated` or `disaggregated` (async modes require disaggregated).
    #[serde(default = "d_placement")]
    pub placement: Placement,
    /// `static` or `queue`.
    #[serde(default = "d_dispatch")]
    pub dispatch: Dispatch,
    /// Each response of a prompt is its own request (else a prompt's group is pinned to one worker).
    #[serde(default)]
    pub prompt_replication: bool,
    /// Async ratio α (`inf` allowed): samples may be at most ⌈α⌉ versions stale.
    #[serde(default)]
    pub alpha: f64,
    /// Batch rollout (async modes): the rollout side launches a whole step's P groups at once, and
    /// the next batch only when none of its groups is still generating (arbor's `[async]`
    /// trainer and other batch-pipelined one-step off-policy designs); without it rollout refills
    /// group by group as capacity frees (ROLL Flash).
    #[serde(default)]
    pub batch_rollout: bool,
    /// Fixed batches (async, group-by-group refill): step s trains exactly the P prompts launched
    /// s-th, once all are complete, and a prompt of batch b launches only once b ≤ version + ⌈α⌉, so
    /// nothing is ever stale or aborted (arbor's `[async] mode = "continuous"`); without it the
    /// trainer takes the first P complete groups and aborts stale ones (ROLL Flash).
    #[serde(default)]
    pub fixed_batches: bool,
    /// Environment-level async: no barrier between trajectories' turns (multi-turn).
    #[serde(default)]
    pub env_async: bool,
    /// Tail batching: launch ⌈η·P⌉ prompts, keep the first P complete groups (η ≥ 1).
    #[serde(default = "d_eta")]
    pub tail_eta: f64,
    /// Partial rollout: unfinished samples at the cutoff pause and resume next step.
    #[serde(default)]
    pub partial_rollout: bool,
    /// Redundant environments: extra groups launched per step (first P complete count).
    #[serde(default)]
    pub redundant_groups: u32,
    /// Redundant environments: extra trajectories per group (first n complete count).
    #[serde(default)]
    pub group_size_redundancy: u32,
    /// Override of `training.train_fraction` for this policy.
    #[serde(default)]
    pub train_fraction: Option<f64>,
    /// Try train fractions 1/8, 1/4, 3/8, 1/2 and keep the fastest (a user-side tuning, not a fit).
    #[serde(default)]
    pub split_search: bool,
    /// Streaming training: the step's batch is trained in this many mini-batches, each as soon as
    /// its groups are complete, while the rest of the batch is still generating (1: batch-locked).
    #[serde(default = "d_mini")]
    pub train_mini_batches: u32,
    /// Phases of the training step this policy pays, beyond the 6N training pass (see
    /// [`crate::policy_cost`]). Absent: the legacy global charge (`training.update_overhead_s` and a
    /// weight sync over the placement's link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phases: Option<Vec<crate::policy_cost::CostPhase>>,
    /// Tail batching with long rounds (RollPacker): prompts aborted at a tail-batching cutoff wait in a
    /// long-prompt pool; when it holds P prompts the next step is a long round that trains them.
    #[serde(default)]
    pub long_rounds: bool,
    /// Interruptible generation (async modes, AReaL): at a weight update in-flight sequences are not
    /// aborted; they recompute their KV cache under the new weights (a prefill of their context) and
    /// continue, so their group counts as generated by the new version.
    #[serde(default)]
    pub interruptible: bool,
}
fn d_placement() -> Placement {
    Placement::Colocated
}
fn d_dispatch() -> Dispatch {
    Dispatch::Static
}
fn d_eta() -> f64 {
    1.0
}
fn d_mini() -> u32 {
    1
}

/// Which constant calibration scales.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Knob {
    /// `inference.bandwidth_efficiency`.
    BandwidthEfficiency,
    /// `inference.decode_overhead_ms`.
    DecodeOverhead,
    /// `training.mfu`.
    TrainMfu,
}

/// Calibrate one constant so the synchronous baseline matches a published step time.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// Name of the synchronous baseline policy.
    pub policy: String,
    /// Published mean step time of that baseline, s.
    pub step_s: f64,
    /// Constant to scale.
    #[serde(default = "d_knob")]
    pub knob: Knob,
}
fn d_knob() -> Knob {
    Knob::BandwidthEfficiency
}

/// What a validation case compares.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Throughput of `policy` / throughput of `baseline` (samples per second).
    Speedup,
    /// Mean step time of `policy`, s.
    StepS,
}

/// A published figure to reproduce.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Case name printed by `arbor sim validate`.
    pub name: String,
    /// `speedup` or `step_s`.
    pub metric: Metric,
    /// Policy whose result is predicted.
    pub policy: String,
    /// Baseline policy (for `speedup`).
    #[serde(default)]
    pub baseline: Option<String>,
    /// Published value.
    pub published: f64,
    /// Override of `hardware.gpus` for this case.
    #[serde(default)]
    pub gpus: Option<u32>,
    /// Override of `workload.prompts_per_step`.
    #[serde(default)]
    pub prompts_per_step: Option<u32>,
    /// Override of `workload.responses_per_prompt`.
    #[serde(default)]
    pub responses_per_prompt: Option<u32>,
    /// Known modelling gap, printed next to the result.
    #[serde(default)]
    pub note: Option<String>,
}

/// Bounds on a run (every loop has a limit).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Maximum events processed per policy run.
    #[serde(default = "d_events")]
    pub events_max: u64,
    /// Maximum simulated time per policy run, s.
    #[serde(default = "d_time")]
    pub sim_time_s_max: f64,
}
fn d_events() -> u64 {
    200_000_000
}
fn d_time() -> f64 {
    1e8
}
impl Default for Limits {
    fn default() -> Self {
        Limits { events_max: d_events(), sim_time_s_max: d_time() }
    }
}

/// A complete scenario file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name.
    pub name: String,
    /// What the scenario models.
    #[serde(default)]
    pub description: String,
    /// Where the published numbers come from, and the setup.
    #[serde(default)]
    pub source: String,
    /// Default seed (`--seed` overrides).
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// Training steps simulated per policy.
    pub steps: u32,
    /// Steps excluded from the mean step time (pipeline fill).
    #[serde(default)]
    pub warmup_steps: u32,
    pub hardware: Hardware,
    pub model: Model,
    #[serde(default = "d_inference")]
    pub inference: Inference,
    #[serde(default = "d_training")]
    pub training: Training,
    pub workload: Workload,
    #[serde(rename = "policy")]
    pub policies: Vec<Policy>,
    #[serde(default)]
    pub calibration: Option<Calibration>,
    #[serde(default, rename = "case")]
    pub cases: Vec<Case>,
    #[serde(default)]
    pub limits: Limits,
    /// Keys filled from `hardware.profile` (not written in the file).
    #[serde(skip)]
    pub from_profile: Vec<&'static str>,
}
fn d_seed() -> u64 {
    1
}
fn d_inference() -> Inference {
    toml::from_str("").expect("inference defaults")
}
fn d_training() -> Training {
    toml::from_str("").expect("training defaults")
}

impl Scenario {
    /// Parse and validate a scenario file; errors name the file and key.
    pub fn load(path: &Path) -> Result<Scenario> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read scenario {}", path.display()))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        Scenario::parse(&text, &base).with_context(|| format!("scenario {}", path.display()))
    }

    /// Parse from text; `base_dir` resolves CSV paths.
    ///
    /// Before typed deserialisation every float of the document is checked: `nan` and `-inf` are
    /// refused everywhere and `inf` everywhere but [`INF_ALLOWED`], with the dotted key in the error.
    /// [`Scenario::check`] then applies the range of each key.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Scenario> {
        let doc: toml::Table = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        refuse_non_finite_table(&doc, "")?;
        let mut sc: Scenario = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        sc.from_profile = crate::hardware::apply_profile(&mut sc, &doc)?;
        sc.check(base_dir)?;
        Ok(sc)
    }

    /// KV-cache capacity of one inference worker, tokens (`inf` when unlimited).
    pub fn kv_capacity_tokens(&self) -> f64 {
        let i = &self.inference;
        i.kv_capacity_tokens.unwrap_or_else(|| {
            let bytes = i.tp as f64 * self.hardware.hbm_gb * 1e9 * i.memory_utilization - 2e9 * self.model.params_b;
            (bytes / self.model.kv_bytes_per_token).floor()
        })
    }

    /// Look up a policy by name.
    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name)
    }
}
