//! Held-out evaluation of the RL phase: solve rate on the eval split, greedy and sampled.

use crate::config::{RlSection, RunConfig};
use crate::error::Result;
use crate::model::Model;
use crate::parallel::{partition, Comm};
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

/// Generation settings of the held-out evaluation after `step` RL steps (its own random
/// streams, never a forced workload).
pub fn eval_config(cfg: &RunConfig, rl: &RlSection, temperature: f32, step: u64) -> GenerateConfig {
    GenerateConfig {
        sampling: SamplingParams { temperature, top_p: 1.0, top_k: 0, max_new_tokens: rl.max_new_tokens },
        stop_tokens: vec![EOS_ID],
        seed: cfg.run.seed ^ 0xE7A1,
        step,
        max_batch: rl.max_batch,
        workload: None,
    }
}

/// Solve rate on `n` held-out problems, greedy and with `samples` samples at temperature 1; the
/// problems are partitioned over the data-parallel ranks `dp` and the counts all-reduced.
pub fn evaluate(
    model: &Model,
    cfg: &RunConfig,
    task: &dyn Task,
    rl: &RlSection,
    tok: &CharTokenizer,
    step: u64,
    dp: &dyn Comm,
) -> Result<SolveRate> {
    if cfg.env.is_some() {
        // a multi-turn environment: the rate of held-out games won
        let greedy = super::env_step::env_win_rate(model, cfg, rl, 0.0, 1, step, dp)?;
        let sampled = super::env_step::env_win_rate(model, cfg, rl, 1.0, rl.eval_samples, step, dp)?;
        return Ok(SolveRate { greedy, sampled });
    }
    let mine = partition(rl.eval_problems, dp.size(), dp.rank());
    let mut problems = Vec::new();
    let mut requests = Vec::new();
    for i in mine.clone() {
        let (ids, p) = problem(task, tok, SPLIT_EVAL, i as u64)?;
        for s in 0..rl.eval_samples.max(1) {
            requests.push(Request { prompt_id: i as u64, sample_index: s, prompt: ids.clone() });
        }
        problems.push(p);
    }
    let solved = |temperature: f32, reqs: &[Request]| -> Result<[f64; 2]> {
        let out = generate(model, reqs, &eval_config(cfg, rl, temperature, step))?;
        let first = mine.start as u64;
        // a solve counts 1 (a malformed answer's −format_penalty, or its −0.0, is not a solve)
        let solved: f32 = out
            .iter()
            .map(|c| reward(task, tok, &problems[(c.prompt_id - first) as usize], c))
            .map(|r| if r > 0.0 { r } else { 0.0 })
            .sum();
        Ok([solved as f64, out.len() as f64])
    };
    let greedy_reqs: Vec<Request> = requests.iter().filter(|r| r.sample_index == 0).cloned().collect();
    let [g, gn] = solved(0.0, &greedy_reqs)?;
    let [s, sn] = solved(1.0, &requests)?;
    let mut sums = [g, gn, s, sn];
    dp.all_reduce_sum_f64(&mut sums)?;
    Ok(SolveRate { greedy: sums[0] / sums[1].max(1.0), sampled: sums[2] / sums[3].max(1.0) })
}
