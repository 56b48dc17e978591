//! Policy losses against hand-computed values (every branch: unclipped, clipped high/low, dual clip, topr's reward
//! sign, decoupled weight cap, k3 KL with its clamp, entropy, all four aggregations), a finite-difference check of
//! dlogp/dent for every kind × aggregation, and the gradient-accumulation equivalence (3 micro-batches with
//! full-batch denominators = one big batch, bit for bit).

use arbor::rl::{
    k3_kl, policy_loss, Aggregation, Denominators, LossConfig, LossConfigError, LossKind, LossOutput, TokenBatch,
};

const KINDS: [LossKind; 5] = [LossKind::Ppo, LossKind::Tis, LossKind::Topr, LossKind::Cispo, LossKind::DecoupledPpo];
const AGGS: [Aggregation; 4] = [
    Aggregation::TokenMean,
    Aggregation::SeqMeanTokenMean,
    Aggregation::SeqMeanTokenSum,
    Aggregation::SeqMeanTokenSumNorm,
];

/// Owned inputs of a [`TokenBatch`].
#[derive(Clone, Default)]
struct Data {
    seq_starts: Vec<usize>,
    logp: Vec<f32>,
    old: Vec<f32>,
    behav: Vec<f32>,
    reference: Option<Vec<f32>>,
    entropy: Vec<f32>,
    adv: Vec<f32>,
    reward: Vec<f32>,
}

impl Data {
    fn batch(&self) -> TokenBatch<'_> {
        TokenBatch {
            seq_starts: &self.seq_starts,
            logp: &self.logp,
            old_logp: &self.old,
            behav_logp: Some(&self.behav),
            ref_logp: self.reference.as_deref(),
            entropy: &self.entropy,
            advantages: &self.adv,
            seq_reward: &self.reward,
        }
    }

    /// Token with log-prob `logp`, ratio r = π_θ/π_old, proximal/behaviour ratio `prox_over_mu`, advantage `adv`.
    fn push(&mut self, logp: f64, r: f64, prox_over_mu: f64, adv: f32) {
        let old = logp - r.ln();
        self.logp.push(logp as f32);
        self.old.push(old as f32);
        self.behav.push((old - prox_over_mu.ln()) as f32);
        self.adv.push(adv);
        self.entropy.push(0.0);
    }

    fn end_seq(&mut self, reward: f32) {
        if self.seq_starts.is_empty() {
            self.seq_starts.push(0);
        }
        self.seq_starts.push(self.logp.len());
        self.reward.push(reward);
    }
}

fn run(d: &Data, cfg: &LossConfig, denom: Option<&Denominators>) -> (LossOutput, Vec<f32>, Vec<f32>) {
    let n = d.logp.len();
    let (mut dlogp, mut dent) = (vec![f32::NAN; n], vec![f32::NAN; n]);
    let out = policy_loss(&d.batch(), cfg, denom, &mut dlogp, &mut dent).unwrap();
    (out, dlogp, dent)
}

fn cfg(kind: LossKind, agg: Aggregation) -> LossConfig {
    LossConfig { kind, agg, kl_coef: 0.0, ..LossConfig::default() }
}

#[track_caller]
fn assert_close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "{what}: got {got}, want {want}");
}

#[track_caller]
fn assert_all_close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (t, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert_close(f64::from(g), w, &format!("{what}[{t}]"));
    }
}

/// Per-token ℓ and ∂ℓ/∂logπ of a hand example, then aggregated with weights `a` to (loss, dlogp).
fn aggregate(ell: &[f64], grad: &[f64], a: &[f64]) -> (f64, Vec<f64>) {
    let loss = ell.iter().zip(a).map(|(l, a)| l * a).sum();
    (loss, grad.iter().zip(a).map(|(g, a)| g * a).collect())
}

