//! `arbor bench gpu --kind rl-step`: one GRPO step entirely on the GPU, timed by phase.
//!
//! `--prompts` random prompts of `--prompt-len` tokens, `--samples` completions each of up to
//! `--new-tokens` tokens sampled at T = 1 on the device (continuous batching over all of them);
//! a synthetic 0/1 reward (the parity of a completion's token sum, a pure function, so groups are
//! mixed); GRPO advantages (r − mean) / (std + 1e-6) per group; the policy log-probs recomputed by
//! a forward pass and the token-mean policy-gradient loss back-propagated in micro-batches of
//! `--batch` sequences (gradients accumulate on the device); clipping and AdamW on the device; the
//! new weights copied device to device into the decoder. Only token ids, log-probs and the
//! per-token loss gradient cross to the host. Prints one JSON line with the seconds of each phase.

use crate::cuda::{Gpu, GpuDecoder, GpuModel};
use crate::model::Batch;
use crate::rng::Rng;
use crate::rollout::{Completion, GenerateConfig, Request, SamplingParams};
use crate::train::adamw::{AdamW, AdamWConfig};
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

/// The micro-batch of completions `range`: packed prompt + response sequences, and the
/// per-token loss gradient (−A / response tokens of the step at each response token's position).
fn micro_batch(
    requests: &[Request],
    done: &[Completion],
    adv: &[f32],
    range: std::ops::Range<usize>,
    total_tokens: usize,
) -> anyhow::Result<(Batch, Vec<f32>)> {
    let mut batch = Batch::new();
    let mut dlogp = Vec::new();
    for i in range {
        let (prompt, c) = (&requests[i].prompt, &done[i]);
        if c.tokens.is_empty() {
            continue;
        }
        let seq: Vec<u32> = prompt.iter().chain(&c.tokens).copied().collect();
        batch.push_lm(&seq, 0)?;
        // position p predicts token p + 1: response token k is the target at prompt.len() - 1 + k
        let g = -adv[i] / total_tokens as f32;
        dlogp.extend((0..seq.len()).map(|p| if p + 1 >= prompt.len() && p + 1 < seq.len() { g } else { 0.0 }));
    }
    Ok((batch, dlogp))
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
    let mut dec = GpuDecoder::new(gpu, &model)?;
    let mut gm = GpuModel::new(gpu.clone(), &model)?;
    let mut opt = AdamW::for_layout(AdamWConfig::default(), &model.params.layout);
    let micro = args.batch.max(1);
    let mut phases: [Vec<f64>; 4] = Default::default();
    let (mut gen_tokens, mut train_tokens, mut reward_mean) = (0usize, 0usize, 0.0f32);
    for i in 0..args.warmup + args.steps {
        let gen_cfg = GenerateConfig {
            sampling: SamplingParams { temperature: 1.0, top_p: 1.0, top_k: 0, max_new_tokens: args.new_tokens },
            stop_tokens: Vec::new(),
            seed: args.seed,
            step: i as u64,
            max_batch: requests.len(),
            workload: None,
        };
        let t0 = Instant::now();
        let done = dec.generate(&model, &requests, &gen_cfg)?;
        let t1 = Instant::now();
        let rewards: Vec<f32> =
            done.iter().map(|c| (c.tokens.iter().map(|&t| t as u64).sum::<u64>() % 2) as f32).collect();
        let adv = group_advantages(&rewards, args.samples);
        let total: usize = done.iter().map(|c| c.tokens.len()).sum();
        gm.zero_grads()?;
        let (mut fwd, mut packed) = (0.0f64, 0usize);
        for a in (0..requests.len()).step_by(micro) {
            let (batch, dlogp) = micro_batch(&requests, &done, &adv, a..(a + micro).min(requests.len()), total.max(1))?;
            if batch.is_empty() {
                continue;
            }
            let tf = Instant::now();
            gm.forward(&model, &batch)?;
            fwd += tf.elapsed().as_secs_f64();
            gm.backward(&model, &batch, &dlogp, None)?;
            packed += batch.len();
        }
        let t2 = Instant::now();
        gm.adamw_step(&mut opt, 1e-6, 1.0)?;
        dec.load_params(gm.params_device())?;
        gpu.sync()?;
        let t3 = Instant::now();
        if i >= args.warmup {
            let train = (t2 - t1).as_secs_f64();
            phases[0].push((t1 - t0).as_secs_f64());
            phases[1].push(fwd);
            phases[2].push(train - fwd);
            phases[3].push((t3 - t2).as_secs_f64());
            gen_tokens = total;
            train_tokens = packed;
            reward_mean = rewards.iter().sum::<f32>() / rewards.len() as f32;
        }
    }
    let [generate_s, forward_s, backward_s, update_s] = phases.map(median);
    let step_s = generate_s + forward_s + backward_s + update_s;
    let line = serde_json::json!({
        "impl": "arbor-cuda",
        "kind": "rl-step",
        "device": gpu.describe(),
        "dtype": "f32",
        "params": cfg.num_params(),
        "prompts": args.prompts,
        "samples": args.samples,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "micro_batch": micro,
        "generated_tokens": gen_tokens,
        "trained_tokens": train_tokens,
        "reward_mean": reward_mean,
        "generate_s": generate_s,
        "recompute_forward_s": forward_s,
        "backward_s": backward_s,
        "optimizer_and_weight_sync_s": update_s,
        "step_s": step_s,
        "gen_tokens_per_s": gen_tokens as f64 / generate_s,
        "train_tokens_per_s": train_tokens as f64 / (forward_s + backward_s),
    });
    println!("{line}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advantages_are_group_normalised_and_the_gradient_sits_on_response_tokens() {
        let adv = group_advantages(&[1.0, 0.0, 0.0, 0.0, 1.0, 1.0], 3);
        assert!((adv[0] - 2f32.sqrt()).abs() < 1e-5 && (adv[1] + 1.0 / 2f32.sqrt()).abs() < 1e-5);
        assert!((adv[3] + 2f32.sqrt()).abs() < 1e-5, "{adv:?}");
        assert!((adv.iter().sum::<f32>()).abs() < 1e-5);
        let req = |p: u64| Request { prompt_id: p, sample_index: 0, prompt: vec![5, 6, 7] };
        let done = |toks: Vec<u32>| Completion {
            prompt_id: 0,
            sample_index: 0,
            logprobs: vec![0.0; toks.len()],
            entropies: vec![0.0; toks.len()],
            tokens: toks,
            finish: crate::rollout::Finish::Length,
        };
        let (batch, dlogp) =
            micro_batch(&[req(0), req(1)], &[done(vec![1, 2]), done(vec![])], &[0.5, 9.0], 0..2, 4).unwrap();
        // only the first completion is packed: prompt 3 + response 2 = 5 positions; positions 2 and 3
        // predict the two response tokens
        assert_eq!(batch.len(), 5);
        assert_eq!(dlogp, vec![0.0, 0.0, -0.125, -0.125, 0.0]);
    }
}
