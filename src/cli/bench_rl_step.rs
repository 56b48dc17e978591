//! `arbor bench gpu --kind rl-step`: one GRPO step entirely on the GPU through the trainer's own
//! code (`train::engine::Engine` and `train::rl::policy_update`), timed by phase.
//!
//! `--prompts` random prompts of `--prompt-len` tokens, `--samples` completions each of up to
//! `--new-tokens` tokens sampled at T = 1 on the device (continuous batching over all of them);
//! a synthetic 0/1 reward (the parity of a completion's token sum, a pure function, so groups are
//! mixed); GRPO advantages (r − mean) / (std + 1e-6) per group. Then the recompute of π_old (the
//! forward pass the trainer makes before several updates per step) and one policy update (PPO,
//! token-mean, forward + backward in micro-batches of `--batch` sequences with gradients
//! accumulating on the device, clipping and AdamW on the device; the decoder picks up the new
//! weights device to device at the next generation). Only token ids, log-probs, per-token loss
//! gradients and metrics cross to the host. Prints one JSON line with the seconds of each phase.

use crate::cuda::Gpu;
use crate::model::{Batch, Workspace};
use crate::rl::LossConfig;
use crate::rng::Rng;
use crate::rollout::{GenerateConfig, Request, SamplingParams};
use crate::train::adamw::{AdamW, AdamWConfig};
use crate::train::engine::Engine;
use crate::train::rl::{policy_update, Sample, UpdateBatch, UpdateBuffers, UpdatePlan, UpdateSettings};
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// The flags of `arbor bench gpu` that the rl-step reads.
pub struct RlStepArgs {
    pub model_config: Option<PathBuf>,
    pub prompts: usize,
    pub samples: usize,
    pub prompt_len: usize,
    pub new_tokens: usize,
    /// Sequences per forward/backward micro-batch.
    pub batch: usize,
    pub steps: usize,
    pub warmup: usize,
    pub seed: u64,
    /// One more step with its operations timed (`arbor bench gpu --profile`).
    pub profile: bool,
}

/// GRPO advantages of each completion, groups of `n` consecutive completions.
fn group_advantages(rewards: &[f32], n: usize) -> Vec<f32> {
    let mut adv = Vec::with_capacity(rewards.len());
    for g in rewards.chunks(n) {
        let mean = g.iter().sum::<f32>() / g.len() as f32;
        let var = g.iter().map(|r| (r - mean) * (r - mean)).sum::<f32>() / g.len() as f32;
        adv.extend(g.iter().map(|r| (r - mean) / (var.sqrt() + 1e-6)));
    }
    adv
}