/// PPO example: response 0 (A = 2) r = 1.1 unclipped, 1.5 clipped high, 0.5 below the band but unclipped (A > 0);
/// response 1 (A = −1) r = 0.9 unclipped, 0.5 clipped low, 2.0 above the band but unclipped (A < 0), 4.0 dual clip.
fn ppo_example() -> Data {
    let mut d = Data::default();
    for r in [1.1, 1.5, 0.5] {
        d.push(-1.0, r, 1.0, 2.0);
    }
    d.end_seq(1.0);
    for r in [0.9, 0.5, 2.0, 4.0] {
        d.push(-1.0, r, 1.0, -1.0);
    }
    d.end_seq(0.0);
    d
}

// ℓ = max(−rA, −clip(r, 0.8, 1.28)A), dual min(·, −3A) for A < 0; ∂ℓ/∂logπ = −rA on the unclipped branch, else 0.
const PPO_ELL: [f64; 7] = [-2.2, -2.56, -1.0, 0.9, 0.8, 2.0, 3.0];
const PPO_GRAD: [f64; 7] = [-2.2, 0.0, -1.0, 0.9, 0.0, 2.0, 0.0];

#[test]
fn ppo_branches_token_mean() {
    let d = ppo_example();
    let (out, dlogp, dent) = run(&d, &cfg(LossKind::Ppo, Aggregation::TokenMean), None);
    let (loss, grad) = aggregate(&PPO_ELL, &PPO_GRAD, &[1.0 / 7.0; 7]);
    assert_close(out.loss, loss, "loss");
    assert_close(out.loss, 0.94 / 7.0, "loss by hand");
    assert_all_close(&dlogp, &grad, "dlogp");
    assert_eq!(dent, vec![0.0; 7], "entropy_coef 0 ⇒ no entropy gradient");
    assert_eq!((out.stats.n_clipped, out.stats.n_dual_clipped, out.stats.n_tokens), (2, 1, 7));
    assert_close(out.stats.dual_clip_frac(), 1.0 / 7.0, "dual clip fraction");
    assert_close(out.stats.mean_ratio(), (1.1 + 1.5 + 0.5 + 0.9 + 0.5 + 2.0 + 4.0) / 7.0, "mean ratio");
    let approx_kl: f64 = [1.1f64, 1.5, 0.5, 0.9, 0.5, 2.0, 4.0].iter().map(|r| r - 1.0 - r.ln()).sum::<f64>() / 7.0;
    assert_close(out.stats.approx_kl(), approx_kl, "approx kl");
}

#[test]
fn ppo_without_dual_clip_and_symmetric_eps() {
    let d = ppo_example();
    let c = LossConfig { dual_clip: 0.0, eps_high: Some(0.2), ..cfg(LossKind::Ppo, Aggregation::TokenMean) };
    let (out, dlogp, _) = run(&d, &c, None);
    // r = 1.5, A = 2: max(−3, −1.2·2) = −2.4; r = 4, A = −1: max(4, 1.2) = 4 with gradient −rA = 4.
    let ell = [-2.2, -2.4, -1.0, 0.9, 0.8, 2.0, 4.0];
    let g = [-2.2, 0.0, -1.0, 0.9, 0.0, 2.0, 4.0];
    let (loss, grad) = aggregate(&ell, &g, &[1.0 / 7.0; 7]);
    assert_close(out.loss, loss, "loss");
    assert_all_close(&dlogp, &grad, "dlogp");
    assert_eq!((out.stats.n_clipped, out.stats.n_dual_clipped), (2, 0));
}

#[test]
fn every_aggregation_weights_the_ppo_example() {
    let d = ppo_example(); // lengths 3 and 4, 2 responses, 7 tokens
    let cases: [(Aggregation, Option<usize>, [f64; 2]); 5] = [
        (Aggregation::TokenMean, None, [1.0 / 7.0, 1.0 / 7.0]),
        (Aggregation::SeqMeanTokenMean, None, [1.0 / 6.0, 1.0 / 8.0]),
        (Aggregation::SeqMeanTokenSum, None, [0.5, 0.5]),
        (Aggregation::SeqMeanTokenSumNorm, None, [1.0 / 8.0, 1.0 / 8.0]), // T_max = longest = 4
        (Aggregation::SeqMeanTokenSumNorm, Some(10), [1.0 / 20.0, 1.0 / 20.0]),
    ];
    for (agg, t_max, [a0, a1]) in cases {
        let c = LossConfig { t_max, ..cfg(LossKind::Ppo, agg) };
        let (out, dlogp, _) = run(&d, &c, None);
        let a = [a0, a0, a0, a1, a1, a1, a1];
        let (loss, grad) = aggregate(&PPO_ELL, &PPO_GRAD, &a);
        assert_close(out.loss, loss, &format!("{agg:?} loss"));
        assert_close(out.policy_loss, loss, &format!("{agg:?} policy loss"));
        assert_all_close(&dlogp, &grad, &format!("{agg:?} dlogp"));
    }
}

