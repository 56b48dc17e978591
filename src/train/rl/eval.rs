//! Held-out evaluation of the RL phase: solve rate on the eval split, greedy and sampled.

use super::rollouts::{problem, reward};
use crate::config::{RlSection, RunConfig};
use crate::env::runner::Play;
use crate::env::{rollout, EnvMode};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::parallel::{partition, Comm};
use crate::rollout::{GenerateConfig, Request, SamplingParams};
use crate::tasks::{Task, SPLIT_EVAL};
use crate::tokenizer::TextCodec;
use crate::train::engine::Engine;

/// Held-out solve rates (fractions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SolveRate {
    pub greedy: f64,
    pub sampled: f64,
    /// pass@k with k the samples per problem: the fraction of problems at least one of whose k
    /// samples solved it (the unbiased estimator of pass@k at n = k). None where it is not known
    /// (the evaluation before RL, read back from a checkpoint written before it was recorded).
    pub pass: Option<PassAtK>,
}

/// pass@k of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PassAtK {
    pub k: u32,
    pub rate: f64,
}

impl SolveRate {
    /// ", pass@k R%" (nothing when pass@k is not known), for the log.
    pub fn pass_note(&self) -> String {
        self.pass.map_or(String::new(), |p| format!(", pass@{} {:.1}%", p.k, 100.0 * p.rate))
    }
}

/// The tally of an evaluation's samples, `(problem, reward)` each, over `problems` problems: the
/// sum of the positive rewards (a solve counts its reward; a malformed answer's −format_penalty,
/// or its −0.0, is not a solve), the number of samples, and the number of problems with a solve.
fn tally(samples: &[(usize, f32)], problems: usize) -> [f64; 3] {
    let solved: f32 = samples.iter().map(|&(_, r)| if r > 0.0 { r } else { 0.0 }).sum();
    let mut passed = vec![false; problems];
    for &(p, r) in samples {
        passed[p] |= r > 0.0;
    }
    [solved as f64, samples.len() as f64, passed.iter().filter(|&&p| p).count() as f64]
}

/// Generation settings of the held-out evaluation after `step` RL steps (its own random
/// streams, never a forced workload), stopping at `codec`'s stop ids.
pub fn eval_config(cfg: &RunConfig, rl: &RlSection, codec: &TextCodec, temperature: f32, step: u64) -> GenerateConfig {
    GenerateConfig {
        sampling: SamplingParams { temperature, top_p: 1.0, top_k: 0, max_new_tokens: rl.max_new_tokens },
        stop_tokens: codec.stop_ids().to_vec(),
        seed: cfg.run.seed ^ 0xE7A1,
        step,
        max_batch: rl.max_batch,
        workload: None,
    }
}

/// How many held-out problems an evaluation asking for `requested` scores: a finite task's held-out
/// split wraps around (`problem(i) = problem(i % len)`), so at most its `len` distinct problems,
/// each counted once.
pub fn eval_problem_count(task: &dyn Task, requested: usize) -> usize {
    task.len(SPLIT_EVAL).map_or(requested, |n| requested.min(usize::try_from(n).unwrap_or(usize::MAX)))
}

/// Solve rate on `n` held-out problems, greedy and with `samples` samples at temperature 1; the
/// problems are partitioned over the data-parallel ranks `dp` and the counts all-reduced.
/// Generation runs on `engine` (the policy's weights there); `codec` encodes prompts and decodes answers.
pub fn evaluate(
    engine: &mut Engine,
    model: &Model,
    cfg: &RunConfig,
    (task, codec): (&dyn Task, &TextCodec),
    rl: &RlSection,
    step: u64,
    dp: &dyn Comm,
) -> Result<SolveRate> {
    let k = rl.eval_samples.max(1);
    if cfg.env.is_some() {
        // a multi-turn environment: the rate of held-out games won
        let [greedy, _] = env_win_rate(engine, model, cfg, rl, codec, (0.0, 1), step, dp)?;
        let [sampled, pass] = env_win_rate(engine, model, cfg, rl, codec, (1.0, k), step, dp)?;
        return Ok(SolveRate { greedy, sampled, pass: Some(PassAtK { k, rate: pass }) });
    }
    let mine = partition(eval_problem_count(task, rl.eval_problems), dp.size(), dp.rank());
    let mut problems = Vec::new();
    let mut requests = Vec::new();
    for i in mine.clone() {
        let (ids, p) = problem(task, codec, SPLIT_EVAL, i as u64)?;
        for s in 0..k {
            requests.push(Request { prompt_id: i as u64, sample_index: s, prompt: ids.clone() });
        }
        problems.push(p);
    }
    let mut solved = |temperature: f32, reqs: &[Request]| -> Result<[f64; 3]> {
        let out = engine.generate(model, reqs, &eval_config(cfg, rl, codec, temperature, step))?;
        let first = mine.start as u64;
        let samples: Vec<(usize, f32)> = out
            .iter()
            .map(|c| {
                let p = (c.prompt_id - first) as usize;
                (p, reward(task, codec, &problems[p], c))
            })
            .collect();
        Ok(tally(&samples, problems.len()))
    };
    let greedy_reqs: Vec<Request> = requests.iter().filter(|r| r.sample_index == 0).cloned().collect();
    let [g, gn, _] = solved(0.0, &greedy_reqs)?;
    let [s, sn, passed] = solved(1.0, &requests)?;
    let mut sums = [g, gn, s, sn, passed, problems.len() as f64];
    dp.all_reduce_sum_f64(&mut sums)?;
    Ok(SolveRate {
        greedy: sums[0] / sums[1].max(1.0),
        sampled: sums[2] / sums[3].max(1.0),
        pass: Some(PassAtK { k, rate: sums[4] / sums[5].max(1.0) }),
    })
}

