//! Continuous batching, once for every device: [`Slots`] is the host side of the loop (which
//! sequence holds which KV-cache slot, the rows of each step, the random draws, the finish rules);
//! a step closure runs the rows through the model on a device and picks one token per logit row.
//! The CPU engine ([`HostStep`]), the GPU decoder (`cuda::generate`) and a disaggregated rollout
//! rank (`train::decoding`) run the same loop.
//!
//! Every request draws from its own stream `Rng::derive(seed, [step, prompt_id, sample_index])`,
//! one uniform per sampled token (none when greedy), so a completion depends on its own uniforms
//! and logits only: never on the slot, the batch mix or the rank.

use crate::error::{Error, Result};
use crate::model::decode::{DecodeBuffers, DecodeWeights, KvCache};
use crate::model::Model;
use crate::rng::Rng;
use crate::rollout::request::{Completion, GenerateConfig, Request};
use crate::rollout::sampler::{sample_with_uniform, Sampled, SamplingParams};

/// A request in a KV-cache slot.
struct Active {
    /// The caller's key of the request.
    key: usize,
    prompt: Vec<u32>,
    slot: usize,
    /// The request's stream: `Rng::derive(seed, [stream_step, prompt_id, sample_index])`.
    rng: Rng,
    out: Completion,
    /// Prompt tokens already in the cache (`usize::MAX` once finished, until removed).
    fed: usize,
    next: u32,
    /// Forced response length (workload mode).
    target: Option<usize>,
}

impl Active {
    /// Request `r` (the caller's `key`) starting in `slot`, its stream and forced length keyed by
    /// `stream_step` and its coordinates.
    fn new(key: usize, r: &Request, slot: usize, stream_step: u64, cfg: &GenerateConfig) -> Self {
        let rng = Rng::derive(cfg.seed, &[stream_step, r.prompt_id, r.sample_index as u64]);
        let target = cfg
            .workload
            .as_ref()
            .map(|w| w.length(cfg.seed, stream_step, r.prompt_id, r.sample_index, cfg.sampling.max_new_tokens));
        Active { key, prompt: r.prompt.clone(), slot, rng, out: Completion::empty(r), fed: 0, next: 0, target }
    }
}

/// The rows of one sampled decode step: row r appends `tokens[r]` to slot `slots[r]` (a slot's
/// rows take its next positions in order); the next token is drawn for rows `logit_rows`
/// (strictly increasing), with `uniforms` (one per logit row; 0 at temperature 0).
#[derive(Debug, Clone, Copy)]
pub struct StepInput<'a> {
    pub tokens: &'a [u32],
    pub slots: &'a [usize],
    pub logit_rows: &'a [usize],
    pub uniforms: &'a [f64],
}

/// One step of the loop: `input`'s rows, the slots that begin a new sequence at this step (their
/// cache length must be reset to 0 before it), and how to pick each logit row's token (the
/// settings the uniforms were drawn for).
#[derive(Debug, Clone, Copy)]
pub struct LoopStep<'a> {
    pub input: StepInput<'a>,
    pub starts: &'a [usize],
    pub sampling: &'a SamplingParams,
}

/// The rows of one step: a row per decoding sequence and the next chunk of each admitted prompt,
/// in the order of the loop's sequences, within a budget of rows.
#[derive(Debug, Default)]
struct StepRows {
    tokens: Vec<u32>,
    slots: Vec<usize>,
    /// The rows whose next token is drawn, and the index in `active` of each.
    logit_rows: Vec<usize>,
    picking: Vec<usize>,
    /// Slots whose sequence starts at this step (its first prompt chunk).
    starts: Vec<usize>,
    /// The uniform of each logit row.
    uniforms: Vec<f64>,
}

impl StepRows {
    /// Plan the step of `active`: every decoding row, then prompt chunks up to `max_rows` rows in
    /// all (advances each sequence's `fed`), and draw each picking row's uniform.
    fn plan(&mut self, active: &mut [Active], max_rows: usize, temperature: f32) {
        self.tokens.clear();
        self.slots.clear();
        self.logit_rows.clear();
        self.picking.clear();
        self.starts.clear();
        self.uniforms.clear();
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
            self.uniforms.push(if temperature > 0.0 { a.rng.uniform() } else { 0.0 });
        }
    }

    fn step<'a>(&'a self, sampling: &'a SamplingParams) -> LoopStep<'a> {
        let input = StepInput {
            tokens: &self.tokens,
            slots: &self.slots,
            logit_rows: &self.logit_rows,
            uniforms: &self.uniforms,
        };
        LoopStep { input, starts: &self.starts, sampling }
    }
}

/// One continuous-batching loop's host state: `capacity` KV-cache slots of `max_len` positions
/// each, the sequences decoding in them, and the rows of the next step. The CPU engine runs one
/// per shard; a disaggregated rollout rank keeps one across batches and weight versions.
pub struct Slots {
    free: Vec<usize>,
    active: Vec<Active>,
    rows: StepRows,
    capacity: usize,
    max_len: usize,
    max_rows: usize,
}

