//! Held-out evaluation of the RL phase: solve rate on the eval split, greedy and sampled.

use crate::config::{RlSection, RunConfig};
use crate::error::Result;
use crate::model::Model;
use crate::rollout::{generate, Completion, GenerateConfig, Request, SamplingParams};
use crate::tasks::{Problem, Task, SPLIT_EVAL};
use crate::tokenizer::char::{CharTokenizer, BOS_ID, EOS_ID};

/// Held-out solve rates (fractions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SolveRate {
    pub greedy: f64,
    pub sampled: f64,
}

/// One problem's prompt tokens and the problem.
pub fn problem(task: &dyn Task, tok: &CharTokenizer, split: u64, index: u64) -> Result<(Vec<u32>, Problem)> {
    let p = task.problem(split, index);
    let mut ids = vec![BOS_ID];
    ids.extend(tok.encode(&p.prompt)?);
    Ok((ids, p))
}

pub fn reward(task: &dyn Task, tok: &CharTokenizer, p: &Problem, c: &Completion) -> f32 {
    let text: Vec<u32> = c.tokens.iter().copied().filter(|&t| t != EOS_ID).collect();
    task.reward(p, &tok.decode(&text))
}

/// Solve rate on `n` held-out problems, greedy and with `samples` samples at temperature 1.
pub fn evaluate(
    model: &Model,
    cfg: &RunConfig,
    task: &dyn Task,
    rl: &RlSection,
    tok: &CharTokenizer,
    step: u64,
) -> Result<SolveRate> {
    let n = rl.eval_problems as u64;
    let mut problems = Vec::new();
    let mut requests = Vec::new();
    for i in 0..n {
        let (ids, p) = problem(task, tok, SPLIT_EVAL, i)?;
        for s in 0..rl.eval_samples.max(1) {
            requests.push(Request { prompt_id: i, sample_index: s, prompt: ids.clone() });
        }
        problems.push(p);
    }
    let rate = |temperature: f32, reqs: &[Request]| -> Result<f64> {
        let gc = GenerateConfig {
            sampling: SamplingParams { temperature, top_p: 1.0, top_k: 0, max_new_tokens: rl.max_new_tokens },
            stop_tokens: vec![EOS_ID],
            seed: cfg.run.seed ^ 0xE7A1,
            step,
            max_batch: rl.max_batch,
        };
        let out = generate(model, reqs, &gc)?;
        let solved: f32 = out.iter().map(|c| reward(task, tok, &problems[c.prompt_id as usize], c)).sum();
        Ok(solved as f64 / out.len().max(1) as f64)
    };
    let greedy_reqs: Vec<Request> = requests.iter().filter(|r| r.sample_index == 0).cloned().collect();
    let greedy = rate(0.0, &greedy_reqs)?;
    let sampled = rate(1.0, &requests)?;
    Ok(SolveRate { greedy, sampled })
}