/// Tokens (logπ, r) for the REINFORCE-style kinds: response 0 has A = 2, response 1 has A = −1.
fn reinforce_example(reward0: f32, reward1: f32) -> Data {
    let mut d = Data::default();
    for (logp, r) in [(-0.5, 0.5), (-1.0, 2.0), (-2.0, 0.25)] {
        d.push(logp, r, 1.0, 2.0);
    }
    d.end_seq(reward0);
    for (logp, r) in [(-1.0, 0.5), (-0.25, 3.0)] {
        d.push(logp, r, 1.0, -1.0);
    }
    d.end_seq(reward1);
    d
}

#[test]
fn tis_truncates_the_ratio_at_one_under_stop_gradient() {
    let d = reinforce_example(1.0, 0.0);
    let (out, dlogp, _) = run(&d, &cfg(LossKind::Tis, Aggregation::SeqMeanTokenSum), None);
    // ℓ = −clip(r,0,1)·A·logπ, ∂ℓ/∂logπ = −clip(r,0,1)·A; coefficients 0.5, 1, 0.25 | 0.5, 1.
    let ell = [0.5, 2.0, 1.0, -0.5, -0.25];
    let g = [-1.0, -2.0, -0.5, 0.5, 1.0];
    let (loss, grad) = aggregate(&ell, &g, &[0.5; 5]);
    assert_close(out.loss, loss, "loss");
    assert_all_close(&dlogp, &grad, "dlogp");
    assert_eq!(out.stats.n_clipped, 2, "r = 2 and r = 3 truncated");
}

#[test]
fn topr_positive_reward_is_plain_reinforce_and_the_rest_truncated_is() {
    let d = reinforce_example(1.0, 0.0);
    let (out, dlogp, _) = run(&d, &cfg(LossKind::Topr, Aggregation::SeqMeanTokenSum), None);
    // Response 0 (R = 1 > 0): ℓ = −A·logπ = 1, 2, 4, gradient −A = −2 each. Response 1 (R = 0): as tis.
    let ell = [1.0, 2.0, 4.0, -0.5, -0.25];
    let g = [-2.0, -2.0, -2.0, 0.5, 1.0];
    let (loss, grad) = aggregate(&ell, &g, &[0.5; 5]);
    assert_close(out.loss, loss, "loss");
    assert_all_close(&dlogp, &grad, "dlogp");
    assert_eq!(out.stats.n_clipped, 1, "only the non-positive response truncates");

    // A negative reward also takes the truncated branch; a positive one on response 1 turns it into REINFORCE.
    let (out_neg, ..) = run(&reinforce_example(1.0, -1.0), &cfg(LossKind::Topr, Aggregation::SeqMeanTokenSum), None);
    assert_close(out_neg.loss, loss, "negative reward = zero reward branch");
    let (_, dlogp_pos, _) =
        run(&reinforce_example(-1.0, 0.5), &cfg(LossKind::Topr, Aggregation::SeqMeanTokenSum), None);
    assert_all_close(&dlogp_pos, &[-0.5, -1.0, -0.25, 0.5, 0.5], "swapped rewards");
}