/// Game ids of the evaluation split start here (training games: see [`games_of`](super::env_step::games_of)).
pub const EVAL_GAMES: u64 = 1 << 48;

/// Win rate on `[env]`'s `eval_games` held-out games (no latency, no failures) at `temperature` with
/// `samples` samples each, and the fraction of games won by at least one of its samples; the
/// model's turns generated on `engine`; the games are partitioned over `dp` and the counts all-reduced.
#[allow(clippy::too_many_arguments)]
pub fn env_win_rate(
    engine: &mut Engine,
    model: &Model,
    cfg: &RunConfig,
    rl: &RlSection,
    codec: &TextCodec,
    (temperature, samples): (f32, u32),
    step: u64,
    dp: &dyn Comm,
) -> Result<[f64; 2]> {
    let ec = cfg.env.as_ref().ok_or_else(|| Error::Invalid("env evaluation without [env]".into()))?;
    let mine = partition(ec.eval_games, dp.size(), dp.rank());
    let games: Vec<u64> = mine.map(|i| EVAL_GAMES + i as u64).collect();
    let gen = eval_config(cfg, rl, codec, temperature, step);
    // on a device, a batch's generation depends on its makeup: batch at the turn barrier
    let mode = if engine.on_device() { EnvMode::Sync } else { EnvMode::Async };
    let play = Play { model, codec, env: ec, gen, seed: cfg.run.seed, latent: false, mode };
    let samples = samples.max(1);
    let r = rollout(&play, &mut |reqs, gen| engine.generate(model, reqs, gen), &games, games.len(), samples, 0)?;
    let won: f64 = r.groups.iter().flatten().map(|t| f64::from(t.reward)).sum();
    let any_won = r.groups.iter().filter(|g| g.iter().any(|t| t.reward > 0.0)).count();
    let mut sums = [won, (games.len() * samples as usize) as f64, any_won as f64, r.groups.len() as f64];
    dp.all_reduce_sum_f64(&mut sums)?;
    Ok([sums[0] / sums[1].max(1.0), sums[2] / sums[3].max(1.0)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tally_counts_solves_samples_and_problems_solved_at_least_once() {
        // problem 0: 1 solve of 4; problem 1: none (a malformed answer's −0.5 and a −0.0 among them);
        // problem 2: 4 of 4; problem 3: no sample at all
        let s = [
            (0, 0.0),
            (1, -0.5),
            (2, 1.0),
            (0, 1.0),
            (1, -0.0),
            (2, 1.0),
            (0, 0.0),
            (1, 0.0),
            (2, 1.0),
            (0, 0.0),
            (1, 0.0),
            (2, 1.0),
        ];
        assert_eq!(tally(&s, 4), [5.0, 12.0, 2.0]);
        assert_eq!(tally(&[], 3), [0.0, 0.0, 0.0]);
    }

    #[test]
    fn a_finite_held_out_split_is_scored_once_per_problem() {
        let dir = tempfile::tempdir().unwrap();
        let (train, eval) = (dir.path().join("train.jsonl"), dir.path().join("eval.jsonl"));
        std::fs::write(&train, "{\"prompt\": \"5+5=\", \"answer\": \"10\"}\n").unwrap();
        let rows: String = (0..3).map(|i| format!("{{\"prompt\": \"{i}+1=\", \"answer\": \"{}\"}}\n", i + 1)).collect();
        std::fs::write(&eval, rows).unwrap();
        let data = format!("task = \"jsonl\"\npath = {:?}\neval_path = {:?}\n", train, eval);
        let text = crate::config::ADDITION_CONFIG.replace("task = \"addition\"\nmax_digits = 2\n", &data);
        let cfg = RunConfig::parse(&text, std::path::Path::new("eval.toml")).unwrap();
        let task = cfg.task(&TextCodec::default()).unwrap();
        assert_eq!(eval_problem_count(task.as_ref(), 200), 3);
        assert_eq!(eval_problem_count(task.as_ref(), 2), 2);
        // a generator has no end: as many as asked
        let addition = RunConfig::parse(crate::config::ADDITION_CONFIG, std::path::Path::new("a.toml")).unwrap();
        assert_eq!(eval_problem_count(addition.task(&TextCodec::default()).unwrap().as_ref(), 500), 500);
    }
}
