//! What a GPU run will hold on a training rank's device, part by part, from its config alone:
//! printed by `arbor train --check` (without a GPU too) and at the start of a `device = "cuda"`
//! run beside the device's own memory, with the keys to change where it does not fit, before an
//! allocation fails minutes into the run.
//!
//! The parts: the model's state (f32 weights, gradients and two AdamW moments, 16 bytes a
//! parameter, and the bf16 image of the weights with `dtype = "bf16"`), the KL reference's and the
//! critics'; then the largest of what the phases hold for a while: the supervised step's
//! workspace, RL generation's KV cache and decode buffers, the RL update's workspace for its
//! largest micro-batch (its sizes computed as the workspace computes them:
//! [`crate::model::workspace::planned_bytes`]), and the attention-statistics pass's. Freed device
//! memory is reused (the memory pool, `cuda::pool`), so the phases do not add up. It is an
//! estimate, not a bound: sequence lengths are the longest of a sample of the training problems
//! (prompt, and prompt + solution for the supervised phase; plus `rl.max_new_tokens` for RL), and
//! small buffers are left out.

use crate::config::{Dtype, RunConfig};
use crate::error::Result;
use crate::model::workspace::{planned_bytes, BufferSizes};
use crate::model::ModelConfig;
use crate::tasks::{Task, SPLIT_TRAIN};
use crate::tokenizer::TextCodec;

/// Training problems whose longest prompt and sequence set the planned lengths.
pub const SAMPLE_PROMPTS: u64 = 256;

pub use crate::tensor::backend::gpu_head_chunk;

/// The LM-head chunk of a GPU of 64 GiB or more, where the plan does not know the device.
pub const LARGE_GPU_HEAD_CHUNK: usize = 1 << 30;

/// One part of the plan: what it is, its bytes, and the keys that size it.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub what: String,
    pub bytes: u128,
    pub keys: &'static str,
}

/// A training rank's device memory, by part (see the module's notes).
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPlan {
    /// Held for the whole run.
    pub resident: Vec<Part>,
    /// Held by one phase or pass at a time: the largest counts.
    pub phases: Vec<Part>,
    /// The job's (dp, tp) the plan is for.
    pub grid: (usize, usize),
}

/// The longest prompt and the longest supervised sequence (prompt, solution, end of sequence),
/// in tokens as the run encodes them, among the first [`SAMPLE_PROMPTS`] training problems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lengths {
    pub prompt: usize,
    pub sequence: usize,
}

impl Lengths {
    /// The lengths of `task`'s sampled problems.
    pub fn of(task: &dyn Task, codec: &TextCodec) -> Result<Lengths> {
        let n = task.len(SPLIT_TRAIN).unwrap_or(SAMPLE_PROMPTS).min(SAMPLE_PROMPTS);
        let mut out = Lengths::default();
        for i in 0..n {
            let p = task.problem(SPLIT_TRAIN, i);
            let prompt = codec.prompt_len(&p.prompt)?;
            let solution = match &p.solution {
                Some(s) => codec.text_len(s)? + 1,
                None => 0,
            };
            out.prompt = out.prompt.max(prompt);
            out.sequence = out.sequence.max(prompt + solution);
        }
        Ok(out)
    }
}

fn gib(b: u128) -> f64 {
    b as f64 / (1u128 << 30) as f64
}