#[test]
fn cispo_clips_the_stop_gradient_weight_to_its_band() {
    let mut d = Data::default();
    for r in [1.05, 1.5, 0.5] {
        d.push(-1.0, r, 1.0, 2.0);
    }
    d.end_seq(1.0);
    let c = cfg(LossKind::Cispo, Aggregation::SeqMeanTokenMean);
    assert_eq!((c.eps_low(), c.eps_high()), (0.1, 0.1), "cispo defaults");
    let (out, dlogp, _) = run(&d, &c, None);
    // coefficient clip(r, 0.9, 1.1) = 1.05, 1.1, 0.9; ℓ = −coef·2·(−1) = 2·coef, gradient −2·coef; weight 1/3.
    let (loss, grad) = aggregate(&[2.1, 2.2, 1.8], &[-2.1, -2.2, -1.8], &[1.0 / 3.0; 3]);
    assert_close(out.loss, loss, "loss");
    assert_all_close(&dlogp, &grad, "dlogp");
    assert_eq!(out.stats.n_clipped, 2);
}

#[test]
fn decoupled_ppo_weights_by_capped_prox_over_behaviour() {
    let mut d = Data::default();
    // (r = π_θ/π_prox, π_prox/μ): w = 1; w = min(2, 1.2) = 1.2 (capped); w = 0.5 on a clipped-high token.
    for (r, pm) in [(1.1, 1.0), (1.1, 2.0), (1.5, 0.5)] {
        d.push(-1.0, r, pm, 1.0);
    }
    d.end_seq(1.0);
    let (out, dlogp, _) = run(&d, &cfg(LossKind::DecoupledPpo, Aggregation::TokenMean), None);
    let (loss, grad) = aggregate(&[-1.1, -1.32, -0.64], &[-1.1, -1.32, 0.0], &[1.0 / 3.0; 3]);
    assert_close(out.loss, loss, "loss");
    assert_all_close(&dlogp, &grad, "dlogp");
    assert_eq!((out.stats.n_capped, out.stats.n_clipped), (1, 1));
    assert_close(out.stats.cap_frac(), 1.0 / 3.0, "capped fraction");
    assert_close(out.stats.mean_weight(), (1.0 + 1.2 + 0.5) / 3.0, "mean weight");
    assert_close(out.stats.mismatch_abs_max, 2f64.ln(), "max |logπ_old − logμ|");

    let mut no_behav = d.batch();
    no_behav.behav_logp = None;
    let (mut g, mut e) = (vec![0.0; 3], vec![0.0; 3]);
    let c = cfg(LossKind::DecoupledPpo, Aggregation::TokenMean);
    assert!(policy_loss(&no_behav, &c, None, &mut g, &mut e).is_err(), "decoupled_ppo needs behaviour log-probs");
}

#[test]
fn k3_kl_values_gradient_and_clamp() {
    // k = logπ_ref − logπ; KL = e^k − k − 1, ∂/∂logπ = 1 − e^k; clamped (zero gradient) above 10.
    let cases = [(0.0f64, 0.0, 0.0), (2f64.ln(), 1.0 - 2f64.ln(), -1.0), (-1.0, (-1f64).exp(), 1.0 - (-1f64).exp())];
    for (k, kl, g) in cases {
        let (v, d) = k3_kl(-1.0, (-1.0 + k) as f32, 10.0);
        assert_close(v, kl, "kl");
        assert_close(d, g, "dkl");
    }
    assert_eq!(k3_kl(-1.0, 2.0, 10.0), (10.0, 0.0), "k = 3: e³ − 4 ≈ 16.1 clamps");
    assert_eq!(k3_kl(-1.0, -13.0, 10.0), (10.0, 0.0), "k = −12: ≈ 11 clamps");
}

