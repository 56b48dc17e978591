//! Batched autoregressive generation with continuous batching: up to `max_batch` sequences
//! decode together; a finished sequence frees its KV-cache slot and the next request's prompt
//! goes into it at the next step, alongside the other slots' decode rows (queue scheduling, no
//! batch barrier).
//!
//! Every request's random stream is `Rng::derive(seed, [step, prompt_id, sample_index])`, so a
//! completion does not depend on batch size, slot assignment or rank count.

use crate::error::{Error, Result};
use crate::model::decode::{DecodeBuffers, DecodeWeights, KvCache};
use crate::model::Model;
use crate::rng::Rng;
use crate::rollout::sampler::{sample, Sampled, SamplingParams};
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// One generation request: sample `sample_index` of prompt `prompt_id`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Request {
    pub prompt_id: u64,
    pub sample_index: u32,
    pub prompt: Vec<u32>,
}

/// Why a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Finish {
    /// Produced a stop token (included in `tokens`).
    Stop,
    /// Reached `max_new_tokens` or the context length.
    Length,
}

/// A finished request: response tokens with behaviour log-probs and entropies.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Completion {
    pub prompt_id: u64,
    pub sample_index: u32,
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub entropies: Vec<f32>,
    pub finish: Finish,
}

impl Completion {
    /// The empty completion of request `r` (finish `Length` until a stop token says otherwise).
    pub fn empty(r: &Request) -> Self {
        Completion {
            prompt_id: r.prompt_id,
            sample_index: r.sample_index,
            tokens: Vec::new(),
            logprobs: Vec::new(),
            entropies: Vec::new(),
            finish: Finish::Length,
        }
    }

    /// Append a sampled token and say whether the completion has ended: on a stop token (unless
    /// a forced length `target` is set: then only at that length), at `max_new_tokens`, or when
    /// its slot, holding `held` tokens, has no room for the next one under `max_len`.
    pub fn push(
        &mut self,
        s: Sampled,
        target: Option<usize>,
        cfg: &GenerateConfig,
        held: usize,
        max_len: usize,
    ) -> bool {
        self.tokens.push(s.token);
        self.logprobs.push(s.logprob);
        self.entropies.push(s.entropy);
        if target.is_none() && cfg.stop_tokens.contains(&s.token) {
            self.finish = Finish::Stop;
        }
        self.finish == Finish::Stop
            || target.is_some_and(|t| self.tokens.len() >= t)
            || self.tokens.len() >= cfg.sampling.max_new_tokens
            || held + 1 >= max_len
    }
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
    /// Long-tail workload mode: forced lengths and a least decode-step time (`[workload]`).
    pub workload: Option<crate::rollout::WorkloadConfig>,
}

/// Most rows one shard runs through the model per step: decode rows always go in; prompts are
/// fed (in chunks if need be) into what is left, which bounds the step buffers.
const ROWS_PER_STEP: usize = 256;

/// A request in a KV-cache slot (also the GPU generation loop's, cuda/generate.rs).
pub(crate) struct Active {
    /// The caller's key of the request (its index in `generate`).
    pub(crate) key: usize,
    pub(crate) prompt: Vec<u32>,
    pub(crate) slot: usize,
    /// The request's stream: `Rng::derive(seed, [stream_step, prompt_id, sample_index])`.
    pub(crate) rng: Rng,
    pub(crate) out: Completion,
    /// Prompt tokens already in the cache.
    pub(crate) fed: usize,
    pub(crate) next: u32,
    /// Forced response length (workload mode).
    pub(crate) target: Option<usize>,
}

impl Active {
    /// Request `r` (the caller's `key`) starting in `slot`, its stream and forced length keyed by
    /// `stream_step` and its coordinates.
    pub(crate) fn new(key: usize, r: &Request, slot: usize, stream_step: u64, cfg: &GenerateConfig) -> Self {
        let rng = Rng::derive(cfg.seed, &[stream_step, r.prompt_id, r.sample_index as u64]);
        let target = cfg
            .workload
            .as_ref()
            .map(|w| w.length(cfg.seed, stream_step, r.prompt_id, r.sample_index, cfg.sampling.max_new_tokens));
        Active { key, prompt: r.prompt.clone(), slot, rng, out: Completion::empty(r), fed: 0, next: 0, target }
    }
}

/// The rows of one continuous-batching step (the CPU engine's and the GPU loop's,
/// `cuda::generate::batch_loop`): a row per decoding sequence and the next chunk of each admitted
/// prompt, in slot order, within a budget of rows.
#[derive(Debug, Default)]
pub(crate) struct StepRows {
    pub(crate) tokens: Vec<u32>,
    pub(crate) slots: Vec<usize>,
    /// The rows whose next token is drawn, and the index in `active` of each.
    pub(crate) logit_rows: Vec<usize>,
    pub(crate) picking: Vec<usize>,
    /// Slots whose sequence starts at this step (its first prompt chunk).
    pub(crate) starts: Vec<usize>,
}