impl MemoryPlan {
    /// The plan of a training rank of `cfg` whose model is `model` (this rank's shard under
    /// tensor parallelism, of the whole model `full`, which the critics' sizes derive from), `dp`
    /// data-parallel ranks, problems of `lengths`, and an LM-head chunk of `head_chunk` logits (the
    /// device's: [`LARGE_GPU_HEAD_CHUNK`] where unknown).
    pub fn of(
        cfg: &RunConfig,
        (model, full): (&ModelConfig, &ModelConfig),
        lengths: Lengths,
        dp: usize,
        head_chunk: usize,
    ) -> Result<MemoryPlan> {
        let bf16 = cfg.train.dtype == Dtype::Bf16;
        // weights and gradients, the moments (a rank's part where they are sharded), the image
        let dp_parts = if cfg.parallel.shard_optimizer { dp.max(1) as u128 } else { 1 };
        let image_bytes = |p: u128| if bf16 { 2 * p } else { 0 };
        let state = |p: u128, parts: u128| 8 * p + (8 * p).div_ceil(parts) + image_bytes(p);
        let frozen = |p: u128| p * if bf16 { 6 } else { 4 };
        let params = model.num_params() as u128;
        let image = if bf16 { " and its bf16 image" } else { "" };
        let moments = match dp_parts {
            1 => "AdamW moments".to_string(),
            n => format!("1/{n} of the AdamW moments"),
        };
        let mut resident = vec![Part {
            what: format!("policy: {params} parameters' f32 weights, gradients, {moments}{image}"),
            bytes: state(params, dp_parts),
            keys: "[model], parallel.tp, parallel.shard_optimizer",
        }];
        let rl = cfg.rl.as_ref();
        if rl.is_some() && cfg.loss.as_ref().is_some_and(|l| l.kl_coef > 0.0) {
            resident.push(Part {
                what: format!("KL reference: its weights{image}"),
                bytes: frozen(params),
                keys: "loss.kl_coef",
            });
        }
        if let Some(c) = &cfg.critic {
            let p = c.model_config(full)?.num_params() as u128;
            resident.push(Part {
                what: format!("{} critics of {p} parameters: weights, gradients, AdamW moments{image}", c.count),
                bytes: c.count as u128 * state(p, 1),
                keys: "critic.count, critic sizes",
            });
        }
        // (the attention's scratch: a float per head and token, its f32 kernels' least)
        let sizes = |n: usize| BufferSizes {
            act_bytes: if bf16 { 2 } else { 4 },
            head_chunk_elems: head_chunk,
            attn_scratch: n * model.num_heads,
        };
        let ckpt = cfg.train.gradient_checkpointing;
        let mode = if ckpt { "checkpointed" } else { "every layer kept" };
        let ctx = model.max_position_embeddings;
        let mut phases = Vec::new();
        if cfg.train.steps > 0 {
            let n = (cfg.train.batch_size.div_ceil(dp.max(1)) * lengths.sequence.min(ctx)).max(1);
            phases.push(Part {
                what: format!("supervised step: activations of up to {n} tokens ({mode})"),
                bytes: planned_bytes(model, n, ckpt, sizes(n)),
                keys: "train.batch_size, train.gradient_checkpointing",
            });
        }
        if let Some(rl) = rl {
            let len = (lengths.prompt + rl.max_new_tokens).min(ctx).max(1);
            let requests = (rl.prompts_per_step * rl.samples_per_prompt as usize).div_ceil(dp.max(1));
            let evals = (rl.eval_problems * rl.eval_samples as usize).div_ceil(dp.max(1));
            let slots = rl.max_batch.min(requests.max(evals)).max(1);
            let kv_elem = if bf16 { 2 } else { 4 };
            let kv = 2 * (model.num_layers * model.kv_cache_elems(slots, len) * kv_elem) as u128;
            let row = 2 * model.hidden_size + model.qkv_dim() + model.attn_dim() + 3 * model.intermediate_size;
            let decode = 4 * (crate::tensor::backend::GPU_DECODE_ROWS * row + slots * model.vocab_size) as u128;
            phases.push(Part {
                what: format!("generation: KV cache of {slots} sequences × {len} positions, decode buffers"),
                bytes: kv + decode,
                keys: "rl.max_batch, rl.max_new_tokens",
            });
            let per_mini = requests.div_ceil(rl.mini_batches.max(1)).max(1);
            let seqs = if rl.micro_batch > 0 { rl.micro_batch.min(per_mini) } else { per_mini };
            let mut n = seqs * len;
            if rl.micro_batch_tokens > 0 {
                n = n.min(rl.micro_batch_tokens.max(len));
            }
            phases.push(Part {
                what: format!("RL update: activations of a micro-batch of up to {n} tokens ({mode})"),
                bytes: planned_bytes(model, n, ckpt, sizes(n)),
                keys: "rl.micro_batch_tokens, rl.micro_batch, train.gradient_checkpointing",
            });
            if cfg.attnrl.is_some() || cfg.rhythm.is_some() {
                phases.push(Part {
                    what: format!("attention statistics: activations of {n} tokens, every layer kept"),
                    bytes: planned_bytes(model, n, false, sizes(n)),
                    keys: "rl.micro_batch_tokens, rl.micro_batch",
                });
            }
        }
        Ok(MemoryPlan { resident, phases, grid: (dp.max(1), cfg.parallel.tp) })
    }

    /// The largest phase.
    fn peak(&self) -> Option<&Part> {
        self.phases.iter().max_by_key(|p| p.bytes)
    }

    /// The resident parts and the largest phase.
    pub fn total(&self) -> u128 {
        self.resident.iter().map(|p| p.bytes).sum::<u128>() + self.peak().map_or(0, |p| p.bytes)
    }

    /// The plan as lines for a log, against the device's `device` bytes where known.
    pub fn lines(&self, device: Option<u64>) -> Vec<String> {
        let against = match device {
            Some(d) => format!(" of the device's {:.1} GiB", gib(d as u128)),
            None => " (no device here to compare with)".into(),
        };
        let (dp, tp) = self.grid;
        let rank = format!("a training rank of dp {dp} × tp {tp}");
        let mut out = vec![format!("device memory plan, {rank}: about {:.1} GiB{against}", gib(self.total()))];
        for p in &self.resident {
            out.push(format!("  {:>8.2} GiB  {}", gib(p.bytes), p.what));
        }
        let peak = self.peak().map(|p| p.what.clone());
        for p in &self.phases {
            let mark = if Some(&p.what) == peak.as_ref() { " <- the largest phase" } else { "" };
            out.push(format!("  {:>8.2} GiB  {}{mark}", gib(p.bytes), p.what));
        }
        out
    }

    /// Where the plan exceeds `device` bytes: what it needs, and the keys of its largest parts.
    pub fn over(&self, device: u64) -> Option<String> {
        let need = self.total();
        (need > device as u128).then(|| {
            let mut parts: Vec<&Part> = self.resident.iter().chain(self.peak()).collect();
            parts.sort_by_key(|p| std::cmp::Reverse(p.bytes));
            let keys: Vec<String> = parts.iter().take(2).map(|p| format!("{} ({})", p.keys, p.what)).collect();
            format!(
                "the plan needs about {:.1} GiB, more than the device's {:.1} GiB: the largest parts are sized by {}",
                gib(need),
                gib(device as u128),
                keys.join("; ")
            )
        })
    }
}