#[test]
fn kl_and_entropy_terms_enter_loss_and_gradients() {
    let mut d = Data::default();
    for (r, h) in [(1.1, 0.5), (1.5, 1.0)] {
        d.push(-1.0, r, 1.0, 2.0);
        *d.entropy.last_mut().unwrap() = h;
    }
    d.end_seq(1.0);
    d.push(-1.0, 0.9, 1.0, -1.0);
    *d.entropy.last_mut().unwrap() = 2.0;
    d.end_seq(0.0);
    // Reference offsets k = ln 2, −1, 3 (the last clamps).
    let ks = [2f64.ln(), -1.0, 3.0];
    d.reference = Some(ks.iter().map(|k| (-1.0 + k) as f32).collect());
    let c = LossConfig { kl_coef: 0.1, entropy_coef: 0.01, ..cfg(LossKind::Ppo, Aggregation::SeqMeanTokenMean) };
    let (out, dlogp, dent) = run(&d, &c, None);
    let a = [0.25, 0.25, 0.5]; // 1/(2·2), 1/(2·2), 1/(2·1)
    let ell = [-2.2, -2.56, 0.9];
    let kl = [1.0 - 2f64.ln(), (-1f64).exp(), 10.0];
    let dkl = [-1.0, 1.0 - (-1f64).exp(), 0.0];
    let h = [0.5, 1.0, 2.0];
    let agg = |x: &[f64]| x.iter().zip(a).map(|(x, a)| x * a).sum::<f64>();
    assert_close(out.policy_loss, agg(&ell), "policy loss");
    assert_close(out.kl_loss, agg(&kl), "kl loss");
    assert_close(out.entropy_loss, agg(&h), "entropy loss");
    assert_close(out.loss, agg(&ell) + 0.1 * agg(&kl) - 0.01 * agg(&h), "total");
    let want: Vec<f64> = (0..3).map(|t| a[t] * ([-2.2, 0.0, 0.9][t] + 0.1 * dkl[t])).collect();
    assert_all_close(&dlogp, &want, "dlogp");
    assert_all_close(&dent, &[-0.0025, -0.0025, -0.005], "dent = −β_ent·a_t");
    assert_close(out.stats.ref_kl(), kl.iter().sum::<f64>() / 3.0, "mean ref kl");
    assert_close(out.stats.entropy(), 3.5 / 3.0, "mean entropy");

    // kl_coef > 0 without reference log-probs is an error, not a silent zero.
    d.reference = None;
    let (mut g, mut e) = (vec![0.0; 3], vec![0.0; 3]);
    assert!(policy_loss(&d.batch(), &c, None, &mut g, &mut e).is_err());
}

#[test]
fn config_defaults_toml_and_validation() {
    let c: LossConfig = toml::from_str("").unwrap();
    assert_eq!(c, LossConfig::default());
    assert_eq!((c.kind, c.agg), (LossKind::Ppo, Aggregation::SeqMeanTokenMean));
    assert_eq!((c.eps_low(), c.eps_high(), c.dual_clip_c()), (0.2, 0.28, Some(3.0)));
    assert_eq!((c.decoupled_cap, c.kl_coef, c.kl_clamp, c.entropy_coef), (1.2, 0.001, 10.0, 0.0));
    let c: LossConfig =
        toml::from_str("kind = \"decoupled_ppo\"\nagg = \"seq-mean-token-sum-norm\"\nt_max = 64\ndual_clip = 0.0")
            .unwrap();
    assert_eq!(
        (c.kind, c.agg, c.t_max, c.dual_clip_c()),
        (LossKind::DecoupledPpo, Aggregation::SeqMeanTokenSumNorm, Some(64), None)
    );
    let err = toml::from_str::<LossConfig>("eps = 0.2").unwrap_err().to_string();
    assert!(err.contains("eps"), "{err}");
    assert!(toml::from_str::<LossConfig>("agg = \"token_mean\"").is_err());
    let bad = |c: LossConfig| c.validate().unwrap_err();
    assert_eq!(bad(LossConfig { dual_clip: 0.5, ..c.clone() }).key, "dual_clip");
    assert_eq!(bad(LossConfig { eps_low: Some(1.0), ..c.clone() }).key, "eps_low");
    let e: LossConfigError = bad(LossConfig { kl_coef: -1.0, ..c.clone() });
    assert!(e.to_string().contains("kl_coef"), "{e}");
    assert_eq!(bad(LossConfig { t_max: Some(0), ..c.clone() }).key, "t_max");
    assert!(c.validate().is_ok());
}

/// Deterministic pseudo-random numbers (SplitMix64) so the randomized tests replay exactly.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next()
    }
}

