//! What generation is asked for and what it gives back: a request (one sample of one prompt),
//! the settings of a generation call, and a finished request's completion with its finish rule.

use crate::rollout::sampler::{Sampled, SamplingParams};

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