impl Slots {
    /// `capacity` slots of `max_len` positions; a step holds every decoding row and prompt chunks up
    /// to `max_rows` rows in all (a longer prompt goes in over several steps).
    pub fn new(capacity: usize, max_len: usize, max_rows: usize) -> Self {
        Slots {
            free: (0..capacity).rev().collect(),
            active: Vec::with_capacity(capacity),
            rows: StepRows::default(),
            capacity,
            max_len,
            max_rows: max_rows.max(1),
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
        self.capacity
    }

    /// Put request `r` (the caller's `key`) into a free slot; its random stream and forced
    /// length are keyed by `stream_step` (the RL step of its batch + 1) and its coordinates.
    /// With `max_new_tokens = 0` it is finished at once and returned. A caller must check
    /// [`Slots::has_free`] first (admitting into a full set of slots is a bug).
    pub fn admit(&mut self, key: usize, r: &Request, stream_step: u64, cfg: &GenerateConfig) -> Option<Completion> {
        if cfg.sampling.max_new_tokens == 0 {
            return Some(Completion::empty(r));
        }
        let slot = self.free.pop().expect("admit into a free slot (check has_free first)");
        self.active.push(Active::new(key, r, slot, stream_step, cfg));
        None
    }

    /// One step of every sequence in the slots (prompt chunks of newly admitted ones + one token
    /// of every decoding one, within the step's row budget) through `run`, which returns one pick
    /// per logit row; returns the sequences that finished (with their keys) and frees their
    /// slots. Does nothing without sequences.
    pub fn step(
        &mut self,
        cfg: &GenerateConfig,
        run: impl FnOnce(LoopStep<'_>) -> Result<Vec<Sampled>>,
    ) -> Result<Vec<(usize, Completion)>> {
        let mut done = Vec::new();
        if self.active.is_empty() {
            return Ok(done);
        }
        self.rows.plan(&mut self.active, self.max_rows, cfg.sampling.temperature);
        let t_step = std::time::Instant::now();
        let picked = run(self.rows.step(&cfg.sampling))?;
        if picked.len() != self.rows.picking.len() {
            let why = format!("{} picks for {} logit rows", picked.len(), self.rows.picking.len());
            return Err(Error::shape("decode step", why));
        }
        let mut finished = false;
        for (s, &i) in picked.into_iter().zip(&self.rows.picking) {
            let a = &mut self.active[i];
            a.next = s.token;
            // the slot holds the prompt and every token fed so far
            let held = a.prompt.len() + a.out.tokens.len();
            if a.out.push(s, a.target, cfg, held, self.max_len) {
                // mark for removal
                a.fed = usize::MAX;
                finished = true;
            }
        }
        if let Some(w) = &cfg.workload {
            // an emulated memory-bound decode step: sleep out the rest of it
            if let Some(rest) = w.step_floor().checked_sub(t_step.elapsed()) {
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

/// Continuous batching of `requests`, admitted in order, over `slots` slots of `max_len`
/// positions with `step` (at most `max_rows` prompt rows a step); the completions in request
/// order.
pub fn run_requests(
    requests: &[Request],
    cfg: &GenerateConfig,
    (slots, max_len, max_rows): (usize, usize, usize),
    mut step: impl FnMut(LoopStep<'_>) -> Result<Vec<Sampled>>,
) -> Result<Vec<Completion>> {
    let mut done: Vec<Option<Completion>> = vec![None; requests.len()];
    let mut state = Slots::new(slots, max_len, max_rows);
    let mut queue = 0;
    loop {
        while state.has_free() && queue < requests.len() {
            if let Some(c) = state.admit(queue, &requests[queue], cfg.step, cfg) {
                done[queue] = Some(c);
            }
            queue += 1;
        }
        if state.busy() == 0 {
            break;
        }
        for (i, c) in state.step(cfg, &mut step)? {
            done[i] = Some(c);
        }
    }
    done.into_iter()
        .enumerate()
        .map(|(i, c)| c.ok_or_else(|| Error::Invalid(format!("generate: request {i} was never completed"))))
        .collect()
}

/// The CPU's decode step for [`Slots`]: the cached forward of the rows (`Model::forward_cached`)
/// and the host sampler on each logit row.
pub struct HostStep {
    cache: KvCache,
    buf: DecodeBuffers,
    scratch: Vec<(f32, u32)>,
}

impl HostStep {
    /// A KV cache of `slots` slots of `max_len` positions for `model`, and the step buffers.
    pub fn new(model: &Model, slots: usize, max_len: usize) -> Self {
        HostStep {
            cache: KvCache::new(model, slots, max_len),
            buf: DecodeBuffers::new(model, slots),
            scratch: Vec::new(),
        }
    }

    /// Run `step` with `weights` and draw each logit row's token.
    pub fn run(&mut self, model: &Model, weights: &DecodeWeights, step: LoopStep<'_>) -> Result<Vec<Sampled>> {
        for &slot in step.starts {
            self.cache.len[slot] = 0;
        }
        let StepInput { tokens, slots, logit_rows, uniforms } = step.input;
        model.forward_cached(weights, tokens, slots, logit_rows, &mut self.cache, &mut self.buf)?;
        let v = model.cfg.vocab_size;
        let logits = self.buf.logits.chunks_exact(v);
        Ok(logits.zip(uniforms).map(|(z, &u)| sample_with_uniform(z, step.sampling, u, &mut self.scratch)).collect())
    }
}
