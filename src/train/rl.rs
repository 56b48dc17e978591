//! The RL loop (GRPO family), one step on one screen: sample prompts → generate n responses
//! each (continuous batching) → rewards → group advantages → recompute log-probs → policy loss
//! (ALGORITHMS.md §5) → backward → clip → AdamW. Every random draw derives from
//! (seed, step, prompt id, sample index).
//!
//! The task comes from `[data]` (`crate::tasks::Task`: addition or Countdown) with the character
//! tokenizer; the held-out split never overlaps the training problems.

use crate::config::{RlSection, RunConfig};
use crate::error::{Error, Result};
use crate::model::{Batch, Model, Workspace};
use crate::rl::{broadcast_to_tokens, group_advantages, policy_loss, LossConfig, TokenBatch};
use crate::rollout::{generate, Completion, GenerateConfig, Request, SamplingParams};
use crate::tasks::{Problem, Task, SPLIT_EVAL, SPLIT_TRAIN};
use crate::tokenizer::char::{CharTokenizer, BOS_ID, EOS_ID};
use crate::train::{clip_and_step, AdamW, LrSchedule};
use std::io::Write;
use std::time::Instant;

/// Held-out solve rates (fractions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SolveRate {
    pub greedy: f64,
    pub sampled: f64,
}

/// One problem's prompt tokens and the problem.
fn problem(task: &dyn Task, tok: &CharTokenizer, split: u64, index: u64) -> Result<(Vec<u32>, Problem)> {
    let p = task.problem(split, index);
    let mut ids = vec![BOS_ID];
    ids.extend(tok.encode(&p.prompt)?);
    Ok((ids, p))
}