/// Values on a 2^-12 grid, so that logπ ± 2^-10 and logπ_old ± 2^-10 are exact in f32.
fn grid(x: f64) -> f32 {
    ((x * 4096.0).round() / 4096.0) as f32
}

/// A random batch whose ratios, decoupled weights and KL terms keep at least `margin` (in log space) away from
/// every kink: 1−ε_l, 1+ε_h, c, 1 (tis/topr truncation), 0.9/1.1 (cispo), the decoupled cap, and the KL clamp.
fn random_batch(rng: &mut Rng, lens: &[usize], margin: f64) -> Data {
    let kinks = [0.8f64, 1.28, 3.0, 1.0, 0.9, 1.1];
    let away = |x: f64, ks: &[f64]| ks.iter().all(|k| (x.ln() - k.ln()).abs() > margin);
    let mut d = Data { reference: Some(vec![]), ..Data::default() };
    for &len in lens {
        for _ in 0..len {
            let logp = grid(rng.range(-4.0, -0.05));
            let old = loop {
                let old = grid(f64::from(logp) - rng.range(-1.6, 1.6));
                if away(f64::from(logp - old).exp(), &kinks) {
                    break old;
                }
            };
            let behav = loop {
                let b = grid(f64::from(old) - rng.range(-0.6, 0.6));
                if away(f64::from(old - b).exp(), &[1.2]) {
                    break b;
                }
            };
            // KL(k) ≤ e^1.5 − 2.5 ≈ 2 or, for k ∈ [3, 4], ≥ e³ − 4 ≈ 16 (clamped): far from the clamp at 10.
            let k = if rng.next() < 0.15 { rng.range(3.0, 4.0) } else { rng.range(-1.5, 1.5) };
            let reference = grid(f64::from(logp) + k);
            d.logp.push(logp);
            d.old.push(old);
            d.behav.push(behav);
            d.reference.as_mut().unwrap().push(reference);
            d.entropy.push(rng.range(0.0, 3.0) as f32);
            d.adv.push(rng.range(-2.0, 2.0) as f32);
        }
        let reward = if rng.next() < 0.5 { 1.0 } else { 0.0 };
        d.end_seq(reward);
    }
    d
}

fn full_cfg(kind: LossKind, agg: Aggregation) -> LossConfig {
    LossConfig { kind, agg, kl_coef: 0.05, entropy_coef: 0.01, ..LossConfig::default() }
}

/// dlogp against central differences of the loss, perturbing one logπ at a time (h = 2^-10, exact on the grid).
/// Stop-gradient factors must stay fixed: for tis/topr/cispo the sg weight is a function of r, so logπ_old moves
/// with logπ (r unchanged); ppo/decoupled_ppo differentiate through r, so only logπ moves. dent is checked the
/// same way by perturbing H_t.
#[test]
fn finite_differences_match_dlogp_and_dent_for_every_kind_and_aggregation() {
    let mut rng = Rng(0x5EED);
    let d = random_batch(&mut rng, &[4, 1, 6, 3], 0.03);
    let h = 1.0f32 / 1024.0;
    for kind in KINDS {
        for agg in AGGS {
            let c = full_cfg(kind, agg);
            let (_, dlogp, dent) = run(&d, &c, None);
            let sg_ratio = matches!(kind, LossKind::Tis | LossKind::Topr | LossKind::Cispo);
            let loss_at = |t: usize, delta: f32, field: u8| {
                let mut p = d.clone();
                if field == 0 {
                    p.logp[t] += delta;
                    if sg_ratio {
                        p.old[t] += delta;
                    }
                } else {
                    p.entropy[t] += delta;
                }
                run(&p, &c, None).0.loss
            };
            for t in 0..d.logp.len() {
                let fd = (loss_at(t, h, 0) - loss_at(t, -h, 0)) / (2.0 * f64::from(h));
                let g = f64::from(dlogp[t]);
                assert!((fd - g).abs() <= 1e-4 * g.abs().max(1e-2), "{kind:?} {agg:?} dlogp[{t}]: fd {fd} vs {g}");
                let fd_ent = (loss_at(t, h, 1) - loss_at(t, -h, 1)) / (2.0 * f64::from(h));
                let ge = f64::from(dent[t]);
                assert!((fd_ent - ge).abs() <= 1e-6, "{kind:?} {agg:?} dent[{t}]: fd {fd_ent} vs {ge}");
            }
        }
    }
}