/// The rl-step benchmark (see the module doc).
pub fn rl_step(gpu: &Arc<Gpu>, args: &RlStepArgs) -> anyhow::Result<()> {
    use crate::cli::bench_common::{load_model, median};
    let path = args.model_config.as_ref().context("--model-config is required for --kind rl-step")?;
    let model = load_model(path, args.seed).with_context(|| format!("loading {}", path.display()))?;
    let cfg = model.cfg.clone();
    anyhow::ensure!(args.prompts > 0 && args.samples > 0, "--prompts and --samples must be positive");
    anyhow::ensure!(args.prompt_len > 0 && args.new_tokens > 0, "--prompt-len and --new-tokens must be positive");
    anyhow::ensure!(
        args.prompt_len + args.new_tokens <= cfg.max_position_embeddings,
        "--prompt-len + --new-tokens exceeds max_position_embeddings"
    );
    let mut rng = Rng::new(args.seed);
    let v = cfg.vocab_size as u64;
    let mut requests = Vec::with_capacity(args.prompts * args.samples);
    for p in 0..args.prompts {
        let prompt: Vec<u32> = (0..args.prompt_len).map(|_| rng.below(v) as u32).collect();
        for s in 0..args.samples {
            requests.push(Request { prompt_id: p as u64, sample_index: s as u32, prompt: prompt.clone() });
        }
    }
    let mut model = model;
    let mut engine = Engine::cuda(gpu.clone(), &model)?;
    let mut opt = AdamW::for_layout(AdamWConfig::default(), &model.params.layout);
    let mut buf = UpdateBuffers::new(&model);
    let micro = args.batch.max(1);
    let loss = LossConfig { agg: crate::rl::Aggregation::TokenMean, kl_coef: 0.0, ..LossConfig::default() };
    let plan = UpdatePlan { epochs: 1, mini_batches: 1, micro_batch: micro.into(), grad_clip: 1.0 };
    let settings = UpdateSettings { loss: &loss, plan, lr: 1e-6, reference: None };
    let (mut ws, mut batch) = (Workspace::default(), Batch::new());
    let mut phases: [Vec<f64>; 3] = Default::default();
    let (mut gen_tokens, mut train_tokens, mut reward_mean, mut last_loss) = (0usize, 0usize, 0.0f32, 0.0f64);
    for i in 0..args.warmup + args.steps + usize::from(args.profile) {
        let profiling = crate::cli::bench_common::profiled_step(gpu, args.profile, i, args.warmup + args.steps);
        let gen_cfg = GenerateConfig {
            sampling: SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0, max_new_tokens: args.new_tokens },
            stop_tokens: Vec::new(),
            seed: args.seed,
            step: i as u64,
            max_batch: requests.len(),
            workload: None,
        };
        let t0 = Instant::now();
        let done = engine.generate(&model, &requests, &gen_cfg)?;
        let t1 = Instant::now();
        let rewards: Vec<f32> =
            done.iter().map(|c| (c.tokens.iter().map(|&t| t as u64).sum::<u64>() % 2) as f32).collect();
        let adv = group_advantages(&rewards, args.samples);
        let samples: Vec<Sample> = requests
            .iter()
            .zip(done)
            .zip(&adv)
            .filter(|((_, c), _)| !c.tokens.is_empty())
            .map(|((r, c), &a)| Sample {
                prompt: r.prompt.clone(),
                advantages: vec![a; c.tokens.len()],
                reward: (c.tokens.iter().map(|&t| t as u64).sum::<u64>() % 2) as f32,
                behav_logp: c.logprobs,
                response: c.tokens,
            })
            .collect();
        // the π_old recompute the trainer makes before several updates per step
        let mut packed = 0;
        for chunk in samples.chunks(micro) {
            batch.clear();
            for s in chunk {
                let seq: Vec<u32> = s.prompt.iter().chain(&s.response).copied().collect();
                batch.push_lm(&seq, 0)?;
            }
            engine.forward(&model, &batch, &mut ws)?;
            packed += batch.len();
        }
        let t2 = Instant::now();
        let report = policy_update(&mut engine, &mut model, &mut opt, UpdateBatch::of(&samples), &settings, &mut buf)?;
        gpu.sync()?;
        let t3 = Instant::now();
        if i >= args.warmup && !profiling {
            phases[0].push((t1 - t0).as_secs_f64());
            phases[1].push((t2 - t1).as_secs_f64());
            phases[2].push((t3 - t2).as_secs_f64());
            gen_tokens = samples.iter().map(|s| s.response.len()).sum();
            train_tokens = packed;
            reward_mean = rewards.iter().sum::<f32>() / rewards.len() as f32;
            last_loss = report.losses.first().copied().unwrap_or(f64::NAN);
        }
    }
    let [generate_s, recompute_s, train_s] = phases.map(median);
    let step_s = generate_s + recompute_s + train_s;
    let mut line = serde_json::json!({
        "impl": "arbor-cuda",
        "kind": "rl-step",
        "device": gpu.describe(),
        "dtype": gpu.dtype().name(),
        "attn_mma": gpu.attn_mma().name(),
        "attn_rows": gpu.attn_rows().name(),
        "params": cfg.num_params(),
        "prompts": args.prompts,
        "samples": args.samples,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "micro_batch": micro,
        "generated_tokens": gen_tokens,
        "trained_tokens": train_tokens,
        "reward_mean": reward_mean,
        "loss": last_loss,
        "generate_s": generate_s,
        "recompute_s": recompute_s,
        "train_s": train_s,
        "step_s": step_s,
        "gen_tokens_per_s": gen_tokens as f64 / generate_s,
        "train_tokens_per_s": train_tokens as f64 / train_s,
        // the GPU's memory in use after the steps (every process's, with what the pool keeps)
        "device_mem_mib": engine.device_mem_mib(),
        // this process's buffers at their peak over the run (the memory pool's high-water mark)
        "device_peak_mib": engine.take_device_peak_mib(),
        "pool": gpu.pool_policy().map(|p| p.name()),
    });
    crate::cli::bench_common::add_profile(gpu, args.profile, &mut line)?;
    println!("{line}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advantages_are_group_normalised() {
        let adv = group_advantages(&[1.0, 0.0, 0.0, 0.0, 1.0, 1.0], 3);
        assert!((adv[0] - 2f32.sqrt()).abs() < 1e-5 && (adv[1] + 1.0 / 2f32.sqrt()).abs() < 1e-5);
        assert!((adv[3] + 2f32.sqrt()).abs() < 1e-5, "{adv:?}");
        assert!((adv.iter().sum::<f32>()).abs() < 1e-5);
    }
}