impl StepRows {
    /// Plan the step of `active` with at most `max_rows` rows of prompt chunks beside the decoding
    /// rows (advances each sequence's `fed`).
    pub(crate) fn plan(&mut self, active: &mut [Active], max_rows: usize) {
        self.tokens.clear();
        self.slots.clear();
        self.logit_rows.clear();
        self.picking.clear();
        self.starts.clear();
        let decoding = active.iter().filter(|a| a.fed == a.prompt.len()).count();
        let mut budget = max_rows.saturating_sub(decoding);
        for (i, a) in active.iter_mut().enumerate() {
            if a.fed < a.prompt.len() {
                let n = budget.min(a.prompt.len() - a.fed);
                if n == 0 {
                    continue;
                }
                budget -= n;
                if a.fed == 0 {
                    self.starts.push(a.slot);
                }
                self.tokens.extend_from_slice(&a.prompt[a.fed..a.fed + n]);
                self.slots.resize(self.slots.len() + n, a.slot);
                a.fed += n;
                if a.fed < a.prompt.len() {
                    continue;
                }
            } else {
                self.tokens.push(a.next);
                self.slots.push(a.slot);
            }
            self.logit_rows.push(self.tokens.len() - 1);
            self.picking.push(i);
        }
    }
}

/// One continuous-batching loop's state: `slots` KV-cache slots, the sequences decoding in
/// them, and the step buffers. [`generate`] runs one per shard; a disaggregated rollout rank
/// (`train::async_rl`) keeps one across batches and weight versions.
pub struct Slots {
    cache: KvCache,
    buf: DecodeBuffers,
    scratch: Vec<(f32, u32)>,
    free: Vec<usize>,
    active: Vec<Active>,
    rows: StepRows,
}

impl Slots {
    /// `slots` cache slots of `max_len` positions for `model`.
    pub fn new(model: &Model, slots: usize, max_len: usize) -> Self {
        Slots {
            cache: KvCache::new(model, slots, max_len),
            buf: DecodeBuffers::new(model, slots),
            scratch: Vec::new(),
            free: (0..slots).rev().collect(),
            active: Vec::with_capacity(slots),
            rows: StepRows::default(),
        }
    }

    /// Whether a slot is free for [`Slots::admit`].
    pub fn has_free(&self) -> bool {
        !self.free.is_empty()
    }

    /// Sequences in the slots.
    pub fn busy(&self) -> usize {
        self.active.len()
    }

    /// Cache slots.
    pub fn capacity(&self) -> usize {
        self.cache.slots
    }

    /// Put request `r` (the caller's `key`) into a free slot; its random stream and forced
    /// length are keyed by `stream_step` (the RL step of its batch + 1) and its coordinates.
    /// With `max_new_tokens = 0` it is finished at once and returned. A caller must check
    /// [`Slots::has_free`] first (admitting into a full set of slots is a bug).
    pub fn admit(&mut self, key: usize, r: &Request, stream_step: u64, cfg: &GenerateConfig) -> Option<Completion> {
        let out = Completion::empty(r);
        if cfg.sampling.max_new_tokens == 0 {
            return Some(out);
        }
        let slot = self.free.pop().expect("admit into a free slot (check has_free first)");
        self.cache.len[slot] = 0;
        self.active.push(Active::new(key, r, slot, stream_step, cfg));
        None
    }

    /// One step of every sequence in the slots (prompt chunks of newly admitted ones + one token
    /// of every decoding one, within the step's row budget); returns the sequences that finished
    /// (with their keys) and frees their slots. Does nothing without sequences.
    pub fn step(
        &mut self,
        model: &Model,
        weights: &DecodeWeights,
        cfg: &GenerateConfig,
    ) -> Result<Vec<(usize, Completion)>> {
        let mut done = Vec::new();
        if self.active.is_empty() {
            return Ok(done);
        }
        let v = model.cfg.vocab_size;
        let max_len = self.cache.max_len;
        let rows = &mut self.rows;
        rows.plan(&mut self.active, ROWS_PER_STEP);
        let t_step = std::time::Instant::now();
        model.forward_cached(weights, &rows.tokens, &rows.slots, &rows.logit_rows, &mut self.cache, &mut self.buf)?;
        let mut finished = false;
        for (row, &i) in rows.picking.iter().enumerate() {
            let a = &mut self.active[i];
            let s = sample(&self.buf.logits[row * v..(row + 1) * v], &cfg.sampling, &mut a.rng, &mut self.scratch);
            a.next = s.token;
            if a.out.push(s, a.target, cfg, self.cache.len[a.slot], max_len) {
                // mark for removal; `fed` past the prompt length flags it
                a.fed = usize::MAX;
                finished = true;
            }
        }
        if let Some(w) = &cfg.workload {
            // an emulated memory-bound decode step: sleep out the rest of it
            let floor = w.step_floor();
            if let Some(rest) = floor.checked_sub(t_step.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        if finished {
            let mut i = 0;
            while i < self.active.len() {
                if self.active[i].fed == usize::MAX {
                    let a = self.active.swap_remove(i);
                    self.free.push(a.slot);
                    done.push((a.key, a.out));
                } else {
                    i += 1;
                }
            }
        }
        Ok(done)
    }
}

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
    let mut state = Slots::new(model, slots, max_len);
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
        done.extend(state.step(model, weights, cfg)?);
        if failed.load(Ordering::Relaxed) {
            break;
        }
    }
    Ok(done)
}