/// Gradient accumulation: 3 micro-batches evaluated with the full batch's denominators give exactly (bitwise) the
/// full-batch dlogp/dent, and their losses and statistics sum to the full-batch ones, for every kind and
/// aggregation. With per-micro-batch denominators instead, token-mean and the seq-mean modes would be wrong.
#[test]
fn three_micro_batches_with_full_denominators_equal_one_big_batch() {
    let mut rng = Rng(42);
    let lens = [3, 5, 0, 2, 7, 1, 4, 6];
    let d = random_batch(&mut rng, &lens, 0.0);
    let splits = [0..3, 3..5, 5..8];
    for kind in KINDS {
        for agg in AGGS {
            for t_max in [None, Some(9)] {
                let c = LossConfig { t_max, ..full_cfg(kind, agg) };
                let (full, dlogp, dent) = run(&d, &c, None);
                let batch = d.batch();
                let denom = Denominators::new(&c, batch.seq_starts);
                let (mut acc, mut micro_dlogp, mut micro_dent) = (LossOutput::default(), vec![], vec![]);
                let mut naive_dlogp = vec![];
                let mut starts = vec![];
                for seqs in splits.clone() {
                    let micro = batch.sub_batch(seqs.clone(), &mut starts);
                    let n = micro.n_tokens();
                    assert_eq!(batch.token_range(seqs).len(), n);
                    let (mut g, mut e) = (vec![0.0; n], vec![0.0; n]);
                    acc.accumulate(&policy_loss(&micro, &c, Some(&denom), &mut g, &mut e).unwrap());
                    micro_dlogp.extend(g);
                    micro_dent.extend(e);
                    let mut g = vec![0.0; n];
                    policy_loss(&micro, &c, None, &mut g, &mut vec![0.0; n]).unwrap();
                    naive_dlogp.extend(g);
                }
                let what = format!("{kind:?} {agg:?} t_max {t_max:?}");
                assert_eq!(micro_dlogp, dlogp, "{what}: dlogp");
                assert_eq!(micro_dent, dent, "{what}: dent");
                for (got, want) in
                    [(acc.loss, full.loss), (acc.policy_loss, full.policy_loss), (acc.kl_loss, full.kl_loss)]
                {
                    assert!((got - want).abs() <= 1e-12 * want.abs().max(1.0), "{what}: {got} vs {want}");
                }
                assert_eq!(acc.stats.n_tokens, full.stats.n_tokens);
                assert_eq!((acc.stats.n_clipped, acc.stats.n_capped), (full.stats.n_clipped, full.stats.n_capped));
                assert_eq!(acc.stats.mismatch_abs_max, full.stats.mismatch_abs_max);
                if !(agg == Aggregation::SeqMeanTokenSumNorm && t_max.is_some()) {
                    assert_ne!(naive_dlogp, dlogp, "{what}: per-micro-batch denominators should differ");
                }
            }
        }
    }
}

/// Data-parallel ranks: combining the shards' denominators (sum, sum, max) gives the full batch's.
#[test]
fn denominators_combine_like_an_allreduce() {
    let c = LossConfig::default();
    let full = Denominators::new(&c, &[0, 3, 8, 8, 10, 17]);
    let a = Denominators::new(&c, &[0, 3, 8, 8]);
    let b = Denominators::new(&c, &[0, 2, 9]);
    assert_eq!(a.combine(b), full);
    assert_eq!((full.tokens, full.seqs, full.t_max), (17.0, 4.0, 7.0), "the empty response is not counted");
    assert_eq!(full.token_weight(Aggregation::SeqMeanTokenMean, 5), 1.0 / 20.0);
}
