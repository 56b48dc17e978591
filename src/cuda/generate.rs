//! Generation on the GPU with continuous batching, the CPU engine's contract (`rollout::generate`):
//! up to `max_batch` requests decode together, a finished one frees its KV-cache slot and the next
//! request starts in it at the next step; every request draws from its own stream
//! `Rng::derive(seed, [step, prompt_id, sample_index])`, one uniform per sampled token, so a
//! completion depends on its own uniforms and logits only, and equals the CPU engine's wherever the
//! logits agree. The logits themselves may differ in the last bits with the step's row count (the
//! decode attention's splits, cuBLAS's kernel choice, padding rows), so on the GPU, unlike the CPU,
//! a token within rounding of a sampling boundary may change with the batch size.
//!
//! [`batch_loop`] is that loop over any decode step that also picks the tokens: the GPU decoder
//! (tokens drawn on the device), or on the host the CPU decode step with the emulated sampling
//! kernel, which tests/cuda/ holds against the CPU engine. A newly admitted request's prompt goes
//! in as one chunk of rows (up to [`MAX_ROWS`] rows a step), next to one row per decoding request.

use crate::cuda::decode::{GpuDecoder, StepInput};
use crate::cuda::kv_cache::GpuKvCache;
use crate::cuda::model::DeviceWeights;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::rollout::engine::{context_len, Active, StepRows};
use crate::rollout::sampler::Sampled;
use crate::rollout::{Completion, GenerateConfig, Request};

/// Rows one step may hold (prompt chunks wait for the next step beyond it).
pub const MAX_ROWS: usize = 8192;

/// One step of the loop: `input`'s rows (a slot's rows take its next positions), the next token
/// drawn for its logit rows; `starts` are the slots that begin a new sequence at this step (their
/// cache length must be reset to 0 before it).
pub struct LoopStep<'a> {
    pub input: StepInput<'a>,
    pub starts: &'a [usize],
}

/// Continuous batching of `requests` over `slots` slots of `max_len` tokens with `step`; returns
/// the completions in request order. Mirrors `rollout::engine::Slots` (admission in request order,
/// the same finish rules, forced lengths of `cfg.workload`); `step` returns one pick per logit row.
pub fn batch_loop(
    requests: &[Request],
    cfg: &GenerateConfig,
    slots: usize,
    max_len: usize,
    mut step: impl FnMut(LoopStep<'_>) -> Result<Vec<Sampled>>,
) -> Result<Vec<Completion>> {
    let (temperature, max_new) = (cfg.sampling.temperature, cfg.sampling.max_new_tokens);
    let mut done: Vec<Option<Completion>> = vec![None; requests.len()];
    let mut free: Vec<usize> = (0..slots).rev().collect();
    let mut active: Vec<Active> = Vec::with_capacity(slots);
    let mut queue = 0;
    let (mut rows, mut uniforms) = (StepRows::default(), Vec::new());
    loop {
        while !free.is_empty() && queue < requests.len() {
            let r = &requests[queue];
            if max_new == 0 {
                done[queue] = Some(Completion::empty(r));
            } else {
                let slot = free.pop().unwrap_or_default();
                active.push(Active::new(queue, r, slot, cfg.step, cfg));
            }
            queue += 1;
        }
        if active.is_empty() {
            break;
        }
        rows.plan(&mut active, MAX_ROWS);
        uniforms.clear();
        for &i in &rows.picking {
            uniforms.push(if temperature > 0.0 { active[i].rng.uniform() } else { 0.0 });
        }
        let input =
            StepInput { tokens: &rows.tokens, slots: &rows.slots, logit_rows: &rows.logit_rows, uniforms: &uniforms };
        let picked = step(LoopStep { input, starts: &rows.starts })?;
        let picking = &rows.picking;
        if picked.len() != picking.len() {
            return Err(Error::shape(
                "decode step",
                format!("{} picks for {} logit rows", picked.len(), picking.len()),
            ));
        }
        let mut finished = vec![false; active.len()];
        for (s, &i) in picked.into_iter().zip(picking) {
            let a = &mut active[i];
            a.next = s.token;
            // the slot holds the prompt and every token fed so far
            let held = a.prompt.len() + a.out.tokens.len();
            finished[i] = a.out.push(s, a.target, cfg, held, max_len);
        }
        let mut k = 0;
        active.retain_mut(|a| {
            let keep = !finished[k];
            k += 1;
            if !keep {
                free.push(a.slot);
                done[a.key] = Some(std::mem::replace(&mut a.out, Completion::empty(&requests[a.key])));
            }
            keep
        });
    }
    done.into_iter()
        .enumerate()
        .map(|(i, c)| c.ok_or_else(|| Error::Invalid(format!("generate: request {i} was never completed"))))
        .collect()
}

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
        let s = &cfg.sampling;
        let max_len = context_len(model, requests, cfg)?;
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let slots = cfg.max_batch.min(requests.len());
        let mut cache = GpuKvCache::new(self.gpu(), model, slots, max_len)?;
        batch_loop(requests, cfg, slots, max_len, |step| {
            for &slot in step.starts {
                cache.len[slot] = 0;
            }
            self.step_sampled(model, w, step.input, &mut cache, s)
        })
    }
}