fn reward(task: &dyn Task, tok: &CharTokenizer, p: &Problem, c: &Completion) -> f32 {
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

/// Run `rl.steps` GRPO-family steps on `model`, logging to `log` and appending to `metrics`.
/// Returns the held-out solve rates before and after.
#[allow(clippy::too_many_arguments)]
pub fn run(
    model: &mut Model,
    opt: &mut AdamW,
    cfg: &RunConfig,
    task: &dyn Task,
    rl: &RlSection,
    loss_cfg: &LossConfig,
    metrics: &mut dyn Write,
    log: &mut dyn Write,
) -> Result<(SolveRate, SolveRate)> {
    let tok = CharTokenizer::default();
    let say = |log: &mut dyn Write, s: String| {
        let _ = writeln!(log, "{s}");
    };
    let reference = (loss_cfg.kl_coef > 0.0).then(|| model.clone());
    let schedule = LrSchedule::constant(rl.lr);
    let before = evaluate(model, cfg, task, rl, &tok, 0)?;
    say(
        log,
        format!(
            "rl eval before: solve rate greedy {:.1}%, sampled {:.1}%",
            100.0 * before.greedy,
            100.0 * before.sampled
        ),
    );
    let line =
        serde_json::json!({"rl_step": 0, "eval_solve_rate": before.sampled, "eval_solve_rate_greedy": before.greedy});
    writeln!(metrics, "{line}").map_err(|e| Error::Invalid(format!("metrics.jsonl: {e}")))?;
    let (mut ws, mut ref_ws) = (Workspace::new(&model.cfg, 0), Workspace::new(&model.cfg, 0));
    let mut grads = vec![0.0f32; model.params.data.len()];
    let mut last = before;
    for step in 0..rl.steps {
        let t0 = Instant::now();
        // 1. prompts × n samples
        let (p, n) = (rl.prompts_per_step, rl.samples_per_prompt);
        let mut problems = Vec::with_capacity(p);
        let mut requests = Vec::with_capacity(p * n as usize);
        for i in 0..p as u64 {
            let id = step * p as u64 + i;
            let (ids, prob) = problem(task, &tok, SPLIT_TRAIN, id)?;
            for s in 0..n {
                requests.push(Request { prompt_id: id, sample_index: s, prompt: ids.clone() });
            }
            problems.push(prob);
        }
        // 2. generate
        let gc = GenerateConfig {
            sampling: SamplingParams {
                temperature: rl.temperature,
                top_p: 1.0,
                top_k: 0,
                max_new_tokens: rl.max_new_tokens,
            },
            stop_tokens: vec![EOS_ID],
            seed: cfg.run.seed,
            step: step + 1,
            max_batch: rl.max_batch,
        };
        let completions = generate(model, &requests, &gc)?;
        let t_gen = t0.elapsed().as_secs_f64();
        // 3. rewards, 4. group advantages
        let rewards: Vec<f32> =
            completions.iter().enumerate().map(|(k, c)| reward(task, &tok, &problems[k / n as usize], c)).collect();
        let group_starts: Vec<usize> = (0..=p).map(|g| g * n as usize).collect();
        let adv = group_advantages(rl.advantage, &rewards, &group_starts)?;
        // 5. training batch: prompt + response of every sample in a group with signal
        let keep: Vec<usize> = (0..completions.len())
            .filter(|&k| {
                let no_signal = rl.filter_zero_std && adv.zero_std[k / n as usize];
                !no_signal && !completions[k].tokens.is_empty()
            })
            .collect();
        let mut batch = Batch::new();
        let (mut resp_starts, mut resp_pos) = (vec![0usize], Vec::new());
        for &k in &keep {
            let seq: Vec<u32> = requests[k].prompt.iter().chain(&completions[k].tokens).copied().collect();
            let base = batch.len() + requests[k].prompt.len() - 1;
            batch.push_lm(&seq, 0)?;
            resp_pos.extend(base..base + completions[k].tokens.len());
            resp_starts.push(resp_pos.len());
        }
        let mut out_line = serde_json::json!({});
        let (mut loss_v, mut norm, mut clip_frac, mut approx_kl, mut entropy, mut mismatch) =
            (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        if !keep.is_empty() {
            // 6. recompute log-probs (on-policy: old = current, detached), reference if KL
            model.forward(&batch, &mut ws)?;
            let logp: Vec<f32> = resp_pos.iter().map(|&i| ws.logprobs[i]).collect();
            let ent: Vec<f32> = resp_pos.iter().map(|&i| ws.entropy[i]).collect();
            let behav: Vec<f32> = keep.iter().flat_map(|&k| completions[k].logprobs.iter().copied()).collect();
            let ref_logp = match &reference {
                Some(r) => {
                    r.forward(&batch, &mut ref_ws)?;
                    Some(resp_pos.iter().map(|&i| ref_ws.logprobs[i]).collect::<Vec<f32>>())
                }
                None => None,
            };
            let seq_adv: Vec<f32> = keep.iter().map(|&k| adv.advantages[k]).collect();
            let seq_reward: Vec<f32> = keep.iter().map(|&k| rewards[k]).collect();
            let mut tok_adv = vec![0.0f32; resp_pos.len()];
            broadcast_to_tokens(&seq_adv, &resp_starts, &mut tok_adv);
            let tb = TokenBatch {
                seq_starts: &resp_starts,
                logp: &logp,
                old_logp: &logp,
                behav_logp: Some(&behav),
                ref_logp: ref_logp.as_deref(),
                entropy: &ent,
                advantages: &tok_adv,
                seq_reward: &seq_reward,
            };
            let (mut d_resp, mut e_resp) = (vec![0.0f32; resp_pos.len()], vec![0.0f32; resp_pos.len()]);
            let out = policy_loss(&tb, loss_cfg, None, &mut d_resp, &mut e_resp)?;
            // 7. backward on the full sequences (prompt positions get zero weight)
            let (mut dlogp, mut dent) = (vec![0.0f32; batch.len()], vec![0.0f32; batch.len()]);
            for (j, &i) in resp_pos.iter().enumerate() {
                dlogp[i] = d_resp[j];
                dent[i] = e_resp[j];
            }
            grads.iter_mut().for_each(|g| *g = 0.0);
            let with_ent = loss_cfg.entropy_coef != 0.0;
            model.backward_with_entropy(&batch, &dlogp, with_ent.then_some(dent.as_slice()), &mut ws, &mut grads)?;
            norm = clip_and_step(opt, &mut model.params.data, &grads, schedule.lr(step), rl.grad_clip) as f64;
            loss_v = out.loss;
            clip_frac = out.stats.clip_frac();
            approx_kl = out.stats.approx_kl();
            entropy = out.stats.entropy();
            mismatch = out.stats.mismatch_abs_mean();
            out_line =
                serde_json::json!({"mismatch_abs_max": out.stats.mismatch_abs_max, "ref_kl": out.stats.ref_kl()});
        }
        let secs = t0.elapsed().as_secs_f64();
        let n_samples = rewards.len().max(1) as f64;
        let reward_mean = rewards.iter().map(|&r| r as f64).sum::<f64>() / n_samples;
        let reward_std = (rewards.iter().map(|&r| (r as f64 - reward_mean).powi(2)).sum::<f64>() / n_samples).sqrt();
        let lens: Vec<usize> = completions.iter().map(|c| c.tokens.len()).collect();
        let len_mean = lens.iter().sum::<usize>() as f64 / n_samples;
        let clipped =
            completions.iter().filter(|c| c.finish == crate::rollout::Finish::Length).count() as f64 / n_samples;
        let gen_tokens: usize = lens.iter().sum();
        let mut line = serde_json::json!({
            "rl_step": step + 1, "reward_mean": reward_mean, "reward_std": reward_std, "solve_rate": reward_mean,
            "response_len_mean": len_mean, "response_len_max": lens.iter().max().copied().unwrap_or(0),
            "response_clip_ratio": clipped, "loss": loss_v, "clip_frac": clip_frac, "approx_kl": approx_kl,
            "entropy": entropy, "grad_norm": norm, "lr": schedule.lr(step), "logprob_mismatch_abs_mean": mismatch,
            "zero_std_frac": adv.zero_std_fraction(), "trained_samples": keep.len(),
            "gen_tokens_per_s": gen_tokens as f64 / t_gen.max(1e-9), "time_generate_s": t_gen, "time_train_s": secs - t_gen,
        });
        if let (Some(a), Some(b)) = (line.as_object_mut(), out_line.as_object()) {
            a.extend(b.clone());
        }
        writeln!(metrics, "{line}").map_err(|e| Error::Invalid(format!("metrics.jsonl: {e}")))?;
        if (step + 1) % rl.log_every.max(1) == 0 || step == 0 {
            say(
                log,
                format!(
                    "rl step {:>4}/{}  reward {reward_mean:.3}  len {len_mean:.1}  kept {}/{}  clip {clip_frac:.3}  {:.1}s (gen {t_gen:.1}s)",
                    step + 1,
                    rl.steps,
                    keep.len(),
                    rewards.len(),
                    secs
                ),
            );
        }
        if rl.eval_every > 0 && (step + 1) % rl.eval_every == 0 || step + 1 == rl.steps {
            last = evaluate(model, cfg, task, rl, &tok, step + 1)?;
            say(
                log,
                format!(
                    "rl eval step {}: solve rate greedy {:.1}%, sampled {:.1}%",
                    step + 1,
                    100.0 * last.greedy,
                    100.0 * last.sampled
                ),
            );
            let line = serde_json::json!({"rl_step": step + 1, "eval_solve_rate": last.sampled, "eval_solve_rate_greedy": last.greedy});
            writeln!(metrics, "{line}").map_err(|e| Error::Invalid(format!("metrics.jsonl: {e}")))?;
        }
    }
    Ok((before, last))
}
