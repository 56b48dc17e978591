//! Batched autoregressive generation with continuous batching: up to `max_batch` sequences
//! decode together; a finished sequence frees its KV-cache slot and the next request is
//! prefilled into it at once (queue scheduling, no batch barrier).
//!
//! Every request's random stream is `Rng::derive(seed, [step, prompt_id, sample_index])`, so a
//! completion does not depend on batch size, slot assignment or rank count.

use crate::error::{Error, Result};
use crate::model::decode::{DecodeBuffers, KvCache};
use crate::model::{Model, Workspace};
use crate::rng::Rng;
use crate::rollout::sampler::{sample, SamplingParams};
use std::collections::VecDeque;

/// One generation request: sample `sample_index` of prompt `prompt_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub prompt_id: u64,
    pub sample_index: u32,
    pub prompt: Vec<u32>,
}

/// Why a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Produced a stop token (included in `tokens`).
    Stop,
    /// Reached `max_new_tokens` or the context length.
    Length,
}

/// A finished request: response tokens with behaviour log-probs and entropies.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub prompt_id: u64,
    pub sample_index: u32,
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub entropies: Vec<f32>,
    pub finish: Finish,
}

/// Generation settings.
#[derive(Debug, Clone)]
pub struct GenerateConfig {
    pub sampling: SamplingParams,
    /// Tokens that end a response (e.g. EOS).
    pub stop_tokens: Vec<u32>,
    pub seed: u64,
    /// Training step (part of every request's random stream).
    pub step: u64,
    /// Sequences decoded together.
    pub max_batch: usize,
}

struct Active {
    req: usize,
    slot: usize,
    rng: Rng,
    out: Completion,
    next: u32,
}

/// Generate completions for all requests; results are returned in request order.
pub fn generate(model: &Model, requests: &[Request], cfg: &GenerateConfig) -> Result<Vec<Completion>> {
    if cfg.max_batch == 0 {
        return Err(Error::Invalid("generate: max_batch must be positive".into()));
    }
    let v = model.cfg.vocab_size;
    let longest = requests.iter().map(|r| r.prompt.len()).max().unwrap_or(0);
    let max_len = (longest + cfg.sampling.max_new_tokens).min(model.cfg.max_position_embeddings);
    if longest >= max_len.max(1) && !requests.is_empty() {
        return Err(Error::Invalid(format!(
            "generate: a prompt of {longest} tokens leaves no room under max_position_embeddings = {}",
            model.cfg.max_position_embeddings
        )));
    }
    let slots = cfg.max_batch.min(requests.len().max(1));
    let mut cache = KvCache::new(model, slots, max_len.max(1));
    let mut buf = DecodeBuffers::new(model, slots);
    let mut ws = Workspace::new(&model.cfg, 0);
    let mut logits = vec![0.0f32; v];
    let mut scratch = Vec::new();
    let mut queue: VecDeque<usize> = (0..requests.len()).collect();
    let mut free: Vec<usize> = (0..slots).rev().collect();
    let mut active: Vec<Active> = Vec::with_capacity(slots);
    let mut done: Vec<Option<Completion>> = vec![None; requests.len()];
    let (mut tokens, mut slot_ids) = (Vec::with_capacity(slots), Vec::with_capacity(slots));

    // Sample from `z` for request `a`; returns true when the request is finished.
    let push = |a: &mut Active, z: &[f32], cache_len: usize, scratch: &mut Vec<(f32, u32)>| -> bool {
        let s = sample(z, &cfg.sampling, &mut a.rng, scratch);
        a.out.tokens.push(s.token);
        a.out.logprobs.push(s.logprob);
        a.out.entropies.push(s.entropy);
        a.next = s.token;
        if cfg.stop_tokens.contains(&s.token) {
            a.out.finish = Finish::Stop;
            true
        } else {
            a.out.tokens.len() >= cfg.sampling.max_new_tokens || cache_len >= max_len
        }
    };

    loop {
        // Refill free slots from the queue: one packed prefill for all of them, then each
        // request's first token.
        let n_new = free.len().min(queue.len());
        if n_new > 0 {
            let reqs: Vec<usize> = queue.drain(..n_new).collect();
            let new_slots: Vec<usize> = (0..n_new).filter_map(|_| free.pop()).collect();
            let prompts: Vec<&[u32]> = reqs.iter().map(|&r| requests[r].prompt.as_slice()).collect();
            if logits.len() < n_new * v {
                logits.resize(n_new * v, 0.0);
            }
            model.prefill_many(&prompts, &new_slots, &mut cache, &mut ws, &mut logits)?;
            for (i, (&req, &slot)) in reqs.iter().zip(&new_slots).enumerate() {
                let r = &requests[req];
                let mut a = Active {
                    req,
                    slot,
                    rng: Rng::derive(cfg.seed, &[cfg.step, r.prompt_id, r.sample_index as u64]),
                    out: Completion {
                        prompt_id: r.prompt_id,
                        sample_index: r.sample_index,
                        tokens: Vec::new(),
                        logprobs: Vec::new(),
                        entropies: Vec::new(),
                        finish: Finish::Length,
                    },
                    next: 0,
                };
                let z = &logits[i * v..(i + 1) * v];
                if cfg.sampling.max_new_tokens == 0 || push(&mut a, z, cache.len[slot], &mut scratch) {
                    free.push(slot);
                    done[req] = Some(a.out);
                } else {
                    active.push(a);
                }
            }
            // requests that finished at their first token freed slots: refill before decoding
            if active.len() < slots && !queue.is_empty() {
                continue;
            }
        }
        if active.is_empty() {
            break;
        }
        tokens.clear();
        slot_ids.clear();
        tokens.extend(active.iter().map(|a| a.next));
        slot_ids.extend(active.iter().map(|a| a.slot));
        model.decode_step(&tokens, &slot_ids, &mut cache, &mut buf)?;
        let mut i = 0;
        let mut row = 0;
        while i < active.len() {
            let z = &buf.logits[row * v..(row + 1) * v];
            row += 1;
            let cache_len = cache.len[active[i].slot];
            if push(&mut active[i], z, cache_len, &mut scratch) {
                let a = active.remove(i);
                free.push(a.slot);
                done[a.req] = Some(a.out);
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
