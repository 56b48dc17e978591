//! Gradient accumulation in the RL update is exact: splitting a mini-batch into micro-batches, by
//! count or by positions (each normalised by the whole mini-batch's denominators), gives the same gradient, loss and
//! update as one pass, for every aggregation mode and loss kind; mini-batches and epochs run the
//! promised number of updates against a π_old fixed before the first one.

mod common;
use arbor::model::init::init_params;
use arbor::model::micro_batch::MicroBatch;
use arbor::model::{Arch, Batch, Model, ModelConfig, Workspace};
use arbor::rl::{Aggregation, LossConfig, LossKind};
use arbor::rng::Rng;
use arbor::train::engine::Engine;
use arbor::train::rl::{policy_update, Sample, UpdateBatch, UpdateBuffers, UpdatePlan, UpdateSettings};
use arbor::train::{AdamW, AdamWConfig};

fn tiny() -> ModelConfig {
    common::tiny_config(Arch::Qwen2, false)
}

fn model() -> Model {
    let cfg = tiny();
    let params = init_params(&cfg, 3, 0.3);
    Model::new(cfg, params).unwrap()
}

/// Response log-probs of `s` under `m` (teacher forcing).
fn logp(m: &Model, s: &Sample) -> Vec<f32> {
    let mut b = Batch::new();
    let seq: Vec<u32> = s.prompt.iter().chain(&s.response).copied().collect();
    b.push_lm(&seq, 0).unwrap();
    let mut ws = Workspace::new(&m.cfg, 0);
    m.forward(&b, &mut ws).unwrap();
    let base = s.prompt.len() - 1;
    ws.logprobs[base..base + s.response.len()].to_vec()
}

/// Seven samples of ragged lengths (one empty response), behaviour log-probs near the model's.
fn samples(m: &Model) -> Vec<Sample> {
    let mut rng = Rng::new(17);
    let lens = [(3, 5), (2, 1), (4, 0), (5, 6), (2, 3), (3, 4), (4, 2)];
    lens.iter()
        .enumerate()
        .map(|(i, &(p, r))| {
            let prompt: Vec<u32> = (0..p).map(|_| 1 + rng.below(12) as u32).collect();
            let response: Vec<u32> = (0..r).map(|_| 1 + rng.below(12) as u32).collect();
            let adv = (rng.uniform() * 2.0 - 1.0) as f32;
            let mut s = Sample {
                prompt,
                behav_logp: vec![0.0; r],
                advantages: vec![adv; r],
                response,
                reward: if i % 2 == 0 { 1.0 } else { 0.0 },
            };
            s.behav_logp = logp(m, &s).iter().map(|&l| l + (0.3 * rng.normal()) as f32).collect();
            s
        })
        .collect()
}

fn adam(m: &Model) -> AdamW {
    AdamW::for_layout(AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }, &m.params.layout)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    common::max_abs_diff(a, b)
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
    num / den.max(1e-30)
}

