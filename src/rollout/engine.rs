//! Batched autoregressive generation with continuous batching: up to `max_batch` sequences
//! decode together; a finished sequence frees its KV-cache slot and the next request's prompt
//! goes into it at the next step, alongside the other slots' decode rows (queue scheduling, no
//! batch barrier).
//!
//! Every request's random stream is `Rng::derive(seed, [step, prompt_id, sample_index])`, so a
//! completion does not depend on batch size, slot assignment or rank count.

use crate::error::{Error, Result};
use crate::model::decode::DecodeWeights;
use crate::model::Model;
use crate::rollout::request::{Completion, GenerateConfig, Request};
use crate::rollout::slots::{HostStep, Slots};
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Most rows one shard runs through the model per step: decode rows always go in; prompts are
/// fed (in chunks if need be) into what is left, which bounds the step buffers.
pub const ROWS_PER_STEP: usize = 256;

/// The checks every generation backend makes of `requests` (a positive `max_batch`, non-empty
/// prompts inside the vocabulary, room for one new token), and the KV-cache length per slot:
/// the longest prompt plus `max_new_tokens`, capped by the model's context.
pub fn context_len(model: &Model, requests: &[Request], cfg: &GenerateConfig) -> Result<usize> {
    if cfg.max_batch == 0 {
        return Err(Error::Invalid("generate: max_batch must be positive".into()));
    }
    let v = model.cfg.vocab_size;
    for (i, r) in requests.iter().enumerate() {
        if r.prompt.is_empty() {
            return Err(Error::Invalid(format!("generate: request {i} has an empty prompt")));
        }
        if let Some(t) = r.prompt.iter().find(|&&t| t as usize >= v) {
            return Err(Error::Invalid(format!("generate: request {i}: token {t} outside the vocabulary")));
        }
    }
    let longest = requests.iter().map(|r| r.prompt.len()).max().unwrap_or(0);
    let max_len = (longest + cfg.sampling.max_new_tokens).min(model.cfg.max_position_embeddings);
    if longest >= max_len.max(1) && !requests.is_empty() {
        return Err(Error::Invalid(format!(
            "generate: a prompt of {longest} tokens leaves no room under max_position_embeddings = {}",
            model.cfg.max_position_embeddings
        )));
    }
    Ok(max_len)
}

/// Generate completions for all requests; results are returned in request order.
///
/// The slots are split into one shard per thread of the rayon pool; each shard runs its own
/// continuous-batching loop (no synchronisation between shards) and takes the next request from
/// a shared queue whenever one of its slots frees. The decode kernels are row-wise and
/// batch-invariant, so a completion is bit-identical whichever shard, slot or batch it runs in.
pub fn generate(model: &Model, requests: &[Request], cfg: &GenerateConfig) -> Result<Vec<Completion>> {
    let max_len = context_len(model, requests, cfg)?;
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let weights = DecodeWeights::new(model);
    let slots = cfg.max_batch.min(requests.len());
    // a tensor-parallel group steps its decode loop in lockstep (every step all-reduces), so
    // it runs one loop per rank; otherwise one loop per thread
    let threads = if model.tp.is_some() { 1 } else { rayon::current_num_threads() };
    let shards = threads.clamp(1, slots);
    let (next, failed) = (AtomicUsize::new(0), AtomicBool::new(false));
    let queue = Queue { next: &next, failed: &failed };
    let shard = |s: usize| {
        let n = slots / shards + usize::from(s < slots % shards);
        let r = run_shard(model, &weights, requests, cfg, n, max_len, queue);
        if r.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        r
    };
    let parts: Vec<Result<Vec<(usize, Completion)>>> =
        if shards == 1 { vec![shard(0)] } else { (0..shards).into_par_iter().map(shard).collect() };
    let mut done: Vec<Option<Completion>> = vec![None; requests.len()];
    for part in parts {
        for (i, c) in part? {
            done[i] = Some(c);
        }
    }
    done.into_iter()
        .enumerate()
        .map(|(i, c)| c.ok_or_else(|| Error::Invalid(format!("generate: request {i} was never completed"))))
        .collect()
}

/// The request queue the shards share: the index of the next request to admit, and whether a
/// shard has failed (the others then stop admitting).
#[derive(Clone, Copy)]
struct Queue<'a> {
    next: &'a AtomicUsize,
    failed: &'a AtomicBool,
}

/// One shard's continuous-batching loop over `slots` cache slots: admit requests from `queue`
/// into free slots, run one step, collect finished sequences; until the queue is drained and no
/// slot is busy.
fn run_shard(
    model: &Model,
    weights: &DecodeWeights,
    requests: &[Request],
    cfg: &GenerateConfig,
    slots: usize,
    max_len: usize,
    queue: Queue<'_>,
) -> Result<Vec<(usize, Completion)>> {
    let Queue { next: queue, failed } = queue;
    let mut state = Slots::new(slots, max_len, ROWS_PER_STEP);
    let mut host = HostStep::new(model, slots, max_len);
    let mut done = Vec::new();
    loop {
        while state.has_free() {
            let req = queue.fetch_add(1, Ordering::Relaxed);
            if req >= requests.len() || failed.load(Ordering::Relaxed) {
                break;
            }
            if let Some(c) = state.admit(req, &requests[req], cfg.step, cfg) {
                done.push((req, c));
            }
        }
        if state.busy() == 0 {
            break;
        }
        done.extend(state.step(cfg, |step| host.run(model, weights, step))?);
        if failed.load(Ordering::Relaxed) {
            break;
        }
    }
    Ok(done)
}
