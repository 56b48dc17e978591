//! Generation on the GPU with continuous batching, the CPU engine's contract (`rollout::generate`):
//! up to `max_batch` requests decode together, a finished one frees its KV-cache slot and the next
//! request starts in it at the next step; every request draws from its own stream
//! `Rng::derive(seed, [step, prompt_id, sample_index])`, one uniform per sampled token, so the
//! completions do not depend on the batch size and equal the CPU engine's wherever the logits agree.
//!
//! [`batch_loop`] is that loop over any one-token-per-slot decode step that also picks the tokens:
//! the GPU decoder (tokens drawn on the device), or on the host the CPU decode step with the
//! emulated sampling kernel, which tests/cuda/ holds against the CPU engine.
//! Prompts are fed one token per step (the device has no multi-token prefill kernel yet).

use crate::cuda::decode::{GpuDecoder, GpuKvCache};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::rollout::engine::{context_len, Active};
use crate::rollout::sampler::Sampled;
use crate::rollout::{Completion, GenerateConfig, Request};

/// One step of the loop: row r appends `tokens[r]` at position `positions[r]` of slot `slots[r]`
/// (position 0: the slot starts a new sequence) and, where `picks[r]`, returns the next token
/// drawn with `uniforms[r]` (0 where the row does not pick, or at temperature 0).
pub struct StepRows<'a> {
    pub tokens: &'a [u32],
    pub slots: &'a [usize],
    pub positions: &'a [usize],
    pub picks: &'a [bool],
    pub uniforms: &'a [f64],
}

/// Continuous batching of `requests` over `slots` slots of `max_len` tokens with `step`; returns
/// the completions in request order. Mirrors `rollout::engine::Slots` (admission in request order,
/// the same finish rules, forced lengths of `cfg.workload`), feeding one token per slot per step.
pub fn batch_loop(
    requests: &[Request],
    cfg: &GenerateConfig,
    slots: usize,
    max_len: usize,
    mut step: impl FnMut(StepRows<'_>) -> Result<Vec<Sampled>>,
) -> Result<Vec<Completion>> {
    let (temperature, max_new) = (cfg.sampling.temperature, cfg.sampling.max_new_tokens);
    let mut done: Vec<Option<Completion>> = vec![None; requests.len()];
    let mut free: Vec<usize> = (0..slots).rev().collect();
    let mut active: Vec<Active> = Vec::with_capacity(slots);
    let mut queue = 0;
    let (mut tokens, mut slot_ids, mut positions, mut picks, mut uniforms) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
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
        tokens.clear();
        slot_ids.clear();
        positions.clear();
        picks.clear();
        uniforms.clear();
        for a in active.iter_mut() {
            let prompt = &a.prompt;
            let (tok, pos, pick) = if a.fed < prompt.len() {
                a.fed += 1;
                (prompt[a.fed - 1], a.fed - 1, a.fed == prompt.len())
            } else {
                (a.next, prompt.len() + a.out.tokens.len() - 1, true)
            };
            tokens.push(tok);
            slot_ids.push(a.slot);
            positions.push(pos);
            picks.push(pick);
            uniforms.push(if pick && temperature > 0.0 { a.rng.uniform() } else { 0.0 });
        }
        let rows =
            StepRows { tokens: &tokens, slots: &slot_ids, positions: &positions, picks: &picks, uniforms: &uniforms };
        let picked = step(rows)?;
        if picked.len() != active.len() {
            return Err(Error::shape("decode step", format!("{} picks for {} rows", picked.len(), active.len())));
        }
        let mut i = 0;
        for (row, s) in picked.into_iter().enumerate() {
            if !picks[row] {
                i += 1;
                continue;
            }
            let a = &mut active[i];
            a.next = s.token;
            if a.out.push(s, a.target, cfg, positions[row] + 1, max_len) {
                let a = active.remove(i);
                free.push(a.slot);
                done[a.key] = Some(a.out);
            } else {
                i += 1;
            }
        }
    }
    done.into_iter()
        .enumerate()
        .map(|(i, c)| c.ok_or_else(|| Error::Invalid(format!("generate: request {i} was never completed"))))
        .collect()
}

impl GpuDecoder {
    /// `rollout::generate` on the GPU: continuous batching over `cfg.max_batch` device KV-cache
    /// slots, tokens drawn on the device (temperature, or greedy at 0). Top-k/top-p sampling is
    /// not on the device yet and is refused, naming the setting.
    pub fn generate(&mut self, model: &Model, requests: &[Request], cfg: &GenerateConfig) -> Result<Vec<Completion>> {
        let s = &cfg.sampling;
        if s.top_k != 0 || s.top_p < 1.0 {
            return Err(Error::Invalid(format!(
                "generation on the GPU samples with temperature only: top_k = {}, top_p = {} need the CPU",
                s.top_k, s.top_p
            )));
        }
        let max_len = context_len(model, requests, cfg)?;
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let slots = cfg.max_batch.min(requests.len());
        let mut cache = GpuKvCache::new(self.gpu(), model, slots, max_len)?;
        batch_loop(requests, cfg, slots, max_len, |rows| {
            for (&slot, &pos) in rows.slots.iter().zip(rows.positions) {
                cache.len[slot] = pos;
            }
            self.step_sampled(model, rows.tokens, rows.slots, &mut cache, rows.uniforms, s.temperature)
        })
    }
}