#[test]
fn micro_batches_accumulate_to_the_one_pass_gradient() {
    let base = model();
    let data = samples(&base);
    let kinds = [LossKind::Ppo, LossKind::Tis, LossKind::Topr, LossKind::Cispo, LossKind::DecoupledPpo];
    let aggs = [
        Aggregation::TokenMean,
        Aggregation::SeqMeanTokenMean,
        Aggregation::SeqMeanTokenSum,
        Aggregation::SeqMeanTokenSumNorm,
    ];
    for kind in kinds {
        for agg in aggs {
            let cfg = LossConfig { kind, agg, kl_coef: 0.05, entropy_coef: 0.02, ..LossConfig::default() };
            let run = |micro: MicroBatch| {
                let mut m = base.clone();
                let mut opt = adam(&m);
                let mut buf = UpdateBuffers::new(&m);
                let plan = UpdatePlan { epochs: 1, mini_batches: 1, micro_batch: micro, grad_clip: 0.0 };
                let mut engine = Engine::cpu();
                let r = policy_update(
                    &mut engine,
                    &mut m,
                    &mut opt,
                    UpdateBatch::of(&data),
                    &UpdateSettings { loss: &cfg, plan, lr: 1e-2, reference: Some(&base) },
                    &mut buf,
                )
                .unwrap();
                (r, engine.host_grads().unwrap().to_vec(), m.params.data)
            };
            let (one, g1, p1) = run(MicroBatch::default());
            assert!(g1.iter().any(|&g| g != 0.0), "{kind:?}/{agg:?}: zero gradient tests nothing");
            // the samples hold 8, 3, 4, 11, 5, 7, 6 positions: a budget of 8 runs the 11 alone
            let by_tokens = |samples, tokens| MicroBatch { samples, tokens };
            for micro in [1.into(), 2.into(), 3.into(), by_tokens(0, 8), by_tokens(0, 12), by_tokens(2, 12)] {
                let (acc, g, p) = run(micro);
                let e = rel_err(&g, &g1);
                assert!(e < 2e-6, "{kind:?}/{agg:?} micro {micro:?}: gradient rel err {e:e}");
                let dl = (acc.losses[0] - one.losses[0]).abs();
                assert!(dl < 1e-6 * one.losses[0].abs().max(1.0), "{kind:?}/{agg:?} micro {micro:?}: loss {dl:e}");
                assert_eq!(acc.stats.n_tokens, one.stats.n_tokens);
                assert_eq!(acc.stats.n_clipped, one.stats.n_clipped, "{kind:?}/{agg:?} micro {micro:?}");
                // a micro-batch's forward packs fewer rows, so GEMM sums differ in the last bits only
                let d = max_diff(&acc.old_logp, &one.old_logp);
                assert!(d < 1e-5, "{kind:?}/{agg:?}: π_old differs by {d:e}");
                let dp = max_diff(&p, &p1);
                assert!(dp < 1e-5, "{kind:?}/{agg:?} micro {micro:?}: updated weights differ by {dp:e}");
            }
        }
    }
}

#[test]
fn mini_batches_and_epochs_update_against_a_fixed_old_policy() {
    let base = model();
    let data = samples(&base);
    let cfg = LossConfig { kind: LossKind::Ppo, agg: Aggregation::TokenMean, kl_coef: 0.0, ..LossConfig::default() };
    let run = |plan: UpdatePlan| {
        let mut m = base.clone();
        let mut opt = adam(&m);
        let mut buf = UpdateBuffers::new(&m);
        let r = policy_update(
            &mut Engine::cpu(),
            &mut m,
            &mut opt,
            UpdateBatch::of(&data),
            &UpdateSettings { loss: &cfg, plan, lr: 3e-2, reference: None },
            &mut buf,
        )
        .unwrap();
        (r, m.params.data, opt.t)
    };
    let plan = |mini_batches, epochs, micro_batch| UpdatePlan { epochs, mini_batches, micro_batch, grad_clip: 1.0 };
    let (r, p, t) = run(plan(3, 2, MicroBatch::default()));
    assert_eq!(r.losses.len(), 6, "3 mini-batches × 2 epochs = 6 updates");
    assert_eq!(t, 6);
    // π_old is the policy before the first update, for every sample
    let want: Vec<f32> = data.iter().flat_map(|s| logp(&base, s)).collect();
    assert_eq!(r.old_logp.len(), want.len());
    assert!(max_diff(&r.old_logp, &want) < 1e-5, "π_old is not the policy before the first update");
    // the policy moved away from π_old during the step, so later updates see ratios ≠ 1
    assert!(r.stats.approx_kl_sum > 0.0, "later updates must see a moved policy");
    // accumulation inside each mini-batch does not change the multi-update trajectory
    for micro in [1.into(), MicroBatch { samples: 0, tokens: 9 }] {
        let (r2, p2, _) = run(plan(3, 2, micro));
        let dp = max_diff(&p, &p2);
        assert!(dp < 1e-4, "micro-batching {micro:?} changed the weights after 6 updates by {dp:e}");
        assert_eq!(r2.losses.len(), 6);
    }
    // one update per step: π_old = π_θ, every ratio is 1 and nothing is clipped
    let (r1, _, t1) = run(plan(1, 1, MicroBatch::default()));
    assert_eq!((r1.losses.len(), t1), (1, 1));
    assert_eq!(r1.stats.n_clipped, 0);
    assert!(r1.stats.approx_kl_sum.abs() < 1e-9);
}

