//! Generation on the GPU with continuous batching, the CPU engine's contract (`rollout::generate`)
//! and its loop (`rollout::slots`): up to `max_batch` requests decode together, a finished one
//! frees its KV-cache slot and the next request starts in it at the next step; every request
//! draws from its own stream `Rng::derive(seed, [step, prompt_id, sample_index])`, one uniform per
//! sampled token, so a completion depends on its own uniforms and logits only, and equals the CPU
//! engine's wherever the logits agree. The logits themselves may differ in the last bits with the
//! step's row count (the decode attention's splits, cuBLAS's kernel choice, padding rows) and,
//! from 256 positions on, with the KV cache's length (the call's longest prompt plus its
//! `max_new_tokens`, from which the decode attention's splits are cut), so on the GPU, unlike the
//! CPU, a token within rounding of a sampling boundary may change with the batch size or the
//! other requests of the call (deterministically: the same requests give the same tokens). A newly admitted request's prompt goes in as one chunk of rows (up to
//! [`MAX_ROWS`] rows a step), next to one row per decoding request.

use crate::cuda::decode::GpuDecoder;
use crate::cuda::kv_cache::GpuKvCache;
use crate::cuda::model::DeviceWeights;
use crate::error::Result;
use crate::model::Model;
use crate::rollout::engine::context_len;
use crate::rollout::sampler::Sampled;
use crate::rollout::slots::{run_requests, LoopStep};
use crate::rollout::{Completion, GenerateConfig, Request};

/// Rows one step may hold (prompt chunks wait for the next step beyond it).
pub const MAX_ROWS: usize = crate::tensor::backend::GPU_DECODE_ROWS;

impl GpuDecoder {
    /// `rollout::generate` on the GPU: continuous batching over `cfg.max_batch` device KV-cache
    /// slots, tokens drawn on the device (temperature, top-k, top-p, or greedy at 0).
    pub fn generate(
        &mut self,
        model: &Model,
        w: DeviceWeights<'_>,
        requests: &[Request],
        cfg: &GenerateConfig,
    ) -> Result<Vec<Completion>> {
        let max_len = context_len(model, requests, cfg)?;
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let slots = cfg.max_batch.min(requests.len());
        let mut cache = GpuKvCache::new(self.gpu(), model, slots, max_len)?;
        run_requests(requests, cfg, (slots, max_len, MAX_ROWS), |step| self.loop_step(model, w, step, &mut cache))
    }

    /// One step of the continuous-batching loop (`rollout::Slots`) with the tokens drawn on the
    /// device: the starting slots' cache lengths reset, then [`GpuDecoder::step_sampled`].
    pub fn loop_step(
        &mut self,
        model: &Model,
        w: DeviceWeights<'_>,
        step: LoopStep<'_>,
        cache: &mut GpuKvCache,
    ) -> Result<Vec<Sampled>> {
        for &slot in step.starts {
            cache.len[slot] = 0;
        }
        self.step_sampled(model, w, step.input, cache, step.sampling)
    }
}