#[test]
fn mismatched_sample_lengths_are_an_error_not_a_panic() {
    let base = model();
    let mut data = samples(&base);
    data[1].advantages.push(0.5);
    let (mut m, cfg) = (base.clone(), LossConfig { kl_coef: 0.0, ..LossConfig::default() });
    let mut opt = adam(&m);
    let mut buf = UpdateBuffers::new(&m);
    let plan = UpdatePlan::single(1.0);
    let err = policy_update(
        &mut Engine::cpu(),
        &mut m,
        &mut opt,
        UpdateBatch::of(&data),
        &UpdateSettings { loss: &cfg, plan, lr: 1e-3, reference: None },
        &mut buf,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("advantages"), "{err}");
}

/// A value model's backward takes each row at most once (a repeated row would count twice in the
/// head's gradient and once in the trunk's): an error naming it, while distinct rows run.
#[test]
fn the_value_head_backward_refuses_a_repeated_row() {
    let m = model();
    let mut b = Batch::new();
    b.push_lm(&[1, 2, 3, 4, 5], 0).unwrap();
    let mut ws = Workspace::new(&m.cfg, 0);
    let mut e = Engine::cpu();
    e.zero_grads(&m).unwrap();
    let c = m.cfg.hidden_size;
    let head = vec![0.1f32; c + 1];
    let mut head_grads = vec![0.0f32; c + 1];
    e.trunk_values(&m, &b, &mut ws, &head).unwrap();
    let err = e.accumulate_trunk_head(&m, &b, &mut ws, &head, (&[1, 3, 1], &[0.5, 0.5, 0.5]), &mut head_grads);
    assert!(err.unwrap_err().to_string().contains("each at most once"));
    e.accumulate_trunk_head(&m, &b, &mut ws, &head, (&[1, 3], &[0.5, 0.5]), &mut head_grads).unwrap();
    assert_eq!(head_grads[c], 1.0, "the bias gradient sums the rows' dv");
}

/// `[loss] old_logprobs = "behaviour"`: the ratio's π_old is the sampler's μ, so with one update a
/// step r = π_θ/μ carries the samples' staleness (and the rollout mismatch), which tis, topr and
/// cispo correct; with the default recompute r ≡ 1 there. Each token's r is checked through the
/// loss statistics against a direct computation, and the mismatch statistics equal the recompute's.
#[test]
fn the_behaviour_log_probs_can_be_the_ratios_base() {
    use arbor::rl::OldLogprobs;
    let base = model();
    let data = samples(&base);
    let run = |kind, old_logprobs| {
        let cfg = LossConfig { kind, agg: Aggregation::TokenMean, kl_coef: 0.0, old_logprobs, ..LossConfig::default() };
        let mut m = base.clone();
        let mut opt = adam(&m);
        let mut buf = UpdateBuffers::new(&m);
        let plan = UpdatePlan::single(0.0);
        let settings = UpdateSettings { loss: &cfg, plan, lr: 1e-2, reference: None };
        policy_update(&mut Engine::cpu(), &mut m, &mut opt, UpdateBatch::of(&data), &settings, &mut buf).unwrap()
    };
    // r = exp(logπ_θ − logμ) per token, at the weights the update starts from
    let ratios: Vec<f64> = data
        .iter()
        .flat_map(|s| logp(&base, s).into_iter().zip(s.behav_logp.clone()).map(|(l, b)| ((l - b) as f64).exp()))
        .collect();
    let n = ratios.len() as f64;
    for kind in [LossKind::Tis, LossKind::Topr, LossKind::Cispo, LossKind::Ppo] {
        let same = run(kind, OldLogprobs::Recompute).stats;
        assert_eq!(same.ratio_sum, same.n_tokens as f64, "{kind:?}: recomputed π_old gives r = 1");
        let behaviour = run(kind, OldLogprobs::Behaviour).stats;
        let want: f64 = ratios.iter().sum();
        assert!((behaviour.ratio_sum - want).abs() < 1e-4 * n, "{kind:?}: Σr {} vs {want}", behaviour.ratio_sum);
        assert!(behaviour.n_clipped > 0, "{kind:?}: ratios away from 1 get clipped");
        // the rollout-vs-trainer mismatch still reads |log π_θ − log μ| (not |μ − μ| = 0), as
        // with the recompute
        assert!(behaviour.mismatch_abs_sum > 0.0, "{kind:?}: no mismatch reported");
        assert!((behaviour.mismatch_abs_sum - same.mismatch_abs_sum).abs() < 1e-6 * n, "{kind:?}: Σ|Δ|");
        assert_eq!(behaviour.mismatch_abs_max, same.mismatch_abs_max, "{kind:?}: max|Δ|");
    }
    // tis clips r at 1: exactly the tokens the sampler found less likely than the policy does
    let tis = run(LossKind::Tis, OldLogprobs::Behaviour).stats;
    assert_eq!(tis.n_clipped, ratios.iter().filter(|&&r| r > 1.0).count() as u64);
}

/// The off-policy AttnRL pipeline fixes the generating policy's log-probs for tokens sampled a
/// step earlier. ppo takes them as π_old (its clip absorbs the staleness, ALGORITHMS.md §4);
/// decoupled_ppo keeps the policy before the update as π_prox (r = 1 at the first update) and
/// takes them as μ: w = min(π_prox/μ, cap). NaN entries fall back to each loss's own choice.
#[test]
fn fixed_old_log_probs_are_ppos_old_and_decoupled_ppos_behaviour() {
    let base = model();
    let data = samples(&base);
    let now: Vec<f32> = data.iter().flat_map(|s| logp(&base, s)).collect();
    // the generating policy a step earlier: 0.3 nats less likely on every other token
    let fixed: Vec<f32> = now.iter().enumerate().map(|(i, &l)| if i % 2 == 0 { l - 0.3 } else { f32::NAN }).collect();
    let run = |kind| {
        let cfg = LossConfig { kind, agg: Aggregation::TokenMean, kl_coef: 0.0, ..LossConfig::default() };
        let mut m = base.clone();
        let mut opt = adam(&m);
        let mut buf = UpdateBuffers::new(&m);
        let settings = UpdateSettings { loss: &cfg, plan: UpdatePlan::single(0.0), lr: 1e-2, reference: None };
        let batch = UpdateBatch { samples: &data, fixed_old_logp: &fixed, entropy_keep: &[] };
        policy_update(&mut Engine::cpu(), &mut m, &mut opt, batch, &settings, &mut buf).unwrap().stats
    };
    let n = now.len() as f64;
    let (even, odd) = ((now.len() as f64 / 2.0).ceil(), (now.len() as f64 / 2.0).floor());
    let ppo = run(LossKind::Ppo);
    let want = even * 0.3f64.exp() + odd;
    assert!((ppo.ratio_sum - want).abs() < 1e-3 * n, "ppo: Σr {} vs {want}", ppo.ratio_sum);
    let dec = run(LossKind::DecoupledPpo);
    assert_eq!(dec.ratio_sum, n, "decoupled_ppo: r = π_θ/π_prox = 1 at the first update");
    // w = min(π_prox/μ, 1.2): e^0.3 capped at 1.2 on the fixed tokens, the sampler's μ elsewhere
    let behav: Vec<f32> = data.iter().flat_map(|s| s.behav_logp.clone()).collect();
    let want: f64 =
        (0..now.len()).map(|i| if i % 2 == 0 { 1.2 } else { (((now[i] - behav[i]) as f64).exp()).min(1.2) }).sum();
    assert!((dec.weight_sum - want).abs() < 1e-3 * n, "decoupled_ppo: Σw {} vs {want}", dec.weight_sum);
    assert!(dec.n_capped as f64 >= even, "every fixed token's weight hits the cap");
}
